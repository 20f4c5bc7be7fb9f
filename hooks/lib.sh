# overlayboot boot flow: helpers shared by the phases (POSIX sh, busybox ash).
# Sourced by /init before the phases; every phase may use these. Variables:
#   OB_*            the boot parameters (python -m overlayboot.cmdline, see 00-early.sh)
#   OB_RUN          /run/overlayboot: everything the live system keeps (moved with /run)
#   OB_STATE        $OB_RUN/state: KEY=value lines for `overlayboot status`

OB_RUN=/run/overlayboot
OB_STATE=$OB_RUN/state

# args: message...; prints a log line on the console (and /dev/kmsg when debugging)
log() {
    echo "overlayboot: $*"
    if [ -n "${OB_DEBUG:-}" ] && [ -w /dev/kmsg ]; then
        echo "overlayboot: $*" > /dev/kmsg
    fi
}

# args: message...; logs only with overlayboot.debug
debug() {
    [ -n "${OB_DEBUG:-}" ] && log "$@"
    return 0
}

# args: KEY VALUE; records a fact for `overlayboot status`
state() {
    mkdir -p "$OB_RUN"
    echo "$1=$2" >> "$OB_STATE"
}

# args: none; the block devices and what is on them, one per line (for error messages)
seen_devices() {
    if [ -x "$OB_RUN/runtime/python" ]; then
        "$OB_RUN/runtime/python" -m overlayboot.probe 2>/dev/null && return 0
    fi
    for d in /sys/class/block/*; do
        [ -e "$d" ] && echo "  /dev/${d##*/}"
    done
}

# args: none; a rescue shell on the console; returns when the shell exits
rescue_shell() {
    echo "overlayboot: rescue shell: fix things, then 'exit' to go on"
    setsid cttyhack sh || sh
}

# args: message...; a failed boot: one ERROR line, what was seen, then overlayboot.onerror
die() {
    echo "ERROR: overlayboot: $*"
    echo "overlayboot: block devices seen:"
    seen_devices
    case "${OB_ONERROR:-shell}" in
        poweroff)
            echo "overlayboot: powering off (overlayboot.onerror=poweroff)"
            sync
            poweroff -f
            ;;
        reboot)
            sync
            reboot -f
            ;;
        *)
            rescue_shell
            echo "overlayboot: the boot cannot go on after this error; powering off"
            sync
            poweroff -f
            ;;
    esac
    sleep 5
    exit 1
}

# args: PHASE; a rescue shell if overlayboot.break names this phase
ob_break() {
    case " ${OB_BREAK:-} " in
        *" $1 "*)
            echo "overlayboot: break before phase $1 (overlayboot.break)"
            rescue_shell
            ;;
    esac
}

# args: KIND VALUE; prints the device for label/uuid/partlabel/path, or nothing. A partition
# wins over its whole disk: a hybrid ISO on a USB stick carries the label on both, and a
# mounted whole disk would keep its persistence partition from being mounted. A whole disk
# whose partitions may still show up is printed as "whole DEV" so that wait_device waits.
find_device() {
    case "$1" in
        label | uuid)
            spec="$(echo "$1" | tr a-z A-Z)=$2"
            dev=$(findfs "$spec" 2>/dev/null) || return 0
            name=${dev##*/}
            if [ -e "/sys/class/block/$name/partition" ] ||
                [ "$(cat "/sys/class/block/$name/ext_range" 2>/dev/null || echo 1)" -le 1 ] ||
                [ "$(dd if="$dev" bs=1 skip=510 count=2 2>/dev/null | od -An -tx1 | tr -d ' \n')" != 55aa ]; then
                echo "$dev"
            else
                # a whole disk with a partition table (its partitions may not be there yet):
                # one of them may carry the same label; findfs cannot tell, the probe can
                "$OB_RUN/runtime/python" -m overlayboot.probe --find "$spec" 2>/dev/null || echo "$dev"
            fi
            ;;
        partlabel)
            for d in /sys/class/block/*; do
                if grep -qx "PARTNAME=$2" "$d/uevent" 2>/dev/null; then
                    echo "/dev/${d##*/}"
                    return 0
                fi
            done
            ;;
        path) [ -b "$2" ] && echo "$2" ;;
    esac
    return 0
}

# args: KIND VALUE SECONDS; waits for the device, prints it; fails after SECONDS. A whole
# disk whose partitions may still appear is taken only after 2 s (or at the deadline).
wait_device() {
    tries=$(($3 * 4))
    patience=8
    while [ "$tries" -gt 0 ]; do
        dev=$(find_device "$1" "$2")
        case "$dev" in
            "whole "*)
                patience=$((patience - 1))
                if [ "$patience" -le 0 ] || [ "$tries" -le 1 ]; then
                    echo "${dev#whole }"
                    return 0
                fi
                ;;
            ?*)
                echo "$dev"
                return 0
                ;;
        esac
        sleep 0.25
        tries=$((tries - 1))
    done
    return 1
}

# args: KIND VALUE; "LABEL=x"-style text for messages
devspec() {
    case "$1" in
        path) echo "$2" ;;
        label) echo "LABEL=$2" ;;
        uuid) echo "UUID=$2" ;;
        partlabel) echo "PARTLABEL=$2" ;;
        *) echo "$1 $2" ;;
    esac
}

# args: SIZE (e.g. 50% or 2G); prints bytes of MemAvailable-based checks in KiB
mem_available_kb() {
    awk '/^MemAvailable:/ {print $2}' /proc/meminfo
}

# args: none; the daemon's chroot in $OB_RUN: its own busybox (/bin/sh for the runtime's
# launchers), /dev/null, /dev/fuse, and /root, where it mounts the overlay
daemon_root() {
    mkdir -p "$OB_RUN/bin" "$OB_RUN/dev" "$OB_RUN/root" "$OB_RUN/tmp"
    [ -x "$OB_RUN/bin/busybox" ] || cp /bin/busybox "$OB_RUN/bin/busybox" || return 1
    ln -sf busybox "$OB_RUN/bin/sh"
    [ -c "$OB_RUN/dev/null" ] || mknod -m 666 "$OB_RUN/dev/null" c 1 3 || return 1
    [ -c "$OB_RUN/dev/fuse" ] || mknod -m 666 "$OB_RUN/dev/fuse" c 10 229 || return 1
}

# args: none; stops a standby daemon process (05-standby.sh) that phase overlay did not use
standby_stop() {
    [ -n "${OB_STANDBY_PID:-}" ] || return 0
    kill "$OB_STANDBY_PID" 2>/dev/null
    OB_STANDBY_PID=
}
