"""Images and pod specs that aim outside their directories: layers whose symlinks point at
host directories, archives whose manifest names host files, volume items that climb out,
and a subPath through a symlink an init container made. Each used to write, delete or read
on the host; now each stays inside its directory, and a sentinel tree the attacks aim at
(files, a directory, an xattr) is unchanged afterwards."""
import gzip
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile

import pytest
from kubernetes import client, config

from conftest import BIN, node_with_busybox, wait_for
from test_images import ARCH, config_for, sha

IMAGE = "bramble.test/busybox:1"


def entry(name, kind="file", data=b"", link=""):
    info = tarfile.TarInfo(name)
    if kind == "dir":
        info.type, info.mode = tarfile.DIRTYPE, 0o755
    elif kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, link
    elif kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, link
    else:
        info.size, info.mode = len(data), 0o644
    return info, (io.BytesIO(data) if kind == "file" else None)


def tar_of(entries):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for info, data in entries:
            t.addfile(info, data)
    return buf.getvalue()


def docker_archive(path, layer, config_name=None, extra=()):
    cfg = config_for([layer], ["/x"])
    name = config_name or f"{sha(cfg)}.json"
    members = [entry(f"{sha(cfg)}.json", data=cfg), entry("l0/", "dir"), entry("l0/layer.tar", data=layer),
               entry("manifest.json", data=json.dumps([{"Config": name, "RepoTags": ["evil:1"],
                                                        "Layers": ["l0/layer.tar"]}]).encode()), *extra]
    with open(path, "wb") as f:
        f.write(tar_of(members))


def snapshot(root):
    """Everything about a tree an attack could change: names, kinds, modes, contents, xattrs."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames + ["."]:
            p = os.path.normpath(os.path.join(dirpath, n))
            st = os.lstat(p)
            xattrs = {}
            for k in os.listxattr(p, follow_symlinks=False):
                xattrs[k] = os.getxattr(p, k, follow_symlinks=False)
            data = open(p, "rb").read() if os.path.isfile(p) and not os.path.islink(p) else None
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_rdev, data, xattrs)
    return out


@pytest.fixture
def sentinel():
    """A host tree the attacks aim at, outside every directory bramble owns."""
    d = tempfile.mkdtemp(prefix="bramble-sentinel-")
    root = os.path.join(d, "host")
    os.makedirs(os.path.join(root, "sub"))
    for name, text in [("victim", "keep me\n"), ("sub/inner", "inner\n"), ("secret.key", "PRIVATE\n")]:
        with open(os.path.join(root, name), "w") as f:
            f.write(text)
    os.setxattr(root, "user.sentinel", b"1")
    before = snapshot(root)
    yield root
    after = snapshot(root)
    shutil.rmtree(d, ignore_errors=True)
    assert after == before, "an attack changed the host tree"


@pytest.fixture
def node_dir():
    d = tempfile.mkdtemp(prefix="bramble-hostile-")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def image(node_dir, *args):
    return subprocess.run([BIN, "image", "--data-dir", node_dir, *args], capture_output=True, text=True, timeout=60)


def layer_dir(node_dir, layer):
    return os.path.join(node_dir, "agent", "content", "layers", sha(layer))


@pytest.mark.parametrize("attack", ["whiteout", "opaque", "nested-whiteout", "file", "hardlink"])
def test_a_layer_symlink_never_leads_out_of_the_layer(node_dir, sentinel, attack):
    lnk = entry("lnk", "symlink", link=sentinel)
    body = {
        "whiteout": [entry("lnk/.wh.victim")],
        "opaque": [entry("lnk/.wh..wh..opq")],
        "nested-whiteout": [entry("lnk/sub/.wh.inner"), entry("lnk/newdir/.wh.x")],
        "file": [entry("lnk/victim", data=b"overwritten\n"), entry("lnk/planted", data=b"x")],
        "hardlink": [entry("stolen", "hardlink", link=os.path.join(sentinel, "secret.key").lstrip("/")),
                     entry("up", "hardlink", link="../../../../../../../../" + sentinel.lstrip("/") + "/secret.key")],
    }[attack]
    layer = tar_of([lnk, *body])
    archive = os.path.join(node_dir, "evil.tar")
    docker_archive(archive, layer)
    image(node_dir, "import", archive)
    # Whatever was made, it is inside the layer: nothing reached the host (checked by the fixture).
    stored = layer_dir(node_dir, layer)
    if os.path.isdir(stored):
        for dirpath, _, filenames in os.walk(stored):
            for n in filenames:
                assert os.path.realpath(os.path.join(dirpath, n)).startswith(os.path.realpath(node_dir))


def test_names_that_climb_stay_inside_the_layer(node_dir, sentinel):
    layer = tar_of([entry("../../../../../../../../../../" + sentinel.lstrip("/") + "/climbed", data=b"x"),
                    entry(sentinel + "/absolute", data=b"x")])
    archive = os.path.join(node_dir, "climb.tar")
    docker_archive(archive, layer)
    p = image(node_dir, "import", archive)
    assert p.returncode == 0, p.stderr
    stored = layer_dir(node_dir, layer)
    assert os.path.isfile(os.path.join(stored, sentinel.lstrip("/"), "climbed"))
    assert os.path.isfile(os.path.join(stored, sentinel.lstrip("/"), "absolute"))


def test_an_archive_cannot_name_a_host_file_as_its_config(node_dir, sentinel):
    layer = tar_of([entry("x", data=b"x")])
    host_file = os.path.join(sentinel, "secret.key")
    for name, extra in [("../../../../../../../../../.." + host_file, ()),
                        ("linked.json", (entry("linked.json", "symlink", link=host_file),))]:
        archive = os.path.join(node_dir, "cfg.tar")
        docker_archive(archive, layer, config_name=name, extra=extra)
        p = image(node_dir, "import", archive)
        assert p.returncode != 0, p.stdout
    configs = os.path.join(node_dir, "agent", "content", "configs")
    for n in os.listdir(configs) if os.path.isdir(configs) else []:
        assert b"PRIVATE" not in open(os.path.join(configs, n), "rb").read()


def test_an_oci_digest_that_climbs_is_refused(node_dir, sentinel):
    layer = gzip.compress(tar_of([entry("x", data=b"x")]))
    manifest = json.dumps({"schemaVersion": 2, "config": {"digest": "sha256:../../../../../../../../.." + sentinel
                                                          + "/secret.key"},
                           "layers": [{"digest": f"sha256:{sha(layer)}"}]}).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [
        {"digest": f"sha256:{sha(manifest)}", "platform": {"architecture": ARCH, "os": "linux"},
         "annotations": {"io.containerd.image.name": "evil:2"}}]}).encode()
    members = [entry("oci-layout", data=b'{"imageLayoutVersion":"1.0.0"}'), entry("index.json", data=index),
               entry("blobs/", "dir"), entry("blobs/sha256/", "dir"),
               entry(f"blobs/sha256/{sha(manifest)}", data=manifest), entry(f"blobs/sha256/{sha(layer)}", data=layer)]
    archive = os.path.join(node_dir, "evil-oci.tar")
    with open(archive, "wb") as f:
        f.write(tar_of(members))
    p = image(node_dir, "import", archive)
    assert p.returncode != 0 and "not a digest" in p.stderr, p.stderr


@pytest.fixture(scope="module")
def node():
    s = node_with_busybox("hostile-1")
    try:
        core = client.CoreV1Api(config.new_client_from_config(config_file=s.kubeconfig))
        wait_for(lambda: any(c.type == "Ready" and c.status == "True"
                             for c in (core.read_node("hostile-1").status.conditions or [])), timeout=30)
        yield s, core
    finally:
        s.cleanup()


def test_volume_items_that_climb_are_refused_by_the_api(node):
    _, core = node
    core.create_namespaced_config_map("default", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="items"),
                                                                    data={"k": "v"}))
    for path in ("../../x", "/abs/x", "a/../../x"):
        body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "climb"},
                "spec": {"containers": [{"name": "c", "image": IMAGE, "volumeMounts": [{"name": "v", "mountPath": "/v"}]}],
                         "volumes": [{"name": "v", "configMap": {"name": "items", "items": [{"key": "k", "path": path}]}}]}}
        with pytest.raises(client.ApiException) as e:
            core.create_namespaced_pod("default", body)
        assert e.value.status == 422 and "items[0].path" in e.value.body, e.value.body


def subpath_pod(name, target, sub, command):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": "hostile-1", "restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                     "volumes": [{"name": "shared", "emptyDir": {}}],
                     "initContainers": [{"name": "plant", "image": IMAGE, "imagePullPolicy": "Never",
                                         "command": ["sh", "-c", f"ln -s {target} /shared/{sub}"],
                                         "volumeMounts": [{"name": "shared", "mountPath": "/shared"}]}],
                     "containers": [{"name": "main", "image": IMAGE, "imagePullPolicy": "Never",
                                     "command": ["sh", "-c", command],
                                     "volumeMounts": [{"name": "shared", "mountPath": "/mnt", "subPath": sub}]}]}}


def remove_pod(core, name):
    core.delete_namespaced_pod(name, "default", grace_period_seconds=0)
    wait_for(lambda: name not in [p.metadata.name for p in core.list_namespaced_pod("default").items], timeout=30)


def test_a_subpath_symlink_to_the_host_root_mounts_the_volume_itself(node):
    server, core = node
    marker = f"/bramble-subpath-{os.getpid()}"
    core.create_namespaced_pod("default", subpath_pod("subpath-root", "/", "root",
                                                      f"echo pwned > /mnt{marker}; ls /mnt; ls /mnt/etc || true"))
    try:
        done = wait_for(lambda: (p := core.read_namespaced_pod("subpath-root", "default")).status.phase
                        in ("Succeeded", "Failed") and p, timeout=60)
        logs = core.read_namespaced_pod_log("subpath-root", "default", container="main")
        assert not os.path.exists(marker), "the container wrote to the host's /"
        assert done.status.phase == "Succeeded", (logs, server.log())
        # It saw the volume (the link it was mounted through), not the host's root.
        assert "root" in logs.split() and "bin" not in logs.split(), logs
    finally:
        if os.path.exists(marker):
            os.remove(marker)
        remove_pod(core, "subpath-root")


def test_a_subpath_symlink_to_a_host_directory_never_reaches_it(node, sentinel):
    server, core = node
    core.create_namespaced_pod("default", subpath_pod("subpath-escape", sentinel, "escape",
                                                      "cat /mnt/secret.key; echo pwned > /mnt/from-container"))
    try:
        # The link names nothing inside the volume: the container is refused (as the kubelet
        # refuses it), with the reason in its status.
        def refused():
            p = core.read_namespaced_pod("subpath-escape", "default")
            for c in p.status.container_statuses or []:
                if c.state.waiting and c.state.waiting.reason == "CreateContainerConfigError":
                    return c.state.waiting.message
            assert p.status.phase not in ("Succeeded", "Failed"), server.log()
            return None
        message = wait_for(refused, timeout=60)
        assert "escape" in message, message
    finally:
        remove_pod(core, "subpath-escape")


def test_secret_values_never_reach_the_nodes_disk(node):
    server, core = node
    value = f"s3cret-{os.getpid()}-value"
    core.create_namespaced_secret("default", client.V1Secret(metadata=client.V1ObjectMeta(name="env-secret"),
                                                             string_data={"token": value}))
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "secret-env"},
            "spec": {"nodeName": "hostile-1", "terminationGracePeriodSeconds": 1,
                     "volumes": [{"name": "s", "secret": {"secretName": "env-secret"}}],
                     "containers": [{"name": "main", "image": IMAGE, "imagePullPolicy": "Never",
                                     "command": ["sh", "-c", "test \"$TOKEN\" = \"$(cat /s/token)\" && echo same; "
                                                 "sleep 3600"],
                                     "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "env-secret",
                                                                                            "key": "token"}}}],
                                     "volumeMounts": [{"name": "s", "mountPath": "/s"}]}]}}
    core.create_namespaced_pod("default", body)
    try:
        def logs():
            try:
                return "same" in core.read_namespaced_pod_log("secret-env", "default")
            except client.ApiException as e:
                if e.status != 400:  # 400: not started yet
                    raise
                return False
        wait_for(logs, timeout=60)
        found = []
        for dirpath, dirnames, filenames in os.walk(server.dir):
            # Mounts (the container's root, the tmpfs of the secret volume) are not the disk.
            dirnames[:] = [d for d in dirnames if not os.path.ismount(os.path.join(dirpath, d))]
            for n in filenames:
                p = os.path.join(dirpath, n)
                if os.path.islink(p) or not os.path.isfile(p):
                    continue
                with open(p, "rb") as f:
                    if value.encode() in f.read():
                        found.append(p)
        assert found == [], f"the secret value is on disk in {found}"
        store = os.path.join(server.data_dir, "server", "store")
        assert os.stat(store).st_mode & 0o777 == 0o700
        assert os.stat(os.path.join(server.data_dir, "server")).st_mode & 0o777 == 0o700
        assert os.stat(os.path.join(server.data_dir, "agent")).st_mode & 0o077 == 0
        assert os.stat(os.path.join(server.data_dir, "agent", "pods")).st_mode & 0o007 == 0
    finally:
        remove_pod(core, "secret-env")
