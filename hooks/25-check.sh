# Phase "check": with overlayboot.check (dracut's rd.live.check, live-boot's verify-checksums,
# archiso's checksum: overlayboot/bootparams.py), every file the medium's SHA256SUMS lists
# (on the medium, or in the ISO file found with findiso) is read and compared before the
# image is used, with progress lines (python -m overlayboot.mediacheck). A file that does
# not match, or is missing, stops the boot with the ERROR line; a medium without
# SHA256SUMS gets a WARNING line and boots.
# In: OB_CHECK, OB_IMAGE_FILE, OB_IMAGE. Out: check=ok|none in the state file.
if [ -n "$OB_CHECK" ]; then
    if [ -b "$OB_IMAGE_FILE" ]; then
        log "WARNING: overlayboot.check: the medium $OB_IMAGE_FILE is a bare squashfs, with no SHA256SUMS to check it against: not checked"
        state check none
    else
        "$OB_RUN/runtime/python" -m overlayboot.mediacheck "${OB_IMAGE_FILE%"$OB_IMAGE"}" "$OB_IMAGE" \
            2> "$OB_RUN/check.err"
        case $? in
            0) state check ok ;;
            3) state check none ;;
            *) die "$(head -n 1 "$OB_RUN/check.err")" ;;
        esac
    fi
fi
