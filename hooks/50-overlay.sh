# Phase "overlay": mount the writable root at /root: overlayboot's FUSE daemon (default) or
# kernel overlayfs (overlayboot.overlay=kernel).
# The daemon runs chrooted in $OB_RUN, a tmpfs that is moved, not deleted, at switch_root:
# its paths (/lower, /rw/..., /runtime) stay valid for as long as the machine runs. It
# mounts at $OB_RUN/root, which is then moved to /root. Its argv[0] is @overlayboot, so
# systemd does not kill it at switch-root or shutdown.
mkdir -p /root
if [ "$OB_OVERLAY" = block ]; then  # hooks/block.sh
    # shellcheck source=block.sh
    . "$OVERLAYBOOT_HOOKS/block.sh"
    block_root
    return 0
fi
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
    daemon_root || die "cannot prepare $OB_RUN for the overlay daemon"
    debug_flag=
    [ -n "$OB_DEBUG" ] && debug_flag=--debug
    # every lower as the chrooted daemon sees it (several with overlayboot.upper.readonly)
    lowers=$(echo "$OB_LOWER" | sed "s|$OB_RUN/|/|g")
    set -- mount --root $debug_flag --lower "$lowers" --upper "${OB_UPPERDIR#"$OB_RUN"}" \
        --work "${OB_WORKDIR#"$OB_RUN"}" --log /daemon.log /root
    if [ -n "${OB_STANDBY_PID:-}" ] && kill -0 "$OB_STANDBY_PID" 2>/dev/null; then
        # the process phase standby started: its arguments, one per line, written whole
        printf '%s\n' "$@" > "$OB_RUN/standby.args.tmp" &&
            mv "$OB_RUN/standby.args.tmp" "$OB_RUN/standby.args" ||
            die "cannot write $OB_RUN/standby.args"
        wait "$OB_STANDBY_PID"
        started=$?
        OB_STANDBY_PID=
        state daemon_start standby
    else
        standby_stop
        chroot "$OB_RUN" /runtime/overlayboot "$@"
        started=$?
        state daemon_start direct
    fi
    [ "$started" = 0 ] || die "the overlay daemon did not start (its log: $OB_RUN/daemon.log)"
    # the chrooted daemon has no /proc: protect it from the OOM killer from here
    daemon_pid=$(cat "$OB_RUN"/run/overlayboot/mounts/*.pid 2>/dev/null)
    echo -1000 > "/proc/$daemon_pid/oom_score_adj" ||
        log "WARNING: the overlay daemon (pid $daemon_pid) is not protected from the OOM killer"
    mount --move "$OB_RUN/root" /root || die "cannot move the overlay to /root"
    # a 1 MiB readahead window (FUSE starts at 128 KiB; the chrooted daemon has no /sys)
    dev=$(awk '$5 == "/root" { d = $3 } END { print d }' /proc/self/mountinfo)
    if [ -n "$dev" ]; then
        echo 1024 > "/sys/class/bdi/$dev/read_ahead_kb" || log "readahead of the root not set"
    fi
    log "root: overlayboot (FUSE), daemon pid $daemon_pid"
fi
