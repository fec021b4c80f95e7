"""Helm through its own Go SDK (PyPI's helm-sdkpy bundles it): a chart the test writes (a
Deployment, a Service, a ConfigMap, a Secret and a post-install/upgrade Job hook)
installs with wait, upgrades, rolls back and uninstalls on a node running real
containers, with client-side and with server-side apply."""
import asyncio
import os
import textwrap
import time
import warnings

import pytest
from kubernetes import client, config

from conftest import node_with_busybox, wait_for

helm = pytest.importorskip("helm_sdkpy", reason="pip install --ignore-requires-python helm-sdkpy cffi")

NODE = "helm-1"

CHART = {
    "Chart.yaml": """
        apiVersion: v2
        name: greeter
        version: 0.1.0
        appVersion: "1"
    """,
    "values.yaml": """
        replicas: 2
        message: hello
    """,
    "templates/configmap.yaml": """
        apiVersion: v1
        kind: ConfigMap
        metadata:
          name: {{ .Release.Name }}-config
        data:
          message: {{ .Values.message | quote }}
    """,
    "templates/secret.yaml": """
        apiVersion: v1
        kind: Secret
        metadata:
          name: {{ .Release.Name }}-secret
        stringData:
          token: "s3cret-{{ .Release.Revision }}"
    """,
    "templates/service.yaml": """
        apiVersion: v1
        kind: Service
        metadata:
          name: {{ .Release.Name }}
        spec:
          selector:
            app: {{ .Release.Name }}
          ports:
          - port: 80
            targetPort: 8080
    """,
    "templates/deployment.yaml": """
        apiVersion: apps/v1
        kind: Deployment
        metadata:
          name: {{ .Release.Name }}
        spec:
          replicas: {{ .Values.replicas }}
          selector:
            matchLabels:
              app: {{ .Release.Name }}
          template:
            metadata:
              labels:
                app: {{ .Release.Name }}
              annotations:
                checksum/config: {{ .Values.message | sha256sum }}
            spec:
              terminationGracePeriodSeconds: 1
              containers:
              - name: main
                image: bramble.test/busybox:1
                imagePullPolicy: Never
                command: ["sh", "-c", "echo $MESSAGE; trap 'exit 0' TERM; sleep 3600 & wait"]
                env:
                - name: MESSAGE
                  valueFrom:
                    configMapKeyRef:
                      name: {{ .Release.Name }}-config
                      key: message
    """,
    "templates/hook-job.yaml": """
        apiVersion: batch/v1
        kind: Job
        metadata:
          name: {{ .Release.Name }}-hook
          annotations:
            "helm.sh/hook": post-install,post-upgrade
            "helm.sh/hook-delete-policy": before-hook-creation
        spec:
          backoffLimit: 1
          template:
            spec:
              restartPolicy: Never
              containers:
              - name: hook
                image: bramble.test/busybox:1
                imagePullPolicy: Never
                command: ["sh", "-c", "echo migrated"]
    """,
}


@pytest.fixture(scope="module")
def node():
    s = node_with_busybox(NODE)
    try:
        core = client.CoreV1Api(config.new_client_from_config(config_file=s.kubeconfig))
        wait_for(lambda: any(c.type == "Ready" and c.status == "True"
                             for c in (core.read_node(NODE).status.conditions or [])), timeout=30)
        yield s
    finally:
        s.cleanup()


@pytest.fixture
def chart(node):
    root = os.path.join(node.dir, f"chart-{time.time_ns()}")
    for path, text in CHART.items():
        full = os.path.join(root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as f:
            f.write(textwrap.dedent(text).lstrip())
    return root


@pytest.mark.parametrize("ssa", [False, True], ids=["client-side-apply", "server-side-apply"])
def test_install_upgrade_rollback_uninstall(node, chart, ssa):
    ns = f"helm-{'ssa' if ssa else 'csa'}"
    api = config.new_client_from_config(config_file=node.kubeconfig)
    core, apps, batch = client.CoreV1Api(api), client.AppsV1Api(api), client.BatchV1Api(api)
    core.create_namespace({"metadata": {"name": ns}})
    cfg = helm.Configuration(namespace=ns, kubeconfig=node.kubeconfig)
    release = "web"

    async def flow():
        installed = await helm.Install(cfg).run(release, chart, {"message": "hello"}, wait=True, wait_for_jobs=True,
                                                timeout=120, server_side_apply=ssa)
        assert installed["info"]["status"] == "deployed", installed
        d = apps.read_namespaced_deployment(release, ns)
        assert (d.status.ready_replicas, d.status.available_replicas) == (2, 2)
        assert core.read_namespaced_config_map(f"{release}-config", ns).data["message"] == "hello"
        assert core.read_namespaced_service(release, ns).spec.cluster_ip
        hook = batch.read_namespaced_job(f"{release}-hook", ns)
        assert hook.status.succeeded == 1
        secrets = core.list_namespaced_secret(ns, label_selector="owner=helm").items
        assert [s.metadata.labels["version"] for s in secrets] == ["1"]

        upgraded = await helm.Upgrade(cfg).run(release, chart, {"message": "bonjour", "replicas": 3}, wait=True,
                                               wait_for_jobs=True, timeout=120)
        assert upgraded["info"]["status"] == "deployed", upgraded
        assert upgraded["version"] == 2
        d = apps.read_namespaced_deployment(release, ns)
        assert d.spec.replicas == 3 and d.status.available_replicas == 3
        assert d.metadata.annotations["deployment.kubernetes.io/revision"] == "2", "the new template rolled out"
        assert core.read_namespaced_config_map(f"{release}-config", ns).data["message"] == "bonjour"

        try:
            await helm.Rollback(cfg).run(release, 1)
        except helm.RollbackError as e:
            # helm-sdkpy 0.1.32's Rollback applies revision 1 but never sets Helm 4's wait
            # strategy, so it fails when it starts waiting and leaves the release
            # pending-rollback. What the cluster did is checked below all the same.
            if "wait strategy not set" not in str(e):
                raise
            warnings.warn(f"helm-sdkpy's Rollback cannot wait: {e}")
        history = await helm.History(cfg).run(release)
        assert [h["version"] for h in history][-1] == 3
        wait_for(lambda: apps.read_namespaced_deployment(release, ns).spec.replicas == 2, 30)
        assert core.read_namespaced_config_map(f"{release}-config", ns).data["message"] == "hello"
        wait_for(lambda: (d := apps.read_namespaced_deployment(release, ns)).status.available_replicas == 2
                 and d.status.updated_replicas == 2 and d.status.replicas == 2, 60)

        await helm.Uninstall(cfg).run(release, wait=True, timeout=120)
        assert not apps.list_namespaced_deployment(ns).items
        assert not core.list_namespaced_service(ns).items
        assert not [s for s in core.list_namespaced_secret(ns).items if s.metadata.name.startswith(release)]
        wait_for(lambda: not core.list_namespaced_pod(ns, label_selector=f"app={release}").items, 60)

    try:
        asyncio.run(flow())
    finally:
        core.delete_namespace(ns)


INGRESS_CHART = {
    "Chart.yaml": """
        apiVersion: v2
        name: site
        version: 0.1.0
    """,
    "values.yaml": """
        host: site.example
        tls:
          crt: ""
          key: ""
    """,
    "templates/tls.yaml": """
        apiVersion: v1
        kind: Secret
        metadata:
          name: {{ .Release.Name }}-tls
        type: kubernetes.io/tls
        data:
          tls.crt: {{ .Values.tls.crt | b64enc }}
          tls.key: {{ .Values.tls.key | b64enc }}
    """,
    "templates/service.yaml": """
        apiVersion: v1
        kind: Service
        metadata:
          name: {{ .Release.Name }}
        spec:
          selector:
            app: {{ .Release.Name }}
          ports:
          - name: http
            port: 80
            targetPort: http
    """,
    "templates/deployment.yaml": """
        apiVersion: apps/v1
        kind: Deployment
        metadata:
          name: {{ .Release.Name }}
        spec:
          replicas: 1
          selector:
            matchLabels:
              app: {{ .Release.Name }}
          template:
            metadata:
              labels:
                app: {{ .Release.Name }}
            spec:
              terminationGracePeriodSeconds: 1
              containers:
              - name: web
                image: bramble.test/busybox:1
                imagePullPolicy: Never
                command: ["sh", "-c", "echo {{ .Release.Name }} > /www/index.html; exec httpd -f -p 8080 -h /www"]
                ports:
                - name: http
                  containerPort: 8080
                readinessProbe:
                  httpGet:
                    path: /
                    port: http
                  periodSeconds: 1
    """,
    "templates/ingress.yaml": """
        apiVersion: networking.k8s.io/v1
        kind: Ingress
        metadata:
          name: {{ .Release.Name }}
          annotations:
            nginx.ingress.kubernetes.io/force-ssl-redirect: "true"
        spec:
          tls:
          - hosts: [{{ .Values.host | quote }}]
            secretName: {{ .Release.Name }}-tls
          rules:
          - host: {{ .Values.host | quote }}
            http:
              paths:
              - path: /
                pathType: Prefix
                backend:
                  service:
                    name: {{ .Release.Name }}
                    port:
                      name: http
    """,
}


def test_a_chart_with_an_ingress_and_tls_serves_over_https(node):
    """The chart a user brings for a web app: a Deployment, a Service and an Ingress with a
    TLS Secret; once installed with wait it answers on the node's port 443 with that
    certificate, and plain HTTP is redirected."""
    import http.client
    import socket
    import ssl
    import subprocess
    root = os.path.join(node.dir, f"chart-ingress-{time.time_ns()}")
    for path, text in INGRESS_CHART.items():
        full = os.path.join(root, path)
        os.makedirs(os.path.dirname(full), exist_ok=True)
        with open(full, "w") as f:
            f.write(textwrap.dedent(text).lstrip())
    crt, key = os.path.join(node.dir, "site.crt"), os.path.join(node.dir, "site.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-keyout", key, "-out", crt, "-days", "2", "-subj", "/CN=site.example",
                    "-addext", "subjectAltName=DNS:site.example"], check=True, capture_output=True)
    with open(crt) as c, open(key) as k:
        values = {"tls": {"crt": c.read(), "key": k.read()}}
    ns = "helm-ingress"
    api = config.new_client_from_config(config_file=node.kubeconfig)
    core, net = client.CoreV1Api(api), client.NetworkingV1Api(api)
    core.create_namespace({"metadata": {"name": ns}})
    cfg = helm.Configuration(namespace=ns, kubeconfig=node.kubeconfig)

    def get(tls):
        if tls:
            ctx = ssl.create_default_context(cafile=crt)
            conn = http.client.HTTPSConnection("127.0.0.1", 443, timeout=5, context=ctx)
            conn.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", 443), timeout=5),
                                        server_hostname="site.example")
        else:
            conn = http.client.HTTPConnection("127.0.0.1", 80, timeout=5)
        try:
            conn.request("GET", "/", headers={"Host": "site.example"})
            r = conn.getresponse()
            return r.status, r.headers.get("location"), r.read().decode().strip()
        finally:
            conn.close()

    def served():
        try:
            return (r := get(True))[0] == 200 and r
        except (OSError, ssl.SSLError):
            return None

    async def flow():
        installed = await helm.Install(cfg).run("site", root, values, wait=True, timeout=120)
        assert installed["info"]["status"] == "deployed", installed
        assert net.read_namespaced_ingress("site", ns).spec.ingress_class_name == "bramble"
        assert wait_for(served, timeout=30)[2] == "site"
        assert get(False)[:2] == (308, "https://site.example/")
        await helm.Uninstall(cfg).run("site", wait=True, timeout=120)
        assert not net.list_namespaced_ingress(ns).items

    try:
        asyncio.run(flow())
    finally:
        core.delete_namespace(ns)
