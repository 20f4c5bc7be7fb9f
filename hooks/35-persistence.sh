# Phase "persistence": persistence in a file (and luks_open, which phase upper uses). An ext4 (or any) filesystem image in a file on
# a partition of any filesystem the kernel mounts (FAT, exFAT, NTFS, ext4, ...) is mounted
# at $OB_RUN/rw through a loop device, and phase upper uses it as it would a partition.
#   overlayboot.upper=DEV:PATH   PATH on DEV is a file: that file (a directory: phase upper)
#   overlayboot.upper=name:NAME  a partition labelled NAME (phase upper), else a file /NAME
#                                at the root of any partition (live-boot's `persistence`)
# The partition holding the file is mounted read-write at $OB_RUN/host (when it holds the
# medium too, a FAT/exFAT/NTFS stick with the ISO, the same filesystem is made writable).
# At shutdown the file's filesystem is unmounted first (the loop device goes with it), then
# the partition (hooks/shutdown.sh unmounts the later of two mounts first).
# In: OB_UPPER_KIND/OB_UPPER/OB_UPPER_DIR. Out: OB_UPPER_MOUNTED (what phase upper then
# reports as the persistence), or OB_UPPER_KIND=label for name: with such a partition.
OB_UPPER_MOUNTED=
persist_host=$OB_RUN/host

# args: DEV; a LUKS-encrypted DEV is opened with cryptsetup as /dev/mapper/overlayboot-rw,
# with the passphrase asked on the console (3 tries). Used by phase upper.
# Out: LUKS_DEV, the device to use (DEV itself when it is not encrypted).
luks_open() {
    LUKS_DEV=$1
    [ "$(head -c 6 "$1" 2> /dev/null | od -An -tx1 | tr -d ' \n')" = 4c554b53babe ] || return 0
    [ -x "$OB_RUN/runtime/cryptsetup" ] ||
        die "the persistence $1 is encrypted (LUKS), and this initramfs has no cryptsetup"
    try=1
    while :; do
        # the prompt is a whole line (the serial console shows it at once), typed unechoed
        echo "overlayboot: passphrase of the encrypted persistence $1 (LUKS, try $try of 3):"
        stty -echo 2> /dev/null
        read -r pass
        stty echo 2> /dev/null
        if printf '%s' "$pass" | "$OB_RUN/runtime/cryptsetup" open --key-file=- "$1" overlayboot-rw; then
            break
        fi
        [ "$try" -lt 3 ] ||
            die "cannot open the encrypted persistence $1 (3 wrong passphrases): reboot to try again, or boot with overlayboot.upper=tmpfs"
        log "persistence: wrong passphrase for $1"
        try=$((try + 1))
    done
    pass=
    LUKS_DEV=/dev/mapper/overlayboot-rw
    if [ ! -b "$LUKS_DEV" ]; then # no udev: the kernel's dm-N
        for d in /sys/block/dm-*; do
            [ "$(cat "$d/dm/name" 2> /dev/null)" = overlayboot-rw ] && LUKS_DEV=/dev/${d##*/}
        done
    fi
    log "persistence: $1 opened as $LUKS_DEV"
    state encrypted "$1"
}

# args: DEV; DEV mounted read-write at $persist_host (checked first if it is ext2/3/4)
host_mount() {
    mkdir -p "$persist_host"
    grep -q "^$1 " /proc/mounts || fsck_upper "$1"
    mount -o rw,noatime "$1" "$persist_host" 2> /dev/null && return 0
    # mounted read-only already (it holds the medium): the same filesystem, made writable
    mount -o ro "$1" "$persist_host" && mount -o remount,rw,noatime "$persist_host"
}

# args: FILE WHAT; the filesystem in FILE mounted at $OB_RUN/rw (a loop device, released
# with the mount); WHAT names it in messages. A LUKS-encrypted FILE is opened first
# (luks_open: cryptsetup sets up the loop device, released when it is closed; the
# shutdown closes it after the unmount, so that the partition holding FILE can go too).
file_mount() {
    luks_open "$1"
    mkdir -p "$OB_RUN/rw"
    if [ "$LUKS_DEV" != "$1" ]; then
        fsck_upper "$LUKS_DEV"
        mount -o rw,noatime "$LUKS_DEV" "$OB_RUN/rw" ||
            die "cannot mount the encrypted persistence file $2 (opened as $LUKS_DEV): no filesystem in it? (make one: cryptsetup open FILE x; mkfs.ext4 /dev/mapper/x)"
        state encrypted_file yes
    else
        fsck_upper "$1"
        mount -o loop,rw,noatime "$1" "$OB_RUN/rw" ||
            die "cannot mount the persistence file $2: not a filesystem image? (make one with: overlayboot persistence create FILE --size 1G)"
    fi
    OB_UPPER_MOUNTED="$2"
    OB_UPPER_DIR=
    log "persistence: the file $2 (loop device)"
    state persistence_file "$2"
}

# args: NAME; prints the partition holding the file /NAME, left mounted at $persist_host
find_file() {
    mkdir -p "$persist_host"
    for sys in /sys/class/block/*; do
        dev=/dev/${sys##*/}
        [ -b "$dev" ] || continue
        mount -o ro "$dev" "$persist_host" 2> /dev/null || continue
        if [ -f "$persist_host/$1" ]; then
            echo "$dev"
            return 0
        fi
        umount "$persist_host"
    done
    return 1
}

# args: NAME; a partition labelled NAME (left to phase upper), else the file /NAME
persistence_by_name() {
    tries=$((OB_TIMEOUT * 2))
    while [ "$tries" -gt 0 ]; do
        if [ -n "$(find_device label "$1")" ]; then
            OB_UPPER_KIND=label
            return 0
        fi
        if dev=$(find_file "$1"); then
            mount -o remount,rw,noatime "$persist_host" ||
                die "the persistence file /$1 is on $dev, which cannot be written"
            file_mount "$persist_host/$1" "$dev:/$1"
            return 0
        fi
        sleep 0.5
        tries=$((tries - 1))
    done
    die "no persistence named $1: no partition labelled $1, no file /$1 on any partition (overlayboot.upper=name:$1, live-boot's persistence; or boot with overlayboot.upper=tmpfs)"
}

# args: none; with overlayboot.upper=DEV:PATH, PATH a file: mount it
persistence_by_path() {
    dev=$(wait_device "$OB_UPPER_KIND" "$OB_UPPER" "$OB_TIMEOUT") || return 0 # phase upper says so
    mkdir -p "$persist_host"
    mount -o ro "$dev" "$persist_host" 2> /dev/null || return 0 # LUKS, say: phase upper
    is_file=
    [ -f "$persist_host/$OB_UPPER_DIR" ] && is_file=1
    umount "$persist_host"
    [ -n "$is_file" ] || return 0 # a directory: phase upper mounts the partition itself
    host_mount "$dev" || die "cannot mount $dev read-write for the persistence file /$OB_UPPER_DIR"
    file_mount "$persist_host/$OB_UPPER_DIR" "$dev:/$OB_UPPER_DIR"
}

case "$OB_UPPER_KIND" in
    name) persistence_by_name "$OB_UPPER" ;;
    label | uuid | partlabel | path) [ -z "$OB_UPPER_DIR" ] || persistence_by_path ;;
esac
