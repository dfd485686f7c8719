#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# The one test command (README):  ./run-tests.sh [MODE] [MESON-TEST-ARGS...]
#
#   (none)|default  build/        plain build, whole suite
#   asan            build-asan/   AddressSanitizer + UBSan (LeakSanitizer on)
#   tsan            build-tsan/   ThreadSanitizer
#
# Extra arguments go to `meson test`, e.g. `./run-tests.sh asan --suite unit`
# or `./run-tests.sh hashmap`.  Missing Debian packages are installed first
# (tools/bootstrap.sh).  The exit status is meson test's.
#
# Sanitizer builds use gcc by default: libipcmux.so is linked with
# -Wl,--no-undefined, which gcc's shared libasan/libtsan satisfy but clang's
# static sanitizer runtimes do not.  SAN_CC=clang switches asan to clang with
# -shared-libsan (and an rpath to clang's runtime directory).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$root"

mode=default
case ${1:-} in
default|asan|tsan) mode=$1; shift ;;
-h|--help) sed -n '3,/^set -e/{/^#/s/^# \{0,1\}//p}' "$0"; exit 0 ;;
esac

setup_opts=()
# Sanitizer builds are -O0: gcc needs ~90 s per gtest file at -O2 with
# ASan+UBSan (8 s at -O0), which would not fit the CI budget.
san_opts=(--buildtype=debug -Db_lundef=false)
test_opts=(--print-errorlogs --num-processes 2)
case $mode in
default)
        builddir=build
        tools/bootstrap.sh test
        ;;
asan)
        builddir=build-asan
        tools/bootstrap.sh sanitize
        setup_opts+=("${san_opts[@]}" "-Db_sanitize=address,undefined")
        test_opts+=(--timeout-multiplier 3)
        export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:halt_on_error=1:abort_on_error=1}
        export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
        ;;
tsan)
        builddir=build-tsan
        tools/bootstrap.sh sanitize
        setup_opts+=("${san_opts[@]}" -Db_sanitize=thread)
        test_opts+=(--timeout-multiplier 10)
        export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}
        ;;
esac

if [ "$mode" != default ]; then
        case ${SAN_CC:-gcc} in
        gcc)
                export CC=gcc CXX=g++
                ;;
        clang)
                if [ "$mode" = tsan ]; then
                        # LLVM 14's shared TSan runtime (needed for libipcmux.so)
                        # segfaults at startup on Debian 12; gcc's works.
                        echo "run-tests: SAN_CC=clang is not supported for tsan" >&2
                        exit 2
                fi
                export CC=clang CXX=clang++
                rtdir=$(clang -print-resource-dir)/lib/linux
                link="-shared-libsan -Wl,-rpath,$rtdir"
                # Link flags only: in c_args it would make every
                # cc.get_supported_arguments() probe fail (unused argument).
                # clang++ 14 defaults to C++14, g++ 12 to C++17.
                setup_opts+=("-Dc_link_args=$link" "-Dcpp_link_args=$link" -Dcpp_std=gnu++17)
                ;;
        *)
                echo "run-tests: SAN_CC must be gcc or clang" >&2
                exit 2
                ;;
        esac
fi

# Bus tests run helpers as uid 65534 (tests/util-bus.c); they can only exec
# them if the checkout is reachable for that uid.
if [ "$(id -u)" -eq 0 ] &&
   ! setpriv --reuid=65534 --regid=65534 --clear-groups -- test -x "$root" -a -r "$root/meson.build" 2>/dev/null; then
        echo "run-tests: WARNING: uid 65534 cannot reach $root; tests that spawn" >&2
        echo "run-tests: unprivileged helpers will fail (chmod o+x the parent directories)." >&2
fi

# Configure once; later `meson compile` re-runs meson itself when build files
# change.  A sanitizer build dir made with another compiler or other options
# is removed (`meson setup --wipe` would keep the old options).
stamp=$builddir/.run-tests-setup
want="${CC:-} ${setup_opts[*]}"
if [ "$mode" != default ] && [ -d "$builddir" ] && [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        rm -rf "${root:?}/$builddir"
fi
if [ ! -f "$builddir/meson-private/coredata.dat" ]; then
        meson setup "$builddir" "${setup_opts[@]}"
        [ "$mode" = default ] || echo "$want" >"$stamp"
fi
meson compile -C "$builddir"

rc=0
meson test -C "$builddir" "${test_opts[@]}" "$@" || rc=$?
exit "$rc"
