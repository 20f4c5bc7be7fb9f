# Phase "upper": where the changes go: a tmpfs, or a persistence partition.
# A persistence partition is checked first (e2fsck -p, fsck_upper in lib.sh). On it each
# image keeps its changes under its own id (phase lower), in
# overlayboot/LABEL/images/ID/{upper,work} (or DIR/images/ID/ with overlayboot.upper=DEV:DIR),
# and gets them back when it boots again; overlayboot/LABEL/image-id names the image booted
# last, so an image change is reported. Older releases' layout is moved there first.
# A persistence file (phase persistence) is mounted at $OB_RUN/rw already: OB_UPPER_MOUNTED.
# In: OB_UPPER_KIND/OB_UPPER/OB_UPPER_DIR/OB_UPPER_SIZE, OB_IMAGE_ID, OB_LEGACY_ID.
# Out: OB_UPPERDIR, OB_WORKDIR.
if [ "$OB_OVERLAY" = block ]; then  # hooks/block.sh
    # shellcheck source=block.sh
    . "$OVERLAYBOOT_HOOKS/block.sh"
    block_upper
    return 0
fi
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
    if [ -n "${OB_UPPER_MOUNTED:-}" ]; then
        upper_dev=$OB_UPPER_MOUNTED # a persistence file, mounted by phase persistence
    else
        upper_dev=$(wait_device "$OB_UPPER_KIND" "$OB_UPPER" "$OB_TIMEOUT") ||
            die "persistence partition $(devspec "$OB_UPPER_KIND" "$OB_UPPER") not found after $OB_TIMEOUT s (overlayboot.upper=, or boot with overlayboot.upper=tmpfs)"
        if command -v luks_open > /dev/null; then # phase persistence: LUKS, opened
            luks_open "$upper_dev"
            upper_dev=$LUKS_DEV
        fi
        fsck_upper "$upper_dev"
        mount -o rw,noatime "$upper_dev" "$rw" ||
            die "cannot mount the persistence partition $upper_dev read-write"
    fi
    base=$rw/${OB_UPPER_DIR:-overlayboot/$OVERLAYBOOT_LABEL}
    mkdir -p "$base/images" || die "cannot write on the persistence partition $upper_dev"
    migrate_layout "$base"
    image_changes "$base"
    base=$OB_CHANGES
    log "upper: $upper_dev ($(devspec "$OB_UPPER_KIND" "$OB_UPPER")), changes persist in ${base#"$rw"}"
    state persistent yes
    state upper "$upper_dev"
fi
OB_UPPERDIR=$base/upper
OB_WORKDIR=$base/work
mkdir -p "$OB_UPPERDIR" "$OB_WORKDIR" || die "cannot create the upper and work dirs in $base"
state upperdir "$OB_UPPERDIR"
