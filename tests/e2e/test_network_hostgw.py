"""Pods across nodes with the host-gw backend (plain routes between nodes on one L2), for
boards whose kernel has no vxlan: the same two-node layout as test_network.py."""
import os
import shutil
import subprocess

import pytest

from test_network import WEB, Cluster, log_of, routes_in
from conftest import wait_for

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("nft"),
                                reason="needs root, iproute2 and nftables")


def test_host_gw_carries_pods_across_nodes():
    c = Cluster("host-gw")
    try:
        c.start()
        a = c.pod("gw-a", c.names[0], WEB)
        b = c.pod("gw-b", c.names[1], f"{WEB.replace('exec httpd -f', 'httpd')}; while true; do "
                                      f"wget -q -O - http://{a.status.pod_ip}:8080/cgi-bin/who; sleep 1; done")
        wait_for(lambda: f"{b.status.pod_ip} gw-a" in log_of(c, "gw-b"), timeout=30)
        assert f"{c.core.read_node(c.names[1]).spec.pod_cidr} via {c.node_ip}" in routes_in()
        assert "bramble.vxlan" not in subprocess.run(["ip", "link"], capture_output=True, text=True).stdout
    finally:
        c.cleanup()
