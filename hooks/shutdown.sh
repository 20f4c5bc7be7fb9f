#!/bin/sh
# /run/initramfs/shutdown: overlayboot's shutdown environment (POSIX sh, busybox). Not a
# boot phase: phase switch (60-switch.sh) installs it with a static busybox in /run/initramfs.
# systemd's protocol (as dracut's): at poweroff/reboot the live root's init (systemd-shutdown,
# or the default busybox root's /sbin/init) binds /dev /proc /sys into /run/initramfs, pivots
# into it with the old root at /oldroot, and runs this as PID 1 with the verb as $1
# (poweroff, reboot, halt, kexec). Steps: sync; /run (the layers, the persistence partition,
# the daemon's chroot) out of the old root; every other process but the overlay daemon
# stopped; the old root unmounted, so the daemon finishes and exits; partial copy-ups sealed
# if /run/overlayboot/seal-at-shutdown exists; the layers and the persistence partition
# unmounted (its ext4 left clean); then the verb, forced. Never hangs: every wait is
# bounded, and a watchdog forces the verb after $WATCHDOG s.
export PATH=/bin
OB_RUN=/run/overlayboot
WATCHDOG=90
failed=0
busy=

# args: message...; a step, on the console
say() { echo "overlayboot: shutdown: $*"; }

# args: message...; a failed step: one ERROR line; the shutdown goes on
fail() {
    echo "ERROR: overlayboot: shutdown: $*"
    failed=1
}

# args: none; proc, sysfs and devtmpfs, where the init that handed over did not bind them
api_mounts() {
    [ -e /proc/self ] || mount -t proc proc /proc
    [ -d /sys/kernel ] || mount -t sysfs sysfs /sys
    [ -c /dev/console ] || mount -t devtmpfs devtmpfs /dev
}

# args: none; after $WATCHDOG s, the verb by force (no sync: it could hang too)
start_watchdog() {
    (
        sleep "$WATCHDOG"
        echo "ERROR: overlayboot: shutdown not done after $WATCHDOG s: forcing $verb"
        "$verb" -f -n
    ) &
    watchdog_pid=$!
}

# args: DIR; the mount points at or below DIR (unescaped), the deepest first, and of one
# depth the last mounted first (pivot_root moves the old root to the end of mountinfo)
mounts_under() {
    awk -v d="$1" 'BEGIN { n = 0; max = 0 }
        { m = $5; gsub(/\\040/, " ", m); gsub(/\\011/, "\t", m)
            if (m != d && index(m, d "/") != 1) next
            k = gsub("/", "/", m); l[n] = m; depth[n++] = k; if (k > max) max = k }
        END { for (k = max; k >= 0; k--) for (i = n - 1; i >= 0; i--)
            if (depth[i] == k) print l[i] }' /proc/self/mountinfo
}

# args: PID; whether PID is still running (a zombie has finished)
alive() {
    [ -r "/proc/$1/stat" ] || return 1
    read -r _ _ st _ < "/proc/$1/stat" 2>/dev/null || return 1
    [ "$st" != Z ]
}

# args: SPARED...; the pids of the processes to stop: not PID 1, this shell, kernel threads,
# the watchdog and its sleep, nor SPARED
others() {
    for p in /proc/[0-9]*; do
        pid=${p#/proc/}
        case " 1 $$ $watchdog_pid $* " in *" $pid "*) continue ;; esac
        [ -s "$p/cmdline" ] || continue
        read -r _ _ _ ppid _ < "$p/stat" 2>/dev/null || continue
        # this shell's own children (the one running this loop) and the watchdog's sleep
        case " $$ $watchdog_pid " in *" $ppid "*) continue ;; esac
        echo "$pid"
    done
}

# args: SPARED...; TERM, up to 5 s, then KILL for every other process
stop_others() {
    for sig in TERM KILL; do
        pids=$(others "$@")
        [ -n "$pids" ] || return 0
        say "sending SIG$sig to $(echo "$pids" | wc -l) processes"
        # shellcheck disable=SC2086  # one pid a word
        kill -s "$sig" $pids 2> /dev/null
        tries=20
        while [ "$tries" -gt 0 ]; do
            left=
            for pid in $pids; do alive "$pid" && left=1; done
            [ -z "$left" ] && break
            sleep 0.25
            tries=$((tries - 1))
        done
    done
    [ -z "$(others "$@")" ] || fail "some processes did not stop: $(others "$@" | tr '\n' ' ')"
}

# args: PID SECONDS; waits until PID has exited; fails after SECONDS
wait_exit() {
    tries=$(($2 * 4))
    while alive "$1"; do
        [ "$tries" -gt 0 ] || return 1
        sleep 0.25
        tries=$((tries - 1))
    done
}

# args: DIR; unmounts DIR (the mounts below first), each within 10 s; a busy one is
# remounted read-only (an ext4 then has its journal flushed and is marked clean), then
# detached lazily, and added to $busy
umount_tree() {
    IFS='
'
    for m in $(mounts_under "$1"); do
        timeout 10 umount "$m" 2> /dev/null && continue
        busy="$busy $m"
        if timeout 10 mount -o remount,ro "$m" 2> /dev/null; then
            fail "cannot unmount $m (busy): remounted read-only and detached"
        else
            fail "cannot unmount $m (busy), nor remount it read-only: detached"
        fi
        umount -l "$m" 2> /dev/null
    done
    unset IFS
}

# args: none; the overlay daemon's pid (none with kernel overlayfs)
daemon_pid() {
    cat "$OB_RUN"/run/overlayboot/mounts/*.pid 2> /dev/null | head -n 1
}

# args: none; the old root's /run (the layers, the persistence partition, the daemon's
# chroot: the daemon does not notice, its root moves along) moved to /run here, so that
# the old root can be unmounted without them
take_run() {
    mkdir -p /run
    mount --make-rprivate / 2> /dev/null
    mount --move /oldroot/run /run && return 0
    fail "cannot move /oldroot/run out of the old root: stopping the daemon by signal"
    OB_RUN=/oldroot/run/overlayboot
    return 1
}

# args: PID SECONDS; waits SECONDS for the daemon to finish by itself, then TERM (it ends
# its session and records its partial copy-ups), 5 s, then KILL
stop_daemon() {
    if wait_exit "$1" "$2"; then
        say "the overlay daemon (pid $1) has finished"
        return 0
    fi
    [ "$2" = 0 ] || fail "the overlay daemon (pid $1) still runs $2 s after the unmount: stopping it"
    kill -s TERM "$1" 2> /dev/null
    wait_exit "$1" 5 && return 0
    fail "the overlay daemon (pid $1) ignored SIGTERM: killing it"
    kill -s KILL "$1" 2> /dev/null
    wait_exit "$1" 2 || fail "the overlay daemon (pid $1) does not die"
}

# args: none; block mode (hooks/block.sh): the loop devices over the block daemon's file
# detached and its directory unmounted, so that the daemon commits its store, marks it
# clean and exits
block_detach() {
    [ -d "$OB_RUN/block" ] || return 0
    for f in /sys/block/loop*/loop/backing_file; do
        [ -r "$f" ] || continue
        case $(cat "$f") in
            */overlayboot/block/disk)
                d=${f#/sys/block/}
                losetup -d "/dev/${d%%/*}" || fail "cannot detach /dev/${d%%/*} from the block device"
                ;;
        esac
    done
    timeout 10 umount "$OB_RUN/block" || fail "cannot unmount the block device's $OB_RUN/block"
}

# args: none; with $OB_RUN/seal-at-shutdown, the partial copy-ups on the persistence
# partition made whole (kernel overlayfs format: overlayboot upper seal), within 60 s
seal_if_asked() {
    [ -e "$OB_RUN/seal-at-shutdown" ] || return 0
    grep -qx persistent=yes "$OB_RUN/state" || return 0
    upperdir=$(sed -n 's/^upperdir=//p' "$OB_RUN/state" | tail -n 1)
    say "sealing the partial copy-ups in $upperdir (seal-at-shutdown)"
    # several lowers with layers (phase layers: lowers= in the state file, boot-time paths)
    lowers=$(sed -n 's/^lowers=//p' "$OB_RUN/state" | tail -n 1 | sed "s|/run/overlayboot|$OB_RUN|g")
    timeout 60 "$OB_RUN/runtime/overlayboot" upper seal --lower "${lowers:-$OB_RUN/lower}" \
        "${OB_RUN%/run/overlayboot}$upperdir" || fail "sealing the partial copy-ups in $upperdir failed"
}

# args: none; an encrypted persistence file (hooks/35-persistence.sh): its filesystem
# unmounted and its device-mapper device closed, which releases the loop device over the
# file, so that the partition holding the file can be unmounted next
luks_file_close() {
    grep -qx encrypted_file=yes "$OB_RUN/state" || return 0
    timeout 10 umount "$OB_RUN/rw" || return 0 # busy: umount_tree says so
    "$OB_RUN/runtime/cryptsetup" close overlayboot-rw ||
        fail "cannot close the encrypted persistence file (overlayboot-rw)"
}

# args: none; the layers and the persistence partition unmounted, and said so
umount_layers() {
    dev=$(sed -n 's/^upper=//p' "$OB_RUN/state" | tail -n 1)
    busy=
    luks_file_close
    umount_tree "$OB_RUN"
    grep -qx persistent=yes "$OB_RUN/state" || return 0
    case "$busy " in
        *" $OB_RUN/rw "*) ;; # said above
        *) say "the persistence partition $dev is unmounted" ;;
    esac
}

verb=${1:-poweroff}
case $verb in
    poweroff | reboot | halt) ;;
    kexec) verb=reboot ;; # no kexec tool here: a plain reboot
    *) verb=poweroff ;;
esac
api_mounts
start_watchdog
say "$verb: syncing"
sync
moved=yes
take_run || moved=
dpid=$(daemon_pid)
# the lazy HTTP lower's reader (overlayboot.lower.lazy) and the NBD clients (lower, and
# persistence on the server) serve the daemon's layers: spared too; they end with the machine
hpid=$(cat "$OB_RUN/run/overlayboot/http.pid" "$OB_RUN"/run/overlayboot/nbd*.pid 2> /dev/null)
# shellcheck disable=SC2086  # no pid, or one each
stop_others $dpid $hpid
if [ -n "$moved" ]; then
    say "unmounting the old root"
    umount_tree /oldroot
    block_detach
fi
patience=0
[ -n "$moved" ] && patience=15
[ -z "$dpid" ] || stop_daemon "$dpid" "$patience"
seal_if_asked
sync
umount_layers
[ -n "$moved" ] || umount_tree /oldroot
sync
[ "$failed" = 0 ] || say "there were errors (see above)"
say "$verb"
"$verb" -f
while :; do # PID 1 must not exit
    sleep 5
    "$verb" -f -n
done
