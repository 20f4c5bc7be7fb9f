# Phase "lower": mount the squashfs image read-only at $OB_RUN/lower (after copying it to RAM
# with overlayboot.toram, so that the medium can be removed).
# In: OB_IMAGE_FILE, OB_TORAM. Out: OB_LOWER, OB_IMAGE_ID (mkfs time and size of the image).
OB_LOWER=$OB_RUN/lower
mkdir -p "$OB_LOWER"

if [ -b "$OB_IMAGE_FILE" ]; then
    image_size=$(blockdev --getsize64 "$OB_IMAGE_FILE")
else
    image_size=$(stat -c %s "$OB_IMAGE_FILE")
fi
OB_IMAGE_ID=$(od -An -tu4 -j8 -N4 "$OB_IMAGE_FILE" | tr -d ' ')-$image_size

if [ -n "$OB_TORAM" ]; then
    need_kb=$((image_size / 1024 + 65536))
    avail_kb=$(mem_available_kb)
    [ "$avail_kb" -gt "$need_kb" ] ||
        die "not enough memory to copy the image to RAM: it needs $((need_kb / 1024)) MiB, $((avail_kb / 1024)) MiB are available (boot without overlayboot.toram)"
    mkdir -p "$OB_RUN/toram"
    mount -t tmpfs -o "size=$((image_size / 1024 + 1024))k,mode=0700" tmpfs "$OB_RUN/toram" ||
        die "cannot make a tmpfs for overlayboot.toram"
    log "copying the image to RAM ($((image_size / 1048576)) MiB)"
    cp "$OB_IMAGE_FILE" "$OB_RUN/toram/image.squashfs" || die "copying the image to RAM failed"
    OB_IMAGE_FILE=$OB_RUN/toram/image.squashfs
    umount "$OB_RUN/iso" 2>/dev/null
    umount "$OB_RUN/medium" 2>/dev/null && log "the medium can be removed"
    state toram yes
fi

mount -t squashfs -o ro,loop "$OB_IMAGE_FILE" "$OB_LOWER" 2>/dev/null ||
    mount -t squashfs -o ro "$OB_IMAGE_FILE" "$OB_LOWER" ||
    die "cannot mount the image $OB_IMAGE: not a squashfs, or corrupt"
ls "$OB_LOWER" > /dev/null 2>&1 || die "the image $OB_IMAGE is unreadable (corrupt squashfs)"
[ -e "$OB_LOWER$OB_INIT" ] || [ -L "$OB_LOWER$OB_INIT" ] ||
    die "the image $OB_IMAGE has no $OB_INIT (init=), or it cannot be read (corrupt squashfs?)"
log "lower: $OB_IMAGE (image id $OB_IMAGE_ID)"
state image_id "$OB_IMAGE_ID"
