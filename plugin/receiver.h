/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * ipcmux_receiver: the receiving end of a subchannel, a D-Bus object at
 * <channel prefix>/<16 hex id>.  It owns the message queue and the
 * subchannel's Lifecycle (who may still send), and answers the
 * org.ipcmux.Subchannel1 calls.  Disconnected = nothing queued and
 * !lifecycle_is_connected(): then recv returns -EPIPE forever.
 */

#include <stdbool.h>
#include <stdint.h>

#include "channel.h"
#include "conn.h"
#include "hashmap.h"
#include "ipcmux/ipcmux.h"
#include "lifecycle.h"
#include "list.h"

typedef struct RxPeer RxPeer;

struct ipcmux_receiver {
        unsigned n_ref;                 /* under the conn lock */
        Conn *conn;
        ipcmux_channel *channel;
        uint8_t id[PATH_ID_BYTES];
        char *path;
        bool dropped;

        Endpoint *local_ep;
        Lifecycle *lc;
        HashMap rxpeers;                /* unique name -> RxPeer */

        List queue;                     /* ipcmux_message.qlink */
        size_t n_queued;
        uint64_t queued_bytes;

        uint64_t n_received, n_refused, n_lost;
        uint64_t n_reordered;           /* out-of-order calls set aside (sent again) */

        /* Handler mode (ipcmux_receiver_set_handler): messages go to the
         * handler from whatever drives the connection, instead of waiting
         * for recv. */
        ipcmux_receive_handler_t handler;
        void *userdata;
        bool eof_delivered;             /* the -EPIPE call was made */
        List handled_link;              /* conn->handled while a handler is set */
        List ready_link;                /* conn->handler_ready while work is due */
};

extern const sd_bus_vtable receiver_vtable[];

int receiver_new(ipcmux_channel *ch, ipcmux_receiver **ret);
/* Enqueue a delivered message (takes the reference) and wake waiters. */
void receiver_enqueue(ipcmux_receiver *rx, ipcmux_message *m);
bool receiver_is_disconnected(ipcmux_receiver *rx);
/* Something about @rx changed (queue or lifecycle): wake waiters, schedule its handler. */
void receiver_changed(ipcmux_receiver *rx);
/* After events touching many receivers (a peer died): re-check every handled one. */
void receivers_changed_all(Conn *c);
/* Deliver due handler calls (top level only; the lock is dropped around each call). */
int receivers_run_handlers(Conn *c);
ipcmux_receiver *receiver_ref(ipcmux_receiver *rx);
void receiver_unref_locked(ipcmux_receiver *rx);
/* A peer vanished (generation @gen): update holds, fds staged by it. */
void receiver_peer_gone(ipcmux_receiver *rx, const char *name, uint64_t gen);
void receivers_fail_all(Conn *c);
/* Handle a lifecycle call addressed to a receiver that no longer exists. */
void receiver_handle_gone_call(Conn *c, sd_bus_message *m, const char *path);
/* From the connection's filter: run a Subchannel1 method call to a live
 * receiver directly.  Returns 0 if it is not one (sd-bus dispatches it),
 * else what a filter returns (see receiver.c). */
int receiver_dispatch_call(Conn *c, sd_bus_message *m, sd_bus_error *error);
