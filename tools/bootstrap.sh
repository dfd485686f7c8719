#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Install what building, testing and running ipcmux needs on Debian 12, but
# only what is missing: on a prepared machine this is one dpkg-query and
# prints nothing; `apt-get update` runs only when something gets installed.
#
#   tools/bootstrap.sh [PROFILE...]     (default: test)
#
#   build     compilers, meson/ninja, libsystemd, GLib, gtest, a bus to run on
#   test      build + valgrind
#   sanitize  test + clang/compiler-rt/llvm (sanitizer and libFuzzer builds)
#   all       everything
#
# Needs root (or sudo) only when something is missing.
set -euo pipefail

pkgs_build=(
        meson ninja-build pkg-config gcc g++ python3 libxml2-utils
        libsystemd-dev libglib2.0-dev libgtest-dev
        # dbus-daemon, dbus-run-session (dbus-daemon), dbus-send (dbus-bin),
        # busctl (systemd), setpriv/prlimit (util-linux)
        dbus dbus-daemon dbus-bin systemd util-linux
)
pkgs_test=(valgrind)
pkgs_sanitize=(clang libclang-rt-14-dev llvm)

want=()
profiles=("$@")
[ ${#profiles[@]} -gt 0 ] || profiles=(test)
for p in "${profiles[@]}"; do
        case $p in
        build) want+=("${pkgs_build[@]}") ;;
        test) want+=("${pkgs_build[@]}" "${pkgs_test[@]}") ;;
        sanitize|all) want+=("${pkgs_build[@]}" "${pkgs_test[@]}" "${pkgs_sanitize[@]}") ;;
        *) echo "bootstrap: unknown profile '$p' (build|test|sanitize|all)" >&2; exit 2 ;;
        esac
done

if ! command -v dpkg-query >/dev/null 2>&1; then
        # Not Debian: check the essentials and leave installing to the user.
        missing=()
        for c in meson ninja pkg-config cc c++ dbus-daemon dbus-run-session busctl setpriv; do
                command -v "$c" >/dev/null 2>&1 || missing+=("$c")
        done
        for m in libsystemd gtest; do
                pkg-config --exists "$m" 2>/dev/null || missing+=("pkg-config:$m")
        done
        if [ ${#missing[@]} -gt 0 ]; then
                echo "bootstrap: not a Debian system and missing: ${missing[*]}" >&2
                exit 1
        fi
        exit 0
fi

# Installed packages among the wanted ones (dpkg-query is silent on unknown names
# with 2>/dev/null; its exit status only says that some were not found).
installed=$(dpkg-query -W -f='${db:Status-Status} ${Package}\n' "${want[@]}" 2>/dev/null |
        awk '$1 == "installed" { print $2 }' || true)
missing=()
declare -A seen=()
for p in "${want[@]}"; do
        [ -n "${seen[$p]:-}" ] && continue
        seen[$p]=1
        grep -qxF -- "$p" <<<"$installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

echo "bootstrap: installing ${missing[*]}" >&2
sudo=()
if [ "$(id -u)" -ne 0 ]; then
        if command -v sudo >/dev/null 2>&1; then
                sudo=(sudo)
        else
                echo "bootstrap: need root to run: apt-get install ${missing[*]}" >&2
                exit 1
        fi
fi
export DEBIAN_FRONTEND=noninteractive
apt_opts=(-q -o Acquire::Retries=3 -o Dpkg::Use-Pty=0)
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" update </dev/null >&2
"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get "${apt_opts[@]}" install -y --no-install-recommends \
        "${missing[@]}" </dev/null >&2
