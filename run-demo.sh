#!/usr/bin/env bash
# SPDX-License-Identifier: LGPL-2.1-or-later
#
# Build and run the demo:  ./run-demo.sh [DEMO-ARGS...]
#
# Installs missing Debian packages (tools/bootstrap.sh), builds build/ and
# runs build/examples/demo on the session bus.  Without a reachable session
# bus (DBUS_SESSION_BUS_ADDRESS unset or dead, as under ssh, in containers
# and in CI) the demo runs inside a throwaway one: dbus-run-session -- demo.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$root"

tools/bootstrap.sh build

builddir=build
if [ ! -f "$builddir/meson-private/coredata.dat" ]; then
        meson setup "$builddir"
fi
meson compile -C "$builddir"

demo=$builddir/examples/demo
if [ ! -x "$demo" ]; then
        echo "run-demo: $demo was not built" >&2
        exit 1
fi

session_bus_reachable() {
        [ -n "${DBUS_SESSION_BUS_ADDRESS:-}" ] || return 1
        timeout 10 busctl --address="$DBUS_SESSION_BUS_ADDRESS" call \
                org.freedesktop.DBus /org/freedesktop/DBus org.freedesktop.DBus GetId \
                >/dev/null 2>&1
}

if session_bus_reachable; then
        exec "$demo" "$@"
fi
echo "run-demo: no reachable session bus, using dbus-run-session" >&2
exec dbus-run-session -- "$demo" "$@"
