"""The node's image store: `bramble image import|ls|rm` with archives the test builds itself
(a `docker save` archive and a gzipped OCI archive with a multi-platform index), layers
unpacked once and shared, overlayfs whiteouts, garbage collection of unused layers, and
the airgap directory imported when the agent starts."""
import gzip
import hashlib
import io
import json
import os
import platform
import stat
import subprocess
import tarfile
import tempfile
import time

import pytest

from conftest import BIN, Server

ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(platform.machine(), platform.machine())


def tar_bytes(members):
    """members: list of (name, bytes or None for a directory)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                t.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def sha(data):
    return hashlib.sha256(data).hexdigest()


BASE = tar_bytes([("etc/", None), ("etc/motd", b"hello\n"), ("bin/", None), ("bin/tool", b"#!/bin/sh\n"),
                  ("var/", None), ("var/cache/", None), ("var/cache/old", b"x")])
TOP = tar_bytes([("etc/", None), ("etc/.wh.motd", b""), ("var/cache/", None), ("var/cache/.wh..wh..opq", b""),
                 ("app.txt", b"app\n")])


def config_for(layers, cmd):
    return json.dumps({"architecture": ARCH, "os": "linux", "config": {"Cmd": cmd, "Env": ["PATH=/bin"]},
                       "rootfs": {"type": "layers", "diff_ids": [f"sha256:{sha(l)}" for l in layers]}}).encode()


def docker_archive(path, tags, layers):
    config = config_for(layers, ["/bin/tool"])
    members = [(f"{sha(config)}.json", config)]
    names = []
    for i, layer in enumerate(layers):
        members += [(f"l{i}/", None), (f"l{i}/layer.tar", layer)]
        names.append(f"l{i}/layer.tar")
    members.append(("manifest.json", json.dumps([{"Config": f"{sha(config)}.json", "RepoTags": tags,
                                                  "Layers": names}]).encode()))
    with open(path, "wb") as f:
        f.write(tar_bytes(members))


def oci_archive(path, name, layers):
    blobs = {}
    def add(data):
        blobs[sha(data)] = data
        return f"sha256:{sha(data)}"
    config = config_for(layers, ["/app.txt"])
    gz = [gzip.compress(l) for l in layers]
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": add(config), "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                                       "digest": add(g), "size": len(g)} for g in gz]}).encode()
    other = add(json.dumps({"schemaVersion": 2, "config": {}, "layers": []}).encode())
    index = json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": other,
         "platform": {"architecture": "s390x", "os": "linux"}},
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": add(manifest),
         "platform": {"architecture": ARCH, "os": "linux"}}]}).encode()
    top = json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.index.v1+json", "digest": add(index),
         "annotations": {"io.containerd.image.name": name}}]}).encode()
    members = [("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'), ("index.json", top), ("blobs/", None),
               ("blobs/sha256/", None)] + [(f"blobs/sha256/{h}", d) for h, d in blobs.items()]
    with open(path, "wb") as f:
        f.write(gzip.compress(tar_bytes(members)))


def image(data_dir, *args, check=True):
    p = subprocess.run([BIN, "image", "--data-dir", data_dir, *args], capture_output=True, text=True, timeout=60)
    if check and p.returncode != 0:
        raise AssertionError(f"image {' '.join(args)} failed:\n{p.stdout}\n{p.stderr}")
    return p


@pytest.fixture
def node_dir():
    d = tempfile.mkdtemp(prefix="bramble-images-")
    yield d
    subprocess.run(["rm", "-rf", d])


def test_import_list_share_and_remove(node_dir):
    docker_tar, oci_tar = os.path.join(node_dir, "tool.tar"), os.path.join(node_dir, "app.tar.gz")
    docker_archive(docker_tar, ["tool:1.0", "registry.local:5000/team/tool:1.0"], [BASE])
    oci_archive(oci_tar, "registry.local:5000/team/app:2", [BASE, TOP])

    out = image(node_dir, "import", docker_tar, oci_tar).stdout
    assert "imported docker.io/library/tool:1.0" in out
    assert "imported registry.local:5000/team/tool:1.0" in out
    assert "imported registry.local:5000/team/app:2" in out
    listing = image(node_dir, "ls").stdout.splitlines()
    assert listing[0].split()[:3] == ["REPOSITORY", "TAG", "IMAGE"]
    assert sorted(line.split()[0] for line in listing[1:]) == [
        "docker.io/library/tool", "registry.local:5000/team/app", "registry.local:5000/team/tool"]

    layers = os.path.join(node_dir, "agent", "content", "layers")
    base_dir, top_dir = os.path.join(layers, sha(BASE)), os.path.join(layers, sha(TOP))
    assert sorted(os.listdir(layers)) == sorted([sha(BASE), sha(TOP)])  # the shared base is stored once
    assert open(os.path.join(base_dir, "etc", "motd")).read() == "hello\n"
    whiteout = os.lstat(os.path.join(top_dir, "etc", "motd"))
    assert stat.S_ISCHR(whiteout.st_mode) and whiteout.st_rdev == 0
    assert os.getxattr(os.path.join(top_dir, "var", "cache"), "trusted.overlay.opaque") == b"y"
    assert open(os.path.join(top_dir, "app.txt")).read() == "app\n"

    container = os.path.join(node_dir, "containers", "c1")
    merged = image(node_dir, "mount", "registry.local:5000/team/app:2", container).stdout.strip()
    try:
        assert sorted(os.listdir(merged)) == ["app.txt", "bin", "etc", "var"]
        assert not os.path.exists(os.path.join(merged, "etc", "motd"))  # hidden by the top layer's whiteout
        assert os.listdir(os.path.join(merged, "var", "cache")) == []  # opaque in the top layer
        with open(os.path.join(merged, "scratch"), "w") as f:
            f.write("container data")
    finally:
        image(node_dir, "unmount", container)
    assert not os.path.exists(container) and not os.path.exists(os.path.join(base_dir, "scratch"))

    image(node_dir, "rm", "registry.local:5000/team/app:2")
    assert sorted(os.listdir(layers)) == [sha(BASE)]  # the top layer went with its only image
    image(node_dir, "rm", "tool:1.0", "registry.local:5000/team/tool:1.0")
    assert os.listdir(layers) == []
    missing = image(node_dir, "rm", "tool:1.0", check=False)
    assert missing.returncode != 0 and "no such image" in missing.stderr


def test_bad_archives_are_refused(node_dir):
    junk = os.path.join(node_dir, "junk.tar")
    with open(junk, "wb") as f:
        f.write(tar_bytes([("readme.txt", b"not an image")]))
    p = image(node_dir, "import", junk, check=False)
    assert p.returncode != 0 and "neither a docker-archive" in p.stderr
    escape = os.path.join(node_dir, "escape.tar")
    climbing = tar_bytes([("../../outside", b"x")])
    docker_archive(escape, ["evil:1"], [climbing])
    image(node_dir, "import", escape)
    # As containerd does, a name that climbs is resolved inside the layer, never above it.
    assert not os.path.exists(os.path.join(node_dir, "agent", "outside"))
    assert os.path.isfile(os.path.join(node_dir, "agent", "content", "layers", sha(climbing), "outside"))


def test_airgap_directory_is_imported_when_the_agent_starts():
    server = Server(agent=True)
    try:
        drop = os.path.join(server.data_dir, "agent", "images")
        os.makedirs(drop)
        docker_archive(os.path.join(drop, "tool.tar"), ["airgap/tool:3"], [BASE])
        server.start()
        deadline = time.time() + 15
        while time.time() < deadline and "airgap/tool" not in image(server.data_dir, "ls").stdout:
            time.sleep(0.2)
        assert "docker.io/airgap/tool" in image(server.data_dir, "ls").stdout
    finally:
        server.cleanup()


def test_pull_from_a_registry(node_dir, registry):
    archive = os.path.join(node_dir, "tool.tar")
    docker_archive(archive, ["tool:1.0"], [BASE, TOP])
    subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", f"docker-archive:{archive}",
                    f"docker://{registry}/team/tool:1.0"], check=True, capture_output=True, timeout=60)
    out = image(node_dir, "pull", f"{registry}/team/tool:1.0", "--insecure-registry", registry).stdout
    assert f"pulled {registry}/team/tool:1.0" in out
    assert f"{registry}/team/tool" in image(node_dir, "ls").stdout
    layers = os.path.join(node_dir, "agent", "content", "layers")
    assert sorted(os.listdir(layers)) == sorted([sha(BASE), sha(TOP)])  # pushed gzipped, stored by diff ID
    missing = image(node_dir, "pull", f"{registry}/team/nothing:1", "--insecure-registry", registry, check=False)
    assert missing.returncode != 0 and "team/nothing" in missing.stderr
