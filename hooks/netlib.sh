# Helpers of the network boot (phases network and fetch; POSIX sh, busybox ash). Sourced
# by hooks/15-network.sh after lib.sh.

OB_NET_DIR=$OB_RUN/net

# args: none; loads the NIC and NFS modules (net-modules.load: absolute paths, in order);
# one that does not load is not fatal (the hardware may not be there)
net_modules() {
    n=0
    while read -r module; do
        [ -n "$module" ] || continue
        err=$(insmod "$module" 2>&1) && n=$((n + 1)) && continue
        case "$err" in *"File exists"*) ;; *) debug "insmod ${module##*/}: $err" ;; esac
    done < "${OVERLAYBOOT_NET_MODULES_LOAD:-/dev/null}"
    debug "network: $n modules loaded"
}

# args: none; the network interfaces but lo (or only $OB_NET_DEV), one per line
net_ifaces() {
    for d in /sys/class/net/*; do
        i=${d##*/}
        [ -e "$d" ] && [ "$i" != lo ] || continue
        [ -z "$OB_NET_DEV" ] || [ "$i" = "$OB_NET_DEV" ] || continue
        echo "$i"
    done
}

# args: IFACE; true if IFACE has a link (carrier)
has_link() {
    [ "$(cat "/sys/class/net/$1/carrier" 2>/dev/null)" = 1 ]
}

# args: none; true while the deadline ($net_deadline, uptime seconds) is not past
before_deadline() {
    now=$(cut -d. -f1 /proc/uptime)
    [ "$now" -lt "$net_deadline" ]
}

# args: IFACE; DHCP on IFACE with udhcpc (a few discovers); true with a lease
dhcp_once() {
    rm -f "$OB_NET_DIR/lease"
    set -- -i "$1" -n -q -f -t 3 -T 1 -A 1 -s "$OVERLAYBOOT_HOOKS/udhcpc.script"
    [ -n "$OB_NET_HOSTNAME" ] && set -- "$@" -x "hostname:$OB_NET_HOSTNAME"
    udhcpc "$@" > "$OB_NET_DIR/udhcpc.log" 2>&1 && [ -s "$OB_NET_DIR/lease" ]
}

# args: IFACE; the static address of ip= on IFACE, its gateway and DNS servers
static_ip() {
    ip addr add "$OB_NET_ADDR/${OB_NET_PREFIX:-24}" dev "$1" || return 1
    if [ -n "$OB_NET_GW" ]; then
        ip route add default via "$OB_NET_GW" dev "$1" || return 1
    fi
    : > /etc/resolv.conf
    for d in $OB_NET_DNS; do echo "nameserver $d" >> /etc/resolv.conf; done
    {
        echo "interface=$1"
        echo "ip=$OB_NET_ADDR"
        echo "mask=${OB_NET_PREFIX:-24}"
        echo "router=$OB_NET_GW"
        echo "dns=$OB_NET_DNS"
    } > "$OB_NET_DIR/lease"
}

# args: KEY; a value of the lease (or static setting) in force
lease() {
    sed -n "s/^$1=//p" "$OB_NET_DIR/lease" 2>/dev/null | head -n 1
}
