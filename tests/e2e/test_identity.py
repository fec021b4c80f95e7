"""Workload identity and RBAC end to end: one node (server and agent, the API on every
address so pods reach it through the `kubernetes` Service), pods running the machine's
static kubectl as an in-cluster client, tokens used from outside, and kubectl's `auth`
commands as admin, node, ServiceAccount and user."""
import base64
import json
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from kubernetes import client, config

from conftest import BUSYBOX, Kubectl, Server, drop_busybox, wait_for
from kubectl_image import TAG as KUBECTL_IMAGE, docker_archive_kubectl

NODE = "identity-1"
TOKEN_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"


@pytest.fixture(scope="module")
def node():
    s = Server(extra_args=["--node-name", NODE], agent=True, bind="0.0.0.0")
    drop_busybox(s.data_dir)
    docker_archive_kubectl(os.path.join(s.data_dir, "agent", "images", "kubectl.tar"))
    # Debug builds renew pods' tokens this often (a day otherwise): the refresh test
    # watches a running pod's token change.
    os.environ["BRAMBLE_TEST_TOKEN_MAX_AGE_SECONDS"] = "5"
    try:
        s.start()
    finally:
        del os.environ["BRAMBLE_TEST_TOKEN_MAX_AGE_SECONDS"]
    try:
        api = config.new_client_from_config(config_file=s.kubeconfig)
        core = client.CoreV1Api(api)
        wait_for(lambda: any(c.type == "Ready" and c.status == "True"
                             for c in (core.read_node(NODE).status.conditions or [])), timeout=60)
        s.api, s.core, s.rbac = api, core, client.RbacAuthorizationV1Api(api)
        s.kubectl = Kubectl(s, "1.33")
        yield s
    finally:
        s.cleanup()


def call(server, path, token, method="GET", body=None):
    """One request with a bearer token; returns (status, parsed body)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"https://127.0.0.1:{server.port}{path}", data=data, method=method,
                                 headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def namespace_with_reader(node, ns):
    """A namespace with ServiceAccount `reader` allowed to read pods, and nothing else."""
    node.core.create_namespace({"metadata": {"name": ns}})
    node.core.create_namespaced_service_account(ns, {"metadata": {"name": "reader"}})
    node.rbac.create_namespaced_role(ns, {"metadata": {"name": "pod-reader"}, "rules": [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]})
    node.rbac.create_namespaced_role_binding(ns, {
        "metadata": {"name": "reader-reads-pods"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": ns}]})


def run_pod(node, ns, name, script, sa="reader", image=KUBECTL_IMAGE):
    node.core.create_namespaced_pod(ns, {"metadata": {"name": name}, "spec": {
        "serviceAccountName": sa, "restartPolicy": "Never", "terminationGracePeriodSeconds": 0,
        "containers": [{"name": "main", "image": image, "imagePullPolicy": "Never",
                        "command": ["sh", "-c", script]}]}})


def logs_with(node, ns, name, marker, timeout=90):
    def attempt():
        try:
            out = node.core.read_namespaced_pod_log(name, ns, container="main")
        except client.ApiException:
            return None
        return out if marker in out else None
    return wait_for(attempt, timeout=timeout)


def test_every_namespace_gets_a_default_account_and_the_root_ca(node):
    node.core.create_namespace({"metadata": {"name": "fresh"}})
    wait_for(lambda: node.core.read_namespaced_service_account("default", "fresh"), timeout=20)
    ca = wait_for(lambda: node.core.read_namespaced_config_map("kube-root-ca.crt", "fresh"), timeout=20)
    assert ca.data["ca.crt"].startswith("-----BEGIN CERTIFICATE-----")
    node.core.delete_namespaced_service_account("default", "fresh")
    wait_for(lambda: node.core.read_namespaced_service_account("default", "fresh"), timeout=20)
    node.core.patch_namespaced_config_map("kube-root-ca.crt", "fresh", {"data": {"ca.crt": "tampered"}})
    wait_for(lambda: node.core.read_namespaced_config_map("kube-root-ca.crt", "fresh").data["ca.crt"] != "tampered",
             timeout=20)


def test_default_roles_are_served_and_shown(node):
    out = node.kubectl.run("get", "clusterroles").stdout
    for role in ["cluster-admin", "admin", "edit", "view", "system:basic-user", "system:discovery"]:
        assert f"\n{role} " in out, out
    out = node.kubectl.run("api-resources", "--api-group=rbac.authorization.k8s.io").stdout
    assert "rolebindings" in out and "clusterroles" in out
    view = node.rbac.read_cluster_role("view")
    assert any("pods" in (r.resources or []) for r in view.rules), "view aggregates the aggregate-to-view rules"
    assert not any("secrets" in (r.resources or []) for r in view.rules)


def test_a_pod_lists_pods_with_its_token_and_is_refused_secrets(node):
    namespace_with_reader(node, "team")
    script = (f"ls {TOKEN_PATH}; cat {TOKEN_PATH}/namespace; echo; "
              "kubectl get pods -o name; echo rc-pods=$?; "
              "kubectl get secrets 2>&1; echo rc-secrets=$?; sleep 3600")
    wait_for(lambda: node.core.read_namespaced_service_account("reader", "team"), timeout=10)
    run_pod(node, "team", "client", script)
    out = logs_with(node, "team", "client", "rc-secrets=")
    assert "ca.crt" in out and "token" in out and "namespace" in out, out
    assert "\nteam\n" in out, out
    assert "pod/client" in out and "rc-pods=0" in out, out
    assert ('secrets is forbidden: User "system:serviceaccount:team:reader" cannot list resource "secrets" '
            'in API group "" in the namespace "team"') in out, out
    pod = node.core.read_namespaced_pod("client", "team")
    assert pod.spec.service_account_name == "reader"
    assert any(v.name.startswith("kube-api-access-") for v in pod.spec.volumes)


def test_a_deleted_pods_token_is_refused(node):
    run_pod(node, "team", "leaker", f"cat {TOKEN_PATH}/token; echo; echo done; sleep 3600")
    out = logs_with(node, "team", "leaker", "done")
    token = out.split("\n")[0].strip()
    assert token.count(".") == 2, out
    status, body = call(node, "/api/v1/namespaces/team/pods", token)
    assert status == 200, body
    status, body = call(node, "/api/v1/namespaces/team/secrets", token)
    assert status == 403, body
    node.core.delete_namespaced_pod("leaker", "team", grace_period_seconds=0)
    wait_for(lambda: "leaker" not in [p.metadata.name for p in node.core.list_namespaced_pod("team").items])
    status, body = call(node, "/api/v1/namespaces/team/pods", token)
    assert status == 401, body


def test_a_running_pods_token_is_renewed_in_place(node):
    script = (f"ls -l {TOKEN_PATH}/; for i in $(seq 12); do echo tok=$(cat {TOKEN_PATH}/token); sleep 3; done; "
              "echo done; sleep 3600")
    run_pod(node, "team", "renewer", script)
    out = logs_with(node, "team", "renewer", "done", timeout=120)
    assert "token -> ..data/token" in out, out
    tokens = list(dict.fromkeys(line[4:] for line in out.splitlines() if line.startswith("tok=")))
    assert len(tokens) >= 2, f"the token never changed: {out}"
    for token in tokens[-2:]:
        assert call(node, "/api/v1/namespaces/team/pods", token)[0] == 200


def test_forged_and_expired_tokens_are_refused(node):
    token = node.kubectl.run("create", "token", "reader", "-n", "team").stdout.strip()
    assert call(node, "/api/v1/namespaces/team/pods", token)[0] == 200
    header, payload, signature = token.split(".")
    # A claim changed: the signature no longer matches.
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "system:serviceaccount:kube-system:default"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    assert call(node, "/api/v1/pods", f"{header}.{forged}.{signature}")[0] == 401
    # No signature at all.
    none = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').decode().rstrip("=")
    assert call(node, "/api/v1/pods", f"{none}.{forged}.")[0] == 401
    # A token for another audience.
    other = node.kubectl.run("create", "token", "reader", "-n", "team", "--audience", "vault").stdout.strip()
    assert call(node, "/api/v1/namespaces/team/pods", other)[0] == 401
    # Too short a lifetime is refused with upstream's words.
    api = client.CoreV1Api(node.api)
    with pytest.raises(client.ApiException) as e:
        api.create_namespaced_service_account_token("reader", "team", {"spec": {"expirationSeconds": 60}})
    assert e.value.status == 422 and "may not specify a duration less than 10 minutes" in e.value.body
    # A node asks only for the accounts of its own pods, bound to them.
    bound = ["create", "token", "reader", "-n", "team", "--bound-object-kind", "Pod", "--bound-object-name", "client"]
    mine = node.kubectl.run(*bound, f"--as=system:node:{NODE}", "--as-group=system:nodes", check=False)
    assert mine.returncode == 0 and mine.stdout.count(".") == 2, mine.stderr
    other = node.kubectl.run(*bound, "--as=system:node:intruder", "--as-group=system:nodes", check=False)
    assert other.returncode == 1 and "only ask tokens for the service accounts of pods bound to it" in other.stderr
    unbound = node.kubectl.run("create", "token", "reader", "-n", "team", f"--as=system:node:{NODE}",
                               "--as-group=system:nodes", check=False)
    assert unbound.returncode == 1 and "must bind the token to one of its pods" in unbound.stderr
    # A deleted ServiceAccount's tokens die with it.
    node.core.create_namespaced_service_account("team", {"metadata": {"name": "temp"}})
    temp = node.kubectl.run("create", "token", "temp", "-n", "team").stdout.strip()
    assert call(node, "/api/v1/namespaces/team/pods", temp)[0] == 403, "authenticated, not authorized"
    node.core.delete_namespaced_service_account("temp", "team")
    assert call(node, "/api/v1/namespaces/team/pods", temp)[0] == 401


def can_i(node, *args):
    r = node.kubectl.run("auth", "can-i", *args, check=False)
    return r.stdout.strip()


def test_kubectl_auth_can_i_and_whoami(node):
    sa = "--as=system:serviceaccount:team:reader"
    assert can_i(node, "*", "*") == "yes"
    assert can_i(node, "list", "pods", "-n", "team", sa) == "yes"
    assert can_i(node, "list", "secrets", "-n", "team", sa) == "no"
    assert can_i(node, "create", "pods", "-n", "team", sa) == "no"
    assert can_i(node, "list", "pods", "-n", "default", sa) == "no"
    as_node = [f"--as=system:node:{NODE}", "--as-group=system:nodes"]
    assert can_i(node, "get", "nodes", *as_node) == "yes"
    assert can_i(node, "create", "deployments", "-n", "default", *as_node) == "no"
    listing = node.kubectl.run("auth", "can-i", "--list", "-n", "team", sa).stdout
    assert "pods" in listing and "selfsubjectaccessreviews.authorization.k8s.io" in listing, listing
    token = node.kubectl.run("create", "token", "reader", "-n", "team").stdout.strip()
    # A kubeconfig without the admin's certificate: with both, the certificate wins (as
    # upstream's authenticators are ordered).
    as_token = [node.kubectl.bin, "--kubeconfig", "/dev/null", "--server", f"https://127.0.0.1:{node.port}",
                "--insecure-skip-tls-verify", "--token", token]
    who = subprocess.run([*as_token, "auth", "whoami", "-o", "json"], capture_output=True, text=True).stdout
    info = json.loads(who)["status"]["userInfo"]
    assert info["username"] == "system:serviceaccount:team:reader"
    assert {"system:serviceaccounts", "system:serviceaccounts:team", "system:authenticated"} <= set(info["groups"])
    assert subprocess.run([*as_token, "auth", "can-i", "list", "pods", "-n", "team"],
                          capture_output=True, text=True).stdout.strip() == "yes"
    assert subprocess.run([*as_token, "auth", "can-i", "list", "secrets", "-n", "team"],
                          capture_output=True, text=True).stdout.strip() == "no"


def test_roles_cannot_grant_what_their_author_lacks(node):
    ns = "team"
    node.core.create_namespaced_service_account(ns, {"metadata": {"name": "maker"}})
    node.rbac.create_namespaced_role(ns, {"metadata": {"name": "role-maker"}, "rules": [
        {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": ["create"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]})
    node.rbac.create_namespaced_role_binding(ns, {
        "metadata": {"name": "maker-makes"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "role-maker"},
        "subjects": [{"kind": "ServiceAccount", "name": "maker", "namespace": ns}]})
    token = node.kubectl.run("create", "token", "maker", "-n", ns).stdout.strip()
    path = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles"
    ok = {"metadata": {"name": "cm-reader"}, "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]}
    status, body = call(node, path, token, "POST", ok)
    assert status == 201, body
    greedy = {"metadata": {"name": "secret-reader"},
              "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]}
    status, body = call(node, path, token, "POST", greedy)
    assert status == 403, body
    assert "is attempting to grant RBAC permissions not currently held" in body["message"], body
    assert 'Resources:["secrets"]' in body["message"], body
    # Binding the admin role is refused too; binding what one holds is fine.
    binding = lambda role: {"metadata": {"name": f"to-{role}"}, "subjects": [{"kind": "User", "name": "bob"}],
                            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role}}
    status, body = call(node, f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings", token, "POST",
                        binding("admin"))
    assert status == 403, body
    node.rbac.create_namespaced_role(ns, {"metadata": {"name": "cm-only"}, "rules": [
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]})
    ok_binding = {"metadata": {"name": "bob-cm"}, "subjects": [{"kind": "User", "name": "bob"}],
                  "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "cm-only"}}
    status, body = call(node, f"/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings", token, "POST",
                        ok_binding)
    assert status == 201, body


def test_oidc_discovery_is_published(node):
    token = node.kubectl.run("create", "token", "reader", "-n", "team").stdout.strip()
    status, doc = call(node, "/.well-known/openid-configuration", token)
    assert status == 200 and doc["issuer"] == "https://kubernetes.default.svc.cluster.local", doc
    status, jwks = call(node, "/openid/v1/jwks", token)
    assert status == 200 and jwks["keys"][0]["alg"] == "ES256"
    header = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))
    assert header["kid"] == jwks["keys"][0]["kid"]


def test_in_cluster_environment(node):
    run_pod(node, "team", "envcheck", "env | grep ^KUBERNETES_ | sort; echo done; sleep 3600", image=BUSYBOX)
    out = logs_with(node, "team", "envcheck", "done")
    assert "KUBERNETES_SERVICE_HOST=10.43.0.1" in out and "KUBERNETES_SERVICE_PORT=443" in out, out
    eps = node.core.read_namespaced_endpoints("kubernetes", "default")
    address = eps.subsets[0].addresses[0].ip
    assert address != "127.0.0.1", "pods must be able to reach the API's endpoint"


CHART = {
    "Chart.yaml": """
        apiVersion: v2
        name: watcher
        version: 0.1.0
    """,
    "templates/rbac.yaml": """
        apiVersion: v1
        kind: ServiceAccount
        metadata:
          name: {{ .Release.Name }}
        ---
        apiVersion: v1
        kind: Secret
        metadata:
          name: {{ .Release.Name }}-token
          annotations:
            kubernetes.io/service-account.name: {{ .Release.Name }}
        type: kubernetes.io/service-account-token
        ---
        apiVersion: rbac.authorization.k8s.io/v1
        kind: ClusterRole
        metadata:
          name: {{ .Release.Name }}-{{ .Release.Namespace }}
        rules:
        - apiGroups: [""]
          resources: ["configmaps"]
          verbs: ["get", "list"]
        ---
        apiVersion: rbac.authorization.k8s.io/v1
        kind: ClusterRoleBinding
        metadata:
          name: {{ .Release.Name }}-{{ .Release.Namespace }}
        roleRef:
          apiGroup: rbac.authorization.k8s.io
          kind: ClusterRole
          name: {{ .Release.Name }}-{{ .Release.Namespace }}
        subjects:
        - kind: ServiceAccount
          name: {{ .Release.Name }}
          namespace: {{ .Release.Namespace }}
    """,
    "templates/hook.yaml": """
        apiVersion: batch/v1
        kind: Job
        metadata:
          name: {{ .Release.Name }}-check
          annotations:
            "helm.sh/hook": post-install
        spec:
          backoffLimit: 0
          template:
            spec:
              restartPolicy: Never
              serviceAccountName: {{ .Release.Name }}
              containers:
              - name: check
                image: bramble.test/kubectl:1
                imagePullPolicy: Never
                command: ["sh", "-c", "kubectl get configmap kube-root-ca.crt -n kube-system && ! kubectl auth can-i delete nodes"]
    """,
}


@pytest.mark.parametrize("ssa", [False, True], ids=["client-side-apply", "server-side-apply"])
def test_a_chart_with_its_own_account_and_roles_installs(node, ssa):
    helm = pytest.importorskip("helm_sdkpy", reason="pip install --ignore-requires-python helm-sdkpy cffi")
    import asyncio
    import textwrap
    ns = f"chart-{'ssa' if ssa else 'csa'}"
    root = os.path.join(node.dir, f"chart-{ns}")
    for path, text in CHART.items():
        full = os.path.join(root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as f:
            f.write(textwrap.dedent(text).lstrip())
    node.core.create_namespace({"metadata": {"name": ns}})
    cfg = helm.Configuration(namespace=ns, kubeconfig=node.kubeconfig)

    async def flow():
        installed = await helm.Install(cfg).run("watch", root, {}, wait=True, wait_for_jobs=True, timeout=120,
                                                server_side_apply=ssa)
        assert installed["info"]["status"] == "deployed", installed
        job = client.BatchV1Api(node.api).read_namespaced_job("watch-check", ns)
        assert job.status.succeeded == 1
        secret = node.core.read_namespaced_secret("watch-token", ns)
        token = base64.b64decode(secret.data["token"]).decode()
        assert base64.b64decode(secret.data["namespace"]).decode() == ns
        status, body = call(node, f"/api/v1/namespaces/{ns}/configmaps", token)
        assert status == 200, body
        assert call(node, f"/api/v1/namespaces/{ns}/secrets", token)[0] == 403
        await helm.Uninstall(cfg).run("watch", wait=True, timeout=120)
        assert call(node, f"/api/v1/namespaces/{ns}/configmaps", token)[0] == 401, "the Secret is gone"

    asyncio.run(flow())


def test_a_person_gets_a_kubeconfig_and_what_rbac_grants(node):
    from conftest import BIN
    path = os.path.join(node.dir, "alice.yaml")
    subprocess.run([BIN, "kubeconfig", "create", "--user", "alice", "--group", "devs", "--days", "30",
                    "-d", node.data_dir, "--server", f"https://127.0.0.1:{node.port}", "-o", path], check=True)
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    alice = [node.kubectl.bin, "--kubeconfig", path]
    run = lambda *a: subprocess.run([*alice, *a], capture_output=True, text=True)
    assert run("auth", "can-i", "list", "pods", "-n", "team").stdout.strip() == "no"
    refused = run("get", "pods", "-n", "team")
    assert refused.returncode == 1 and 'User "alice" cannot list resource "pods"' in refused.stderr, refused.stderr
    node.rbac.create_namespaced_role_binding("team", {
        "metadata": {"name": "devs-view"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "view"},
        "subjects": [{"kind": "Group", "name": "devs", "apiGroup": "rbac.authorization.k8s.io"}]})
    assert run("auth", "can-i", "list", "pods", "-n", "team").stdout.strip() == "yes"
    assert run("auth", "can-i", "list", "secrets", "-n", "team").stdout.strip() == "no", "view reads no secrets"
    assert run("get", "pods", "-n", "team").returncode == 0
    who = json.loads(run("auth", "whoami", "-o", "json").stdout)["status"]["userInfo"]
    assert who["username"] == "alice" and "devs" in who["groups"]
    bad = subprocess.run([BIN, "kubeconfig", "create", "--user", "", "-d", node.data_dir], capture_output=True, text=True)
    assert bad.returncode != 0 and "--user" in bad.stderr
