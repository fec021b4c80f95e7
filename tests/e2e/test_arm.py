"""The ARM release binary, run under qemu-user on this machine: it starts, checks the
machine, and serves a one-node cluster the host's real kubectl talks to.

$BRAMBLE_ARM_BIN names the binary (scripts/test builds dist/bramble-aarch64 with
scripts/dist and sets it); without it these tests are skipped, saying so."""
import os
import platform
import shutil
import signal
import subprocess
import tempfile

import pytest

from conftest import free_port, wait_for

ARM_BIN = os.environ.get("BRAMBLE_ARM_BIN")
pytestmark = pytest.mark.skipif(not ARM_BIN, reason="BRAMBLE_ARM_BIN is not set (scripts/test sets it)")


def emulator():
    """qemu for the binary's architecture (dist/ names them bramble-aarch64, bramble-armv7)."""
    arch = "armv7" if ARM_BIN.endswith("armv7") else "aarch64"
    if platform.machine() == arch:
        return []
    name = {"armv7": "qemu-arm-static", "aarch64": "qemu-aarch64-static"}[arch]
    path = shutil.which(name)
    assert path, f"{name} is missing: apt-get install qemu-user-static"
    return [path]


def run(*args, timeout=120):
    return subprocess.run([*emulator(), ARM_BIN, *args], capture_output=True, text=True, timeout=timeout)


def interpreter(path):
    """The ELF program interpreter a binary asks for (None: statically linked)."""
    import struct
    with open(path, "rb") as f:
        data = f.read()
    assert data[:4] == b"\x7fELF", "not an ELF file"
    if data[4] == 2:  # 64-bit: e_phoff at 0x20, p_offset at 8, p_filesz at 32
        (phoff,), (phentsize, phnum) = struct.unpack_from("<Q", data, 0x20), struct.unpack_from("<HH", data, 0x36)
        at_offset, at_size, word = 8, 32, "<Q"
    else:  # 32-bit: e_phoff at 0x1c, p_offset at 4, p_filesz at 16
        (phoff,), (phentsize, phnum) = struct.unpack_from("<I", data, 0x1c), struct.unpack_from("<HH", data, 0x2a)
        at_offset, at_size, word = 4, 16, "<I"
    for i in range(phnum):
        ph = phoff + i * phentsize
        if struct.unpack_from("<I", data, ph)[0] == 3:  # PT_INTERP
            (offset,), (size,) = struct.unpack_from(word, data, ph + at_offset), struct.unpack_from(word, data, ph + at_size)
            return data[offset:offset + size].rstrip(b"\0").decode()
    return None


def test_the_binary_is_static_and_starts():
    assert interpreter(ARM_BIN) is None, "dynamically linked: it would need the board's libraries"
    out = run("--version")
    assert out.returncode == 0 and out.stdout.startswith("bramble "), out


def test_check_config_reports_every_check():
    out = run("check-config")
    # Under qemu some checks may fail (it is not the board's kernel); the report must be whole.
    assert out.returncode in (0, 1), out
    for check in ("kernel version", "memory cgroup", "overlayfs", "nft command", "page size", "clock"):
        assert check in out.stdout, out.stdout


def test_a_one_node_server_answers_the_hosts_kubectl():
    d = tempfile.mkdtemp(prefix="bramble-arm-")
    port = free_port()
    kubeconfig = os.path.join(d, "kubeconfig.yaml")
    log = open(os.path.join(d, "server.log"), "wb")
    server = subprocess.Popen([*emulator(), ARM_BIN, "server", "--disable-agent", "-d", os.path.join(d, "data"),
                               "--https-listen-port", str(port), "--bind-address", "127.0.0.1",
                               "--write-kubeconfig", kubeconfig], stdout=log, stderr=subprocess.STDOUT)
    try:
        def ready():
            assert server.poll() is None, open(os.path.join(d, "server.log")).read()[-3000:]
            r = subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "get", "--raw", "/readyz"],
                               capture_output=True, text=True, timeout=30)
            return r.returncode == 0 and r.stdout.strip() == "ok"
        wait_for(ready, timeout=180)
        out = subprocess.run(["kubectl", "--kubeconfig", kubeconfig, "get", "ns"], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0 and "kube-system" in out.stdout and "default" in out.stdout, out
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0, open(os.path.join(d, "server.log")).read()[-3000:]
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        shutil.rmtree(d, ignore_errors=True)
