"""The node agent inside `bramble server`: the Node it registers (labels, taints, capacity,
system info, conditions), its Lease heartbeat, labels users add surviving the agent, and a
deleted Node coming back."""
import json
import os

import pytest
from kubernetes import client, config

from conftest import Kubectl, Server, wait_for


@pytest.fixture(scope="module")
def node_server():
    s = Server(extra_args=["--node-name", "board-1", "--node-label", "zone=shelf-a",
                           "--node-taint", "dedicated=edge:NoSchedule"], agent=True).start()
    yield s
    s.cleanup()




def test_node_registers_with_facts_labels_and_taints(node_server):
    core = client.CoreV1Api(config.new_client_from_config(config_file=node_server.kubeconfig))
    # Registered with its status, as the kubelet registers: capacity from the first read.
    node = wait_for(lambda: core.read_node("board-1"))
    labels = node.metadata.labels
    assert labels["kubernetes.io/hostname"] == "board-1"
    assert labels["kubernetes.io/os"] == "linux"
    assert labels["kubernetes.io/arch"] in ("amd64", "arm64", "arm")
    assert labels["node-role.kubernetes.io/control-plane"] == "true"
    assert labels["zone"] == "shelf-a"
    assert labels.get("disktype") in (None, "ssd", "hdd")
    assert [(t.key, t.value, t.effect) for t in node.spec.taints] == [("dedicated", "edge", "NoSchedule")]

    assert int(node.status.capacity["cpu"]) == os.cpu_count()
    assert node.status.capacity["memory"].endswith("Ki") and node.status.capacity["pods"] == "110"
    assert "ephemeral-storage" in node.status.allocatable
    info = node.status.node_info
    assert info.kernel_version == os.uname().release
    assert info.container_runtime_version.startswith("bramble://")
    assert info.operating_system == "linux"
    assert any(a.type == "Hostname" and a.address == "board-1" for a in node.status.addresses)
    conditions = {c.type: c for c in node.status.conditions}
    assert set(conditions) == {"Ready", "MemoryPressure", "DiskPressure", "PIDPressure"}
    assert conditions["MemoryPressure"].status == "False"
    # No container runtime in this build: the node says so instead of claiming Ready.
    assert conditions["Ready"].status == "True" and conditions["Ready"].reason == "KubeletReady"


def test_lease_is_renewed(node_server):
    coord = client.CoordinationV1Api(config.new_client_from_config(config_file=node_server.kubeconfig))
    lease = wait_for(lambda: coord.read_namespaced_lease("board-1", "kube-node-lease"))
    assert lease.spec.holder_identity == "board-1" and lease.spec.lease_duration_seconds == 40
    assert lease.metadata.owner_references[0].kind == "Node"
    first = lease.spec.renew_time
    renewed = wait_for(lambda: coord.read_namespaced_lease("board-1", "kube-node-lease").spec.renew_time > first,
                       timeout=25)
    assert renewed


def test_kubectl_sees_the_node_and_user_labels_stay(node_server):
    kubectl = Kubectl(node_server, "1.33")
    wait_for(lambda: kubectl.run("get", "node", "board-1", check=False).returncode == 0)
    table = kubectl.run("get", "nodes").stdout.splitlines()
    assert table[0].split() == ["NAME", "STATUS", "ROLES", "AGE", "VERSION"]
    assert table[1].split()[:3] == ["board-1", "Ready", "control-plane"]
    kubectl.run("label", "node", "board-1", "disktype=ssd", "--overwrite")
    kubectl.run("cordon", "board-1")
    node = json.loads(kubectl.run("get", "node", "board-1", "-o", "json").stdout)
    assert node["metadata"]["labels"]["disktype"] == "ssd" and node["spec"]["unschedulable"] is True
    kubectl.run("uncordon", "board-1")


def test_deleted_node_comes_back(node_server):
    core = client.CoreV1Api(config.new_client_from_config(config_file=node_server.kubeconfig))
    old_uid = wait_for(lambda: core.read_node("board-1")).metadata.uid
    core.delete_node("board-1")
    back = wait_for(lambda: (lambda n: n if n.metadata.uid != old_uid else None)(core.read_node("board-1")), timeout=25)
    assert back.metadata.labels["zone"] == "shelf-a" and back.status.node_info is not None


def test_server_refuses_bad_node_flags():
    s = Server(extra_args=["--node-taint", "oops"], agent=True)
    try:
        with pytest.raises(RuntimeError) as e:
            s.start()
        assert "--node-taint" in str(e.value) and "key=value:NoSchedule" in str(e.value)
    finally:
        s.cleanup()


def test_a_node_that_never_reports_goes_unknown_and_is_tainted():
    """A Node made by hand (or whose agent died before its first status) is marked as
    upstream marks it, so the scheduler stops placing pods there."""
    s = Server(extra_args=["--node-monitor-grace-period", "3s"]).start()
    try:
        core = client.CoreV1Api(config.new_client_from_config(config_file=s.kubeconfig))
        core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name="by-hand")))

        def marked():
            n = core.read_node("by-hand")
            ready = [c for c in (n.status.conditions or []) if c.type == "Ready"]
            taints = {(t.key, t.effect) for t in (n.spec.taints or [])}
            return ready and ready[0].status == "Unknown" and ("node.kubernetes.io/unreachable", "NoSchedule") in taints \
                and (ready[0], taints)
        ready, taints = wait_for(marked, timeout=30)
        assert ready.reason == "NodeStatusNeverUpdated"
        assert ("node.kubernetes.io/unreachable", "NoExecute") in taints
    finally:
        s.cleanup()


def test_a_server_whose_agent_cannot_run_exits_for_systemd_to_restart_it():
    """A part that stops takes the process down (non-zero) instead of leaving a server with
    no agent that looks healthy."""
    s = Server(extra_args=["--node-name", "broken-1"], agent=True)
    try:
        with open(s.registries, "w") as f:
            f.write("mirrors: [this is: not, the format\n")
        with pytest.raises(RuntimeError) as e:
            s.start()
            # Ready first, then the agent fails: the process must end by itself.
            s.proc.wait(timeout=30)
            raise RuntimeError(f"exited with {s.proc.returncode}:\n" + s.log())
        assert "node agent stopped" in str(e.value) and "exiting for the service manager" in str(e.value), e.value
        assert s.proc.returncode not in (0, None)
    finally:
        s.cleanup()
