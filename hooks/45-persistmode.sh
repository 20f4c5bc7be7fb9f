# Phase "persistmode": the modes of a persistence (partition or file), after phase upper.
#   overlayboot.upper.reset     this image's saved changes are removed: it starts with none
#                               (dracut's rd.live.overlay.reset); other images' stay
#   overlayboot.upper.readonly  the saved changes are shown but not changed: they become the
#                               top lower layer, new changes go to a tmpfs and are lost at
#                               power-off (live-boot's persistence-read-only, dracut's
#                               rd.live.overlay.readonly). Partial copy-ups are sealed first
#                               (a lower layer has no chunk maps); then the partition is
#                               remounted read-only.
# In: OB_UPPERDIR, OB_WORKDIR, OB_LOWER, OB_UPPER_RESET, OB_UPPER_READONLY.
# Out: OB_LOWER (the saved changes on top), OB_UPPERDIR, OB_WORKDIR (the tmpfs) when read-only.
if grep -qx persistent=yes "$OB_STATE"; then
    if [ -n "$OB_UPPER_RESET" ]; then
        log "persistence: reset: the saved changes of image $OB_IMAGE_ID are removed (overlayboot.upper.reset)"
        rm -rf "$OB_UPPERDIR" "$OB_WORKDIR" && mkdir -p "$OB_UPPERDIR" "$OB_WORKDIR" ||
            die "cannot remove the saved changes in ${OB_UPPERDIR%/upper} (overlayboot.upper.reset)"
        state reset yes
    fi
    if [ -n "$OB_UPPER_READONLY" ]; then
        "$OB_RUN/runtime/overlayboot" upper seal --lower "$OB_LOWER" "$OB_UPPERDIR" ||
            die "cannot seal the partial copy-ups in $OB_UPPERDIR for the read-only mode (boot without overlayboot.upper.readonly)"
        mount -o remount,ro "$OB_RUN/rw" ||
            die "cannot remount the persistence read-only (overlayboot.upper.readonly)"
        mkdir -p "$OB_RUN/ram"
        mount -t tmpfs -o "size=$OB_UPPER_SIZE,mode=0755" tmpfs "$OB_RUN/ram" &&
            mkdir -p "$OB_RUN/ram/upper" "$OB_RUN/ram/work" ||
            die "cannot mount a tmpfs of size $OB_UPPER_SIZE for the changes (overlayboot.upper.size)"
        OB_LOWER=$OB_UPPERDIR:$OB_LOWER
        OB_UPPERDIR=$OB_RUN/ram/upper
        OB_WORKDIR=$OB_RUN/ram/work
        log "persistence: read-only: the saved changes are shown, new ones are lost at power-off"
        state readonly yes
        state upperdir "$OB_UPPERDIR"
    fi
elif [ -n "$OB_UPPER_RESET$OB_UPPER_READONLY" ]; then
    log "WARNING: overlayboot.upper.reset and .readonly apply to a persistence; the upper is a tmpfs"
fi
