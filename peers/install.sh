#!/usr/bin/env bash
# Install, upgrade or remove the nanomesh peer daemon on this device (Debian /
# Raspberry Pi OS, systemd).
#
# From a release bundle, offline (nanomesh release build makes the bundle, its
# .sha256 and a copy of this script; copy the three and the cluster key over):
#   first device:  sudo ./install.sh --bundle nanomesh-VERSION-bundle.tar \
#                       --config pir-pi.toml [--bind IP]
#   every other:   sudo ./install.sh --bundle nanomesh-VERSION-bundle.tar \
#                       --config ble-pi.toml --key-file cluster.key --join IP-OF-A-PEER
#   upgrade:       the same command with the newer bundle (config, key and data
#                  are kept; the service is restarted on the new version)
#   uninstall:     sudo ./install.sh --uninstall [--purge]
# From a checkout (needs the internet for the dependencies):
#   sudo peers/install.sh --config peers/pir-pi.toml [--key-file K --join IP]
#
# The bundle is checked against its .sha256 (beside it) and its manifest before
# anything on the device changes; its Python (3.11) must be the device's.
# nanomesh goes into a venv of its own, /opt/nanomesh/versions/VERSION-ID,
# installed from the bundle's wheels only (pip --no-index), and
# /opt/nanomesh/venv points at it once it imports: a failed upgrade leaves the
# running version as it was. The previous version's venv is kept beside it.
# The peer config goes to /etc/nanomesh/peer.toml, the cluster key to
# /etc/nanomesh/cluster.key (root only), then the unit is enabled and
# (re)started; logs: journalctl -u nanomesh -f, state: nanomesh status.
# The cluster key is mandatory: without --key-file the first device generates
# one and tells you to copy it to the others; a device that joins must be
# given it. Re-running keeps /etc/nanomesh/peer.toml unless --config is given
# again and never replaces a different key. Where podman is installed the unit
# gets the extra privileges it needs (re-run after installing podman).
#
#   --bundle FILE  install or upgrade from this release bundle (offline)
#   --config FILE  the peer config; with --bundle, a name of the bundle's
#                  peers/*.toml works too
#   --key-file K   the mesh's cluster key (mandatory to join)
#   --join IP      a peer of the mesh to join (repeatable)
#   --bind IP      the address to gossip on (default: this host's first)
#   --uninstall    stop and remove the unit, /opt/nanomesh and /etc/nanomesh;
#                  the data dir /var/lib/nanomesh is kept unless --purge
#   --root DIR     install into DIR instead of / (tests; staging an image): the
#                  unit is enabled there, not started; a venv made there runs
#                  from DIR only (an image wants its own venv and --skip-venv)
#   --skip-venv    keep the nanomesh already in /opt/nanomesh/venv (only
#                  config, key and unit are installed)
set -euo pipefail

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; exit "${1:-0}"; }
die() { echo "install.sh: $*" >&2; exit 1; }

config="" key="" bind="" root="" skip_venv="" bundle="" uninstall="" purge="" join=()
while [ $# -gt 0 ]; do
    case "$1" in
        --config|--key-file|--join|--bind|--root|--bundle)
            [ $# -ge 2 ] || die "$1 needs a value"
            case "$1" in
                --config) config="$2" ;; --key-file) key="$2" ;;
                --join) join+=("$2") ;; --bind) bind="$2" ;; --root) root="$2" ;;
                --bundle) bundle="$2" ;;
            esac
            shift 2 ;;
        --skip-venv) skip_venv=1; shift ;;
        --uninstall) uninstall=1; shift ;;
        --purge) purge=1; shift ;;
        -h|--help) usage 0 ;;
        *.tar) bundle="$1"; shift ;;
        *) echo "install.sh: unknown argument $1" >&2; usage 2 >&2 ;;
    esac
done
if [ -n "$root" ]; then
    [ -d "$root" ] || die "--root $root is not a directory"
    root="$(cd "$root" && pwd)"
else
    [ "$(id -u)" = 0 ] || die "run as root (sudo)"
fi
[ -z "$purge" ] || [ -n "$uninstall" ] || die "--purge goes with --uninstall"
here="$(cd "$(dirname "$0")/.." && pwd)"
# The checks below import the venv's own nanomesh, not one on a PYTHONPATH.
unset PYTHONPATH PYTHONHOME
opt="$root/opt/nanomesh"
venv="$opt/venv"
etc="$root/etc/nanomesh"
unit_dir="$root/etc/systemd/system"
key_dest="$etc/cluster.key"
data="$root/var/lib/nanomesh"
has_systemd() { [ -z "$root" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; }

# ---- uninstall: the unit, the software and the config; the data dir (the
# peer's state and keyring) only with --purge.
if [ -n "$uninstall" ]; then
    if has_systemd; then
        systemctl disable --now nanomesh.service 2>/dev/null || true
    elif [ -n "$root" ] && command -v systemctl >/dev/null; then
        systemctl --root="$root" disable nanomesh.service 2>/dev/null || true
    fi
    # (The wants link too: systemctl cannot disable where systemd is not running.)
    rm -rf "$unit_dir/nanomesh.service" "$unit_dir/nanomesh.service.d" \
        "$unit_dir/multi-user.target.wants/nanomesh.service"
    ! has_systemd || systemctl daemon-reload
    rm -rf "$opt" "$etc"
    [ "$(readlink "$root/usr/local/bin/nanomesh" 2>/dev/null)" != /opt/nanomesh/venv/bin/nanomesh ] \
        || rm -f "$root/usr/local/bin/nanomesh"
    if [ -n "$purge" ]; then
        rm -rf "$data"
        echo "install.sh: nanomesh removed, with its data (/var/lib/nanomesh)"
    else
        echo "install.sh: nanomesh removed; its data is kept in /var/lib/nanomesh (--purge removes it)"
    fi
    exit 0
fi

# ---- a bundle: check it whole before anything on the device changes, then
# install from what it holds (unit, configs, wheels) instead of a checkout.
bundle_version="" bundle_id=""
if [ -n "$bundle" ]; then
    [ -f "$bundle" ] || die "--bundle $bundle: no such file"
    [ -f "$bundle.sha256" ] || die "$bundle.sha256 is missing: copy it beside the bundle (the bundle is checked against it)"
    expected=$(awk '{ print $1; exit }' "$bundle.sha256")
    actual=$(sha256sum "$bundle" | awk '{ print $1 }')
    [ "$expected" = "$actual" ] || die "$bundle does not match its checksum ($bundle.sha256): it is damaged or not the bundle that was built; copy it again. Nothing was changed."
    unpacked="$(mktemp -d)"
    trap 'rm -rf "$unpacked"' EXIT
    tar -xf "$bundle" -C "$unpacked" --no-same-owner || die "$bundle: cannot unpack it"
    set -- "$unpacked"/nanomesh-*/manifest.json
    [ $# -eq 1 ] && [ -f "$1" ] || die "$bundle: not a nanomesh bundle (no manifest.json)"
    here="$(dirname "$1")"
    # Every file against the manifest; its version and Python (stdlib only:
    # nanomesh is not installed yet).
    read -r bundle_version bundle_python < <(python3 - "$here" <<'EOF'
import hashlib, json, sys
from pathlib import Path
root = Path(sys.argv[1])
manifest = json.loads((root / "manifest.json").read_text())
for name, digest in manifest["files"].items():
    path = root / name
    if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
        sys.exit(f"install.sh: {name} in the bundle does not match its manifest; nothing was changed")
print(manifest["version"], manifest["python"])
EOF
) || exit 1
    [ -n "$bundle_version" ] || die "$bundle: its manifest could not be read"
    device_python=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    [ "$device_python" = "$bundle_python" ] || die "the bundle's wheels are for Python $bundle_python, this device has $device_python"
    python3 -c 'import ensurepip, venv' 2>/dev/null || die "python3 cannot make a venv here: install python3-venv (apt-get install python3-venv) and re-run"
    bundle_id="$bundle_version-${actual:0:12}"
    # --config may name one of the bundle's example configs.
    if [ -n "$config" ] && [ ! -f "$config" ] && [ -f "$here/peers/$(basename "$config")" ]; then
        config="$here/peers/$(basename "$config")"
    fi
fi

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

# ---- the software: a new venv per version, made and checked beside the one
# that runs; /opt/nanomesh/venv is switched to it (switch_version, below) only
# once it imports, so a failed upgrade leaves the old version running.
incomplete_platforms() {  # what the bundle's manifest says it lacks, if anything
    python3 - "$here/manifest.json" <<'EOF'
import json, sys
for name, platform in json.load(open(sys.argv[1]))["platforms"].items():
    if platform["missing"]:
        print(f"install.sh: this bundle has no wheels for {name} of: {', '.join(platform['missing'])}")
EOF
}
prepare_version() {  # ID PIP-INSTALL-ARGS...
    local new="$opt/versions/$1"; shift
    if [ -x "$new/bin/nanomesh" ] && "$new/bin/python" -c 'import nanomesh.daemon.assemble' 2>/dev/null; then
        echo "install.sh: this version is installed already ($new); keeping it"
        return
    fi
    rm -rf "$new"
    if ! python3 -m venv "$new"; then
        rm -rf "$new"
        die "python3 cannot make a venv (above): install python3-venv (apt-get install python3-venv) and re-run"
    fi
    # No device pip config (an index, constraints): the bundle is all there is.
    if ! PIP_CONFIG_FILE=/dev/null "$new/bin/python" -m pip install -q "$@" \
         || ! "$new/bin/python" -c 'import nanomesh.daemon.assemble'; then
        rm -rf "$new"
        [ -z "$bundle" ] || incomplete_platforms >&2
        die "installing nanomesh failed (above); the installed version, if any, is unchanged"
    fi
}
switch_version() {  # ID
    local previous=""
    [ -L "$venv" ] && previous="$(readlink "$venv")"
    # Atomic (rename of a relative symlink). A venv installed before the
    # versions/ layout is a directory: it is replaced.
    ln -sfn "versions/$1" "$opt/venv.new"
    [ -L "$venv" ] || rm -rf "$venv"
    mv -T "$opt/venv.new" "$venv"
    # The rollback target of `nanomesh upgrade` (nanomesh.daemon.upgrade); an
    # operator's install is confirmed by being run: no trial.
    [ -z "$previous" ] || [ "$previous" = "versions/$1" ] || ln -sfn "$previous" "$opt/previous"
    rm -f "$opt/trial" "$opt/trial.starts"
    # Keep this version and the one before it (a manual rollback); older go.
    for dir in "$opt"/versions/*; do
        case "versions/$(basename "$dir")" in
            "versions/$1"|"$previous") ;;
            *) rm -rf "$dir" ;;
        esac
    done
}
version_id=""
if [ -n "$skip_venv" ]; then
    [ -x "$venv/bin/nanomesh" ] || die "--skip-venv: no nanomesh in $venv"
    python="$venv/bin/python"
else
    if [ -n "$bundle" ]; then
        version_id="$bundle_id"
        prepare_version "$version_id" --no-index --find-links "$here/wheels" "nanomesh==$bundle_version"
    else
        [ -n "$root" ] || apt-get install -y -qq python3-venv >/dev/null
        version_id="checkout-$(date +%Y%m%d%H%M%S)"
        prepare_version "$version_id" --upgrade "$here"
    fi
    python="$opt/versions/$version_id/bin/python"
fi
if [ -n "$key" ]; then
    # The daemon would refuse a bad key at start; refuse it now, with the reason.
    "$python" -c 'import sys; from pathlib import Path; from nanomesh.wire import Keyring
try: Keyring.from_file(Path(sys.argv[1]))
except Exception as e: sys.exit(f"install.sh: {e}")' "$key"
fi
[ -z "$version_id" ] || switch_version "$version_id"
# The launcher the unit runs: it starts venv's nanomesh and rolls back a
# version `nanomesh upgrade` switched to that keeps failing to start.
install -m 0755 "$here/peers/nanomesh-launch" "$opt/launch"
# `nanomesh status` and the other commands on the PATH (unless a nanomesh of
# someone else's is there).
link="$root/usr/local/bin/nanomesh"
if [ ! -e "$link" ] || [ -L "$link" ]; then
    install -d -m 0755 "$(dirname "$link")"
    ln -sfn /opt/nanomesh/venv/bin/nanomesh "$link"
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
    again="peers/install.sh"
    [ -z "$bundle" ] || again="./install.sh --bundle $(basename "$bundle")"
    address=$(sed -n 's/^bind *= *"\([^":]*\).*/\1/p' "$etc/peer.toml" | head -1)
    cat <<EOF
install.sh: generated a NEW cluster key for a new mesh in /etc/nanomesh/cluster.key.
  It is the mesh's secret: copy this file to the other devices (scp, USB stick)
  and install each of them with it:
    sudo ${again} --key-file cluster.key --join ${address:-THIS-DEVICE-IP}
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
# (Read whole: `| head -1` would end it with SIGPIPE, a failure under pipefail.)
installed=$("$venv/bin/nanomesh" version 2>/dev/null) || installed="nanomesh"
installed="${installed%%$'\n'*}"
cat <<EOF
install.sh: $installed is installed.
  logs:    journalctl -u nanomesh -f
  status:  nanomesh status        (the mesh as this peer sees it)
           systemctl status nanomesh
EOF
