"""An image with an in-cluster API client the tests build themselves: busybox's layer plus
the machine's static kubectl (the `kubectl` package's kubectl.1.33), which uses the
ServiceAccount token, CA and namespace mounted into the pod, as client-go's
`rest.InClusterConfig()` does."""
import io
import os
import shutil
import tarfile

from busybox_image import docker_archive, layer as busybox_layer

TAG = "bramble.test/kubectl:1"


def kubectl_binary():
    path = shutil.which("kubectl")
    if not path:
        raise RuntimeError("kubectl is not installed: the identity tests need the kubectl package")
    return os.path.join(os.path.dirname(os.path.realpath(path)), "kubectl.1.33")


def layer():
    buf = io.BytesIO(busybox_layer())
    with tarfile.open(fileobj=buf, mode="a") as t:
        with open(kubectl_binary(), "rb") as f:
            data = f.read()
        info = tarfile.TarInfo("bin/kubectl")
        info.size, info.mode = len(data), 0o755
        t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def docker_archive_kubectl(path):
    docker_archive(path, tags=(TAG,), cmd=("sh",), lay=layer())
