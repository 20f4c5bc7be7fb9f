# Phase "switch": hand over to the live root: /dev /proc /sys /run move into it (the layers
# stay visible there under /run/overlayboot), then switch_root runs its init (init=).
# First the shutdown environment the root hands back to at poweroff/reboot (systemd's
# /run/initramfs/shutdown protocol): hooks/shutdown.sh as /run/initramfs/shutdown, a static
# busybox and the applets it uses; it finds the rest under /run/overlayboot.
SHUTDOWN_APPLETS="sh awk cat grep head kill mkdir mount poweroff halt reboot sed sleep sync \
    timeout tr umount wc losetup"

# args: none; /run/initramfs, the shutdown environment
shutdown_env() {
    dir=/run/initramfs
    mkdir -p "$dir/bin" "$dir/dev" "$dir/proc" "$dir/sys" "$dir/oldroot" || return 1
    ln -f "$OB_RUN/bin/busybox" "$dir/bin/busybox" 2> /dev/null ||
        cp /bin/busybox "$dir/bin/busybox" || return 1
    for applet in $SHUTDOWN_APPLETS; do
        ln -sf busybox "$dir/bin/$applet" || return 1
    done
    cp "$OVERLAYBOOT_HOOKS/shutdown.sh" "$dir/shutdown" && chmod 755 "$dir/shutdown"
}

[ -e "/root$OB_INIT" ] || [ -L "/root$OB_INIT" ] || die "the root has no $OB_INIT (init=)"
for d in dev proc sys run; do
    [ -d "/root/$d" ] || mkdir -p "/root/$d" || die "cannot create /$d in the root"
done
state init "$OB_INIT"
shutdown_env || die "cannot prepare the shutdown environment in /run/initramfs"
standby_stop  # a replaced phase overlay may have left it waiting
log "switching to the live root ($OB_INIT) at $(cut -d' ' -f1 /proc/uptime) s"
mount --move /dev /root/dev
mount --move /proc /root/proc
mount --move /sys /root/sys
mount --move /run /root/run
exec switch_root /root "$OB_INIT"
