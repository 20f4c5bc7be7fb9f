#!/bin/bash
# Build libfuse 3.17 from Debian trixie's own source package into a prefix of our own.
# usage: third_party/libfuse/build.sh BUILD_DIR
# Result: BUILD_DIR/prefix/{lib/libfuse3.so.4,lib/pkgconfig/fuse3.pc,include/fuse3}.
#
# The source comes through apt with a configuration kept in BUILD_DIR/apt (a deb-src
# entry for trixie signed by debian-archive-keyring, its own lists, cache and state):
# apt checks the Release signature and every file's hash; the system's apt sources,
# lists and preferences are not read and not changed. Built with meson, library only
# (no fusermount3: a mount that needs it, not as root, finds the system's in PATH).
set -euo pipefail
WANT=3.17            # upstream series we accept (trixie has 3.17.2)
SUITE=trixie
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
MIRROR=${LIBFUSE_MIRROR:-http://deb.debian.org/debian}
BUILD=$(mkdir -p "$1" && cd "$1" && pwd)
PREFIX=$BUILD/prefix
STAMP=$PREFIX/.built-from

if [ -f "$STAMP" ] && [ -e "$PREFIX/lib/libfuse3.so.4" ]; then
  exit 0
fi
for tool in apt-get dpkg-source meson ninja; do
  if ! command -v "$tool" >/dev/null; then
    echo "ERROR: $tool is missing; install it (make apt, as root)" >&2
    exit 1
  fi
done
if [ ! -r "$KEYRING" ]; then
  echo "ERROR: $KEYRING is missing; apt-get install debian-archive-keyring" >&2
  exit 1
fi

APT=$BUILD/apt
mkdir -p "$APT/etc/sources.list.d" "$APT/etc/preferences.d" "$APT/etc/apt.conf.d" \
  "$APT/state/lists/partial" "$APT/cache/archives/partial"
touch "$APT/state/status"
echo "deb-src [signed-by=$KEYRING] $MIRROR $SUITE main" > "$APT/etc/sources.list"
cat > "$APT/apt.conf" <<CONF
Dir::Etc "$APT/etc";
Dir::Etc::Parts "$APT/etc/apt.conf.d";
Dir::State "$APT/state";
Dir::State::status "$APT/state/status";
Dir::Cache "$APT/cache";
APT::Sandbox::User "root";
CONF
export APT_CONFIG=$APT/apt.conf

apt-get -q=2 update
VERSION=$(apt-cache showsrc fuse3 | sed -n 's/^Version: //p' | head -1)
case "$VERSION" in
  $WANT.*) ;;
  *) echo "ERROR: $SUITE's fuse3 is ${VERSION:-absent}, not $WANT.x; see third_party/libfuse/README.md" >&2
     exit 1 ;;
esac
DL=$BUILD/download
rm -rf "$DL" "$BUILD/src" "$BUILD/meson" "$PREFIX"
mkdir -p "$DL"
(cd "$DL" && apt-get -q=2 source --download-only "fuse3=$VERSION")
# apt verified the files against the signed Sources index; unpack with Debian's patches
dpkg-source -q --no-check -x "$DL"/fuse3_"$VERSION".dsc "$BUILD/src" >/dev/null
LOG=$BUILD/build.log
trap 'echo "ERROR: building libfuse failed; see $LOG" >&2' ERR
meson setup "$BUILD/meson" "$BUILD/src" --prefix="$PREFIX" --libdir=lib \
  --buildtype=release -Dutils=false -Dexamples=false -Dtests=false -Duseroot=false \
  -Dinitscriptdir= -Dudevrulesdir="$PREFIX/udev" >"$LOG" 2>&1
ninja -C "$BUILD/meson" >>"$LOG" 2>&1
meson install -C "$BUILD/meson" >>"$LOG" 2>&1
echo "fuse3 $VERSION ($SUITE)" > "$STAMP"
echo "libfuse $VERSION built into $PREFIX"
