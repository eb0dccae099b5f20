#!/usr/bin/env bash
# Install the nanomesh peer daemon on this device (Debian / Raspberry Pi OS).
#
#   sudo peers/install.sh --config peers/pir-pi.toml --key-file cluster.key \
#        [--bind 192.168.1.21] [--join 192.168.1.10]
#
# Installs nanomesh from this checkout into /opt/nanomesh/venv, copies the peer
# config and the cluster key into /etc/nanomesh (the key readable by root only),
# and enables the systemd unit. Re-running upgrades in place and keeps an
# existing /etc/nanomesh/peer.toml unless --config is given again.
set -euo pipefail

usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

config="" key="" bind="" join=()
while [ $# -gt 0 ]; do
    case "$1" in
        --config) config="$2"; shift 2 ;;
        --key-file) key="$2"; shift 2 ;;
        --join) join+=("$2"); shift 2 ;;
        --bind) bind="$2"; shift 2 ;;
        -h|--help) usage 0 ;;
        *) echo "install.sh: unknown argument $1" >&2; usage 2 ;;
    esac
done
[ "$(id -u)" = 0 ] || { echo "install.sh: run as root (sudo)" >&2; exit 1; }
here="$(cd "$(dirname "$0")/.." && pwd)"

apt-get install -y -qq python3-venv >/dev/null
python3 -m venv /opt/nanomesh/venv
/opt/nanomesh/venv/bin/pip install -q --upgrade "$here"

install -d -m 0755 /etc/nanomesh
if [ -n "$config" ]; then
    install -m 0644 "$config" /etc/nanomesh/peer.toml
elif [ ! -f /etc/nanomesh/peer.toml ]; then
    printf '[peer]\n# name defaults to the host name\n' > /etc/nanomesh/peer.toml
fi
[ -n "$bind" ] && sed -i '/^bind *=/d' /etc/nanomesh/peer.toml
if ! grep -q '^bind' /etc/nanomesh/peer.toml; then
    # The gossip address is how peers reach us: default to this host's first
    # address (peers on one LAN), unless --bind says otherwise.
    bind="${bind:-$(hostname -I | awk '{print $1}')}"
    sed -i "/^\[peer\]/a bind = \"${bind}\"" /etc/nanomesh/peer.toml
fi
if [ ${#join[@]} -gt 0 ] && ! grep -q '^join' /etc/nanomesh/peer.toml; then
    seeds=$(printf '"%s", ' "${join[@]}")
    sed -i "/^\[peer\]/a join = [${seeds%, }]" /etc/nanomesh/peer.toml
fi
if [ -n "$key" ]; then
    install -m 0600 "$key" /etc/nanomesh/cluster.key
elif [ ! -f /etc/nanomesh/cluster.key ]; then
    echo "install.sh: no --key-file; generating a NEW cluster key in /etc/nanomesh/cluster.key."
    echo "            Copy it to every other device of this mesh (it is the mesh's secret)."
    (umask 077; /opt/nanomesh/venv/bin/nanomesh keygen > /etc/nanomesh/cluster.key)
fi

install -m 0644 "$here/peers/nanomesh.service" /etc/systemd/system/nanomesh.service
if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable --now nanomesh.service
    systemctl --no-pager status nanomesh.service | head -5
else
    echo "install.sh: no systemd here; start it with:"
    echo "  /opt/nanomesh/venv/bin/nanomesh peer run --config /etc/nanomesh/peer.toml --key-file /etc/nanomesh/cluster.key"
fi
