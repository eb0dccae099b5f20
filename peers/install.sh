#!/usr/bin/env bash
# Install the nanomesh peer daemon on this device (Debian / Raspberry Pi OS).
#
#   first device:  sudo peers/install.sh --config peers/pir-pi.toml [--bind IP]
#   every other:   sudo peers/install.sh --config peers/ble-pi.toml \
#                       --key-file cluster.key --join IP-OF-A-PEER [--bind IP]
#
# Installs nanomesh from this checkout into /opt/nanomesh/venv, the peer config
# in /etc/nanomesh/peer.toml and the cluster key in /etc/nanomesh/cluster.key
# (root only), then enables and starts the systemd unit. The cluster key is
# mandatory: without --key-file the first device generates one and tells you
# to copy it to the others; a device that joins must be given it.
# Re-running upgrades in place; it keeps /etc/nanomesh/peer.toml unless
# --config is given again and never replaces a different key. Where podman is
# installed the unit gets the extra privileges it needs (re-run after
# installing podman).
#
#   --root DIR    install into DIR instead of / (tests; staging an image): the
#                 unit is enabled there, not started; a venv made there runs
#                 from DIR only (an image wants its own venv and --skip-venv)
#   --skip-venv   keep the nanomesh already in /opt/nanomesh/venv (offline
#                 devices: only config, key and unit are installed)
set -euo pipefail

usage() { sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }
die() { echo "install.sh: $*" >&2; exit 1; }

config="" key="" bind="" root="" skip_venv="" join=()
while [ $# -gt 0 ]; do
    case "$1" in
        --config|--key-file|--join|--bind|--root)
            [ $# -ge 2 ] || die "$1 needs a value"
            case "$1" in
                --config) config="$2" ;; --key-file) key="$2" ;;
                --join) join+=("$2") ;; --bind) bind="$2" ;; --root) root="$2" ;;
            esac
            shift 2 ;;
        --skip-venv) skip_venv=1; shift ;;
        -h|--help) usage 0 ;;
        *) echo "install.sh: unknown argument $1" >&2; usage 2 ;;
    esac
done
if [ -n "$root" ]; then
    [ -d "$root" ] || die "--root $root is not a directory"
    root="$(cd "$root" && pwd)"
else
    [ "$(id -u)" = 0 ] || die "run as root (sudo)"
fi
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="$root/opt/nanomesh/venv"
etc="$root/etc/nanomesh"
unit_dir="$root/etc/systemd/system"
key_dest="$etc/cluster.key"

# ---- decide everything that can refuse before anything changes.
[ -z "$config" ] || [ -f "$config" ] || die "--config $config: no such file"
[ -z "$key" ] || [ -f "$key" ] || die "--key-file $key: no such file"
# A device joins a mesh when told to here or by the config it will run with.
effective_config="${config:-$etc/peer.toml}"
joins=""
if [ ${#join[@]} -gt 0 ] || { [ -f "$effective_config" ] && grep -q '^join *=' "$effective_config"; }; then
    joins=1
fi
if [ -z "$key" ] && [ ! -f "$key_dest" ] && [ -n "$joins" ]; then
    die "joining a mesh needs its cluster key: copy /etc/nanomesh/cluster.key from a peer of the mesh here and re-run with --key-file FILE"
fi
if [ -n "$key" ] && [ -f "$key_dest" ] && ! cmp -s "$key" "$key_dest"; then
    die "$key_dest exists and differs from $key; a peer with another key is cut off from its mesh, so it is not replaced: remove $key_dest first if you mean to"
fi

# ---- the software.
if [ -n "$skip_venv" ]; then
    [ -x "$venv/bin/nanomesh" ] || die "--skip-venv: no nanomesh in $venv"
else
    [ -n "$root" ] || apt-get install -y -qq python3-venv >/dev/null
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade "$here"
fi
if [ -n "$key" ]; then
    # The daemon would refuse a bad key at start; refuse it now, with the reason.
    "$venv/bin/python" -c 'import sys; from pathlib import Path; from nanomesh.wire import Keyring
try: Keyring.from_file(Path(sys.argv[1]))
except Exception as e: sys.exit(f"install.sh: {e}")' "$key"
fi

# ---- the configuration.
install -d -m 0755 "$etc"
if [ -n "$config" ]; then
    install -m 0644 "$config" "$etc/peer.toml"
elif [ ! -f "$etc/peer.toml" ]; then
    printf '[peer]\n# name defaults to the host name\n' > "$etc/peer.toml"
fi
grep -q '^\[peer\]' "$etc/peer.toml" || sed -i '1i [peer]' "$etc/peer.toml"
[ -n "$bind" ] && sed -i '/^bind *=/d' "$etc/peer.toml"
if ! grep -q '^bind' "$etc/peer.toml"; then
    # The gossip address is how peers reach us: default to this host's first
    # address (peers on one LAN), unless --bind says otherwise.
    bind="${bind:-$(hostname -I 2>/dev/null | awk '{print $1}')}"
    [ -n "$bind" ] || die "this host has no address to gossip on; pass --bind IP"
    sed -i "/^\[peer\]/a bind = \"${bind}\"" "$etc/peer.toml"
fi
if [ ${#join[@]} -gt 0 ] && ! grep -q '^join' "$etc/peer.toml"; then
    seeds=$(printf '"%s", ' "${join[@]}")
    sed -i "/^\[peer\]/a join = [${seeds%, }]" "$etc/peer.toml"
fi

# ---- the cluster key: root-only, written whole (temp file + rename), never
# replaced by a different one (checked above).
owner=()
[ "$(id -u)" = 0 ] && owner=(-o root -g root)
if [ -n "$key" ]; then
    if [ ! -f "$key_dest" ]; then
        install -m 0600 "${owner[@]}" "$key" "$key_dest.tmp"
        mv "$key_dest.tmp" "$key_dest"
    fi
elif [ -f "$key_dest" ]; then
    echo "install.sh: keeping the cluster key in /etc/nanomesh/cluster.key"
else
    (umask 077; "$venv/bin/nanomesh" keygen > "$key_dest.tmp")
    [ -s "$key_dest.tmp" ] || die "nanomesh keygen wrote no key"
    [ ${#owner[@]} -eq 0 ] || chown root:root "$key_dest.tmp"
    mv "$key_dest.tmp" "$key_dest"
    address=$(sed -n 's/^bind *= *"\([^":]*\).*/\1/p' "$etc/peer.toml" | head -1)
    cat <<EOF
install.sh: generated a NEW cluster key for a new mesh in /etc/nanomesh/cluster.key.
  It is the mesh's secret: copy this file to the other devices (scp, USB stick)
  and install each of them with it:
    sudo peers/install.sh --key-file cluster.key --join ${address:-THIS-DEVICE-IP}
EOF
fi
chmod 0600 "$key_dest"

# ---- the service.
install -d -m 0755 "$unit_dir"
install -m 0644 "$here/peers/nanomesh.service" "$unit_dir/nanomesh.service"
# Podman needs more privileges than runc: give them only where it is installed.
if [ -x "$root/usr/bin/podman" ] || [ -x "$root/usr/local/bin/podman" ]; then
    install -d -m 0755 "$unit_dir/nanomesh.service.d"
    install -m 0644 "$here/peers/nanomesh-podman.conf" "$unit_dir/nanomesh.service.d/podman.conf"
    echo "install.sh: podman found: its privileges added (nanomesh.service.d/podman.conf)"
else
    rm -f "$unit_dir/nanomesh.service.d/podman.conf"
fi
if [ -n "$root" ]; then
    if command -v systemctl >/dev/null; then
        systemctl --root="$root" enable nanomesh.service
    fi
    echo "install.sh: installed into $root (the unit is enabled there, not started)"
elif command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable nanomesh.service
    systemctl restart nanomesh.service
    systemctl --no-pager status nanomesh.service | head -5
else
    echo "install.sh: no systemd here; start it with:"
    echo "  /opt/nanomesh/venv/bin/nanomesh peer run --config /etc/nanomesh/peer.toml --key-file /etc/nanomesh/cluster.key --data-dir /var/lib/nanomesh"
fi
