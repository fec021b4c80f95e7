"""The built-in client: `bramble kubectl` and the same binary run through a link named
`kubectl` (multi-call), driving a real server through the everyday verbs."""
import os
import subprocess
import threading
import time

import pytest

from conftest import BIN, wait_for

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


# The streaming and operations verbs against a node that runs pods: logs, exec,
# port-forward, rollout, top, cordon/drain and wait. One node for the lot; every test works
# in its own namespace, and the drain test, which cordons the node, comes last.

NODE = "builtin-1"
IMAGE = "bramble.test/busybox:1"


class NodeKubectl:
    """`bramble kubectl` against a server with an agent, in one namespace."""

    def __init__(self, server, namespace):
        self.server = server
        self.ns = namespace
        self.env = dict(os.environ, KUBECONFIG=server.kubeconfig)

    def run(self, *args, input=None, check=True, timeout=90):
        p = subprocess.run([BIN, "kubectl", "-n", self.ns, *args], input=input, capture_output=True, text=True,
                           timeout=timeout, env=self.env)
        if check and p.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}\n"
                                 f"{self.server.log()}")
        return p

    def popen(self, *args, **kw):
        return subprocess.Popen([BIN, "kubectl", "-n", self.ns, *args], env=self.env, text=True, **kw)

    def apply(self, text):
        return self.run("apply", "-f", "-", input=text)


@pytest.fixture(scope="module")
def node():
    from conftest import node_with_busybox
    s = node_with_busybox(NODE)
    try:
        # The node registers a moment after the server is ready: wait for it to exist, then
        # to be Ready.
        for condition in ["create", "condition=Ready"]:
            p = subprocess.run([BIN, "kubectl", "wait", f"--for={condition}", f"node/{NODE}", "--timeout=60s"],
                               capture_output=True, text=True, timeout=90, env=dict(os.environ, KUBECONFIG=s.kubeconfig))
            assert p.returncode == 0 and p.stdout == f"node/{NODE} condition met\n", p.stdout + p.stderr + s.log()
        yield s
    finally:
        s.cleanup()


@pytest.fixture
def kn(node, request):
    name = "bk-" + request.node.name.removeprefix("test_").replace("_", "-")[:50]
    k = NodeKubectl(node, name)
    k.run("create", "namespace", name)
    yield k
    k.run("delete", "namespace", name, "--wait=false", check=False)


def pod_yaml(name, command, labels=None, restart="Always", extra=""):
    labels = labels or {"app": name}
    label_text = ", ".join(f"{k}: {v}" for k, v in labels.items())
    return f"""\
apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{{label_text}}}}}
spec:
  nodeName: {NODE}
  restartPolicy: {restart}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {IMAGE}
    imagePullPolicy: Never
    command: [sh, -c, '{command}']
{extra}"""


def deployment_yaml(name, replicas=2, version="1"):
    return f"""\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}}}
spec:
  replicas: {replicas}
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: web
        image: {IMAGE}
        imagePullPolicy: Never
        command: [sh, -c, 'echo web-$VERSION > /www/index.html; echo started $VERSION; httpd -f -p 8080 -h /www']
        env: [{{name: VERSION, value: "{version}"}}]
"""


def test_logs_follow_previous_tail_timestamps_and_workloads(kn):
    import re
    kn.apply(pod_yaml("counter", "for i in 1 2 3 4 5 6; do echo tick $i; sleep 0.5; done; echo bye; exit 1"))
    kn.run("wait", "--for=jsonpath={.status.phase}=Running", "pod/counter", "--timeout=60s")
    # -f streams: the first line arrives while the container still runs, and the command
    # ends by itself when the container does.
    proc = kn.popen("logs", "-f", "counter", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        first = proc.stdout.readline()
        assert first.startswith("tick "), first
        assert proc.poll() is None, "logs -f ended before the container did"
        rest = proc.stdout.read()
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    finally:
        proc.kill()
        proc.wait()
    lines = (first + rest).splitlines()
    assert lines[-1] == "bye" and len(lines) >= 2, lines

    kn.run("wait", "--for=jsonpath={.status.containerStatuses[0].restartCount}=1", "pod/counter", "--timeout=60s")
    previous = kn.run("logs", "counter", "--previous").stdout
    assert previous == "".join(f"tick {i}\n" for i in range(1, 7)) + "bye\n"
    assert kn.run("logs", "counter", "-p", "--tail=2").stdout == "tick 6\nbye\n"
    stamped = kn.run("logs", "counter", "-p", "--tail", "1", "--timestamps").stdout
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z bye\n", stamped), stamped

    kn.apply(deployment_yaml("web", replicas=2))
    kn.run("rollout", "status", "deploy/web", "--timeout=60s")
    out = kn.run("logs", "deploy/web")
    assert out.stdout == "started 1\n" and "Found 2 pods, using pod/web-" in out.stderr, out
    missing = kn.run("logs", "nope", check=False)
    assert missing.returncode == 1 and "NotFound" in missing.stderr


def test_exec_stdin_exit_codes_and_a_terminal(kn):
    kn.apply(pod_yaml("shell", "sleep 3600"))
    kn.run("wait", "--for=condition=Ready", "pod/shell", "--timeout=60s")
    out = kn.run("exec", "shell", "--", "sh", "-c", "echo out; echo err >&2; exit 3", check=False)
    assert out.returncode == 3 and out.stdout == "out\n", out
    assert "err\n" in out.stderr and "command terminated with exit code 3" in out.stderr
    piped = kn.run("exec", "-i", "shell", "--", "sh", "-c", "cat; exit 3", input="piped in\nand more\n", check=False)
    assert piped.returncode == 3 and piped.stdout == "piped in\nand more\n", piped
    assert kn.run("exec", "shell", "--", "cat", "/etc/hostname").stdout == "shell\n"
    # -t needs a terminal: `script` gives one, 40x132, whose size the remote shell sees;
    # afterwards the local terminal is back in cooked mode.
    cmd = (f"stty rows 40 cols 132; KUBECONFIG={kn.server.kubeconfig} {BIN} kubectl -n {kn.ns} "
           f"exec -it shell -- sh; stty -a")
    tty = subprocess.run(["script", "-qec", cmd, "/dev/null"], input="tty; stty size; exit 4\n",
                         capture_output=True, text=True, timeout=60)
    assert "/dev/pts/0" in tty.stdout and "40 132" in tty.stdout, tty.stdout + tty.stderr
    assert "command terminated with exit code 4" in tty.stdout, tty.stdout
    settings = tty.stdout.split("command terminated with exit code 4", 1)[1]
    assert " icanon" in settings and " echo " in settings and "-icanon" not in settings, settings
    # Without a local terminal, -t is dropped with kubectl's warning.
    plain = kn.run("exec", "-it", "shell", "--", "sh", "-c", "cat", input="no tty\n")
    assert plain.stdout == "no tty\n" and "Unable to use a TTY" in plain.stderr
    assert kn.run("exec", "shell", "--", "/no/such/program", check=False).returncode != 0
    wrong = kn.run("exec", "-c", "nope", "shell", "--", "true", check=False)
    assert wrong.returncode == 1 and "nope" in wrong.stderr, wrong


def forward(kn, *args):
    """Starts port-forward and returns it with the local port it reported."""
    import re
    proc = kn.popen("port-forward", *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = proc.stdout.readline()
    m = re.fullmatch(r"Forwarding from 127\.0\.0\.1:(\d+) -> (\d+)\n", line)
    if not m:
        proc.kill()
        raise AssertionError(f"unexpected port-forward output {line!r}: {proc.stderr.read()}")
    return proc, int(m.group(1)), int(m.group(2))


def test_port_forward_to_a_pod_and_through_a_service(kn):
    import hashlib
    import urllib.request
    kn.apply(pod_yaml("shell", "head -c 1000000 /dev/urandom > /www/blob; echo hello-pf > /www/index.html; "
                               "httpd -f -p 127.0.0.1:8080 -h /www",
                      extra="    ports: [{name: http, containerPort: 8080}]\n"))
    kn.apply("apiVersion: v1\nkind: Service\nmetadata: {name: front}\n"
             "spec: {selector: {app: shell}, ports: [{port: 80, targetPort: http}]}\n")
    kn.run("wait", "--for=condition=Ready", "pod/shell", "--timeout=60s")
    proc, port, remote = forward(kn, "pod/shell", ":8080")
    try:
        assert remote == 8080
        # The server listens on the pod's loopback only: reached from inside its namespace.
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read() == b"hello-pf\n"
        blob = urllib.request.urlopen(f"http://127.0.0.1:{port}/blob", timeout=30).read()
        inside = kn.run("exec", "shell", "--", "busybox", "sha256sum", "/www/blob").stdout.split()[0]
        assert len(blob) == 1000000 and hashlib.sha256(blob).hexdigest() == inside
    finally:
        proc.kill()
        proc.wait()
    assert "Handling connection for" in proc.stdout.read()
    # svc/NAME: the Service port 80 goes to the pod's named port `http`.
    proc, port, remote = forward(kn, "svc/front", ":80")
    try:
        assert remote == 8080
        assert urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10).read() == b"hello-pf\n"
    finally:
        proc.kill()
        proc.wait()
    refused = kn.run("port-forward", "svc/front", "9999:81", check=False)
    assert refused.returncode == 1 and "Service front does not have a service port 81" in refused.stderr


def test_rollout_status_history_undo_and_restart(kn):
    kn.apply(deployment_yaml("web"))
    status = kn.run("rollout", "status", "deployment/web", "--timeout=60s").stdout
    assert status.splitlines()[-1] == 'deployment "web" successfully rolled out', status
    kn.run("annotate", "deploy", "web", "kubernetes.io/change-cause=version 2")
    kn.apply(deployment_yaml("web", version="2"))
    status = kn.run("rollout", "status", "deploy", "web", "--timeout=60s").stdout
    assert status.endswith('deployment "web" successfully rolled out\n'), status
    history = kn.run("rollout", "history", "deploy/web").stdout
    assert history == "deployment.apps/web\nREVISION  CHANGE-CAUSE\n1         <none>\n2         version 2\n\n", history
    assert "VERSION:\t2" in kn.run("rollout", "history", "deploy/web", "--revision=2").stdout
    env = ["get", "deploy", "web", "-o", "jsonpath={.spec.template.spec.containers[0].env[0].value}"]

    assert kn.run("rollout", "undo", "deploy/web").stdout == "deployment.apps/web rolled back\n"
    kn.run("rollout", "status", "deploy/web", "--timeout=60s")
    assert kn.run(*env).stdout == "1"
    assert kn.run("logs", "deploy/web").stdout == "started 1\n"
    assert [line.split()[0] for line in kn.run("rollout", "history", "deploy/web").stdout.splitlines()[2:-1]] \
        == ["2", "3"]
    assert kn.run("rollout", "undo", "deploy/web", "--to-revision=2").stdout == "deployment.apps/web rolled back\n"
    kn.run("rollout", "status", "deploy/web", "--timeout=60s")
    assert kn.run(*env).stdout == "2"
    skipped = kn.run("rollout", "undo", "deploy/web", "--to-revision=4").stdout
    assert "skipped rollback (current template already matches revision 4)" in skipped
    missing = kn.run("rollout", "undo", "deploy/web", "--to-revision=42", check=False)
    assert missing.returncode == 1 and "unable to find specified revision 42 in history" in missing.stderr

    before = set(kn.run("get", "pods", "-l", "app=web", "-o", "name").stdout.split())
    assert kn.run("rollout", "restart", "deploy/web").stdout == "deployment.apps/web restarted\n"
    kn.run("rollout", "status", "deploy/web", "--timeout=60s")
    stamp = kn.run("get", "deploy", "web", "-o",
                   "jsonpath={.spec.template.metadata.annotations['kubectl.kubernetes.io/restartedAt']}").stdout
    assert stamp.endswith("Z") and "T" in stamp, stamp
    kn.run("wait", "--for=delete", *before, "--timeout=60s")
    after = set(kn.run("get", "pods", "-l", "app=web", "-o", "name").stdout.split())
    assert after and not after & before

    # A rollout that cannot finish: an image the node does not have.
    kn.apply(deployment_yaml("broken", replicas=1).replace(IMAGE, "bramble.test/absent:1"))
    stuck = kn.run("rollout", "status", "deploy/broken", "--timeout=3s", check=False)
    assert stuck.returncode == 1 and "timed out waiting for the condition" in stuck.stderr, stuck
    assert 'Waiting for deployment "broken" rollout to finish' in stuck.stdout, stuck


def test_wait_for_conditions_json_paths_and_deletion(kn):
    kn.apply(pod_yaml("sleeper", "sleep 3600"))
    kn.apply(pod_yaml("quick", "echo done", restart="Never", labels={"app": "quick", "batch": "yes"}))
    assert kn.run("wait", "--for=condition=Ready", "pod/sleeper", "--timeout=60s").stdout \
        == "pod/sleeper condition met\n"
    assert kn.run("wait", "--for=jsonpath={.status.phase}=Succeeded", "pods", "-l", "batch=yes",
                  "--timeout=60s").stdout == "pod/quick condition met\n"
    assert kn.run("wait", "--for=jsonpath=.status.phase=Running", "pod", "sleeper").stdout \
        == "pod/sleeper condition met\n"
    late = kn.run("wait", "--for=condition=Ready", "pod/quick", "--timeout=1s", check=False)
    assert late.returncode == 1 and "timed out waiting for the condition on pods/quick" in late.stderr, late
    absent = kn.run("wait", "--for=condition=Ready", "pod/nope", "--timeout=1s", check=False)
    assert absent.returncode == 1 and "NotFound" in absent.stderr
    none = kn.run("wait", "--for=condition=Ready", "pods", "-l", "app=nothing", check=False)
    assert none.returncode == 1 and "no matching resources found" in none.stderr

    kn.run("delete", "pod", "sleeper", "--wait=false")
    assert kn.run("wait", "--for=delete", "pod/sleeper", "--timeout=60s").stdout == "pod/sleeper condition met\n"
    assert kn.run("wait", "--for=delete", "pod/sleeper").stdout == "", "already gone: nothing to wait for"
    bad = kn.run("wait", "--for=ready", "pod/quick", check=False)
    assert bad.returncode == 1 and "unrecognized condition" in bad.stderr


def test_top_reads_the_built_in_metrics_api(kn):
    kn.apply(pod_yaml("topper", "sleep 3600"))
    kn.run("wait", "--for=condition=Ready", "pod/topper", "--timeout=60s")

    def node_row():
        out = kn.run("top", "nodes", check=False)
        return out.returncode == 0 and out.stdout

    nodes = wait_for(node_row, timeout=40)
    assert nodes.split("\n")[0].split() == ["NAME", "CPU(cores)", "CPU%", "MEMORY(bytes)", "MEMORY%"], nodes
    assert nodes.split("\n")[1].split()[0] == NODE, nodes

    # A pod has numbers once its node took two samples (10 s apart) of its cgroups.
    def pod_rows():
        out = kn.run("top", "pods", "--containers", check=False)
        return out.returncode == 0 and "topper" in out.stdout and out.stdout

    pods = wait_for(pod_rows, timeout=40)
    assert pods.split("\n")[0].split() == ["POD", "NAME", "CPU(cores)", "MEMORY(bytes)"], pods
    row = next(line.split() for line in pods.splitlines() if line.startswith("topper"))
    assert row[1] == "main" and row[2].endswith("m") and row[3].endswith("Mi"), pods


def test_zz_cordon_drain_and_uncordon(kn):
    # Runs last (by name) in this file: it cordons the node the other tests use.
    kn.apply("""\
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      terminationGracePeriodSeconds: 1
      containers: [{name: main, image: bramble.test/busybox:1, imagePullPolicy: Never, command: [sleep, "3600"]}]
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {name: web}
spec:
  minAvailable: 1
  selector: {matchLabels: {app: web}}
""")
    kn.apply(deployment_yaml("web", replicas=1))
    kn.apply(pod_yaml("lonely", "sleep 3600"))
    kn.run("rollout", "status", "ds/agent", "--timeout=60s")
    kn.run("rollout", "status", "deploy/web", "--timeout=60s")
    kn.run("wait", "--for=condition=Ready", "pod/lonely", "--timeout=60s")
    unschedulable = ["get", "node", NODE, "-o", "jsonpath={.spec.unschedulable}"]
    try:
        assert kn.run("cordon", NODE).stdout == f"node/{NODE} cordoned\n"
        assert kn.run(*unschedulable).stdout == "true"
        assert kn.run("cordon", NODE).stdout == f"node/{NODE} already cordoned\n"
        assert kn.run("uncordon", NODE).stdout == f"node/{NODE} uncordoned\n"
        assert kn.run(*unschedulable).stdout == ""

        refused = kn.run("drain", NODE, check=False)
        assert refused.returncode == 1, refused
        assert f"cannot delete DaemonSet-managed Pods (use --ignore-daemonsets to ignore): {kn.ns}/agent-" \
            in refused.stderr
        assert f"cannot delete Pods that declare no controller (use --force to override): {kn.ns}/lonely" \
            in refused.stderr
        # The budget keeps the one web pod: evicting it is refused (429) and retried until
        # the timeout; the bare pod goes.
        blocked = kn.run("drain", NODE, "--ignore-daemonsets", "--force", "--timeout=7s", check=False)
        assert blocked.returncode == 1, blocked
        assert "would violate the pod's disruption budget" in blocked.stderr, blocked.stderr
        assert "global timeout reached" in blocked.stderr
        assert "pod/lonely evicted" in blocked.stdout
        assert f"Warning: ignoring DaemonSet-managed Pods: {kn.ns}/agent-" in blocked.stderr

        kn.run("delete", "pdb", "web")
        drained = kn.run("drain", NODE, "--ignore-daemonsets", "--timeout=60s")
        assert drained.stdout.startswith(f"node/{NODE} already cordoned\n"), drained.stdout
        assert "pod/web-" in drained.stdout and drained.stdout.endswith(f"node/{NODE} drained\n"), drained.stdout
        phases = kn.run("get", "pods", "-o", "jsonpath={range .items[*]}{.metadata.name}={.status.phase}{\"\\n\"}{end}")
        by_name = dict(line.split("=") for line in phases.stdout.split())
        assert [p for n, p in by_name.items() if n.startswith("agent-")] == ["Running"], by_name
        assert [p for n, p in by_name.items() if n.startswith("web-")] == ["Pending"], by_name
        assert "lonely" not in by_name
    finally:
        kn.run("uncordon", NODE, check=False)
    kn.run("rollout", "status", "deploy/web", "--timeout=60s")
