#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# The export list is the contract: every function a public header declares
# is exported, nothing else is, and the core library has no GLib symbol.
#   check-symbols.sh HEADER LIBRARY [forbidden-prefix]
set -eu
header=$1
lib=$2
forbidden=${3:-}

declared=$(sed -n 's/^[A-Za-z0-9_ ]*[ *]\(ipcmux_[a-z0-9_]*\)(.*/\1/p' "$header" | sort -u)
exported=$(nm -D --defined-only "$lib" | awk '$2 == "T" { print $3 }' | sed 's/@.*//' | sort -u)

status=0
missing=$(printf '%s\n' "$declared" | comm -23 - "$(printf '%s\n' "$exported" > "${TMPDIR:-/tmp}/exported.$$"; echo "${TMPDIR:-/tmp}/exported.$$")")
extra=$(printf '%s\n' "$exported" | comm -13 "$(printf '%s\n' "$declared" > "${TMPDIR:-/tmp}/declared.$$"; echo "${TMPDIR:-/tmp}/declared.$$")" -)
rm -f "${TMPDIR:-/tmp}/exported.$$" "${TMPDIR:-/tmp}/declared.$$"
if [ -n "$missing" ]; then
        echo "declared but not exported:"; echo "$missing"; status=1
fi
if [ -n "$extra" ]; then
        echo "exported but not declared:"; echo "$extra"; status=1
fi
if [ -n "$forbidden" ] && nm -D "$lib" | grep -q " U ${forbidden}"; then
        echo "$lib uses ${forbidden}* symbols:"; nm -D "$lib" | grep " U ${forbidden}"; status=1
fi
n=$(printf '%s\n' "$declared" | wc -l)
[ "$status" -eq 0 ] && echo "ok: $n functions declared and exported"
exit "$status"
