/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * ipcmux_channel: an object-path prefix /org/ipcmux/<32 hex> on a Conn, with
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

#define CHANNEL_ID_HEX 32

struct ipcmux_channel {
        unsigned n_ref;                 /* atomic: the application + every receiver */
        Conn *conn;
        List link;                      /* conn->channels */
        uint8_t id[16];
        char *prefix;
        sd_bus_slot *vtable_slot;
        sd_bus_slot *enumerator_slot;
        unsigned n_receivers;
};

/* Parse "<prefix>/<32 hex>" into an id. -EINVAL if @path is not that. */
int channel_parse_receiver_path(const char *prefix, const char *path, uint8_t id[16]);
void id128_to_hex(const uint8_t id[16], char hex[33]);
/* Parse the receiver id out of any ipcmux receiver path. */
int receiver_path_get_id(const char *path, uint8_t id[16]);
