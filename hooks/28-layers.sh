# Phase "layers": more squashfs images stacked over the image: overlayboot.layers=A,B,... or,
# when that is not given, the file "layers" next to the image (one name a line, # comments).
# Names are relative to the image's directory (or /absolute on the medium); the first is
# right above the image, the last on top. Each is mounted read-only at $OB_RUN/layers/N
# (with toram copied to RAM first); phase lower puts them over the image in OB_LOWER, and
# the image id becomes a digest of the image's and the layers' ids (each layer's
# /.overlayboot/image-id, or its sha256), so every stack keeps its own changes.
# In: OB_IMAGE_FILE, OB_IMAGE, OB_LAYERS, OB_TORAM. Out: OB_LAYERS_LOWER (top first,
# colon-separated), OB_LAYERS_ID.
OB_LAYERS_LOWER=
OB_LAYERS_ID=
if [ ! -b "$OB_IMAGE_FILE" ]; then
    image_dir=${OB_IMAGE_FILE%/*}
    names=$OB_LAYERS
    if [ -z "$names" ] && [ -f "$image_dir/layers" ]; then
        names=$(sed -e 's/#.*//' "$image_dir/layers" | tr -s ' \t\n' '   ' | sed 's/^ *//; s/ *$//')
        log "layers: from ${OB_IMAGE%/*}/layers: $names"
    fi
    n=0
    for name in $names; do
        n=$((n + 1))
        case $name in
            /*) file=${OB_IMAGE_FILE%"$OB_IMAGE"}$name ;;
            *) file=$image_dir/$name ;;
        esac
        [ -f "$file" ] || die "no layer image $name next to $OB_IMAGE (overlayboot.layers or ${OB_IMAGE%/*}/layers)"
        if [ -n "$OB_TORAM" ]; then
            mkdir -p "$OB_RUN/toram-layers"
            grep -q " $OB_RUN/toram-layers " /proc/mounts ||
                mount -t tmpfs -o mode=0700 tmpfs "$OB_RUN/toram-layers" ||
                die "cannot make a tmpfs for the layers (overlayboot.toram)"
            cp "$file" "$OB_RUN/toram-layers/$n.squashfs" || die "copying the layer $name to RAM failed"
            file=$OB_RUN/toram-layers/$n.squashfs
        fi
        mkdir -p "$OB_RUN/layers/$n"
        mount -t squashfs -o ro,loop "$file" "$OB_RUN/layers/$n" ||
            die "cannot mount the layer image $name: not a squashfs, or corrupt"
        id=$(head -c 65 "$OB_RUN/layers/$n/$OB_IMAGE_ID_FILE" 2> /dev/null | tr -d '\n')
        valid_id "$id" || id=$(sha256sum "$file" | cut -c1-32)
        OB_LAYERS_ID="$OB_LAYERS_ID $id"
        OB_LAYERS_LOWER=$OB_RUN/layers/$n${OB_LAYERS_LOWER:+:$OB_LAYERS_LOWER}
        log "layer $n: $name (id $id)"
    done
    [ -z "$OB_LAYERS_LOWER" ] || state layers "$names"
elif [ -n "$OB_LAYERS" ]; then
    log "WARNING: overlayboot.layers: the medium is a bare squashfs: no layers"
fi
