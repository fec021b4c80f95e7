"""Pods as real containers: a `bramble server` with its agent runs pods from an image the
test builds from the machine's static busybox, and the real kubectl and the Python client
see them as on any Kubernetes: status, restarts with back-off, OOM kills, init containers,
environment and volumes from ConfigMaps and Secrets, logs, graceful deletion that leaves
nothing behind, and containers that survive `kill -9` of the agent and are adopted again."""
import glob
import os
import signal
import subprocess
import time

import pytest
from kubernetes import client, config

from busybox_image import docker_archive
from conftest import kubectl_dir, node_with_busybox, wait_for

IMAGE = "bramble.test/busybox:1"


@pytest.fixture(scope="module")
def node():
    s = node_with_busybox("pods-1")
    try:
        yield s
    finally:
        s.cleanup()


@pytest.fixture(scope="module")
def core(node):
    api = config.new_client_from_config(config_file=node.kubeconfig)
    core = client.CoreV1Api(api)
    wait_for(lambda: any(c.type == "Ready" and c.status == "True"
                         for c in (core.read_node("pods-1").status.conditions or [])), timeout=30)
    return core


def kubectl(node, *args, version="1.33", check=True, timeout=60):
    p = subprocess.run([os.path.join(kubectl_dir(), f"kubectl.{version}"), "--kubeconfig", node.kubeconfig, *args],
                       capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed:\n{p.stdout}\n{p.stderr}\n{node.log()}")
    return p


def pod(name, command, restart="Always", **extra):
    container = {"name": "main", "image": IMAGE, "imagePullPolicy": "Never", "command": ["sh", "-c", command]}
    container.update(extra.pop("container", {}))
    spec = {"nodeName": "pods-1", "restartPolicy": restart, "terminationGracePeriodSeconds": 5,
            "containers": [container]}
    spec.update(extra)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def phase(core, name, want, timeout=30):
    return wait_for(lambda: (p := core.read_namespaced_pod(name, "default")).status.phase == want and p,
                    timeout=timeout)


def delete(core, name):
    core.delete_namespaced_pod(name, "default", grace_period_seconds=1)
    wait_for(lambda: name not in [p.metadata.name for p in core.list_namespaced_pod("default").items], timeout=30)


def processes_with(marker):
    out = []
    for d in glob.glob("/proc/[0-9]*"):
        try:
            with open(f"{d}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    out.append(int(os.path.basename(d)))
        except OSError:
            pass
    return out


def test_a_pod_runs_and_reports_status_and_logs(node, core):
    core.create_namespaced_pod("default", pod(
        "hello", "echo hello from $(hostname) as $(id -u); echo to-stderr >&2; echo $GREETING; "
                 "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.2; done",
        container={"env": [{"name": "GREETING", "value": "hi $(WHO)"}, {"name": "WHO", "value": "later"}]}))
    p = phase(core, "hello", "Running")
    cs = p.status.container_statuses[0]
    assert cs.ready and cs.started and cs.restart_count == 0 and cs.state.running.started_at
    assert cs.container_id.startswith("bramble://") and cs.image_id.startswith("sha256:")
    assert p.status.host_ip and p.status.start_time and p.status.qos_class == "BestEffort"
    conds = {c.type: c.status for c in p.status.conditions}
    assert conds["Ready"] == "True" and conds["ContainersReady"] == "True" and conds["Initialized"] == "True"

    logs = wait_for(lambda: "tick 3" in (t := core.read_namespaced_pod_log("hello", "default")) and t)
    lines = logs.splitlines()
    # stdout and stderr are separate pipes, so their relative order is not kept (as upstream).
    assert "hello from hello as 0" in lines                # UTS namespace named after the pod
    assert "to-stderr" in lines and "hi $(WHO)" in lines   # $(VAR) only sees earlier variables
    for version in ("1.27", "1.33"):
        tail = kubectl(node, "logs", "hello", "--tail=2", version=version).stdout.splitlines()
        assert len(tail) == 2 and all(l.startswith("tick ") for l in tail)
    stamped = kubectl(node, "logs", "hello", "--timestamps", "--tail=1").stdout.split(" ", 1)
    assert stamped[0].endswith("Z") and stamped[1].startswith("tick ")
    # -f follows new output until we stop it.
    follow = subprocess.Popen([os.path.join(kubectl_dir(), "kubectl.1.33"), "--kubeconfig", node.kubeconfig, "logs", "-f", "hello", "--tail=0"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert follow.stdout.readline().startswith("tick ")
    finally:
        follow.kill()
        follow.wait()

    described = kubectl(node, "describe", "pod", "hello").stdout
    for event in ("Pulled", "Created", "Started"):
        assert event in described, described
    bad = kubectl(node, "logs", "hello", "-c", "nope", check=False)
    assert bad.returncode != 0 and "container nope is not valid for pod hello" in bad.stderr
    delete(core, "hello")


def test_exit_codes_phases_and_termination_messages(core):
    core.create_namespaced_pod("default", pod("done", "echo all good > /dev/termination-log; exit 0", "Never"))
    core.create_namespaced_pod("default", pod("broken", "exit 3", "Never"))
    ok = phase(core, "done", "Succeeded")
    t = ok.status.container_statuses[0].state.terminated
    assert t.exit_code == 0 and t.reason == "Completed" and t.message == "all good" and t.finished_at
    bad = phase(core, "broken", "Failed")
    t = bad.status.container_statuses[0].state.terminated
    assert t.exit_code == 3 and t.reason == "Error"
    assert {c.type: c.status for c in ok.status.conditions}["Ready"] == "False"
    delete(core, "done")
    delete(core, "broken")


def test_crashing_container_restarts_with_back_off(node, core):
    core.create_namespaced_pod("default", pod("crash", "echo run at $(date +%s); exit 2"))
    waiting = wait_for(lambda: (cs := core.read_namespaced_pod("crash", "default").status.container_statuses)
                       and cs[0].state.waiting and cs[0].state.waiting.reason == "CrashLoopBackOff" and cs[0],
                       timeout=40)
    assert waiting.restart_count >= 1
    assert waiting.last_state.terminated.exit_code == 2
    assert "back-off 10s restarting failed container=main" in waiting.state.waiting.message
    assert core.read_namespaced_pod("crash", "default").status.phase == "Running"
    previous = kubectl(node, "logs", "crash", "--previous").stdout
    assert previous.startswith("run at ")
    assert "BackOff" in kubectl(node, "describe", "pod", "crash").stdout
    listed = kubectl(node, "get", "pod", "crash").stdout
    assert "CrashLoopBackOff" in listed or "Error" in listed
    delete(core, "crash")


def test_memory_limit_oom_kills(core):
    core.create_namespaced_pod("default", pod(
        "hog", "tail /dev/zero", "Never",
        container={"resources": {"limits": {"memory": "24Mi", "cpu": "500m"}}}))
    p = phase(core, "hog", "Failed", timeout=60)
    t = p.status.container_statuses[0].state.terminated
    assert t.reason == "OOMKilled" and t.exit_code == 137
    assert p.status.qos_class == "Guaranteed"
    delete(core, "hog")


def test_init_containers_volumes_and_localhost(node, core):
    spec = pod("web", "httpd -f -p 8080 -h /data", "Always")
    spec["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}, {"name": "scratch", "emptyDir": {"medium": "Memory"}}]
    spec["spec"]["containers"][0]["volumeMounts"] = [{"name": "data", "mountPath": "/data"}]
    spec["spec"]["initContainers"] = [
        {"name": "first", "image": IMAGE, "imagePullPolicy": "Never", "command": ["sh", "-c", "echo one > /data/order"],
         "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
        {"name": "second", "image": IMAGE, "imagePullPolicy": "Never",
         "command": ["sh", "-c", "cat /data/order > /data/index.html; echo two >> /data/index.html"],
         "volumeMounts": [{"name": "data", "mountPath": "/data"}]},
    ]
    spec["spec"]["containers"].append({
        "name": "client", "image": IMAGE, "imagePullPolicy": "Never",
        "command": ["sh", "-c", "while true; do wget -q -O - http://127.0.0.1:8080/ && "
                                "mount | grep -q ' /scratch type tmpfs' && echo tmpfs-ok; sleep 1; done"],
        "volumeMounts": [{"name": "scratch", "mountPath": "/scratch"}]})
    core.create_namespaced_pod("default", spec)
    p = phase(core, "web", "Running")
    inits = p.status.init_container_statuses
    assert [i.state.terminated.reason for i in inits] == ["Completed", "Completed"]
    logs = wait_for(lambda: "tmpfs-ok" in (t := core.read_namespaced_pod_log("web", "default", container="client"))
                    and t, timeout=30)
    assert "one\ntwo\n" in logs   # init containers ran in order; containers share the pod's localhost
    assert kubectl(node, "logs", "web", "-c", "first").stdout == ""
    delete(core, "web")


def test_pods_reach_each_other_and_the_node_over_the_pod_network(core):
    import ipaddress
    import urllib.request
    cidr = core.read_node("pods-1").spec.pod_cidr
    assert cidr and cidr.endswith("/24")
    core.create_namespaced_pod("default", pod("server", "echo served-by-$(hostname) > /www/index.html; "
                                                        "httpd -f -p 8080 -h /www"))
    server = phase(core, "server", "Running")
    ip = server.status.pod_ip
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(cidr)
    assert server.status.pod_ips[0].ip == ip
    core.create_namespaced_pod("default", pod("caller", f"while true; do wget -q -O - http://{ip}:8080/; "
                                                        "cat /etc/hosts | grep caller; ip route | head -1; sleep 1; done"))
    caller = phase(core, "caller", "Running")
    assert caller.status.pod_ip != ip
    logs = wait_for(lambda: "served-by-server" in (t := core.read_namespaced_pod_log("caller", "default")) and t,
                    timeout=30)
    assert f"{caller.status.pod_ip}\tcaller" in logs   # /etc/hosts names the pod
    assert "default via" in logs
    # The node reaches pods directly.
    body = wait_for(lambda: urllib.request.urlopen(f"http://{ip}:8080/", timeout=2).read().decode())
    assert body == "served-by-server\n"
    delete(core, "server")
    delete(core, "caller")


def test_config_maps_secrets_and_the_downward_api(core):
    core.create_namespaced_config_map("default", {"metadata": {"name": "settings"},
                                                  "data": {"mode": "fast", "file.txt": "v1"}})
    core.create_namespaced_secret("default", {"metadata": {"name": "creds"}, "stringData": {"password": "s3cret"}})
    spec = pod("configured", "while true; do echo \"$MODE|$PASS|$SETTINGS_mode|$ME|$MEM|$(cat /cfg/file.txt)|"
                             "$(cat /sec/password)|$(cat /info/labels)\"; sleep 1; done",
               container={
                   "env": [{"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
                           {"name": "PASS", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                           {"name": "ME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                           {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory",
                                                                              "divisor": "1Mi"}}}],
                   "envFrom": [{"configMapRef": {"name": "settings"}, "prefix": "SETTINGS_"}],
                   "resources": {"limits": {"memory": "64Mi"}},
                   "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}, {"name": "sec", "mountPath": "/sec"},
                                    {"name": "info", "mountPath": "/info"}]})
    spec["metadata"]["labels"] = {"app": "configured"}
    spec["spec"]["volumes"] = [
        {"name": "cfg", "configMap": {"name": "settings"}},
        {"name": "sec", "secret": {"secretName": "creds", "defaultMode": 0o400}},
        {"name": "info", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}}]
    core.create_namespaced_pod("default", spec)
    phase(core, "configured", "Running")
    line = wait_for(lambda: (t := core.read_namespaced_pod_log("configured", "default").splitlines()) and t[-1])
    assert line == 'fast|s3cret|fast|configured|64|v1|s3cret|app="configured"'
    # A ConfigMap update reaches the running pod's files.
    core.patch_namespaced_config_map("settings", "default", {"data": {"file.txt": "v2"}})
    wait_for(lambda: "|v2|" in core.read_namespaced_pod_log("configured", "default", tail_lines=1), timeout=40)

    missing = pod("misconfigured", "sleep 100", container={
        "env": [{"name": "X", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "absent"}}}]})
    core.create_namespaced_pod("default", missing)
    waiting = wait_for(lambda: (cs := core.read_namespaced_pod("misconfigured", "default").status.container_statuses)
                       and cs[0].state.waiting and cs[0].state.waiting.reason == "CreateContainerConfigError"
                       and cs[0].state.waiting)
    assert waiting.message == "couldn't find key absent in configmap default/settings"
    delete(core, "configured")
    delete(core, "misconfigured")
    core.delete_namespaced_config_map("settings", "default")
    core.delete_namespaced_secret("creds", "default")


def test_host_path_and_projected_volumes(node, core):
    host_dir = os.path.join(node.dir, "ssd", "data")   # DirectoryOrCreate makes it
    core.create_namespaced_config_map("default", {"metadata": {"name": "proj"}, "data": {"greeting": "hi"}})
    spec = pod("volumes", "echo from-pod > /ssd/written; cat /all/greeting; echo; cat /all/name; echo; sleep 100",
               container={"volumeMounts": [{"name": "ssd", "mountPath": "/ssd"}, {"name": "all", "mountPath": "/all"}]})
    spec["spec"]["volumes"] = [
        {"name": "ssd", "hostPath": {"path": host_dir, "type": "DirectoryOrCreate"}},
        {"name": "all", "projected": {"sources": [
            {"configMap": {"name": "proj"}},
            {"downwardAPI": {"items": [{"path": "name", "fieldRef": {"fieldPath": "metadata.name"}}]}}]}}]
    core.create_namespaced_pod("default", spec)
    phase(core, "volumes", "Running")
    wait_for(lambda: core.read_namespaced_pod_log("volumes", "default") == "hi\nvolumes\n")
    with open(os.path.join(host_dir, "written")) as f:
        assert f.read() == "from-pod\n"
    delete(core, "volumes")
    assert os.path.exists(os.path.join(host_dir, "written")), "a hostPath outlives the pod"

    wrong = pod("wrong-type", "true", container={"volumeMounts": [{"name": "f", "mountPath": "/f"}]})
    wrong["spec"]["volumes"] = [{"name": "f", "hostPath": {"path": host_dir, "type": "File"}}]
    core.create_namespaced_pod("default", wrong)
    event = wait_for(lambda: [e for e in core.list_namespaced_event(
        "default", field_selector="involvedObject.name=wrong-type").items if e.reason == "FailedMount"])
    assert "is not a file" in event[0].message
    assert core.read_namespaced_pod("wrong-type", "default").status.phase == "Pending"
    delete(core, "wrong-type")
    core.delete_namespaced_config_map("proj", "default")


def test_security_context(core):
    core.create_namespaced_pod("default", pod(
        "locked", "id -u; id -g; touch /x 2>/dev/null && echo writable || echo read-only; "
                  "grep CapEff /proc/self/status; sleep 100", "Never",
        securityContext={"runAsUser": 65534, "runAsGroup": 65534},
        container={"securityContext": {"readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}}))
    phase(core, "locked", "Running")
    lines = wait_for(lambda: len(t := core.read_namespaced_pod_log("locked", "default").splitlines()) >= 4 and t)
    assert lines[:3] == ["65534", "65534", "read-only"]
    assert lines[3].split()[1] == "0000000000000000"
    delete(core, "locked")

    core.create_namespaced_pod("default", pod("rootless", "true", "Never",
                                              securityContext={"runAsNonRoot": True}))
    waiting = wait_for(lambda: (cs := core.read_namespaced_pod("rootless", "default").status.container_statuses)
                       and cs[0].state.waiting and cs[0].state.waiting.reason == "CreateContainerConfigError"
                       and cs[0].state.waiting)
    assert "runAsNonRoot" in waiting.message
    delete(core, "rootless")


def test_missing_image_with_pull_policy_never(core):
    spec = pod("ghost", "true")
    spec["spec"]["containers"][0]["image"] = "bramble.test/not-here:1"
    core.create_namespaced_pod("default", spec)
    waiting = wait_for(lambda: (cs := core.read_namespaced_pod("ghost", "default").status.container_statuses)
                       and cs[0].state.waiting and cs[0].state.waiting.reason == "ErrImageNeverPull"
                       and cs[0].state.waiting)
    assert "is not present with pull policy of Never" in waiting.message
    delete(core, "ghost")


def test_probes_drive_readiness_and_restarts(node, core):
    # Readiness over HTTP: not ready until the page exists; a TCP liveness probe that passes.
    web = pod("probed", "sleep 3; echo ok > /www/ready.html; httpd -f -p 8080 -h /www",
              container={"ports": [{"name": "http", "containerPort": 8080}],
                         "readinessProbe": {"httpGet": {"path": "/ready.html", "port": "http"},
                                            "periodSeconds": 1, "failureThreshold": 1},
                         "livenessProbe": {"tcpSocket": {"port": 8080}, "initialDelaySeconds": 5, "periodSeconds": 2},
                         "startupProbe": {"exec": {"command": ["test", "-e", "/www/index.html"]}, "periodSeconds": 1}})
    core.create_namespaced_pod("default", web)
    p = phase(core, "probed", "Running")
    assert not p.status.container_statuses[0].ready
    ready = wait_for(lambda: (x := core.read_namespaced_pod("probed", "default")).status.container_statuses[0].ready
                     and x, timeout=30)
    assert {c.type: c.status for c in ready.status.conditions}["Ready"] == "True"
    assert ready.status.container_statuses[0].restart_count == 0

    # Liveness by exec: the file goes away, the container is restarted.
    sick = pod("sick", "touch /tmp/healthy; sleep 2; rm /tmp/healthy; sleep 600",
               container={"livenessProbe": {"exec": {"command": ["cat", "/tmp/healthy"]},
                                            "periodSeconds": 1, "failureThreshold": 2}})
    sick["spec"]["terminationGracePeriodSeconds"] = 1
    core.create_namespaced_pod("default", sick)
    restarted = wait_for(lambda: (x := core.read_namespaced_pod("sick", "default")).status.container_statuses
                         and x.status.container_statuses[0].restart_count >= 1 and x, timeout=40)
    assert restarted.status.container_statuses[0].last_state.terminated
    described = kubectl(node, "describe", "pod", "sick").stdout
    assert "Liveness probe failed" in described and "failed liveness probe, will be restarted" in described
    delete(core, "probed")
    delete(core, "sick")


def test_graceful_delete_leaves_nothing_behind(node, core):
    core.create_namespaced_pod("default", pod(
        "polite", "trap 'echo got TERM; exit 0' TERM; echo ready; while true; do sleep 0.1; done"))
    p = phase(core, "polite", "Running")
    uid = p.metadata.uid
    wait_for(lambda: "ready" in core.read_namespaced_pod_log("polite", "default"))
    assert processes_with(uid)   # the monitor's command line names the pod's directory
    started = time.time()
    core.delete_namespaced_pod("polite", "default", grace_period_seconds=20)
    wait_for(lambda: "polite" not in [x.metadata.name for x in core.list_namespaced_pod("default").items], timeout=30)
    assert time.time() - started < 15, "SIGTERM was handled: no need to wait out the grace period"
    assert processes_with(uid) == []
    with open("/proc/self/mountinfo") as f:
        assert uid not in f.read()
    assert not os.path.exists(os.path.join(node.data_dir, "agent", "pods", uid))
    assert glob.glob(f"/sys/fs/cgroup/*/bramble/pods-1/pod{uid}") == []
    assert glob.glob(f"/run/bramble/pods-1/pods/{uid}") == []
    assert glob.glob(os.path.join(node.pod_log_dir, f"*{uid}*")) == []


def test_containers_survive_agent_kill_9_and_are_adopted(node, core):
    core.create_namespaced_pod("default", pod(
        "survivor", "echo started; while true; do sleep 0.2; done; echo survivor-marker"))
    p = phase(core, "survivor", "Running")
    container_id = p.status.container_statuses[0].container_id
    marker = "survivor-marker"
    assert len(processes_with(marker)) == 1
    node.stop(signal.SIGKILL)
    time.sleep(1)
    assert len(processes_with(marker)) == 1, "the container outlives its agent"
    node.start()
    # The status read back could be the one written before the kill: exec needs the new
    # agent to hold the running container, so it shows the adoption itself.
    adopted = wait_for(lambda: (r := kubectl(node, "exec", "survivor", "--", "sh", "-c", "echo adopted-by-$$",
                                             check=False)).returncode == 0 and r, timeout=30)
    assert "adopted-by-" in adopted.stdout, adopted.stderr
    p = core.read_namespaced_pod("survivor", "default")
    cs = p.status.container_statuses[0]
    assert cs.container_id == container_id and cs.restart_count == 0 and cs.state.running
    assert len(processes_with(marker)) == 1, "adopted, not started twice"
    assert "started" in core.read_namespaced_pod_log("survivor", "default")
    delete(core, "survivor")
    assert processes_with(marker) == []


def test_pull_from_a_registry_through_registries_yaml(node, core, registry):
    archive = os.path.join(node.dir, "pulled.tar")
    docker_archive(archive, tags=("pulled:1",), cmd=("sh", "-c", "echo pulled image runs; sleep 100"))
    subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", f"docker-archive:{archive}",
                    f"docker://{registry}/demo/pulled:1"], check=True, capture_output=True, timeout=60)
    with open(node.registries, "w") as f:
        f.write(f'mirrors:\n  "{registry}":\n    endpoint:\n      - "http://{registry}"\n')
    node.stop()
    node.start()
    core.create_namespaced_pod("default", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "pulled"},
        "spec": {"nodeName": "pods-1", "containers": [{"name": "main", "image": f"{registry}/demo/pulled:1"}]}})
    phase(core, "pulled", "Running", timeout=60)
    wait_for(lambda: "pulled image runs" in core.read_namespaced_pod_log("pulled", "default"))
    events = core.list_namespaced_event("default", field_selector="involvedObject.name=pulled").items
    assert {"Pulling", "Pulled"} <= {e.reason for e in events}
    delete(core, "pulled")

    core.create_namespaced_pod("default", {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "unpullable"},
        "spec": {"nodeName": "pods-1", "containers": [{"name": "main", "image": f"{registry}/demo/absent:1"}]}})
    waiting = wait_for(lambda: (cs := core.read_namespaced_pod("unpullable", "default").status.container_statuses)
                       and cs[0].state.waiting and cs[0].state.waiting.reason in ("ErrImagePull", "ImagePullBackOff")
                       and cs[0].state.waiting, timeout=30)
    assert "demo/absent" in waiting.message
    delete(core, "unpullable")


@pytest.fixture
def shell_pod(core):
    core.create_namespaced_pod("default", pod(
        "shell", "head -c 1000000 /dev/urandom > /www/blob; echo hello-pf > /www/index.html; "
                 "httpd -f -p 127.0.0.1:8080 -h /www"))
    phase(core, "shell", "Running")
    yield "shell"
    delete(core, "shell")


@pytest.mark.parametrize("version", ["1.27", "1.33"])
def test_kubectl_exec_plain_piped_and_with_a_terminal(node, core, shell_pod, version):
    # 1.27 speaks SPDY only; 1.33 speaks WebSocket (v5.channel.k8s.io).
    out = kubectl(node, "exec", shell_pod, "--", "sh", "-c", "echo out; echo err >&2; exit 3",
                  version=version, check=False)
    assert out.returncode == 3 and out.stdout == "out\n" and "err" in out.stderr
    piped = subprocess.run([os.path.join(kubectl_dir(), f"kubectl.{version}"), "--kubeconfig", node.kubeconfig,
                            "exec", "-i", shell_pod, "--", "sh", "-c", "tr a-z A-Z; cat /etc/hostname"],
                           input="piped in\n", capture_output=True, text=True, timeout=30)
    assert piped.returncode == 0 and piped.stdout == f"PIPED IN\n{shell_pod}\n"
    # -it through a real terminal (script gives kubectl one).
    cmd = f"{os.path.join(kubectl_dir(), 'kubectl.' + version)} --kubeconfig {node.kubeconfig} exec -it {shell_pod} -- sh"
    tty = subprocess.run(["script", "-qec", cmd, "/dev/null"], input="tty; stty size; exit 4\n",
                         capture_output=True, text=True, timeout=30)
    assert tty.returncode == 4, tty.stdout + tty.stderr
    assert "/dev/pts/0" in tty.stdout
    missing = kubectl(node, "exec", shell_pod, "--", "/no/such/program", version=version, check=False)
    assert missing.returncode != 0


def test_python_client_exec_and_port_forward(core, shell_pod):
    from kubernetes.stream import portforward, stream
    out = stream(core.connect_get_namespaced_pod_exec, shell_pod, "default",
                 command=["sh", "-c", "echo py-$((6*7))"], stderr=True, stdin=False, stdout=True, tty=False)
    assert out == "py-42\n"
    resp = stream(core.connect_get_namespaced_pod_exec, shell_pod, "default", command=["sh", "-c", "exit 7"],
                  stderr=True, stdin=False, stdout=True, tty=False, _preload_content=False)
    resp.run_forever(timeout=10)
    assert resp.returncode == 7
    pf = portforward(core.connect_get_namespaced_pod_portforward, shell_pod, "default", ports="8080")
    sock = pf.socket(8080)
    sock.setblocking(True)
    sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
    data = b""
    while chunk := sock.recv(4096):
        data += chunk
    sock.close()
    pf.close()
    assert data.endswith(b"\r\n\r\nhello-pf\n")


@pytest.mark.parametrize("version", ["1.27", "1.33"])
def test_kubectl_port_forward(node, core, shell_pod, version):
    import hashlib
    import socket
    import urllib.request
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pf = subprocess.Popen([os.path.join(kubectl_dir(), f"kubectl.{version}"), "--kubeconfig", node.kubeconfig,
                           "port-forward", f"pod/{shell_pod}", f"{port}:8080"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert "Forwarding from" in pf.stdout.readline()
        # The server listens on the pod's loopback only: reached from inside its namespace.
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read() == b"hello-pf\n"
        blob = urllib.request.urlopen(f"http://127.0.0.1:{port}/blob", timeout=30).read()
        inside = kubectl(node, "exec", shell_pod, "--", "busybox", "sha256sum", "/www/blob").stdout.split()[0]
        assert len(blob) == 1000000 and hashlib.sha256(blob).hexdigest() == inside
    finally:
        pf.kill()
        pf.wait()


def test_image_pull_secrets_for_a_private_registry(node, core, private_registry):
    import base64
    import json
    addr, user, password = private_registry
    archive = os.path.join(node.dir, "private.tar")
    docker_archive(archive, tags=("private:1",), cmd=("sh", "-c", "echo private image runs; sleep 100"))
    subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", "--dest-creds", f"{user}:{password}",
                    f"docker-archive:{archive}", f"docker://{addr}/team/private:1"],
                   check=True, capture_output=True, timeout=60)
    with open(node.registries, "w") as f:
        f.write(f'mirrors:\n  "{addr}":\n    endpoint:\n      - "http://{addr}"\n')
    node.stop()
    node.start()
    image = f"{addr}/team/private:1"
    anonymous = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "anonymous"},
                 "spec": {"nodeName": "pods-1", "containers": [{"name": "main", "image": image}]}}
    core.create_namespaced_pod("default", anonymous)
    waiting = wait_for(lambda: (cs := core.read_namespaced_pod("anonymous", "default").status.container_statuses)
                       and cs[0].state.waiting and cs[0].state.waiting.reason in ("ErrImagePull", "ImagePullBackOff")
                       and cs[0].state.waiting, timeout=30)
    assert "team/private" in waiting.message

    auth = base64.b64encode(f"{user}:{password}".encode()).decode()
    config_json = json.dumps({"auths": {addr: {"auth": auth}}})
    core.create_namespaced_secret("default", {
        "metadata": {"name": "regcred"}, "type": "kubernetes.io/dockerconfigjson",
        "data": {".dockerconfigjson": base64.b64encode(config_json.encode()).decode()}})
    authed = dict(anonymous, metadata={"name": "authed"})
    authed["spec"] = dict(anonymous["spec"], imagePullSecrets=[{"name": "regcred"}])
    core.create_namespaced_pod("default", authed)
    phase(core, "authed", "Running", timeout=60)
    wait_for(lambda: "private image runs" in core.read_namespaced_pod_log("authed", "default"))
    delete(core, "anonymous")
    delete(core, "authed")
    core.delete_namespaced_secret("regcred", "default")


def test_service_endpoints_follow_the_pods_they_select(node, core):
    """Endpoints list the selected pods' addresses with named target ports resolved, not-ready
    pods apart, and follow pods coming and going; `kubernetes` lists the API server."""
    kube = wait_for(lambda: core.read_namespaced_endpoints("kubernetes", "default"))
    assert kube.subsets[0].ports[0].port == int(node.port) and kube.subsets[0].addresses[0].ip
    listed = kubectl(node, "get", "endpoints", "-A").stdout
    assert "kubernetes" in listed and f":{node.port}" in listed, listed
    container = {"ports": [{"name": "web", "containerPort": 8080}],
                 "readinessProbe": {"exec": {"command": ["test", "-f", "/tmp/ready"]}, "periodSeconds": 1}}
    for name in ("web-a", "web-b"):
        body = pod(name, "touch /tmp/ready; httpd -f -p 8080 -h /tmp", container=container)
        body["metadata"]["labels"] = {"app": "web"}
        core.create_namespaced_pod("default", body)
    late = pod("web-late", "sleep 3600", container=container)   # never ready
    late["metadata"]["labels"] = {"app": "web"}
    core.create_namespaced_pod("default", late)
    core.create_namespaced_service("default", {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                                               "spec": {"selector": {"app": "web"},
                                                        "ports": [{"name": "http", "port": 80, "targetPort": "web"}]}})
    ips = {phase(core, n, "Running").status.pod_ip for n in ("web-a", "web-b")}
    late_ip = phase(core, "web-late", "Running").status.pod_ip

    def addresses():
        ep = core.read_namespaced_endpoints("web", "default")
        ready = {a.ip for s in ep.subsets or [] for a in s.addresses or []}
        not_ready = {a.ip for s in ep.subsets or [] for a in s.not_ready_addresses or []}
        return ready, not_ready, ep
    ready, not_ready, ep = wait_for(lambda: (r := addresses())[0] == ips and r, timeout=30)
    assert not_ready == {late_ip}
    assert ep.subsets[0].ports[0].port == 8080 and ep.subsets[0].ports[0].name == "http"
    b_ip = core.read_namespaced_pod("web-b", "default").status.pod_ip
    delete(core, "web-a")
    wait_for(lambda: addresses()[0] == {b_ip}, timeout=30)
    core.delete_namespaced_service("web", "default")
    wait_for(lambda: not any(e.metadata.name == "web" for e in core.list_namespaced_endpoints("default").items),
             timeout=30)
    delete(core, "web-b")
    delete(core, "web-late")


def test_service_endpoint_slices_follow_the_pods_they_select(node, core):
    """A Service's EndpointSlices list the selected pods with the named target port
    resolved, ready and not-ready ones with their conditions, as kubectl and the Python
    client read them; the `kubernetes` Service has its own slice; deleting the Service
    removes its slices."""
    discovery = client.DiscoveryV1Api(core.api_client)
    kube = wait_for(lambda: discovery.read_namespaced_endpoint_slice("kubernetes", "default"))
    assert kube.address_type == "IPv4" and kube.ports[0].port == int(node.port), kube
    assert kube.metadata.labels == {"kubernetes.io/service-name": "kubernetes"}
    rows = [line.split() for line in kubectl(node, "get", "endpointslices", "-A").stdout.splitlines()]
    assert rows[0][:5] == ["NAMESPACE", "NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS"], rows
    assert ["default", "kubernetes", "IPv4", str(node.port), kube.endpoints[0].addresses[0]] in [r[:5] for r in rows], rows

    container = {"ports": [{"name": "web", "containerPort": 8080}],
                 "readinessProbe": {"exec": {"command": ["test", "-f", "/tmp/ready"]}, "periodSeconds": 1}}
    for name, command in (("sliced-a", "touch /tmp/ready; sleep 3600"), ("sliced-b", "touch /tmp/ready; sleep 3600"),
                          ("sliced-late", "sleep 3600")):   # never ready
        body = pod(name, command, container=container)
        body["metadata"]["labels"] = {"app": "sliced"}
        core.create_namespaced_pod("default", body)
    core.create_namespaced_service("default", {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "sliced"},
                                               "spec": {"selector": {"app": "sliced"},
                                                        "ports": [{"name": "http", "port": 80, "targetPort": "web"}]}})
    ip = {n: phase(core, n, "Running").status.pod_ip for n in ("sliced-a", "sliced-b", "sliced-late")}
    selector = "kubernetes.io/service-name=sliced"

    def slices():
        return discovery.list_namespaced_endpoint_slice("default", label_selector=selector).items

    def readiness():
        return {ep.addresses[0]: ep.conditions.ready for s in slices() for ep in s.endpoints or []}
    want = {ip["sliced-a"]: True, ip["sliced-b"]: True, ip["sliced-late"]: False}
    wait_for(lambda: readiness() == want, timeout=30)
    [s] = slices()
    assert s.address_type == "IPv4"
    assert s.metadata.name.startswith("sliced-") and len(s.metadata.name) == len("sliced-") + 5, s.metadata.name
    assert s.metadata.labels["endpointslice.kubernetes.io/managed-by"] == "endpointslice-controller.k8s.io"
    [owner] = s.metadata.owner_references
    assert (owner.kind, owner.name, owner.controller, owner.block_owner_deletion) == ("Service", "sliced", True, True)
    assert [(p.name, p.port, p.protocol) for p in s.ports] == [("http", 8080, "TCP")]
    by_pod = {ep.target_ref.name: ep for ep in s.endpoints}
    late, a = by_pod["sliced-late"], by_pod["sliced-a"]
    assert (late.conditions.ready, late.conditions.serving, late.conditions.terminating) == (False, False, False)
    assert (a.conditions.ready, a.conditions.serving, a.conditions.terminating) == (True, True, False)
    assert a.node_name == "pods-1" and a.target_ref.kind == "Pod" and a.addresses == [ip["sliced-a"]]

    rows = [line.split() for line in kubectl(node, "get", "endpointslices", "-l", selector).stdout.splitlines()]
    assert rows[0] == ["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"], rows
    assert rows[1][:3] == [s.metadata.name, "IPv4", "8080"], rows
    assert set(rows[1][3].split(",")) == set(ip.values()), rows

    delete(core, "sliced-a")
    wait_for(lambda: readiness() == {ip["sliced-b"]: True, ip["sliced-late"]: False}, timeout=30)
    core.delete_namespaced_service("sliced", "default")
    wait_for(lambda: not slices(), timeout=30)
    assert "sliced" not in kubectl(node, "get", "endpointslices", "-l", selector).stdout
    delete(core, "sliced-b")
    delete(core, "sliced-late")
