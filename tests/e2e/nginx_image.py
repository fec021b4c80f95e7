"""An nginx image the benchmarks build from the machine's own nginx (Debian's
`nginx-light`): the binary, the shared libraries `ldd` names, and a configuration that
serves /www on port 8080 with keep-alive, in one layer beside busybox's files."""
import io
import os
import re
import subprocess
import tarfile

from busybox_image import docker_archive, layer as busybox_layer

TAG = "bramble.test/nginx:1"
NGINX = "/usr/sbin/nginx"
CONF = """daemon off;
worker_processes 1;
error_log stderr warn;
pid /tmp/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path /tmp/body;
    proxy_temp_path /tmp/proxy;
    fastcgi_temp_path /tmp/fastcgi;
    uwsgi_temp_path /tmp/uwsgi;
    scgi_temp_path /tmp/scgi;
    keepalive_requests 1000000;
    server { listen 8080; root /www; }
}
"""


def libraries(binary):
    """The absolute paths of the shared objects `binary` loads (its interpreter included)."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    return sorted(set(re.findall(r"(/\S+) \(0x", out)))


def layer():
    """busybox's layer with nginx, its libraries and its configuration added."""
    buf = io.BytesIO(busybox_layer())
    with tarfile.open(fileobj=buf, mode="a") as t:
        made = set()
        for path in [NGINX, *libraries(NGINX)]:
            real = os.path.realpath(path)
            parts = path.strip("/").split("/")
            for i in range(1, len(parts)):
                d = "/".join(parts[:i]) + "/"
                if d not in made and d not in ("bin/", "etc/", "tmp/", "www/"):
                    made.add(d)
                    info = tarfile.TarInfo(d)
                    info.type, info.mode = tarfile.DIRTYPE, 0o755
                    t.addfile(info)
            with open(real, "rb") as f:
                data = f.read()
            info = tarfile.TarInfo(path.strip("/"))
            info.size, info.mode = len(data), 0o755
            t.addfile(info, io.BytesIO(data))
        for name, text in [("etc/nginx.conf", CONF)]:
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def docker_archive_nginx(path):
    """Writes the nginx image as a docker-archive at `path`."""
    docker_archive(path, tags=(TAG,), cmd=("/usr/sbin/nginx", "-c", "/etc/nginx.conf"), lay=layer())
