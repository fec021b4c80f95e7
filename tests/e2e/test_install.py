"""install.sh and the systemd units, for real: a Debian bookworm root file system made by
mmdebstrap boots its own systemd under systemd-nspawn, in a network namespace of its own
(a veth pair to the host, with an address and a default route, so the node has one).
The installer runs inside it with the binary under test (INSTALL_BRAMBLE_BINARY, the
air-gapped path), then the tests check what systemd and journald see, that pods outlive a
restart of the service, and that the uninstaller leaves nothing behind.

Everything made here (the booted machine, its root, the network namespace, the cgroups) is
removed at the end, also when a test fails. The root file system tarball is cached in
$BRAMBLE_TEST_CACHE (/var/cache/bramble-tests) between runs.
"""
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest

from conftest import BIN, ROOT, drop_busybox, wait_for

CACHE = os.environ.get("BRAMBLE_TEST_CACHE", "/var/cache/bramble-tests")
PACKAGES = "systemd,systemd-sysv,dbus,iproute2,nftables,libseccomp2,procps,kmod"
# A subnet of this run's own (the multi-node tests use 10.251.0.0/16).
SUBNET = 1 + os.getpid() % 250
HOST_IP, NODE_IP = f"10.252.{SUBNET}.1", f"10.252.{SUBNET}.2"
# Where systemd-nspawn makes its `payload` and `supervisor` groups (v1: the named systemd
# hierarchy and the unified one beside it; v2: the root).
NSPAWN_HIERARCHIES = ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified", "/sys/fs/cgroup")


def rootfs_tarball():
    """A minimal bookworm with systemd, made once (about 20 s) and kept."""
    os.makedirs(CACHE, exist_ok=True)
    tar = os.path.join(CACHE, "bookworm-systemd.tar")
    if not os.path.exists(tar):
        tmp = tar + ".part"
        subprocess.run(["mmdebstrap", "--quiet", "--format=tar", "--variant=minbase", f"--include={PACKAGES}", "bookworm", tmp],
                       check=True, timeout=600)
        os.rename(tmp, tar)
    return tar


def cgroup_of_our_own(name):
    """A cgroup for the booted machine's payload (`--keep-unit` runs it in ours), in the
    hierarchy systemd tracks processes in: v1's name=systemd or the v2 tree."""
    for base in ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified", "/sys/fs/cgroup"):
        if os.path.exists(os.path.join(base, "cgroup.procs")):
            path = os.path.join(base, name)
            os.makedirs(path, exist_ok=True)
            return path
    raise RuntimeError("no cgroup hierarchy to run the machine in")


class Machine:
    """A booted Debian under systemd-nspawn; `sh` runs a command inside it."""

    def __init__(self):
        self.name = f"bri{os.getpid() % 100000}"
        self.netns = f"bramble-inst-{os.getpid()}"
        self.host_if = f"brinst{os.getpid() % 100000}"
        self.root = tempfile.mkdtemp(prefix="bramble-machine-", dir="/var/tmp")
        self.cgroup = None
        self.nspawn_groups = []
        self.proc = None
        self.log = os.path.join(self.root + ".log")

    def boot(self):
        subprocess.run(["tar", "-xf", rootfs_tarball(), "-C", self.root], check=True)
        # The test busybox image, where the agent imports archives at its first start.
        drop_busybox(os.path.join(self.root, "var", "lib", "bramble"))
        shutil.copy(BIN, os.path.join(self.root, "root", "bramble"))
        shutil.copy(os.path.join(ROOT, "install.sh"), os.path.join(self.root, "root", "install.sh"))
        for cmd in (["ip", "netns", "add", self.netns],
                    ["ip", "-n", self.netns, "link", "set", "lo", "up"],
                    ["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", "eth0", "netns", self.netns],
                    ["ip", "addr", "add", f"{HOST_IP}/24", "dev", self.host_if],
                    ["ip", "link", "set", self.host_if, "up"],
                    ["ip", "-n", self.netns, "addr", "add", f"{NODE_IP}/24", "dev", "eth0"],
                    ["ip", "-n", self.netns, "link", "set", "eth0", "up"],
                    ["ip", "-n", self.netns, "route", "add", "default", "via", HOST_IP]):
            subprocess.run(cmd, check=True)
        self.cgroup = cgroup_of_our_own(f"bramble-install-test-{os.getpid()}")
        self.nspawn_groups = [os.path.join(base, g) for base in NSPAWN_HIERARCHIES for g in ("payload", "supervisor")
                              if os.path.isdir(base) and not os.path.exists(os.path.join(base, g))]
        procs = os.path.join(self.cgroup, "cgroup.procs")

        def enter_cgroup():
            with open(procs, "w") as f:
                f.write(str(os.getpid()))
            import ctypes
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["systemd-nspawn", "--quiet", "-D", self.root, "-b", "--keep-unit", "--register=no",
                 "-M", self.name, f"--network-namespace-path=/run/netns/{self.netns}", "--capability=all"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, preexec_fn=enter_cgroup)
        wait_for(self.booted, timeout=60)
        # nspawn mounts the v1 controllers read-only; the agent makes pod cgroups in them.
        self.sh("for c in /sys/fs/cgroup/*; do "
                "  mountpoint -q $c && case $c in */systemd|*/unified) ;; *) mount -o remount,bind,rw $c;; esac; "
                "done; mount -o remount,rw /sys/fs/cgroup 2>/dev/null; true")
        return self

    def init_pid(self):
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True).stdout.split()
        return out[0] if out else None

    def booted(self):
        if self.proc.poll() is not None:
            raise RuntimeError("the machine stopped:\n" + open(self.log, errors="replace").read()[-3000:])
        if not self.init_pid():
            return False
        state = self.sh("systemctl is-system-running", check=False).stdout.strip()
        return state in ("running", "degraded")

    def sh(self, script, check=True, timeout=120, env=None):
        pid = self.init_pid()
        prefix = " ".join(f"{k}='{v}'" for k, v in (env or {}).items())
        r = subprocess.run(["nsenter", "-t", pid, "-m", "-u", "-i", "-n", "-p", "-r", "-w", "--",
                            "/usr/bin/env", "-i", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                            "/bin/sh", "-c", f"{prefix} {script}" if prefix else script],
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"{script!r} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
        return r

    def shutdown(self):
        if self.proc and self.proc.poll() is None:
            init = self.init_pid()
            if init:
                self.sh("/usr/local/bin/bramble-killall.sh", check=False, timeout=120)
                # The machine's init, not nspawn: killing it ends every process of the
                # machine (its PID namespace), and nspawn with it. Killing nspawn alone
                # would leave the machine running, holding its network namespace.
                os.kill(int(init), signal.SIGKILL)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        # Children first: whatever the machine made below its cgroup, and the `payload` and
        # `supervisor` groups nspawn makes on cgroup v1 when they were not there before.
        for top in [self.cgroup] + self.nspawn_groups:
            for dirpath, _, _ in sorted(os.walk(top) if top else [], key=lambda w: -len(w[0])):
                try:
                    os.rmdir(dirpath)
                except OSError:
                    pass
        # Mounts the machine's pods left (a failed test), then the tree.
        mounts = [line.split()[1] for line in open("/proc/self/mounts")]
        for m in sorted((m for m in mounts if m.startswith(self.root + "/")), key=len, reverse=True):
            subprocess.run(["umount", "-l", m], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)
        try:
            os.remove(self.log)
        except OSError:
            pass


@pytest.fixture(scope="module")
def machine():
    for tool in ("mmdebstrap", "systemd-nspawn"):
        if not shutil.which(tool):
            pytest.fail(f"{tool} is missing: scripts/test installs it (mmdebstrap, systemd-container)")
    m = Machine()
    try:
        yield m.boot()
    finally:
        m.shutdown()


def journal(machine, unit):
    out = machine.sh(f"journalctl -u {unit} -o json --no-pager", check=False).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def test_install_runs_a_server_that_systemd_and_journald_understand(machine):
    out = machine.sh("INSTALL_BRAMBLE_BINARY=/root/bramble INSTALL_BRAMBLE_EXEC='server --ingress-http-port 0 "
                     "--ingress-https-port 0' sh /root/install.sh", timeout=180).stdout
    assert "starting bramble" in out, out
    # Type=notify: `active` only once the server said READY=1.
    assert machine.sh("systemctl is-active bramble", check=False).stdout.strip() == "active", \
        machine.sh("systemctl status bramble --no-pager; journalctl -u bramble --no-pager | tail -40", check=False).stdout
    show = machine.sh("systemctl show bramble -p StatusText -p WatchdogUSec -p Delegate -p KillMode "
                      "-p ExecMainPID -p NRestarts").stdout
    assert "StatusText=serving the API on port 6443" in show, show
    assert "WatchdogUSec=1min" in show and "Delegate=yes" in show and "KillMode=process" in show, show
    unit = machine.sh("cat /etc/systemd/system/bramble.service").stdout
    assert "ExecStart=/usr/local/bin/bramble server --ingress-http-port 0 --ingress-https-port 0" in unit, unit
    assert machine.sh("stat -c %a /etc/bramble/config.yaml").stdout.strip() == "600"
    assert machine.sh("readlink /usr/local/bin/kubectl").stdout.strip() == "bramble"

    # Structured entries from tracing-journald, not text lines on stderr.
    entries = journal(machine, "bramble")
    ready = [e for e in entries if e.get("MESSAGE") == "bramble server is ready"]
    assert ready, [e.get("MESSAGE") for e in entries][-20:]
    e = ready[-1]
    assert e["SYSLOG_IDENTIFIER"] == "bramble" and e["PRIORITY"] == "6", e
    assert e["TARGET"] == "bramble::cli::server" and e["AGENT"] == "true" and "NODE" in e, e
    assert "CODE_FILE" in e and "CODE_LINE" in e, e

    # The node registers and goes Ready; the kubectl link is the built-in kubectl.
    wait_for(lambda: " Ready" in machine.sh("kubectl get nodes", check=False).stdout, timeout=90)

    # From another machine (here, the host with the real kubectl), with the kubeconfig the
    # board prints for its LAN address: the serving certificate covers that address.
    assert "bramble kubeconfig --server" in machine.sh("cat /etc/bramble/bramble.yaml").stdout
    remote = machine.sh(f"bramble kubeconfig --server https://{NODE_IP}:6443").stdout
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        f.write(remote)
        f.flush()
        out = subprocess.run(["kubectl", "--kubeconfig", f.name, "get", "nodes"], capture_output=True, text=True,
                             timeout=30)
    assert out.returncode == 0 and "Ready" in out.stdout, out.stderr


def test_config_yaml_and_drop_ins_reach_the_server(machine):
    machine.sh("printf 'node-label:\\n  - from=config\\n' >> /etc/bramble/config.yaml; "
               "printf 'node-label+: [dropin=yes]\\nlog-level: debug\\n' > /etc/bramble/config.yaml.d/50-test.yaml; "
               "systemctl restart bramble")
    assert machine.sh("systemctl is-active bramble", check=False).stdout.strip() == "active"
    wait_for(lambda: "dropin=yes" in machine.sh("kubectl get nodes --show-labels", check=False).stdout, timeout=60)
    labels = machine.sh("kubectl get nodes --show-labels").stdout
    assert "from=config" in labels, labels
    # log-level: debug from the drop-in: debug lines reach the journal.
    assert any(e.get("PRIORITY") == "7" for e in journal(machine, "bramble")), "no debug entry in the journal"
    machine.sh("rm /etc/bramble/config.yaml.d/50-test.yaml")
    # A bad key stops the start with the file and the key named, in the journal.
    machine.sh("echo 'data_dir: /x' > /etc/bramble/config.yaml.d/90-bad.yaml; systemctl restart bramble", check=False)
    wait_for(lambda: "`data_dir` is not a flag of `bramble server`" in
             machine.sh("journalctl -u bramble --no-pager", check=False).stdout, timeout=30)
    machine.sh("rm /etc/bramble/config.yaml.d/90-bad.yaml; systemctl reset-failed bramble; systemctl restart bramble")
    assert machine.sh("systemctl is-active bramble", check=False).stdout.strip() == "active"


POD = """apiVersion: v1
kind: Pod
metadata: {name: keeper}
spec:
  containers:
  - name: c
    image: bramble.test/busybox:1
    command: ["sh", "-c", "echo started; sleep 3600"]
"""


def test_pods_outlive_a_restart_of_the_service(machine):
    machine.sh(f"cat > /root/pod.yaml <<'EOF'\n{POD}EOF\nkubectl apply -f /root/pod.yaml")
    wait_for(lambda: machine.sh("kubectl get pod keeper -o jsonpath={.status.phase}", check=False).stdout == "Running",
             timeout=120)
    before = machine.sh("pgrep -f '[s]leep 3600'").stdout.split()
    assert before
    main_before = machine.sh("systemctl show bramble -p ExecMainPID --value").stdout.strip()
    machine.sh("systemctl restart bramble")
    assert machine.sh("systemctl show bramble -p ExecMainPID --value").stdout.strip() != main_before
    # STOPPING=1 and the reason reached systemd and the journal on the way down.
    assert any(e.get("MESSAGE") == "stopping" for e in journal(machine, "bramble"))
    assert machine.sh("pgrep -f '[s]leep 3600'").stdout.split() == before, "the container was restarted"
    time.sleep(3)
    pod = json.loads(machine.sh("kubectl get pod keeper -o json").stdout)
    assert pod["status"]["phase"] == "Running", pod["status"]
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0, pod["status"]


def test_uninstall_leaves_nothing_behind(machine):
    machine.sh("/usr/local/bin/bramble-uninstall.sh --data", timeout=180)
    left = machine.sh(
        "ls /usr/local/bin; ls /etc/systemd/system | grep bramble; ls -d /etc/bramble /var/lib/bramble /run/bramble "
        "/var/log/pods 2>/dev/null; grep bramble /proc/self/mounts; ip -o link | grep bramble; "
        "nft list tables | grep bramble; "
        "find /sys/fs/cgroup -maxdepth 4 -path \"*/bramble/$(hostname)*\"", check=False).stdout
    assert left.strip() == "", left
    # Its own line: the script above names what it looks for.
    processes = machine.sh("pgrep -fa '[b]ramble|[s]leep 3600'", check=False).stdout
    assert processes.strip() == "", processes
    assert machine.sh("systemctl is-active bramble", check=False).stdout.strip() in ("inactive", "unknown")
