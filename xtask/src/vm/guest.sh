#!/bin/bash
# Runs inside a `cargo xtask vm-test` guest (virtme-ng: the host's root file system, read-only,
# with tmpfs overlays; OUT is the one directory shared writable with the host).
#
#   guest.sh OUT TEST_BINARY TIMEOUT_SECONDS [libtest filter arguments...]
#
# Prepares what the privileged tests need from the kernel, then runs every test the filter
# selects in a process of its own (so one hung or crashed test cannot take the others with it),
# and writes OUT/results.tsv: test, result (pass, fail or timeout) and seconds. Each test's
# output goes to OUT/logs/<test>.log. OUT/done marks a run that reached its end.
set -u
out=$1 bin=$2 limit=$3
shift 3
mkdir -p "$out/logs"
exec > "$out/guest.log" 2>&1

export RUST_BACKTRACE=1
uname -r > "$out/kernel"

# L7R_GUEST_IS_HOST: the same runner for the host column, where the machine is as
# `cargo xtask setup` left it and nothing of the host's settings is touched.
if [ -z "${L7R_GUEST_IS_HOST:-}" ]; then
    export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
    # The runs in a VM are several times slower: tests that size their work (connection churn)
    # read this and do less, and say so.
    export L7R_IN_VM=1
    # The kernel asks this program to load modules (nft, iptables, veth on first use).
    echo /sbin/modprobe > /proc/sys/kernel/modprobe
    mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
    for m in veth nf_tables nft_chain_nat nf_nat nf_conntrack x_tables ip_tables \
             iptable_filter ip6_tables; do
        modprobe "$m" || echo "guest: modprobe $m failed"
    done
    echo "guest: prepared at uptime $(cut -d' ' -f1 /proc/uptime) s"
fi

cd /tmp
printf 'test\tresult\tseconds\n' > "$out/results.tsv"
tests=$("$bin" --list --format terse "$@" | sed -n 's/: test$//p')
for t in $tests; do
    start=$(date +%s%N)
    timeout -k 10 "$limit" "$bin" --exact "$t" --test-threads=1 --nocapture \
        > "$out/logs/$t.log" 2>&1
    rc=$?
    end=$(date +%s%N)
    case $rc in
        0) result=pass ;;
        124 | 137) result=timeout ;;
        *) result=fail ;;
    esac
    printf '%s\t%s\t%d.%01d\n' "$t" "$result" $(((end - start) / 1000000000)) \
        $(((end - start) / 100000000 % 10)) >> "$out/results.tsv"
    echo "guest: $t: $result"
done
touch "$out/done"
sync
