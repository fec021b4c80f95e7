"""Shared fixtures for the end-to-end tests: a real `bramble server` process on a free
port with its own data dir, and helpers to drive the real kubectl binaries against it.

The binary is $BRAMBLE_BIN (default: target/debug/bramble). Every server started here is
stopped and its data dir removed, even when a test fails.
"""
import os
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.request

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.environ.get("BRAMBLE_BIN", os.path.join(ROOT, "target", "debug", "bramble"))


def die_with_parent():
    """Runs in the child before exec: the kernel kills it if the test process dies, so even a
    killed test run leaves no server behind."""
    import ctypes
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """One running `bramble server`."""

    def __init__(self, extra_args=(), agent=False, bind="127.0.0.1"):
        self.dir = tempfile.mkdtemp(prefix="bramble-e2e-")
        self.port = free_port()
        self.kubeconfig = os.path.join(self.dir, "kubeconfig.yaml")
        self.data_dir = os.path.join(self.dir, "data")
        self.log_path = os.path.join(self.dir, "server.log")
        self.agent = agent
        self.kubelet_port = free_port()
        self.pod_log_dir = os.path.join(self.dir, "pod-logs")
        self.registries = os.path.join(self.dir, "registries.yaml")
        node_flags = ["--kubelet-port", str(self.kubelet_port), "--pod-log-dir", self.pod_log_dir,
                      "--private-registry", self.registries]
        self.extra_args = list(extra_args) + (node_flags if agent else ["--disable-agent"])
        self.bind = bind
        self.proc = None

    def start(self):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [BIN, "server", "--data-dir", self.data_dir, "--https-listen-port", str(self.port),
             "--bind-address", self.bind, "--write-kubeconfig", self.kubeconfig,
             *self.extra_args],
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent,
        )
        deadline = time.time() + 30
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("server exited early:\n" + self.log())
            try:
                with urllib.request.urlopen(f"https://127.0.0.1:{self.port}/readyz", context=ctx, timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("server did not become ready:\n" + self.log())

    def stop(self, sig=signal.SIGTERM):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode(errors="replace")[-4000:]
        except OSError:
            return ""

    def cleanup(self):
        self.stop(signal.SIGKILL)
        if self.agent:
            # Containers outlive the agent by design: remove them, their mounts, namespaces
            # and cgroups the way an operator would.
            subprocess.run([BIN, "killall", "--data-dir", self.data_dir, "--pod-log-dir", self.pod_log_dir],
                           capture_output=True, timeout=60)
        shutil.rmtree(self.dir, ignore_errors=True)


BUSYBOX = "bramble.test/busybox:1"


def drop_busybox(data_dir):
    """Puts the test busybox image where an agent imports archives at start (the airgap path)."""
    from busybox_image import docker_archive
    os.makedirs(os.path.join(data_dir, "agent", "images"), exist_ok=True)
    docker_archive(os.path.join(data_dir, "agent", "images", "busybox.tar"), tags=(BUSYBOX,))


def node_with_busybox(node_name, *extra_args):
    """A started server whose agent runs pods and has the test busybox image."""
    s = Server(extra_args=["--node-name", node_name, *extra_args], agent=True)
    drop_busybox(s.data_dir)
    return s.start()


@pytest.fixture(scope="module")
def server():
    s = Server().start()
    yield s
    s.cleanup()


def kubectl_dir():
    path = shutil.which("kubectl")
    if not path:
        pytest.fail("kubectl is not installed: the compatibility tests need the kubectl package with kubectl.1.27 ... kubectl.1.33")
    return os.path.dirname(os.path.realpath(path))


KUBECTL_VERSIONS = ["1.27", "1.33"]


class Kubectl:
    """Runs one pinned kubectl binary against a server, with its own discovery cache."""

    def __init__(self, server, version):
        self.bin = os.path.join(kubectl_dir(), f"kubectl.{version}")
        self.server = server
        self.cache = tempfile.mkdtemp(prefix=f"kubectl-{version}-cache-", dir=server.dir)

    def run(self, *args, input=None, check=True, timeout=60):
        cmd = [self.bin, "--kubeconfig", self.server.kubeconfig, "--cache-dir", self.cache, *args]
        p = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        return p

    def popen(self, *args):
        cmd = [self.bin, "--kubeconfig", self.server.kubeconfig, "--cache-dir", self.cache, *args]
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.fixture(params=KUBECTL_VERSIONS)
def kubectl(request, server):
    return Kubectl(server, request.param)


def wait_for(fn, timeout=20):
    """Polls `fn` until it returns something truthy; a 404 from the Python client counts as
    not yet."""
    from kubernetes import client
    deadline = time.time() + timeout
    while True:
        try:
            value = fn()
            if value:
                return value
        except client.ApiException as e:
            if e.status != 404:
                raise
        if time.time() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.2)


@pytest.fixture
def registry():
    """A real registry (Debian's docker-registry) on a free loopback port, removed afterwards."""
    yield from run_registry()


@pytest.fixture
def private_registry():
    """A registry that wants a user name and password (htpasswd, bcrypt): yields its address,
    user and password."""
    import bcrypt
    root = tempfile.mkdtemp(prefix="bramble-registry-auth-")
    with open(os.path.join(root, "htpasswd"), "w") as f:
        f.write("puller:" + bcrypt.hashpw(b"let-me-in", bcrypt.gensalt()).decode() + "\n")
    auth = f"auth:\n  htpasswd:\n    realm: bramble-test\n    path: {root}/htpasswd\n"
    try:
        for addr in run_registry(auth):
            yield addr, "puller", "let-me-in"
    finally:
        subprocess.run(["rm", "-rf", root])


def run_registry(extra_config=""):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = tempfile.mkdtemp(prefix="bramble-registry-")
    config = os.path.join(root, "config.yml")
    with open(config, "w") as f:
        f.write(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {root}/data\n"
                f"http:\n  addr: 127.0.0.1:{port}\n" + extra_config)
    proc = subprocess.Popen(["docker-registry", "serve", config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        yield f"127.0.0.1:{port}"
    finally:
        proc.kill()
        proc.wait()
        subprocess.run(["rm", "-rf", root])
