# Phase "switch": hand over to the live root: /dev /proc /sys /run move into it (the layers
# stay visible there under /run/overlayboot), then switch_root runs its init (init=).
[ -e "/root$OB_INIT" ] || [ -L "/root$OB_INIT" ] || die "the root has no $OB_INIT (init=)"
for d in dev proc sys run; do
    [ -d "/root/$d" ] || mkdir -p "/root/$d" || die "cannot create /$d in the root"
done
state init "$OB_INIT"
standby_stop  # a replaced phase overlay may have left it waiting
log "switching to the live root ($OB_INIT) at $(cut -d' ' -f1 /proc/uptime) s"
mount --move /dev /root/dev
mount --move /proc /root/proc
mount --move /sys /root/sys
mount --move /run /root/run
exec switch_root /root "$OB_INIT"
