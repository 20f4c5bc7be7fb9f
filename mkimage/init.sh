#!/bin/sh
# /init of the overlayboot initramfs (POSIX sh, run by busybox): the minimal one.
# Mounts the API filesystems, loads the kernel modules in load order, says what it has,
# then either runs the runtime smoke test (kernel parameter overlayboot.smoke: print a
# marker line from the bundled Python, power off) or drops to a shell. The boot flow
# (hooks/, installed under /usr/lib/overlayboot/hooks) takes over from here.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin

mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o mode=0755,nosuid devtmpfs /dev
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run

# shellcheck source=/dev/null
. /etc/overlayboot/image.conf

# args: none; prints the uptime in seconds
uptime_s() {
    read -r up _ < /proc/uptime
    echo "$up"
}

echo "overlayboot: kernel $(uname -r), initramfs up at $(uptime_s) s"

loaded=0
failed=0
while read -r module; do
    [ -n "$module" ] || continue
    if err=$(insmod "$module" 2>&1); then
        loaded=$((loaded + 1))
    else
        failed=$((failed + 1))
        echo "overlayboot: insmod ${module##*/}: ${err:-failed}"
    fi
done < "$OVERLAYBOOT_MODULES_LOAD"
echo "overlayboot: modules: $loaded loaded, $failed failed; built in: $OVERLAYBOOT_BUILTIN_MODULES"

smoke=
for word in $(cat /proc/cmdline); do
    case $word in
        overlayboot.smoke | overlayboot.smoke=*) smoke=1 ;;
    esac
done

if [ -n "$smoke" ]; then
    mkdir -p "${OVERLAYBOOT_RUNTIME_RUN%/*}"
    cp -a "$OVERLAYBOOT_RUNTIME" "$OVERLAYBOOT_RUNTIME_RUN"
    echo "overlayboot: runtime copied to $OVERLAYBOOT_RUNTIME_RUN at $(uptime_s) s"
    "$OVERLAYBOOT_RUNTIME_RUN/python" --argv0 @overlayboot-smoke -c '
import pyfuse3, trio
print("OVERLAYBOOT-SMOKE: python ok pyfuse3", pyfuse3.__version__, "trio", trio.__version__,
      flush=True)
' || echo "OVERLAYBOOT-SMOKE: python FAILED ($?)"
    echo "overlayboot: smoke test done at $(uptime_s) s; powering off"
    sync
    poweroff -f
fi

echo "overlayboot: no boot flow yet; here is a shell"
exec setsid cttyhack sh
