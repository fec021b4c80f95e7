"""A real image the tests build themselves from the machine's static busybox (Debian's
`busybox-static`): one layer with /bin/busybox, its applets as symlinks, and an
/etc/passwd with root and a `nobody` user, written as a `docker save` archive."""
import hashlib
import io
import json
import platform
import tarfile

ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm"}.get(platform.machine(), platform.machine())
APPLETS = ["sh", "sleep", "echo", "cat", "ls", "env", "id", "hostname", "wget", "nc", "httpd", "true", "false",
           "mkdir", "touch", "grep", "head", "dd", "ps", "kill", "date", "test", "printf", "seq", "tail", "yes",
           "mount", "ip", "ifconfig", "ping", "stat", "readlink", "wc", "tr", "sed", "awk", "whoami", "pwd",
           "chmod", "nslookup"]


def layer():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        for d in ["bin/", "etc/", "tmp/", "www/"]:
            info = tarfile.TarInfo(d)
            info.type, info.mode = tarfile.DIRTYPE, 0o1777 if d == "tmp/" else 0o755
            t.addfile(info)
        with open("/bin/busybox", "rb") as f:
            data = f.read()
        info = tarfile.TarInfo("bin/busybox")
        info.size, info.mode = len(data), 0o755
        t.addfile(info, io.BytesIO(data))
        for a in APPLETS:
            info = tarfile.TarInfo(f"bin/{a}")
            info.type, info.linkname = tarfile.SYMTYPE, "busybox"
            t.addfile(info)
        for name, text in [("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"),
                           ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
                           ("www/index.html", "hello from bramble\n")]:
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def docker_archive(path, tags=("bramble.test/busybox:1",), cmd=("sh",), lay=None):
    """Writes the image (busybox's layer unless `lay` is given) as a docker-archive at `path`."""
    lay = lay if lay is not None else layer()
    config = json.dumps({"architecture": ARCH, "os": "linux",
                         "config": {"Cmd": list(cmd), "Env": ["PATH=/bin"], "WorkingDir": "/"},
                         "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(lay).hexdigest()}"]}}).encode()
    cfg_name = f"{hashlib.sha256(config).hexdigest()}.json"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in [(cfg_name, config), ("l0/layer.tar", lay),
                           ("manifest.json", json.dumps([{"Config": cfg_name, "RepoTags": list(tags),
                                                          "Layers": ["l0/layer.tar"]}]).encode())]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    with open(path, "wb") as f:
        f.write(buf.getvalue())
