#!/bin/sh
# The power-cut workload (tests/qemu/test_powercut.py), run in the live root of the test
# image on a persistence partition. First it prints what it reads (STATE md5 path, every
# tracked file), then runs the operations the host planned (tests/qemu/powercut_model.py),
# one a line, read from the block device $1, until "end":
#   put IDX PATH PAT        cat /pat/PAT > PATH (a truncate, then one write)
#   rep IDX PATH PAT        the same into PATH.tmp, then mv PATH.tmp PATH
#   app IDX PATH REC        cat /pat/REC >> PATH (one write)
#   rm IDX PATH             rm -f PATH
#   blk IDX PATH PAT N S    N 4 KiB blocks of /pat/PAT into PATH from block S, in place
#   mv IDX FROM TO          rename (the directories of /tree, which come from the lower)
#   sync IDX PATH           fsync PATH (if it exists) and its directory, then report what
#                           it holds: "FSYNCED IDX md5|absent|names" (names: for /tree)
# Before each operation it prints @IDX: the host cuts the power after one of them.
echo "STATE-BEGIN"
find /data /new /big /tree -type f | sort | xargs md5sum | sed 's/^/STATE /'
echo "WORKLOAD-START"
while read -r verb idx a b c d; do
    [ "$verb" = end ] && break
    echo "@$idx"
    case $verb in
        put) cat "/pat/$b" > "$a" ;;
        rep) cat "/pat/$b" > "$a.tmp" && mv "$a.tmp" "$a" ;;
        app) cat "/pat/$b" >> "$a" ;;
        rm) rm -f "$a" ;;
        blk) dd if="/pat/$b" of="$a" bs=4096 count="$c" seek="$d" conv=notrunc 2>/dev/null ;;
        mv) mv "$a" "$b" ;;
        sync)
            if [ -e "$a" ]; then sync "$a"; fi &&
                sync "$(dirname "$a")" &&
                if [ "$a" = /tree ]; then
                    got=$(echo $(ls /tree))
                elif [ -e "$a" ]; then
                    got=$(md5sum < "$a") && got=${got%% *}
                else
                    got=absent
                fi &&
                echo "FSYNCED $idx $got"
            ;;
        *) false ;;
    esac || echo "FAILED $idx $verb $a"
done < "$1"
echo "WORKLOAD-END"
