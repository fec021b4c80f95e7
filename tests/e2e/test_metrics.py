"""`kubectl top` against the metrics API built into bramble: one node (server and agent)
runs a busybox pod burning CPU and one sleeping; the real kubectl (oldest and newest), the
Python client, a user bound to `view` and a user with no role read `metrics.k8s.io`; a
node that does not answer is left out; and the node's own `/stats/summary` answers only
the API server's kind of certificate."""
import base64
import json
import os
import re
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import pytest
import yaml
from kubernetes import client, config

from conftest import BIN, KUBECTL_VERSIONS, Kubectl, node_with_busybox, wait_for

NODE = "top-1"
IMAGE = "bramble.test/busybox:1"
GROUP, VERSION = "metrics.k8s.io", "v1beta1"


@pytest.fixture(scope="module")
def node():
    s = node_with_busybox(NODE)
    try:
        s.api = config.new_client_from_config(config_file=s.kubeconfig)
        s.core = client.CoreV1Api(s.api)
        s.metrics = client.CustomObjectsApi(s.api)
        wait_for(lambda: any(c.type == "Ready" and c.status == "True"
                             for c in (s.core.read_node(NODE).status.conditions or [])), timeout=60)
        yield s
    finally:
        s.cleanup()


def pod(name, command, containers=("main",)):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": name}},
            "spec": {"nodeName": NODE, "terminationGracePeriodSeconds": 1,
                     "containers": [{"name": c, "image": IMAGE, "imagePullPolicy": "Never",
                                     "command": ["sh", "-c", command]} for c in containers]}}


def millicores(quantity):
    """kubectl's `978m`, or a metrics quantity such as `978000000n`."""
    if quantity.endswith("n"):
        return int(quantity[:-1]) / 1e6
    if quantity.endswith("m"):
        return int(quantity[:-1])
    return float(quantity) * 1000


def pod_cpu(node):
    """Millicores of each pod in `default` that the metrics API reports."""
    items = node.metrics.list_namespaced_custom_object(GROUP, VERSION, "default", "pods")["items"]
    return {p["metadata"]["name"]: sum(millicores(c["usage"]["cpu"]) for c in p["containers"]) for p in items}


@pytest.fixture(scope="module")
def workload(node):
    """A pod burning a core and one sleeping (two containers), once both have samples."""
    node.core.create_namespaced_pod("default", pod("busy", "while :; do :; done"))
    node.core.create_namespaced_pod("default", pod("idle", "sleep 100000", containers=("main", "side")))
    for name in ("busy", "idle"):
        wait_for(lambda: node.core.read_namespaced_pod(name, "default").status.phase == "Running", timeout=60)
    # Rates need two samples 10 s apart, and the API keeps a node's answer 10 s.
    wait_for(lambda: (cpu := pod_cpu(node)).get("busy", 0) > 100 and "idle" in cpu, timeout=90)
    return node


def kubeconfig_for(node, user, group=None):
    path = os.path.join(node.dir, f"{user}.yaml")
    extra = ["--group", group] if group else []
    subprocess.run([BIN, "kubeconfig", "create", "--user", user, *extra, "-d", node.data_dir,
                    "--server", f"https://127.0.0.1:{node.port}", "-o", path], check=True, capture_output=True)
    return path


def table(text):
    """kubectl's columns as a list of rows (header dropped)."""
    return [line.split() for line in text.strip().splitlines()[1:]]


@pytest.mark.parametrize("version", KUBECTL_VERSIONS)
def test_kubectl_top_shows_the_node_and_the_pods(workload, version):
    k = Kubectl(workload, version)
    nodes = table(k.run("top", "nodes").stdout)
    assert [row[0] for row in nodes] == [NODE], nodes
    assert millicores(nodes[0][1]) > 100 and nodes[0][3].endswith("Mi"), nodes

    pods = {(row[0], row[1]): row for row in table(k.run("top", "pods", "-A").stdout)}
    busy, idle = pods[("default", "busy")], pods[("default", "idle")]
    assert millicores(busy[2]) > 100, pods
    assert millicores(idle[2]) < 50, pods
    assert idle[3].endswith("Mi") and busy[3].endswith("Mi"), pods

    containers = table(k.run("top", "pod", "idle", "--containers").stdout)
    assert sorted((row[0], row[1]) for row in containers) == [("idle", "main"), ("idle", "side")], containers
    assert all(millicores(row[2]) < 50 for row in containers), containers

    selected = table(k.run("top", "pods", "-l", "app=busy").stdout)
    assert [row[0] for row in selected] == ["busy"], selected
    none = k.run("top", "pods", "-l", "app=nothing", check=False)
    assert "No resources found" in none.stdout + none.stderr

    # kubectl get prints metrics-server's columns.
    got = table(k.run("get", "podmetrics", "busy").stdout)
    assert got[0][0] == "busy" and got[0][1].endswith("n") and got[0][3] == "10s", got


def test_the_python_client_reads_node_and_pod_metrics(workload):
    m = workload.metrics
    nodes = m.list_cluster_custom_object(GROUP, VERSION, "nodes")
    assert nodes["kind"] == "NodeMetricsList" and nodes["apiVersion"] == f"{GROUP}/{VERSION}"
    [item] = nodes["items"]
    assert item["metadata"]["name"] == NODE and item["window"] == "10s" and item["timestamp"].endswith("Z")
    assert re.fullmatch(r"\d+n|0", item["usage"]["cpu"]) and re.fullmatch(r"\d+Ki|\d+", item["usage"]["memory"])
    assert m.get_cluster_custom_object(GROUP, VERSION, "nodes", NODE)["usage"] == item["usage"], "cached"

    busy = m.list_namespaced_custom_object(GROUP, VERSION, "default", "pods", label_selector="app=busy")["items"]
    assert [p["metadata"]["name"] for p in busy] == ["busy"]
    assert busy[0]["metadata"]["labels"] == {"app": "busy"}
    every = m.list_cluster_custom_object(GROUP, VERSION, "pods")["items"]
    assert {p["metadata"]["name"] for p in every} >= {"busy", "idle"}
    idle = m.get_namespaced_custom_object(GROUP, VERSION, "default", "pods", "idle")
    assert [c["name"] for c in idle["containers"]] == ["main", "side"]

    with pytest.raises(client.ApiException) as missing:
        m.get_namespaced_custom_object(GROUP, VERSION, "default", "pods", "nope")
    assert missing.value.status == 404
    groups = client.ApisApi(workload.api).get_api_versions().groups
    assert any(g.name == GROUP and g.preferred_version.version == VERSION for g in groups)


def test_a_node_that_does_not_answer_is_left_out(workload):
    # A port that accepts connections and never speaks TLS: the API must not wait on it.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    ghost = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "ghost-1"},
             "status": {"addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
                        "daemonEndpoints": {"kubeletEndpoint": {"Port": silent.getsockname()[1]}}}}
    workload.core.create_node(ghost)
    k = Kubectl(workload, "1.33")
    try:
        started = time.time()
        nodes = {row[0]: row[1:] for row in table(k.run("top", "nodes").stdout)}
        assert time.time() - started < 10, "a silent node holds the answer up"
        assert millicores(nodes[NODE][0]) > 0, nodes
        # Newer kubectl lists the Nodes it has no metrics for, as unknown.
        assert nodes.get("ghost-1", ["<unknown>"])[0] == "<unknown>", nodes
        listed = workload.metrics.list_cluster_custom_object(GROUP, VERSION, "nodes")["items"]
        assert [n["metadata"]["name"] for n in listed] == [NODE]
        one = k.run("top", "node", "ghost-1", check=False)
        assert one.returncode != 0
        assert 'nodemetrics.metrics.k8s.io "ghost-1" not found: node ghost-1 did not give its metrics' in one.stderr, one.stderr
        missing = k.run("top", "node", "nope", check=False)
        assert missing.returncode != 0 and 'nodemetrics.metrics.k8s.io "nope" not found' in missing.stderr
    finally:
        workload.core.delete_node("ghost-1")
        silent.close()


def test_view_may_run_top_and_no_role_is_forbidden(workload):
    viewer = kubeconfig_for(workload, "viewer", "watchers")
    nobody = kubeconfig_for(workload, "nobody")
    client.RbacAuthorizationV1Api(workload.api).create_namespaced_role_binding("default", {
        "metadata": {"name": "watchers-view"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "Group", "name": "watchers", "apiGroup": "rbac.authorization.k8s.io"}]})
    for version in KUBECTL_VERSIONS:
        k = Kubectl(workload, version)
        run = lambda cfg, *a: subprocess.run([k.bin, "--kubeconfig", cfg, "--cache-dir", k.cache, *a],
                                             capture_output=True, text=True, timeout=60)
        # The RoleBinding reaches RBAC's snapshot a moment after it is written.
        shown = wait_for(lambda: (p := run(viewer, "top", "pods")).returncode == 0 and p, timeout=20)
        assert {row[0] for row in table(shown.stdout)} >= {"busy", "idle"}, shown.stdout
        refused = run(nobody, "top", "pods")
        assert refused.returncode != 0
        assert 'User "nobody" cannot list resource "pods" in API group "metrics.k8s.io"' in refused.stderr, refused.stderr
    nobody_api = client.CustomObjectsApi(config.new_client_from_config(config_file=nobody))
    with pytest.raises(client.ApiException) as denied:
        nobody_api.list_namespaced_custom_object(GROUP, VERSION, "default", "pods")
    assert denied.value.status == 403
    viewer_api = client.CustomObjectsApi(config.new_client_from_config(config_file=viewer))
    with pytest.raises(client.ApiException) as nodes:
        viewer_api.list_cluster_custom_object(GROUP, VERSION, "nodes")
    assert nodes.value.status == 403, "a namespace's view does not reach nodes"


def client_cert(node, kubeconfig, name):
    """The client certificate and key of `kubeconfig`, written to files."""
    user = yaml.safe_load(open(kubeconfig))["users"][0]["user"]
    paths = []
    for field, suffix in (("client-certificate-data", "crt"), ("client-key-data", "key")):
        paths.append(os.path.join(node.dir, f"{name}.{suffix}"))
        with open(paths[-1], "wb") as f:
            f.write(base64.b64decode(user[field]))
    return paths


def node_endpoint(node, path, cert=None):
    """GET `path` from the node's HTTPS endpoint; returns (status, body text)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(*cert)
    try:
        with urllib.request.urlopen(f"https://127.0.0.1:{node.kubelet_port}{path}", context=ctx, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_the_node_endpoint_gives_stats_only_to_the_api_servers_kind(workload):
    status, body = node_endpoint(workload, "/stats/summary")
    assert status == 403 and "serves the API server only" in body
    outsider = client_cert(workload, kubeconfig_for(workload, "outsider", "watchers"), "outsider")
    assert node_endpoint(workload, "/stats/summary", outsider)[0] == 403
    assert node_endpoint(workload, "/metrics/resource", outsider)[0] == 403

    # The admin's certificate is in system:masters, as the API server's own.
    admin = client_cert(workload, workload.kubeconfig, "admin")
    status, body = node_endpoint(workload, "/stats/summary", admin)
    assert status == 200, body
    summary = json.loads(body)
    assert summary["node"]["nodeName"] == NODE
    assert summary["node"]["cpu"]["usageCoreNanoSeconds"] > 0 and summary["node"]["memory"]["workingSetBytes"] > 0
    pods = {p["podRef"]["name"]: p for p in summary["pods"]}
    assert pods["busy"]["containers"][0]["name"] == "main"
    assert pods["busy"]["cpu"]["usageNanoCores"] > 100_000_000, pods["busy"]
    assert [c["name"] for c in pods["idle"]["containers"]] == ["main", "side"]

    status, text = node_endpoint(workload, "/metrics/resource", admin)
    assert status == 200
    lines = text.splitlines()
    for family in ("node_cpu_usage_seconds_total", "node_memory_working_set_bytes", "pod_cpu_usage_seconds_total",
                   "pod_memory_working_set_bytes", "container_cpu_usage_seconds_total",
                   "container_memory_working_set_bytes"):
        assert any(l.startswith(family + " ") or l.startswith(family + "{") for l in lines), family
    busy = [l for l in lines if l.startswith('container_cpu_usage_seconds_total{container="main",namespace="default",pod="busy"}')]
    assert len(busy) == 1 and len(busy[0].split()) == 3, busy   # name, value, timestamp
