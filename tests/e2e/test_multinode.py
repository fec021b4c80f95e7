"""An agent on another node joins a server with the node token: each node gets its own
network namespace and address on this machine, connected by a veth pair. Everything the
test creates (namespace, links, processes) is removed even when it fails."""
import os
import shutil
import signal
import subprocess
import uuid

import pytest
from kubernetes import client, config

from conftest import BIN, BUSYBOX, Server, drop_busybox, wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"),
                                reason="needs root and iproute2 for network namespaces")


def sh(*args):
    subprocess.run(args, check=True, capture_output=True)


@pytest.fixture
def remote_node():
    """A network namespace reachable from the host at 10.251.N.1, itself at 10.251.N.2."""
    tag = uuid.uuid4().hex[:6]
    ns, host_if, node_if = f"brt-{tag}", f"brh{tag}", f"brn{tag}"
    subnet = 1 + int(tag, 16) % 250
    host_ip, node_ip = f"10.251.{subnet}.1", f"10.251.{subnet}.2"
    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", node_if)
        sh("ip", "link", "set", node_if, "netns", ns)
        sh("ip", "addr", "add", f"{host_ip}/24", "dev", host_if)
        sh("ip", "link", "set", host_if, "up")
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{node_ip}/24", "dev", node_if)
        sh("ip", "netns", "exec", ns, "ip", "link", "set", node_if, "up")
        sh("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield ns, host_ip, node_ip
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)




def stop_agent(agent, ns, agent_dir, pod_log_dir):
    """Stops an agent started in `ns` (if still running), then removes its pods: a pod bound
    to it keeps its sandbox after the agent stops."""
    if agent and agent.poll() is None:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=10)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
    subprocess.run(["nsenter", f"--net=/run/netns/{ns}", BIN, "killall", "--data-dir", agent_dir,
                    "--pod-log-dir", pod_log_dir], capture_output=True, timeout=60)


def test_agent_joins_from_its_own_network_namespace(remote_node):
    ns, host_ip, node_ip = remote_node
    server = Server(extra_args=["--tls-san", host_ip, "--node-name", "server-1"], agent=True, bind="0.0.0.0").start()
    agent = None
    agent_dir = os.path.join(server.dir, "agent-node")
    worker_logs = os.path.join(server.dir, "worker-pod-logs")
    try:
        with open(os.path.join(server.data_dir, "server", "node-token")) as f:
            token = f.read().strip()
        assert token.startswith("K10") and "::server:" in token
        url = f"https://{host_ip}:{server.port}"

        refused = subprocess.run(["ip", "netns", "exec", ns, BIN, "agent", "--server", url, "--token", "not-it",
                                  "--data-dir", agent_dir + "-bad", "--node-name", "intruder"],
                                 capture_output=True, text=True, timeout=30)
        assert refused.returncode != 0 and "refused the token" in refused.stderr

        log = open(os.path.join(server.dir, "agent.log"), "wb")
        # nsenter, not `ip netns exec` (see below): the pod bound to this node gets a sandbox
        # whose mounts must be visible to the cleanup.
        agent = subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", BIN, "agent", "--server", url, "--token", token,
                                  "--data-dir", agent_dir, "--node-name", "worker-1", "--node-label", "disktype=hdd",
                                  "--pod-log-dir", worker_logs],
                                 stdout=log, stderr=subprocess.STDOUT)
        core = client.CoreV1Api(config.new_client_from_config(config_file=server.kubeconfig))
        node = wait_for(lambda: core.read_node("worker-1"))
        assert node.metadata.labels["disktype"] == "hdd"
        assert "node-role.kubernetes.io/control-plane" not in node.metadata.labels
        assert any(a.type == "InternalIP" and a.address == node_ip for a in node.status.addresses)
        assert sorted(n.metadata.name for n in core.list_node().items) == ["server-1", "worker-1"]
        lease = wait_for(lambda: client.CoordinationV1Api(core.api_client)
                         .read_namespaced_lease("worker-1", "kube-node-lease"))
        assert lease.spec.holder_identity == "worker-1"

        # The agent's own credentials are a node identity: enough for its Node, not for the rest.
        node_api = config.new_client_from_config(config_file=os.path.join(agent_dir, "agent", "kubeconfig.yaml"))
        client.CoreV1Api(node_api).read_node("worker-1")
        with pytest.raises(client.ApiException) as e:
            client.AppsV1Api(node_api).list_namespaced_deployment("default")
        assert e.value.status == 403

        # Secrets: only those a pod bound to this node uses, one at a time (upstream's node
        # authorizer), so a lost board gives away its own pods' secrets and no others.
        node_core = client.CoreV1Api(node_api)
        for name in ("worker-secret", "other-secret"):
            core.create_namespaced_secret("default", client.V1Secret(
                metadata=client.V1ObjectMeta(name=name), string_data={"k": "v"}))
        with pytest.raises(client.ApiException) as e:
            node_core.read_namespaced_secret("worker-secret", "default")
        assert e.value.status == 403 and "no relationship found" in e.value.body
        core.create_namespaced_pod("default", {
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "uses-secret"},
            "spec": {"nodeName": "worker-1", "containers": [{
                "name": "c", "image": "registry.invalid/none:1",
                "env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "worker-secret", "key": "k"}}}]}]}})
        assert node_core.read_namespaced_secret("worker-secret", "default").data["k"]
        for forbidden in (lambda: node_core.read_namespaced_secret("other-secret", "default"),
                          lambda: node_core.list_namespaced_secret("default"),
                          lambda: node_core.list_config_map_for_all_namespaces()):
            with pytest.raises(client.ApiException) as e:
                forbidden()
            assert e.value.status == 403
    finally:
        if agent:
            stop_agent(agent, ns, agent_dir, worker_logs)
        server.cleanup()


def test_a_silent_node_is_tainted_and_its_pods_move(remote_node):
    """Two nodes run a Deployment; the worker's agent dies (kill -9). After the grace period
    the node is Unknown and tainted unreachable, its pods are evicted once their toleration
    runs out, and the ReplicaSet replaces them on the node that is left."""
    ns, host_ip, node_ip = remote_node
    image = BUSYBOX
    server = Server(extra_args=["--tls-san", host_ip, "--node-name", "server-1", "--node-monitor-grace-period", "20s"],
                    agent=True, bind="0.0.0.0")
    drop_busybox(server.data_dir)
    server.start()
    agent_dir = os.path.join(server.dir, "worker")
    worker_logs = os.path.join(server.dir, "worker-pod-logs")
    drop_busybox(agent_dir)
    agent = None
    try:
        with open(os.path.join(server.data_dir, "server", "node-token")) as f:
            token = f.read().strip()
        log = open(os.path.join(server.dir, "worker.log"), "wb")
        # nsenter, not `ip netns exec`: that one remounts /sys, hiding the cgroup tree
        # the worker's containers need.
        agent = subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", BIN, "agent", "--server", f"https://{host_ip}:{server.port}",
                                  "--token", token, "--data-dir", agent_dir, "--node-name", "worker-1",
                                  "--pod-log-dir", worker_logs, "--private-registry", os.path.join(server.dir, "none.yaml")],
                                 stdout=log, stderr=subprocess.STDOUT)
        api = config.new_client_from_config(config_file=server.kubeconfig)
        core, apps = client.CoreV1Api(api), client.AppsV1Api(api)

        def ready(name):
            return any(c.type == "Ready" and c.status == "True" for c in (core.read_node(name).status.conditions or []))
        wait_for(lambda: ready("server-1") and ready("worker-1"), 60)

        tolerate_briefly = [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute",
                             "tolerationSeconds": 2}]
        apps.create_namespaced_deployment("default", {"metadata": {"name": "web"}, "spec": {
            "replicas": 4, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}}, "spec": {
                "tolerations": tolerate_briefly, "terminationGracePeriodSeconds": 1,
                "containers": [{"name": "main", "image": image, "imagePullPolicy": "Never",
                                "command": ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]}]}}}})

        def running(node):
            return [p for p in core.list_namespaced_pod("default", label_selector="app=web").items
                    if p.spec.node_name == node and p.status.phase == "Running" and not p.metadata.deletion_timestamp]
        try:
            wait_for(lambda: len(running("server-1")) + len(running("worker-1")) == 4, 90)
        except AssertionError:
            pods = [(p.metadata.name, p.spec.node_name, p.status.phase, p.status.container_statuses)
                    for p in core.list_namespaced_pod("default").items]
            with open(os.path.join(server.dir, "worker.log"), errors="replace") as f:
                raise AssertionError(f"pods: {pods}\nworker log:\n{f.read()[-4000:]}")
        assert running("worker-1") and running("server-1"), "replicas of one owner are spread over the nodes"

        agent.kill()
        agent.wait()
        silent = wait_for(lambda: (n := core.read_node("worker-1")).spec.taints and n, 60)
        ready_cond = next(c for c in silent.status.conditions if c.type == "Ready")
        assert ready_cond.status == "Unknown" and ready_cond.reason == "NodeStatusUnknown"
        assert {(t.key, t.effect) for t in silent.spec.taints} >= {("node.kubernetes.io/unreachable", "NoExecute"),
                                                                    ("node.kubernetes.io/unreachable", "NoSchedule")}
        wait_for(lambda: len(running("server-1")) == 4, 90)
        evicted = [p for p in core.list_namespaced_pod("default", label_selector="app=web").items
                   if p.spec.node_name == "worker-1"]
        assert evicted and all(p.metadata.deletion_timestamp for p in evicted), "marked for deletion, the node never confirms"
        events = core.list_namespaced_event("default", field_selector="reason=TaintManagerEviction").items
        assert events

        # The node is retired for good: after the pod GC's quarantine its pods are gone too.
        core.delete_node("worker-1")
        wait_for(lambda: not [p for p in core.list_namespaced_pod("default", label_selector="app=web").items
                              if p.spec.node_name == "worker-1"], 90)
        assert len(running("server-1")) == 4
    finally:
        if agent and agent.poll() is None:
            agent.kill()
            agent.wait()
        # The worker's containers outlive its agent: remove them from inside its namespace.
        subprocess.run(["nsenter", f"--net=/run/netns/{ns}", BIN, "killall", "--data-dir", agent_dir, "--pod-log-dir", worker_logs],
                       capture_output=True, timeout=60)
        server.cleanup()
