"""Ingress on two nodes (the cluster of test_network.py): the built-in proxy on every node's
ports 80 and 443 routes by host and path to real pods, terminates TLS with the Secret the
client's SNI names, redirects plain HTTP to HTTPS, rewrites paths, passes a WebSocket
through, answers 503 (with an Event) for a Service that does not exist, and keeps serving
without a failed request while its backend rolls."""
import base64
import hashlib
import http.client
import os
import socket
import ssl
import struct
import subprocess
import tempfile
import threading
import time

import pytest
from kubernetes import client

from conftest import BUSYBOX, wait_for
from test_network import Cluster, pytestmark  # noqa: F401  (the same skip conditions)

# A backend that says who it is at every path the routing tests ask for, and echoes the
# request (method, path, headers as CGI variables) at /cgi-bin/env.
BACKEND = ("mkdir -p /www/cgi-bin /www/b; N=$(hostname); echo $N > /www/index.html; echo $N > /www/bx; "
           "echo $N > /www/b/x; case $N in *-b) echo $N > /www/exact;; *) mkdir -p /www/exact; "
           "echo $N > /www/exact/x;; esac; "
           "printf '%s\\n' '#!/bin/sh' 'echo Content-Type: text/plain' 'echo' 'echo pod=$(hostname)' 'env' "
           "> /www/cgi-bin/env; chmod +x /www/cgi-bin/env; exec httpd -f -p 8080 -h /www")


def request(addr, host, path, port=80, method="GET", headers=None, tls_ca=None, timeout=5):
    """(status, headers, body) of one request to `addr` for `host`; with `tls_ca`, over TLS
    with SNI `host`, checked against that certificate."""
    if tls_ca is not None:
        ctx = ssl.create_default_context(cafile=tls_ca) if tls_ca else ssl._create_unverified_context()
        conn = http.client.HTTPSConnection(addr, port, timeout=timeout, context=ctx)
        # SNI and the hostname check use the name, the TCP connection the address.
        conn.sock = ctx.wrap_socket(socket.create_connection((addr, port), timeout=timeout), server_hostname=host)
    else:
        conn = http.client.HTTPConnection(addr, port, timeout=timeout)
    try:
        conn.request(method, path, headers={"Host": host, **(headers or {})})
        r = conn.getresponse()
        return r.status, r.headers, r.read().decode(errors="replace").strip()
    finally:
        conn.close()


def served(addr, host, path, **kw):
    """The answer once the proxy routes `host` and `path` (an Ingress takes some
    milliseconds to reach every node; until then the answer is 404)."""
    return eventually(lambda: (r := request(addr, host, path, **kw))[0] not in (404, 503) and r)


def cgi_env(body):
    return dict(line.split("=", 1) for line in body.splitlines() if "=" in line)


def eventually(fn, timeout=20):
    def attempt():
        try:
            return fn()
        except OSError:
            return None
    return wait_for(attempt, timeout=timeout)


@pytest.fixture(scope="module")
def cluster():
    c = Cluster("vxlan")
    try:
        yield c.start()
    finally:
        c.cleanup()


@pytest.fixture(scope="module")
def net(cluster):
    return client.NetworkingV1Api(cluster.api)


@pytest.fixture(scope="module")
def backends(cluster):
    """Pods `app-a` (server node) and `app-b` (worker), each behind its own Service."""
    for name, node in (("app-a", cluster.names[0]), ("app-b", cluster.names[1])):
        cluster.pod(name, node, BACKEND, {"app": name}, container={"ports": [{"name": "http", "containerPort": 8080}]})
        cluster.service(name, {"selector": {"app": name}, "ports": [{"name": "web", "port": 80, "targetPort": "http"}]})
    return cluster


def ingress(net, name, spec, annotations=None):
    body = {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "metadata": {"name": name, "annotations": annotations or {}}, "spec": spec}
    return net.create_namespaced_ingress("default", body)


def rule(host, *paths):
    return {**({"host": host} if host else {}), "http": {"paths": [
        {"path": p, "pathType": t, "backend": {"service": {"name": svc, "port": port}}} for p, t, svc, port in paths]}}


def addresses(cluster):
    return [cluster.host_ip, cluster.node_ip]


def test_the_default_class_is_ours_and_ingresses_show_where_they_are_served(backends, net):
    cluster = backends
    cls = net.read_ingress_class("bramble")
    assert cls.spec.controller == "bramble.io/ingress-controller"
    assert cls.metadata.annotations["ingressclass.kubernetes.io/is-default-class"] == "true"
    ing = ingress(net, "plain", {"rules": [rule("plain.example", ("/", "Prefix", "app-a", {"number": 80}))]})
    assert ing.spec.ingress_class_name == "bramble", "the default class is given at creation"
    want = sorted(addresses(cluster))
    wait_for(lambda: sorted(i.ip for i in (net.read_namespaced_ingress("plain", "default").status.load_balancer.ingress or [])) == want,
             timeout=20)
    out = subprocess.run(["kubectl", "--kubeconfig", cluster.server.kubeconfig, "get", "ingress", "plain"],
                         capture_output=True, text=True, check=True).stdout
    assert cluster.host_ip in out and "plain.example" in out, out
    for addr in addresses(cluster):
        status, _, body = served(addr, "plain.example", "/")
        assert (status, body) == (200, "app-a"), addr
    net.delete_namespaced_ingress("plain", "default")


def test_hosts_and_paths_route_as_upstream_says(backends, net):
    cluster = backends
    ingress(net, "routes", {"rules": [
        rule("app.example", ("/", "Prefix", "app-a", {"name": "web"}), ("/b", "Prefix", "app-b", {"number": 80}),
             ("/exact", "Exact", "app-b", {"number": 80})),
        rule("*.wild.example", ("/", "Prefix", "app-b", {"number": 80})),
    ]})
    addr = cluster.node_ip
    eventually(lambda: request(addr, "app.example", "/")[0] == 200)
    cases = [("app.example", "/", "app-a"), ("app.example", "/b/x", "app-b"), ("app.example", "/bx", "app-a"),
             ("app.example", "/exact", "app-b"), ("app.example", "/exact/x", "app-a"),
             ("APP.example:80", "/b/x", "app-b"), ("one.wild.example", "/", "app-b")]
    for host, path, want in cases:
        status, _, body = request(addr, host, path)
        assert (status, body) == (200, want), (host, path, status, body)
    for host in ("two.levels.wild.example", "wild.example", "nothing.example"):
        assert request(addr, host, "/")[0] == 404, host
    # Who the client is, as the backend sees it; what the client claimed is not trusted.
    _, _, body = request(cluster.host_ip, "app.example", "/cgi-bin/env", headers={"X-Forwarded-For": "6.6.6.6"})
    env = cgi_env(body)
    assert env["HTTP_X_FORWARDED_FOR"] == env["HTTP_X_REAL_IP"] != "6.6.6.6"
    assert env["HTTP_X_FORWARDED_HOST"] == env["HTTP_HOST"] == "app.example"
    assert (env["HTTP_X_FORWARDED_PROTO"], env["HTTP_X_FORWARDED_PORT"]) == ("http", "80")
    assert env["HTTP_FORWARDED"].startswith(f"for={env['HTTP_X_REAL_IP']};")
    net.delete_namespaced_ingress("routes", "default")


def make_cert(directory, host):
    crt, key = os.path.join(directory, f"{host}.crt"), os.path.join(directory, f"{host}.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", key, "-out", crt, "-days", "2", "-subj", f"/CN={host}",
                    "-addext", f"subjectAltName=DNS:{host}"], check=True, capture_output=True)
    return crt, key


def test_tls_by_sni_for_two_hosts_and_http_is_redirected(backends, net):
    cluster = backends
    with tempfile.TemporaryDirectory() as d:
        certs = {}
        for host in ("a.tls.example", "b.tls.example"):
            crt, key = make_cert(d, host)
            certs[host] = crt
            with open(crt, "rb") as c, open(key, "rb") as k:
                cluster.core.create_namespaced_secret("default", {
                    "apiVersion": "v1", "kind": "Secret", "metadata": {"name": host}, "type": "kubernetes.io/tls",
                    "data": {"tls.crt": base64.b64encode(c.read()).decode(), "tls.key": base64.b64encode(k.read()).decode()}})
        ingress(net, "tls", {
            "tls": [{"hosts": [h], "secretName": h} for h in certs],
            "rules": [rule("a.tls.example", ("/", "Prefix", "app-a", {"number": 80})),
                      rule("b.tls.example", ("/", "Prefix", "app-b", {"number": 80}))]})
        for addr in addresses(cluster):
            for host, want in (("a.tls.example", "app-a"), ("b.tls.example", "app-b")):
                # Verified against that host's own certificate: the other's would fail.
                status, _, body = served(addr, host, "/", port=443, tls_ca=certs[host])
                assert (status, body) == (200, want), (addr, host)
                env = cgi_env(request(addr, host, "/cgi-bin/env", port=443, tls_ca=certs[host])[2])
                assert env["HTTP_X_FORWARDED_PROTO"] == "https"
            status, headers, _ = request(addr, "a.tls.example", "/x?y=1")
            assert status == 308 and headers["Location"] == "https://a.tls.example/x?y=1"
            # A name no Secret covers gets the default certificate, which is nobody's.
            with pytest.raises(ssl.SSLCertVerificationError):
                request(addr, "a.tls.example", "/", port=443, tls_ca=certs["b.tls.example"])
        # A renewed certificate is served without a restart, as soon as the node sees it
        # (each node watches the Secrets its routes name).
        crt, key = make_cert(d, "a.tls.example")
        with open(crt, "rb") as c, open(key, "rb") as k:
            cluster.core.patch_namespaced_secret("a.tls.example", "default", {
                "data": {"tls.crt": base64.b64encode(c.read()).decode(), "tls.key": base64.b64encode(k.read()).decode()}})
        # (Until then the old certificate fails to verify: an OSError, retried.)
        eventually(lambda: request(cluster.node_ip, "a.tls.example", "/", port=443, tls_ca=crt)[0] == 200, timeout=5)
        # A missing Secret: the default certificate, and an Event that names it.
        ingress(net, "tls-missing", {"tls": [{"hosts": ["c.tls.example"], "secretName": "nope"}],
                                     "rules": [rule("c.tls.example", ("/", "Prefix", "app-a", {"number": 80}))]})
        wait_for(lambda: [e for e in cluster.core.list_namespaced_event(
            "default", field_selector="involvedObject.name=tls-missing").items if e.reason == "SecretNotFound"
            and "default/nope" in e.message], timeout=20)
        status, _, body = served(cluster.node_ip, "c.tls.example", "/", port=443, tls_ca="")
        assert (status, body) == (200, "app-a")
    for name in ("tls", "tls-missing"):
        net.delete_namespaced_ingress(name, "default")


def test_rewrite_target_and_a_missing_service(backends, net):
    cluster = backends
    ingress(net, "rewrite", {"rules": [rule("rw.example", ("/api(/|$)(.*)", "ImplementationSpecific", "app-b", {"number": 80}),
                                               ("/gone", "Prefix", "nothing-here", {"number": 80}))]},
            annotations={"nginx.ingress.kubernetes.io/rewrite-target": "/$2",
                         "nginx.ingress.kubernetes.io/not-a-thing": "x"})
    addr = cluster.host_ip
    status, _, body = served(addr, "rw.example", "/api/cgi-bin/env?q=1")
    env = cgi_env(body)
    assert status == 200 and env["pod"] == "app-b" and env["REQUEST_URI"] == "/cgi-bin/env?q=1", body
    status, _, body = request(addr, "rw.example", "/gone")
    assert status == 503 and "nothing-here" in body, body
    events = lambda: {e.reason: e.message for e in cluster.core.list_namespaced_event(  # noqa: E731
        "default", field_selector="involvedObject.name=rewrite").items}
    wait_for(lambda: {"ServiceNotFound", "UnknownAnnotation"} <= set(events()), timeout=20)
    assert "nothing-here" in events()["ServiceNotFound"]
    assert "not-a-thing" in events()["UnknownAnnotation"]
    net.delete_namespaced_ingress("rewrite", "default")


def read_head(sock):
    """An HTTP head, a byte at a time so nothing after it is read: up to the blank line,
    or what came before the peer closed."""
    head = b""
    while not head.endswith(b"\r\n\r\n") and (byte := sock.recv(1)):
        head += byte
    return head


class WebSocketEcho:
    """A WebSocket echo server on the host (RFC 6455: the handshake, then each text frame
    the client sends comes back), the backend of a Service without a selector."""

    def __init__(self, addr):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((addr, 0))
        self.sock.listen(8)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.echo, args=(conn,), daemon=True).start()

    def echo(self, conn):
        with conn:
            head = read_head(conn)
            if not head.endswith(b"\r\n\r\n"):
                return
            headers = dict(l.split(": ", 1) for l in head.decode().split("\r\n")[1:] if ": " in l)
            key = {k.lower(): v for k, v in headers.items()}["sec-websocket-key"]
            accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
            conn.sendall(f"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode())
            while True:
                h = conn.recv(2)
                if len(h) < 2:
                    return
                n = h[1] & 0x7F
                mask = conn.recv(4)
                data = bytes(b ^ mask[i % 4] for i, b in enumerate(conn.recv(n)))
                conn.sendall(bytes([0x81, len(data)]) + data)

    def close(self):
        self.sock.close()


def handshake(addr, host):
    """A WebSocket opened through the proxy, or None while the route is not there yet."""
    s = socket.create_connection((addr, 80), timeout=5)
    s.sendall(f"GET /chat HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n".encode()
              + b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = read_head(s)
    if not head.startswith(b"HTTP/1.1 101"):
        s.close()
        return None
    assert b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head, head
    return s


def send_text(s, text):
    """One masked text frame, as a client sends it."""
    mask = os.urandom(4)
    s.sendall(bytes([0x81, 0x80 | len(text)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(text)))


def test_a_websocket_passes_through(backends, net):
    cluster = backends
    ws = WebSocketEcho(cluster.host_ip)
    try:
        cluster.service("ws", {"ports": [{"name": "ws", "port": 80, "targetPort": ws.port}]})
        client.DiscoveryV1Api(cluster.api).create_namespaced_endpoint_slice("default", {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "ws-host", "labels": {"kubernetes.io/service-name": "ws"}},
            "addressType": "IPv4", "ports": [{"name": "ws", "port": ws.port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [cluster.host_ip], "conditions": {"ready": True}}]})
        ingress(net, "ws", {"rules": [rule("ws.example", ("/", "Prefix", "ws", {"number": 80}))]})
        for addr in addresses(cluster):
            s = eventually(lambda: handshake(addr, "ws.example"))
            for text in (b"hello", b"through the proxy"):
                send_text(s, text)
                frame = s.recv(2 + len(text))
                assert frame == bytes([0x81, len(text)]) + text, frame
            s.close()
        # A tunnel stays open while anything moves, and is closed after proxy-read-timeout
        # of silence (nginx's rule, so a dead peer does not hold it for ever).
        ingress(net, "ws-quiet", {"rules": [rule("ws-quiet.example", ("/", "Prefix", "ws", {"number": 80}))]},
                annotations={"nginx.ingress.kubernetes.io/proxy-read-timeout": "2"})
        s = eventually(lambda: handshake(cluster.node_ip, "ws-quiet.example"))
        for _ in range(3):
            time.sleep(1)
            send_text(s, b"ping")
            assert s.recv(6) == bytes([0x81, 4]) + b"ping"
        s.settimeout(10)
        started = time.monotonic()
        assert s.recv(16) == b"", "the quiet tunnel is closed"
        assert time.monotonic() - started > 1
        s.close()
    finally:
        ws.close()
        for name in ("ws", "ws-quiet"):
            net.delete_namespaced_ingress(name, "default")
        cluster.core.delete_namespaced_service("ws", "default")


def test_a_backend_rolls_without_a_failed_request_through_the_ingress(backends, net):
    cluster = backends
    apps = client.AppsV1Api(cluster.api)
    container = {"name": "web", "image": BUSYBOX, "imagePullPolicy": "Never", "command": ["sh", "-c", BACKEND],
                 "env": [{"name": "ROUND", "value": "1"}],
                 "readinessProbe": {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1},
                 # The proxy drops an endpoint the moment it is not ready; connections
                 # already open finish during the grace period.
                 "lifecycle": {"preStop": {"exec": {"command": ["sleep", "3"]}}}}
    apps.create_namespaced_deployment("default", {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "ing-roll"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "ing-roll"}},
                 "strategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                 "template": {"metadata": {"labels": {"app": "ing-roll"}},
                              "spec": {"terminationGracePeriodSeconds": 10, "containers": [container]}}}})
    cluster.service("ing-roll", {"selector": {"app": "ing-roll"}, "ports": [{"port": 80, "targetPort": 8080}]})
    ingress(net, "roll", {"rules": [rule("roll.example", ("/", "Prefix", "ing-roll", {"number": 80}))]})
    wait_for(lambda: apps.read_namespaced_deployment("ing-roll", "default").status.ready_replicas == 2, timeout=90)
    eventually(lambda: request(cluster.node_ip, "roll.example", "/")[0] == 200)
    old = {p.metadata.name for p in cluster.core.list_namespaced_pod("default", label_selector="app=ing-roll").items}
    container["env"][0]["value"] = "2"
    apps.patch_namespaced_deployment("ing-roll", "default", {"spec": {"template": {"spec": {"containers": [container]}}}})
    failures, ok, deadline, names = [], 0, time.time() + 120, old
    while time.time() < deadline:
        for addr in addresses(cluster):
            status, _, body = request(addr, "roll.example", "/")
            if status == 200:
                ok += 1
            else:
                failures.append((addr, status, body[:80]))
        pods = cluster.core.list_namespaced_pod("default", label_selector="app=ing-roll").items
        names = {p.metadata.name for p in pods}
        if not names & old and len(pods) == 2 and all(p.status.phase == "Running" for p in pods):
            break
    assert not names & old, "the rollout finished"
    print(f"rollout through the Ingress: {ok} requests answered, {len(failures)} failed")
    assert ok > 50 and not failures, failures[:5]
    net.delete_namespaced_ingress("roll", "default")
    apps.delete_namespaced_deployment("ing-roll", "default")
    cluster.core.delete_namespaced_service("ing-roll", "default")
