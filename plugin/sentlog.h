/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * SentLog: the no-reply calls a connection handed to the broker that the
 * broker may still refuse.
 *
 * dbus-daemon refuses a call whose recipient's queue is full
 * (max_outgoing_bytes) and says so only with an unsolicited
 * org.freedesktop.DBus.Error.LimitsExceeded naming the call's cookie; for a
 * no-reply call sd-bus has no slot for it, so only a filter sees it.  Every
 * no-reply call therefore stays here (one reference, no copy) until a
 * Peer.Ping to the broker sent after it is answered: the broker processes a
 * connection's messages in order and its refusals travel back in order, so
 * by then any refusal of it has been seen.
 *
 * A refused call is sent again.  Calls of a subchannel stream (an
 * endpoint's Send, SendPacked, StageFds, WantCredit, Release) must stay in
 * order: the refused call and every later one of its endpoint are handed
 * back to the endpoint (endpoint_resend), which emits copies of them before
 * anything new; the receiver refuses what arrived after a hole
 * (PROTOCOL.md, "Sequence numbers"), so it sees each frame once, in order.
 * Other control calls are simply sent again.
 */

#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-bus.h>

typedef struct Conn Conn;
typedef struct Endpoint Endpoint;
typedef struct Peer Peer;

typedef struct SentCall {
        sd_bus_message *m;
        /* A small SendPacked is kept as a copy of its byte array instead:
         * keeping hundreds of whole messages alive defeats malloc's caches
         * (callgrind: ~900 instructions per message at the sender). */
        void *packed;           /* in SentLog.arena, or malloc'ed (arena full) */
        size_t packed_size;
        bool packed_in_arena;
        uint64_t cookie;
        Endpoint *ep;           /* NULL: not part of a subchannel stream */
        Peer *peer;             /* counted in its tx_calls (per-peer cap) */
        uint64_t cost;          /* frame cost it carries (per-peer cap) */
        uint64_t seq;           /* stream calls: sequence number of the first
                                 * frame it carries or precedes */
        bool probe;             /* @ep's WantCredit: not part of its stream */
        bool superseded;        /* a copy was sent again, or its endpoint went */
} SentCall;

typedef struct SentLog {
        SentCall *calls;        /* ring, in send (= cookie) order */
        size_t head, len, allocated;
        uint64_t released;      /* calls ever dropped from the front */
        size_t bytes;           /* size of the retained messages */
        sd_bus_slot *barrier;   /* the outstanding Ping, if any */
        uint64_t barrier_mark;  /* calls before this index are covered by it */
        sd_bus_slot *filter;
        bool refusals;          /* on a bus: calls are kept, refusals watched */
        uint64_t refused;       /* refusals seen (statistics, tests) */

        /* Bytes of kept SendPacked calls, a FIFO ring like the calls (not
         * the malloc heap: hundreds of live small copies there fragment it
         * and make sd-bus's reallocs move). */
        uint8_t *arena;
        size_t arena_head, arena_tail;  /* live bytes: [head, tail) or wrapped */

        /* Nothing refused goes again at once (the queue that refused it is
         * still full, and every refusal costs the broker an error message to
         * us): it waits for the retry timer. */
        uint64_t retry_at;      /* CLOCK_MONOTONIC usec, UINT64_MAX: not armed */
        uint64_t retry_delay;   /* doubles per refusal round without progress */
        uint64_t rounds;        /* retry timer rounds so far (+1 when it fires) */
        sd_bus_message **later; /* control calls to send again */
        size_t n_later, allocated_later;
} SentLog;

/* Start counting the subchannel calls peers send us (the per-peer cap) and
 * watching for refusals (on a bus). */
int sentlog_init(Conn *c);
void sentlog_done(Conn *c);

/*
 * sd_bus_send() a no-reply call and keep it until the broker is known to
 * have accepted it.  @ep: the endpoint whose stream it belongs to, or NULL.
 */
int sentlog_send(Conn *c, sd_bus_message *m, Endpoint *ep, uint64_t cost);
/* The same for a SendPacked of @ep whose byte array is @packed. */
int sentlog_send_packed(Conn *c, sd_bus_message *m, Endpoint *ep, uint64_t cost, const void *packed, size_t size);
/* The same for a copy sent again, of a stream call at @seq. */
int sentlog_send_again(Conn *c, sd_bus_message *m, Endpoint *ep, uint64_t cost, uint64_t seq);
/* The same for @ep's WantCredit, which is not part of its stream: refused,
 * it is asked again after the retry delay, not resent in order. */
int sentlog_send_probe(Conn *c, sd_bus_message *m, Endpoint *ep);
/*
 * A stream call that carries fds: only its place is kept, not the message,
 * because a kept copy of an fd is visible (a pipe's reader would wait for
 * EOF until the broker confirmed).  Refused, it cannot go again: its
 * endpoint gives up on the rest of its stream, loudly (endpoint_unrepairable).
 */
int sentlog_send_unkept(Conn *c, sd_bus_message *m, Endpoint *ep, uint64_t cost);

/* The retry timer (SENTLOG_NEXT_RETRY(c)): when conn_flush() next has work for it. */
/* Called by conn_flush(): send again what waited for the timer, if due. */
void sentlog_tick(Conn *c);

/* Index just past the last call sent; sentlog_release() of it after a
 * round trip to the broker that followed them. */
uint64_t sentlog_mark(Conn *c);
void sentlog_release(Conn *c, uint64_t mark);

/* A receiver acknowledged or credited something: the refusals were a
 * passing congestion, the next retry may come soon again. */
void sentlog_progress(Conn *c);
/* Run the retry timer (endpoints waiting with retry_wait go when it fires). */
void sentlog_arm_retry(Conn *c);

/* @ep is going away: nothing of it can be sent again. */
void sentlog_forget_endpoint(Conn *c, Endpoint *ep);
/* @p is going away: its call count is no longer kept. */
void sentlog_forget_peer(Conn *c, Peer *p);

/* A new call with the same header fields and body as @m (fds dup'ed). */
int sentlog_copy(Conn *c, sd_bus_message *m, sd_bus_message **ret);

#define SENTLOG_NEXT_RETRY(c) ((c)->sent.retry_at)
