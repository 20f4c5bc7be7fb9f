# Phase "medium": find the boot medium and mount it read-only at $OB_RUN/medium.
# In: OB_MEDIUM_KIND/OB_MEDIUM (label, uuid, partlabel, path, or scan), OB_FINDISO, OB_IMAGE,
# OB_TIMEOUT. Out: OB_IMAGE_FILE, the squashfs to mount (a file, or a device holding one).
# Not with a network lower (overlayboot.lower=): phase fetch finds the image then.
[ -z "$OB_NET_LOWER" ] || return 0
medium_dir=$OB_RUN/medium
mkdir -p "$medium_dir"

# args: DEV; true if DEV itself is a squashfs (a squashfs given directly as the medium)
is_squashfs() {
    [ "$(head -c 4 "$1" 2>/dev/null)" = hsqs ]
}

# args: none; tries every block device, prints the one holding $OB_FINDISO or $OB_IMAGE
scan_medium() {
    want=${OB_FINDISO:-$OB_IMAGE}
    for sys in /sys/class/block/*; do
        dev=/dev/${sys##*/}
        [ -b "$dev" ] || continue
        if mount -o ro "$dev" "$medium_dir" 2>/dev/null; then
            if [ -f "$medium_dir$want" ]; then
                umount "$medium_dir"
                echo "$dev"
                return 0
            fi
            umount "$medium_dir"
        fi
    done
    return 1
}

if [ "$OB_MEDIUM_KIND" = scan ]; then
    tries=$((OB_TIMEOUT * 2))
    medium_dev=
    while [ "$tries" -gt 0 ]; do
        medium_dev=$(scan_medium) && break
        sleep 0.5
        tries=$((tries - 1))
    done
    [ -n "$medium_dev" ] || die "no block device holds ${OB_FINDISO:-$OB_IMAGE} (scanned for $OB_TIMEOUT s; overlayboot.medium=scan)"
else
    medium_dev=$(wait_device "$OB_MEDIUM_KIND" "$OB_MEDIUM" "$OB_TIMEOUT") ||
        die "boot medium $(devspec "$OB_MEDIUM_KIND" "$OB_MEDIUM") not found after $OB_TIMEOUT s (overlayboot.medium= or root=live:)"
fi
log "medium: $medium_dev ($(devspec "$OB_MEDIUM_KIND" "$OB_MEDIUM"))"
state medium "$medium_dev"

if is_squashfs "$medium_dev"; then
    OB_IMAGE_FILE=$medium_dev
else
    mount -o ro "$medium_dev" "$medium_dir" || die "cannot mount the boot medium $medium_dev"
    image_root=$medium_dir
    if [ -n "$OB_FINDISO" ]; then
        [ -f "$medium_dir$OB_FINDISO" ] ||
            die "no ISO file $OB_FINDISO on $medium_dev (overlayboot.findiso)"
        mkdir -p "$OB_RUN/iso"
        mount -o loop,ro "$medium_dir$OB_FINDISO" "$OB_RUN/iso" ||
            die "cannot mount the ISO file $OB_FINDISO from $medium_dev"
        image_root=$OB_RUN/iso
        state findiso "$OB_FINDISO"
    fi
    OB_IMAGE_FILE=$image_root$OB_IMAGE
    [ -f "$OB_IMAGE_FILE" ] ||
        die "no image $OB_IMAGE on $medium_dev (overlayboot.image=); it holds: $(ls "$image_root" | tr '\n' ' ')"
fi
state image "$OB_IMAGE"
