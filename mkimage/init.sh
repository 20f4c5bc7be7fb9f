#!/bin/sh
# /init of the overlayboot initramfs (POSIX sh, run by busybox).
# Mounts the API filesystems, then runs the boot phases in order: every NN-NAME.sh of
# $OVERLAYBOOT_HOOKS (hooks/ of the repo) and of /etc/overlayboot/hooks.d (a user's own;
# one with the same file name replaces the built-in phase), sorted by file name, each
# sourced in this shell after hooks/lib.sh. overlayboot.break=NAME stops before phase NAME
# with a rescue shell. A failing phase calls die: an ERROR: line, what was seen, then a
# rescue shell or a power-off (overlayboot.onerror) -- never a kernel panic.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin

mount -t proc -o nosuid,nodev,noexec proc /proc
mount -t sysfs -o nosuid,nodev,noexec sysfs /sys
mount -t devtmpfs -o mode=0755,nosuid devtmpfs /dev
# not nodev: the overlay daemon runs chrooted in /run/overlayboot with its own /dev/fuse
mount -t tmpfs -o mode=0755,nosuid tmpfs /run

# shellcheck source=/dev/null
. /etc/overlayboot/image.conf
echo "overlayboot: kernel $(uname -r), initramfs up at $(cut -d' ' -f1 /proc/uptime) s"

# shellcheck source=../hooks/lib.sh
. "$OVERLAYBOOT_HOOKS/lib.sh"

for word in $(cat /proc/cmdline); do
    case $word in
        overlayboot.smoke | overlayboot.smoke=*)
            # the image builder's smoke test: the bundled Python works from /run
            mkdir -p "${OVERLAYBOOT_RUNTIME_RUN%/*}"
            cp -a "$OVERLAYBOOT_RUNTIME" "$OVERLAYBOOT_RUNTIME_RUN"
            # shellcheck source=../hooks/10-modules.sh
            . "$OVERLAYBOOT_HOOKS/10-modules.sh"
            "$OVERLAYBOOT_RUNTIME_RUN/python" --argv0 @overlayboot-smoke -c '
import pyfuse3, trio
print("OVERLAYBOOT-SMOKE: python ok pyfuse3", pyfuse3.__version__, "trio", trio.__version__,
      flush=True)
' || echo "OVERLAYBOOT-SMOKE: python FAILED ($?)"
            sync
            poweroff -f
            ;;
        overlayboot.break=early* | overlayboot.break=0*)
            echo "overlayboot: break before phase early (overlayboot.break)"
            setsid cttyhack sh
            ;;
    esac
done

phases=$(
    for f in "$OVERLAYBOOT_HOOKS"/[0-9]*.sh /etc/overlayboot/hooks.d/[0-9]*.sh; do
        [ -f "$f" ] && echo "${f##*/} $f"
    done | sort -k1,1 -s | awk '{ path[$1] = $2; if (!seen[$1]++) order[n++] = $1 }
        END { for (i = 0; i < n; i++) print path[order[i]] }'
)
for hook in $phases; do
    name=${hook##*/}
    name=${name%.sh}
    name=${name#*-}
    [ "$name" = early ] || ob_break "$name"
    debug "phase $name ($hook)"
    # shellcheck source=/dev/null
    . "$hook"
done
die "the boot phases ended without switching to the root (is 60-switch.sh missing?)"
