#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# ipcmux vs raw sd-bus, in the same invocation, on ONE private dbus-daemon.
#
# Usage: bench/run.sh [BENCH_IPCMUX BENCH_RAW]
#   (binaries default to $BUILD/bench/bench-{ipcmux,raw}, BUILD=build)
#   bench/run.sh --table RAWFILE...   re-aggregate earlier results
#
# Every round runs each group of the selected MODES once, the runs of a group
# back to back (raw and ipcmux alternate who goes first from one round to the
# next).  Per round, each comparison gives a ratio measured/baseline (or a
# difference, or an absolute value); the tables show the median of those
# per-round figures [min-max] and the per-side medians, one table per issue.
#
# Environment:
#   REPEAT=5         rounds (interleaved pairs); >= 3 for a median
#   MODES="oneway pingpong"    groups to run; also
#                    region  (issue 3: 1/16/256 MiB regions, fresh, pool of 2,
#                             the same region again, inline; vs raw memfd/ay)
#                    senders (issue 4: senders inside messages, fd growth)
#                    loops   (issue 5: sd-event/GLib handlers, 4 send threads)
#                    flow    (issue 6: slow subchannel, 10,000 subchannels;
#                             with oneway/pingpong also the 2x and +10 us rows)
#                    all     every group
#   N_ONEWAY=200000  measured one-way messages per run (W_ONEWAY=2000 warm-up)
#   N_PING=15000     measured round trips per run (W_PING=200 warm-up)
#   N_IPC=300000     measured messages of the plain 64 B ipcmux runs of the
#                    senders/loops/flow groups (batched ipcmux runs at
#                    100-700 k/s: about a second)
#   N_SMALL=50000    measured messages of their raw reference and of the
#                    sender-carrying runs (W_SMALL=2000 warm-up for all)
#   RR_SUBS=10000    subchannels of the round-robin run (N_RR=300000,
#                    W_RR=10000 warm-up: every subchannel used once first)
#   N_SLOW=2000000   measured busy messages of the slow-subchannel runs
#                    (about half a second each: at 300,000 the solo run
#                    took 0.1 s and varied 0.7-1.1x between rounds)
#   SLOW_EVERY=1     one message to the slow subchannel per N busy ones
#   W_SLOW=141072    warm-up of every slow run (16 x 8192 + 10,000): the
#                    never-read subchannel's credit window (8192 messages)
#                    fills during it, also at 1:16; the same for all four so
#                    they differ only in the slow subchannel
#   SLOW_MAX=1000    backlog bound (messages) of the bounded slow run
#   N_LOCAL=1000000  messages of the same-process runs
#   N_KEEP=10000     senders the receiver keeps in the fd-growth run
#   PINGPONG_VIA=auto|attach|server   how the echo child's reply sender
#                    reaches the parent: auto tries sender transfer
#                    (attach) and falls back to a second one-shot server
#   IPC_FLAGS=""     extra flags for bench-ipcmux oneway/region runs (e.g. -X,
#                    see bench-ipcmux.c: a bus round trip before the sender
#                    exits)
#   CALLGRIND=0|1|only   1: also instructions/message; only: skip the timed
#                    rounds
#   CG_SETS="core paced batched senders"   which callgrind measurements:
#                    core     flood, one side under callgrind (N=CG_N vs 0)
#                    paced    one message at a time (sender sleeps
#                             CG_PACE_US after each), one side under
#                             callgrind, N=CG_PACED_N vs 0 (issue 6 unbatched)
#                    batched  flood with BOTH ends under callgrind, marginal
#                             cost from N=CG_FLOOD_N1 to N=CG_FLOOD_N2 (past
#                             the first credit window; issue 6 batched)
#                    senders  a sender inside every message, paced, and the
#                             same-process pair (issue 4)
#   CG_N=10000  CG_PACED_N=1000  CG_PACE_US=1000  CG_FLOOD_N1=10000
#   CG_FLOOD_N2=30000  CG_LOCAL_N=20000
#   STRICT=0         1: exit 1 if a bound FAILs or a run FAILED (for CI)
#   OUT=dir          raw results, tables, callgrind files (default: a new
#                    /tmp/ipcmux-bench.XXXXXX, kept and printed)
#   BENCH_CONF=path  bus config (default: bench-bus.conf beside this script)
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# ---------------------------------------------------------------- aggregation
# Input: RESULT lines tagged with rep=N.  Comparisons come in env CMP, one
# "section|title|measured run|baseline run|metric|bound" per line:
#   baseline "-"    the measured value itself is checked (e.g. fd_growth)
#   bound ">=0.8", "<=1.25", "<1", ">1"   on the median per-round ratio
#                   (or on the median value when the baseline is "-")
#   bound "d<=10"   on the median per-round difference measured - baseline
#   bound ""        information only
make_tables() {
        CMP="$CMP" awk '
function med(arr, n,   i, j, t) {
        for (i = 2; i <= n; i++) { t = arr[i]; for (j = i - 1; j >= 1 && arr[j] > t; j--) arr[j + 1] = arr[j]; arr[j + 1] = t }
        return (n % 2) ? arr[(n + 1) / 2] : (arr[n / 2] + arr[n / 2 + 1]) / 2
}
function fmt(x) {
        if (x < 0) return "-" fmt(-x)
        if (x >= 100000) return sprintf("%.1fk", x / 1000)
        if (x >= 10000) return sprintf("%.2fk", x / 1000)
        if (x >= 100) return sprintf("%.0f", x)
        if (x >= 10) return sprintf("%.1f", x)
        return sprintf("%.2f", x)
}
function cell(name, key,   n, i, a, lo, hi) {
        n = 0
        for (r = 1; r <= maxrep; r++) if ((name, key, r) in val) a[++n] = val[name, key, r]
        if (n == 0) return "-"
        lo = a[1]; hi = a[1]
        for (i = 1; i <= n; i++) { if (a[i] < lo) lo = a[i]; if (a[i] > hi) hi = a[i] }
        return sprintf("%s [%s–%s]", fmt(med(a, n)), fmt(lo), fmt(hi))
}
function check(m, bound,   b) {
        if (bound ~ /^d/) bound = substr(bound, 2)
        if (bound ~ /^>=/) return (m >= substr(bound, 3) + 0) ? "PASS" : "FAIL"
        if (bound ~ /^<=/) return (m <= substr(bound, 3) + 0) ? "PASS" : "FAIL"
        if (bound ~ /^>/) return (m > substr(bound, 2) + 0) ? "PASS" : "FAIL"
        if (bound ~ /^</) return (m < substr(bound, 2) + 0) ? "PASS" : "FAIL"
        return "(info)"
}
/^FAILED/ { failed[$2]++; if (!($2 in seen)) { seen[$2] = 1; order[++norder] = $2 }; next }
/^RESULT/ {
        name = $2; rep = 0
        for (i = 3; i <= NF; i++) { split($i, kv, "="); if (kv[1] == "rep") rep = kv[2] + 0 }
        if (rep > maxrep) maxrep = rep
        if (!(name in seen)) { seen[name] = 1; order[++norder] = name }
        runs[name]++
        for (i = 3; i <= NF; i++) {
                split($i, kv, "=")
                if (kv[2] == "-" || kv[1] == "rep") continue
                val[name, kv[1], rep] = kv[2] + 0
                if (kv[1] ~ DETAIL) { if (!((name, kv[1]) in dseen)) { dseen[name, kv[1]] = 1; dorder[++nd] = name SUBSEP kv[1] } }
        }
}
BEGIN { DETAIL = "^(fd_growth|fds0|fds1k|fds_end|rss_kb0|rss_kb1k|rss_kb_end|kept|slow_sent|slow_refused|slow_queued_msgs|slow_queued_bytes|slow_peak_msgs|slow_peak_bytes|slow_unref_s|rx_rss_kb|handout_s|tx_cpu_s|tx_sys_s|rx_cpu_s|rx_sys_s)$" }
END {
        print "| run | rounds | msgs/s median [min–max] | MiB/s | p50 µs | p99 µs |"
        print "|---|---|---|---|---|---|"
        for (k = 1; k <= norder; k++) {
                name = order[k]
                n = runs[name] + 0 ""
                if (failed[name]) n = n "+" failed[name] " failed"
                printf "| %s | %s | %s | %s | %s | %s |\n", name, n, cell(name, "msg_s"), cell(name, "mib_s"), cell(name, "p50_us"), cell(name, "p99_us")
        }
        if (nd > 0) {
                print ""
                print "| run | field | median [min–max] |"
                print "|---|---|---|"
                for (k = 1; k <= nd; k++) {
                        split(dorder[k], nk, SUBSEP)
                        printf "| %s | %s | %s |\n", nk[1], nk[2], cell(nk[1], nk[2])
                }
                for (k = 1; k <= norder; k++) {
                        name = order[k]
                        if ((name, "tx_rss_kb") in dseen || !(((name, "fd_growth") in dseen) || ((name, "slow_sent") in dseen) || (name ~ /busy-solo/))) continue
                        printf "| %s | %s | %s |\n", name, "tx_rss_kb (sending process)", cell(name, "tx_rss_kb")
                }
        }
        nc = split(ENVIRON["CMP"], lines, "\n")
        cursec = ""
        for (c = 1; c <= nc; c++) {
                if (lines[c] == "") continue
                split(lines[c], f, "|")
                sec = f[1]; title = f[2]; ipc = f[3]; raw = f[4]; key = f[5]; bound = f[6]
                np = 0; ni = 0; nr = 0
                delete rat; delete av; delete bv
                for (r = 1; r <= maxrep; r++) {
                        if ((ipc, key, r) in val) av[++ni] = val[ipc, key, r]
                        if (raw != "-" && (raw, key, r) in val) bv[++nr] = val[raw, key, r]
                        if (raw == "-") { if ((ipc, key, r) in val) rat[++np] = val[ipc, key, r]; continue }
                        if (!((ipc, key, r) in val && (raw, key, r) in val)) continue
                        if (bound ~ /^d/) rat[++np] = val[ipc, key, r] - val[raw, key, r]
                        else if (val[raw, key, r] > 0) rat[++np] = val[ipc, key, r] / val[raw, key, r]
                }
                if (ni == 0 && nr == 0) continue        # group not run
                if (sec != cursec) {
                        cursec = sec
                        print ""
                        print "#### " sec
                        print ""
                        print "| comparison | baseline median | measured median | measured vs baseline: median of per-round figures [min–max] | rounds | bound | verdict |"
                        print "|---|---|---|---|---|---|---|"
                }
                bshow = bound == "" ? "-" : bound
                if (np == 0) { printf "| %s | - | - | - | 0 | %s | no data |\n", title, bshow; continue }
                lo = rat[1]; hi = rat[1]
                for (i = 1; i <= np; i++) { if (rat[i] < lo) lo = rat[i]; if (rat[i] > hi) hi = rat[i] }
                m = med(rat, np)
                verdict = check(m, bound)
                if (raw == "-")
                        printf "| %s | - | %s | **%s** [%s–%s] (value) | %d | %s | %s |\n", title, fmt(m), fmt(m), fmt(lo), fmt(hi), np, bshow, verdict
                else if (bound ~ /^d/)
                        printf "| %s | %s | %s | **%+.1f** [%+.1f–%+.1f] (difference) | %d | %s | %s |\n", title, fmt(med(bv, nr)), fmt(med(av, ni)), m, lo, hi, np, bshow, verdict
                else
                        printf "| %s | %s | %s | **%.2fx** [%.2f–%.2f] | %d | %s | %s |\n", title, fmt(med(bv, nr)), fmt(med(av, ni)), m, lo, hi, np, bshow, verdict
        }
}'
}

S_CORE="core (perf-baseline §6): ipcmux vs raw sd-bus"
S3="issue 3: regions"
S4="issue 4: senders in messages"
S5="issue 5: loops and threads"
S6="issue 6: flow control and batching"

COMPARISONS_ONEWAY="$S_CORE|one-way 64 B msgs/s (vs raw no-reply calls)|ipcmux-oneway-64B|raw-oneway-64B|msg_s|>=0.8
$S_CORE|one-way 64 B msgs/s (vs raw with 1 MiB credit window, perf-baseline §6.1 row)|ipcmux-oneway-64B|raw-oneway-64B-win|msg_s|"
COMPARISONS_PINGPONG="$S_CORE|ping-pong 64 B p50 latency|ipcmux-pingpong-64B|raw-pingpong-64B|p50_us|<=1.2
$S_CORE|ping-pong 64 B p99 latency|ipcmux-pingpong-64B|raw-pingpong-64B|p99_us|<=1.2
$S_CORE|ping-pong 64 B round trips/s|ipcmux-pingpong-64B|raw-pingpong-64B|msg_s|"
# Fresh regions: time within 1.1x of raw's, i.e. rate >= 1/1.1 = 0.909x.
COMPARISONS_REGION=""
for sz in 1 16 256; do
        COMPARISONS_REGION+="$S3|${sz} MiB fresh region vs raw fresh sealed memfd (time <= 1.1x: rate >= 0.909x)|ipcmux-region-${sz}MiB|raw-memfd-sealW-${sz}MiB|msg_s|>=0.909
$S3|${sz} MiB pool of 2 regions (rewritten, acked) vs raw pool of 2 memfds|ipcmux-region-pool2-${sz}MiB|raw-memfd-pool2-${sz}MiB|msg_s|>=0.7
$S3|${sz} MiB same region sent again vs raw pool of 2 memfds|ipcmux-region-same-${sz}MiB|raw-memfd-pool2-${sz}MiB|msg_s|>=0.7
"
done
COMPARISONS_REGION+="$S3|16 MiB pool of 2 regions vs raw inline ay (window 32 MiB)|ipcmux-region-pool2-16MiB|raw-oneway-16MiB-win|msg_s|>=10
$S3|16 MiB same region vs raw inline ay (window 32 MiB)|ipcmux-region-same-16MiB|raw-oneway-16MiB-win|msg_s|>=10
$S3|1 MiB pool of 2 regions vs raw inline ay (window 16 MiB)|ipcmux-region-pool2-1MiB|raw-oneway-1MiB-win|msg_s|
$S3|1 MiB inline payload (ipcmux: inline, at the 1 MiB spill threshold) vs raw inline ay|ipcmux-oneway-1MiB|raw-oneway-1MiB-win|msg_s|
$S3|16 MiB inline payload (ipcmux spills it to a memfd) vs raw inline ay|ipcmux-oneway-16MiB|raw-oneway-16MiB-win|msg_s|
$S3|16 MiB inline payload (spilled) vs raw fresh sealed memfd|ipcmux-oneway-16MiB|raw-memfd-sealW-16MiB|msg_s|
$S3|256 MiB inline payload (spilled; too big for ay) vs raw fresh sealed memfd|ipcmux-oneway-256MiB|raw-memfd-sealW-256MiB|msg_s|"
COMPARISONS_SENDERS="$S4|64 B + a sender, to another process, msgs/s vs plain 64 B (same run)|ipcmux-s4-sender-64B|ipcmux-s4-plain-64B|msg_s|
$S4|64 B + a sender, within one process, msgs/s vs plain 64 B|ipcmux-local-64B-sender|ipcmux-local-64B|msg_s|
$S4|64 B + a NEW subchannel's sender per message, to another process, vs plain 64 B|ipcmux-s4-keep10k|ipcmux-s4-plain-64B|msg_s|
$S4|receiver fds: growth from the 1st to the last of $((${N_KEEP:-10000} + 0)) kept senders|ipcmux-s4-keep10k|-|fd_growth|<=0
$S4|receiver fds after the last kept sender|ipcmux-s4-keep10k|-|fds_end|
$S4|receiver RSS growth (KiB) over the kept senders|ipcmux-s4-keep10k|-|rss_growth_kb|"
COMPARISONS_LOOPS="$S5|receive handler + sd-event (attach_event) vs blocking recv, msgs/s|ipcmux-l5-event-64B|ipcmux-l5-recv-64B|msg_s|
$S5|receive handler + GMainLoop (libipcmux-glib) vs blocking recv, msgs/s|ipcmux-l5-glib-64B|ipcmux-l5-recv-64B|msg_s|
$S5|4 sending threads (clones of one sender) vs 1 thread, msgs/s|ipcmux-l5-T4-64B|ipcmux-l5-recv-64B|msg_s|
$S5|blocking recv vs raw no-reply calls (context)|ipcmux-l5-recv-64B|raw-oneway-64B-small|msg_s|"
COMPARISONS_FLOW="$S6|one-way 64 B msgs/s vs raw no-reply calls (goal: >= 2x)|ipcmux-oneway-64B|raw-oneway-64B|msg_s|>=2
$S6|ping-pong 64 B p50: ipcmux - raw (µs; goal <= +10)|ipcmux-pingpong-64B|raw-pingpong-64B|p50_us|d<=10
$S6|busy subchannel beside a never-read one (unbounded backlog) vs solo|ipcmux-busy-slow-64B|ipcmux-busy-solo-64B|msg_s|>=0.9
$S6|busy subchannel beside a never-read one (backlog bounded to ${SLOW_MAX:-1000}) vs solo|ipcmux-busy-slowQ-64B|ipcmux-busy-soloQ-64B|msg_s|>=0.9
$S6|busy subchannel beside a never-read one sent 1 message per 16 busy ones (unbounded) vs solo|ipcmux-busy-slow16-64B|ipcmux-busy-solo16-64B|msg_s|>=0.9
$S6|never-read subchannel, unbounded: backlog at the end (messages, ipcmux_sender_get_queued)|ipcmux-busy-slow-64B|-|slow_queued_msgs|
$S6|never-read subchannel, unbounded: backlog at the end (bytes of cost)|ipcmux-busy-slow-64B|-|slow_queued_bytes|
$S6|never-read subchannel, bounded: peak backlog (messages; bound ${SLOW_MAX:-1000})|ipcmux-busy-slowQ-64B|-|slow_peak_msgs|<=${SLOW_MAX:-1000}
$S6|never-read subchannel, bounded: sends refused with -ENOBUFS|ipcmux-busy-slowQ-64B|-|slow_refused|
$S6|${RR_SUBS:-10000} subchannels round robin vs raw single path, msgs/s|ipcmux-rr${RR_SUBS:-10000}-64B|raw-oneway-64B-small|msg_s|>=1
$S6|${RR_SUBS:-10000} subchannels round robin vs one ipcmux subchannel (busy solo)|ipcmux-rr${RR_SUBS:-10000}-64B|ipcmux-busy-solo-64B|msg_s|
$S6|one ipcmux subchannel (busy solo) vs raw single path (same group)|ipcmux-busy-solo-64B|raw-oneway-64B-small|msg_s|"

comparisons_for() { # GROUP...
        local g
        for g in "$@"; do
                case $g in
                oneway) echo "$COMPARISONS_ONEWAY" ;;
                pingpong) echo "$COMPARISONS_PINGPONG" ;;
                region) echo "$COMPARISONS_REGION" ;;
                senders) echo "$COMPARISONS_SENDERS" ;;
                loops) echo "$COMPARISONS_LOOPS" ;;
                flow) echo "$COMPARISONS_FLOW" ;;
                esac
        done
}
ALL_GROUPS="oneway pingpong region senders loops flow"

# RESULT lines gain derived fields: rss_growth_kb for the kept-senders run.
derive() {
        awk '/^RESULT/ && / rss_kb0=/ && !/ rss_growth_kb=/ { for (i = 3; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
                                        $0 = $0 " rss_growth_kb=" (v["rss_kb_end"] - v["rss_kb0"]) } { print }'
}

if [[ ${1:-} == --table ]]; then
        shift
        CMP=$(comparisons_for $ALL_GROUPS)
        cat "$@" | derive | make_tables
        exit 0
fi

# ---------------------------------------------------------------- parameters
BUILD=${BUILD:-$HERE/../build}
IPC=${1:-${BENCH_IPCMUX:-$BUILD/bench/bench-ipcmux}}
RAWB=${2:-${BENCH_RAW:-$BUILD/bench/bench-raw}}
CONF=${BENCH_CONF:-$HERE/bench-bus.conf}
REPEAT=${REPEAT:-5}
MODES=${MODES:-oneway pingpong}
[[ $MODES == all ]] && MODES=$ALL_GROUPS
N_ONEWAY=${N_ONEWAY:-200000}
W_ONEWAY=${W_ONEWAY:-2000}
N_PING=${N_PING:-15000}
W_PING=${W_PING:-200}
N_SMALL=${N_SMALL:-50000}
N_IPC=${N_IPC:-300000}
W_SMALL=${W_SMALL:-2000}
RR_SUBS=${RR_SUBS:-10000}
N_RR=${N_RR:-300000}
W_RR=${W_RR:-$RR_SUBS}
SLOW_EVERY=${SLOW_EVERY:-1}
W_SLOW=${W_SLOW:-141072}
N_SLOW=${N_SLOW:-2000000}
SLOW_MAX=${SLOW_MAX:-1000}
N_LOCAL=${N_LOCAL:-1000000}
N_KEEP=${N_KEEP:-10000}
PINGPONG_VIA=${PINGPONG_VIA:-auto}
CALLGRIND=${CALLGRIND:-0}
CG_SETS=${CG_SETS:-core paced batched senders}
IPC_FLAGS=${IPC_FLAGS:-}
CG_N=${CG_N:-10000}
CG_PACED_N=${CG_PACED_N:-1000}
CG_PACE_US=${CG_PACE_US:-1000}
CG_FLOOD_N1=${CG_FLOOD_N1:-10000}
CG_FLOOD_N2=${CG_FLOOD_N2:-30000}
CG_LOCAL_N=${CG_LOCAL_N:-20000}
OUT=${OUT:-$(mktemp -d /tmp/ipcmux-bench.XXXXXX)}

for b in "$IPC" "$RAWB"; do
        [[ -x $b ]] || { echo "run.sh: $b is not built (ninja -C BUILD bench/bench-ipcmux bench/bench-raw)" >&2; exit 2; }
done
[[ -f $CONF ]] || { echo "run.sh: no bus config $CONF" >&2; exit 2; }
command -v dbus-daemon >/dev/null || { echo "run.sh: dbus-daemon missing" >&2; exit 2; }
if [[ $CALLGRIND != 0 ]] && ! command -v valgrind >/dev/null; then
        echo "run.sh: CALLGRIND=$CALLGRIND needs valgrind" >&2
        exit 2
fi

mkdir -p "$OUT"
RAWOUT=$OUT/raw.txt
: >"$RAWOUT"
RUNDIR=$(mktemp -d /tmp/ipcmux-bench-run.XXXXXX)

# ------------------------------------------------------------ process hygiene
# Only what this script started is ever killed, by PID.
STARTED_PIDS=()
DAEMON_PID=
cleanup() {
        local pid
        for pid in "${STARTED_PIDS[@]}" $DAEMON_PID; do
                [[ -n $pid ]] || continue
                if kill -0 "$pid" 2>/dev/null; then
                        kill "$pid" 2>/dev/null || true
                        wait "$pid" 2>/dev/null || true
                fi
        done
        rm -rf "$RUNDIR"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_daemon ADDRFILE SOCKPATH [wrapper...]: sets LAST_PID
start_daemon() {
        local addrfile=$1 sock=$2 i
        shift 2
        "$@" dbus-daemon --config-file="$CONF" --address="unix:path=$sock" \
                --print-address=3 --nofork --nopidfile 3>"$addrfile" 2>>"$RUNDIR/daemon.log" &
        LAST_PID=$!
        for i in $(seq 1 500); do
                [[ -s $addrfile ]] && return 0
                sleep 0.02
        done
        echo "run.sh: dbus-daemon did not start: $(cat "$RUNDIR/daemon.log")" >&2
        exit 1
}

start_daemon "$RUNDIR/address" "$RUNDIR/bus"
DAEMON_PID=$LAST_PID
export DBUS_SESSION_BUS_ADDRESS
DBUS_SESSION_BUS_ADDRESS=$(head -n1 "$RUNDIR/address")
unset DBUS_STARTER_ADDRESS DBUS_STARTER_BUS_TYPE
# meson test sets MALLOC_PERTURB_ for tests; it would tax malloc-heavy code.
unset MALLOC_PERTURB_

if ! timeout 30 "$RAWB" pingpong -n 10 -t 0 >/dev/null 2>"$RUNDIR/sanity.txt"; then
        echo "run.sh: private bus not usable: $(cat "$RUNDIR/sanity.txt")" >&2
        exit 1
fi
if ! timeout 30 "$IPC" oneway -n 100 >/dev/null 2>"$RUNDIR/sanity.txt"; then
        echo "run.sh: bench-ipcmux oneway does not work: $(cat "$RUNDIR/sanity.txt")" >&2
        exit 1
fi

# Ping-pong bootstrap: sender transfer (attach), or the one-shot-server fallback.
VIA_NOTE=
if [[ $PINGPONG_VIA == auto ]]; then
        if timeout 30 "$IPC" pingpong -n 100 -w 10 -B attach >/dev/null 2>"$RUNDIR/attach.txt"; then
                PINGPONG_VIA=attach
        else
                PINGPONG_VIA=server
                VIA_NOTE="sender transfer (attach_sender) FAILED the probe: $(tr '\n' ' ' <"$RUNDIR/attach.txt"); ping-pong uses a second one-shot server"
                echo "run.sh: NOTE: $VIA_NOTE" >&2
        fi
fi

lib_note() {
        local lib
        lib=$(ldd "$IPC" 2>/dev/null | awk '/libipcmux\.so/ { print $3; exit }')
        [[ -n $lib && -f $lib ]] || { echo "?"; return; }
        lib=$(readlink -f "$lib")
        echo "$lib sha256 $(sha256sum "$lib" | cut -c1-16)… built $(date -u -r "$lib" '+%F %H:%M UTC')"
}

{
        echo "date: $(date -Is)"
        echo "host: $(uname -n)"
        echo "cpu: $(lscpu | sed -n 's/^Model name:[[:space:]]*//p') x $(nproc)"
        echo "kernel: $(uname -sr)"
        echo "libsystemd: $(pkg-config --modversion libsystemd 2>/dev/null || echo '?')"
        echo "dbus-daemon: $(dbus-daemon --version | head -n1)"
        echo "libipcmux: $(lib_note)"
        echo "loadavg before: $(cut -d' ' -f1-3 /proc/loadavg)"
        echo "REPEAT=$REPEAT MODES='$MODES' N_ONEWAY=$N_ONEWAY W_ONEWAY=$W_ONEWAY N_PING=$N_PING W_PING=$W_PING N_IPC=$N_IPC N_SMALL=$N_SMALL W_SMALL=$W_SMALL RR_SUBS=$RR_SUBS N_RR=$N_RR W_RR=$W_RR SLOW_EVERY=$SLOW_EVERY N_SLOW=$N_SLOW W_SLOW=$W_SLOW SLOW_MAX=$SLOW_MAX N_LOCAL=$N_LOCAL N_KEEP=$N_KEEP IPC_FLAGS='$IPC_FLAGS'"
        echo "ping-pong bootstrap: $PINGPONG_VIA${VIA_NOTE:+ ($VIA_NOTE)}"
} | tee "$OUT/machine.txt"

# ---------------------------------------------------------------- run groups
# One entry per run: "group|result name|command"; every command prints one
# RESULT line with that name (a failed run is recorded under it).
RUNS=()
add_region_size() { # SIZE_MIB N_FRESH N_POOL N_SAME N_INLINE_RAW N_INLINE_IPC
        local s=$1 g=region$1
        RUNS+=("$g|raw-memfd-sealW-${s}MiB|$RAWB memfd -s ${s}M -n $2 -t 0 -w 1 -S full"
               "$g|ipcmux-region-${s}MiB|$IPC region -s ${s}M -n $2 -w 1 $IPC_FLAGS"
               "$g|raw-memfd-pool2-${s}MiB|$RAWB memfd -s ${s}M -n $3 -t 0 -w 2 -R 2"
               "$g|ipcmux-region-pool2-${s}MiB|$IPC region -s ${s}M -n $3 -w 2 -R 2 $IPC_FLAGS"
               "$g|ipcmux-region-same-${s}MiB|$IPC region -s ${s}M -n $4 -w 2 -u $IPC_FLAGS")
        if [[ $5 != 0 ]]; then
                RUNS+=("$g|raw-oneway-${s}MiB-win|$RAWB oneway -s ${s}M -n $5 -t 0 -w 2 -W $((2 * s > 16 ? 2 * s : 16))M")
        fi
        RUNS+=("$g|ipcmux-oneway-${s}MiB|$IPC oneway -s ${s}M -n $6 -w 2 $IPC_FLAGS")
}
for g in $MODES; do
        case $g in
        oneway)
                RUNS+=("oneway|raw-oneway-64B|$RAWB oneway -s 64 -n $N_ONEWAY -t 0 -w $W_ONEWAY"
                       "oneway|ipcmux-oneway-64B|$IPC oneway -s 64 -n $N_ONEWAY -w $W_ONEWAY $IPC_FLAGS"
                       "oneway|raw-oneway-64B-win|$RAWB oneway -s 64 -n $N_ONEWAY -t 0 -w $W_ONEWAY -W 1M")
                ;;
        pingpong)
                RUNS+=("pingpong|raw-pingpong-64B|$RAWB pingpong -s 64 -n $N_PING -t 0 -w $W_PING"
                       "pingpong|ipcmux-pingpong-64B|$IPC pingpong -s 64 -n $N_PING -w $W_PING -B $PINGPONG_VIA -l ipcmux-pingpong-64B")
                ;;
        region)
                #               size fresh pool same inline-raw inline-ipcmux
                add_region_size 1    1500  4000 4000 1500       1500
                add_region_size 16   60    200  300  40         60
                add_region_size 256  6     24   30   0          6
                ;;
        senders)
                RUNS+=("senders|ipcmux-s4-plain-64B|$IPC oneway -s 64 -n $N_IPC -w $W_SMALL -l ipcmux-s4-plain-64B"
                       "senders|ipcmux-s4-sender-64B|$IPC oneway -s 64 -n $N_SMALL -w $W_SMALL -k sender -l ipcmux-s4-sender-64B"
                       "senders|ipcmux-s4-keep10k|$IPC oneway -s 64 -n $N_KEEP -w 0 -k newsender -K -l ipcmux-s4-keep10k"
                       "senders|ipcmux-local-64B|$IPC local -s 64 -n $N_LOCAL -w 10000"
                       "senders|ipcmux-local-64B-sender|$IPC local -s 64 -n $N_LOCAL -w 10000 -k sender")
                ;;
        loops)
                RUNS+=("loops|raw-oneway-64B-small|$RAWB oneway -s 64 -n $N_SMALL -t 0 -w $W_SMALL -l raw-oneway-64B-small"
                       "loops|ipcmux-l5-recv-64B|$IPC oneway -s 64 -n $N_IPC -w $W_SMALL -l ipcmux-l5-recv-64B"
                       "loops|ipcmux-l5-event-64B|$IPC oneway -s 64 -n $N_IPC -w $W_SMALL -D event -l ipcmux-l5-event-64B"
                       "loops|ipcmux-l5-glib-64B|$IPC oneway -s 64 -n $N_IPC -w $W_SMALL -D glib -l ipcmux-l5-glib-64B"
                       "loops|ipcmux-l5-T4-64B|$IPC oneway -s 64 -n $N_IPC -w $W_SMALL -T 4 -l ipcmux-l5-T4-64B")
                ;;
        flow)
                RUNS+=("flow|raw-oneway-64B-small|$RAWB oneway -s 64 -n $N_SMALL -t 0 -w $W_SMALL -l raw-oneway-64B-small"
                       # Each slow variant right after a solo run of its own (the pair
                       # stays adjacent in reversed rounds too): solo alone varied
                       # 3.4-5.0M msgs/s within one run, and a ratio against the one
                       # solo run of the round carried that drift.
                       "flow|ipcmux-busy-solo-64B|$IPC slow -s 64 -n $N_SLOW -w $W_SLOW -E 0"
                       "flow|ipcmux-busy-slow-64B|$IPC slow -s 64 -n $N_SLOW -w $W_SLOW -E $SLOW_EVERY"
                       "flow|ipcmux-busy-soloQ-64B|$IPC slow -s 64 -n $N_SLOW -w $W_SLOW -E 0 -l ipcmux-busy-soloQ-64B"
                       "flow|ipcmux-busy-slowQ-64B|$IPC slow -s 64 -n $N_SLOW -w $W_SLOW -E $SLOW_EVERY -q $SLOW_MAX"
                       "flow|ipcmux-busy-solo16-64B|$IPC slow -s 64 -n $N_SLOW -w $W_SLOW -E 0 -l ipcmux-busy-solo16-64B"
                       "flow|ipcmux-busy-slow16-64B|$IPC slow -s 64 -n $N_SLOW -w $W_SLOW -E 16 -l ipcmux-busy-slow16-64B"
                       "flow|ipcmux-rr$RR_SUBS-64B|$IPC rr -s 64 -n $N_RR -w $W_RR -M $RR_SUBS")
                ;;
        *) echo "run.sh: unknown group $g" >&2; exit 2 ;;
        esac
done
# loops and flow both carry raw-oneway-64B-small: keep one per round.
if [[ " $MODES " == *" loops "* && " $MODES " == *" flow "* ]]; then
        keep=()
        for e in "${RUNS[@]}"; do
                [[ $e == flow\|raw-oneway-64B-small\|* ]] || keep+=("$e")
        done
        RUNS=("${keep[@]}")
fi
CMP=$(comparisons_for $MODES)

run_one() { # "name|cmd" REP
        local name=${1%%|*} cmd=${1#*|} rep=$2 out rc=0
        out=$(timeout 300 $cmd 2>"$RUNDIR/err.txt") || rc=$?
        if [[ $rc != 0 ]] || ! grep -q "^RESULT $name " <<<"$out"; then
                echo "  FAILED ($rc): $cmd: $(tr '\n' ' ' <"$RUNDIR/err.txt")" >&2
                echo "FAILED $name rep=$rep" >>"$RAWOUT"
                return 0
        fi
        grep "^RESULT $name " <<<"$out" | sed "s/\$/ rep=$rep/" | derive | tee -a "$RAWOUT"
}

# Runs the collected group: forward on odd rounds, reversed on even ones.
flush_group() { # REP
        local rep=$1 i n=${#group_runs[@]}
        if (( rep % 2 == 1 )); then
                for ((i = 0; i < n; i++)); do run_one "${group_runs[i]}" "$rep"; done
        else
                for ((i = n - 1; i >= 0; i--)); do run_one "${group_runs[i]}" "$rep"; done
        fi
        group_runs=()
}

if [[ $CALLGRIND != only ]]; then
        echo
        echo "timed rounds (REPEAT=$REPEAT; within a group raw and ipcmux alternate who runs first):"
        START=$(date +%s)
        for rep in $(seq 1 "$REPEAT"); do
                echo "round $rep: loadavg $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine.txt"
                prev=
                group_runs=()
                for entry in "${RUNS[@]}"; do
                        g=${entry%%|*}
                        if [[ -n $prev && $g != "$prev" ]]; then flush_group "$rep"; fi
                        prev=$g
                        group_runs+=("${entry#*|}") # "name|cmd"
                done
                flush_group "$rep"
        done
        echo "timed rounds done in $(($(date +%s) - START)) s"
fi

# ---------------------------------------------------------------- callgrind
# Differential method of perf-baseline.md §5: Ir(N) - Ir(N0), divided by
# N - N0; the measured side runs under callgrind, the other side natively
# (except the batched set: both ends under callgrind).
CGD=$OUT/callgrind
CGTXT=$OUT/callgrind.txt
CGMD=$OUT/callgrind.md
cg_total() { awk '/^totals:/ { print $2 }' "$1"; }
wait_line() { # FILE REGEX
        local i
        for i in $(seq 1 1500); do
                grep -q "$2" "$1" 2>/dev/null && return 0
                sleep 0.02
        done
        echo "run.sh: no '$2' in $1" >&2
        exit 1
}
VG=(valgrind --tool=callgrind)

# All take: TAG N [flags for the sending side...]; set CG_IR.
cg_raw_sender() {
        local tag=$1 n=$2 f=$CGD/raw-sender-$1.$2 name=org.bench.CgSink
        shift 2
        : >"$RUNDIR/raw-serve.out" # no stale READY from the previous run
        "$RAWB" serve -N $name >"$RUNDIR/raw-serve.out" &
        local pid=$!
        STARTED_PIDS+=("$pid")
        wait_line "$RUNDIR/raw-serve.out" READY
        "${VG[@]}" --callgrind-out-file="$f" "$RAWB" send -N $name -n "$n" -t 0 "$@" >/dev/null 2>>"$OUT/valgrind.log"
        "$RAWB" send -N $name -n 0 -t 0 -q >/dev/null
        wait "$pid"
        CG_IR=$(cg_total "$f")
}
cg_raw_receiver() {
        local tag=$1 n=$2 f=$CGD/raw-receiver-$1.$2 name=org.bench.CgRecv
        shift 2
        : >"$RUNDIR/raw-serve.out" # no stale READY from the previous run
        "${VG[@]}" --callgrind-out-file="$f" "$RAWB" serve -N $name >"$RUNDIR/raw-serve.out" 2>>"$OUT/valgrind.log" &
        local pid=$!
        STARTED_PIDS+=("$pid")
        wait_line "$RUNDIR/raw-serve.out" READY
        "$RAWB" send -N $name -n "$n" -t 0 -q "$@" >/dev/null
        wait "$pid"
        CG_IR=$(cg_total "$f")
}
cg_ipc_sender() {
        local tag=$1 n=$2 f=$CGD/ipcmux-sender-$1.$2 name
        shift 2
        : >"$RUNDIR/ipc-serve.out" # no stale READY from the previous run
        "$IPC" serve -n "$n" >"$RUNDIR/ipc-serve.out" &
        local pid=$!
        STARTED_PIDS+=("$pid")
        wait_line "$RUNDIR/ipc-serve.out" READY
        name=$(sed -n 's/^NAME //p' "$RUNDIR/ipc-serve.out")
        "${VG[@]}" --callgrind-out-file="$f" "$IPC" send -c "$name" -n "$n" "$@" >/dev/null 2>>"$OUT/valgrind.log"
        wait "$pid"
        CG_IR=$(cg_total "$f")
}
cg_ipc_receiver() {
        local tag=$1 n=$2 f=$CGD/ipcmux-receiver-$1.$2 name
        shift 2
        : >"$RUNDIR/ipc-serve.out" # no stale READY from the previous run
        "${VG[@]}" --callgrind-out-file="$f" "$IPC" serve -n "$n" >"$RUNDIR/ipc-serve.out" 2>>"$OUT/valgrind.log" &
        local pid=$!
        STARTED_PIDS+=("$pid")
        wait_line "$RUNDIR/ipc-serve.out" READY
        name=$(sed -n 's/^NAME //p' "$RUNDIR/ipc-serve.out")
        "$IPC" send -c "$name" -n "$n" "$@" >/dev/null
        wait "$pid"
        CG_IR=$(cg_total "$f")
}
# Both ends under callgrind: TAG N; sets CG_IR_S and CG_IR_R.
cg_raw_both() {
        local tag=$1 n=$2 fs=$CGD/raw-sender-$1.$2 fr=$CGD/raw-receiver-$1.$2 name=org.bench.CgBoth
        : >"$RUNDIR/raw-serve.out" # no stale READY from the previous run
        "${VG[@]}" --callgrind-out-file="$fr" "$RAWB" serve -N $name >"$RUNDIR/raw-serve.out" 2>>"$OUT/valgrind.log" &
        local pid=$!
        STARTED_PIDS+=("$pid")
        wait_line "$RUNDIR/raw-serve.out" READY
        "${VG[@]}" --callgrind-out-file="$fs" "$RAWB" send -N $name -n "$n" -t 0 -q >/dev/null 2>>"$OUT/valgrind.log"
        wait "$pid"
        CG_IR_S=$(cg_total "$fs")
        CG_IR_R=$(cg_total "$fr")
}
cg_ipc_both() {
        local tag=$1 n=$2 fs=$CGD/ipcmux-sender-$1.$2 fr=$CGD/ipcmux-receiver-$1.$2 name
        : >"$RUNDIR/ipc-serve.out" # no stale READY from the previous run
        "${VG[@]}" --callgrind-out-file="$fr" "$IPC" serve -n "$n" >"$RUNDIR/ipc-serve.out" 2>>"$OUT/valgrind.log" &
        local pid=$!
        STARTED_PIDS+=("$pid")
        wait_line "$RUNDIR/ipc-serve.out" READY
        name=$(sed -n 's/^NAME //p' "$RUNDIR/ipc-serve.out")
        "${VG[@]}" --callgrind-out-file="$fs" "$IPC" send -c "$name" -n "$n" >/dev/null 2>>"$OUT/valgrind.log"
        wait "$pid"
        CG_IR_S=$(cg_total "$fs")
        CG_IR_R=$(cg_total "$fr")
}
cg_ipc_local() { # TAG N KIND
        local f=$CGD/ipcmux-local-$1.$2
        "${VG[@]}" --callgrind-out-file="$f" "$IPC" local -n "$2" -w 0 -k "$3" >/dev/null 2>>"$OUT/valgrind.log"
        CG_IR=$(cg_total "$f")
}
per_msg() { awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN { printf "%.1f", (b - a) / n }'; }
cg_line() { # LABEL N0 N IR0 IR -> echo per message, log it
        local pm
        pm=$(per_msg "$4" "$5" "$(($3 - $2))")
        echo "CALLGRIND $1 n0=$2 n=$3 ir_n0=$4 ir_n=$5 per_msg=$pm" >>"$CGTXT"
        echo "$pm"
}
# Row of a raw-vs-ipcmux table with a ratio bound: SIDE RAW IPC BOUND ("<=1.25", "<1")
cg_row() {
        awk -v s="$1" -v r="$2" -v i="$3" -v b="$4" 'BEGIN {
                q = i / r; op = b; lim = b
                sub(/[0-9.]+$/, "", op); sub(/^[<>=]+/, "", lim); lim += 0
                v = (op == "<=") ? (q <= lim) : (op == "<") ? (q < lim) : (op == ">=") ? (q >= lim) : (q > lim)
                printf "| %s | %.0f | %.0f | %+.0f | **%.2fx** | %s | %s |\n", s, r, i, i - r, q, b "x", v ? "PASS" : "FAIL" }'
}
annotate() { # CALLGRIND_FILE OUTFILE
        command -v callgrind_annotate >/dev/null || return 0
        {
                echo "== inclusive, top 70 =="
                callgrind_annotate --inclusive=yes "$1" 2>/dev/null | sed -n '/^Ir/,$p' | head -72
                echo
                echo "== self, top 40 =="
                callgrind_annotate --inclusive=no "$1" 2>/dev/null | sed -n '/^Ir/,$p' | head -42
        } >"$2" || true
}
has_set() { [[ " $CG_SETS " == *" $1 "* ]]; }

if [[ $CALLGRIND != 0 ]]; then
        mkdir -p "$CGD"
        : >"$CGTXT"
        : >"$CGMD"
        if has_set core; then
                echo
                echo "callgrind (core): user-space instructions per 64 B message, flood, (Ir(N=$CG_N) - Ir(N=0)) / $CG_N"
                cg_raw_sender core 0;          rs0=$CG_IR
                cg_raw_sender core "$CG_N";    rs1=$CG_IR
                cg_ipc_sender core 0;          is0=$CG_IR
                cg_ipc_sender core "$CG_N";    is1=$CG_IR
                cg_raw_receiver core 0;        rr0=$CG_IR
                cg_raw_receiver core "$CG_N";  rr1=$CG_IR
                cg_ipc_receiver core 0;        ir0=$CG_IR
                cg_ipc_receiver core "$CG_N";  ir1=$CG_IR
                rs=$(cg_line raw-sender-core 0 "$CG_N" "$rs0" "$rs1")
                is=$(cg_line ipcmux-sender-core 0 "$CG_N" "$is0" "$is1")
                rr=$(cg_line raw-receiver-core 0 "$CG_N" "$rr0" "$rr1")
                ir=$(cg_line ipcmux-receiver-core 0 "$CG_N" "$ir0" "$ir1")
                {
                        echo
                        echo "#### core: flood, one side under callgrind, the other native (N=$CG_N vs 0)"
                        echo
                        echo "| side | raw sd-bus instr/msg | ipcmux instr/msg | ipcmux − raw | ipcmux/raw | budget (perf-baseline §6.3) | verdict |"
                        echo "|---|---|---|---|---|---|---|"
                        awk -v r="$rs" -v i="$is" 'BEGIN { printf "| sender | %.0f | %.0f | %+.0f | %.2fx | raw + 1500 = %.0f | %s |\n", r, i, i - r, i / r, r + 1500, (i <= r + 1500) ? "PASS" : "FAIL" }'
                        awk -v r="$rr" -v i="$ir" 'BEGIN { printf "| receiver | %.0f | %.0f | %+.0f | %.2fx | raw + 3000 = %.0f | %s |\n", r, i, i - r, i / r, r + 3000, (i <= r + 3000) ? "PASS" : "FAIL" }'
                } | tee -a "$CGMD"
                for who in ipcmux raw; do
                        for side in sender receiver; do
                                annotate "$CGD/$who-$side-core.$CG_N" "$OUT/$who-$side.annotate.txt"
                        done
                done
        fi
        if has_set paced; then
                echo
                echo "callgrind (paced): one message at a time (the sender sleeps ${CG_PACE_US} µs after each), N=$CG_PACED_N vs 0"
                P=(-i "$CG_PACE_US")
                cg_raw_sender paced 0 "${P[@]}";               prs0=$CG_IR
                cg_raw_sender paced "$CG_PACED_N" "${P[@]}";   prs1=$CG_IR
                cg_ipc_sender paced 0 "${P[@]}";               pis0=$CG_IR
                cg_ipc_sender paced "$CG_PACED_N" "${P[@]}";   pis1=$CG_IR
                cg_raw_receiver paced 0 "${P[@]}";             prr0=$CG_IR
                cg_raw_receiver paced "$CG_PACED_N" "${P[@]}"; prr1=$CG_IR
                cg_ipc_receiver paced 0 "${P[@]}";             pir0=$CG_IR
                cg_ipc_receiver paced "$CG_PACED_N" "${P[@]}"; pir1=$CG_IR
                prs=$(cg_line raw-sender-paced 0 "$CG_PACED_N" "$prs0" "$prs1")
                pis=$(cg_line ipcmux-sender-paced 0 "$CG_PACED_N" "$pis0" "$pis1")
                prr=$(cg_line raw-receiver-paced 0 "$CG_PACED_N" "$prr0" "$prr1")
                pir=$(cg_line ipcmux-receiver-paced 0 "$CG_PACED_N" "$pir0" "$pir1")
                {
                        echo
                        echo "#### issue 6, unbatched: one 64 B message at a time (sender sleeps ${CG_PACE_US} µs after each), one side under callgrind (N=$CG_PACED_N vs 0)"
                        echo
                        echo "| side | raw sd-bus instr/msg | ipcmux instr/msg | ipcmux − raw | ipcmux/raw | bound | verdict |"
                        echo "|---|---|---|---|---|---|---|"
                        cg_row sender "$prs" "$pis" "<=1.25"
                        cg_row receiver "$prr" "$pir" "<=1.25"
                } | tee -a "$CGMD"
                annotate "$CGD/ipcmux-sender-paced.$CG_PACED_N" "$OUT/ipcmux-sender-paced.annotate.txt"
                annotate "$CGD/ipcmux-receiver-paced.$CG_PACED_N" "$OUT/ipcmux-receiver-paced.annotate.txt"
        fi
        if has_set batched; then
                echo
                echo "callgrind (batched): flood, both ends under callgrind, (Ir(N=$CG_FLOOD_N2) - Ir(N=$CG_FLOOD_N1)) / $((CG_FLOOD_N2 - CG_FLOOD_N1))"
                cg_raw_both batched "$CG_FLOOD_N1"; brs0=$CG_IR_S; brr0=$CG_IR_R
                cg_raw_both batched "$CG_FLOOD_N2"; brs1=$CG_IR_S; brr1=$CG_IR_R
                cg_ipc_both batched "$CG_FLOOD_N1"; bis0=$CG_IR_S; bir0=$CG_IR_R
                cg_ipc_both batched "$CG_FLOOD_N2"; bis1=$CG_IR_S; bir1=$CG_IR_R
                brs=$(cg_line raw-sender-batched "$CG_FLOOD_N1" "$CG_FLOOD_N2" "$brs0" "$brs1")
                bis=$(cg_line ipcmux-sender-batched "$CG_FLOOD_N1" "$CG_FLOOD_N2" "$bis0" "$bis1")
                brr=$(cg_line raw-receiver-batched "$CG_FLOOD_N1" "$CG_FLOOD_N2" "$brr0" "$brr1")
                bir=$(cg_line ipcmux-receiver-batched "$CG_FLOOD_N1" "$CG_FLOOD_N2" "$bir0" "$bir1")
                # The same files from 0: what the first credit window (unbatched) weighs in.
                {
                        echo
                        echo "#### issue 6, batched: 64 B flood, both ends under callgrind, marginal cost from N=$CG_FLOOD_N1 to N=$CG_FLOOD_N2 (past the first credit window)"
                        echo
                        echo "| side | raw sd-bus instr/msg | ipcmux instr/msg | ipcmux − raw | ipcmux/raw | bound | verdict |"
                        echo "|---|---|---|---|---|---|---|"
                        cg_row sender "$brs" "$bis" "<1"
                        cg_row receiver "$brr" "$bir" "<1"
                        echo
                        echo "Whole runs, instructions per message including setup: raw sender $(per_msg 0 "$brs1" "$CG_FLOOD_N2"), ipcmux sender $(per_msg 0 "$bis1" "$CG_FLOOD_N2"), raw receiver $(per_msg 0 "$brr1" "$CG_FLOOD_N2"), ipcmux receiver $(per_msg 0 "$bir1" "$CG_FLOOD_N2") (N=$CG_FLOOD_N2)."
                } | tee -a "$CGMD"
                annotate "$CGD/ipcmux-sender-batched.$CG_FLOOD_N2" "$OUT/ipcmux-sender-batched.annotate.txt"
                annotate "$CGD/ipcmux-receiver-batched.$CG_FLOOD_N2" "$OUT/ipcmux-receiver-batched.annotate.txt"
        fi
        if has_set senders; then
                echo
                echo "callgrind (senders): 64 B + a sender per message, paced as above; and within one process"
                P=(-i "$CG_PACE_US")
                if ! has_set paced; then
                        cg_ipc_sender paced 0 "${P[@]}";               pis0=$CG_IR
                        cg_ipc_sender paced "$CG_PACED_N" "${P[@]}";   pis1=$CG_IR
                        cg_ipc_receiver paced 0 "${P[@]}";             pir0=$CG_IR
                        cg_ipc_receiver paced "$CG_PACED_N" "${P[@]}"; pir1=$CG_IR
                        pis=$(cg_line ipcmux-sender-paced 0 "$CG_PACED_N" "$pis0" "$pis1")
                        pir=$(cg_line ipcmux-receiver-paced 0 "$CG_PACED_N" "$pir0" "$pir1")
                fi
                cg_ipc_sender psender 0 "${P[@]}" -k sender;               sis0=$CG_IR
                cg_ipc_sender psender "$CG_PACED_N" "${P[@]}" -k sender;   sis1=$CG_IR
                cg_ipc_receiver psender 0 "${P[@]}" -k sender;             sir0=$CG_IR
                cg_ipc_receiver psender "$CG_PACED_N" "${P[@]}" -k sender; sir1=$CG_IR
                cg_ipc_local bytes 0 bytes;              lb0=$CG_IR
                cg_ipc_local bytes "$CG_LOCAL_N" bytes;  lb1=$CG_IR
                cg_ipc_local sender 0 sender;            ls0=$CG_IR
                cg_ipc_local sender "$CG_LOCAL_N" sender; ls1=$CG_IR
                sis=$(cg_line ipcmux-sender-psender 0 "$CG_PACED_N" "$sis0" "$sis1")
                sir=$(cg_line ipcmux-receiver-psender 0 "$CG_PACED_N" "$sir0" "$sir1")
                lb=$(cg_line ipcmux-local-bytes 0 "$CG_LOCAL_N" "$lb0" "$lb1")
                ls=$(cg_line ipcmux-local-sender 0 "$CG_LOCAL_N" "$ls0" "$ls1")
                {
                        echo
                        echo "#### issue 4: a sender inside each 64 B message vs a plain 64 B message, instructions per message"
                        echo
                        echo "| where | plain 64 B | 64 B + sender | difference | ratio |"
                        echo "|---|---|---|---|---|"
                        awk -v p="$pis" -v s="$sis" 'BEGIN { printf "| to another process, sending process (paced) | %.0f | %.0f | %+.0f | %.2fx |\n", p, s, s - p, s / p }'
                        awk -v p="$pir" -v s="$sir" 'BEGIN { printf "| to another process, receiving process (paced) | %.0f | %.0f | %+.0f | %.2fx |\n", p, s, s - p, s / p }'
                        awk -v p="$lb" -v s="$ls" -v n="$CG_LOCAL_N" 'BEGIN { printf "| within one process (send + recv, N=%d vs 0) | %.0f | %.0f | %+.0f | %.2fx |\n", n, p, s, s - p, s / p }'
                } | tee -a "$CGMD"
                annotate "$CGD/ipcmux-sender-psender.$CG_PACED_N" "$OUT/ipcmux-sender-psender.annotate.txt"
                annotate "$CGD/ipcmux-receiver-psender.$CG_PACED_N" "$OUT/ipcmux-receiver-psender.annotate.txt"
        fi
        echo "profiles: $OUT/*.annotate.txt; raw counts: $CGTXT"
fi

echo "loadavg after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/machine.txt"
echo "libipcmux after: $(lib_note)" | tee -a "$OUT/machine.txt"

if [[ $CALLGRIND != only ]]; then
        echo
        make_tables <"$RAWOUT" | tee "$OUT/table.md"
fi
echo
echo "results: $OUT"
if [[ ${STRICT:-0} == 1 ]]; then
        if grep -q '^FAILED' "$RAWOUT" || grep -qE '\| FAIL \|' "$OUT/table.md" "$CGMD" 2>/dev/null; then
                echo "run.sh: STRICT=1: a bound failed or a run failed" >&2
                exit 1
        fi
fi
exit 0
