"""The network the notes describe, on two nodes: a server with its agent in this machine's
network namespace and a second agent in a namespace of its own, joined by a veth pair (its
"LAN"). Real pods from the test's busybox image talk across nodes over VXLAN (and host-gw),
through ClusterIPs, NodePorts, hostPorts and the cluster DNS; an upstream DNS server the test
runs answers what the cluster forwards. Everything made (namespaces, links, processes,
nftables tables) is removed even when a test fails."""
import ipaddress
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.request
import uuid

import pytest
from kubernetes import client, config

from conftest import BIN, BUSYBOX, Server, drop_busybox, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("nft"),
                                reason="needs root, iproute2 and nftables")

# A web server answering `/cgi-bin/who` with the client's address (busybox httpd gives it as
# `[::ffff:a.b.c.d]`) and its own host name.
WEB = ("mkdir -p /www/cgi-bin; printf '%s\\n' '#!/bin/sh' 'echo Content-Type: text/plain' 'echo' "
       "'a=${REMOTE_ADDR#\\[::ffff:}' 'echo ${a%\\]} $(hostname)' > /www/cgi-bin/who; chmod +x /www/cgi-bin/who; "
       "exec httpd -f -p 8080 -h /www")


def sh(*args):
    subprocess.run(args, check=True, capture_output=True)


def in_ns(ns, *args, **kw):
    return subprocess.run(["nsenter", f"--net=/run/netns/{ns}", *args], capture_output=True, text=True, **kw)


# --- a small DNS client and server (wire format, RFC 1035) ---------------------------------

TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "TXT": 16, "AAAA": 28, "SRV": 33}
NAMES = {v: k for k, v in TYPES.items()}


def encode_name(name):
    return b"".join(bytes([len(label)]) + label.encode() for label in name.rstrip(".").split(".") if label) + b"\0"


def read_name(msg, off):
    labels, jumped, end = [], False, None
    for _ in range(128):
        n = msg[off]
        if n & 0xC0 == 0xC0:
            if not jumped:
                end = off + 2
            off, jumped = ((n & 0x3F) << 8) | msg[off + 1], True
            continue
        off += 1
        if n == 0:
            break
        labels.append(msg[off:off + n].decode())
        off += n
    return ".".join(labels), (end if jumped else off)


def dns_query(server, name, qtype, timeout=3):
    """Asks `server` (UDP port 53); returns (rcode, [(type, ttl, value)])."""
    qid = random.randint(0, 0xFFFF)
    query = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + encode_name(name) + struct.pack(">HH", TYPES[qtype], 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(query, (server, 53))
        msg = s.recv(4096)
    rid, flags, qd, an, _, _ = struct.unpack(">HHHHHH", msg[:12])
    assert rid == qid
    off = 12
    for _ in range(qd):
        _, off = read_name(msg, off)
        off += 4
    answers = []
    for _ in range(an):
        _, off = read_name(msg, off)
        rtype, _, ttl, length = struct.unpack(">HHIH", msg[off:off + 10])
        off += 10
        data = msg[off:off + length]
        if rtype == 1:
            value = socket.inet_ntoa(data)
        elif rtype in (5, 12, 2):
            value = read_name(msg, off)[0]
        elif rtype == 33:
            prio, weight, port = struct.unpack(">HHH", data[:6])
            value = (prio, weight, port, read_name(msg, off + 6)[0])
        elif rtype == 16:
            value = data[1:1 + data[0]].decode()
        else:
            value = data
        answers.append((NAMES.get(rtype, rtype), ttl, value))
        off += length
    return flags & 0xF, answers


class UpstreamDns:
    """A DNS server on `addr`:53 answering every A query under `test.example` with
    192.0.2.77 (NXDOMAIN otherwise), counting what it is asked."""

    def __init__(self, addr):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((addr, 53))
        self.asked = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self):
        while True:
            try:
                msg, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            if not msg or peer is None:
                return  # shut down by close()
            qid, _, _, _, _, _ = struct.unpack(">HHHHHH", msg[:12])
            name, off = read_name(msg, 12)
            qtype = struct.unpack(">H", msg[off:off + 2])[0]
            question = msg[12:off + 4]
            self.asked.append(name)
            if name.endswith("test.example") and qtype == 1:
                answer = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 60, 4) + socket.inet_aton("192.0.2.77")
                reply = struct.pack(">HHHHHH", qid, 0x8180, 1, 1, 0, 0) + question + answer
            else:
                reply = struct.pack(">HHHHHH", qid, 0x8183, 1, 0, 0, 0) + question
            self.sock.sendto(reply, peer)

    def close(self):
        # A thread blocked in recvfrom keeps the socket (and its port) alive past close():
        # shutting it down wakes that thread, so the address is free for the next cluster.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.thread.join(timeout=5)
        self.sock.close()


# --- the cluster --------------------------------------------------------------------------

class Cluster:
    def __init__(self, backend):
        self.backend = backend
        tag = uuid.uuid4().hex[:6]
        self.ns, self.host_if, self.node_if = f"brn-{tag}", f"bnh{tag}", f"bnn{tag}"
        # A subnet no interface here has (an earlier module's may still be going away).
        used = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
        subnet = next(n for n in [1 + (int(tag, 16) + i) % 250 for i in range(250)] if f"10.252.{n}." not in used)
        self.host_ip, self.node_ip = f"10.252.{subnet}.1", f"10.252.{subnet}.2"
        self.names = (f"{backend}-1", f"{backend}-2")
        self.server = None
        self.agent = None
        self.upstream = None

    def start(self):
        sh("ip", "netns", "add", self.ns)
        sh("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.node_if)
        sh("ip", "link", "set", self.node_if, "netns", self.ns)
        sh("ip", "addr", "add", f"{self.host_ip}/24", "dev", self.host_if)
        sh("ip", "link", "set", self.host_if, "up")
        for cmd in (["ip", "addr", "add", f"{self.node_ip}/24", "dev", self.node_if],
                    ["ip", "link", "set", self.node_if, "up"], ["ip", "link", "set", "lo", "up"],
                    ["ip", "route", "add", "default", "via", self.host_ip]):
            r = in_ns(self.ns, *cmd)
            assert r.returncode == 0, r.stderr
        self.upstream = UpstreamDns(self.host_ip)
        self.resolv = os.path.join(os.path.dirname(__file__), f".resolv-{self.ns}.conf")
        with open(self.resolv, "w") as f:
            f.write(f"nameserver {self.host_ip}\nsearch lan.example\n")
        common = ["--node-ip", None, "--flannel-backend", self.backend, "--resolv-conf", self.resolv]
        self.server = Server(extra_args=["--tls-san", self.host_ip, "--node-name", self.names[0],
                                         *[self.host_ip if a is None else a for a in common]],
                             agent=True, bind="0.0.0.0")
        drop_busybox(self.server.data_dir)
        self.server.start()
        with open(os.path.join(self.server.data_dir, "server", "node-token")) as f:
            token = f.read().strip()
        self.agent_dir = os.path.join(self.server.dir, "worker")
        self.worker_logs = os.path.join(self.server.dir, "worker-pod-logs")
        drop_busybox(self.agent_dir)
        self.agent_log = os.path.join(self.server.dir, "worker.log")
        self.agent = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.ns}", BIN, "agent", "--server", f"https://{self.host_ip}:{self.server.port}",
             "--token", token, "--data-dir", self.agent_dir, "--node-name", self.names[1],
             "--pod-log-dir", self.worker_logs, *[self.node_ip if a is None else a for a in common]],
            stdout=open(self.agent_log, "wb"), stderr=subprocess.STDOUT)
        self.api = config.new_client_from_config(config_file=self.server.kubeconfig)
        self.core = client.CoreV1Api(self.api)
        for name in self.names:
            wait_for(lambda: any(c.type == "Ready" and c.status == "True"
                                 for c in (self.core.read_node(name).status.conditions or [])), timeout=60)
        # Each node knows the other's overlay address before a test relies on it.
        wait_for(lambda: all((self.core.read_node(n).metadata.annotations or {}).get("bramble.io/node-ip")
                             for n in self.names), timeout=30)
        return self

    def logs(self):
        with open(self.agent_log, "rb") as f:
            return self.server.log() + "\n--- worker ---\n" + f.read().decode(errors="replace")[-4000:]

    def cleanup(self):
        if self.agent:
            self.agent.send_signal(signal.SIGTERM)
            try:
                self.agent.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.agent.kill()
                self.agent.wait()
            in_ns(self.ns, BIN, "killall", "--data-dir", self.agent_dir, "--pod-log-dir", self.worker_logs,
                  timeout=60)
        if self.server:
            self.server.cleanup()
        if self.upstream:
            self.upstream.close()
        if getattr(self, "resolv", None) and os.path.exists(self.resolv):
            os.remove(self.resolv)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)

    def pod(self, name, node, command, labels=None, **spec):
        container = {"name": "main", "image": BUSYBOX, "imagePullPolicy": "Never", "command": ["sh", "-c", command]}
        container.update(spec.pop("container", {}))
        body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}},
                "spec": {"nodeName": node, "terminationGracePeriodSeconds": 2, "containers": [container], **spec}}
        self.core.create_namespaced_pod("default", body)
        return wait_for(lambda: (p := self.core.read_namespaced_pod(name, "default")).status.phase == "Running"
                        and p.status.pod_ip and p, timeout=60)

    def service(self, name, spec):
        self.core.create_namespaced_service("default", {"apiVersion": "v1", "kind": "Service",
                                                        "metadata": {"name": name}, "spec": spec})
        return self.core.read_namespaced_service(name, "default")

    def delete_pods(self, *names):
        for n in names:
            self.core.delete_namespaced_pod(n, "default", grace_period_seconds=0)
        wait_for(lambda: not set(names) & {p.metadata.name for p in self.core.list_namespaced_pod("default").items},
                 timeout=60)


def get(url, timeout=3):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode().strip()


def get_eventually(url, timeout=30):
    """The body at `url` once it answers: a Service's rules reach every node a few
    milliseconds after it is created, and until then its address leads nowhere."""
    def attempt():
        try:
            return get(url)
        except OSError:
            return None
    return wait_for(attempt, timeout=timeout)


def log_of(cluster, pod):
    return cluster.core.read_namespaced_pod_log(pod, "default")


@pytest.fixture(scope="module")
def cluster():
    c = Cluster("vxlan")
    try:
        yield c.start()
    finally:
        c.cleanup()


@pytest.fixture(scope="module")
def web(cluster):
    """One web pod on each node behind the Service `web` (ClusterIP, port 80 -> 8080)."""
    a = cluster.pod("web-a", cluster.names[0], WEB, {"app": "web"}, container={"ports": [{"name": "http", "containerPort": 8080}]})
    b = cluster.pod("web-b", cluster.names[1], WEB, {"app": "web"}, container={"ports": [{"name": "http", "containerPort": 8080}]})
    svc = cluster.service("web", {"selector": {"app": "web"}, "type": "NodePort",
                                  "ports": [{"name": "http", "port": 80, "targetPort": "http"}]})
    wait_for(lambda: len([e for s in client.DiscoveryV1Api(cluster.api).list_namespaced_endpoint_slice(
        "default", label_selector="kubernetes.io/service-name=web").items for e in s.endpoints or []]) == 2, timeout=30)
    return a, b, svc


def test_pods_on_two_nodes_reach_each_other_and_the_lan(cluster, web):
    a, b, _ = web
    assert ipaddress.ip_address(a.status.pod_ip) in ipaddress.ip_network(cluster.core.read_node(cluster.names[0]).spec.pod_cidr)
    assert ipaddress.ip_address(b.status.pod_ip) in ipaddress.ip_network(cluster.core.read_node(cluster.names[1]).spec.pod_cidr)
    cluster.pod("caller", cluster.names[0],
                f"while true; do wget -q -O - http://{b.status.pod_ip}:8080/cgi-bin/who; sleep 1; done")
    # Pod to pod across nodes keeps the caller's address (no masquerade inside the cluster).
    caller_ip = cluster.core.read_namespaced_pod("caller", "default").status.pod_ip
    wait_for(lambda: f"{caller_ip} web-b" in log_of(cluster, "caller"), timeout=30)
    # The node reaches pods on the other node too.
    assert get(f"http://{b.status.pod_ip}:8080/cgi-bin/who").endswith("web-b")
    # Pod to the LAN: a server outside the cluster (in the worker's namespace, not a pod)
    # sees the node's address: masqueraded.
    server = subprocess.Popen(["nsenter", f"--net=/run/netns/{cluster.ns}", "python3", "-c",
                               "import http.server as h\n"
                               "class H(h.BaseHTTPRequestHandler):\n"
                               "  def do_GET(s):\n"
                               "    s.send_response(200); s.end_headers(); s.wfile.write(s.client_address[0].encode())\n"
                               f"h.HTTPServer(('{cluster.node_ip}', 18999), H).serve_forever()"])
    try:
        cluster.pod("to-lan", cluster.names[0],
                    f"while true; do wget -q -O - http://{cluster.node_ip}:18999/ && echo; sleep 1; done")
        wait_for(lambda: cluster.host_ip in log_of(cluster, "to-lan"), timeout=30)
    finally:
        server.kill()
        server.wait()
    cluster.delete_pods("caller", "to-lan")


def test_cluster_ip_balances_over_both_nodes_from_a_pod_and_from_the_node(cluster, web):
    _, _, svc = web
    ip = svc.spec.cluster_ip
    seen = set()
    deadline = time.time() + 30
    while seen != {"web-a", "web-b"} and time.time() < deadline:
        try:
            seen.add(get(f"http://{ip}/cgi-bin/who").split()[1])
        except OSError:
            time.sleep(0.2)
    assert seen == {"web-a", "web-b"}, cluster.logs()
    cluster.pod("cip-caller", cluster.names[1],
                f"while true; do wget -q -O - http://{ip}/cgi-bin/who; wget -q -O - http://web/cgi-bin/who; sleep 0.2; done")
    wait_for(lambda: "web-a" in (t := log_of(cluster, "cip-caller")) and "web-b" in t, timeout=30)
    cluster.delete_pods("cip-caller")


def test_node_ports_answer_on_every_node_and_localhost(cluster, web):
    _, _, svc = web
    port = svc.spec.ports[0].node_port
    assert 30000 <= port <= 32767
    for addr in (cluster.host_ip, cluster.node_ip, "127.0.0.1"):
        body = get_eventually(f"http://{addr}:{port}/cgi-bin/who")
        assert body.split()[1] in ("web-a", "web-b")
    # From the worker's namespace (a machine on the LAN) to the server node.
    r = in_ns(cluster.ns, "python3", "-c", f"import urllib.request as u; print(u.urlopen('http://{cluster.host_ip}:{port}/cgi-bin/who', timeout=3).read().decode())")
    assert r.returncode == 0 and ("web-a" in r.stdout or "web-b" in r.stdout), r.stderr


def test_external_ips_reach_the_service_through_the_node_they_are_routed_to(cluster, web):
    """An address the LAN routes to a node (`externalIPs`, as a router or kube-vip would
    send it) reaches the Service's endpoints on its port, as kube-proxy does."""
    external = "192.0.2.77"  # TEST-NET-1: never a real host
    svc = cluster.service("web-ext", {"selector": {"app": "web"}, "externalIPs": [external],
                                      "ports": [{"port": 8081, "targetPort": 8080}]})
    route = ["ip", "route", "replace", f"{external}/32", "via", cluster.host_ip]
    assert in_ns(cluster.ns, *route).returncode == 0
    try:
        code = (f"import urllib.request as u; print(u.urlopen('http://{external}:8081/cgi-bin/who', "
                "timeout=3).read().decode())")
        seen = set()
        deadline = time.time() + 30
        while seen != {"web-a", "web-b"} and time.time() < deadline:
            r = in_ns(cluster.ns, "python3", "-c", code)
            if r.returncode == 0:
                seen.add(r.stdout.split()[1])
            else:
                time.sleep(0.2)
        assert seen == {"web-a", "web-b"}, (seen, r.stderr, cluster.logs())
        # Only the Service's port: the address is not the node's to answer on otherwise.
        other = (f"import socket; s = socket.socket(); s.settimeout(2); "
                 f"print(s.connect_ex(('{external}', 8082)))")
        assert in_ns(cluster.ns, "python3", "-c", other).stdout.strip() != "0"
    finally:
        in_ns(cluster.ns, "ip", "route", "del", f"{external}/32")
        cluster.core.delete_namespaced_service(svc.metadata.name, "default")


def test_local_traffic_policy_keeps_the_client_address_and_affinity_sticks(cluster, web):
    svc = cluster.service("web-local", {"selector": {"app": "web"}, "type": "NodePort", "externalTrafficPolicy": "Local",
                                        "ports": [{"port": 80, "targetPort": 8080}]})
    port = svc.spec.ports[0].node_port
    # Asked from the worker's LAN side at the server node: only web-a (local) answers, and
    # it sees the client's own address.
    code = (f"import urllib.request as u; print(u.urlopen('http://{cluster.host_ip}:{port}/cgi-bin/who', "
            "timeout=3).read().decode())")
    out = wait_for(lambda: (r := in_ns(cluster.ns, "python3", "-c", code)).returncode == 0 and r.stdout.strip(), timeout=30)
    assert out == f"{cluster.node_ip} web-a", out
    for _ in range(5):
        assert in_ns(cluster.ns, "python3", "-c", code).stdout.strip() == f"{cluster.node_ip} web-a"
    sticky = cluster.service("web-sticky", {"selector": {"app": "web"}, "sessionAffinity": "ClientIP",
                                            "ports": [{"port": 80, "targetPort": 8080}]})
    first = get_eventually(f"http://{sticky.spec.cluster_ip}/cgi-bin/who")
    for _ in range(12):
        assert get(f"http://{sticky.spec.cluster_ip}/cgi-bin/who") == first
    for name in ("web-local", "web-sticky"):
        cluster.core.delete_namespaced_service(name, "default")


def test_a_service_with_no_endpoint_is_refused_fast_and_hairpin_works(cluster, web):
    svc = cluster.service("nobody", {"selector": {"app": "nobody"}, "ports": [{"port": 80}]})

    def refused():
        started = time.time()
        try:
            get(f"http://{svc.spec.cluster_ip}/", timeout=5)
        except urllib.error.URLError as e:
            return isinstance(e.reason, ConnectionRefusedError) and time.time() - started < 2
        return False
    wait_for(refused, timeout=30)
    cluster.core.delete_namespaced_service("nobody", "default")
    # Hairpin: the only endpoint of a Service reaches itself through it.
    me = cluster.service("self-svc", {"selector": {"app": "self"}, "ports": [{"port": 80, "targetPort": 8080}]})
    cluster.pod("self", cluster.names[1], WEB.replace("exec httpd -f", "httpd") +
                f"; while true; do wget -q -O - http://{me.spec.cluster_ip}/cgi-bin/who; sleep 1; done", {"app": "self"})
    wait_for(lambda: "self" in log_of(cluster, "self").split(), timeout=30)
    cluster.core.delete_namespaced_service("self-svc", "default")
    cluster.delete_pods("self")


def test_host_port_reaches_the_pod(cluster):
    cluster.pod("hp", cluster.names[1], WEB, container={"ports": [{"containerPort": 8080, "hostPort": 18080}]})
    try:
        body = get_eventually(f"http://{cluster.node_ip}:18080/cgi-bin/who")
    except AssertionError:
        pod_ip = cluster.core.read_namespaced_pod("hp", "default").status.pod_ip
        rules = in_ns(cluster.ns, "nft", "list", "chain", "ip", "bramble", "hostports").stdout
        raise AssertionError(f"hostPort 18080 -> {pod_ip}:8080 never answered; rules:\n{rules}\n{cluster.logs()}")
    assert body.split()[1] == "hp"
    cluster.delete_pods("hp")


def test_cluster_dns_answers_from_the_watch_caches_and_forwards_the_rest(cluster, web):
    _, b, svc = web
    dns = cluster.core.read_namespaced_service("kube-dns", "kube-system")
    assert dns.spec.cluster_ip == "10.43.0.10"
    zone = "cluster.local"
    rcode, ans = wait_for(lambda: dns_query(dns.spec.cluster_ip, f"web.default.svc.{zone}", "A"), timeout=30)
    assert rcode == 0 and ans == [("A", 5, svc.spec.cluster_ip)]
    rcode, ans = dns_query(dns.spec.cluster_ip, f"_http._tcp.web.default.svc.{zone}", "SRV")
    assert rcode == 0 and ans[0][2][2] == 80 and ans[0][2][3] == f"web.default.svc.{zone}"
    rcode, ans = dns_query(dns.spec.cluster_ip, ".".join(reversed(svc.spec.cluster_ip.split("."))) + ".in-addr.arpa", "PTR")
    assert rcode == 0 and ans[0][2] == f"web.default.svc.{zone}"
    assert dns_query(dns.spec.cluster_ip, f"nothing.default.svc.{zone}", "A")[0] == 3
    assert dns_query(dns.spec.cluster_ip, f"dns-version.{zone}", "TXT")[1][0][2] == "1.1.0"
    dashed = b.status.pod_ip.replace(".", "-")
    assert dns_query(dns.spec.cluster_ip, f"{dashed}.default.pod.{zone}", "A")[1] == [("A", 5, b.status.pod_ip)]
    # Headless with a StatefulSet-style host name, and ExternalName.
    cluster.service("db", {"clusterIP": "None", "selector": {"app": "db"}, "ports": [{"name": "pg", "port": 5432}]})
    assert wait_for(lambda: dns_query(dns.spec.cluster_ip, f"db.default.svc.{zone}", "A")[0] == 3 and True, timeout=30)
    db = cluster.pod("db-0", cluster.names[1], "sleep 3600", {"app": "db"}, hostname="db-0", subdomain="db")
    wait_for(lambda: dns_query(dns.spec.cluster_ip, f"db.default.svc.{zone}", "A")[1] == [("A", 5, db.status.pod_ip)], timeout=30)
    assert dns_query(dns.spec.cluster_ip, f"db-0.db.default.svc.{zone}", "A")[1] == [("A", 5, db.status.pod_ip)]
    cluster.service("ext", {"type": "ExternalName", "externalName": "www.test.example"})
    rcode, ans = wait_for(lambda: (r := dns_query(dns.spec.cluster_ip, f"ext.default.svc.{zone}", "A"))[1] and r, timeout=30)
    assert ans[0] == ("CNAME", 5, "www.test.example")
    # Outside the zone: forwarded to the node's resolver (the test's server), then cached.
    before = len(cluster.upstream.asked)
    dns_query(dns.spec.cluster_ip, "api.test.example", "A")
    rcode, ans = dns_query(dns.spec.cluster_ip, "api.test.example", "A")
    assert rcode == 0 and ans[0][0] == "A" and ans[0][2] == "192.0.2.77"
    assert cluster.upstream.asked[before:].count("api.test.example") == 1, "the second answer came from the cache"
    assert dns_query(dns.spec.cluster_ip, "missing.other.example", "A")[0] == 3
    # Pods resolve through their resolv.conf: short names, the search path, the upstream.
    cluster.pod("resolver", cluster.names[1],
                "cat /etc/resolv.conf; ip link show eth0; nslookup web; nslookup api.test.example; env | sort; "
                "while ! wget -q -O - http://web/cgi-bin/who; do sleep 1; done; sleep 3600")
    text = wait_for(lambda: "192.0.2.77" in (t := log_of(cluster, "resolver")) and " web-" in t and t, timeout=30)
    assert "nameserver 10.43.0.10" in text and "search default.svc.cluster.local svc.cluster.local cluster.local lan.example" in text
    assert "options ndots:5" in text and svc.spec.cluster_ip in text
    assert "mtu 1450" in text, "pods' MTU leaves room for the vxlan header"
    assert f"WEB_SERVICE_HOST={svc.spec.cluster_ip}" in text and "WEB_PORT_80_TCP_PORT=80" in text
    assert "KUBERNETES_SERVICE_HOST=10.43.0.1" in text
    for name in ("db", "ext"):
        cluster.core.delete_namespaced_service(name, "default")
    cluster.delete_pods("db-0", "resolver")


def lb_ingress(cluster, name):
    svc = cluster.core.read_namespaced_service(name, "default")
    return sorted(i.ip for i in (svc.status.load_balancer.ingress or []))


def test_load_balancer_services_are_served_on_every_nodes_address(cluster, web):
    spec = {"selector": {"app": "web"}, "type": "LoadBalancer", "ports": [{"name": "http", "port": 8088, "targetPort": "http"}]}
    cluster.service("web-lb", spec)
    both = sorted([cluster.host_ip, cluster.node_ip])
    wait_for(lambda: lb_ingress(cluster, "web-lb") == both, timeout=20)
    for addr in both:
        assert get_eventually(f"http://{addr}:8088/cgi-bin/who").split()[1] in ("web-a", "web-b")
    # From the LAN (the worker's namespace) to the server node's address.
    r = in_ns(cluster.ns, "python3", "-c", f"import urllib.request as u; print(u.urlopen('http://{cluster.host_ip}:8088/cgi-bin/who', timeout=3).read().decode())")
    assert r.returncode == 0 and ("web-a" in r.stdout or "web-b" in r.stdout), r.stderr

    # allocateLoadBalancerNodePorts: false: no node port, served all the same.
    bare = cluster.service("web-lb-bare", {**spec, "allocateLoadBalancerNodePorts": False,
                                           "ports": [{"name": "http", "port": 8089, "targetPort": "http"}]})
    assert bare.spec.ports[0].node_port is None
    wait_for(lambda: lb_ingress(cluster, "web-lb-bare") == both, timeout=20)
    assert get_eventually(f"http://{cluster.node_ip}:8089/cgi-bin/who").split()[1] in ("web-a", "web-b")
    cluster.core.delete_namespaced_service("web-lb-bare", "default")

    # A second LoadBalancer on the same port waits, with an Event naming the holder.
    cluster.service("web-lb2", spec)
    def conflict():
        events = cluster.core.list_namespaced_event("default", field_selector="involvedObject.name=web-lb2").items
        return [e for e in events if e.reason == "PortConflict" and "default/web-lb" in e.message]
    wait_for(conflict, timeout=20)
    assert lb_ingress(cluster, "web-lb2") == []
    # The holder goes: the next in line takes the port.
    cluster.core.delete_namespaced_service("web-lb", "default")
    wait_for(lambda: lb_ingress(cluster, "web-lb2") == both, timeout=20)
    assert get_eventually(f"http://{cluster.node_ip}:8088/cgi-bin/who").split()[1] in ("web-a", "web-b")

    # loadBalancerSourceRanges: clients outside the ranges are dropped, inside answered.
    patch = lambda ranges: cluster.core.patch_namespaced_service(  # noqa: E731
        "web-lb2", "default", {"spec": {"loadBalancerSourceRanges": ranges}})
    patch(["192.0.2.0/24"])
    def dropped():
        try:
            get(f"http://{cluster.node_ip}:8088/cgi-bin/who", timeout=1)
            return False
        except OSError:
            return True
    wait_for(dropped, timeout=20)
    patch([f"{cluster.host_ip}/32"])
    assert get_eventually(f"http://{cluster.node_ip}:8088/cgi-bin/who").split()[1] in ("web-a", "web-b")
    cluster.core.delete_namespaced_service("web-lb2", "default")


def test_endpoints_follow_a_rolling_update_without_a_failed_request(cluster):
    apps = client.AppsV1Api(cluster.api)
    container = {"name": "web", "image": BUSYBOX, "imagePullPolicy": "Never", "command": ["sh", "-c", WEB],
                 "env": [{"name": "ROUND", "value": "1"}],
                 "readinessProbe": {"httpGet": {"path": "/cgi-bin/who", "port": 8080}, "periodSeconds": 1},
                 # Upstream practice: keep serving while every node stops sending new
                 # connections here (a few ms when idle; seconds on a loaded machine).
                 "lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}}}
    apps.create_namespaced_deployment("default", {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "roll"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "roll"}},
                 "strategy": {"rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
                 "template": {"metadata": {"labels": {"app": "roll"}},
                              "spec": {"terminationGracePeriodSeconds": 15, "containers": [container]}}}})
    svc = cluster.service("roll", {"selector": {"app": "roll"}, "ports": [{"port": 80, "targetPort": 8080}]})
    wait_for(lambda: (d := apps.read_namespaced_deployment("roll", "default")).status.ready_replicas == 2, timeout=90)
    get_eventually(f"http://{svc.spec.cluster_ip}/cgi-bin/who")
    old = {p.metadata.name for p in cluster.core.list_namespaced_pod("default", label_selector="app=roll").items}
    bridges = bridge_macs(cluster)
    container["env"][0]["value"] = "2"
    apps.patch_namespaced_deployment("roll", "default", {"spec": {"template": {"spec": {"containers": [container]}}}})
    failures, ok, deadline = [], 0, time.time() + 120
    seen, timeline = {}, []
    while time.time() < deadline:
        try:
            # 5 s: a request sent to an endpoint that is gone never answers at all.
            get(f"http://{svc.spec.cluster_ip}/cgi-bin/who", timeout=5)
            ok += 1
        except OSError as e:
            body = e.read().decode(errors="replace")[:80] if hasattr(e, "read") else ""
            failures.append(f"{time.time():.2f} {e!r} {body}")
        pods = cluster.core.list_namespaced_pod("default", label_selector="app=roll").items
        for p in pods:
            ready = any(c.type == "Ready" and c.status == "True" for c in (p.status.conditions or []))
            state = (p.status.pod_ip, p.spec.node_name, ready, bool(p.metadata.deletion_timestamp), p.status.phase)
            if seen.get(p.metadata.name) != state:
                seen[p.metadata.name] = state
                timeline.append(f"{time.time():.2f} {p.metadata.name} {state}")
        names = {p.metadata.name for p in pods}
        if not names & old and sum(1 for p in pods if p.status.phase == "Running") == 2 and len(pods) == 2:
            break
    assert not names & old, "the rollout finished"
    print(f"rollout: {ok} requests answered, {len(failures)} failed")
    # What the pods did, for reading a failure against.
    story = "\n".join(timeline)
    assert not failures, f"{len(failures)} failed of {ok + len(failures)}: {failures[:3]}\n{story}"
    # The old pods' veths are gone; the bridges kept their addresses (a bridge left to
    # itself takes its lowest port's, and pods' gateway entries then go stale).
    assert bridge_macs(cluster) == bridges
    apps.delete_namespaced_deployment("roll", "default")
    cluster.core.delete_namespaced_service("roll", "default")


def bridge_macs(cluster):
    """The pod bridges' MAC addresses, on the server's node and the worker's."""
    cmd = ["ip", "-o", "link", "show", "bramble0"]
    outs = [subprocess.run(cmd, capture_output=True, text=True).stdout, in_ns(cluster.ns, *cmd).stdout]
    return [re.search(r"link/ether (\S+)", out).group(1) for out in outs]


def routes_in(ns=None):
    cmd = ["ip", "route", "show"]
    out = in_ns(ns, *cmd).stdout if ns else subprocess.run(cmd, capture_output=True, text=True).stdout
    return out


def test_a_deleted_node_takes_its_routes_with_it(cluster):
    """Last in the module: the worker's Node is deleted while its agent is stopped."""
    worker_cidr = cluster.core.read_node(cluster.names[1]).spec.pod_cidr
    assert worker_cidr in routes_in()
    fdb = subprocess.run(["bridge", "fdb", "show", "dev", "bramble.vxlan"], capture_output=True, text=True).stdout
    assert cluster.node_ip in fdb
    cluster.agent.send_signal(signal.SIGTERM)
    cluster.agent.wait(timeout=15)
    cluster.core.delete_node(cluster.names[1])
    wait_for(lambda: worker_cidr not in routes_in(), timeout=10)
    fdb = subprocess.run(["bridge", "fdb", "show", "dev", "bramble.vxlan"], capture_output=True, text=True).stdout
    assert cluster.node_ip not in fdb

