"""Compatibility with the real kubectl, oldest and newest supported (1.27 and 1.33), through
the workflows users actually follow: apply of a multi-document file (client-side and
server-side), the typed `create` generators (protobuf request bodies from kubectl 1.32 on),
get in every output format and with selectors, describe, patch, label, annotate, scale,
edit, delete, watch, explain, discovery, and the errors users see when they get something
wrong.

Every test works in a namespace of its own, named after the test and the kubectl version,
and deletes it afterwards, whatever the outcome. No controllers run, so nothing here
depends on a Deployment getting pods or on a Job running.
"""
import base64
import ipaddress
import json
import queue
import re
import threading
import time

import pytest
import yaml

SERVICE_CIDR = ipaddress.ip_network("10.43.0.0/16")
PROTOBUF = "application/vnd.kubernetes.protobuf"

STACK = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  labels: {app: web, tier: front}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - name: nginx
        image: nginx:1.25
        ports: [{containerPort: 80}]
      - name: log
        image: busybox:1.36
        command: [sh, -c, "tail -f /dev/null"]
---
apiVersion: v1
kind: Service
metadata: {name: web, labels: {app: web}}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 80}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: web-config, labels: {app: web}}
data: {greeting: hello}
---
apiVersion: v1
kind: Secret
metadata: {name: web-secret, labels: {app: web}}
stringData: {password: s3cret}
"""

STACK_CREATED = ["deployment.apps/web", "service/web", "configmap/web-config", "secret/web-secret"]


# ---------------------------------------------------------------------------------------
# helpers


def version_of(kubectl):
    """"1.27" for kubectl.1.27."""
    return kubectl.bin.rsplit("kubectl.", 1)[-1]


@pytest.fixture
def ns(kubectl, request):
    """A namespace for one test and one kubectl version (t-<test>[-<case>]-<version>),
    deleted afterwards even when the test fails."""
    base = request.node.originalname.removeprefix("test_").replace("_", "-")
    callspec = getattr(request.node, "callspec", None)
    if callspec:
        extra = [str(v) for k, v in callspec.params.items() if k != "kubectl"]
        base = "-".join([base, *extra])
    base = re.sub(r"[^a-z0-9-]", "-", base.lower())
    suffix = "-" + version_of(kubectl).replace(".", "-")
    name = f"t-{base}"[: 63 - len(suffix)].rstrip("-") + suffix
    kubectl.run("create", "namespace", name)
    try:
        yield name
    finally:
        kubectl.run("delete", "namespace", name, "--ignore-not-found", "--wait=false", check=False)


def get_json(kubectl, ns, *args):
    return json.loads(kubectl.run("-n", ns, "get", *args, "-o", "json").stdout)


def get_yaml(kubectl, ns, *args):
    return yaml.safe_load(kubectl.run("-n", ns, "get", *args, "-o", "yaml").stdout)


def jsonpath(kubectl, ns, *args, path):
    return kubectl.run("-n", ns, "get", *args, "-o", f"jsonpath={path}").stdout


def table_sections(out):
    """Splits the output of `get a,b,c` into {kind prefix: (header cells, rows of cells)}."""
    sections = {}
    for block in re.split(r"\n\s*\n", out.strip()):
        lines = block.splitlines()
        # Every namespace holds the cluster's kube-root-ca.crt ConfigMap, as upstream.
        rows = [line.split() for line in lines[1:] if "kube-root-ca.crt" not in line]
        kind = rows[0][0].split("/")[0] if rows else ""
        sections[kind] = (lines[0].split(), rows)
    return sections


def describe_fields(out):
    """The top-level `Key: value` lines of a describe output, first occurrence wins."""
    fields = {}
    for line in out.splitlines():
        m = re.match(r"^([A-Za-z][A-Za-z -]*):\s*(.*)$", line)
        if m and m.group(1) not in fields:
            fields[m.group(1)] = m.group(2).strip()
    return fields


def failed(result):
    """Asserts a kubectl call failed and returns its stderr."""
    assert result.returncode != 0, f"expected a failure, got:\n{result.stdout}\n{result.stderr}"
    return result.stderr


class LineReader:
    """Collects the stdout lines of a running process in a background thread."""

    def __init__(self, proc):
        self.proc = proc
        self.lines = []
        self._queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))

    def wait_for(self, predicate, timeout=15):
        """Reads lines until one satisfies `predicate`; returns it, fails on timeout."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                line = self._queue.get(timeout=max(0.05, deadline - time.time()))
            except queue.Empty:
                break
            self.lines.append(line)
            if predicate(line):
                return line
        raise AssertionError(f"no matching line within {timeout}s; got:\n" + "\n".join(self.lines))


def stop(proc):
    proc.kill()
    proc.wait(timeout=10)


# ---------------------------------------------------------------------------------------
# 1. client-side apply of a multi-document file


def test_apply_multi_document(kubectl, ns):
    out = kubectl.run("-n", ns, "apply", "-f", "-", input=STACK).stdout
    for name in STACK_CREATED:
        assert f"{name} created" in out, out

    sections = table_sections(kubectl.run("-n", ns, "get", "deploy,svc,cm", "-o", "wide").stdout)
    header, rows = sections["deployment.apps"]
    assert header == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE", "CONTAINERS", "IMAGES", "SELECTOR"]
    assert len(rows) == 1
    name, ready, up_to_date, available, _age, containers, images, selector = rows[0]
    # No node runs pods here: the controllers make them, none becomes ready.
    assert (name, ready, available) == ("deployment.apps/web", "0/2", "0")
    assert up_to_date in ("0", "2")
    assert (containers, images, selector) == ("nginx,log", "nginx:1.25,busybox:1.36", "app=web")

    header, rows = sections["service"]
    assert header == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE", "SELECTOR"]
    assert rows[0][:2] == ["service/web", "ClusterIP"]
    assert ipaddress.ip_address(rows[0][2]) in SERVICE_CIDR, rows[0]
    assert rows[0][3:5] == ["<none>", "80/TCP"] and rows[0][6] == "app=web"

    header, rows = sections["configmap"]
    assert header == ["NAME", "DATA", "AGE"]
    assert [r[:2] for r in rows] == [["configmap/web-config", "1"]]

    secret = get_json(kubectl, ns, "secret", "web-secret")
    assert secret["type"] == "Opaque"
    assert secret["data"] == {"password": base64.b64encode(b"s3cret").decode()}
    assert "stringData" not in secret

    changed = STACK.replace("replicas: 2", "replicas: 3").replace("nginx:1.25", "nginx:1.27")
    out = kubectl.run("-n", ns, "apply", "-f", "-", input=changed).stdout
    assert "deployment.apps/web configured" in out, out
    assert "service/web unchanged" in out and "configmap/web-config unchanged" in out, out
    assert jsonpath(kubectl, ns, "deploy", "web", path="{.spec.replicas}") == "3"
    assert jsonpath(kubectl, ns, "deploy", "web",
                    path="{.spec.template.spec.containers[*].image}") == "nginx:1.27 busybox:1.36"

    # A Secret written with stringData always yields a non-empty patch, so upstream reports
    # it "configured" on every apply; the other three are truly unchanged.
    out = kubectl.run("-n", ns, "apply", "-f", "-", input=changed).stdout
    for name in STACK_CREATED[:3]:
        assert f"{name} unchanged" in out, out

    # Removing a container and a label from the file removes them from the live object
    # (three-way merge against the last-applied configuration).
    trimmed = changed.replace("labels: {app: web, tier: front}", "labels: {app: web}")
    trimmed = re.sub(r"      - name: log\n(        .*\n)+", "", trimmed, count=1)
    assert "deployment.apps/web configured" in kubectl.run("-n", ns, "apply", "-f", "-", input=trimmed).stdout
    deploy = get_json(kubectl, ns, "deploy", "web")
    assert [c["name"] for c in deploy["spec"]["template"]["spec"]["containers"]] == ["nginx"]
    assert deploy["metadata"]["labels"] == {"app": "web"}


# ---------------------------------------------------------------------------------------
# 2. server-side apply


SSA_DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: owned
  labels: {app: owned, stage: beta}
spec:
  replicas: 1
  selector: {matchLabels: {app: owned}}
  template:
    metadata: {labels: {app: owned}}
    spec:
      containers: [{name: app, image: nginx:1.25}]
"""


def managers(obj):
    return {m["manager"]: m for m in obj["metadata"]["managedFields"]}


def test_server_side_apply(kubectl, ns):
    def ssa(manifest, *flags, check=True):
        return kubectl.run("-n", ns, "apply", "--server-side", *flags, "-f", "-", input=manifest, check=check)

    assert "deployment.apps/owned serverside-applied" in ssa(SSA_DEPLOYMENT, "--field-manager=alice").stdout
    created = get_json(kubectl, ns, "deploy", "owned", "--show-managed-fields")
    assert created["spec"]["replicas"] == 1
    assert created["spec"]["strategy"]["type"] == "RollingUpdate"
    alice = managers(created)["alice"]
    assert alice["operation"] == "Apply" and alice["apiVersion"] == "apps/v1"
    assert "f:replicas" in alice["fieldsV1"]["f:spec"]

    # The same manager updates a field and drops a label it no longer declares.
    update = SSA_DEPLOYMENT.replace("replicas: 1", "replicas: 2").replace(", stage: beta", "")
    ssa(update, "--field-manager=alice")
    updated = get_json(kubectl, ns, "deploy", "owned")
    assert updated["spec"]["replicas"] == 2
    assert updated["metadata"]["labels"] == {"app": "owned"}

    # Another manager wanting a different value for a field alice owns is refused...
    taken = update.replace("replicas: 2", "replicas: 4")
    err = failed(ssa(taken, "--field-manager=bob", check=False))
    assert "conflict" in err.lower() and '"alice"' in err and ".spec.replicas" in err, err
    assert jsonpath(kubectl, ns, "deploy", "owned", path="{.spec.replicas}") == "2"

    # ...unless it forces the conflict, which moves the ownership of that field to it.
    ssa(taken, "--field-manager=bob", "--force-conflicts")
    forced = get_json(kubectl, ns, "deploy", "owned", "--show-managed-fields")
    assert forced["spec"]["replicas"] == 4
    owners = managers(forced)
    assert "f:replicas" in owners["bob"]["fieldsV1"]["f:spec"]
    assert "f:replicas" not in owners["alice"]["fieldsV1"]["f:spec"]


# ---------------------------------------------------------------------------------------
# 3. typed generators (`kubectl create <kind>`), then a `get -o yaml` round trip


CRONJOB_WITH_VOLUMES = """\
apiVersion: batch/v1
kind: CronJob
metadata: {name: nightly}
spec:
  schedule: "0 3 * * *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          volumes:
          - {name: cfg, configMap: {name: settings}}
          - {name: scratch, emptyDir: {}}
          containers:
          - name: task
            image: busybox:1.36
            command: [sh, -c, date]
            volumeMounts: [{name: cfg, mountPath: /cfg}]
            readinessProbe: {exec: {command: ["true"]}, periodSeconds: 5}
"""


def check_deployment(obj, ns):
    spec = obj["spec"]
    assert obj["metadata"]["labels"] == {"app": "gen"}
    assert spec["replicas"] == 2
    assert spec["selector"] == {"matchLabels": {"app": "gen"}}
    assert spec["template"]["metadata"]["labels"] == {"app": "gen"}
    assert spec["strategy"] == {"type": "RollingUpdate",
                                "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}
    assert spec["revisionHistoryLimit"] == 10 and spec["progressDeadlineSeconds"] == 600
    [container] = spec["template"]["spec"]["containers"]
    assert container["name"] == "nginx" and container["image"] == "nginx:1.25"
    assert container["ports"] == [{"containerPort": 80, "protocol": "TCP"}]
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert spec["template"]["spec"]["restartPolicy"] == "Always"


def check_configmap(obj, ns):
    assert obj["data"] == {"a": "b", "settings.ini": "level=debug\n"}


def check_secret(obj, ns):
    assert obj["type"] == "Opaque"
    assert obj["data"] == {"pw": base64.b64encode(b"x").decode()}


def check_service(obj, ns):
    spec = obj["spec"]
    assert spec["type"] == "ClusterIP"
    assert spec["selector"] == {"app": "gen"}
    assert spec["ports"] == [{"name": "80-8080", "port": 80, "protocol": "TCP", "targetPort": 8080}]
    assert ipaddress.ip_address(spec["clusterIP"]) in SERVICE_CIDR
    assert spec["clusterIPs"] == [spec["clusterIP"]]
    assert spec["sessionAffinity"] == "None"


def check_job(obj, ns):
    spec = obj["spec"]
    uid = obj["metadata"]["uid"]
    assert (spec["completions"], spec["parallelism"], spec["backoffLimit"]) == (1, 1, 6)
    assert spec["selector"] == {"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}
    # The API server labels the pod template with the job's name and uid (and, by
    # defaulting, the Job itself), so users can find its pods with -l job-name=gen.
    expected = {"batch.kubernetes.io/controller-uid": uid, "batch.kubernetes.io/job-name": "gen",
                "controller-uid": uid, "job-name": "gen"}
    assert spec["template"]["metadata"]["labels"] == expected
    assert obj["metadata"]["labels"] == expected
    [container] = spec["template"]["spec"]["containers"]
    assert container["command"] == ["echo", "hi"] and container["image"] == "busybox:1.36"
    assert spec["template"]["spec"]["restartPolicy"] == "Never"


def check_cronjob(obj, ns):
    spec = obj["spec"]
    assert spec["schedule"] == "*/5 * * * *"
    assert spec["concurrencyPolicy"] == "Allow" and spec["suspend"] is False
    assert (spec["successfulJobsHistoryLimit"], spec["failedJobsHistoryLimit"]) == (3, 1)
    pod = spec["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "OnFailure"
    assert pod["containers"][0]["command"] == ["date"]


def check_ingress(obj, ns):
    [rule] = obj["spec"]["rules"]
    assert rule["host"] == "foo.example.com"
    assert rule["http"]["paths"] == [{
        "path": "/api", "pathType": "Prefix",
        "backend": {"service": {"name": "gen", "port": {"number": 8080}}},
    }]


def check_job_from_cronjob(obj, ns):
    assert obj["metadata"]["annotations"]["cronjob.kubernetes.io/instantiate"] == "manual"
    [owner] = obj["metadata"]["ownerReferences"]
    assert (owner["apiVersion"], owner["kind"], owner["name"]) == ("batch/v1", "CronJob", "nightly")
    pod = obj["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "cfg", "configMap": {"name": "settings", "defaultMode": 420}},
                              {"name": "scratch", "emptyDir": {}}]
    probe = pod["containers"][0]["readinessProbe"]
    assert probe["exec"] == {"command": ["true"]} and probe["periodSeconds"] == 5


def check_pdb(obj, ns):
    assert obj["spec"]["minAvailable"] == 1
    assert obj["spec"]["selector"] == {"matchLabels": {"app": "gen"}}


GENERATORS = {
    # case: (setup manifests, create arguments, resource to get, check)
    "deployment": ([], ["deployment", "gen", "--image=nginx:1.25", "--replicas=2", "--port=80"],
                   "deployment/gen", check_deployment),
    "configmap": ([], ["configmap", "gen", "--from-literal=a=b", "--from-file={tmp}/settings.ini"],
                  "configmap/gen", check_configmap),
    "secret": ([], ["secret", "generic", "gen", "--from-literal=pw=x"], "secret/gen", check_secret),
    "service": ([], ["service", "clusterip", "gen", "--tcp=80:8080"], "service/gen", check_service),
    "job": ([], ["job", "gen", "--image=busybox:1.36", "--", "echo", "hi"], "job/gen", check_job),
    "cronjob": ([], ["cronjob", "gen", "--image=busybox:1.36", "--schedule=*/5 * * * *", "--", "date"],
                "cronjob/gen", check_cronjob),
    "ingress": ([], ["ingress", "gen", "--rule=foo.example.com/api*=gen:8080"], "ingress/gen", check_ingress),
    "job-from-cronjob": ([CRONJOB_WITH_VOLUMES], ["job", "manual", "--from=cronjob/nightly"], "job/manual",
                         check_job_from_cronjob),
    "pdb": ([], ["poddisruptionbudget", "gen", "--selector=app=gen", "--min-available=1"],
            "poddisruptionbudget/gen", check_pdb),
}


@pytest.mark.parametrize("case", list(GENERATORS))
def test_create_generator(kubectl, ns, case, tmp_path):
    setup, args, resource, check = GENERATORS[case]
    (tmp_path / "settings.ini").write_text("level=debug\n")
    args = [arg.replace("{tmp}", str(tmp_path)) for arg in args]
    for manifest in setup:
        kubectl.run("-n", ns, "apply", "-f", "-", input=manifest)

    # -v=8 shows the request headers: kubectl 1.32+ sends the typed object as protobuf.
    created = kubectl.run("-n", ns, "-v=8", "create", *args)
    assert f"{resource.split('/')[1]} created" in created.stdout, created.stdout
    if version_of(kubectl) >= "1.32":
        assert f"Content-Type: {PROTOBUF}" in created.stderr

    obj = get_yaml(kubectl, ns, resource)
    assert obj["metadata"]["name"] == resource.split("/")[1] and obj["metadata"]["namespace"] == ns
    check(obj, ns)

    # The YAML we read back is accepted as it is by a replace, and nothing changes. The
    # controllers write status just after a create: read once they have settled.
    while True:
        dumped = kubectl.run("-n", ns, "get", resource, "-o", "yaml").stdout
        time.sleep(0.5)
        if kubectl.run("-n", ns, "get", resource, "-o", "yaml").stdout == dumped:
            break
    obj = yaml.safe_load(dumped)
    kubectl.run("-n", ns, "replace", "-f", "-", input=dumped)
    again = get_yaml(kubectl, ns, resource)
    for doc in (obj, again):
        doc["metadata"].pop("resourceVersion")
        doc["metadata"].pop("managedFields", None)
    assert again == obj


# ---------------------------------------------------------------------------------------
# 4. get: output formats, selectors, all namespaces, pagination


def make_configmaps(kubectl, ns):
    """cm0..cm4 with tier a, b, c, a, b; app=x on the even ones."""
    docs = []
    for i, tier in enumerate(["a", "b", "c", "a", "b"]):
        labels = f"tier: {tier}" + (", app: x" if i % 2 == 0 else "")
        docs.append(f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm{i}, labels: {{{labels}}}}}\n"
                    f"data: {{index: '{i}'}}\n")
    kubectl.run("-n", ns, "create", "-f", "-", input="---\n".join(docs))


def test_get_output_formats(kubectl, ns):
    make_configmaps(kubectl, ns)

    listed = get_json(kubectl, ns, "cm", "-l", "tier")
    assert listed["kind"] == "List" and listed["apiVersion"] == "v1"
    assert [i["metadata"]["name"] for i in listed["items"]] == ["cm0", "cm1", "cm2", "cm3", "cm4"]
    assert all(i["kind"] == "ConfigMap" and i["apiVersion"] == "v1" for i in listed["items"])

    one = get_json(kubectl, ns, "cm", "cm1")
    assert one["kind"] == "ConfigMap" and one["data"] == {"index": "1"}
    assert one["metadata"]["labels"] == {"tier": "b"} and one["metadata"]["namespace"] == ns
    assert one["metadata"]["uid"] and one["metadata"]["resourceVersion"] and one["metadata"]["creationTimestamp"]

    assert get_yaml(kubectl, ns, "cm", "cm1") == one
    assert kubectl.run("-n", ns, "get", "cm", "cm1", "-o", "name").stdout == "configmap/cm1\n"
    assert jsonpath(kubectl, ns, "cm", "-l", "tier", path="{.items[*].metadata.name}") == "cm0 cm1 cm2 cm3 cm4"
    assert jsonpath(kubectl, ns, "cm", "cm3", path="{.data.index}") == "3"

    columns = kubectl.run("-n", ns, "get", "cm", "-l", "tier", "--sort-by=.metadata.name",
                          "-o", "custom-columns=NAME:.metadata.name,TIER:.metadata.labels.tier").stdout
    assert [line.split() for line in columns.splitlines()] == [
        ["NAME", "TIER"], ["cm0", "a"], ["cm1", "b"], ["cm2", "c"], ["cm3", "a"], ["cm4", "b"]]

    shown = kubectl.run("-n", ns, "get", "cm", "cm0", "cm1", "--show-labels").stdout.splitlines()
    assert shown[0].split() == ["NAME", "DATA", "AGE", "LABELS"]
    assert shown[1].split()[0] == "cm0" and shown[1].split()[-1] == "app=x,tier=a"
    assert shown[2].split()[0] == "cm1" and shown[2].split()[-1] == "tier=b"


def test_get_selectors(kubectl, ns):
    make_configmaps(kubectl, ns)

    def names(*args):
        # Every namespace holds the cluster's kube-root-ca.crt ConfigMap, as upstream.
        out = kubectl.run("-n", ns, "get", "cm", *args, "-o", "name").stdout.split()
        return [n for n in out if n != "configmap/kube-root-ca.crt"]

    assert names("-l", "app=x") == ["configmap/cm0", "configmap/cm2", "configmap/cm4"]
    assert names("-l", "tier in (a,b)") == ["configmap/cm0", "configmap/cm1", "configmap/cm3", "configmap/cm4"]
    assert names("-l", "tier notin (a,b)") == ["configmap/cm2"]
    assert names("-l", "tier!=a,tier") == ["configmap/cm1", "configmap/cm2", "configmap/cm4"]
    assert names("-l", "tier,!app") == ["configmap/cm1", "configmap/cm3"]
    assert names("-l", "app=x,tier=a") == ["configmap/cm0"]
    assert names("-l", "app=nothing") == []
    assert names("--field-selector", "metadata.name=cm2") == ["configmap/cm2"]
    assert names("-l", "tier", "--field-selector", "metadata.name!=cm2") == [
        "configmap/cm0", "configmap/cm1", "configmap/cm3", "configmap/cm4"]
    assert names("-l", "app=x", "--field-selector", f"metadata.namespace={ns}") == [
        "configmap/cm0", "configmap/cm2", "configmap/cm4"]

    empty = kubectl.run("-n", ns, "get", "cm", "-l", "app=nothing")
    assert empty.stdout == "" and f"No resources found in {ns} namespace." in empty.stderr


def test_get_all_namespaces_and_chunks(kubectl, ns):
    make_configmaps(kubectl, ns)

    everywhere = kubectl.run("get", "cm", "-A", "-l", "tier").stdout.splitlines()
    assert everywhere[0].split() == ["NAMESPACE", "NAME", "DATA", "AGE"]
    mine = [line.split()[:3] for line in everywhere[1:] if line.split()[0] == ns]
    assert mine == [[ns, f"cm{i}", "1"] for i in range(5)]
    services = kubectl.run("get", "svc", "--all-namespaces", "-o", "name").stdout.split()
    assert "service/kubernetes" in services

    # --chunk-size=2 over 5 objects: three requests chained by continue tokens, one table.
    chunked = kubectl.run("-n", ns, "get", "cm", "-l", "tier", "--chunk-size=2", "-v=6")
    requests = [line for line in chunked.stderr.splitlines() if "/configmaps?" in line and "limit=2" in line]
    assert len(requests) == 3, chunked.stderr
    assert sum("continue=" in line for line in requests) == 2, requests
    rows = chunked.stdout.splitlines()
    assert rows[0].split() == ["NAME", "DATA", "AGE"]
    assert [r.split()[0] for r in rows[1:]] == [f"cm{i}" for i in range(5)]
    assert jsonpath(kubectl, ns, "cm", "-l", "tier", "--chunk-size=2",
                    path="{.items[*].metadata.name}") == "cm0 cm1 cm2 cm3 cm4"


# ---------------------------------------------------------------------------------------
# 5. describe


def test_describe(kubectl, ns):
    kubectl.run("-n", ns, "apply", "-f", "-", input=STACK)

    out = kubectl.run("-n", ns, "describe", "deployment", "web").stdout
    fields = describe_fields(out)
    assert fields["Name"] == "web" and fields["Namespace"] == ns
    assert re.search(r"^Labels:\s+app=web\n\s+tier=front\n", out, re.M), out
    assert fields["Selector"] == "app=web"
    assert re.match(r"2 desired \| [02] updated \| [02] total", fields["Replicas"]), fields["Replicas"]
    assert fields["StrategyType"] == "RollingUpdate"
    assert re.search(r"^\s+nginx:\n\s+Image:\s+nginx:1\.25$", out, re.M), out
    assert re.search(r"^\s+log:\n\s+Image:\s+busybox:1\.36$", out, re.M), out

    out = kubectl.run("-n", ns, "describe", "configmap", "web-config").stdout
    fields = describe_fields(out)
    assert fields["Name"] == "web-config" and fields["Namespace"] == ns and fields["Labels"] == "app=web"
    assert re.search(r"^greeting:\n-+\nhello$", out, re.M), out

    out = kubectl.run("-n", ns, "describe", "secret", "web-secret").stdout
    assert describe_fields(out)["Type"] == "Opaque"
    assert re.search(r"^password:\s+6 bytes$", out, re.M) and "s3cret" not in out, out

    out = kubectl.run("-n", ns, "describe", "service", "web").stdout
    fields = describe_fields(out)
    assert fields["Name"] == "web" and fields["Type"] == "ClusterIP" and fields["Selector"] == "app=web"
    assert ipaddress.ip_address(fields["IP"]) in SERVICE_CIDR

    # Several objects at once, selected by label.
    out = kubectl.run("-n", ns, "describe", "cm,svc", "-l", "app=web").stdout
    assert out.count("Namespace:") == 2


def test_describe_namespace(kubectl, ns):
    kubectl.run("label", "namespace", ns, "team=blue")
    out = kubectl.run("describe", "namespace", ns).stdout
    fields = describe_fields(out)
    assert fields["Name"] == ns and fields["Status"] == "Active"
    # Labels are listed one per line under the `Labels:` heading.
    labels = out.split("Labels:", 1)[1].split("Annotations:", 1)[0].split()
    assert "team=blue" in labels and f"kubernetes.io/metadata.name={ns}" in labels


# ---------------------------------------------------------------------------------------
# 6. patch, label, annotate, scale


def test_patch(kubectl, ns):
    kubectl.run("-n", ns, "apply", "-f", "-", input=STACK)

    # Strategic merge (the default): containers merge by name, the other one is kept.
    out = kubectl.run("-n", ns, "patch", "deployment", "web", "-p",
                      '{"spec":{"template":{"spec":{"containers":[{"name":"nginx","image":"nginx:1.27"}]}}}}').stdout
    assert "deployment.apps/web patched" in out
    containers = get_json(kubectl, ns, "deploy", "web")["spec"]["template"]["spec"]["containers"]
    assert [(c["name"], c["image"]) for c in containers] == [("nginx", "nginx:1.27"), ("log", "busybox:1.36")]
    assert containers[1]["command"] == ["sh", "-c", "tail -f /dev/null"]

    # Ports merge by containerPort; $patch: delete removes one container by name.
    kubectl.run("-n", ns, "patch", "deployment", "web", "-p",
                '{"spec":{"template":{"spec":{"containers":[{"name":"nginx","ports":[{"containerPort":443}]}]}}}}')
    assert jsonpath(kubectl, ns, "deploy", "web",
                    path="{.spec.template.spec.containers[0].ports[*].containerPort}") == "80 443"
    kubectl.run("-n", ns, "patch", "deployment", "web", "--type=strategic", "-p",
                '{"spec":{"template":{"spec":{"containers":[{"name":"log","$patch":"delete"}]}}}}')
    assert jsonpath(kubectl, ns, "deploy", "web", path="{.spec.template.spec.containers[*].name}") == "nginx"

    # JSON merge patch: maps merge, null deletes a key.
    kubectl.run("-n", ns, "patch", "cm", "web-config", "--type=merge", "-p", '{"data":{"extra":"1"}}')
    assert get_json(kubectl, ns, "cm", "web-config")["data"] == {"greeting": "hello", "extra": "1"}
    kubectl.run("-n", ns, "patch", "cm", "web-config", "--type=merge", "-p", '{"data":{"greeting":null}}')
    assert get_json(kubectl, ns, "cm", "web-config")["data"] == {"extra": "1"}

    # JSON patch: add, replace, remove.
    kubectl.run("-n", ns, "patch", "deployment", "web", "--type=json", "-p", json.dumps([
        {"op": "replace", "path": "/spec/replicas", "value": 4},
        {"op": "add", "path": "/metadata/labels/patched", "value": "yes"},
        {"op": "remove", "path": "/metadata/labels/tier"},
    ]))
    deploy = get_json(kubectl, ns, "deploy", "web")
    assert deploy["spec"]["replicas"] == 4
    assert deploy["metadata"]["labels"] == {"app": "web", "patched": "yes"}


NOOP_CONFIGMAP = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: steady}\ndata: {a: '1'}\n"


@pytest.mark.parametrize("write", ["patch", "replace", "server-side-apply"])
def test_noop_write_stores_nothing(kubectl, ns, write):
    """Writing an object back unchanged is a no-op: same resourceVersion, no watch event.
    A later managedFields timestamp is not a change (upstream since 1.27), so each write
    waits for the clock to pass a second first."""
    if write == "server-side-apply":
        kubectl.run("-n", ns, "apply", "--server-side", "-f", "-", input=NOOP_CONFIGMAP)
    else:
        kubectl.run("-n", ns, "create", "-f", "-", input=NOOP_CONFIGMAP)
    before = jsonpath(kubectl, ns, "cm", "steady", path="{.metadata.resourceVersion}")

    proc = kubectl.popen("-n", ns, "get", "cm", "steady", "--watch-only", "-o", "name")
    try:
        reader = LineReader(proc)
        time.sleep(1.1)
        if write == "patch":
            out = kubectl.run("-n", ns, "patch", "cm", "steady", "--type=merge", "-p", '{"data":{"a":"1"}}').stdout
            assert "configmap/steady patched (no change)" in out, out
        elif write == "replace":
            dumped = kubectl.run("-n", ns, "get", "cm", "steady", "-o", "yaml").stdout
            kubectl.run("-n", ns, "replace", "-f", "-", input=dumped)
        else:
            kubectl.run("-n", ns, "apply", "--server-side", "-f", "-", input=NOOP_CONFIGMAP)
        assert jsonpath(kubectl, ns, "cm", "steady", path="{.metadata.resourceVersion}") == before

        # A real change afterwards is the first (and only) event the watch sees.
        kubectl.run("-n", ns, "label", "cm", "steady", "changed=yes")
        reader.wait_for(lambda line: "steady" in line)
        time.sleep(0.5)
        assert reader.lines == ["configmap/steady"]
    finally:
        stop(proc)


def test_label_and_annotate(kubectl, ns):
    kubectl.run("-n", ns, "apply", "-f", "-", input=STACK)

    def labels():
        return get_json(kubectl, ns, "deploy", "web")["metadata"]["labels"]

    assert "deployment.apps/web labeled" in kubectl.run("-n", ns, "label", "deploy", "web", "env=prod").stdout
    assert labels() == {"app": "web", "tier": "front", "env": "prod"}

    err = failed(kubectl.run("-n", ns, "label", "deploy", "web", "env=dev", check=False))
    assert "--overwrite" in err and "env" in err, err
    assert labels()["env"] == "prod"
    kubectl.run("-n", ns, "label", "deploy", "web", "env=dev", "--overwrite")
    assert labels()["env"] == "dev"

    assert "unlabeled" in kubectl.run("-n", ns, "label", "deploy", "web", "env-").stdout
    assert labels() == {"app": "web", "tier": "front"}

    # Every object carrying app=web at once.
    kubectl.run("-n", ns, "label", "svc,cm,secret", "-l", "app=web", "release=r1")
    assert kubectl.run("-n", ns, "get", "svc,cm,secret", "-l", "release=r1", "-o", "name").stdout.split() == [
        "service/web", "configmap/web-config", "secret/web-secret"]

    kubectl.run("-n", ns, "annotate", "deploy", "web", "owner=team-a", "note=first release")
    annotations = get_json(kubectl, ns, "deploy", "web")["metadata"]["annotations"]
    assert annotations["owner"] == "team-a" and annotations["note"] == "first release"
    assert "kubectl.kubernetes.io/last-applied-configuration" in annotations
    err = failed(kubectl.run("-n", ns, "annotate", "deploy", "web", "owner=team-b", check=False))
    assert "--overwrite" in err, err
    kubectl.run("-n", ns, "annotate", "deploy", "web", "owner=team-b", "--overwrite")
    kubectl.run("-n", ns, "annotate", "deploy", "web", "note-")
    annotations = get_json(kubectl, ns, "deploy", "web")["metadata"]["annotations"]
    assert annotations["owner"] == "team-b" and "note" not in annotations


REPLICASET = """\
apiVersion: apps/v1
kind: ReplicaSet
metadata: {name: front}
spec:
  replicas: 1
  selector: {matchLabels: {app: front}}
  template:
    metadata: {labels: {app: front}}
    spec:
      containers: [{name: app, image: busybox:1.36}]
"""


def test_scale(kubectl, ns):
    kubectl.run("-n", ns, "apply", "-f", "-", input=STACK + "---\n" + REPLICASET)

    assert "deployment.apps/web scaled" in kubectl.run("-n", ns, "scale", "deployment", "web", "--replicas=5").stdout
    assert jsonpath(kubectl, ns, "deploy", "web", path="{.spec.replicas}") == "5"
    wide = kubectl.run("-n", ns, "get", "deploy", "web", "--no-headers").stdout.split()
    assert wide[1] == "0/5"

    assert "replicaset.apps/front scaled" in kubectl.run("-n", ns, "scale", "rs", "front", "--replicas=3").stdout
    assert jsonpath(kubectl, ns, "rs", "front", path="{.spec.replicas}") == "3"
    rs = kubectl.run("-n", ns, "get", "rs", "front", "-o", "wide").stdout.splitlines()
    assert rs[0].split() == ["NAME", "DESIRED", "CURRENT", "READY", "AGE", "CONTAINERS", "IMAGES", "SELECTOR"]
    # No node runs pods here: the ReplicaSet makes them, none becomes ready.
    assert rs[1].split()[:4] in (["front", "3", "0", "0"], ["front", "3", "3", "0"])

    # The precondition is checked against the scale subresource.
    err = failed(kubectl.run("-n", ns, "scale", "rs", "front", "--current-replicas=2", "--replicas=4", check=False))
    assert "Expected replicas to be 2, was 3" in err, err
    kubectl.run("-n", ns, "scale", "rs", "front", "--current-replicas=3", "--replicas=0")
    assert jsonpath(kubectl, ns, "rs", "front", path="{.spec.replicas}") == "0"

    # Scaling by selector, several objects at once.
    kubectl.run("-n", ns, "scale", "deploy,rs", "--all", "--replicas=1")
    # (The Deployment's own ReplicaSet is among them; its controller keeps it in step.)
    assert jsonpath(kubectl, ns, "deploy", "web", path="{.spec.replicas}") == "1"
    assert jsonpath(kubectl, ns, "rs", "front", path="{.spec.replicas}") == "1"


# ---------------------------------------------------------------------------------------
# everyday imperative commands from the users' notes


def test_edit_set_image_and_dry_runs(kubectl, ns, monkeypatch):
    kubectl.run("-n", ns, "apply", "-f", "-", input=STACK)

    monkeypatch.setenv("KUBE_EDITOR", "sed -i s/replicas:.2/replicas:\\ 6/")
    assert "deployment.apps/web edited" in kubectl.run("-n", ns, "edit", "deployment", "web").stdout
    assert jsonpath(kubectl, ns, "deploy", "web", path="{.spec.replicas}") == "6"

    assert "image updated" in kubectl.run("-n", ns, "set", "image", "deployment/web", "log=busybox:1.37").stdout
    assert jsonpath(kubectl, ns, "deploy", "web",
                    path="{.spec.template.spec.containers[*].image}") == "nginx:1.25 busybox:1.37"

    kubectl.run("-n", ns, "rollout", "restart", "deployment/web")
    annotations = get_json(kubectl, ns, "deploy", "web")["spec"]["template"]["metadata"]["annotations"]
    assert "kubectl.kubernetes.io/restartedAt" in annotations

    kubectl.run("-n", ns, "expose", "deployment", "web", "--name=web-alt", "--port=8080", "--target-port=80")
    svc = get_json(kubectl, ns, "svc", "web-alt")["spec"]
    assert svc["selector"] == {"app": "web"} and svc["ports"][0]["port"] == 8080
    assert svc["ports"][0]["targetPort"] == 80

    # Server-side dry runs validate and report, and store nothing.
    dry = kubectl.run("-n", ns, "create", "configmap", "dry", "--from-literal=a=b", "--dry-run=server").stdout
    assert "configmap/dry created (server dry run)" in dry
    assert failed(kubectl.run("-n", ns, "get", "cm", "dry", check=False))
    dry = kubectl.run("-n", ns, "apply", "--dry-run=server", "-f", "-", input=STACK).stdout
    assert "deployment.apps/web configured (server dry run)" in dry
    assert jsonpath(kubectl, ns, "deploy", "web", path="{.spec.replicas}") == "6"

    # diff: exit 1 and a unified diff when the file differs from the live object, 0 when not.
    diff = kubectl.run("-n", ns, "diff", "-f", "-", input=STACK, check=False)
    assert diff.returncode == 1, diff.stderr
    assert re.search(r"^-  replicas: 6$", diff.stdout, re.M) and re.search(r"^\+  replicas: 2$", diff.stdout, re.M)
    kubectl.run("-n", ns, "apply", "-f", "-", input=STACK)
    assert kubectl.run("-n", ns, "diff", "-f", "-", input=STACK, check=False).returncode == 0


def test_run_pod_and_get_wide(kubectl, ns):
    assert "pod/box created" in kubectl.run("-n", ns, "run", "box", "--image=busybox:1.36", "--labels=app=box",
                                            "--", "sleep", "3600").stdout
    rows = kubectl.run("-n", ns, "get", "pods", "-o", "wide").stdout.splitlines()
    assert rows[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE", "IP", "NODE", "NOMINATED",
                               "NODE", "READINESS", "GATES"]
    assert rows[1].split()[:4] == ["box", "0/1", "Pending", "0"]
    pod = get_json(kubectl, ns, "pod", "box")
    assert pod["spec"]["containers"][0]["args"] == ["sleep", "3600"]
    assert pod["status"]["phase"] == "Pending"
    assert kubectl.run("-n", ns, "get", "pods", "--field-selector", "status.phase=Pending",
                       "-o", "name").stdout.split() == ["pod/box"]
    assert kubectl.run("-n", ns, "get", "pods", "--field-selector", "status.phase=Running",
                       "-o", "name").stdout == ""
    out = kubectl.run("-n", ns, "describe", "pod", "box").stdout
    fields = describe_fields(out)
    assert fields["Name"] == "box" and fields["Namespace"] == ns and fields["Status"] == "Pending"
    kubectl.run("-n", ns, "delete", "pod", "box", "--grace-period=0", "--force")
    assert failed(kubectl.run("-n", ns, "get", "pod", "box", check=False))


# ---------------------------------------------------------------------------------------
# 7. delete


def test_delete(kubectl, ns):
    kubectl.run("-n", ns, "apply", "-f", "-", input=STACK)
    out = kubectl.run("-n", ns, "delete", "-f", "-", input=STACK).stdout
    for line in ['deployment.apps "web" deleted', 'service "web" deleted', 'configmap "web-config" deleted',
                 'secret "web-secret" deleted']:
        assert line in out, out
    gone = kubectl.run("-n", ns, "get", "-f", "-", input=STACK, check=False)
    assert failed(gone).count("NotFound") == 4, gone.stderr
    assert kubectl.run("-n", ns, "delete", "-f", "-", "--ignore-not-found", input=STACK).stdout == ""

    make_configmaps(kubectl, ns)
    out = kubectl.run("-n", ns, "delete", "cm", "-l", "tier in (a,c)").stdout
    assert sorted(out.splitlines()) == ['configmap "cm0" deleted', 'configmap "cm2" deleted',
                                        'configmap "cm3" deleted']
    assert kubectl.run("-n", ns, "get", "cm", "-l", "tier", "-o", "name").stdout.split() == [
        "configmap/cm1", "configmap/cm4"]
    out = kubectl.run("-n", ns, "delete", "cm", "--all").stdout
    assert 'configmap "cm1" deleted' in out and 'configmap "cm4" deleted' in out

    # Deleting the namespace removes it and everything in it.
    kubectl.run("-n", ns, "apply", "-f", "-", input=STACK)
    assert f'namespace "{ns}" deleted' in kubectl.run("delete", "namespace", ns, "--wait=false").stdout
    deadline = time.time() + 30
    while True:
        got = kubectl.run("get", "namespace", ns, check=False)
        if got.returncode != 0:
            assert "NotFound" in got.stderr, got.stderr
            break
        assert time.time() < deadline, f"namespace {ns} still there:\n{got.stdout}"
        time.sleep(0.5)
    err = failed(kubectl.run("-n", ns, "create", "configmap", "late", check=False))
    assert f'namespaces "{ns}" not found' in err, err

    kubectl.run("create", "namespace", ns)
    assert kubectl.run("-n", ns, "get", "deploy,svc,secret", "-o", "name").stdout == ""


# ---------------------------------------------------------------------------------------
# 8. watch


@pytest.mark.parametrize("mode", ["events", "plain"])
def test_get_watch(kubectl, ns, mode):
    kubectl.run("-n", ns, "create", "configmap", "before", "--from-literal=a=0")
    flags = ["--output-watch-events"] if mode == "events" else []
    proc = kubectl.popen("-n", ns, "get", "cm", "--watch", *flags)
    try:
        reader = LineReader(proc)
        header = reader.wait_for(lambda line: "NAME" in line)
        expected = ["EVENT", "NAME", "DATA", "AGE"] if mode == "events" else ["NAME", "DATA", "AGE"]
        assert header.split() == expected
        first = reader.wait_for(lambda line: "before" in line)
        prefix = ["ADDED"] if mode == "events" else []
        assert first.split()[:len(prefix) + 2] == prefix + ["before", "1"]

        kubectl.run("-n", ns, "create", "configmap", "watched", "--from-literal=a=1")
        added = reader.wait_for(lambda line: "watched" in line)
        kubectl.run("-n", ns, "patch", "cm", "watched", "--type=merge", "-p", '{"data":{"b":"2"}}')
        modified = reader.wait_for(lambda line: "watched" in line)
        kubectl.run("-n", ns, "delete", "cm", "watched")
        deleted = reader.wait_for(lambda line: "watched" in line)

        if mode == "events":
            assert added.split()[:3] == ["ADDED", "watched", "1"]
            assert modified.split()[:3] == ["MODIFIED", "watched", "2"]
            assert deleted.split()[:3] == ["DELETED", "watched", "2"]
        else:
            assert [line.split()[:2] for line in (added, modified, deleted)] == [
                ["watched", "1"], ["watched", "2"], ["watched", "2"]]
        assert proc.poll() is None, proc.stderr.read()
    finally:
        stop(proc)


def test_get_watch_single_object_json(kubectl, ns):
    kubectl.run("-n", ns, "create", "configmap", "one", "--from-literal=v=0")
    proc = kubectl.popen("-n", ns, "get", "cm", "one", "--watch", "-o", "json", "--output-watch-events")
    try:
        reader = LineReader(proc)
        kubectl.run("-n", ns, "create", "configmap", "other")
        kubectl.run("-n", ns, "patch", "cm", "one", "--type=merge", "-p", '{"data":{"v":"1"}}')
        kubectl.run("-n", ns, "delete", "cm", "one")
        reader.wait_for(lambda line: '"DELETED"' in line)
        # One JSON watch event per line, for the named object only.
        events = [json.loads(line) for line in reader.lines]
        assert [(e["type"], e["object"]["metadata"]["name"], e["object"].get("data")) for e in events] == [
            ("ADDED", "one", {"v": "0"}), ("MODIFIED", "one", {"v": "1"}), ("DELETED", "one", {"v": "1"})]
        assert all(e["object"]["kind"] == "ConfigMap" for e in events)
    finally:
        stop(proc)


# ---------------------------------------------------------------------------------------
# 9. errors


def test_error_not_found(kubectl, ns):
    err = failed(kubectl.run("-n", ns, "get", "deployment", "nope", check=False))
    assert 'Error from server (NotFound): deployments.apps "nope" not found' in err, err
    err = failed(kubectl.run("-n", ns, "get", "cm", "nope", "-o", "yaml", check=False))
    assert 'configmaps "nope" not found' in err, err
    err = failed(kubectl.run("-n", ns, "delete", "secret", "nope", check=False))
    assert 'Error from server (NotFound): secrets "nope" not found' in err, err
    err = failed(kubectl.run("-n", ns, "describe", "deployment", "nope", check=False))
    assert 'deployments.apps "nope" not found' in err, err
    err = failed(kubectl.run("-n", ns + "-missing", "create", "configmap", "x", check=False))
    assert f'namespaces "{ns}-missing" not found' in err, err
    err = failed(kubectl.run("-n", ns, "get", "flibbertigibbets", check=False))
    assert 'the server doesn\'t have a resource type "flibbertigibbets"' in err, err


def test_error_invalid(kubectl, ns):
    err = failed(kubectl.run("-n", ns, "create", "configmap", "Bad_Name", check=False))
    assert 'ConfigMap "Bad_Name" is invalid' in err and 'metadata.name: Invalid value: "Bad_Name"' in err, err
    assert "RFC 1123" in err, err

    manifest = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: Bad_Name}\n"
    err = failed(kubectl.run("-n", ns, "apply", "-f", "-", input=manifest, check=False))
    assert 'The ConfigMap "Bad_Name" is invalid' in err, err

    mismatch = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: mismatch}
spec:
  selector: {matchLabels: {app: a}}
  template:
    metadata: {labels: {app: b}}
    spec: {containers: [{name: c, image: busybox:1.36}]}
"""
    err = failed(kubectl.run("-n", ns, "apply", "-f", "-", input=mismatch, check=False))
    assert 'The Deployment "mismatch" is invalid' in err and "`selector` does not match template `labels`" in err

    err = failed(kubectl.run("-n", ns, "create", "-f", "-", check=False,
                             input="apiVersion: v1\nkind: Service\nmetadata: {name: s}\n"
                                   "spec: {clusterIP: 10.99.0.5, ports: [{port: 80}]}\n"))
    assert 'The Service "s" is invalid' in err and "spec.clusterIPs[0]" in err, err

    kubectl.run("-n", ns, "apply", "-f", "-", input=STACK)
    new_selector = '{"spec":{"selector":{"matchLabels":{"app":"other"}},"template":{"metadata":{"labels":{"app":"other"}}}}}'
    err = failed(kubectl.run("-n", ns, "patch", "deploy", "web", "--type=merge", "-p", new_selector, check=False))
    assert "spec.selector" in err and "field is immutable" in err, err
    err = failed(kubectl.run("-n", ns, "scale", "deploy", "web", "--replicas=-1", check=False))
    assert "replicas" in err, err


def test_error_unknown_field_strict(kubectl, ns):
    typo = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: typo}\ndatta: {a: b}\n"
    err = failed(kubectl.run("-n", ns, "apply", "--validate=strict", "-f", "-", input=typo, check=False))
    assert 'unknown field "datta"' in err, err
    assert failed(kubectl.run("-n", ns, "get", "cm", "typo", check=False))

    nested = STACK.split("---")[0].replace("image: nginx:1.25", "image: nginx:1.25\n        imagePullPolice: Always")
    err = failed(kubectl.run("-n", ns, "create", "--validate=strict", "-f", "-", input=nested, check=False))
    assert 'unknown field "spec.template.spec.containers[0].imagePullPolice"' in err, err

    # --validate=warn creates the object and prints the unknown field as a warning.
    warned = kubectl.run("-n", ns, "apply", "--validate=warn", "-f", "-", input=typo)
    assert "configmap/typo created" in warned.stdout and "datta" in warned.stderr, warned.stderr


def test_error_already_exists(kubectl, ns):
    kubectl.run("-n", ns, "create", "configmap", "twice")
    err = failed(kubectl.run("-n", ns, "create", "configmap", "twice", check=False))
    assert 'configmaps "twice" already exists' in err, err
    err = failed(kubectl.run("-n", ns, "create", "-f", "-", check=False,
                             input="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: twice}\n"))
    assert 'Error from server (AlreadyExists): error when creating "STDIN": configmaps "twice" already exists' in err
    err = failed(kubectl.run("create", "namespace", ns, check=False))
    assert f'namespaces "{ns}" already exists' in err, err


def test_error_malformed_selectors(kubectl, ns):
    make_configmaps(kubectl, ns)
    # Configmaps support only metadata.name and metadata.namespace as field selectors.
    err = failed(kubectl.run("-n", ns, "get", "cm", "--field-selector", "data.index=1", check=False))
    assert "BadRequest" in err and '"data.index" is not a known field selector' in err, err
    err = failed(kubectl.run("-n", ns, "get", "cm", "-l", "tier in a", check=False))
    assert "BadRequest" in err and "unable to parse requirement" in err, err
    err = failed(kubectl.run("-n", ns, "get", "cm", "-l", "tier=a=b", check=False))
    assert "BadRequest" in err, err


# ---------------------------------------------------------------------------------------
# 10. discovery, explain, version


def test_explain_api_resources_version(kubectl):
    out = kubectl.run("explain", "deployment.spec.replicas").stdout
    assert re.search(r"^KIND:\s+Deployment$", out, re.M) and re.search(r"^VERSION:\s+v1$", out, re.M), out
    assert re.search(r"^FIELD:\s+replicas <integer>$", out, re.M), out
    assert "Number of desired pods" in out
    out = kubectl.run("explain", "pods.spec.containers.image").stdout
    assert re.search(r"^FIELD:\s+image <string>$", out, re.M), out
    out = kubectl.run("explain", "svc", "--recursive").stdout
    assert re.search(r"^\s+clusterIP\s+<string>$", out, re.M), out

    resources = kubectl.run("api-resources").stdout.splitlines()
    assert resources[0].split() == ["NAME", "SHORTNAMES", "APIVERSION", "NAMESPACED", "KIND"]
    rows = {line.split()[0]: line.split() for line in resources[1:]}
    assert rows["deployments"] == ["deployments", "deploy", "apps/v1", "true", "Deployment"]
    assert rows["configmaps"] == ["configmaps", "cm", "v1", "true", "ConfigMap"]
    assert rows["namespaces"] == ["namespaces", "ns", "v1", "false", "Namespace"]
    assert rows["cronjobs"] == ["cronjobs", "cj", "batch/v1", "true", "CronJob"]
    assert rows["ingresses"] == ["ingresses", "ing", "networking.k8s.io/v1", "true", "Ingress"]
    wide = {line.split()[0]: line.split() for line in kubectl.run("api-resources", "-o", "wide").stdout.splitlines()}
    assert set(wide["deployments"][5].split(",")) >= {"create", "delete", "get", "list", "patch", "update", "watch"}
    assert wide["deployments"][6] == "all"
    apps = kubectl.run("api-resources", "--api-group=apps", "-o", "name").stdout.split()
    assert "deployments.apps" in apps and "replicasets.apps" in apps

    version = kubectl.run("version", "-o", "json").stdout
    server = json.loads(version)["serverVersion"]
    assert server["major"] == "1" and server["gitVersion"].startswith(f"v1.{server['minor']}.")
    plain = kubectl.run("version").stdout
    assert re.search(r"Server Version: .*v1\.\d+\.\d+", plain), plain
