"""The built-in client: `bramble kubectl` and the same binary run through a link named
`kubectl` (multi-call), driving a real server through the everyday verbs."""
import os
import subprocess
import threading
import time

import pytest

from conftest import BIN

MANIFEST = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: front, labels: {app: front}}
spec:
  replicas: 2
  selector: {matchLabels: {app: front}}
  template:
    metadata: {labels: {app: front}}
    spec:
      containers:
      - {name: web, image: nginx:1.25}
      - {name: side, image: busybox:1.36, command: [sleep, "3600"]}
---
apiVersion: v1
kind: Service
metadata: {name: front}
spec:
  selector: {app: front}
  ports: [{port: 80}]
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, labels: {app: front}}
data: {mode: fast}
"""


class Builtin:
    """Runs the built-in kubectl, either as `bramble kubectl` or through a `kubectl` link."""

    def __init__(self, server, argv0):
        self.server = server
        self.argv = [BIN, "kubectl"] if argv0 == "subcommand" else [argv0]

    def run(self, *args, input=None, check=True, env=None):
        full_env = dict(os.environ, KUBECONFIG=self.server.kubeconfig, **(env or {}))
        p = subprocess.run([*self.argv, *args], input=input, capture_output=True, text=True, timeout=60, env=full_env)
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        return p


@pytest.fixture(params=["subcommand", "link"])
def k(request, server):
    argv0 = request.param
    if argv0 == "link":
        link_dir = os.path.join(server.dir, "bin")
        os.makedirs(link_dir, exist_ok=True)
        argv0 = os.path.join(link_dir, "kubectl")
        if not os.path.exists(argv0):
            os.symlink(BIN, argv0)
    return Builtin(server, argv0)


@pytest.fixture
def ns(k, request):
    name = f"builtin-{request.node.callspec.id}".lower().replace("_", "-")[:60]
    k.run("create", "namespace", name)
    yield name
    # A namespace is gone once the namespace controller has emptied it: wait for that.
    k.run("delete", "namespace", name, check=False)


def test_apply_get_and_update(k, ns):
    out = k.run("-n", ns, "apply", "-f", "-", input=MANIFEST).stdout
    assert "deployment.apps/front created" in out
    assert "service/front created" in out
    assert "unchanged" in k.run("-n", ns, "apply", "-f", "-", input=MANIFEST).stdout
    changed = MANIFEST.replace("replicas: 2", "replicas: 4")
    assert "deployment.apps/front configured" in k.run("-n", ns, "apply", "-f", "-", input=changed).stdout

    table = k.run("-n", ns, "get", "deploy", "-o", "wide").stdout.splitlines()
    assert table[0].split() == ["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE", "CONTAINERS", "IMAGES", "SELECTOR"]
    assert table[1].split()[0] == "front" and table[1].split()[1] == "0/4"
    assert k.run("-n", ns, "get", "deploy", "front", "-o", "jsonpath={.spec.replicas}").stdout == "4"
    svc_ip = k.run("-n", ns, "get", "svc", "front", "-o", "jsonpath={.spec.clusterIP}").stdout
    assert svc_ip.startswith("10.43.")
    names = k.run("-n", ns, "get", "all", "-o", "name").stdout.split()
    assert "deployment.apps/front" in names and "service/front" in names
    assert k.run("-n", ns, "get", "cm", "-l", "app=front", "-o", "name").stdout.split() == ["configmap/settings"]
    assert "settings" in k.run("get", "cm", "-A").stdout
    yaml_out = k.run("-n", ns, "get", "cm", "settings", "-o", "yaml").stdout
    assert "mode: fast" in yaml_out and "kind: ConfigMap" in yaml_out


def test_describe_patch_label_scale_edit(k, ns):
    k.run("-n", ns, "apply", "-f", "-", input=MANIFEST)
    text = k.run("-n", ns, "describe", "deployment", "front").stdout
    assert "Name:         front" in text and f"Namespace:    {ns}" in text and "app=front" in text

    k.run("-n", ns, "patch", "deploy", "front", "-p",
          '{"spec":{"template":{"spec":{"containers":[{"name":"web","image":"nginx:1.27"}]}}}}')
    images = k.run("-n", ns, "get", "deploy/front", "-o", "jsonpath={.spec.template.spec.containers[*].image}").stdout
    assert images == "nginx:1.27 busybox:1.36"
    k.run("-n", ns, "patch", "cm", "settings", "--type", "json", "-p", '[{"op":"add","path":"/data/x","value":"1"}]')
    k.run("-n", ns, "patch", "cm", "settings", "--type", "merge", "-p", '{"data":{"mode":null}}')
    assert k.run("-n", ns, "get", "cm", "settings", "-o", "jsonpath={.data}").stdout == '{"x":"1"}'

    k.run("-n", ns, "label", "deploy", "front", "tier=web")
    refused = k.run("-n", ns, "label", "deploy", "front", "tier=db", check=False)
    assert refused.returncode != 0 and "--overwrite is false" in refused.stderr
    k.run("-n", ns, "label", "deploy", "front", "tier=db", "--overwrite")
    k.run("-n", ns, "annotate", "deploy/front", "note=hi")
    assert k.run("-n", ns, "get", "deploy", "front", "-o", "jsonpath={.metadata.labels.tier}").stdout == "db"
    k.run("-n", ns, "label", "deploy", "front", "tier-")
    assert "tier" not in k.run("-n", ns, "get", "deploy", "front", "-o", "jsonpath={.metadata.labels}").stdout

    assert "scaled" in k.run("-n", ns, "scale", "deploy", "front", "--replicas=5").stdout
    assert k.run("-n", ns, "get", "deploy", "front", "-o", "jsonpath={.spec.replicas}").stdout == "5"

    editor = "sed -i 's/replicas: 5/replicas: 7/'"
    assert "edited" in k.run("-n", ns, "edit", "deploy", "front", env={"KUBE_EDITOR": editor}).stdout
    assert k.run("-n", ns, "get", "deploy", "front", "-o", "jsonpath={.spec.replicas}").stdout == "7"


def test_watch_sees_changes(k, ns):
    proc = subprocess.Popen([*k.argv, "-n", ns, "get", "cm", "-w", "-o", "name"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ, KUBECONFIG=k.server.kubeconfig))
    lines = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    reader.start()
    try:
        time.sleep(0.5)
        k.run("-n", ns, "create", "-f", "-", input="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: watched}\n")
        k.run("-n", ns, "label", "cm", "watched", "a=b")
        deadline = time.time() + 10
        while time.time() < deadline and sum("configmap/watched" in line for line in lines) < 2:
            time.sleep(0.1)
        assert sum("configmap/watched" in line for line in lines) >= 2, lines
    finally:
        proc.kill()
        proc.wait()


def test_errors_and_delete(k, ns):
    missing = k.run("-n", ns, "get", "cm", "nope", check=False)
    assert missing.returncode == 1 and "NotFound" in missing.stderr
    unknown = k.run("get", "gizmos", check=False)
    assert unknown.returncode == 1 and "doesn't have a resource type" in unknown.stderr
    k.run("-n", ns, "apply", "-f", "-", input=MANIFEST)
    again = k.run("-n", ns, "create", "-f", "-", input=MANIFEST, check=False)
    assert again.returncode == 1 and "AlreadyExists" in again.stderr
    bad = k.run("-n", ns, "create", "-f", "-", input="apiVersion: v1\nkind: ConfigMap\nmetadata: {name: Bad_Name}\n",
                check=False)
    assert bad.returncode == 1 and "Invalid" in bad.stderr

    out = k.run("-n", ns, "delete", "-f", "-", input=MANIFEST).stdout
    assert 'deployment.apps "front" deleted' in out and 'configmap "settings" deleted' in out
    # Every namespace keeps its kube-root-ca.crt ConfigMap, as upstream.
    assert "No resources found" in k.run("-n", ns, "get", "deploy,svc").stderr
    assert "settings" not in k.run("-n", ns, "get", "cm").stdout
