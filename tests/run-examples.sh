#!/bin/sh
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Runs an example on a private bus (dbus-run-session with the tests' config,
# never the host's bus) and checks what it printed.
#   run-examples.sh CONFIG demo DEMO
#   run-examples.sh CONFIG service SERVICE [GLIB_CLIENT]
set -eu
config=$1
what=$2
shift 2

if [ "${IPCMUX_IN_SESSION:-}" != 1 ]; then
        IPCMUX_IN_SESSION=1 exec dbus-run-session --config-file="$config" -- "$0" "$config" "$what" "$@"
fi

out=$(mktemp)
trap 'rm -f "$out" "$out".*' EXIT

case $what in
demo)
        timeout 60 "$1" > "$out"
        cat "$out"
        grep -q "received on all 1000 subchannels" "$out"
        grep -q "disconnected (EPIPE), as it should" "$out"
        ;;
service)
        service=$1
        client=${2:-}
        timeout 60 "$service" --clients 2 > "$out.svc" 2>&1 &
        svc=$!
        i=0
        until grep -q ready "$out.svc"; do
                i=$((i + 1))
                [ $i -lt 300 ] || { cat "$out.svc"; exit 1; }
                sleep 0.1
        done
        if [ -n "$client" ]; then
                timeout 60 "$client" 3 > "$out.c1" &
                c1=$!
                timeout 60 "$client" 5 > "$out.c2"
                wait $c1
                cat "$out.c1" "$out.c2"
                [ "$(grep -c 'fnv1a' "$out.c1")" -eq 3 ]
                [ "$(grep -c 'fnv1a' "$out.c2")" -eq 5 ]
        else
                busctl --user call org.ipcmux.Example.Checksum /org/ipcmux org.ipcmux.Peer1 Connect s \
                        org.ipcmux.Example.Checksum
                kill "$svc"
        fi
        wait $svc || true
        cat "$out.svc"
        if [ -n "$client" ]; then
                grep -q "served 2 clients, exiting" "$out.svc"
        fi
        ;;
*)
        exit 2
        ;;
esac
