"""Attacks on the API as a stolen board, an anonymous peer or a careless client would make
them: each one was answered with success before the node authorizer, the join checks and
the request limits, and each must now be refused without changing anything.

The node identities here come from the real join endpoint with the server's token, exactly
as an agent gets its own (the server runs no agent: nothing here needs a container)."""
import base64
import http.client
import json
import os
import socket
import ssl
import subprocess
import tempfile
import time
import uuid

import pytest

from conftest import BIN, Server, kubectl_dir


@pytest.fixture(scope="module")
def srv():
    s = Server(extra_args=["--request-header-timeout", "2"]).start()
    yield s
    s.cleanup()


def token_of(server):
    with open(os.path.join(server.data_dir, "server", "node-token")) as f:
        return f.read().strip()


def tls_context(cert=None):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(*cert)
    return ctx


def call(server, method, path, body=None, cert=None, headers=None, content_type="application/json"):
    """One HTTPS request; returns (status, parsed body or text, response headers)."""
    conn = http.client.HTTPSConnection("127.0.0.1", server.port, context=tls_context(cert), timeout=30)
    h = dict(headers or {})
    data = None
    if body is not None:
        data = body if isinstance(body, (bytes, str)) else json.dumps(body)
        h["Content-Type"] = content_type
    conn.request(method, path, body=data, headers=h)
    r = conn.getresponse()
    raw = r.read()
    conn.close()
    try:
        parsed = json.loads(raw)
    except ValueError:
        parsed = raw.decode(errors="replace")
    return r.status, parsed, r.headers


def join(server, name, password=None, token=None):
    body = {"nodeName": name, "nodePassword": password or uuid.uuid4().hex}
    return call(server, "POST", "/v1-bramble/node-credentials", body,
                headers={"Authorization": f"Bearer {token or token_of(server)}"})


def node_cert(server, name):
    status, answer, _ = join(server, name)
    assert status == 200, answer
    d = tempfile.mkdtemp(prefix=f"node-{name}-", dir=server.dir)
    crt, key = os.path.join(d, "node.crt"), os.path.join(d, "node.key")
    with open(crt, "w") as f:
        f.write(answer["certificate"])
    with open(key, "w") as f:
        f.write(answer["key"])
    return crt, key


@pytest.fixture(scope="module")
def admin(srv):
    return admin_of(srv)


def pod(name, node, **spec):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}], **spec}}


@pytest.fixture(scope="module")
def boards(srv, admin):
    """Two joined boards, each with a pod bound to it, and a secret only board-b's pod uses."""
    a, b = node_cert(srv, "board-a"), node_cert(srv, "board-b")
    for n in ("board-a", "board-b"):
        status, body, _ = call(srv, "POST", "/api/v1/nodes", {"metadata": {"name": n}}, cert=admin)
        assert status in (201, 409), body
    status, body, _ = call(srv, "POST", "/api/v1/namespaces/default/secrets",
                           {"metadata": {"name": "b-only"}, "stringData": {"k": "v"}}, cert=admin)
    assert status == 201, body
    assert call(srv, "POST", "/api/v1/namespaces/default/pods", pod("on-a", "board-a"), cert=admin)[0] == 201
    on_b = pod("on-b", "board-b", volumes=[{"name": "s", "secret": {"secretName": "b-only"}}])
    on_b["spec"]["containers"][0]["volumeMounts"] = [{"name": "s", "mountPath": "/s"}]
    assert call(srv, "POST", "/api/v1/namespaces/default/pods", on_b, cert=admin)[0] == 201
    return a, b


def test_a_node_cannot_run_or_reach_pods_on_other_nodes(srv, admin, boards):
    a, _ = boards
    host_root = pod("steal", "board-b", volumes=[{"name": "root", "hostPath": {"path": "/"}}])
    status, body, _ = call(srv, "POST", "/api/v1/namespaces/default/pods", host_root, cert=a)
    assert status == 403, body
    # Not even bound to itself: only mirror pods, and they may reference nothing.
    status, body, _ = call(srv, "POST", "/api/v1/namespaces/default/pods", pod("mine", "board-a"), cert=a)
    assert status == 403 and "mirror" in body["message"], body
    sneaky = pod("mirror", "board-a", volumes=[{"name": "s", "secret": {"secretName": "b-only"}}])
    sneaky["metadata"]["annotations"] = {"kubernetes.io/config.mirror": "x"}
    status, body, _ = call(srv, "POST", "/api/v1/namespaces/default/pods", sneaky, cert=a)
    assert status == 403, body
    for sub in ("log", "exec?command=cat&command=/etc/shadow&stdout=true", "attach?stdout=true",
                "portforward?ports=80"):
        method = "GET" if sub == "log" else "POST"
        status, body, _ = call(srv, method, f"/api/v1/namespaces/default/pods/on-b/{sub}", cert=a)
        assert status == 403, (sub, body)
    # Nothing was created.
    names = [p["metadata"]["name"] for p in call(srv, "GET", "/api/v1/namespaces/default/pods", cert=admin)[1]["items"]]
    assert sorted(names) == ["on-a", "on-b"]


def test_a_node_changes_only_its_own_pods_node_and_lease(srv, admin, boards):
    a, _ = boards
    merge = "application/merge-patch+json"
    status, body, _ = call(srv, "PATCH", "/api/v1/namespaces/default/pods/on-b/status",
                           {"status": {"phase": "Failed"}}, cert=a, content_type=merge)
    assert status == 403, body
    status, body, _ = call(srv, "PATCH", "/api/v1/namespaces/default/pods/on-a/status",
                           {"status": {"message": "mine"}}, cert=a, content_type=merge)
    assert status == 200, body
    for q in ("", "?dryRun=All"):
        status, body, _ = call(srv, "DELETE", f"/api/v1/namespaces/default/pods/on-b{q}", cert=a)
        assert status == 403, body
    status, body, _ = call(srv, "DELETE", "/api/v1/namespaces/default/pods?dryRun=All", cert=a)
    assert status == 403, body
    status, body, _ = call(srv, "POST", "/api/v1/nodes", {"metadata": {"name": "board-z"}}, cert=a)
    assert status == 403, body
    status, body, _ = call(srv, "PATCH", "/api/v1/nodes/board-b", {"metadata": {"labels": {"x": "y"}}}, cert=a,
                           content_type=merge)
    assert status == 403, body
    lease = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": {"name": "board-a"}}
    status, body, _ = call(srv, "POST", "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases", lease, cert=a)
    assert status == 403, body
    other = dict(lease, metadata={"name": "board-b"})
    status, body, _ = call(srv, "POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", other,
                           cert=a)
    assert status == 403, body
    status, body, _ = call(srv, "POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", lease,
                           cert=a)
    assert status == 201, body
    for path in ("/api/v1/nodes?dryRun=All", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases?dryRun=All"):
        status, body, _ = call(srv, "DELETE", path, cert=a)
        assert status == 403, (path, body)
    assert call(srv, "GET", "/api/v1/namespaces/default/pods/on-b", cert=admin)[0] == 200
    assert call(srv, "GET", "/api/v1/nodes/board-b", cert=admin)[1]["metadata"].get("labels", {}).get("x") is None
    # Its own Node, but not the labels that steer workloads to trusted nodes, nor its pod range.
    for patch in ({"metadata": {"labels": {"node-role.kubernetes.io/control-plane": "true"}}},
                  {"metadata": {"labels": {"node-restriction.kubernetes.io/trusted": "yes"}}},
                  {"spec": {"podCIDR": "10.42.200.0/24"}}):
        status, body, _ = call(srv, "PATCH", "/api/v1/nodes/board-a", patch, cert=a, content_type=merge)
        assert status == 403, (patch, body)
    status, body, _ = call(srv, "PATCH", "/api/v1/nodes/board-a", {"metadata": {"labels": {"disktype": "ssd"}}},
                           cert=a, content_type=merge)
    assert status == 200, body
    # Apply never creates through a subresource (a node could otherwise make a pod of its
    # choosing by applying to the status of one that does not exist).
    made = pod("made-via-status", "board-a", volumes=[{"name": "s", "secret": {"secretName": "b-only"}}])
    status, body, _ = call(srv, "PATCH", "/api/v1/namespaces/default/pods/made-via-status/status?fieldManager=x",
                           made, cert=admin, content_type="application/apply-patch+yaml")
    assert status == 404, body


def test_a_node_reads_only_the_secrets_its_pods_use(srv, boards):
    a, b = boards
    assert call(srv, "GET", "/api/v1/namespaces/default/secrets/b-only", cert=b)[0] == 200
    assert call(srv, "GET", "/api/v1/namespaces/default/secrets/b-only", cert=a)[0] == 403
    assert call(srv, "GET", "/api/v1/namespaces/default/secrets", cert=b)[0] == 403


def test_a_node_reads_the_tls_secrets_of_our_ingresses_and_no_other(srv, admin, boards):
    """Every node serves every Ingress of ours, so each may get the certificates those
    name, one at a time; not the Secrets of another class's Ingress, and never a list."""
    a, _ = boards
    for name, kind in (("site-tls", "kubernetes.io/tls"), ("other-tls", "kubernetes.io/tls"), ("db-password", "Opaque")):
        status, body, _ = call(srv, "POST", "/api/v1/namespaces/default/secrets",
                               {"metadata": {"name": name}, "type": kind,
                                "stringData": {"tls.crt": "c", "tls.key": "k"}}, cert=admin)
        assert status == 201, body
    # The third names a Secret that is no certificate: naming it does not hand it to nodes.
    for name, cls, secret in (("site", None, "site-tls"), ("other", "nginx", "other-tls"), ("sly", None, "db-password")):
        spec = {"tls": [{"hosts": [f"{name}.example"], "secretName": secret}],
                "defaultBackend": {"service": {"name": "x", "port": {"number": 80}}}}
        if cls:
            spec["ingressClassName"] = cls
        status, body, _ = call(srv, "POST", "/apis/networking.k8s.io/v1/namespaces/default/ingresses",
                               {"metadata": {"name": name}, "spec": spec}, cert=admin)
        assert status == 201, body
    assert call(srv, "GET", "/api/v1/namespaces/default/secrets/site-tls", cert=a)[0] == 200
    assert call(srv, "GET", "/api/v1/namespaces/default/secrets/other-tls", cert=a)[0] == 403
    assert call(srv, "GET", "/api/v1/namespaces/default/secrets/db-password", cert=a)[0] == 403
    # Followed as kubelets follow Secrets: a list or watch that names the one Secret.
    named = "/api/v1/namespaces/default/secrets?fieldSelector=metadata.name%3D"
    status, body, _ = call(srv, "GET", named + "site-tls", cert=a)
    assert status == 200 and [i["metadata"]["name"] for i in body["items"]] == ["site-tls"], body
    assert call(srv, "GET", named + "site-tls&watch=true&timeoutSeconds=1", cert=a)[0] == 200
    for other in ("other-tls", "db-password", "site-tls,metadata.name%3Ddb-password", "site-tls,type%3DOpaque"):
        assert call(srv, "GET", named + other, cert=a)[0] == 403, other
    assert call(srv, "GET", "/api/v1/namespaces/default/secrets?fieldSelector=metadata.name!%3Dx", cert=a)[0] == 403
    # A node may read Ingresses but not make one that names a Secret it wants.
    forged = {"metadata": {"name": "grab"}, "spec": {"tls": [{"secretName": "b-only"}],
                                                     "defaultBackend": {"service": {"name": "x", "port": {"number": 80}}}}}
    assert call(srv, "POST", "/apis/networking.k8s.io/v1/namespaces/default/ingresses", forged, cert=a)[0] == 403
    assert call(srv, "GET", "/api/v1/namespaces/default/secrets/b-only", cert=a)[0] == 403
    assert call(srv, "GET", "/apis/networking.k8s.io/v1/ingresses", cert=a)[0] == 200


def test_impersonation_is_for_masters_and_gets_exactly_the_impersonated_rights(srv, admin, boards):
    a, _ = boards
    kubectl = os.path.join(kubectl_dir(), "kubectl.1.33")
    as_node = subprocess.run([kubectl, "--kubeconfig", srv.kubeconfig, "get", "secrets", "--as=system:node:board-b",
                              "--as-group=system:nodes"], capture_output=True, text=True)
    assert as_node.returncode != 0 and "forbidden" in as_node.stderr.lower(), as_node.stderr
    one = subprocess.run([kubectl, "--kubeconfig", srv.kubeconfig, "get", "secret", "b-only",
                          "--as=system:node:board-b", "--as-group=system:nodes", "-o", "name"],
                         capture_output=True, text=True)
    assert one.returncode == 0 and one.stdout.strip() == "secret/b-only", one.stderr
    status, body, _ = call(srv, "GET", "/api/v1/namespaces/default/secrets", cert=a,
                           headers={"Impersonate-User": "admin", "Impersonate-Group": "system:masters"})
    assert status == 403 and "impersonate" in body["message"], body


def test_a_token_never_hands_out_an_existing_nodes_identity(srv, boards):
    status, body, _ = join(srv, "board-a")
    assert status == 403 and "kubectl delete node board-a" in body["message"], body
    password = uuid.uuid4().hex
    assert join(srv, "board-new", password)[0] == 200
    assert join(srv, "board-new", password)[0] == 200, "the same board may join again"
    status, body, _ = call(srv, "POST", "/v1-bramble/node-credentials", {"nodeName": "x", "nodePassword": "p" * 20})
    assert status == 401, body
    # A Node that joined some other way (the server's own, or from before node passwords)
    # is not free for the token to take either.
    call(srv, "POST", "/api/v1/nodes", {"metadata": {"name": "made-by-admin"}}, cert=admin_of(srv))
    status, body, _ = join(srv, "made-by-admin")
    assert status == 403 and "no node password" in body["message"], body


def test_failed_joins_are_rate_limited_and_bodies_are_not_read_before_the_token(srv):
    # A deep YAML body from anyone without the token costs nothing: 401 at once.
    bomb = ("a:\n" + "".join(" " * i + f"k{i}:\n" for i in range(1, 3000))).encode()
    started = time.monotonic()
    try:
        status, body, _ = call(srv, "POST", "/v1-bramble/node-credentials", bomb, content_type="application/yaml",
                               headers={"Authorization": "Bearer wrong"})
        assert status in (401, 429), body
    except (ssl.SSLError, ConnectionError):
        pass  # refused and closed before the 4 MiB body was even sent: the body was never read
    assert time.monotonic() - started < 5
    assert call(srv, "GET", "/livez")[0] == 200
    statuses = [join(srv, "guess", token="wrong-secret")[0] for _ in range(12)]
    assert statuses[-1] == 429, statuses
    status, _, headers = join(srv, "guess", token="wrong-secret")
    assert status == 429 and int(headers["Retry-After"]) >= 1


def test_query_parameters_that_upstream_refuses_change_nothing(srv, admin):
    cm = {"metadata": {"name": "not-written"}, "data": {"a": "b"}}
    for q in ("dryRun=all", "dryRun=true", "fieldValidation=strict"):
        status, body, _ = call(srv, "POST", f"/api/v1/namespaces/default/configmaps?{q}", cm, cert=admin)
        assert status == 400, (q, body)
    assert call(srv, "GET", "/api/v1/namespaces/default/configmaps/not-written", cert=admin)[0] == 404
    for q in ("watch=yes", "timeoutSeconds=-1", "timeoutSeconds=soon", "resourceVersionMatch=exact"):
        assert call(srv, "GET", f"/api/v1/namespaces/default/configmaps?{q}", cert=admin)[0] == 400, q


def test_continue_tokens_cannot_be_forged(srv, admin):
    for i in range(3):
        call(srv, "POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": f"page-{i}"}}, cert=admin)
    status, page, _ = call(srv, "GET", "/api/v1/namespaces/default/configmaps?limit=1", cert=admin)
    token = page["metadata"]["continue"]
    assert call(srv, "GET", f"/api/v1/namespaces/default/configmaps?limit=1&continue={token}", cert=admin)[0] == 200
    forged = base64.urlsafe_b64encode(json.dumps({"v": 1, "start": "/registry/secrets/", "rv": -1}).encode())
    forged = forged.decode().rstrip("=")
    for t in (forged, forged + "." + token.split(".")[1]):
        status, body, _ = call(srv, "GET", f"/api/v1/namespaces/default/configmaps?continue={t}", cert=admin)
        assert status == 400, body


def test_bodies_nested_too_deep_are_refused(srv, admin):
    deep = '{"metadata": {"name": "deep"}, "data": {}, "x": ' + "[" * 5000 + "]" * 5000 + "}"
    status, body, _ = call(srv, "POST", "/api/v1/namespaces/default/configmaps", deep, cert=admin)
    assert status == 400 and "nests" in body["message"], body
    yaml_deep = "metadata:\n  name: deep\nx: " + "[" * 5000 + "]" * 5000 + "\n"
    status, body, _ = call(srv, "POST", "/api/v1/namespaces/default/configmaps", yaml_deep, cert=admin,
                           content_type="application/yaml")
    assert status == 400, body
    copies = [{"op": "add", "path": "/data", "value": {"a": "x" * 400_000}}] + \
             [{"op": "copy", "from": "/data/a", "path": f"/data/b{i}"} for i in range(18)]
    call(srv, "POST", "/api/v1/namespaces/default/configmaps", {"metadata": {"name": "grow"}}, cert=admin)
    status, body, _ = call(srv, "PATCH", "/api/v1/namespaces/default/configmaps/grow", json.dumps(copies),
                           cert=admin, content_type="application/json-patch+json")
    assert status == 413, body


def seconds_until_closed(server, alpn, first_bytes):
    """Opens a TLS connection with `alpn`, sends `first_bytes` and nothing more, and returns
    how long the server took to close it (anything it sent first must be a 408)."""
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    ctx = tls_context()
    ctx.set_alpn_protocols([alpn])
    tls = ctx.wrap_socket(raw)
    tls.sendall(first_bytes)
    started = time.monotonic()
    tls.settimeout(10)
    try:
        while data := tls.recv(1024):
            assert b"408" in data or alpn == "h2", data
    except (ConnectionResetError, ssl.SSLError):
        pass
    finally:
        tls.close()
    return time.monotonic() - started


def test_half_sent_requests_are_closed_after_the_header_timeout(srv):
    """The server was started with --request-header-timeout 2."""
    assert seconds_until_closed(srv, "http/1.1", b"GET /livez HTTP/1.1\r\nHost: x\r\n") < 8
    # HTTP/2: a connection that never finishes its preface is closed too.
    assert seconds_until_closed(srv, "h2", b"PRI * HTTP/2.0\r\n") < 8


def test_an_empty_token_is_refused_at_start():
    s = Server(extra_args=["--token", "  "])
    with pytest.raises(RuntimeError) as e:
        s.start()
    assert "--token is empty" in str(e.value)
    s.cleanup()


def admin_of(server):
    """The admin client certificate of `server`, from the kubeconfig it wrote."""
    d = tempfile.mkdtemp(prefix="admin-", dir=server.dir)
    out = subprocess.run([os.path.join(kubectl_dir(), "kubectl.1.33"), "--kubeconfig", server.kubeconfig, "config",
                          "view", "--raw", "-o", "json"], capture_output=True, text=True, check=True)
    user = json.loads(out.stdout)["users"][0]["user"]
    crt, key = os.path.join(d, "admin.crt"), os.path.join(d, "admin.key")
    with open(crt, "wb") as f:
        f.write(base64.b64decode(user["client-certificate-data"]))
    with open(key, "wb") as f:
        f.write(base64.b64decode(user["client-key-data"]))
    return crt, key


def test_the_encryption_key_is_never_replaced_silently_and_rotates():
    s = Server().start()
    try:
        kube = ["--kubeconfig", s.kubeconfig]
        def secret(name, value):
            status, body, _ = call(s, "POST", "/api/v1/namespaces/default/secrets",
                                   {"metadata": {"name": name}, "stringData": {"v": value}}, cert=admin_of(s))
            assert status == 201, body
        def read(name):
            status, body, _ = call(s, "GET", f"/api/v1/namespaces/default/secrets/{name}", cert=admin_of(s))
            assert status == 200, body
            return base64.b64decode(body["data"]["v"]).decode()
        secret("before", "plain-before-rotation")
        key = os.path.join(s.data_dir, "server", "store", "encryption.key")
        with open(key, "rb") as f:
            saved = f.read()
        s.stop()
        os.remove(key)
        with pytest.raises(RuntimeError) as e:
            s.start()
        assert "encryption.key is missing" in str(e.value)
        assert not os.path.exists(key), "no new key was made over the sealed Secrets"
        with open(key, "wb") as f:
            f.write(saved)
        os.chmod(key, 0o600)
        s.start()
        assert read("before") == "plain-before-rotation"

        status = subprocess.run([BIN, "secrets-encrypt", "status", *kube], capture_output=True, text=True)
        first = status.stdout.split("current key: ")[1].split()[0]
        rotated = subprocess.run([BIN, "secrets-encrypt", "rotate", *kube], capture_output=True, text=True)
        assert rotated.returncode == 0 and f"old keys (kept for reading): {first}" in rotated.stdout, rotated
        assert read("before") == "plain-before-rotation"
        secret("after", "plain-after-rotation")
        again = subprocess.run([BIN, "secrets-encrypt", "reencrypt", *kube], capture_output=True, text=True)
        assert again.returncode == 0 and "re-encrypted 1 secrets" in again.stdout, again
        s.stop()
        # Every Secret is sealed with the new key now: the old one is no longer needed.
        os.remove(key + ".old")
        s.start()
        assert read("before") == "plain-before-rotation" and read("after") == "plain-after-rotation"
        s.stop()
        for dirpath, _, files in os.walk(os.path.join(s.data_dir, "server", "store")):
            for n in files:
                with open(os.path.join(dirpath, n), "rb") as f:
                    data = f.read()
                assert b"plain-before-rotation" not in data and b"plain-after-rotation" not in data, n
    finally:
        s.cleanup()


PRIVILEGED_POD = """apiVersion: v1
kind: Pod
metadata: {name: root-grab}
spec:
  containers:
  - name: c
    image: busybox
    securityContext: {privileged: true}
    volumeMounts: [{name: root, mountPath: /host}]
  volumes: [{name: root, hostPath: {path: /}}]
"""

RESTRICTED_POD = """apiVersion: v1
kind: Pod
metadata: {name: well-behaved}
spec:
  securityContext: {runAsNonRoot: true, runAsUser: 1000, seccompProfile: {type: RuntimeDefault}}
  containers:
  - name: c
    image: busybox
    securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}
"""


def kubectl(server, version, *args, input=None):
    return subprocess.run([os.path.join(kubectl_dir(), f"kubectl.{version}"), "--kubeconfig", server.kubeconfig,
                           *args], input=input, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("version", ["1.27", "1.33"])
def test_pod_security_levels_enforce_and_warn_from_namespace_labels(srv, version):
    ns = f"psa-{version.replace('.', '')}"
    assert kubectl(srv, version, "create", "ns", ns).returncode == 0
    assert kubectl(srv, version, "label", "ns", ns, "pod-security.kubernetes.io/enforce=restricted",
                   "pod-security.kubernetes.io/warn=restricted").returncode == 0
    refused = kubectl(srv, version, "-n", ns, "apply", "-f", "-", input=PRIVILEGED_POD)
    assert refused.returncode != 0, refused.stdout
    assert 'violates PodSecurity "restricted:latest"' in refused.stderr and "privileged" in refused.stderr, \
        refused.stderr
    allowed = kubectl(srv, version, "-n", ns, "apply", "-f", "-", input=RESTRICTED_POD)
    assert allowed.returncode == 0, allowed.stderr
    deployment = kubectl(srv, version, "-n", ns, "create", "deployment", "web", "--image=busybox")
    assert deployment.returncode == 0 and 'would violate PodSecurity "restricted:latest"' in deployment.stderr, \
        deployment.stderr

    warned = f"{ns}-warn"
    kubectl(srv, version, "create", "ns", warned)
    kubectl(srv, version, "label", "ns", warned, "pod-security.kubernetes.io/warn=baseline")
    created = kubectl(srv, version, "-n", warned, "apply", "-f", "-", input=PRIVILEGED_POD)
    assert created.returncode == 0, created.stderr
    assert 'Warning: would violate PodSecurity "baseline:latest"' in created.stderr, created.stderr


def test_the_pod_security_default_applies_to_unlabelled_namespaces():
    s = Server(extra_args=["--pod-security-default", "baseline"]).start()
    try:
        refused = kubectl(s, "1.33", "apply", "-f", "-", input=PRIVILEGED_POD)
        assert refused.returncode != 0 and 'violates PodSecurity "baseline:latest"' in refused.stderr, refused.stderr
        kubectl(s, "1.33", "label", "ns", "default", "pod-security.kubernetes.io/enforce=privileged")
        assert kubectl(s, "1.33", "apply", "-f", "-", input=PRIVILEGED_POD).returncode == 0
    finally:
        s.cleanup()
    bad = subprocess.run([BIN, "server", "--pod-security-default", "lenient", "--data-dir", "/nonexistent"],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode != 0 and "not a PodSecurity level" in bad.stderr


def test_one_identity_cannot_hold_every_worker():
    s = Server(extra_args=["--max-requests-inflight", "1"]).start()
    try:
        cert = admin_of(s)
        slow = http.client.HTTPSConnection("127.0.0.1", s.port, context=tls_context(cert), timeout=30)
        slow.putrequest("POST", "/api/v1/namespaces/default/configmaps")
        slow.putheader("Content-Type", "application/json")
        slow.putheader("Content-Length", "1000")
        slow.endheaders()  # the body never comes: the request stays in flight
        time.sleep(0.5)
        status, body, headers = call(s, "GET", "/api/v1/namespaces/default/configmaps", cert=cert)
        assert status == 429 and headers["Retry-After"] == "1", body
        slow.close()
        deadline = time.time() + 10
        while call(s, "GET", "/api/v1/namespaces/default/configmaps", cert=cert)[0] != 200:
            assert time.time() < deadline, "the slot was never given back"
            time.sleep(0.1)
    finally:
        s.cleanup()


def test_one_identity_cannot_open_watches_without_end():
    s = Server(extra_args=["--max-watches", "2"]).start()
    try:
        cert = admin_of(s)

        def open_watch():
            conn = http.client.HTTPSConnection("127.0.0.1", s.port, context=tls_context(cert), timeout=30)
            conn.request("GET", "/api/v1/namespaces/default/configmaps?watch=true")
            return conn, conn.getresponse()
        held = [open_watch(), open_watch()]
        assert all(r.status == 200 for _, r in held)
        conn, third = open_watch()
        assert third.status == 429 and third.getheader("Retry-After") == "1", third.read()
        conn.close()
        held[0][0].close()
        deadline = time.time() + 10
        while True:
            conn, again = open_watch()
            conn.close()
            if again.status == 200:
                break
            assert time.time() < deadline, "a closed watch never gave its slot back"
            time.sleep(0.2)
        held[1][0].close()
    finally:
        s.cleanup()
