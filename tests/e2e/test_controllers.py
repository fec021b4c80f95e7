"""The control loops with real pods on real containers, driven by the real kubectl and the
Python client: a Deployment's rollout, history and undo; a ReplicaSet adopting an orphan;
cascading deletion in the background, in the foreground and orphaning; a Job that retries;
a CronJob that fires; a DaemonSet following node labels; a StatefulSet's order; the
scheduler saying why a pod fits nowhere; cordon and drain."""
import os
import subprocess
import time

import pytest
from kubernetes import client, config

from conftest import BUSYBOX as IMAGE, Server, drop_busybox, kubectl_dir, wait_for

NODE = "ctl-1"
# A container that stops at once on SIGTERM, so deletions do not wait out a grace period.
SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait"]


@pytest.fixture(scope="module")
def node():
    s = Server(extra_args=["--node-name", NODE, "--node-label", "disktype=ssd"], agent=True)
    s.extra_args += ["--default-local-storage-path", os.path.join(s.dir, "storage")]
    drop_busybox(s.data_dir)
    s.start()
    try:
        yield s
    finally:
        s.cleanup()


@pytest.fixture(scope="module")
def api(node):
    api = config.new_client_from_config(config_file=node.kubeconfig)
    core = client.CoreV1Api(api)
    wait_for(lambda: any(c.type == "Ready" and c.status == "True"
                         for c in (core.read_node(NODE).status.conditions or [])), timeout=30)
    return api


@pytest.fixture
def ns(api):
    """A namespace per test, deleted afterwards (its pods stop with it)."""
    name = f"t{time.time_ns() % 10**9}"
    core = client.CoreV1Api(api)
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)


def kubectl(node, *args, version="1.33", check=True, timeout=90):
    p = subprocess.run([os.path.join(kubectl_dir(), f"kubectl.{version}"), "--kubeconfig", node.kubeconfig, *args],
                       capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)} failed:\n{p.stdout}\n{p.stderr}\n{node.log()[-3000:]}")
    return p


def deployment(name, replicas=3, env="1", **spec):
    body = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"terminationGracePeriodSeconds": 2, "containers": [
                                  {"name": "main", "image": IMAGE, "imagePullPolicy": "Never", "command": SLEEPER,
                                   "env": [{"name": "V", "value": env}]}]}}},
    }
    body["spec"].update(spec)
    return body


def running_pods(core, ns, selector):
    pods = core.list_namespaced_pod(ns, label_selector=selector).items
    return [p for p in pods if p.status.phase == "Running" and not p.metadata.deletion_timestamp]


def test_deployment_rolls_out_and_back(node, api, ns):
    apps = client.AppsV1Api(api)
    core = client.CoreV1Api(api)
    apps.create_namespaced_deployment(ns, deployment("web"))
    kubectl(node, "-n", ns, "rollout", "status", "deploy/web", "--timeout=60s")
    pods = running_pods(core, ns, "app=web")
    assert len(pods) == 3
    assert all(p.metadata.owner_references[0].kind == "ReplicaSet" for p in pods)
    assert all(p.spec.node_name == NODE for p in pods), "the scheduler bound them"

    kubectl(node, "-n", ns, "annotate", "deploy/web", "kubernetes.io/change-cause=env 2")
    kubectl(node, "-n", ns, "set", "env", "deploy/web", "V=2")
    out = kubectl(node, "-n", ns, "rollout", "status", "deploy/web", "--timeout=60s").stdout
    assert 'deployment "web" successfully rolled out' in out
    history = kubectl(node, "-n", ns, "rollout", "history", "deploy/web").stdout
    assert "1 " in history and "2         env 2" in history
    rss = apps.list_namespaced_replica_set(ns).items
    assert sorted(rs.spec.replicas for rs in rss) == [0, 3]
    d = apps.read_namespaced_deployment("web", ns)
    assert d.metadata.annotations["deployment.kubernetes.io/revision"] == "2"
    assert (d.status.replicas, d.status.updated_replicas, d.status.available_replicas) == (3, 3, 3)
    assert d.status.observed_generation == d.metadata.generation
    conds = {c.type: c for c in d.status.conditions}
    assert conds["Available"].status == "True"
    assert conds["Progressing"].reason == "NewReplicaSetAvailable"
    # Every new pod runs the new template.
    wait_for(lambda: all(p.spec.containers[0].env[0].value == "2" for p in core.list_namespaced_pod(ns).items
                         if not p.metadata.deletion_timestamp) and len(running_pods(core, ns, "app=web")) == 3, 60)

    kubectl(node, "-n", ns, "rollout", "undo", "deploy/web", "--to-revision=1")
    kubectl(node, "-n", ns, "rollout", "status", "deploy/web", "--timeout=60s")
    d = apps.read_namespaced_deployment("web", ns)
    assert d.spec.template.spec.containers[0].env[0].value == "1"
    assert d.metadata.annotations["deployment.kubernetes.io/revision"] == "3"
    history = kubectl(node, "-n", ns, "rollout", "history", "deploy/web").stdout
    assert "3 " in history and "\n1 " not in history, "revision 1 became revision 3"

    # Pause holds template changes back; resume rolls them out.
    kubectl(node, "-n", ns, "rollout", "pause", "deploy/web")
    kubectl(node, "-n", ns, "set", "env", "deploy/web", "V=4")
    time.sleep(2)
    assert len(apps.list_namespaced_replica_set(ns).items) == 2, "paused: no new ReplicaSet"
    kubectl(node, "-n", ns, "rollout", "resume", "deploy/web")
    kubectl(node, "-n", ns, "rollout", "status", "deploy/web", "--timeout=60s")
    assert len(apps.list_namespaced_replica_set(ns).items) == 3

    # Scale through the scale subresource.
    kubectl(node, "-n", ns, "scale", "deploy/web", "--replicas=1")
    wait_for(lambda: len(core.list_namespaced_pod(ns, label_selector="app=web").items) == 1, 60)


def test_recreate_and_rolling_arithmetic_never_exceed_bounds(node, api, ns):
    apps = client.AppsV1Api(api)
    core = client.CoreV1Api(api)
    spec = {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}}
    apps.create_namespaced_deployment(ns, deployment("roll", replicas=2, **spec))
    kubectl(node, "-n", ns, "rollout", "status", "deploy/roll", "--timeout=60s")
    apps.patch_namespaced_deployment("roll", ns, {"spec": {"template": {"spec": {"containers": [
        {"name": "main", "env": [{"name": "V", "value": "2"}]}]}}}})
    peak = 0
    deadline = time.time() + 60
    while time.time() < deadline:
        live = [p for p in core.list_namespaced_pod(ns, label_selector="app=roll").items if not p.metadata.deletion_timestamp]
        peak = max(peak, len(live))
        d = apps.read_namespaced_deployment("roll", ns)
        if d.status.updated_replicas == 2 and d.status.replicas == 2 and d.status.available_replicas == 2:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("rollout did not finish")
    assert peak <= 3, f"maxSurge 1 over 2 replicas allows 3 pods, saw {peak}"

    apps.create_namespaced_deployment(ns, deployment("rec", replicas=2, strategy={"type": "Recreate"}))
    kubectl(node, "-n", ns, "rollout", "status", "deploy/rec", "--timeout=60s")
    apps.patch_namespaced_deployment("rec", ns, {"spec": {"template": {"metadata": {"labels": {"v": "2"}}}}})
    mixed = False
    deadline = time.time() + 60
    while time.time() < deadline:
        pods = [p for p in core.list_namespaced_pod(ns, label_selector="app=rec").items if p.status.phase == "Running"]
        if {p.metadata.labels.get("v") for p in pods} == {None, "2"}:
            mixed = True
        d = apps.read_namespaced_deployment("rec", ns)
        # The status of the new template, not the one left from before the patch.
        if (d.status.observed_generation or 0) >= d.metadata.generation and d.status.updated_replicas == 2 \
                and d.status.available_replicas == 2 and d.status.replicas == 2:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("the Recreate rollout did not finish")
    assert not mixed, "Recreate never runs old and new pods together"
    running = [p for p in core.list_namespaced_pod(ns, label_selector="app=rec").items if p.status.phase == "Running"]
    assert {p.metadata.labels.get("v") for p in running} == {"2"}, "every pod runs the new template"


def test_replicaset_adopts_orphans_and_scales_down(api, ns):
    apps = client.AppsV1Api(api)
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(ns, {"metadata": {"name": "stray", "labels": {"app": "rs"}}, "spec": {
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "main", "image": IMAGE, "imagePullPolicy": "Never", "command": SLEEPER}]}})
    wait_for(lambda: core.read_namespaced_pod("stray", ns).status.phase == "Running", 30)
    apps.create_namespaced_replica_set(ns, {"metadata": {"name": "rs"}, "spec": {
        "replicas": 2, "selector": {"matchLabels": {"app": "rs"}},
        "template": {"metadata": {"labels": {"app": "rs"}}, "spec": {"terminationGracePeriodSeconds": 1, "containers": [
            {"name": "main", "image": IMAGE, "imagePullPolicy": "Never", "command": SLEEPER}]}}}})
    wait_for(lambda: len(running_pods(core, ns, "app=rs")) == 2, 30)
    stray = core.read_namespaced_pod("stray", ns)
    assert stray.metadata.owner_references[0].name == "rs", "the orphan was adopted"
    rs = wait_for(lambda: (r := apps.read_namespaced_replica_set("rs", ns)).status and r.status.ready_replicas == 2 and r, 30)
    assert (rs.status.replicas, rs.status.available_replicas) == (2, 2)
    # A pod deleted behind its back is replaced.
    core.delete_namespaced_pod("stray", ns, grace_period_seconds=0)
    wait_for(lambda: len(running_pods(core, ns, "app=rs")) == 2
             and "stray" not in [p.metadata.name for p in running_pods(core, ns, "app=rs")], 30)
    apps.patch_namespaced_replica_set_scale("rs", ns, {"spec": {"replicas": 0}})
    wait_for(lambda: not core.list_namespaced_pod(ns, label_selector="app=rs").items, 30)
    events = core.list_namespaced_event(ns, field_selector="involvedObject.name=rs").items
    assert {"SuccessfulCreate", "SuccessfulDelete"} <= {e.reason for e in events}


def test_cascading_deletion(api, ns):
    apps = client.AppsV1Api(api)
    core = client.CoreV1Api(api)
    for name in ("bg", "fg", "orphan"):
        apps.create_namespaced_deployment(ns, deployment(name, replicas=1))
    wait_for(lambda: len(running_pods(core, ns, "app in (bg,fg,orphan)")) == 3, 60)

    apps.delete_namespaced_deployment("bg", ns, propagation_policy="Background")
    wait_for(lambda: not apps.list_namespaced_replica_set(ns, label_selector="app=bg").items
             and not core.list_namespaced_pod(ns, label_selector="app=bg").items, 30)

    # Foreground: the Deployment stays, marked, until its ReplicaSet and pods are gone.
    slow = {"spec": {"template": {"spec": {"terminationGracePeriodSeconds": 3, "containers": [
        {"name": "main", "command": ["sh", "-c", "sleep 3600"]}]}}}}
    apps.patch_namespaced_deployment("fg", ns, slow)
    wait_for(lambda: len([p for p in running_pods(core, ns, "app=fg") if p.spec.termination_grace_period_seconds == 3]) == 1
             and len(core.list_namespaced_pod(ns, label_selector="app=fg").items) == 1, 60)
    apps.delete_namespaced_deployment("fg", ns, propagation_policy="Foreground")
    d = apps.read_namespaced_deployment("fg", ns)
    assert d.metadata.deletion_timestamp and "foregroundDeletion" in d.metadata.finalizers
    time.sleep(1)
    assert apps.read_namespaced_deployment("fg", ns), "still there while its pod stops"
    wait_for(lambda: not [d for d in apps.list_namespaced_deployment(ns).items if d.metadata.name == "fg"], 30)
    assert not core.list_namespaced_pod(ns, label_selector="app=fg").items

    apps.delete_namespaced_deployment("orphan", ns, propagation_policy="Orphan")
    wait_for(lambda: not [d for d in apps.list_namespaced_deployment(ns).items if d.metadata.name == "orphan"], 30)
    rs = apps.list_namespaced_replica_set(ns, label_selector="app=orphan").items
    assert len(rs) == 1 and not rs[0].metadata.owner_references
    assert len(running_pods(core, ns, "app=orphan")) == 1

    # A bad policy is refused with the values that would work.
    with pytest.raises(client.ApiException) as e:
        apps.delete_namespaced_replica_set(rs[0].metadata.name, ns, propagation_policy="Sideways")
    assert e.value.status == 422 and "Foreground" in e.value.body


def test_job_retries_then_completes_and_gives_up_past_its_limit(node, api, ns):
    batch = client.BatchV1Api(api)
    counter = os.path.join(node.dir, f"job-counter-{ns}")
    os.makedirs(counter)
    batch.create_namespaced_job(ns, {"metadata": {"name": "flaky"}, "spec": {"backoffLimit": 4, "template": {"spec": {
        "restartPolicy": "Never",
        "volumes": [{"name": "c", "hostPath": {"path": counter}}],
        "containers": [{"name": "main", "image": IMAGE, "imagePullPolicy": "Never", "volumeMounts": [{"name": "c", "mountPath": "/c"}],
                        "command": ["sh", "-c", "n=$(cat /c/n 2>/dev/null || echo 0); echo $((n+1)) > /c/n; [ $n -ge 1 ]"]}]}}}})
    job = wait_for(lambda: (j := batch.read_namespaced_job("flaky", ns)).status and j.status.succeeded == 1 and j, 60)
    assert job.status.failed == 1
    assert any(c.type == "Complete" and c.status == "True" for c in job.status.conditions)
    assert job.status.completion_time
    kubectl(node, "-n", ns, "wait", "--for=condition=complete", "job/flaky", "--timeout=10s")

    batch.create_namespaced_job(ns, {"metadata": {"name": "doomed"}, "spec": {"backoffLimit": 0, "template": {"spec": {
        "restartPolicy": "Never",
        "containers": [{"name": "main", "image": IMAGE, "imagePullPolicy": "Never", "command": ["sh", "-c", "exit 3"]}]}}}})
    job = wait_for(lambda: (j := batch.read_namespaced_job("doomed", ns)).status and j.status.conditions and j, 60)
    failed = [c for c in job.status.conditions if c.type == "Failed"]
    assert failed and failed[0].reason == "BackoffLimitExceeded"
    assert job.status.failed == 1

    # Parallel completions, and a Job deleted with its pods after its TTL.
    batch.create_namespaced_job(ns, {"metadata": {"name": "many"}, "spec": {
        "completions": 4, "parallelism": 2, "ttlSecondsAfterFinished": 1, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": IMAGE, "imagePullPolicy": "Never", "command": ["true"]}]}}}})
    wait_for(lambda: not [j for j in batch.list_namespaced_job(ns).items if j.metadata.name == "many"], 60)
    assert not client.CoreV1Api(api).list_namespaced_pod(ns, label_selector="job-name=many").items


def test_cronjob_fires_and_keeps_its_history(node, api, ns):
    batch = client.BatchV1Api(api)
    batch.create_namespaced_cron_job(ns, {"metadata": {"name": "tick"}, "spec": {
        "schedule": "* * * * *", "successfulJobsHistoryLimit": 2, "jobTemplate": {"spec": {"template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": IMAGE, "imagePullPolicy": "Never", "command": ["echo", "tick"]}]}}}}}})
    job = wait_for(lambda: batch.list_namespaced_job(ns).items, 75)[0]
    assert job.metadata.name.startswith("tick-")
    assert job.metadata.owner_references[0].kind == "CronJob"
    cj = wait_for(lambda: (c := batch.read_namespaced_cron_job("tick", ns)).status and c.status.last_successful_time and c, 30)
    assert cj.status.last_schedule_time
    # By hand, as kubectl does it.
    kubectl(node, "-n", ns, "create", "job", "manual", "--from=cronjob/tick")
    # (A run at the next minute may prune it again, beyond the history limit of 2.)
    wait_for(lambda: [j for j in batch.list_namespaced_job(ns).items if j.metadata.name == "manual"
                      and (j.status and j.status.succeeded)] or
             "manual" not in [j.metadata.name for j in batch.list_namespaced_job(ns).items], 30)
    done = [j for j in batch.list_namespaced_job(ns).items if j.status and j.status.succeeded]
    assert len(done) <= 2 + 1, "the history limit holds (one more may be between its finish and the prune)"

    with pytest.raises(client.ApiException) as e:
        batch.create_namespaced_cron_job(ns, {"metadata": {"name": "bad-tz"}, "spec": {
            "schedule": "0 9 * * *", "timeZone": "Mars/Olympus", "jobTemplate": {"spec": {"template": {"spec": {
                "restartPolicy": "Never", "containers": [{"name": "c", "image": IMAGE}]}}}}}})
    assert e.value.status == 422 and "spec.timeZone" in e.value.body


def test_daemonset_follows_node_labels(node, api, ns):
    apps = client.AppsV1Api(api)
    core = client.CoreV1Api(api)
    apps.create_namespaced_daemon_set(ns, {"metadata": {"name": "edge"}, "spec": {
        "selector": {"matchLabels": {"app": "edge"}},
        "template": {"metadata": {"labels": {"app": "edge"}}, "spec": {
            "nodeSelector": {f"edge-{ns}": "yes"}, "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": IMAGE, "imagePullPolicy": "Never", "command": SLEEPER}]}}}})
    ds = wait_for(lambda: (d := apps.read_namespaced_daemon_set("edge", ns)).status and d.status.observed_generation and d, 30)
    assert ds.status.desired_number_scheduled == 0
    try:
        kubectl(node, "label", "node", NODE, f"edge-{ns}=yes")
        pod = wait_for(lambda: running_pods(core, ns, "app=edge"), 30)[0]
        assert pod.spec.node_name == NODE
        assert any(t.key == "node.kubernetes.io/unreachable" for t in pod.spec.tolerations), "automatic tolerations"
        wait_for(lambda: apps.read_namespaced_daemon_set("edge", ns).status.number_ready == 1, 30)
        assert "controller-revision-hash" in pod.metadata.labels
        kubectl(node, "-n", ns, "set", "env", "ds/edge", "V=2")
        kubectl(node, "-n", ns, "rollout", "status", "ds/edge", "--timeout=60s")
        assert "2 " in kubectl(node, "-n", ns, "rollout", "history", "ds/edge").stdout
    finally:
        kubectl(node, "label", "node", NODE, f"edge-{ns}-")
    wait_for(lambda: not core.list_namespaced_pod(ns, label_selector="app=edge").items, 30)
    assert apps.read_namespaced_daemon_set("edge", ns).status.desired_number_scheduled == 0


def test_statefulset_starts_in_order_and_scales_down_from_the_top(node, api, ns):
    apps = client.AppsV1Api(api)
    core = client.CoreV1Api(api)
    core.create_namespaced_service(ns, {"metadata": {"name": "db"}, "spec": {"clusterIP": "None", "selector": {"app": "db"}}})
    apps.create_namespaced_stateful_set(ns, {"metadata": {"name": "db"}, "spec": {
        "serviceName": "db", "replicas": 3, "selector": {"matchLabels": {"app": "db"}},
        "template": {"metadata": {"labels": {"app": "db"}}, "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
            "name": "main", "image": IMAGE, "imagePullPolicy": "Never",
            "command": ["sh", "-c", "hostname; trap 'exit 0' TERM; sleep 3600 & wait"],
            "readinessProbe": {"exec": {"command": ["true"]}, "initialDelaySeconds": 1, "periodSeconds": 1}}]}}}})
    kubectl(node, "-n", ns, "rollout", "status", "sts/db", "--timeout=90s")
    pods = {p.metadata.name: p for p in core.list_namespaced_pod(ns).items}
    assert sorted(pods) == ["db-0", "db-1", "db-2"]
    ready_at = {}
    for name, p in pods.items():
        ready_at[name] = next(c.last_transition_time for c in p.status.conditions if c.type == "Ready")
    created = {name: p.metadata.creation_timestamp for name, p in pods.items()}
    assert ready_at["db-0"] <= created["db-1"] and ready_at["db-1"] <= created["db-2"], "each waits for the one before"
    assert pods["db-1"].spec.hostname == "db-1" and pods["db-1"].spec.subdomain == "db"
    assert kubectl(node, "-n", ns, "logs", "db-2").stdout.strip() == "db-2"

    watcher = subprocess.Popen([os.path.join(kubectl_dir(), "kubectl.1.33"), "--kubeconfig", node.kubeconfig, "-n", ns,
                                "get", "pods", "-w", "--output-watch-events", "-o",
                                "custom-columns=E:.type,N:.object.metadata.name,D:.object.metadata.deletionTimestamp",
                                "--no-headers"],
                               stdout=subprocess.PIPE, text=True)
    seen = []
    try:
        # The watch is open once it has listed the three pods.
        seen = [watcher.stdout.readline() for _ in range(3)]
        assert all(line.startswith("ADDED") for line in seen), seen
        kubectl(node, "-n", ns, "scale", "sts/db", "--replicas=1")
        wait_for(lambda: [p.metadata.name for p in core.list_namespaced_pod(ns).items] == ["db-0"], 60)
    finally:
        watcher.terminate()
        out = "".join(seen) + watcher.communicate(timeout=10)[0]
    marked = [line.split()[1] for line in out.splitlines() if line.split()[0] == "MODIFIED" and line.split()[2] != "<none>"]
    order = list(dict.fromkeys(marked))
    assert order[:2] == ["db-2", "db-1"], out
    sts = apps.read_namespaced_stateful_set("db", ns)
    assert sts.status.current_revision == sts.status.update_revision


def test_unschedulable_pod_says_why_and_is_placed_when_a_node_fits(node, api, ns):
    core = client.CoreV1Api(api)
    core.create_namespaced_pod(ns, {"metadata": {"name": "picky"}, "spec": {
        "nodeSelector": {f"zone-{ns}": "north"}, "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "main", "image": IMAGE, "imagePullPolicy": "Never", "command": SLEEPER,
                        "resources": {"requests": {"cpu": "10m"}}}]}})
    pod = wait_for(lambda: (p := core.read_namespaced_pod("picky", ns)).status and p.status.conditions and p, 30)
    cond = next(c for c in pod.status.conditions if c.type == "PodScheduled")
    assert (cond.status, cond.reason) == ("False", "Unschedulable")
    assert cond.message == "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
    events = wait_for(lambda: core.list_namespaced_event(ns, field_selector="involvedObject.name=picky").items, 10)
    assert events[0].reason == "FailedScheduling" and events[0].type == "Warning"
    describe = kubectl(node, "-n", ns, "describe", "pod", "picky").stdout
    assert "FailedScheduling" in describe and "didn't match Pod's node affinity/selector" in describe

    core.create_namespaced_pod(ns, {"metadata": {"name": "huge"}, "spec": {"containers": [
        {"name": "main", "image": IMAGE, "resources": {"requests": {"memory": "900Ti"}}}]}})
    huge = wait_for(lambda: (p := core.read_namespaced_pod("huge", ns)).status and p.status.conditions and p, 30)
    assert "1 Insufficient memory" in huge.status.conditions[0].message

    try:
        kubectl(node, "label", "node", NODE, f"zone-{ns}=north")
        pod = wait_for(lambda: (p := core.read_namespaced_pod("picky", ns)).spec.node_name and p, 30)
        assert pod.spec.node_name == NODE
    finally:
        kubectl(node, "label", "node", NODE, f"zone-{ns}-")


def test_cordon_and_drain(node, api, ns):
    apps = client.AppsV1Api(api)
    core = client.CoreV1Api(api)
    apps.create_namespaced_deployment(ns, deployment("drained", replicas=2))
    wait_for(lambda: len(running_pods(core, ns, "app=drained")) == 2, 60)
    try:
        kubectl(node, "cordon", NODE)
        n = core.read_node(NODE)
        assert n.spec.unschedulable
        wait_for(lambda: any(t.key == "node.kubernetes.io/unschedulable" for t in (core.read_node(NODE).spec.taints or [])), 15)
        out = kubectl(node, "drain", NODE, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=60s",
                      "--pod-selector", "app=drained").stdout
        assert "evicting pod" in out.lower() or "evicted" in out.lower(), out
        # Their replacements wait: the only node is cordoned.
        pending = wait_for(lambda: [p for p in core.list_namespaced_pod(ns, label_selector="app=drained").items
                                    if p.status.conditions and p.status.conditions[0].reason == "Unschedulable"], 30)
        assert "1 node(s) were unschedulable" in pending[0].status.conditions[0].message
    finally:
        kubectl(node, "uncordon", NODE)
    wait_for(lambda: len(running_pods(core, ns, "app=drained")) == 2, 60)
    assert not any(t.key == "node.kubernetes.io/unschedulable" for t in (core.read_node(NODE).spec.taints or []))


def test_statefulset_claims_get_local_volumes_on_their_node(node, api, ns):
    apps = client.AppsV1Api(api)
    core = client.CoreV1Api(api)
    classes = {c.metadata.name: c for c in client.StorageV1Api(api).list_storage_class().items}
    assert {"local-ssd", "local-hdd"} <= set(classes)
    defaults = [n for n, c in classes.items()
                if (c.metadata.annotations or {}).get("storageclass.kubernetes.io/is-default-class") == "true"]
    assert len(defaults) == 1
    apps.create_namespaced_stateful_set(ns, {"metadata": {"name": "kv"}, "spec": {
        "serviceName": "kv", "replicas": 2, "selector": {"matchLabels": {"app": "kv"}},
        "template": {"metadata": {"labels": {"app": "kv"}}, "spec": {"terminationGracePeriodSeconds": 1, "containers": [{
            "name": "main", "image": IMAGE, "imagePullPolicy": "Never",
            "command": ["sh", "-c", "hostname >> /data/id; trap 'exit 0' TERM; sleep 3600 & wait"],
            "volumeMounts": [{"name": "data", "mountPath": "/data"}]}]}},
        "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {
            "storageClassName": "local-ssd", "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "64Mi"}}}}]}})
    kubectl(node, "-n", ns, "rollout", "status", "sts/kv", "--timeout=90s")
    claims = {c.metadata.name: c for c in core.list_namespaced_persistent_volume_claim(ns).items}
    assert sorted(claims) == ["data-kv-0", "data-kv-1"]
    assert all(c.status.phase == "Bound" and c.spec.volume_name for c in claims.values())
    pv = core.read_persistent_volume(claims["data-kv-1"].spec.volume_name)
    assert pv.spec.storage_class_name == "local-ssd" and pv.spec.capacity["storage"] == "64Mi"
    assert pv.spec.node_affinity.required.node_selector_terms[0].match_expressions[0].values
    path = pv.spec.host_path.path
    assert path.startswith(os.path.join(node.dir, "storage"))
    assert wait_for(lambda: os.path.exists(os.path.join(path, "id")) and open(os.path.join(path, "id")).read() == "kv-1\n", 10)

    # Scale down: the pod goes, its claim and data stay; deleting the claim removes both.
    kubectl(node, "-n", ns, "scale", "sts/kv", "--replicas=1")
    wait_for(lambda: [p.metadata.name for p in core.list_namespaced_pod(ns).items] == ["kv-0"], 60)
    assert "data-kv-1" in [c.metadata.name for c in core.list_namespaced_persistent_volume_claim(ns).items]
    assert os.path.exists(path)
    core.delete_namespaced_persistent_volume_claim("data-kv-1", ns)
    wait_for(lambda: pv.metadata.name not in [v.metadata.name for v in core.list_persistent_volume().items], 40)
    assert not os.path.exists(path), "the node removed the volume's directory"

    # A pod whose claim does not exist is told so.
    core.create_namespaced_pod(ns, {"metadata": {"name": "lost"}, "spec": {"containers": [
        {"name": "main", "image": IMAGE}], "volumes": [{"name": "d", "persistentVolumeClaim": {"claimName": "nope"}}]}})
    lost = wait_for(lambda: (p := core.read_namespaced_pod("lost", ns)).status and p.status.conditions and p, 30)
    assert 'persistentvolumeclaim "nope" not found' in lost.status.conditions[0].message


def test_deleting_a_namespace_empties_it_first(node, api):
    apps = client.AppsV1Api(api)
    core = client.CoreV1Api(api)
    name = f"doomed-{time.time_ns() % 10**6}"
    core.create_namespace({"metadata": {"name": name}})
    assert core.read_namespace(name).spec.finalizers == ["kubernetes"]
    slow = deployment("web", replicas=2)
    slow["spec"]["template"]["spec"]["containers"][0]["command"] = ["sh", "-c", "sleep 3600"]
    apps.create_namespaced_deployment(name, slow)
    core.create_namespaced_config_map(name, {"metadata": {"name": "c"}, "data": {"k": "v"}})
    wait_for(lambda: len(running_pods(core, name, "app=web")) == 2, 60)
    core.delete_namespace(name)
    ns = core.read_namespace(name)
    assert ns.status.phase == "Terminating" and ns.metadata.deletion_timestamp
    # Its pods take their 2 s grace; until they are gone, so is not the namespace.
    time.sleep(0.5)
    assert core.read_namespace(name).status.phase == "Terminating"
    wait_for(lambda: name not in [n.metadata.name for n in core.list_namespace().items], 60)
    assert not core.list_namespaced_pod(name).items
    with pytest.raises(client.ApiException) as e:
        core.create_namespaced_config_map(name, {"metadata": {"name": "late"}})
    assert e.value.status == 404


def test_evictions_respect_disruption_budgets(node, api, ns):
    apps = client.AppsV1Api(api)
    core = client.CoreV1Api(api)
    policy = client.PolicyV1Api(api)
    slow = deployment("guarded", replicas=2)
    slow["spec"]["template"]["spec"]["containers"][0]["command"] = ["sh", "-c", "sleep 3600"]
    apps.create_namespaced_deployment(ns, slow)
    policy.create_namespaced_pod_disruption_budget(ns, {"metadata": {"name": "keep-one"}, "spec": {
        "maxUnavailable": 1, "selector": {"matchLabels": {"app": "guarded"}}}})
    wait_for(lambda: len(running_pods(core, ns, "app=guarded")) == 2
             and all(c.status == "True" for p in running_pods(core, ns, "app=guarded")
                     for c in p.status.conditions if c.type == "Ready"), 60)
    pdb = wait_for(lambda: (b := policy.read_namespaced_pod_disruption_budget("keep-one", ns)).status
                   and b.status.disruptions_allowed == 1 and b, 30)
    assert (pdb.status.expected_pods, pdb.status.current_healthy, pdb.status.desired_healthy) == (2, 2, 1)

    first, second = [p.metadata.name for p in running_pods(core, ns, "app=guarded")]
    evict = lambda name: core.create_namespaced_pod_eviction(name, ns, {  # noqa: E731
        "apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": name, "namespace": ns}})
    evict(first)
    with pytest.raises(client.ApiException) as e:
        evict(second)
    assert e.value.status == 429
    assert "disruption budget" in e.value.body and "keep-one needs 1 healthy pods and has 1 currently" in e.value.body
    # Once the replacement is Ready, the budget allows one more.
    def replaced():
        pods = [p for p in running_pods(core, ns, "app=guarded") if p.metadata.name != first]
        return len(pods) == 2 and all(c.status == "True" for p in pods for c in p.status.conditions if c.type == "Ready")
    wait_for(replaced, 60)
    wait_for(lambda: policy.read_namespaced_pod_disruption_budget("keep-one", ns).status.current_healthy == 2, 30)
    evict(second)
    out = kubectl(node, "-n", ns, "get", "pdb", "keep-one").stdout
    assert "keep-one" in out


def test_no_control_loop_was_refused(node, api):
    """Last in the module: every loop above wrote as its own ServiceAccount with only its
    role's rights. A write RBAC refused shows as a refused reconcile in the log or as a
    Warning event (FailedCreate...) naming the loop's user."""
    def refused(text):
        return "is forbidden: User" in text and ('"system:serviceaccount:kube-system:' in text
                                                 or '"system:kube-scheduler"' in text
                                                 or '"system:kube-controller-manager"' in text)
    lines = [line for line in node.log().splitlines() if refused(line)]
    assert not lines, "\n".join(lines[:5])
    events = client.CoreV1Api(api).list_event_for_all_namespaces().items
    bad = [f"{e.reason}: {e.message}" for e in events if refused(e.message or "")]
    assert not bad, "\n".join(bad[:5])
    sa = client.CoreV1Api(api).list_namespaced_service_account("kube-system").items
    assert {"replicaset-controller", "generic-garbage-collector", "namespace-controller"} <= {s.metadata.name for s in sa}
