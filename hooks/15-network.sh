# Phase "network": bring the network up when the boot needs it (a network lower, from
# overlayboot.lower= or another tool's form, or ip=): the NIC and NFS modules, every
# interface up, then DHCP (busybox udhcpc) on the first with a link, or the static address
# of ip=, and the DNS servers. After overlayboot.timeout: one ERROR line naming the
# interfaces and what was tried (no interface, no link, no lease).
# In: OB_NET, OB_NET_MODE/DEV/ADDR/PREFIX/GW/DNS/HOSTNAME, OB_TIMEOUT.
# Out: OB_NET_IF (the interface configured), /etc/resolv.conf, $OB_RUN/net/lease.
if [ -n "$OB_NET" ]; then
    # shellcheck source=netlib.sh
    . "$OVERLAYBOOT_HOOKS/netlib.sh"
    mkdir -p "$OB_NET_DIR" /etc
    net_modules
    net_deadline=$(($(cut -d. -f1 /proc/uptime) + OB_TIMEOUT))
    want=${OB_NET_DEV:-any interface}
    while [ -z "$(net_ifaces)" ] && before_deadline; do sleep 0.25; done
    ifaces=$(net_ifaces | tr '\n' ' ')
    [ -n "$ifaces" ] ||
        die "network: no network interface ($want) after $OB_TIMEOUT s: no driver for the NIC in this initramfs? (network modules: virtio_net e1000 e1000e igb r8169)"
    for i in $ifaces; do ip link set "$i" up; done
    OB_NET_IF=
    tried=
    while [ -z "$OB_NET_IF" ] && before_deadline; do
        for i in $ifaces; do
            has_link "$i" || continue
            if [ "$OB_NET_MODE" = static ]; then
                static_ip "$i" || die "network: cannot set the address $OB_NET_ADDR/$OB_NET_PREFIX on $i (ip=)"
                OB_NET_IF=$i
            elif dhcp_once "$i"; then
                OB_NET_IF=$i
            else
                case " $tried " in *" $i "*) ;; *) tried="$tried $i" ;; esac
                continue
            fi
            break
        done
        [ -n "$OB_NET_IF" ] || sleep 0.5
    done
    if [ -z "$OB_NET_IF" ]; then
        [ -n "$tried" ] ||
            die "network: no link on $ifaces after $OB_TIMEOUT s (cable unplugged, or no switch port up?)"
        die "network: no DHCP lease on$tried after $OB_TIMEOUT s (udhcpc got no answer: is a DHCP server on that network? or give ip=ADDR::GATEWAY:NETMASK::IFACE:off)"
    fi
    log "network: $OB_NET_IF $(lease ip)/$(lease mask) via ${OB_NET_MODE}$( [ -n "$(lease router)" ] && echo ", gateway $(lease router)")$( [ -n "$(lease dns)" ] && echo ", DNS $(lease dns)")"
    state net_if "$OB_NET_IF"
    state net_ip "$(lease ip)"
fi
