/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Endpoint: this process's sending side of one subchannel.  All sender
 * objects of this process for the same receiver share one endpoint, so they
 * share its order (per-thread send order is kept), its sequence numbers and
 * its queue.
 *
 * A local endpoint's receiver lives in this process: sending enqueues
 * directly, no bus involved.  A remote endpoint queues frames and hands them
 * to the bus as Send calls; while the bus is busy frames accumulate and go
 * out batched.  Holds: each ipcmux_sender object is one hold on the
 * subchannel; releasing a remote hold is a Release call that follows the
 * frames already queued.
 */

#include <stdbool.h>
#include <stdint.h>

#include "conn.h"
#include "ipcmux/ipcmux.h"
#include "list.h"

struct Endpoint {
        unsigned n_ref;                 /* under the conn lock: sender objects + queue */
        Conn *conn;
        bool local;
        bool closed;                    /* receiver gone: sends fail with -EPIPE */
        ipcmux_receiver *rx;            /* local only; cleared when the receiver goes */

        char *key;                      /* remote: "dest/path" (map key) */
        const char *dest;               /* remote: unique name, inside key */
        char *path;
        Peer *peer;
        List peer_link;
        List cap_link;                  /* in peer->cap_waiters while the cap holds it */

        uint64_t next_seq;
        List queue;                     /* OutFrame */
        List resend;                    /* ResendCall: refused by the broker, goes first */
        List *resend_at;                /* endpoint_resend(): where a rewind inserts */
        bool retry_wait;                /* refused: nothing goes before the retry timer */
        size_t n_queued;
        uint64_t queued_bytes;          /* cost of queued frames (see frame cost) */
        uint64_t max_queued_msgs, max_queued_bytes;     /* 0: unbounded */
        /* The last send was refused at max_queued_msgs and nothing left
         * since: ipcmux_sender_send_bytes() refuses without the lock (see
         * there).  Written under the lock, read without (atomic). */
        bool full;

        /* Credit window (remote only): totals emitted vs totals the receiver
         * reported consumed (Peer1.Credit).  Cost of a frame = its inline
         * payload + the declared size of its regions (spill included). */
        uint64_t sent_msgs, sent_bytes;
        uint64_t credit_msgs, credit_bytes;
        bool credit_requested;          /* WantCredit sent since the last Credit */
        bool stalled_on_cap;            /* last stall: the per-peer cap, not the window */
        uint64_t last_credit_usec;      /* when credit last grew (now_coarse_usec) */
        uint64_t lost;                  /* frames dropped unsent (flush timeout) */
        uint64_t last_emit;             /* conn->emitted after our last Send call */
        unsigned pending_releases;      /* Release calls waiting behind the queue */
        bool pinned;                    /* holds a ref while there is queued output */
        bool releasing;                 /* its last sender went: the hard calls cap only */
        unsigned n_senders;             /* ipcmux_sender objects on this endpoint */
        List ready_link;                /* in conn->ready while there is output */
        char *oneshot_name;             /* bus name owned to claim a one-shot server */
};

struct ipcmux_sender {
        unsigned n_ref;                 /* atomic: clones */
        Endpoint *ep;
};

/* The local endpoint of a new receiver. */
int endpoint_new_local(Conn *c, ipcmux_receiver *rx, Endpoint **ret);
/* Find or create the endpoint for (dest, path); watches dest. */
int endpoint_get_remote(Conn *c, const char *dest, const char *path, Endpoint **ret);
Endpoint *endpoint_find(Conn *c, const char *dest, const char *path);
Endpoint *endpoint_ref(Endpoint *ep);
Endpoint *endpoint_unref(Endpoint *ep);
/* The broker refused a call of @ep's carrying @cost (it left the bus). */
void endpoint_refused(Endpoint *ep, uint64_t cost);
/* Send @m, a new copy of a refused call (or of one after it), before
 * anything new, once the retry timer fires (endpoint_retry). */
int endpoint_resend(Endpoint *ep, sd_bus_message *m, uint64_t cost, uint64_t seq, bool first);
/* A refused call of @ep cannot be sent again (it carried fds): give up on
 * everything not yet delivered, loudly (the receiver counts it as Lost and
 * ends our part, as for frames that never got credit). */
void endpoint_unrepairable(Endpoint *ep);
/* Its WantCredit was refused: ask again when the retry timer fires. */
void endpoint_probe_refused(Endpoint *ep);
/* The retry timer fired: what waited for it may go. */
void endpoint_retry(Endpoint *ep);
/* The receiver is gone: fail sends, drop what is queued. */
void endpoint_close(Endpoint *ep);
void endpoint_credit(Endpoint *ep, uint64_t msgs, uint64_t bytes);
/* The peer acknowledged receipt of @bytes and @calls (running totals) from this process. */
void peer_ack(Peer *p, uint64_t bytes, uint64_t calls);

/* Flow-control defaults (per subchannel window, per peer cap). */
#define WINDOW_MSGS 8192u
#define WINDOW_BYTES (8u << 20)
#define PEER_CAP_BYTES (16u << 20)
/* A broker refusal halves a peer's cap (down to this); each Ack gives back
 * PEER_CAP_STEP: the cap settles below what the broker's queue takes. */
#define PEER_CAP_MIN (64u << 10)
#define PEER_CAP_STEP (256u << 10)
/*
 * Subchannel calls one process may have in the bus to another (sent, not yet
 * acknowledged or refused): at most PEER_CAP_CALLS.  Every call dbus-daemon
 * refuses costs the refused sender a ~450-byte error, which the daemon drops
 * silently once that sender's own queue is over max_outgoing_bytes (1 MB in
 * our low-limit tests): 1024 calls keep a whole round of refusals under half
 * of that, so every refusal is seen and repaired.
 *
 * The cap is also what makes a sender that outruns its receiver batch: frames
 * wait for the Ack, then leave together.  How many calls it lets through
 * follows the receiver: 4 of its Ack intervals, between PEER_CAP_CALLS_MIN
 * and PEER_CAP_CALLS.  A receiver that keeps up acknowledges every
 * ACK_EVERY_CALLS calls (an Ack costs the sender ~12,000 instructions to
 * dispatch, so rarely); one that finds more waiting in its socket every
 * ACK_EVERY_CALLS_BEHIND calls.  Behind it, the sender so keeps at most 64
 * calls in the bus and everything else of its streaming subchannels (see
 * PEER_CAP_STREAM_MSGS) waits and leaves batched: otherwise,
 * after each Ack, hundreds of calls of one frame each left before the cap
 * held again, and the receiver (and the broker) paid a call per frame.
 */
#define PEER_CAP_CALLS 1024u
#define PEER_CAP_CALLS_MIN 64u
/* The lowered cap holds only a subchannel with this many messages in flight. */
#define PEER_CAP_STREAM_MSGS 256u
/* The receiver acknowledges receipt every this many bytes or calls, and at
 * once when a stalled sender asks (WantCredit). */
#define ACK_EVERY_BYTES (1u << 20)
#define ACK_EVERY_CALLS (PEER_CAP_CALLS / 4)
#define ACK_EVERY_CALLS_BEHIND (PEER_CAP_CALLS_MIN / 4)
/* Send one call's worth of queued frames (conn_flush calls this). */
int endpoint_flush_one(Endpoint *ep);
void endpoints_fail_all(Conn *c);

/* A new sender object (one hold) on @ep. Lock held. */
int sender_new(Endpoint *ep, ipcmux_sender **ret);
/*
 * A sender received inside a message from @from: hold it (Claim at the owner,
 * or a local claim) and return the object.  Never fails except -ENOMEM; a
 * copy of a dead subchannel comes back closed.
 */
int sender_new_received(Conn *c, const char *from, const WireSenderRef *ref, ipcmux_sender **ret);
/* Decline a received copy that will never be used (its carrier is dropped). */
void sender_decline_ref(Conn *c, const char *from, const WireSenderRef *ref);
