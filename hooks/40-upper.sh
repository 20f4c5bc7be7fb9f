# Phase "upper": where the changes go: a tmpfs, or a persistence partition.
# On a persistence partition each image keeps its changes in overlayboot/LABEL/ (upper, work,
# image-id); a different image id there (an image upgrade) is reported and the old changes
# are kept aside in upper.OLDID, never mixed with the new image.
# In: OB_UPPER_KIND/OB_UPPER/OB_UPPER_DIR/OB_UPPER_SIZE. Out: OB_UPPERDIR, OB_WORKDIR.
rw=$OB_RUN/rw
mkdir -p "$rw"
if [ "$OB_UPPER_KIND" = tmpfs ]; then
    mount -t tmpfs -o "size=$OB_UPPER_SIZE,mode=0755" tmpfs "$rw" ||
        die "cannot mount a tmpfs of size $OB_UPPER_SIZE for the changes (overlayboot.upper.size)"
    base=$rw
    log "upper: tmpfs ($OB_UPPER_SIZE of RAM): changes are lost at power-off"
    state persistent no
    state upper tmpfs
else
    upper_dev=$(wait_device "$OB_UPPER_KIND" "$OB_UPPER" "$OB_TIMEOUT") ||
        die "persistence partition $(devspec "$OB_UPPER_KIND" "$OB_UPPER") not found after $OB_TIMEOUT s (overlayboot.upper=, or boot with overlayboot.upper=tmpfs)"
    mount -o rw,noatime "$upper_dev" "$rw" ||
        die "cannot mount the persistence partition $upper_dev read-write"
    base=$rw/${OB_UPPER_DIR:-overlayboot/$OVERLAYBOOT_LABEL}
    mkdir -p "$base" || die "cannot write on the persistence partition $upper_dev"
    if [ -f "$base/image-id" ]; then
        old_id=$(cat "$base/image-id")
        if [ "$old_id" != "$OB_IMAGE_ID" ]; then
            log "WARNING: the image changed since these changes were made (was $old_id, now $OB_IMAGE_ID)"
            log "WARNING: the old changes are kept in ${base#"$rw"}/upper.$old_id; starting with none"
            mv "$base/upper" "$base/upper.$old_id" 2>/dev/null
            rm -rf "$base/work"
            state image_changed "$old_id"
        fi
    fi
    echo "$OB_IMAGE_ID" > "$base/image-id"
    log "upper: $upper_dev ($(devspec "$OB_UPPER_KIND" "$OB_UPPER")), changes persist in ${base#"$rw"}"
    state persistent yes
    state upper "$upper_dev"
fi
OB_UPPERDIR=$base/upper
OB_WORKDIR=$base/work
mkdir -p "$OB_UPPERDIR" "$OB_WORKDIR" || die "cannot create the upper and work dirs in $base"
state upperdir "$OB_UPPERDIR"
