#!/bin/sh
# Installs bramble as a systemd service, the way k3s's installer does:
#
#   curl -sfL https://get.example/install.sh | sh -                        # a server
#   curl -sfL ... | BRAMBLE_URL=https://10.0.0.2:6443 BRAMBLE_TOKEN=... sh - # an agent
#   INSTALL_BRAMBLE_BINARY=./bramble-aarch64 sh install.sh                   # air-gapped
#
# Environment:
#   BRAMBLE_URL                  the server an agent joins (implies INSTALL_BRAMBLE_EXEC=agent)
#   BRAMBLE_TOKEN                the join token (a server's own, or the one an agent presents)
#   INSTALL_BRAMBLE_EXEC         `server` or `agent`, optionally followed by flags for it
#   INSTALL_BRAMBLE_BINARY       a local binary to install instead of downloading one
#   INSTALL_BRAMBLE_DOWNLOAD_URL where `bramble-<arch>` and `sha256sum.txt` are downloaded from
#   INSTALL_BRAMBLE_BIN_DIR      where the binary and scripts go (/usr/local/bin)
#   INSTALL_BRAMBLE_SYSTEMD_DIR  where the unit goes (/etc/systemd/system)
#   INSTALL_BRAMBLE_SKIP_START   `true`: install and enable, do not start
#   INSTALL_BRAMBLE_SKIP_ENABLE  `true`: install only (implies SKIP_START)
#   INSTALL_BRAMBLE_SYMLINK      `skip`: no kubectl link; `force`: replace an existing kubectl
#
# It installs the binary for this machine (`uname -m`), a `kubectl` link to it, the unit,
# /etc/bramble/config.yaml (when there is none) and bramble-killall.sh and
# bramble-uninstall.sh, which remove everything it installed.
set -eu

info() { echo "[bramble] $*"; }
fatal() { echo "[bramble] error: $*" >&2; exit 1; }

BIN_DIR=${INSTALL_BRAMBLE_BIN_DIR:-/usr/local/bin}
SYSTEMD_DIR=${INSTALL_BRAMBLE_SYSTEMD_DIR:-/etc/systemd/system}
CONFIG_DIR=/etc/bramble
DATA_DIR=/var/lib/bramble
SKIP_ENABLE=${INSTALL_BRAMBLE_SKIP_ENABLE:-false}
SKIP_START=${INSTALL_BRAMBLE_SKIP_START:-$SKIP_ENABLE}

[ "$(id -u)" = 0 ] || fatal "run as root (sudo sh install.sh)"
[ -d /run/systemd/system ] || fatal "systemd is not running here: start bramble by hand (bramble server) or under your init system"

case "$(uname -m)" in
    x86_64 | amd64) ARCH=x86_64 ;;
    aarch64 | arm64) ARCH=aarch64 ;;
    armv7l | armv8l) ARCH=armv7 ;;
    armv6l) fatal "ARMv6 boards (Pi 1, Pi Zero W) are not supported: use a Pi Zero 2 W, Pi 3 or later" ;;
    *) fatal "no bramble build for $(uname -m)" ;;
esac

# What to run: `server` unless an agent's server is given.
EXEC=${INSTALL_BRAMBLE_EXEC:-}
if [ -z "$EXEC" ]; then
    if [ -n "${BRAMBLE_URL:-}" ]; then EXEC=agent; else EXEC=server; fi
fi
ROLE=${EXEC%% *}
case "$ROLE" in
    server) UNIT=bramble ;;
    agent)
        UNIT=bramble-agent
        [ -n "${BRAMBLE_URL:-}" ] || grep -qs '^server:' "$CONFIG_DIR/config.yaml" ||
            fatal "an agent needs BRAMBLE_URL (https://SERVER:6443) and BRAMBLE_TOKEN"
        [ -n "${BRAMBLE_TOKEN:-}" ] || grep -qs '^token:' "$CONFIG_DIR/config.yaml" ||
            fatal "an agent needs BRAMBLE_TOKEN (the server's /var/lib/bramble/server/node-token)"
        ;;
    *) fatal "INSTALL_BRAMBLE_EXEC must start with server or agent, not '$ROLE'" ;;
esac

# The binary: a local file, or a download checked against the release's sha256sum.txt.
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
if [ -n "${INSTALL_BRAMBLE_BINARY:-}" ]; then
    [ -f "$INSTALL_BRAMBLE_BINARY" ] || fatal "INSTALL_BRAMBLE_BINARY=$INSTALL_BRAMBLE_BINARY is not a file"
    cp "$INSTALL_BRAMBLE_BINARY" "$TMP/bramble"
else
    BASE=${INSTALL_BRAMBLE_DOWNLOAD_URL:-}
    [ -n "$BASE" ] || fatal "set INSTALL_BRAMBLE_DOWNLOAD_URL (where bramble-$ARCH and sha256sum.txt are) or INSTALL_BRAMBLE_BINARY"
    if command -v curl > /dev/null; then
        get() { curl -fsSL -o "$2" "$1"; }
    elif command -v wget > /dev/null; then
        get() { wget -qO "$2" "$1"; }
    else
        fatal "curl or wget is needed to download bramble"
    fi
    info "downloading $BASE/bramble-$ARCH"
    get "$BASE/bramble-$ARCH" "$TMP/bramble" || fatal "downloading $BASE/bramble-$ARCH failed"
    get "$BASE/sha256sum.txt" "$TMP/sha256sum.txt" || fatal "downloading $BASE/sha256sum.txt failed"
    WANT=$(awk -v f="bramble-$ARCH" '$2 == f || $2 == "*" f { print $1 }' "$TMP/sha256sum.txt")
    HAVE=$(sha256sum "$TMP/bramble" | awk '{ print $1 }')
    [ -n "$WANT" ] || fatal "sha256sum.txt has no line for bramble-$ARCH"
    [ "$WANT" = "$HAVE" ] || fatal "bramble-$ARCH does not match sha256sum.txt ($HAVE, want $WANT)"
fi
chmod 0755 "$TMP/bramble"
"$TMP/bramble" --version > /dev/null 2>&1 || fatal "the binary does not run on this machine ($(uname -m))"

info "installing $("$TMP/bramble" --version) to $BIN_DIR/bramble"
mkdir -p "$BIN_DIR"
# A running binary cannot be written over: replace it by rename.
cp "$TMP/bramble" "$BIN_DIR/.bramble.new"
mv -f "$BIN_DIR/.bramble.new" "$BIN_DIR/bramble"

case "${INSTALL_BRAMBLE_SYMLINK:-}" in
    skip) ;;
    force) ln -sf bramble "$BIN_DIR/kubectl" ;;
    *)
        if [ -L "$BIN_DIR/kubectl" ] && [ "$(readlink "$BIN_DIR/kubectl")" = bramble ]; then
            :
        elif command -v kubectl > /dev/null 2>&1; then
            info "kubectl is already installed ($(command -v kubectl)): not linking it (INSTALL_BRAMBLE_SYMLINK=force to)"
        else
            ln -sf bramble "$BIN_DIR/kubectl"
        fi
        ;;
esac

# The configuration: keys are the flags (bramble server --help); written once, kept after.
mkdir -p "$CONFIG_DIR/config.yaml.d"
chmod 0755 "$CONFIG_DIR"
if [ ! -e "$CONFIG_DIR/config.yaml" ]; then
    umask 077
    {
        echo "# bramble $ROLE settings: each key is a flag of \`bramble $ROLE\` without its dashes."
        echo "# Files in config.yaml.d/ are read after this one, in name order (key+: appends)."
        [ -n "${BRAMBLE_URL:-}" ] && [ "$ROLE" = agent ] && echo "server: \"$BRAMBLE_URL\""
        [ -n "${BRAMBLE_TOKEN:-}" ] && echo "token: \"$BRAMBLE_TOKEN\""
        true
    } > "$CONFIG_DIR/config.yaml"
    umask 022
    info "wrote $CONFIG_DIR/config.yaml"
fi

# bramble-killall.sh: stops the service and every pod, removes their mounts, interfaces
# and the nftables table (the service comes back at the next boot or start).
cat > "$BIN_DIR/bramble-killall.sh" << EOF
#!/bin/sh
# Stops bramble and every pod on this node, removing their mounts, network namespaces,
# cgroups, the pod bridge, the overlay and bramble's nftables table.
set -u
[ "\$(id -u)" = 0 ] || exec sudo "\$0" "\$@"
for unit in bramble bramble-agent; do
    systemctl stop "\$unit" 2> /dev/null || true
done
"$BIN_DIR/bramble" killall --data-dir "$DATA_DIR"
# Whatever the pods left mounted under the data directory and /run/bramble.
for dir in "$DATA_DIR" /run/bramble; do
    awk -v d="\$dir" '\$2 == d || index(\$2, d "/") == 1 { print \$2 }' /proc/self/mounts | sort -r |
        while read -r m; do umount -l "\$m" 2> /dev/null || true; done
done
for link in \$(ip -o link show 2> /dev/null | awk -F': ' '{ print \$2 }' | cut -d@ -f1 | grep '^bramble'); do
    ip link delete "\$link" 2> /dev/null || true
done
command -v nft > /dev/null && nft list tables 2> /dev/null | awk '\$3 ~ /^bramble/ { print \$2, \$3 }' |
    while read -r family table; do nft delete table "\$family" "\$table"; done
exit 0
EOF
chmod 0755 "$BIN_DIR/bramble-killall.sh"

# bramble-uninstall.sh: everything this script installed; the data directory (the store,
# certificates, images, volumes) and pod logs only with --data.
cat > "$BIN_DIR/bramble-uninstall.sh" << EOF
#!/bin/sh
# Removes bramble from this machine: the service, the binary, the kubectl link, the
# scripts and /etc/bramble. With --data also $DATA_DIR (the store, certificates, images,
# volumes) and /var/log/pods.
set -u
[ "\$(id -u)" = 0 ] || exec sudo "\$0" "\$@"
"$BIN_DIR/bramble-killall.sh"
for unit in bramble bramble-agent; do
    systemctl disable "\$unit" 2> /dev/null || true
    rm -f "$SYSTEMD_DIR/\$unit.service"
done
systemctl daemon-reload 2> /dev/null || true
systemctl reset-failed bramble bramble-agent 2> /dev/null || true
if [ -L "$BIN_DIR/kubectl" ] && [ "\$(readlink "$BIN_DIR/kubectl")" = bramble ]; then
    rm -f "$BIN_DIR/kubectl"
fi
rm -rf "$CONFIG_DIR" /run/bramble
if [ "\${1:-}" = --data ]; then
    rm -rf "$DATA_DIR" /var/log/pods
fi
rm -f "$BIN_DIR/bramble" "$BIN_DIR/bramble-killall.sh" "$BIN_DIR/bramble-uninstall.sh"
echo "[bramble] uninstalled"
EOF
chmod 0755 "$BIN_DIR/bramble-uninstall.sh"

# The unit, with this install's binary and flags.
FLAGS=${EXEC#"$ROLE"}
# The unit is the one in the source tree's systemd/, which the binary carries.
"$BIN_DIR/bramble" systemd-unit "$ROLE" |
    sed -e "s|^ExecStart=.*|ExecStart=$BIN_DIR/bramble $ROLE$FLAGS|" > "$SYSTEMD_DIR/$UNIT.service.tmp"
mv -f "$SYSTEMD_DIR/$UNIT.service.tmp" "$SYSTEMD_DIR/$UNIT.service"
info "wrote $SYSTEMD_DIR/$UNIT.service"
systemctl daemon-reload

if [ "$SKIP_ENABLE" = true ]; then
    exit 0
fi
systemctl enable "$UNIT" > /dev/null 2>&1
if [ "$SKIP_START" = true ]; then
    info "enabled $UNIT; start it with: systemctl start $UNIT"
    exit 0
fi
info "starting $UNIT"
systemctl restart "$UNIT"
info "started: systemctl status $UNIT, journalctl -u $UNIT; kubectl get nodes"
