# Phase "standby": start the overlay daemon's process now, chrooted in $OB_RUN, so that its
# imports (trio, pyfuse3: about 2 s under emulation) overlap loading the modules and
# finding the medium. It waits for phase overlay to write its arguments to
# $OB_RUN/standby.args. Only with more than one CPU (on one, the imports would only slow
# the module loading down by as much), only with overlayboot.overlay=fuse; if it cannot
# start, phase overlay starts the daemon itself.
# Out: OB_STANDBY_PID.
OB_STANDBY_PID=
if [ "$OB_OVERLAY" = fuse ] && [ "$(grep -c '^processor' /proc/cpuinfo)" -gt 1 ]; then
    if daemon_root; then
        rm -f "$OB_RUN/standby.args"
        chroot "$OB_RUN" /runtime/overlayboot standby /standby.args </dev/null &
        OB_STANDBY_PID=$!
        debug "standby: daemon process $OB_STANDBY_PID importing"
    else
        log "standby: cannot prepare $OB_RUN for the daemon; phase overlay will try again"
    fi
fi
