# overlayboot — two commands set up a fresh Debian 12 machine (as root):
#   make demo   installs what it needs, builds the default image and boots it under QEMU
#   make test   installs what it needs and runs lint, types and the tests
SHELL := /bin/bash
PYTHON_SYS ?= /usr/bin/python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# tests run on this many pytest-xdist workers (QEMU guests and FUSE daemons are mostly
# one busy thread each: 2 workers use both cores of a 2-core CI machine); 0 = in-process
PYTEST_JOBS ?= 2
PYTEST_PAR := $(if $(filter 0,$(PYTEST_JOBS)),,-n $(PYTEST_JOBS) --dist loadfile)
APT_PACKAGES := fuse3 libfuse3-dev pkg-config gcc python3.11 python3.11-venv python3.11-dev \
	attr fuse-overlayfs squashfs-tools e2fsprogs kmod util-linux busybox-static qemu-system-x86 \
	zstd xz-utils cpio patch ovmf xorriso grub-pc-bin grub-efi-amd64-bin mtools dosfstools fdisk \
	debootstrap exfatprogs exfat-fuse meson ninja-build dpkg-dev debian-archive-keyring qemu-utils \
	dnsmasq-base nginx-light nfs-ganesha nfs-ganesha-vfs ipxe ipxe-qemu iproute2 cryptsetup-bin \
	openssl

.PHONY: all deps apt venv test test-slow imports lint typecheck pytest demo bench bench-net clean

all: test

apt: $(VENV)/.apt-stamp
$(VENV)/.apt-stamp:
	@if [ "$$(id -u)" = 0 ]; then \
	  missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	  if [ -n "$$missing" ]; then \
	    echo "apt: installing $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  fi; \
	else echo "not root: skipping apt (needs: $(APT_PACKAGES))"; fi
	@mkdir -p $(VENV) && touch $@

venv: $(VENV)/.pip-stamp
$(VENV)/.pip-stamp: pyproject.toml third_party/pyfuse3/overlayboot.patch third_party/pyfuse3/tmpfile.patch \
		third_party/pyfuse3/fallocate.patch third_party/pyfuse3/dirino.patch \
		third_party/pyfuse3/copyrange.patch \
		third_party/pyfuse3/build.sh \
		third_party/libfuse/build.sh $(VENV)/.apt-stamp
	@test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install -q -U pip
	# libfuse 3.17 (FUSE passthrough) from Debian trixie's source package (third_party/libfuse)
	third_party/libfuse/build.sh build/libfuse
	# pyfuse3 against it, with the directory cache, the non-blocking request loop and
	# passthrough (third_party/pyfuse3)
	third_party/pyfuse3/build.sh $(abspath $(PY)) build/pyfuse3 build/libfuse/prefix
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

deps: apt venv

# no import circles among the modules (every import counts: top, function, TYPE_CHECKING)
imports: apt
	$(PYTHON_SYS) tools/importcheck.py overlayboot mkimage bench

lint: deps
	$(VENV)/bin/ruff check overlayboot mkimage tests bench tools
	$(VENV)/bin/ruff format --check overlayboot mkimage tests bench tools

typecheck: deps
	$(VENV)/bin/mypy overlayboot mkimage bench tools

# the slow tier: marked slow, powercut or oom (the last two are marked slow too, and run
# here even if one is not); the default run is everything else
SLOW_TIER := slow or powercut or oom

# the default run: everything but the slow tier (unit, real FUSE mounts, QEMU boots)
pytest: deps
	$(PY) -m pytest $(PYTEST_PAR) -m "not ($(SLOW_TIER))" $(PYTEST_ARGS)

test: imports lint typecheck pytest

# the slow tier (a debootstrapped Debian root with systemd under QEMU, build all, kill -9
# crashes, power cuts, out of memory, 2-vCPU boots in a row): CI runs it too
test-slow: deps
	$(PY) -m pytest $(PYTEST_PAR) -m "$(SLOW_TIER)" $(PYTEST_ARGS)

demo: deps
	$(PY) -m overlayboot demo

# the benchmark suite (root; about 8 min): BENCH_ARGS=--quick for a smoke run, see bench/README.md
BENCH_ARGS ?=
bench: deps
	$(PY) -m bench $(BENCH_ARGS)

# network boot figures (root; QEMU clients booted at once from one server, per lower;
# about 25 min alone on 2 cores, an hour on a shared one): NET_BENCH_ARGS, see `python -m bench.netboot --help`
NET_BENCH_ARGS ?=
bench-net: deps
	$(PY) -m bench.netboot $(NET_BENCH_ARGS)

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
	rm -f $(VENV)/.pip-stamp  # its pyfuse3 loads libfuse from build/
