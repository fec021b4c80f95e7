"""The official Python `kubernetes` client against a real server: CRUD with upstream
defaults, conflicts and errors as Status objects, watches, selectors and pagination,
patches of every kind, server-side apply, dry runs, the scale and eviction subresources,
discovery through the dynamic client, and data surviving `kill -9`."""
import signal
import uuid

import pytest
from kubernetes import client, config, dynamic, watch
from kubernetes.client.rest import ApiException

from conftest import Server


@pytest.fixture(scope="module")
def api_client(server):
    return config.new_client_from_config(config_file=server.kubeconfig)


@pytest.fixture
def ns(api_client):
    name = f"py-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(api_client)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    core.delete_namespace(name)


def deployment(name, image="nginx:1.25", replicas=2, labels=None):
    labels = labels or {"app": name}
    return client.V1Deployment(
        metadata=client.V1ObjectMeta(name=name, labels=labels),
        spec=client.V1DeploymentSpec(
            replicas=replicas,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[
                    client.V1Container(name="web", image=image),
                    client.V1Container(name="side", image="busybox:latest"),
                ]),
            ),
        ),
    )


def status_of(exc):
    import json
    return json.loads(exc.body)


def test_crud_and_defaults(api_client, ns):
    core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
    cm = core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="cfg"),
                                                                  data={"mode": "fast"}))
    assert cm.metadata.uid and cm.metadata.creation_timestamp and cm.metadata.resource_version
    assert core.read_namespaced_config_map("cfg", ns).data == {"mode": "fast"}
    cm.data["mode"] = "slow"
    replaced = core.replace_namespaced_config_map("cfg", ns, cm)
    assert int(replaced.metadata.resource_version) > int(cm.metadata.resource_version)

    secret = core.create_namespaced_secret(ns, client.V1Secret(metadata=client.V1ObjectMeta(name="pw"),
                                                               string_data={"password": "hunter2"}))
    assert secret.data == {"password": "aHVudGVyMg=="} and secret.string_data is None

    d = apps.create_namespaced_deployment(ns, deployment("web"))
    assert d.metadata.generation == 1
    assert d.spec.strategy.type == "RollingUpdate"
    assert d.spec.strategy.rolling_update.max_surge == "25%"
    assert d.spec.strategy.rolling_update.max_unavailable == "25%"
    assert d.spec.revision_history_limit == 10 and d.spec.progress_deadline_seconds == 600
    pod = d.spec.template.spec
    assert pod.restart_policy == "Always" and pod.dns_policy == "ClusterFirst"
    assert pod.termination_grace_period_seconds == 30
    assert [c.image_pull_policy for c in pod.containers] == ["IfNotPresent", "Always"]

    svc = core.create_namespaced_service(ns, client.V1Service(
        metadata=client.V1ObjectMeta(name="web"),
        spec=client.V1ServiceSpec(type="NodePort", selector={"app": "web"},
                                  ports=[client.V1ServicePort(port=80, target_port=8080)])))
    assert svc.spec.cluster_ip.startswith("10.43.")
    node_port = svc.spec.ports[0].node_port
    assert 30000 <= node_port <= 32767
    clash = client.V1Service(metadata=client.V1ObjectMeta(name="clash"), spec=client.V1ServiceSpec(
        type="NodePort", ports=[client.V1ServicePort(port=81, node_port=node_port)]))
    with pytest.raises(ApiException) as e:
        core.create_namespaced_service(ns, clash)
    assert e.value.status in (409, 422) and str(node_port) in status_of(e.value)["message"]

    batch = client.BatchV1Api(api_client)
    job = batch.create_namespaced_job(ns, client.V1Job(
        metadata=client.V1ObjectMeta(name="once"),
        spec=client.V1JobSpec(template=client.V1PodTemplateSpec(spec=client.V1PodSpec(
            restart_policy="Never", containers=[client.V1Container(name="c", image="busybox:1.36")])))))
    assert job.spec.backoff_limit == 6
    lease = client.CoordinationV1Api(api_client).create_namespaced_lease(ns, client.V1Lease(
        metadata=client.V1ObjectMeta(name="leader"), spec=client.V1LeaseSpec(holder_identity="a")))
    assert lease.spec.holder_identity == "a"

    core.delete_namespaced_config_map("cfg", ns)
    with pytest.raises(ApiException) as e:
        core.read_namespaced_config_map("cfg", ns)
    assert e.value.status == 404


def retry_on_conflict(read, write, change):
    """Read, change, write; again on 409, as clients do beside controllers that write too."""
    for _ in range(20):
        obj = read()
        change(obj)
        try:
            return write(obj)
        except ApiException as e:
            if e.status != 409:
                raise
    raise AssertionError("kept conflicting")


def test_generation_and_status(api_client, ns):
    apps = client.AppsV1Api(api_client)
    apps.create_namespaced_deployment(ns, deployment("gen"))
    read = lambda: apps.read_namespaced_deployment("gen", ns)  # noqa: E731
    replace = lambda d: apps.replace_namespaced_deployment("gen", ns, d)  # noqa: E731
    d = retry_on_conflict(read, replace, lambda d: d.metadata.labels.update({"extra": "yes"}))
    assert d.metadata.generation == 1, "labels are not spec"
    d = retry_on_conflict(read, replace, lambda d: setattr(d.spec, "replicas", 4))
    assert d.metadata.generation == 2
    d = retry_on_conflict(read, lambda d: apps.replace_namespaced_deployment_status("gen", ns, d),
                          lambda d: setattr(d, "status", client.V1DeploymentStatus(replicas=4, observed_generation=2)))
    assert d.metadata.generation == 2 and d.status.observed_generation == 2


def test_conflicts_and_errors_are_statuses(api_client, ns):
    core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
    cm = core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c"), data={}))
    core.patch_namespaced_config_map("c", ns, {"data": {"a": "1"}})
    cm.data = {"b": "2"}
    with pytest.raises(ApiException) as e:
        core.replace_namespaced_config_map("c", ns, cm)
    assert e.value.status == 409 and status_of(e.value)["reason"] == "Conflict"
    assert core.read_namespaced_config_map("c", ns).data == {"a": "1"}

    with pytest.raises(ApiException) as e:
        core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c")))
    assert e.value.status == 409 and status_of(e.value)["reason"] == "AlreadyExists"
    with pytest.raises(ApiException) as e:
        core.read_namespaced_config_map("missing", ns)
    body = status_of(e.value)
    assert body["kind"] == "Status" and body["reason"] == "NotFound" and body["details"]["name"] == "missing"
    with pytest.raises(ApiException) as e:
        core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="Not_Valid")))
    body = status_of(e.value)
    assert e.value.status == 422 and body["reason"] == "Invalid"
    assert body["details"]["causes"][0]["field"] == "metadata.name"

    apps.create_namespaced_deployment(ns, deployment("sel"))
    with pytest.raises(ApiException) as e:
        apps.patch_namespaced_deployment("sel", ns, {"spec": {
            "selector": {"matchLabels": {"app": "new"}},
            "template": {"metadata": {"labels": {"app": "new"}}}}})
    assert e.value.status == 422 and "immutable" in status_of(e.value)["message"]


def test_watch_sees_changes_in_order(api_client, ns):
    core = client.CoreV1Api(api_client)
    rv = core.list_namespaced_config_map(ns).metadata.resource_version
    core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(
        name="w", labels={"watch": "me"}), data={"v": "1"}))
    core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="other")))
    core.patch_namespaced_config_map("w", ns, {"data": {"v": "2"}})
    core.delete_namespaced_config_map("w", ns)

    seen = []
    for event in watch.Watch().stream(core.list_namespaced_config_map, ns, resource_version=rv,
                                      timeout_seconds=2, allow_watch_bookmarks=True):
        # The namespace's kube-root-ca.crt may be published meanwhile, as upstream.
        if event["type"] != "BOOKMARK" and event["object"].metadata.name != "kube-root-ca.crt":
            seen.append((event["type"], event["object"].metadata.name))
    assert seen == [("ADDED", "w"), ("ADDED", "other"), ("MODIFIED", "w"), ("DELETED", "w")]

    selected = [(e["type"], e["object"].metadata.name) for e in watch.Watch().stream(
        core.list_namespaced_config_map, ns, resource_version=rv, label_selector="watch=me", timeout_seconds=2)]
    assert [name for _, name in selected] == ["w", "w", "w"]


def test_selectors_and_pagination(api_client, ns):
    core = client.CoreV1Api(api_client)
    tiers = ["a", "b", "c", "a", None]
    for i, tier in enumerate(tiers):
        labels = {"tier": tier} if tier else {"plain": "yes"}
        core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"cm{i}",
                                                                                               labels=labels)))
    # Every namespace holds the cluster's kube-root-ca.crt ConfigMap, as upstream.
    names = lambda **kw: [c.metadata.name for c in core.list_namespaced_config_map(ns, **kw).items
                          if c.metadata.name != "kube-root-ca.crt"]
    assert names(label_selector="tier=a") == ["cm0", "cm3"]
    assert names(label_selector="tier!=a") == ["cm1", "cm2", "cm4"]
    assert names(label_selector="tier in (b,c)") == ["cm1", "cm2"]
    assert names(label_selector="tier notin (a)") == ["cm1", "cm2", "cm4"]
    assert names(label_selector="tier") == ["cm0", "cm1", "cm2", "cm3"]
    assert names(label_selector="!tier") == ["cm4"]
    assert names(field_selector="metadata.name=cm2") == ["cm2"]

    collected, token = [], None
    while True:
        page = core.list_namespaced_config_map(ns, limit=2, _continue=token)
        assert page.metadata.resource_version
        collected += [c.metadata.name for c in page.items if c.metadata.name != "kube-root-ca.crt"]
        token = page.metadata._continue
        if not token:
            break
    assert collected == ["cm0", "cm1", "cm2", "cm3", "cm4"]


def test_pages_show_the_first_pages_snapshot(api_client, ns):
    core = client.CoreV1Api(api_client)
    # Every namespace holds the cluster's kube-root-ca.crt ConfigMap (as upstream); it sorts
    # after the cm* names, on the last page, and is left out of what is compared.
    mine = lambda items: [c for c in items if c.metadata.name != "kube-root-ca.crt"]
    for i in range(5):
        core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name=f"cm{i}"),
                                                                 data={"v": "1"}))
    first = core.list_namespaced_config_map(ns, limit=2)
    snapshot = first.metadata.resource_version
    # Between pages: one changed, one deleted, one created, all after the first page's key.
    core.patch_namespaced_config_map("cm3", ns, {"data": {"v": "2"}})
    core.delete_namespaced_config_map("cm4", ns)
    core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="cm2a")))
    items, token = list(first.items), first.metadata._continue
    while token:
        page = core.list_namespaced_config_map(ns, limit=2, _continue=token)
        assert page.metadata.resource_version == snapshot
        items += page.items
        token = page.metadata._continue
    items = mine(items)
    assert [c.metadata.name for c in items] == ["cm0", "cm1", "cm2", "cm3", "cm4"]
    assert all(c.data == {"v": "1"} for c in items)
    cm3 = next(c for c in items if c.metadata.name == "cm3")
    assert int(cm3.metadata.resource_version) <= int(snapshot)
    # A list at an exact revision is the same snapshot; the latest state is not.
    exact = core.list_namespaced_config_map(ns, resource_version=snapshot, resource_version_match="Exact")
    assert [c.metadata.name for c in mine(exact.items)] == ["cm0", "cm1", "cm2", "cm3", "cm4"]
    now = core.list_namespaced_config_map(ns)
    assert [c.metadata.name for c in mine(now.items)] == ["cm0", "cm1", "cm2", "cm2a", "cm3"]
    with pytest.raises(ApiException) as too_new:
        core.list_namespaced_config_map(ns, resource_version=str(int(now.metadata.resource_version) + 1000),
                                        resource_version_match="Exact")
    assert too_new.value.status == 504


def test_patches_apply_and_dry_run(api_client, ns):
    core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
    apps.create_namespaced_deployment(ns, deployment("p"))
    apps.patch_namespaced_deployment("p", ns, {"spec": {"template": {"spec": {
        "containers": [{"name": "web", "image": "nginx:1.27"}]}}}})
    images = [c.image for c in apps.read_namespaced_deployment("p", ns).spec.template.spec.containers]
    assert images == ["nginx:1.27", "busybox:latest"]
    apps.patch_namespaced_deployment("p", ns, [{"op": "replace", "path": "/spec/replicas", "value": 7}])
    assert apps.read_namespaced_deployment("p", ns).spec.replicas == 7

    configmaps = dynamic.DynamicClient(api_client).resources.get(api_version="v1", kind="ConfigMap")
    configmaps.server_side_apply(body={"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "applied"},
                                       "data": {"k": "v"}}, namespace=ns, field_manager="py-tests")
    applied = core.read_namespaced_config_map("applied", ns)
    assert applied.data == {"k": "v"}
    assert [m.manager for m in applied.metadata.managed_fields] == ["py-tests"]
    assert applied.metadata.managed_fields[0].operation == "Apply"

    core.create_namespaced_config_map(ns, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="dry")),
                                      dry_run="All")
    with pytest.raises(ApiException) as e:
        core.read_namespaced_config_map("dry", ns)
    assert e.value.status == 404


def test_scale_and_eviction(api_client, ns):
    core, apps = client.CoreV1Api(api_client), client.AppsV1Api(api_client)
    apps.create_namespaced_deployment(ns, deployment("s"))
    assert apps.read_namespaced_deployment_scale("s", ns).spec.replicas == 2
    apps.patch_namespaced_deployment_scale("s", ns, {"spec": {"replicas": 5}})
    assert apps.read_namespaced_deployment("s", ns).spec.replicas == 5

    core.create_namespaced_pod(ns, client.V1Pod(metadata=client.V1ObjectMeta(name="victim"),
                                                spec=client.V1PodSpec(containers=[client.V1Container(
                                                    name="c", image="busybox:1.36")])))
    core.create_namespaced_pod_eviction("victim", ns, client.V1Eviction(
        metadata=client.V1ObjectMeta(name="victim", namespace=ns)))
    try:
        pod = core.read_namespaced_pod("victim", ns)
        assert pod.metadata.deletion_timestamp is not None
    except ApiException as e:
        assert e.status == 404


def test_cron_schedules_and_json_patch_tests_are_checked(api_client, ns):
    batch = client.BatchV1Api(api_client)
    template = {"spec": {"template": {"spec": {"restartPolicy": "Never",
                                                "containers": [{"name": "c", "image": "busybox:1.36"}]}}}}
    for schedule, ok in [("*/5 * * * *", True), ("@daily", True), ("0 9-17/2 * jan-jun mon-fri", True),
                         ("every minute", False), ("61 * * * *", False), ("* * * * * *", False)]:
        body = {"metadata": {"name": f"c{uuid.uuid4().hex[:8]}"}, "spec": {"schedule": schedule, "jobTemplate": template}}
        if ok:
            batch.create_namespaced_cron_job(ns, body)
            continue
        with pytest.raises(ApiException) as e:
            batch.create_namespaced_cron_job(ns, body)
        s = status_of(e.value)
        assert e.value.status == 422 and s["details"]["causes"][0]["field"] == "spec.schedule", s

    core = client.CoreV1Api(api_client)
    core.create_namespaced_config_map(ns, {"metadata": {"name": "patched"}, "data": {"a": "1"}})
    with pytest.raises(ApiException) as e:
        core.patch_namespaced_config_map("patched", ns, [{"op": "test", "path": "/data/a", "value": "2"},
                                                          {"op": "replace", "path": "/data/a", "value": "3"}])
    assert e.value.status == 422
    assert core.read_namespaced_config_map("patched", ns).data == {"a": "1"}, "a failed test changes nothing"


def test_dynamic_client_discovers_resources(api_client, ns):
    dyn = dynamic.DynamicClient(api_client)
    deployments = dyn.resources.get(api_version="apps/v1", kind="Deployment")
    client.AppsV1Api(api_client).create_namespaced_deployment(ns, deployment("dyn"))
    found = deployments.get(namespace=ns)
    assert [d.metadata.name for d in found.items] == ["dyn"]
    cms = dyn.resources.get(api_version="v1", kind="ConfigMap")
    cms.create(namespace=ns, body={"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "d"},
                                   "data": {"a": "b"}})
    assert cms.get(namespace=ns, name="d").data.a == "b"


def test_writes_survive_kill_9():
    server = Server().start()
    try:
        api = config.new_client_from_config(config_file=server.kubeconfig)
        core = client.CoreV1Api(api)
        versions = {}
        for i in range(30):
            cm = core.create_namespaced_config_map("default", client.V1ConfigMap(
                metadata=client.V1ObjectMeta(name=f"durable{i}"), data={"i": str(i)}))
            versions[cm.metadata.name] = cm.metadata.resource_version
        server.stop(signal.SIGKILL)
        server.start()
        api = config.new_client_from_config(config_file=server.kubeconfig)
        core = client.CoreV1Api(api)
        after = {c.metadata.name: c.metadata.resource_version
                 for c in core.list_namespaced_config_map("default").items if c.metadata.name.startswith("durable")}
        assert after == versions
        fresh = core.create_namespaced_config_map("default", client.V1ConfigMap(
            metadata=client.V1ObjectMeta(name="after-restart")))
        assert int(fresh.metadata.resource_version) > max(int(v) for v in versions.values())
    finally:
        server.cleanup()
