"""NetworkPolicy on two nodes (the cluster of test_network.py), enforced by each node in its
nftables table: a pod selected by a policy takes only what some rule allows (from a
namespace, from a pod label, to a named port), the node keeps reaching its pods (probes
stay green), egress can be fenced to one address block, and DNS works only once allowed."""
import subprocess

import pytest
from kubernetes import client

from conftest import BUSYBOX, wait_for
from test_network import Cluster, pytestmark  # noqa: F401  (the same skip conditions)

# Two ports: 8080 named `http`, 8081 named `admin`; each answers with the pod's name.
SERVE = ("mkdir -p /www; hostname > /www/index.html; httpd -p 8081 -h /www; exec httpd -f -p 8080 -h /www")


@pytest.fixture(scope="module")
def cluster():
    c = Cluster("vxlan")
    try:
        yield c.start()
    finally:
        c.cleanup()


def namespace(cluster, name, labels=None):
    cluster.core.create_namespace({"apiVersion": "v1", "kind": "Namespace",
                                   "metadata": {"name": name, "labels": labels or {}}})


def pod(cluster, ns, name, node, labels=None, command="exec sleep 3600", **container):
    body = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels or {}},
            "spec": {"nodeName": node, "terminationGracePeriodSeconds": 0,
                     "containers": [{"name": "main", "image": BUSYBOX, "imagePullPolicy": "Never",
                                     "command": ["sh", "-c", command], **container}]}}
    cluster.core.create_namespaced_pod(ns, body)
    return wait_for(lambda: (p := cluster.core.read_namespaced_pod(name, ns)).status.phase == "Running"
                    and p.status.pod_ip and p, timeout=60)


def reaches(cluster, ns, name, url, timeout=2):
    """Whether pod `ns/name` gets an answer from `url` (`http://ip:port/`; busybox's nc, as
    its wget crashes on a refused connection when given a timeout)."""
    hostport = url.split("/")[2]
    host, port = hostport.rsplit(":", 1)
    script = f"printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w {timeout} {host} {port}"
    r = subprocess.run(["kubectl", "--kubeconfig", cluster.server.kubeconfig, "exec", "-n", ns, name, "--",
                        "sh", "-c", script], capture_output=True, text=True, timeout=30)
    return "200 OK" in r.stdout


def policy(cluster, ns, name, spec):
    client.NetworkingV1Api(cluster.api).create_namespaced_network_policy(ns, {
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": name}, "spec": spec})


def delete_policy(cluster, ns, name):
    client.NetworkingV1Api(cluster.api).delete_namespaced_network_policy(name, ns)


def settles(fn, want, timeout=20):
    """Waits until `fn()` is `want` (rules reach every node a few milliseconds after the
    policy is stored), and fails saying what it still was."""
    wait_for(lambda: fn() == want, timeout=timeout)


@pytest.fixture(scope="module")
def fenced(cluster):
    """A web pod in `pol` on the worker, and clients: `pol/client` and `pol/other` (one on
    each node), `friends/client` (namespace labelled team=friends) and `default/client`."""
    namespace(cluster, "pol")
    namespace(cluster, "friends", {"team": "friends"})
    web = pod(cluster, "pol", "web", cluster.names[1], {"app": "web"}, SERVE,
              ports=[{"name": "http", "containerPort": 8080}, {"name": "admin", "containerPort": 8081}],
              readinessProbe={"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1})
    pod(cluster, "pol", "client", cluster.names[0], {"role": "client"})
    pod(cluster, "pol", "other", cluster.names[1], {"role": "other"})
    pod(cluster, "friends", "client", cluster.names[0])
    pod(cluster, "default", "client", cluster.names[1])
    return web.status.pod_ip


CLIENTS = [("pol", "client"), ("pol", "other"), ("friends", "client"), ("default", "client")]


def who_reaches(cluster, url):
    return {f"{ns}/{name}" for ns, name in CLIENTS if reaches(cluster, ns, name, url)}


def test_default_deny_then_allow_by_namespace_pod_label_and_named_port(cluster, fenced):
    ip = fenced
    http, admin = f"http://{ip}:8080/", f"http://{ip}:8081/"
    everyone = {f"{ns}/{name}" for ns, name in CLIENTS}
    assert who_reaches(cluster, http) == everyone

    policy(cluster, "pol", "deny-all", {"podSelector": {}, "policyTypes": ["Ingress"]})
    settles(lambda: who_reaches(cluster, http), set())
    # The node itself still reaches its pod, so the readiness probe stays green.
    r = subprocess.run(["nsenter", f"--net=/run/netns/{cluster.ns}", "wget", "-q", "-O-", "-T", "2", http],
                       capture_output=True, text=True)
    assert r.returncode == 0 and "web" in r.stdout, r.stderr
    ready = lambda: any(c.type == "Ready" and c.status == "True"  # noqa: E731
                        for c in cluster.core.read_namespaced_pod("web", "pol").status.conditions)
    assert ready()

    # From one namespace (by its labels), to the named port only.
    policy(cluster, "pol", "from-friends", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [
        {"from": [{"namespaceSelector": {"matchLabels": {"team": "friends"}}}], "ports": [{"port": "http"}]}]})
    settles(lambda: who_reaches(cluster, http), {"friends/client"})
    assert not reaches(cluster, "friends", "client", admin), "only the named port is allowed"

    # From pods with a label, in the policy's own namespace.
    policy(cluster, "pol", "from-clients", {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [
        {"from": [{"podSelector": {"matchLabels": {"role": "client"}}}]}]})
    settles(lambda: who_reaches(cluster, http), {"friends/client", "pol/client"})
    assert reaches(cluster, "pol", "client", admin), "no ports: every port"

    # Policies go: everyone again, and connections are not cut by the change.
    for name in ("deny-all", "from-friends", "from-clients"):
        delete_policy(cluster, "pol", name)
    settles(lambda: who_reaches(cluster, http), everyone)
    assert ready()


def test_egress_to_one_block_and_dns_only_once_allowed(cluster, fenced):
    ip = fenced
    namespace(cluster, "out")
    pod(cluster, "out", "probe", cluster.names[0])
    pod(cluster, "out", "target", cluster.names[1], command=SERVE)
    target = cluster.core.read_namespaced_pod("target", "out").status.pod_ip
    lookup = lambda: subprocess.run(  # noqa: E731
        ["kubectl", "--kubeconfig", cluster.server.kubeconfig, "exec", "-n", "out", "probe", "--",
         "nslookup", "kubernetes.default.svc.cluster.local"], capture_output=True, text=True, timeout=30).returncode == 0
    assert lookup()
    assert reaches(cluster, "out", "probe", f"http://{ip}:8080/")
    assert reaches(cluster, "out", "probe", f"http://{target}:8080/")

    # Egress only to the target's address: the other pod and DNS are cut.
    policy(cluster, "out", "egress-one", {"podSelector": {}, "policyTypes": ["Egress"],
                                          "egress": [{"to": [{"ipBlock": {"cidr": f"{target}/32"}}]}]})
    settles(lambda: reaches(cluster, "out", "probe", f"http://{ip}:8080/"), False)
    assert reaches(cluster, "out", "probe", f"http://{target}:8080/")
    settles(lambda: lookup(), False)

    # The usual rule for DNS: to kube-dns in kube-system on 53.
    policy(cluster, "out", "dns", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [{
        "to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}},
                "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
        "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}]})
    settles(lambda: lookup(), True)
    assert not reaches(cluster, "out", "probe", f"http://{ip}:8080/")

    # An ipBlock with an exception: the block minus the target.
    delete_policy(cluster, "out", "egress-one")
    policy(cluster, "out", "egress-except", {"podSelector": {}, "policyTypes": ["Egress"], "egress": [
        {"to": [{"ipBlock": {"cidr": "10.42.0.0/16", "except": [f"{target}/32"]}}]}]})
    settles(lambda: reaches(cluster, "out", "probe", f"http://{ip}:8080/"), True)
    assert not reaches(cluster, "out", "probe", f"http://{target}:8080/")
