# Phase "liveroot": what the live root gets from the boot (the root is at /root; before
# phase switch). `overlayboot` on its PATH: /usr/sbin/overlayboot, a script that runs the
# boot's own runtime (unless the root has an overlayboot there). The logs in
# /var/log/overlayboot, a symlink to /run/overlayboot: boot.log (the boot's log lines and
# its WARNING/ERROR lines), daemon.log (the overlay daemon's), state. With systemd, a
# runtime unit, /run/systemd/system/overlayboot-log.service (wanted by sysinit.target),
# copies both into the journal (journalctl -t overlayboot), the daemon's as it grows.
# An image built by mkimage carries both already (mkimage/liveroot.py: in the lower layer,
# so nothing is written here); for an image built elsewhere they land in the root's upper
# (the same each boot); a failure is a WARNING.
liveroot_path() {
    [ -e /root/usr/sbin/overlayboot ] && return 0
    mkdir -p /root/usr/sbin &&
        printf '#!/bin/sh\n# the boot'"'"'s overlayboot (hooks/55-liveroot.sh)\nexec %s "$@"\n' \
            "$OB_RUN/runtime/overlayboot" > /root/usr/sbin/overlayboot &&
        chmod 755 /root/usr/sbin/overlayboot
}

liveroot_logs() {
    [ -e /root/var/log/overlayboot ] || [ -L /root/var/log/overlayboot ] ||
        { mkdir -p /root/var/log && ln -s "$OB_RUN" /root/var/log/overlayboot; } || return 1
    [ -e /root/lib/systemd/systemd-journald ] || [ -e /root/usr/lib/systemd/systemd-journald ] ||
        return 0
    units=/run/systemd/system
    mkdir -p "$units/sysinit.target.wants" || return 1
    cat > "$units/overlayboot-log.service" << UNIT || return 1
[Unit]
Description=overlayboot's boot log and overlay daemon log into the journal
DefaultDependencies=no
After=systemd-journald.socket
Before=shutdown.target
Conflicts=shutdown.target

[Service]
ExecStart=/bin/sh -c 'cat $OB_RUN/boot.log; exec tail -n +1 -F $OB_RUN/daemon.log'
SyslogIdentifier=overlayboot
UNIT
    ln -sf ../overlayboot-log.service "$units/sysinit.target.wants/overlayboot-log.service"
}

liveroot_path || log "WARNING: cannot write /usr/sbin/overlayboot in the live root"
liveroot_logs || log "WARNING: cannot put the boot's logs in the live root's /var/log or journal"
