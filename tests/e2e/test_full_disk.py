"""A full SD card: the server's data directory on a small ext4 file system the test makes
(a loop device), filled by concurrent writers. Writes get 507 while space is short, reads
and watches keep answering, `/readyz` says why, deletes still work, memory stays bounded,
writes resume by themselves once space is freed, every acknowledged write is there after a
restart, and SIGTERM on a disk with no byte left still stops the server in time."""
import base64
import os
import shutil
import signal
import subprocess
import tempfile
import ssl
import threading
import time
import urllib.error
import urllib.request

import pytest
from kubernetes import client, config

from conftest import Server

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mkfs.ext4"),
                                reason="needs root and mkfs.ext4 for a loop-mounted file system")


@pytest.fixture
def small_disk():
    """A 96 MiB ext4 file system mounted on a fresh directory; unmounted and removed after."""
    work = tempfile.mkdtemp(prefix="bramble-disk-")
    image, mnt = os.path.join(work, "disk.img"), os.path.join(work, "mnt")
    os.makedirs(mnt)
    mounted = False
    try:
        with open(image, "wb") as f:
            f.truncate(96 * 1024 * 1024)
        subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", image], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "loop", image, mnt], check=True, capture_output=True)
        mounted = True
        yield mnt
    finally:
        if mounted:
            subprocess.run(["umount", "-l", mnt], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)


def configmap(name):
    """6 KB that neither zstd nor LZ4 can shrink, as a sensor's dump would be."""
    return client.V1ConfigMap(metadata=client.V1ObjectMeta(name=name),
                              data={"v": base64.b64encode(os.urandom(4500)).decode()})


def test_a_full_disk_refuses_writes_keeps_reads_and_recovers_by_itself(small_disk):
    filler = os.path.join(small_disk, "filler")
    server = Server(extra_args=["--store-reserve-mb", "8"])
    server.data_dir = os.path.join(small_disk, "data")
    server.start()
    try:
        core = client.CoreV1Api(config.new_client_from_config(config_file=server.kubeconfig))
        # Most of the disk goes to a file the test can give back later.
        st = os.statvfs(small_disk)
        with open(filler, "wb") as f:
            f.write(b"\0" * (st.f_bavail * st.f_frsize - 24 * 1024 * 1024))
            os.fsync(f.fileno())

        acknowledged, refused, errors = [], [], []
        lock = threading.Lock()

        def writer(w):
            for i in range(2000):
                name = f"w{w}-{i}"
                try:
                    core.create_namespaced_config_map("default", configmap(name))
                    with lock:
                        acknowledged.append(name)
                except client.ApiException as e:
                    with lock:
                        (refused if e.status == 507 else errors).append((name, e.status, e.body))
                    if e.status == 507:
                        return
        # The server's memory, sampled through the fill: bounded, not growing with the load
        # (a Raft core that died once made it grow by hundreds of MB a second).
        rss = []
        filling = threading.Event()
        filling.set()

        def sample():
            while filling.is_set():
                rss.append(rss_mib(server.proc.pid))
                time.sleep(0.2)
        sampler = threading.Thread(target=sample)
        sampler.start()
        threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        filling.clear()
        sampler.join()
        assert rss and max(rss) < 512, f"RSS during the fill peaked at {max(rss):.0f} MiB"
        assert not errors, errors[:3]
        assert refused, f"the disk never filled: {len(acknowledged)} writes acknowledged"
        body = refused[0][2]
        assert "InsufficientStorage" in body and small_disk in body, body

        # Reads and lists go on; readiness says what is wrong, liveness does not.
        assert core.read_namespaced_config_map(acknowledged[0], "default").metadata.name == acknowledged[0]
        listed = {c.metadata.name for c in core.list_namespaced_config_map("default").items}
        assert set(acknowledged) <= listed
        ready = health(server, "/readyz")
        assert ready[0] == 500 and "[-]store-writable failed" in ready[1], ready
        assert health(server, "/livez") == (200, "ok")

        # Deletes still work under the reserve: they are how space is freed through the API.
        victim = acknowledged[0]
        core.delete_namespaced_config_map(victim, "default")
        listed.discard(victim)
        acknowledged.remove(victim)

        # Space comes back: writes resume with no restart.
        os.remove(filler)
        deadline = time.time() + 30
        while True:
            try:
                core.create_namespaced_config_map("default", configmap("after-space-freed"))
                break
            except client.ApiException as e:
                assert e.status == 507 and time.time() < deadline, e
                time.sleep(0.2)
        acknowledged.append("after-space-freed")
        assert health(server, "/readyz") == (200, "ok")

        # Every acknowledged write survives a restart.
        server.stop()
        server.start()
        core = client.CoreV1Api(config.new_client_from_config(config_file=server.kubeconfig))
        after = {c.metadata.name for c in core.list_namespaced_config_map("default").items}
        assert set(acknowledged) <= after, sorted(set(acknowledged) - after)[:5]
        assert victim not in after

        # SIGTERM on a disk with no byte left still stops the server in time, by itself
        # (systemd's stop timeout is 90 s), with the log intact.
        st = os.statvfs(small_disk)
        # Unbuffered: the write that meets ENOSPC is the last, nothing is left to flush.
        with open(filler, "wb", buffering=0) as f:
            try:
                f.write(b"\0" * (st.f_bavail * st.f_frsize))
            except OSError:
                pass
        began = time.time()
        server.proc.send_signal(signal.SIGTERM)
        code = server.proc.wait(timeout=60)
        assert code == 0, f"exit status {code}"
        assert time.time() - began < 30, f"stopping took {time.time() - began:.1f} s"
        os.remove(filler)
        server.start()
        core = client.CoreV1Api(config.new_client_from_config(config_file=server.kubeconfig))
        after = {c.metadata.name for c in core.list_namespaced_config_map("default").items}
        assert set(acknowledged) <= after, sorted(set(acknowledged) - after)[:5]
    finally:
        server.cleanup()


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def health(server, path):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{server.port}{path}", context=ctx, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
