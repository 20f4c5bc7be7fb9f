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
upper_mount 0755 "the changes"
if [ -z "$OB_UPPER_DEV" ]; then
    base=$rw
    log "upper: tmpfs ($OB_UPPER_SIZE of RAM): changes are lost at power-off"
else
    base=$rw/${OB_UPPER_DIR:-overlayboot/$OVERLAYBOOT_LABEL}
    mkdir -p "$base/images" || die "cannot write on the persistence partition $OB_UPPER_DEV"
    migrate_layout "$base"
    image_changes "$base"
    base=$OB_CHANGES
    log "upper: $OB_UPPER_DEV ($(devspec "$OB_UPPER_KIND" "$OB_UPPER")), changes persist in ${base#"$rw"}"
fi
OB_UPPERDIR=$base/upper
OB_WORKDIR=$base/work
mkdir -p "$OB_UPPERDIR" "$OB_WORKDIR" || die "cannot create the upper and work dirs in $base"
state upperdir "$OB_UPPERDIR"
