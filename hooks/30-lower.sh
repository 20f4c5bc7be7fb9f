# Phase "lower": mount the squashfs image read-only at $OB_RUN/lower (after copying it to RAM
# with overlayboot.toram, so that the medium can be removed), and find the image's id.
# The id is what mkimage put in the image (/.overlayboot/image-id: a digest of the root
# tree); an image built otherwise has none, and its id is then the sha256 of the image file
# (computed only when a persistence partition needs it: it reads the whole image).
# With layers (phase layers, OB_LAYERS_LOWER and OB_LAYERS_ID), OB_LOWER has them on top
# and the id covers them too; state lowers=.
# In: OB_IMAGE_FILE, OB_TORAM, OB_UPPER_KIND. Out: OB_LOWER, OB_IMAGE_ID (empty when not
# needed and not in the image), OB_LEGACY_ID (mkfs time and size: the id of older releases).
if [ "$OB_OVERLAY" = block ]; then  # hooks/block.sh
    # shellcheck source=block.sh
    . "$OVERLAYBOOT_HOOKS/block.sh"
    block_lower
    return 0
fi
# Nothing to do when phase fetch has mounted an NFS tree as the lower (OB_LOWER_READY).
[ -z "${OB_LOWER_READY:-}" ] || return 0
OB_LOWER=$OB_RUN/lower
mkdir -p "$OB_LOWER"

if [ -b "$OB_IMAGE_FILE" ]; then
    image_size=$(blockdev --getsize64 "$OB_IMAGE_FILE")
else
    image_size=$(stat -c %s "$OB_IMAGE_FILE")
fi
OB_LEGACY_ID=$(od -An -tu4 -j8 -N4 "$OB_IMAGE_FILE" | tr -d ' ')-$image_size

[ -z "$OB_TORAM" ] || image_to_ram "$image_size" image.squashfs

# an ext4 image (what overlayboot.overlay=block boots) is a lower layer too: read-only,
# its journal not replayed (noload)
mount -t squashfs -o ro,loop "$OB_IMAGE_FILE" "$OB_LOWER" 2>/dev/null ||
    mount -t ext4 -o ro,noload,loop "$OB_IMAGE_FILE" "$OB_LOWER" 2>/dev/null ||
    mount -t squashfs -o ro "$OB_IMAGE_FILE" "$OB_LOWER" ||
    die "cannot mount the image $OB_IMAGE: not a squashfs, or corrupt"
ls "$OB_LOWER" > /dev/null 2>&1 || die "the image $OB_IMAGE is unreadable (corrupt squashfs)"
[ -e "$OB_LOWER$OB_INIT" ] || [ -L "$OB_LOWER$OB_INIT" ] ||
    die "the image $OB_IMAGE has no $OB_INIT (init=), or it cannot be read (corrupt squashfs?)"
OB_IMAGE_ID=
if [ -f "$OB_LOWER/$OB_IMAGE_ID_FILE" ]; then
    OB_IMAGE_ID=$(head -c 65 "$OB_LOWER/$OB_IMAGE_ID_FILE" | tr -d '\n')
    valid_id "$OB_IMAGE_ID" ||
        die "the image $OB_IMAGE has a bad /$OB_IMAGE_ID_FILE ('$OB_IMAGE_ID'): rebuild it with overlayboot build squashfs"
    id_from=/$OB_IMAGE_ID_FILE
elif [ "$OB_UPPER_KIND" != tmpfs ]; then
    log "the image has no /$OB_IMAGE_ID_FILE (not built by overlayboot): its id is its sha256"
    OB_IMAGE_ID=$(sha256sum "$OB_IMAGE_FILE" | cut -c1-32)
    valid_id "$OB_IMAGE_ID" || die "cannot read the image $OB_IMAGE to compute its sha256"
    id_from="sha256 of the image file"
fi
if [ -n "$OB_LAYERS_LOWER" ]; then # the layers of phase layers, over the image
    OB_LOWER=$OB_LAYERS_LOWER:$OB_LOWER
    [ -z "$OB_IMAGE_ID" ] ||
        OB_IMAGE_ID=$(echo "$OB_IMAGE_ID$OB_LAYERS_ID" | sha256sum | cut -c1-32)
    id_from="${id_from:-the image}, with its layers"
    state lowers "$OB_LOWER"
fi
if [ -n "$OB_IMAGE_ID" ]; then
    log "lower: $OB_IMAGE (image id $OB_IMAGE_ID, from $id_from)"
    state image_id "$OB_IMAGE_ID"
else
    log "lower: $OB_IMAGE (no /$OB_IMAGE_ID_FILE: not built by overlayboot)"
fi
