# Helpers of the network boot (phases network and fetch; POSIX sh, busybox ash). Sourced
# by hooks/15-network.sh after lib.sh.

OB_NET_DIR=$OB_RUN/net
# the lazy HTTP reader's pid file, inside its chroot ($OB_RUN); shutdown.sh spares it
OB_HTTP_PID=/run/overlayboot/http.pid

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

# --- phase fetch -----------------------------------------------------------------------

# args: SERVER-ADDRESS REMOTE-PATH DIR; mounts the NFS export read-only at DIR (NFSv4.1,
# then 4.2: the kernel takes text options, no mount.nfs needed); prints the error on failure.
# 4.1 first: 4.2's READ_PLUS (sparse reads) is where servers differ most (nfs-ganesha's has
# garbled executables here), and a read-only lower gains nothing from it
nfs_mount() {
    mkdir -p "$3"
    for v in 4.1 4.2; do
        err=$(mount -t nfs4 -o "ro,hard,vers=$v,proto=tcp,port=$OB_NET_PORT,addr=$1,timeo=50" \
            "$1:$2" "$3" 2>&1) && return 0
    done
    echo "${err#mount: }"
    return 1
}

# args: SERVER-ADDRESS; an NFS lower (see 25-fetch.sh)
nfs_lower() {
    nfs=$OB_RUN/nfs
    path=$OB_NET_PATH
    [ -n "$OB_NET_IMAGE_FILE" ] && path=${OB_NET_PATH%/*}
    err=$(nfs_mount "$1" "${path:-/}" "$nfs") ||
        die "cannot mount the NFS export $OB_NET_HOST:${path:-/}: $err (is that path exported? overlayboot.lower=$OB_NET_LOWER)"
    log "fetch: NFS $OB_NET_HOST:${path:-/} mounted read-only"
    if [ -n "$OB_NET_IMAGE_FILE" ]; then
        OB_IMAGE_FILE=$nfs/${OB_NET_PATH##*/}
        [ -f "$OB_IMAGE_FILE" ] ||
            die "no image ${OB_NET_PATH##*/} in the NFS export $OB_NET_HOST:$path; it holds: $(ls "$nfs" | tr '\n' ' ')"
    elif [ -f "$nfs$OB_IMAGE" ]; then
        OB_IMAGE_FILE=$nfs$OB_IMAGE
    elif [ -e "$nfs$OB_INIT" ] || [ -L "$nfs$OB_INIT" ]; then
        nfs_tree "$nfs"
    else
        die "the NFS export $OB_NET_HOST:$path holds neither an image $OB_IMAGE (overlayboot.image=) nor a root tree with $OB_INIT; it holds: $(ls "$nfs" | tr '\n' ' ')"
    fi
}

# args: DIR; the NFS tree at DIR becomes the lower as it is (bound at $OB_RUN/lower)
nfs_tree() {
    OB_LOWER=$OB_RUN/lower
    mkdir -p "$OB_LOWER"
    mount --bind "$1" "$OB_LOWER" || die "cannot bind the NFS tree at $OB_LOWER"
    OB_LEGACY_ID=nfs-tree
    OB_IMAGE_ID=
    if [ -f "$OB_LOWER/$OB_IMAGE_ID_FILE" ]; then
        OB_IMAGE_ID=$(head -c 65 "$OB_LOWER/$OB_IMAGE_ID_FILE" | tr -d '\n')
        valid_id "$OB_IMAGE_ID" || die "the NFS tree has a bad /$OB_IMAGE_ID_FILE ('$OB_IMAGE_ID')"
        state image_id "$OB_IMAGE_ID"
    elif [ "$OB_UPPER_KIND" != tmpfs ]; then
        die "the NFS tree has no /$OB_IMAGE_ID_FILE: its changes cannot be kept on a persistence partition (boot with overlayboot.upper=tmpfs, or put an id there)"
    fi
    state image "$OB_NET_LOWER"
    log "lower: the NFS tree $OB_NET_HOST:$OB_NET_PATH${OB_IMAGE_ID:+ (image id $OB_IMAGE_ID)}"
    OB_LOWER_READY=1
}

# args: none; prints the CA certificate for an https lower (overlayboot.lower.ca=, used when
# the file is there), copied to $OB_NET_DIR where the chrooted lazy reader sees it too
net_ca() {
    [ "$OB_NET_SCHEME" = https ] && [ -f "$OB_NET_CA" ] || return 0
    cp "$OB_NET_CA" "$OB_NET_DIR/ca.pem" && echo "$OB_NET_DIR/ca.pem"
}

# args: SERVER-ADDRESS; the http(s) image fetched whole into a tmpfs, its sha256 checked
http_whole() {
    mkdir -p "$OB_RUN/toram"
    mount -t tmpfs -o "size=90%,mode=0700" tmpfs "$OB_RUN/toram" ||
        die "cannot make a tmpfs for the image"
    OB_IMAGE_FILE=$OB_RUN/toram/image.squashfs
    log "fetch: $OB_NET_LOWER into RAM"
    "$OB_RUN/runtime/python" -m overlayboot.net.fetch "$OB_NET_LOWER" "$OB_IMAGE_FILE" \
        --address "$1" --sha256 "$OB_NET_SHA256" --patience "$OB_TIMEOUT" --ca "$(net_ca)" \
        > "$OB_RUN/net/fetch.out" 2>&1 ||
        die "$(sed -n 's/^ERROR: //p' "$OB_RUN/net/fetch.out" | head -n 1) (overlayboot.lower=$OB_NET_LOWER)"
    log "fetch: $(cat "$OB_RUN/net/fetch.out")"
    state toram yes
    state image "$OB_NET_LOWER"
}

# args: none; the first nbd device not in use (size 0), by name (nbd0)
free_nbd() {
    for d in /sys/block/nbd*; do
        [ -e "$d/size" ] && [ "$(cat "$d/size")" = 0 ] || continue
        echo "${d##*/}"
        return 0
    done
    return 1
}

# args: NAME; the size of the block device NAME in sectors (0 until an NBD client serves it)
dev_size() {
    cat "/sys/block/$1/size" 2> /dev/null || echo 0
}

# args: URL ADDRESS NAME; attaches the NBD export URL (at ADDRESS, or URL's server by name
# if empty) to a free nbd device, read-only or not as the server says: overlayboot.net.nbd
# shakes hands and stays in NBD_DO_IT, chrooted in $OB_RUN as the daemon is, with its pid
# in $OB_RUN/run/overlayboot/NAME.pid (shutdown.sh spares it), log in $OB_RUN/NAME.log.
# Sets NBD_DEV (nbd0); dies with the client's error line.
nbd_attach() {
    daemon_root || die "cannot prepare $OB_RUN for the NBD client"
    NBD_DEV=$(free_nbd) || die "no free nbd device: is the nbd module in this initramfs? ($1)"
    [ -b "$OB_RUN/dev/$NBD_DEV" ] ||
        mknod "$OB_RUN/dev/$NBD_DEV" b $(tr ':' ' ' < "/sys/block/$NBD_DEV/dev") ||
        die "cannot make $OB_RUN/dev/$NBD_DEV"
    chroot "$OB_RUN" /runtime/python --argv0 "@overlayboot-$3" -m overlayboot.net.nbd \
        "$1" "/dev/$NBD_DEV" --address "$2" --patience "$OB_TIMEOUT" --log "/$3.log" \
        --pid-file "/run/overlayboot/$3.pid" 2> "$OB_NET_DIR/$3.err" ||
        die "$(sed -n 's/^ERROR: //p' "$OB_NET_DIR/$3.err" | head -n 1) ($1)"
    pid=$(cat "$OB_RUN/run/overlayboot/$3.pid" 2>/dev/null)
    echo -1000 > "/proc/$pid/oom_score_adj" 2>/dev/null ||
        log "WARNING: the NBD client (pid $pid) is not protected from the OOM killer"
    # the kernel sizes the device once the client is in NBD_DO_IT
    net_deadline=$(($(cut -d. -f1 /proc/uptime) + OB_TIMEOUT))
    while [ "$(dev_size "$NBD_DEV")" = 0 ] && before_deadline; do sleep 0.1; done
    [ "$(dev_size "$NBD_DEV")" != 0 ] ||
        die "the nbd device /dev/$NBD_DEV did not come up after $OB_TIMEOUT s (log: $OB_RUN/$3.log)"
}

# args: SERVER-ADDRESS; an NBD lower: the export on an nbd device is the image, or a
# filesystem holding it (an ISO: OB_NET_IMAGE, else overlayboot.image)
nbd_lower() {
    nbd_attach "$OB_NET_LOWER" "$1" nbd
    nbd=$NBD_DEV
    state image "$OB_NET_LOWER"
    if [ "$(head -c 4 "/dev/$nbd")" = hsqs ]; then
        OB_IMAGE_FILE=/dev/$nbd
        log "fetch: NBD $OB_NET_LOWER on /dev/$nbd: the image"
        return 0
    fi
    mkdir -p "$OB_RUN/nbd"
    mount -o ro "/dev/$nbd" "$OB_RUN/nbd" 2> /dev/null ||
        die "the NBD export $OB_NET_LOWER is neither a squashfs image nor a filesystem this initramfs mounts"
    image=${OB_NET_IMAGE:-$OB_IMAGE}
    OB_IMAGE_FILE=$OB_RUN/nbd$image
    [ -f "$OB_IMAGE_FILE" ] ||
        die "the NBD export $OB_NET_LOWER holds no $image; it holds: $(ls "$OB_RUN/nbd" | tr '\n' ' ')"
    log "fetch: NBD $OB_NET_LOWER on /dev/$nbd, the image $image in it"
}

# args: none; the persistence on the server (overlayboot.upper=nbd://..., {mac}: this
# interface's MAC as 52-54-00-12-34-56) attached read-write; phases persistence and upper
# then take the device as overlayboot.upper=/dev/nbdN (an ext4 partition, checked first)
nbd_upper() {
    mac=$(tr ':' '-' < "/sys/class/net/$OB_NET_IF/address")
    url=$(echo "$OB_NET_UPPER" | sed "s/{mac}/$mac/g")
    # resolved here: the chrooted client has no resolv.conf
    server=$("$OB_RUN/runtime/python" -m overlayboot.net.reach "$OB_NET_UPPER_HOST" "$OB_NET_UPPER_PORT" "$OB_TIMEOUT" 2>"$OB_NET_DIR/reach.err") ||
        die "$(sed 's/^ERROR: //' "$OB_NET_DIR/reach.err") (overlayboot.upper=$url)"
    nbd_attach "$url" "$server" nbd-upper
    [ "$(cat "/sys/block/$NBD_DEV/ro")" = 0 ] ||
        die "the server exports $url read-only: it cannot keep changes (overlayboot.upper=)"
    OB_UPPER_KIND=path
    OB_UPPER=/dev/$NBD_DEV
    state upper_url "$url"
    log "fetch: the persistence $url on /dev/$NBD_DEV"
}

# args: SERVER-ADDRESS; the http(s) image as a file read lazily (overlayboot.net.httpfs),
# chrooted in $OB_RUN as the overlay daemon is (so it survives switch_root)
http_lazy() {
    daemon_root || die "cannot prepare $OB_RUN for the lazy HTTP reader"
    mkdir -p "$OB_RUN/http"
    ca=$(net_ca)
    chroot "$OB_RUN" /runtime/python --argv0 @overlayboot-http -m overlayboot.net.httpfs \
        "$OB_NET_LOWER" /http --address "$1" --cache "$OB_NET_CACHE" --ca "${ca#"$OB_RUN"}" \
        --patience "$OB_TIMEOUT" --log /httpfs.log --as-root --pid-file "$OB_HTTP_PID" \
        2> "$OB_RUN/net/httpfs.err" ||
        die "$(sed -n 's/^ERROR: //p' "$OB_RUN/net/httpfs.err" | head -n 1) (overlayboot.lower=$OB_NET_LOWER; log: $OB_RUN/httpfs.log)"
    # the chrooted reader has no /proc: its OOM protection from here, as the daemon's
    pid=$(cat "$OB_RUN$OB_HTTP_PID" 2>/dev/null)
    echo -1000 > "/proc/$pid/oom_score_adj" 2>/dev/null ||
        log "WARNING: the lazy HTTP reader (pid $pid) is not protected from the OOM killer"
    OB_IMAGE_FILE=$OB_RUN/http/image.squashfs
    log "fetch: $OB_NET_LOWER read lazily ($((OB_NET_CACHE >> 20)) MiB cache)"
    state image "$OB_NET_LOWER"
}
