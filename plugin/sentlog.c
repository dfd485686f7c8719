/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * SentLog (see sentlog.h): keep no-reply calls until the broker has
 * accepted them, send again what it refused.
 */

#include <inttypes.h>
#include <sys/mman.h>

#include "conn.h"
#include "endpoint.h"
#include "log.h"
#include "macro.h"
#include "peer.h"
#include "receiver.h"
#include "sentlog.h"

/* A Ping to the broker releases what it follows; one goes out whenever this
 * many calls, or this many bytes of them, wait for one.  A Ping round trip
 * costs the sender ~77,000 instructions (callgrind): per 1024 calls that is
 * ~75 per call, per 128 it was ~600. */
#define BARRIER_CALLS 1024u
#define BARRIER_BYTES (4u << 20)
/* What a call weighs beside its frame cost (header, containers). */
#define CALL_OVERHEAD 256u
/* SendPacked calls up to this size are kept as a copy of their bytes. */
#define PACKED_COPY_MAX 4096u
#define ARENA_SIZE (256u << 10)

/*
 * The ring and the arena live outside the malloc heap: grown by doubling
 * there, they left holes that sd-bus's per-message allocations then came
 * from, through malloc's slow paths (callgrind: +300 instructions per
 * message at the sender when SentCall grew by 8 bytes).
 */
static void *pages_alloc(size_t size) {
        void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

        return p == MAP_FAILED ? NULL : p;
}

static void pages_free(void *p, size_t size) {
        if (p)
                (void) munmap(p, size);
}

/* Room for @n bytes at the arena's tail (FIFO: released from the head). */
static uint8_t *arena_alloc(SentLog *s, size_t n) {
        size_t at;

        if (!s->arena) {
                s->arena = pages_alloc(ARENA_SIZE);
                if (!s->arena)
                        return NULL;
        }
        if (s->arena_tail >= s->arena_head) {
                if (ARENA_SIZE - s->arena_tail >= n)
                        at = s->arena_tail;
                else if (s->arena_head > n)
                        at = 0;         /* wrap; the end stays unused until then */
                else
                        return NULL;
        } else if (s->arena_head - s->arena_tail > n)
                at = s->arena_tail;
        else
                return NULL;
        s->arena_tail = at + n;
        return s->arena + at;
}

static void arena_release(SentLog *s, const SentCall *e) {
        if (e->packed_in_arena)
                s->arena_head = (size_t) ((const uint8_t *) e->packed - s->arena) + e->packed_size;
        if (s->len == 0)
                s->arena_head = s->arena_tail = 0;
}
/* How long a refused call waits before it goes again: from 2 ms, doubling
 * while refusals go on without any receiver making progress (a big call
 * refused again and again costs the broker reading it each time: without
 * backing off, senders and broker can livelock), up to 256 ms. */
#define RETRY_DELAY_MIN_USEC 2000u
#define RETRY_DELAY_MAX_USEC 256000u

static SentCall *at(SentLog *s, size_t i) {
        return &s->calls[(s->head + i) & (s->allocated - 1)];
}

static int grow(SentLog *s) {
        size_t n = s->allocated ? s->allocated * 2 : 2 * BARRIER_CALLS;
        SentCall *calls = pages_alloc(n * sizeof(SentCall));

        if (!calls)
                return -ENOMEM;
        for (size_t i = 0; i < s->len; i++)
                calls[i] = *at(s, i);
        pages_free(s->calls, s->allocated * sizeof(SentCall));
        s->calls = calls;
        s->allocated = n;
        s->head = 0;
        return 0;
}

static void drop_front(SentLog *s) {
        SentCall *e = at(s, 0);

        s->bytes -= MIN(s->bytes, e->m || e->packed ? e->cost + CALL_OVERHEAD : CALL_OVERHEAD);
        sd_bus_message_unref(e->m);
        if (!e->packed_in_arena)
                free(e->packed);
        s->head = (s->head + 1) & (s->allocated - 1);
        s->len--;
        s->released++;
        arena_release(s, e);
}

uint64_t sentlog_mark(Conn *c) {
        return c->sent.released + c->sent.len;
}

void sentlog_release(Conn *c, uint64_t mark) {
        SentLog *s = &c->sent;

        while (s->len > 0 && s->released < mark)
                drop_front(s);
}

static void maybe_barrier(Conn *c);
static void arm_retry(Conn *c);

static int on_barrier(sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Conn *c = userdata;

        /* The answer means the broker read everything before the Ping, and
         * its refusals of that came first.  An error (a timeout: the broker
         * drops what it sends us while our queue there is full) proves
         * nothing: keep the calls, the next Ping will tell. */
        c->sent.barrier = sd_bus_slot_unref(c->sent.barrier);
        if (!sd_bus_message_is_method_error(reply, NULL))
                sentlog_release(c, c->sent.barrier_mark);
        maybe_barrier(c);
        return 1;
}

static void maybe_barrier(Conn *c) {
        SentLog *s = &c->sent;
        uint64_t mark = sentlog_mark(c);

        if (s->barrier || c->error < 0)
                return;
        if (mark - s->released < BARRIER_CALLS && s->bytes < BARRIER_BYTES)
                return;
        if (sd_bus_call_method_async(c->bus, &s->barrier, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                     "org.freedesktop.DBus.Peer", "Ping", on_barrier, c, "") >= 0)
                s->barrier_mark = mark;
}

static int send_kept_full(Conn *c, sd_bus_message *m, Endpoint *ep, uint64_t cost, uint64_t seq, bool probe,
                          bool keep, const void *packed, size_t packed_size) {
        SentLog *s = &c->sent;
        void *copy = NULL;
        bool in_arena = false;
        uint64_t cookie;
        int r;

        r = sd_bus_send(c->bus, m, NULL);
        if (r < 0)
                return r;
        Peer *peer = ep ? ep->peer : NULL;
        if (peer) {
                peer->tx_calls++;
                peer->tx_calls_total++;
        }
        if (!s->refusals)
                return r;
        if (sd_bus_message_get_cookie(m, &cookie) < 0)
                return 0;
        if (s->len == s->allocated && grow(s) < 0) {
                /* Cannot keep it: it goes unprotected, like any raw call. */
                log_debug("ipcmux: out of memory keeping a sent call");
                return 0;
        }
        if (keep && packed) {
                copy = arena_alloc(s, packed_size);
                in_arena = copy != NULL;
                if (!copy)
                        copy = malloc(packed_size);
                if (copy) {
                        memcpy(copy, packed, packed_size);
                        keep = false;   /* the copy stands for the message */
                }
        }
        *at(s, s->len++) = (SentCall) {
                .m = keep ? sd_bus_message_ref(m) : NULL,
                .packed = copy,
                .packed_size = copy ? packed_size : 0,
                .packed_in_arena = in_arena,
                .cookie = cookie,
                .ep = ep,
                .peer = peer,
                .cost = cost,
                .seq = seq,
                .probe = probe,
        };
        s->bytes += keep || copy ? cost + CALL_OVERHEAD : CALL_OVERHEAD;
        maybe_barrier(c);
        return 0;
}

static int send_kept(Conn *c, sd_bus_message *m, Endpoint *ep, uint64_t cost, uint64_t seq, bool probe,
                     bool keep) {
        return send_kept_full(c, m, ep, cost, seq, probe, keep, NULL, 0);
}

int sentlog_send_packed(Conn *c, sd_bus_message *m, Endpoint *ep, uint64_t cost, const void *packed, size_t size) {
        return send_kept_full(c, m, ep, cost, ep->next_seq, false, true, size <= PACKED_COPY_MAX ? packed : NULL,
                              size);
}

int sentlog_send(Conn *c, sd_bus_message *m, Endpoint *ep, uint64_t cost) {
        return send_kept(c, m, ep, cost, ep ? ep->next_seq : 0, false, true);
}

int sentlog_send_again(Conn *c, sd_bus_message *m, Endpoint *ep, uint64_t cost, uint64_t seq) {
        return send_kept(c, m, ep, cost, seq, false, true);
}

int sentlog_send_unkept(Conn *c, sd_bus_message *m, Endpoint *ep, uint64_t cost) {
        return send_kept(c, m, ep, cost, ep->next_seq, false, false);
}

int sentlog_send_probe(Conn *c, sd_bus_message *m, Endpoint *ep) {
        return send_kept(c, m, ep, 0, ep->next_seq, true, true);
}

void sentlog_arm_retry(Conn *c) {
        arm_retry(c);
}

static void arm_retry(Conn *c) {
        SentLog *s = &c->sent;

        if (s->retry_at == UINT64_MAX) {
                s->retry_at = now_usec() + s->retry_delay;
                s->retry_delay = MIN(s->retry_delay * 2, (uint64_t) RETRY_DELAY_MAX_USEC);
                conn_notify(c);         /* a poller must shorten its sleep */
                conn_wake(c);
        }
}

void sentlog_progress(Conn *c) {
        c->sent.retry_delay = RETRY_DELAY_MIN_USEC;
}

void sentlog_tick(Conn *c) {
        SentLog *s = &c->sent;
        size_t i = 0;
        void *v;

        if (s->retry_at == UINT64_MAX || now_usec() < s->retry_at)
                return;
        s->retry_at = UINT64_MAX;
        s->rounds++;
        log_debug("ipcmux: %s: retry timer: %zu control calls", c->unique_name, s->n_later);
        for (size_t k = 0; k < s->n_later; k++) {
                sd_bus_message *copy = NULL;

                if (sentlog_copy(c, s->later[k], &copy) >= 0)
                        conn_queue_ctrl(c, copy);
                sd_bus_message_unref(s->later[k]);
        }
        s->n_later = 0;
        while (hashmap_iterate(&c->endpoints, &i, &v))
                endpoint_retry(v);
}

void sentlog_forget_peer(Conn *c, Peer *p) {
        SentLog *s = &c->sent;

        for (size_t i = 0; i < s->len; i++)
                if (at(s, i)->peer == p)
                        at(s, i)->peer = NULL;
}

void sentlog_forget_endpoint(Conn *c, Endpoint *ep) {
        SentLog *s = &c->sent;

        for (size_t i = 0; i < s->len; i++) {
                SentCall *e = at(s, i);

                if (e->ep == ep) {
                        e->ep = NULL;
                        e->superseded = true;
                }
        }
}

int sentlog_copy(Conn *c, sd_bus_message *m, sd_bus_message **ret) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *n = NULL;
        int r;

        r = conn_new_call(c, sd_bus_message_get_destination(m), sd_bus_message_get_path(m),
                          sd_bus_message_get_interface(m), sd_bus_message_get_member(m), &n);
        if (r < 0)
                return r;
        r = sd_bus_message_rewind(m, true);
        if (r < 0)
                return r;
        r = sd_bus_message_copy(n, m, true);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(n);
        return 0;
}

/* Binary search: the ring is in cookie order. */
static bool find(SentLog *s, uint64_t cookie, size_t *ret) {
        size_t lo = 0, hi = s->len;

        while (lo < hi) {
                size_t mid = lo + (hi - lo) / 2;
                uint64_t k = at(s, mid)->cookie;

                if (k == cookie) {
                        *ret = mid;
                        return true;
                }
                if (k < cookie)
                        lo = mid + 1;
                else
                        hi = mid;
        }
        return false;
}

/* The SendPacked call @f stood for, from its copied bytes. */
static int rebuild_packed(Conn *c, Endpoint *ep, const SentCall *f, sd_bus_message **ret) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int r;

        r = conn_new_call(c, ep->dest, ep->path, IPCMUX_INTERFACE_SUBCHANNEL, "SendPacked", &m);
        if (r < 0)
                return r;
        r = sd_bus_message_append_array(m, 'y', f->packed, f->packed_size);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(m);
        return 0;
}

static void refused(Conn *c, size_t i) {
        SentLog *s = &c->sent;
        SentCall *e = at(s, i);
        Endpoint *ep = e->ep;

        s->refused++;
        arm_retry(c);
        if (e->peer && e->peer->tx_calls > e->peer->tx_calls_acked) {
                e->peer->tx_calls--;    /* it left the bus unread */
                e->peer = NULL;
        }
        log_debug("ipcmux: %s: the broker refused call #%" PRIu64 " (%s, seq %" PRIu64 ", %" PRIu64
                  " bytes%s) to %s%s (queue full)",
                  c->unique_name, e->cookie, e->probe ? "probe" : e->m || e->packed ? "kept" : "not kept", e->seq, e->cost,
                  e->superseded ? ", already sent again" : "", ep ? ep->dest : "", ep ? ep->path : "");
        if (e->probe) {
                if (ep)
                        endpoint_probe_refused(ep);
                return;
        }
        if (ep)
                endpoint_refused(ep, e->cost);
        if (e->superseded)
                return;         /* already sent again, or nobody to send it for */
        if (!ep) {
                e->superseded = true;
                if (GREEDY_REALLOC(s->later, s->allocated_later, s->n_later + 1))
                        s->later[s->n_later++] = sd_bus_message_ref(e->m);
                else
                        log_warning("ipcmux: out of memory: a refused call to %s is lost",
                                    sd_bus_message_get_destination(e->m));
                return;
        }
        /* The stream goes on from this call: it and everything of its
         * endpoint after it go again, in order, ahead of anything new. */
        bool first = true;
        for (size_t j = i; j < s->len; j++) {
                SentCall *f = at(s, j);

                if (f->ep != ep || f->superseded || f->probe)
                        continue;
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;

                /* A new message: a sent one cannot be sent again as is. */
                if (f->m ? sentlog_copy(c, f->m, &m) < 0 : !f->packed || rebuild_packed(c, ep, f, &m) < 0) {
                        /* Carried fds, not kept (or no memory to rebuild
                         * it): the stream cannot be repaired from here on. */
                        endpoint_unrepairable(ep);
                        return;
                }
                f->superseded = true;
                if (endpoint_resend(ep, m, f->cost, f->seq, first) < 0)
                        log_warning("ipcmux: out of memory: a refused call to %s%s is lost", ep->dest, ep->path);
                first = false;
        }
}

/*
 * Every subchannel call a peer sends us counts towards its Ack, whatever
 * becomes of it (delivered, set aside, refused as invalid, addressed to a
 * receiver that is gone): the sender counts its calls in the bus the same
 * way, and one that was never acknowledged would hold its cap for ever.
 */
static void count_call(Conn *c, sd_bus_message *m) {
        const char *sender = sd_bus_message_get_sender(m);
        const char *iface = sd_bus_message_get_interface(m);
        Peer *p;

        /* Every call passes here before its handler: nothing stale stays. */
        c->dispatch_call = m;
        c->dispatch_peer = NULL;
        if (!sender || !iface || strcmp(iface, IPCMUX_INTERFACE_SUBCHANNEL) != 0)
                return;
        p = peer_find(c, sender);
        if (!p && peer_watch(c, sender, &p) < 0)
                return;
        c->dispatch_peer = p;
        if (p)
                peer_received_call(p);
}

static int on_filter(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Conn *c = userdata;
        const char *sender;
        uint64_t cookie;
        uint8_t type;
        size_t i;

        if (sd_bus_message_get_type(m, &type) < 0)
                return 0;
        /* The connection's one filter: method calls are counted for the
         * peer's Ack, and a Subchannel1 call from a peer then goes straight
         * to its receiver; only refusals concern the SentLog itself. */
        if (type == SD_BUS_MESSAGE_METHOD_CALL) {
                count_call(c, m);
                return c->dispatch_peer ? receiver_dispatch_call(c, m, error) : 0;
        }
        if (!c->sent.refusals || !sd_bus_message_is_method_error(m, SD_BUS_ERROR_LIMITS_EXCEEDED))
                return 0;
        sender = sd_bus_message_get_sender(m);
        if (!sender || strcmp(sender, "org.freedesktop.DBus") != 0)
                return 0;
        if (sd_bus_message_get_reply_cookie(m, &cookie) < 0)
                return 0;
        if (!find(&c->sent, cookie, &i)) {
                log_debug("ipcmux: %s: refusal of #%" PRIu64 " matches nothing kept (%zu kept from #%" PRIu64 ")",
                          c->unique_name, cookie, c->sent.len, c->sent.len ? at(&c->sent, 0)->cookie : 0);
                return 0;
        }
        refused(c, i);
        return 1;
}

int sentlog_init(Conn *c) {
        c->sent.retry_at = UINT64_MAX;
        c->sent.retry_delay = RETRY_DELAY_MIN_USEC;
        /* On a direct connection nobody in between refuses. */
        c->sent.refusals = sd_bus_is_bus_client(c->bus) > 0;
        return sd_bus_add_filter(c->bus, &c->sent.filter, on_filter, c);
}

void sentlog_done(Conn *c) {
        SentLog *s = &c->sent;

        while (s->len > 0)
                drop_front(s);
        for (size_t k = 0; k < s->n_later; k++)
                sd_bus_message_unref(s->later[k]);
        free(s->later);
        s->later = NULL;
        s->n_later = 0;
        pages_free(s->calls, s->allocated * sizeof(SentCall));
        s->calls = NULL;
        s->allocated = 0;
        pages_free(s->arena, ARENA_SIZE);
        s->arena = NULL;
        s->barrier = sd_bus_slot_unref(s->barrier);
        s->filter = sd_bus_slot_unref(s->filter);
}
