#!/bin/sh
# Build the counter-container's root filesystem from the host's static busybox
# (Debian: busybox-static). The rootfs is built, never committed: a binary in
# git would be opaque and architecture-specific.
#
#   ./build-rootfs.sh [DEST]      DEST defaults to rootfs/ next to this script
set -eu
here=$(cd "$(dirname "$0")" && pwd)
dest=${1:-"$here/rootfs"}
busybox=${BUSYBOX:-/bin/busybox}

if ! [ -x "$busybox" ]; then
    echo "build-rootfs.sh: no $busybox (apt-get install busybox-static)" >&2
    exit 1
fi
# A dynamically linked busybox would need the host's libc inside the rootfs.
if command -v file >/dev/null 2>&1 && ! file -L "$busybox" | grep -q "statically linked"; then
    echo "build-rootfs.sh: $busybox is not statically linked (apt-get install busybox-static)" >&2
    exit 1
fi

tmp="$dest.tmp.$$"
rm -rf "$tmp"
mkdir -p "$tmp/bin" "$tmp/etc" "$tmp/proc" "$tmp/sys" "$tmp/dev" "$tmp/tmp" "$tmp/www"
cp "$busybox" "$tmp/bin/busybox"
for applet in sh ash cat date echo head tail ls mkdir mv sleep httpd wget ps kill true false; do
    ln -s busybox "$tmp/bin/$applet"
done
echo "root:x:0:0:root:/:/bin/sh" > "$tmp/etc/passwd"
echo "root:x:0:" > "$tmp/etc/group"
echo "counter-container: GET /count" > "$tmp/www/index.html"
echo 0 > "$tmp/www/count"
rm -rf "$dest"
mv "$tmp" "$dest"
echo "built $dest ($(du -sh "$dest" | cut -f1))"
