# Block-level mode (overlayboot.overlay=block): the medium carries a filesystem image (ext4,
# overlayboot.image=, default /live/filesystem.ext4); a copy-on-write block device over it
# (overlayboot's block daemon, a FUSE file, a loop device on it) is mounted read-write as
# the root. The changed chunks go to a store: RAM (a tmpfs) or, with a persistence
# partition, overlayboot/LABEL/block.store on it (or DIR/block.store with
# overlayboot.upper=DEV:DIR). A store made for another image is refused (ERROR: line).
# Not a phase: phases lower, upper and overlay call these functions in block mode.

# args: none; phase lower: the image stays a file; the daemon reads it from the medium, or
# from RAM with overlayboot.toram (copied first). In: OB_IMAGE_FILE, OB_TORAM. Out: OB_BASE.
block_lower() {
    [ -f "$OB_IMAGE_FILE" ] || die "the image $OB_IMAGE is not a file on the medium (overlayboot.overlay=block needs a filesystem image file)"
    case $OB_IMAGE_FILE in
        "$OB_RUN"/*) ;;
        *) die "the image $OB_IMAGE is not under $OB_RUN, where the block daemon can read it" ;;
    esac
    [ -z "$OB_TORAM" ] || image_to_ram "$(stat -c %s "$OB_IMAGE_FILE")" image.ext4
    OB_BASE=$OB_IMAGE_FILE
    log "lower: $OB_IMAGE (a filesystem image: block-level copy-on-write)"
}

# args: none; phase upper: a tmpfs or the persistence partition at $OB_RUN/rw, and the store
# on it (created the first time). Out: OB_BLOCK_STORE.
block_upper() {
    upper_mount 0700 "the block store"
    if [ -z "$OB_UPPER_DEV" ]; then
        dir=$OB_RUN/rw
        log "upper: block store in RAM ($OB_UPPER_SIZE): changes are lost at power-off"
    else
        dir=$OB_RUN/rw/${OB_UPPER_DIR:-overlayboot/$OVERLAYBOOT_LABEL}
        mkdir -p "$dir" || die "cannot write on the persistence partition $OB_UPPER_DEV"
        log "upper: block store on $OB_UPPER_DEV ($(devspec "$OB_UPPER_KIND" "$OB_UPPER")): changes persist"
    fi
    OB_BLOCK_STORE=$dir/block.store
    if [ ! -e "$OB_BLOCK_STORE" ]; then
        out=$("$OB_RUN/runtime/overlayboot" block create --base "$OB_BASE" \
            --chunk-size "${OB_BLOCK_CHUNK:-64K}" "$OB_BLOCK_STORE" 2>&1) ||
            die "cannot create the block store ${OB_BLOCK_STORE#"$OB_RUN"}: ${out#overlayboot: error: }"
        log "block: a new store ${OB_BLOCK_STORE#"$OB_RUN"}"
    fi
    state upperdir "$dir"
    state block_store "$OB_BLOCK_STORE"
}

# args: none; phase overlay: the block daemon (chrooted in $OB_RUN, as the overlay daemon),
# a loop device on its file, the image's filesystem mounted read-write on it at /root.
block_root() {
    daemon_root || die "cannot prepare $OB_RUN for the block daemon"
    standby_stop
    mkdir -p "$OB_RUN/block"
    debug_flag=
    [ -n "$OB_DEBUG" ] && debug_flag=--debug
    # shellcheck disable=SC2086  # no flag, or one
    out=$(chroot "$OB_RUN" /runtime/overlayboot block serve --root $debug_flag \
        --base "${OB_BASE#"$OB_RUN"}" --log /block.log "${OB_BLOCK_STORE#"$OB_RUN"}" /block 2>&1) ||
        die "the block device did not start: ${out#overlayboot: error: }"
    daemon_pid=$(cat "$OB_RUN"/run/overlayboot/mounts/block.pid 2>/dev/null)
    echo -1000 > "/proc/$daemon_pid/oom_score_adj" ||
        log "WARNING: the block daemon (pid $daemon_pid) is not protected from the OOM killer"
    dev=$(losetup -f) && losetup "$dev" "$OB_RUN/block/disk" ||
        die "no loop device for the block device $OB_RUN/block/disk"
    mount -o rw "$dev" /root ||
        die "cannot mount the filesystem of $OB_IMAGE read-write on the block device $dev"
    state block_device "$dev"
    log "root: $OB_IMAGE read-write on $dev (block-level copy-on-write, daemon pid $daemon_pid)"
}
