"""Certificates renew themselves while the cluster runs: with lifetimes of seconds
(`--certificate-lifetime`, `--certificate-renew-before`), the server's serving and admin
certificates and an agent's node certificate are each renewed several times over, open
connections carry on, and everything still works after every certificate first issued has
expired. The renewal endpoint refuses everyone but the node itself, and a deleted node."""
import base64
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import tempfile
import time

import pytest
import yaml
from kubernetes import client, config

from conftest import BIN, Server, wait_for
from test_multinode import remote_node, stop_agent  # noqa: F401 (remote_node: a fixture)

SHORT = ["--certificate-lifetime", "40s", "--certificate-renew-before", "30s"]


def serving_cert(port, host="127.0.0.1"):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=5) as raw, ctx.wrap_socket(raw) as tls:
        return tls.getpeercert(binary_form=True)


def kubeconfig_pair(path, into, tag):
    """The client certificate and key of a kubeconfig, written to files `tag.*` in `into`."""
    with open(path) as f:
        user = yaml.safe_load(f)["users"][0]["user"]
    files = []
    for field in ("client-certificate-data", "client-key-data"):
        name = os.path.join(into, f"{tag}.{field}")
        with open(name, "wb") as out:
            out.write(base64.b64decode(user[field]))
        files.append(name)
    return files


def renew(port, host, pair=None, token=None, csr=None):
    """POST /v1-bramble/node-certificate with a client certificate pair or a bearer token."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if pair:
        ctx.load_cert_chain(*pair)
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=10)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn.request("POST", "/v1-bramble/node-certificate", json.dumps({"certificateRequest": csr}), headers)
    r = conn.getresponse()
    return r.status, json.loads(r.read() or b"{}")


def certificate_request(tmp, cn):
    key, csr = os.path.join(tmp, f"{cn}.key"), os.path.join(tmp, f"{cn}.csr")
    subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", key, "-out", csr, "-subj", f"/CN={cn}/O=system:masters"],
                   check=True, capture_output=True)
    return open(csr).read()


def test_the_server_renews_its_certificates_without_dropping_connections():
    s = Server(extra_args=SHORT).start()
    try:
        first = serving_cert(s.port)
        api = config.new_client_from_config(config_file=s.kubeconfig)
        core = client.CoreV1Api(api)
        # A watch opened with the first certificates stays open across their renewal.
        w = subprocess.Popen([BIN, "kubectl", "--kubeconfig", s.kubeconfig, "get", "ns", "-w", "-o", "name"],
                             stdout=subprocess.PIPE, text=True)
        os.set_blocking(w.stdout.fileno(), False)
        wait_for(lambda: serving_cert(s.port) != first, timeout=30)
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="after-renewal")))
        seen = ""

        def watched():
            nonlocal seen
            seen += w.stdout.read() or ""
            return "namespace/after-renewal" in seen
        wait_for(watched, timeout=15)
        assert w.poll() is None, "the watch ended"
        w.terminate()
        w.wait()

        # Past the first certificates' 40 s: the kubeconfig the server rewrote still works.
        time.sleep(max(0, 45 - 15))
        out = subprocess.run([BIN, "kubectl", "--kubeconfig", s.kubeconfig, "get", "ns", "after-renewal"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        assert "renewed the server's certificates" in s.log()

        # `bramble certificate check` reads them; `rotate` renews at once through SIGHUP.
        check = subprocess.run([BIN, "certificate", "check", "-d", s.data_dir], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout
        for name in ("cluster CA", "API serving", "admin client"):
            assert name in check.stdout, check.stdout
        ca_days = float(next(l for l in check.stdout.splitlines() if l.startswith("cluster CA")).split()[-1])
        assert ca_days > 3600, "the CA lasts ten years"
        before = serving_cert(s.port)
        rotated = subprocess.run([BIN, "certificate", "rotate", "-d", s.data_dir], capture_output=True, text=True,
                                 timeout=60)
        assert rotated.returncode == 0 and "renewed by bramble" in rotated.stdout, rotated.stdout
        assert serving_cert(s.port) != before
        assert s.proc.poll() is None, "SIGHUP must not stop the server"
    finally:
        s.cleanup()


def test_an_agent_renews_its_node_certificate_through_the_api(remote_node):  # noqa: F811
    ns, host_ip, node_ip = remote_node
    server = Server(extra_args=["--tls-san", host_ip, *SHORT], bind="0.0.0.0").start()
    agent = None
    agent_dir = os.path.join(server.dir, "agent-node")
    tmp = tempfile.mkdtemp(dir=server.dir)
    try:
        token = open(os.path.join(server.data_dir, "server", "node-token")).read().strip()
        log = open(os.path.join(server.dir, "agent.log"), "wb")
        agent = subprocess.Popen(["nsenter", f"--net=/run/netns/{ns}", BIN, "agent", "--server",
                                  f"https://{host_ip}:{server.port}", "--token", token, "--data-dir", agent_dir,
                                  "--node-name", "worker-1", "--pod-log-dir", os.path.join(server.dir, "wl"),
                                  "--kubelet-port", "10350", "--ingress-http-port", "0", "--ingress-https-port", "0",
                                  *SHORT], stdout=log, stderr=subprocess.STDOUT)
        kubeconfig = os.path.join(agent_dir, "agent", "kubeconfig.yaml")

        def admin():
            # Read each time: the server renews the admin certificate in its kubeconfig too.
            return client.CoreV1Api(config.new_client_from_config(config_file=server.kubeconfig))
        wait_for(lambda: admin().read_node("worker-1"), timeout=30)
        first = open(kubeconfig).read()
        wait_for(lambda: open(kubeconfig).read() != first, timeout=30)
        # Past the first node certificate's 40 s, the node still renews its Lease.
        time.sleep(30)

        def renewed_lately():
            lease = client.CoordinationV1Api(admin().api_client).read_namespaced_lease("worker-1", "kube-node-lease")
            age = time.time() - lease.spec.renew_time.timestamp()
            return age < 15
        wait_for(renewed_lately, timeout=20)
        assert "renewed the node certificate" in open(os.path.join(server.dir, "agent.log")).read()

        # Hostile callers: another identity, a token, a request that is not one.
        node_pair = kubeconfig_pair(kubeconfig, tmp, "node")
        admin_pair = kubeconfig_pair(server.kubeconfig, tmp, "admin")
        csr = certificate_request(tmp, "system:node:server-1")
        status, body = renew(server.port, host_ip, pair=node_pair, csr=csr)
        assert status == 200, body
        issued = subprocess.run(["openssl", "x509", "-noout", "-subject"], input=body["certificate"],
                                capture_output=True, text=True).stdout
        assert "system:node:worker-1" in issued and "masters" not in issued, issued
        status, body = renew(server.port, host_ip, pair=admin_pair, csr=csr)
        assert status == 403 and "only a node" in body["message"], body
        status, body = renew(server.port, host_ip, token=token, csr=csr)
        assert status == 403, body
        status, body = renew(server.port, host_ip, pair=node_pair, csr="-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n")
        assert status == 400 and "certificateRequest" in body["message"], body

        # A deleted node is no longer a member: its certificate renews nothing.
        agent.send_signal(signal.SIGTERM)
        agent.wait(timeout=15)
        agent = None
        node_pair = kubeconfig_pair(kubeconfig, tmp, "node")
        admin().delete_node("worker-1")
        wait_for(lambda: renew(server.port, host_ip, pair=node_pair, csr=csr)[0] == 403, timeout=10)
        assert "no longer a member" in renew(server.port, host_ip, pair=node_pair, csr=csr)[1]["message"]
    finally:
        stop_agent(agent, ns, agent_dir, os.path.join(server.dir, "wl"))
        server.cleanup()


@pytest.mark.parametrize("flag", ["--certificate-lifetime"])
def test_the_lifetime_flags_are_checked(flag):
    out = subprocess.run([BIN, "server", flag, "forever"], capture_output=True, text=True)
    assert out.returncode == 2 and "duration" in out.stderr, out.stderr
