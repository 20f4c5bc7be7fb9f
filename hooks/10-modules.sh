# Phase "modules": load the kernel modules the image carries, in dependency order.
# In: $OVERLAYBOOT_MODULES_LOAD (absolute .ko paths, load order). A module that does not load
# is reported, not fatal: the hardware may simply not be there.
loaded=0
failed=0
while read -r module; do
    [ -n "$module" ] || continue
    if err=$(insmod "$module" 2>&1); then
        loaded=$((loaded + 1))
    else
        case "$err" in
            *"File exists"*) loaded=$((loaded + 1)) ;;
            *)
                failed=$((failed + 1))
                debug "insmod ${module##*/}: $err"
                ;;
        esac
    fi
done < "$OVERLAYBOOT_MODULES_LOAD"
log "modules: $loaded loaded, $failed failed"
