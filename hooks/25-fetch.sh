# Phase "fetch": the lower from the network (overlayboot.lower=, see overlayboot/net/lower.py).
# nfs://SERVER/PATH is mounted read-only (NFSv4, hard: reads wait while the server is away)
# at $OB_RUN/nfs: PATH is an image file (.squashfs .sfs .img), a directory holding the
# image (overlayboot.image=), or an unpacked root tree (bound at $OB_RUN/lower; phase lower
# then has nothing to do). http(s)://... is fetched whole into a tmpfs and its sha256
# checked (overlayboot.net.fetch), or with overlayboot.lower.lazy shown as a file read with
# range requests (overlayboot.net.httpfs, chrooted in $OB_RUN like the overlay daemon).
# nbd://SERVER/EXPORT is attached to an nbd device (overlayboot.net.nbd): the image, or a
# filesystem holding it. overlayboot.upper=nbd://... is attached too, read-write: the
# persistence partition of phases persistence and upper.
# In: OB_NET_LOWER/SCHEME/HOST/PORT/PATH/IMAGE_FILE/LAZY/SHA256/CACHE/CA/IMAGE/UPPER,
# OB_IMAGE, OB_INIT.
# Out: OB_IMAGE_FILE (an image phase lower mounts), or OB_LOWER_READY with OB_LOWER,
# OB_IMAGE_ID and OB_LEGACY_ID (a tree).
if [ -n "$OB_NET_LOWER" ]; then
    state lower_url "$OB_NET_LOWER"
    server=$("$OB_RUN/runtime/python" -m overlayboot.net.reach "$OB_NET_HOST" "$OB_NET_PORT" "$OB_TIMEOUT" 2>"$OB_RUN/net/reach.err") ||
        die "$(sed 's/^ERROR: //' "$OB_RUN/net/reach.err") (overlayboot.lower=$OB_NET_LOWER)"
    state net_server "$server"
    case "$OB_NET_SCHEME" in
        nfs) nfs_lower "$server" ;;
        nbd) nbd_lower "$server" ;;
        *)
            if [ -n "$OB_NET_LAZY" ]; then
                http_lazy "$server"
            else
                http_whole "$server"
            fi
            ;;
    esac
fi
[ -z "$OB_NET_UPPER" ] || nbd_upper
