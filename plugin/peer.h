/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Peer: another process on the bus, by unique name, watched for its death.
 *
 * One async NameOwnerChanged match per peer (never per subchannel), then an
 * async GetNameOwner so a peer that is already gone when it first matters is
 * noticed too (subscribe first, then check: no window).  When a peer goes,
 * every endpoint to it closes (senders get -EPIPE) and every receiver drops
 * its holds and in-flight copies (see lifecycle.h).  Gone peers wait in the
 * connection's graveyard and are freed after the current dispatch step
 * (peers_sweep), never inside their own match callback.
 */

#include <stdbool.h>
#include <systemd/sd-bus.h>

#include "conn.h"
#include "list.h"

struct Peer {
        Conn *conn;
        char *name;
        bool gone;
        sd_bus_slot *match_slot;
        sd_bus_slot *check_slot;
        List endpoints;         /* Endpoint.peer_link */
        /* Sending side: bytes emitted to this peer and acknowledged (Ack). */
        uint64_t tx_bytes, tx_acked;
        /* Sending side: subchannel calls to this peer in the bus (sent, not
         * yet acknowledged nor refused): at most PEER_CAP_CALLS. */
        uint64_t tx_calls, tx_calls_acked;
        /* Ever sent (never uncounted): what went after an ask (see
         * peer_ask_ack()) bounds what can still be in the bus. */
        uint64_t tx_calls_total, tx_bytes_total;
        uint64_t tx_cap;        /* PEER_CAP_BYTES, lowered while the broker refuses */
        uint64_t tx_cap_calls;  /* 4 Ack intervals, see PEER_CAP_CALLS */
        /* Endpoints the cap holds back, in the order they stalled: an Ack
         * wakes as many as it made room for, not all (10,000 subchannels
         * each waiting with one frame made every Ack cost 10,000 wake-ups). */
        List cap_waiters;       /* Endpoint.cap_link */
        bool ack_requested;     /* one of them asked (WantCredit) since the last Ack */
        sd_bus_slot *ask_slot;  /* that ask, waiting for its reply */
        uint64_t ask_calls_total, ask_bytes_total;      /* tx_*_total when it left */
        uint64_t cap_round;     /* SentLog.rounds when tx_cap was last halved */
        /* Receiving side: bytes and subchannel calls received from this
         * peer, and what of them was acknowledged. */
        uint64_t rx_bytes, rx_acked;
        uint64_t rx_calls, rx_calls_acked;
        bool creds_known;
        uint32_t uid, pid;
        List graveyard_link;
};

/* Find or start watching @name. NULL for our own name. */
int peer_watch(Conn *c, const char *name, Peer **ret);
Peer *peer_find(Conn *c, const char *name);
/* Count bytes received from @p; acknowledge per ACK_EVERY_BYTES. */
void peer_received(Peer *p, uint64_t bytes);
/* Count a subchannel call read from @p; acknowledge per ACK_EVERY_CALLS. */
void peer_received_call(Peer *p);
/* Acknowledge everything received now (the sender asked: WantCredit). */
void peer_send_ack(Peer *p);
/* Free gone peers (after a dispatch step). */
void peers_sweep(Conn *c);
void peers_free_all(Conn *c);
