# Phase "overlay": mount the writable root at /root: overlayboot's FUSE daemon (default) or
# kernel overlayfs (overlayboot.overlay=kernel).
# The daemon runs chrooted in $OB_RUN, a tmpfs that is moved, not deleted, at switch_root:
# its paths (/lower, /rw/..., /runtime) stay valid for as long as the machine runs. It
# mounts at $OB_RUN/root, which is then moved to /root. Its argv[0] is @overlayboot, so
# systemd does not kill it at switch-root or shutdown.
mkdir -p /root
if [ "$OB_OVERLAY" = kernel ]; then
    if grep -q '^persistent=yes' "$OB_STATE"; then
        # the daemon may have left partial copy-ups (not kernel overlayfs format): make
        # them whole first, or kernel overlayfs would show their unmapped chunks as zeros
        "$OB_RUN/runtime/overlayboot" upper seal --lower "$OB_LOWER" "$OB_UPPERDIR" ||
            die "cannot seal the partial copy-ups on the persistence partition for kernel overlayfs (boot with overlayboot.overlay=fuse)"
    fi
    mount -t overlay overlay \
        -o "lowerdir=$OB_LOWER,upperdir=$OB_UPPERDIR,workdir=$OB_WORKDIR,redirect_dir=on" /root ||
        die "kernel overlayfs did not mount (overlayboot.overlay=kernel)"
    log "root: kernel overlayfs"
else
    mkdir -p "$OB_RUN/bin" "$OB_RUN/dev" "$OB_RUN/root" "$OB_RUN/tmp"
    cp /bin/busybox "$OB_RUN/bin/busybox" && ln -sf busybox "$OB_RUN/bin/sh"
    [ -c "$OB_RUN/dev/null" ] || mknod -m 666 "$OB_RUN/dev/null" c 1 3
    [ -c "$OB_RUN/dev/fuse" ] || mknod -m 666 "$OB_RUN/dev/fuse" c 10 229
    debug_flag=
    [ -n "$OB_DEBUG" ] && debug_flag=--debug
    chroot "$OB_RUN" /runtime/overlayboot mount $debug_flag \
        --lower "${OB_LOWER#"$OB_RUN"}" --upper "${OB_UPPERDIR#"$OB_RUN"}" \
        --work "${OB_WORKDIR#"$OB_RUN"}" --log /daemon.log /root ||
        die "the overlay daemon did not start (its log: $OB_RUN/daemon.log)"
    mount --move "$OB_RUN/root" /root || die "cannot move the overlay to /root"
    log "root: overlayboot (FUSE), daemon pid $(cat "$OB_RUN"/run/overlayboot/mounts/*.pid 2>/dev/null)"
fi
