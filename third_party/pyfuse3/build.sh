#!/bin/bash
# Build and install pyfuse3 3.5.0 with overlayboot.patch into a venv.
# usage: third_party/pyfuse3/build.sh VENV_PYTHON CACHE_DIR [LIBFUSE_PREFIX]
# The sdist comes from PyPI (pip download), is checked against its sha256, patched and
# built (Cython from PyPI in pip's build environment); the result is installed as
# version 3.5.0+overlayboot.N, which satisfies overlayboot's "pyfuse3>=3.4,<3.6".
# With LIBFUSE_PREFIX (third_party/libfuse/build.sh), it is built against that libfuse
# (pkg-config) and finds it at run time through its RUNPATH, not the system's libfuse3.
# Only pyfuse3 itself is built from source: its build dependencies come as wheels.
set -euo pipefail
PY=$1
CACHE=$(mkdir -p "$2" && cd "$2" && pwd)
VERSION=3.5.0
LOCAL=overlayboot.8
SHA256=88399a9494b88603230bba300f4ba9ad63fece5ed514ca3633d555a0c6a42b24
HERE=$(cd "$(dirname "$0")" && pwd)
LIBFUSE=${3:-}
if [ -n "$LIBFUSE" ]; then
  LIBFUSE=$(cd "$LIBFUSE" && pwd)
  export PKG_CONFIG_PATH=$LIBFUSE/lib/pkgconfig
  # -L first: setuptools puts the system library dir before pkg-config's -L
  export LDFLAGS="-L$LIBFUSE/lib -Wl,-rpath,$LIBFUSE/lib -Wl,--enable-new-dtags"
  LOCAL=$LOCAL.libfuse$(pkg-config --modversion fuse3 | tr -d .)
fi
SDIST=$CACHE/pyfuse3-$VERSION.tar.gz

if "$PY" -c "import importlib.metadata as m, sys; sys.exit(m.version('pyfuse3') != '$VERSION+$LOCAL')" 2>/dev/null; then
  exit 0
fi
if ! echo "$SHA256  $SDIST" | sha256sum -c --quiet >/dev/null 2>&1; then
  rm -f "$SDIST"
  "$PY" -m pip download -q --no-deps --no-binary pyfuse3 -d "$CACHE" "pyfuse3==$VERSION"
  if ! echo "$SHA256  $SDIST" | sha256sum -c --quiet; then
    echo "ERROR: $SDIST does not have the expected sha256; delete it and retry" >&2
    exit 1
  fi
fi
SRC=$(mktemp -d "$CACHE/src.XXXXXX")
trap 'rm -rf "$SRC"' EXIT
tar -xzf "$SDIST" -C "$SRC"
cd "$SRC/pyfuse3-$VERSION"
patch -s -p1 < "$HERE/overlayboot.patch"
patch -s -p1 < "$HERE/tmpfile.patch"  # O_TMPFILE, on top of the first
patch -s -p1 < "$HERE/fallocate.patch"  # fallocate (a block device's discard), on top
patch -s -p1 < "$HERE/dirino.patch"  # directories read without OPENDIR, on top
patch -s -p1 < "$HERE/copyrange.patch"  # copy_file_range (cp --reflink, clones), on top
rm -f src/pyfuse3/__init__.c   # generated from the patched .pyx by the build
# -g0: Python's own CFLAGS ask for debug info, which doubles the compile time (27 -> 13 s
# of CPU) and makes the module 4.2 MB instead of 0.9 MB (the initramfs carries it)
export CFLAGS="${CFLAGS:-} -g0"
SETUPTOOLS_SCM_PRETEND_VERSION="$VERSION+$LOCAL" "$PY" -m pip install -q .
echo "pyfuse3 $VERSION+$LOCAL installed (patched: third_party/pyfuse3/overlayboot.patch, tmpfile.patch, fallocate.patch, dirino.patch, copyrange.patch)"
