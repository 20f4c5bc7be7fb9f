# overlayboot boot flow: helpers shared by the phases (POSIX sh, busybox ash).
# Sourced by /init before the phases; every phase may use these. Variables:
#   OB_*            the boot parameters (python -m overlayboot.cmdline, see 00-early.sh)
#   OB_RUN          /run/overlayboot: everything the live system keeps (moved with /run)
#   OB_STATE        $OB_RUN/state: KEY=value lines for `overlayboot status`

OB_RUN=/run/overlayboot
OB_STATE=$OB_RUN/state

# args: line; appends it to $OB_RUN/boot.log (the live root's /var/log/overlayboot/boot.log
# and journal: hooks/55-liveroot.sh)
boot_log() {
    [ -d "$OB_RUN" ] && echo "$1" >> "$OB_RUN/boot.log"
    return 0
}

# args: message...; prints a log line on the console (and /dev/kmsg when debugging)
log() {
    echo "overlayboot: $*"
    boot_log "overlayboot: $*"
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
    boot_log "ERROR: overlayboot: $*"
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

# --- image identity and the persistence partition (phases lower and upper) -------------

# where an image built by overlayboot carries its id (mkimage/imageid.py), inside the image
OB_IMAGE_ID_FILE=.overlayboot/image-id

# args: ID; true for an image id usable as a directory name: 1-64 of A-Z a-z 0-9 . _ -,
# not starting with a dot
valid_id() {
    case "$1" in
        "" | .* | *[!A-Za-z0-9._-]*) return 1 ;;
    esac
    [ "${#1}" -le 64 ]
}

# args: SRC DEST; moves SRC to DEST, which must not exist (mv would put SRC inside it);
# any failure is fatal: changes are never mixed or lost silently
move_aside() {
    [ -e "$2" ] && die "cannot move ${1#"$OB_RUN/rw"} to ${2#"$OB_RUN/rw"} on the persistence partition: it exists (move one of them away by hand)"
    if ! { mkdir -p "${2%/*}" && mv "$1" "$2"; }; then
        die "cannot move ${1#"$OB_RUN/rw"} to ${2#"$OB_RUN/rw"} on the persistence partition"
    fi
}

# args: DEVICE; e2fsck -p of an ext2/3/4 persistence partition, before its read-write mount.
# Exit code 0: clean; 1: errors fixed (logged); 2 (or 3): fixed, and e2fsck asks for a
# reboot, which is meant for a mounted root: this filesystem is not mounted yet, so the
# boot goes on (as dracut does); 4 and more: errors are left, or e2fsck failed: die.
fsck_upper() {
    # the ext2/3/4 magic number, 0xef53 at byte 1080 (busybox's blkid DEV prints nothing)
    magic=$(dd if="$1" bs=2 skip=540 count=1 2>/dev/null | od -An -tx1 | tr -d ' \n')
    if [ "$magic" != 53ef ]; then
        log "fsck: $1 holds no ext2/3/4 filesystem: not checked"
        return 0
    fi
    if grep -q "^$1 " /proc/mounts; then
        log "fsck: $1 is mounted already (it holds the medium): not checked"
        return 0
    fi
    if [ ! -x "$OB_RUN/runtime/e2fsck" ]; then
        log "WARNING: no e2fsck in this initramfs: $1 is mounted unchecked"
        return 0
    fi
    "$OB_RUN/runtime/e2fsck" -p "$1" > "$OB_RUN/fsck.log" 2>&1
    rc=$?
    while IFS= read -r line; do
        log "fsck: $line"
    done < "$OB_RUN/fsck.log"
    state fsck "$rc"
    if grep -q "MMP: device currently active" "$OB_RUN/fsck.log"; then
        die "the persistence partition $1 is in use by another machine (ext4 multiple-mount protection): one machine per persistence"
    elif [ "$rc" -ge 4 ]; then
        die "the persistence partition $1 has errors that e2fsck -p cannot fix (exit code $rc): check it by hand ($OB_RUN/runtime/e2fsck -f $1), or boot with overlayboot.upper=tmpfs"
    elif [ "$rc" -ge 2 ]; then
        log "fsck: errors on $1 fixed; e2fsck asks for a reboot (exit code $rc), needed only for a mounted filesystem: going on"
    elif [ "$rc" = 1 ]; then
        log "fsck: errors on $1 fixed"
    fi
}

# args: SIZE NAME; overlayboot.toram: the image (OB_IMAGE_FILE, SIZE bytes) copied to a
# tmpfs at $OB_RUN/toram as NAME, if the memory allows, and the medium let go.
# Out: OB_IMAGE_FILE (the copy); state toram.
image_to_ram() {
    need_kb=$(($1 / 1024 + 65536))
    avail_kb=$(mem_available_kb)
    [ "$avail_kb" -gt "$need_kb" ] ||
        die "not enough memory to copy the image to RAM: it needs $((need_kb / 1024)) MiB, $((avail_kb / 1024)) MiB are available (boot without overlayboot.toram)"
    mkdir -p "$OB_RUN/toram"
    mount -t tmpfs -o "size=$(($1 / 1024 + 1024))k,mode=0700" tmpfs "$OB_RUN/toram" ||
        die "cannot make a tmpfs for overlayboot.toram"
    log "copying the image to RAM ($(($1 / 1048576)) MiB)"
    cp "$OB_IMAGE_FILE" "$OB_RUN/toram/$2" || die "copying the image to RAM failed"
    OB_IMAGE_FILE=$OB_RUN/toram/$2
    umount "$OB_RUN/iso" 2>/dev/null
    umount "$OB_RUN/medium" 2>/dev/null && log "the medium can be removed"
    state toram yes
}

# args: MODE WHAT; the changes' filesystem mounted at $OB_RUN/rw: a tmpfs of
# overlayboot.upper.size (MODE: its root's mode; WHAT: what it holds, for the error), or the
# persistence partition (opened first if LUKS, checked by fsck_upper), or the persistence
# file phase persistence mounted there already (OB_UPPER_MOUNTED). Phase upper and block
# mode share it. Out: OB_UPPER_DEV (empty: a tmpfs); state persistent, upper.
upper_mount() {
    mkdir -p "$OB_RUN/rw"
    if [ "$OB_UPPER_KIND" = tmpfs ]; then
        mount -t tmpfs -o "size=$OB_UPPER_SIZE,mode=$1" tmpfs "$OB_RUN/rw" ||
            die "cannot mount a tmpfs of size $OB_UPPER_SIZE for $2 (overlayboot.upper.size)"
        OB_UPPER_DEV=
        state persistent no
        state upper tmpfs
        return 0
    fi
    if [ -n "${OB_UPPER_MOUNTED:-}" ]; then
        OB_UPPER_DEV=$OB_UPPER_MOUNTED # a persistence file, mounted by phase persistence
    else
        OB_UPPER_DEV=$(wait_device "$OB_UPPER_KIND" "$OB_UPPER" "$OB_TIMEOUT") ||
            die "persistence partition $(devspec "$OB_UPPER_KIND" "$OB_UPPER") not found after $OB_TIMEOUT s (overlayboot.upper=, or boot with overlayboot.upper=tmpfs)"
        if command -v luks_open > /dev/null; then # phase persistence: LUKS, opened
            luks_open "$OB_UPPER_DEV"
            OB_UPPER_DEV=$LUKS_DEV
        fi
        fsck_upper "$OB_UPPER_DEV"
        mount -o rw,noatime "$OB_UPPER_DEV" "$OB_RUN/rw" ||
            die "cannot mount the persistence partition $OB_UPPER_DEV read-write"
    fi
    state persistent yes
    state upper "$OB_UPPER_DEV"
}

# args: BASE; the layout of older releases (BASE/upper, BASE/work for the image in
# BASE/image-id, and BASE/upper.ID set aside at image changes) moved to BASE/images/ID/.
# Their id was the image's mkfs time and size ($OB_LEGACY_ID); changes recorded under the
# one the booted image has become this image's (the old id told no more than that).
migrate_layout() {
    if [ -d "$1/upper" ]; then
        old_id=$(cat "$1/image-id" 2>/dev/null)
        valid_id "$old_id" || old_id=unknown
        to=$old_id
        if [ "$old_id" = "$OB_LEGACY_ID" ]; then
            to=$OB_IMAGE_ID
            log "WARNING: changes made under the old image id $old_id (mkfs time and size, which this image has too) are taken as this image's"
        fi
        log "persistence: moving the changes of image $old_id to ${1#"$OB_RUN/rw"}/images/$to (new layout)"
        move_aside "$1/upper" "$1/images/$to/upper"
        if [ -d "$1/work" ]; then
            move_aside "$1/work" "$1/images/$to/work"
        fi
        echo "$to" > "$1/image-id" || die "cannot write ${1#"$OB_RUN/rw"}/image-id on the persistence partition"
    fi
    for d in "$1"/upper.*; do
        [ -d "$d" ] || continue
        old_id=${d##*/upper.}
        valid_id "$old_id" || continue
        log "persistence: moving the changes of image $old_id to ${1#"$OB_RUN/rw"}/images/$old_id (new layout)"
        move_aside "$d" "$1/images/$old_id/upper"
    done
}

# args: BASE; the changes of the image booted now: BASE/images/$OB_IMAGE_ID/{upper,work},
# brought back if this image was booted here before; BASE/image-id records it as the last
# one booted. Out: OB_CHANGES, that directory.
image_changes() {
    valid_id "$OB_IMAGE_ID" || die "no image id for the changes on the persistence partition (phase lower)"
    last=$(cat "$1/image-id" 2>/dev/null)
    dir=$1/images/$OB_IMAGE_ID
    if [ -n "$last" ] && [ "$last" != "$OB_IMAGE_ID" ]; then
        log "the image changed since the last boot (was $last, now $OB_IMAGE_ID): the changes made with $last stay in ${1#"$OB_RUN/rw"}/images/$last"
        state image_changed "$last"
        if [ -d "$dir/upper" ]; then
            log "this image was booted here before: its changes come back"
        fi
    fi
    [ -d "$dir/upper" ] || log "no changes of image $OB_IMAGE_ID here yet: it starts with none"
    mkdir -p "$dir/upper" "$dir/work" ||
        die "cannot create ${dir#"$OB_RUN/rw"}/upper and work on the persistence partition"
    if ! { echo "$OB_IMAGE_ID" > "$1/image-id.new" && mv -f "$1/image-id.new" "$1/image-id"; }; then
        die "cannot record the image id in ${1#"$OB_RUN/rw"}/image-id on the persistence partition"
    fi
    date -u '+%Y-%m-%dT%H:%M:%SZ' > "$dir/last-boot" 2>/dev/null
    OB_CHANGES=$dir
}
