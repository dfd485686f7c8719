/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * ipcmux_channel: an object-path prefix /org/ipcmux/<16 hex> on a Conn, with
 * ONE fallback vtable and ONE node enumerator for all its receivers
 * (an object vtable per path would cost ~0.5 KB each).  The find callback is
 * strict: the bare prefix and unknown ids do not exist.  Calls that arrive
 * for a receiver that is already gone are still read for their lifecycle
 * meaning (embedded senders are declined, claimers are told Closed).
 */

#include <stdint.h>
#include <systemd/sd-bus.h>

#include "conn.h"
#include "ipcmux/ipcmux.h"
#include "list.h"

/*
 * Channel and receiver ids: 64 random bits each, 16 lowercase hex digits in
 * the path.  Short on purpose: sd-bus checks a call's path character by
 * character on both sides (~16 instructions each), and 128-bit ids made the
 * path of every Send 77 characters, ~1,000 instructions at the sender alone.
 * Uniqueness is only needed among one connection's receivers (the path is
 * always paired with its unique name), and it is checked when one is made;
 * guessing a path gains nothing (calls are checked against holds).
 */
#define PATH_ID_BYTES 8
#define PATH_ID_HEX (2 * PATH_ID_BYTES)

struct ipcmux_channel {
        unsigned n_ref;                 /* atomic: the application + every receiver */
        Conn *conn;
        List link;                      /* conn->channels */
        uint8_t id[PATH_ID_BYTES];
        char *prefix;
        sd_bus_slot *vtable_slot;
        sd_bus_slot *enumerator_slot;
        unsigned n_receivers;
};

/* Parse "<prefix>/<16 hex>" into an id. -EINVAL if @path is not that. */
int channel_parse_receiver_path(const char *prefix, const char *path, uint8_t id[PATH_ID_BYTES]);
/* @n bytes as 2 * @n lowercase hex digits and a NUL. */
void hex_encode(const uint8_t *b, size_t n, char *out);
/* Parse the receiver id out of any ipcmux receiver path. */
int receiver_path_get_id(const char *path, uint8_t id[PATH_ID_BYTES]);
