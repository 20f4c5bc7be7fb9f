# Phase "early": the runtime to /run (so it survives switch_root) and the kernel command line.
# In: image.conf. Out: OB_* variables (python -m overlayboot.cmdline), $OB_RUN/runtime.
mkdir -p "$OB_RUN"
: > "$OB_STATE"
cp -a "$OVERLAYBOOT_RUNTIME" "$OB_RUN/runtime" || die "cannot copy the Python runtime to $OB_RUN"
params=$("$OB_RUN/runtime/python" -m overlayboot.cmdline) || die "bad kernel command line (see above)"
eval "$params"
state kernel "$(uname -r)"
state overlay "$OB_OVERLAY"
debug "parameters: medium=$(devspec "$OB_MEDIUM_KIND" "$OB_MEDIUM") image=$OB_IMAGE upper=$OB_UPPER_KIND:$OB_UPPER overlay=$OB_OVERLAY"
