"""Compatibility with the real kubectl (the oldest and newest supported, 1.27 and 1.33)
through the workflows of the users' notes: apply of a multi-document file, get in every
output, describe, patch, scale, label, annotate, delete, get -w, explain, and the errors
users see when they get something wrong."""
import json
import threading
import time

import pytest

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
metadata: {name: web}
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
metadata: {name: web-secret}
stringData: {password: s3cret}
"""


@pytest.fixture
def ns(kubectl, request):
    """A namespace for one test and one kubectl version, deleted afterwards."""
    name = f"{request.node.originalname.replace('_', '-')[5:]}-{kubectl.bin.rsplit('.', 1)[-1]}"[:63]
    kubectl.run("create", "namespace", name)
    yield name
    kubectl.run("delete", "namespace", name, "--wait=false", check=False)


def test_apply_multi_document_then_update(kubectl, ns):
    out = kubectl.run("-n", ns, "apply", "-f", "-", input=STACK).stdout
    for line in ["deployment.apps/web created", "service/web created", "configmap/web-config created",
                 "secret/web-secret created"]:
        assert line in out, out
    again = kubectl.run("-n", ns, "apply", "-f", "-", input=STACK).stdout
    assert "deployment.apps/web unchanged" in again, again

    changed = STACK.replace("replicas: 2", "replicas: 3").replace("nginx:1.25", "nginx:1.27")
    assert "deployment.apps/web configured" in kubectl.run("-n", ns, "apply", "-f", "-", input=changed).stdout
    spec = json.loads(kubectl.run("-n", ns, "get", "deploy", "web", "-o", "json").stdout)["spec"]
    assert spec["replicas"] == 3
    assert [c["image"] for c in spec["template"]["spec"]["containers"]] == ["nginx:1.27", "busybox:1.36"]

    wide = kubectl.run("-n", ns, "get", "deploy", "-o", "wide").stdout.splitlines()
    assert wide[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE", "CONTAINERS", "IMAGES", "SELECTOR"]
    assert wide[1].split()[:2] == ["web", "0/3"]
    svc = kubectl.run("-n", ns, "get", "svc", "web").stdout.splitlines()
    assert svc[0].split()[:4] == ["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP"]
    assert svc[1].split()[2].startswith("10.43.")
    secret = json.loads(kubectl.run("-n", ns, "get", "secret", "web-secret", "-o", "json").stdout)
    assert secret["data"] == {"password": "czNjcmV0"} and "stringData" not in secret

    out = kubectl.run("-n", ns, "delete", "-f", "-", input=STACK).stdout
    assert 'deployment.apps "web" deleted' in out and 'secret "web-secret" deleted' in out


def test_server_side_apply_and_conflicts(kubectl, ns):
    cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: owned}\ndata: {key: one}\n"
    kubectl.run("-n", ns, "apply", "--server-side", "--field-manager=alice", "-f", "-", input=cm)
    taken = kubectl.run("-n", ns, "apply", "--server-side", "--field-manager=bob", "-f", "-",
                        input=cm.replace("one", "two"), check=False)
    assert taken.returncode != 0 and "conflict" in taken.stderr.lower(), taken.stderr
    kubectl.run("-n", ns, "apply", "--server-side", "--field-manager=bob", "--force-conflicts", "-f", "-",
                input=cm.replace("one", "two"))
    obj = json.loads(kubectl.run("-n", ns, "get", "cm", "owned", "-o", "json", "--show-managed-fields").stdout)
    assert obj["data"]["key"] == "two"
    assert "bob" in [m["manager"] for m in obj["metadata"]["managedFields"]]


def test_typed_generators(kubectl, ns):
    kubectl.run("-n", ns, "create", "deployment", "gen", "--image=nginx:1.25", "--replicas=2")
    kubectl.run("-n", ns, "create", "configmap", "gen", "--from-literal=a=b")
    kubectl.run("-n", ns, "create", "secret", "generic", "gen", "--from-literal=pw=x")
    kubectl.run("-n", ns, "create", "service", "clusterip", "gen", "--tcp=80:8080")
    kubectl.run("-n", ns, "create", "job", "gen", "--image=busybox:1.36", "--", "echo", "hi")
    kubectl.run("-n", ns, "create", "cronjob", "gen", "--image=busybox:1.36", "--schedule=*/5 * * * *")
    deploy = json.loads(kubectl.run("-n", ns, "get", "deploy", "gen", "-o", "json").stdout)
    assert deploy["spec"]["replicas"] == 2
    assert deploy["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": "25%", "maxUnavailable": "25%"}
    assert deploy["spec"]["template"]["spec"]["containers"][0]["image"] == "nginx:1.25"
    assert kubectl.run("-n", ns, "get", "cm", "gen", "-o", "jsonpath={.data.a}").stdout == "b"
    assert kubectl.run("-n", ns, "get", "svc", "gen", "-o", "jsonpath={.spec.ports[0].targetPort}").stdout == "8080"
    assert kubectl.run("-n", ns, "get", "cronjob", "gen", "-o", "jsonpath={.spec.schedule}").stdout == "*/5 * * * *"


def test_get_outputs_and_selectors(kubectl, ns):
    for i, tier in enumerate(["a", "b", "c", "a", "b"]):
        kubectl.run("-n", ns, "create", "-f", "-",
                    input=f"apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: cm{i}, labels: {{tier: {tier}}}}}\n")
    names = lambda *args: kubectl.run("-n", ns, "get", "cm", *args, "-o", "name").stdout.split()
    assert names("-l", "tier=a") == ["configmap/cm0", "configmap/cm3"]
    assert names("-l", "tier in (a,b)") == ["configmap/cm0", "configmap/cm1", "configmap/cm3", "configmap/cm4"]
    assert names("-l", "tier!=a,tier") == ["configmap/cm1", "configmap/cm2", "configmap/cm4"]
    assert names("-l", "!tier") == []
    assert names("--field-selector", "metadata.name=cm2") == ["configmap/cm2"]
    assert len([n for n in names("--chunk-size=2") if n.startswith("configmap/cm")]) == 5
    jp = kubectl.run("-n", ns, "get", "cm", "-l", "tier", "-o", "jsonpath={.items[*].metadata.name}").stdout
    assert jp == "cm0 cm1 cm2 cm3 cm4"
    yaml_out = kubectl.run("-n", ns, "get", "cm", "cm1", "-o", "yaml").stdout
    assert "name: cm1" in yaml_out and "tier: b" in yaml_out
    labels = kubectl.run("-n", ns, "get", "cm", "cm1", "--show-labels").stdout
    assert "tier=b" in labels
    everywhere = kubectl.run("get", "cm", "-A").stdout.splitlines()
    assert everywhere[0].split()[:2] == ["NAMESPACE", "NAME"]
    assert any(line.split()[:2] == [ns, "cm4"] for line in everywhere)

    assert 'configmap "cm3" deleted' in kubectl.run("-n", ns, "delete", "cm", "-l", "tier=a").stdout
    assert names("-l", "tier=a") == []


def test_describe_patch_scale_label(kubectl, ns):
    kubectl.run("-n", ns, "apply", "-f", "-", input=STACK)
    described = kubectl.run("-n", ns, "describe", "deployment", "web").stdout
    assert "Name:" in described and "web" in described and ns in described and "app=web" in described
    assert "greeting" in kubectl.run("-n", ns, "describe", "configmap", "web-config").stdout

    kubectl.run("-n", ns, "patch", "deployment", "web", "-p",
                '{"spec":{"template":{"spec":{"containers":[{"name":"nginx","image":"nginx:1.27"}]}}}}')
    images = kubectl.run("-n", ns, "get", "deploy", "web", "-o",
                         "jsonpath={.spec.template.spec.containers[*].image}").stdout
    assert images == "nginx:1.27 busybox:1.36"
    kubectl.run("-n", ns, "patch", "cm", "web-config", "--type=merge", "-p", '{"data":{"extra":"1"}}')
    kubectl.run("-n", ns, "patch", "cm", "web-config", "--type=json", "-p",
                '[{"op":"remove","path":"/data/greeting"}]')
    assert json.loads(kubectl.run("-n", ns, "get", "cm", "web-config", "-o", "jsonpath={.data}").stdout) == {"extra": "1"}

    assert "scaled" in kubectl.run("-n", ns, "scale", "deployment", "web", "--replicas=5").stdout
    assert kubectl.run("-n", ns, "get", "deploy", "web", "-o", "jsonpath={.spec.replicas}").stdout == "5"

    kubectl.run("-n", ns, "label", "deploy", "web", "env=prod")
    refused = kubectl.run("-n", ns, "label", "deploy", "web", "env=dev", check=False)
    assert refused.returncode != 0 and "overwrite" in refused.stderr
    kubectl.run("-n", ns, "label", "deploy", "web", "env=dev", "--overwrite")
    kubectl.run("-n", ns, "annotate", "deploy", "web", "owner=team-a")
    meta = json.loads(kubectl.run("-n", ns, "get", "deploy", "web", "-o", "json").stdout)["metadata"]
    assert meta["labels"]["env"] == "dev" and meta["annotations"]["owner"] == "team-a"
    kubectl.run("-n", ns, "label", "deploy", "web", "env-")
    assert "env" not in json.loads(kubectl.run("-n", ns, "get", "deploy", "web", "-o", "json").stdout)["metadata"]["labels"]


def test_get_watch_streams_changes(kubectl, ns):
    proc = kubectl.popen("-n", ns, "get", "cm", "-w", "--output-watch-events")
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        time.sleep(1)
        kubectl.run("-n", ns, "create", "configmap", "watched", "--from-literal=a=1")
        kubectl.run("-n", ns, "label", "cm", "watched", "seen=yes")
        kubectl.run("-n", ns, "delete", "cm", "watched")
        deadline = time.time() + 15
        while time.time() < deadline and not any("DELETED" in line and "watched" in line for line in lines):
            time.sleep(0.1)
        events = [line.split()[0] for line in lines if "watched" in line]
        assert events[:1] == ["ADDED"] and "MODIFIED" in events and "DELETED" in events, lines
    finally:
        proc.kill()
        proc.wait()


def test_errors_are_clear(kubectl, ns):
    missing = kubectl.run("-n", ns, "get", "deploy", "nope", check=False)
    assert missing.returncode != 0 and "NotFound" in missing.stderr and '"nope" not found' in missing.stderr
    bad_name = kubectl.run("-n", ns, "create", "configmap", "Bad_Name", check=False)
    assert bad_name.returncode != 0 and "Invalid" in bad_name.stderr and "RFC 1123" in bad_name.stderr
    unknown = kubectl.run("-n", ns, "apply", "--validate=strict", "-f", "-", check=False,
                          input="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: typo}\ndatta: {a: b}\n")
    assert unknown.returncode != 0 and "datta" in unknown.stderr
    kubectl.run("-n", ns, "create", "configmap", "twice")
    dup = kubectl.run("-n", ns, "create", "configmap", "twice", check=False)
    assert dup.returncode != 0 and "already exists" in dup.stderr
    immutable = kubectl.run("-n", ns, "apply", "-f", "-", input=STACK)
    assert immutable.returncode == 0
    changed = kubectl.run("-n", ns, "patch", "deploy", "web", "--type=merge", "-p",
                          '{"spec":{"selector":{"matchLabels":{"app":"other"}},"template":{"metadata":{"labels":{"app":"other"}}}}}',
                          check=False)
    assert changed.returncode != 0 and "immutable" in changed.stderr


def test_discovery_explain_and_namespace_deletion(kubectl):
    resources = kubectl.run("api-resources").stdout
    deploy_line = next(line for line in resources.splitlines() if line.startswith("deployments "))
    assert "deploy" in deploy_line.split() and "apps/v1" in deploy_line
    assert "replicas" in kubectl.run("explain", "deployment.spec.replicas").stdout.lower()
    assert "Server Version" in kubectl.run("version").stdout

    name = f"doomed-{kubectl.bin.rsplit('.', 1)[-1].replace('.', '-')}"
    kubectl.run("create", "namespace", name)
    kubectl.run("-n", name, "create", "configmap", "inside")
    kubectl.run("delete", "namespace", name, "--timeout=60s")
    gone = kubectl.run("get", "namespace", name, check=False)
    assert gone.returncode != 0 and "NotFound" in gone.stderr
