/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Endpoints and ipcmux_sender objects (see endpoint.h).
 *
 * Output order.  Control messages that a frame depends on (Sending, which
 * registers an embedded sender as in flight at its owner) are queued in
 * conn->ctrlq, which always drains before any endpoint's frames; so the
 * owner learns of the copy before the carrying message can arrive anywhere.
 * A Release follows the frames its endpoint had queued.
 */

#include <endian.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>

#include "channel.h"
#include "endpoint.h"
#include "log.h"
#include "macro.h"
#include "message.h"
#include "peer.h"
#include "receiver.h"
#include "sentlog.h"
#include "shmem.h"

/* How long an ask for an Ack (peer_ask_ack()) waits for its reply. */
#define ACK_ASK_TIMEOUT_USEC (1000u * 1000u)
/* Most frames one Send call carries when the link was busy (batching). */
#define BATCH_MAX_FRAMES 256u
/* Most inline bytes a batch of several frames carries.  Big calls gain
 * nothing more (256 frames of 1 KiB already cost one call each 256 KiB) and
 * hurt: a broker that refuses a call refuses all of it, a 1 MB queue holds
 * only a few, and a broker's max_message_size may be small (1 MB in our
 * low-limit tests; a batch over it gets the sender disconnected). */
#define BATCH_MAX_BYTES (256u << 10)
/* Re-read the socket at least this often while the application only sends,
 * so Closed notifications (and credit) are seen promptly. */
#define SEND_DISPATCH_INTERVAL_USEC 20000u
/* ...and this often while frames wait (for credit or the socket): what
 * piles up meanwhile leaves batched, one call per ~256 frames. */
#define SEND_BACKLOG_INTERVAL_USEC 1000u
/* How long the last unref of a sender waits for its output to leave. */
/* The last unref gives up on its queue after this long without progress
 * (see endpoint_progress()). */
#define RELEASE_FLUSH_TIMEOUT_USEC (10u * 1000000u)

typedef struct OutFrame {
        List link;
        uint32_t flags;
        uint8_t *payload;
        size_t payload_size;
        ipcmux_shmem **regions;
        unsigned n_regions;
        int *fds;
        unsigned n_fds;
        WireSenderRef *senders;         /* owner and path strdup'ed */
        unsigned n_senders;
        uint64_t cost;                  /* for the credit window */
        /* A run: small plain frames stored as SendPacked records (u32
         * length, then the bytes) in inline_payload, the unsent ones from
         * run_head on; no other field is used.  A never-read subchannel's
         * backlog so costs 4 bytes a frame beyond its payload, not an
         * OutFrame and an allocation each (2M queued 64 B frames took
         * 343 MB, and half of the sender's extra CPU went to faulting in
         * those pages). */
        bool is_run;
        unsigned run_n;                 /* records left */
        uint32_t run_head, run_used, run_cap;
        uint8_t inline_payload[];       /* small payloads live here (one malloc) */
} OutFrame;

/* Payloads up to this size are stored inside their OutFrame. */
#define OUT_FRAME_INLINE_MAX 1024u
/* Plain frames with payloads up to this size wait in runs (see OutFrame);
 * bigger ones cost more than an allocation anyway. */
#define OUT_RUN_RECORD_MAX 256u
/* A run's capacity: the first of a backlog is small (10,000 subchannels
 * with a frame or two waiting each), the next ones double, to this. */
#define OUT_RUN_MIN 512u
#define OUT_RUN_MAX (64u << 10)

/* A call the broker refused (or one after it), to be sent again. */
typedef struct ResendCall {
        List link;
        sd_bus_message *m;
        uint64_t cost;
        uint64_t seq;
} ResendCall;

static void resend_call_free(ResendCall *rc) {
        list_unlink(&rc->link);
        sd_bus_message_unref(rc->m);
        free(rc);
}

static void out_frame_free(OutFrame *f) {
        if (!f)
                return;
        if (f->payload != f->inline_payload)
                free(f->payload);
        for (unsigned i = 0; i < f->n_regions; i++)
                ipcmux_shmem_unref(f->regions[i]);
        free(f->regions);
        for (unsigned i = 0; i < f->n_fds; i++)
                safe_close(f->fds[i]);
        free(f->fds);
        for (unsigned i = 0; i < f->n_senders; i++) {
                free((char *) f->senders[i].owner);
                free((char *) f->senders[i].path);
        }
        free(f->senders);
        free(f);
}

/* ---- endpoints ----------------------------------------------------------- */

Endpoint *endpoint_ref(Endpoint *ep) {
        if (ep)
                ep->n_ref++;
        return ep;
}

static void endpoint_drop_resend(Endpoint *ep) {
        ResendCall *rc, *tmp;

        list_for_each_entry_safe(rc, tmp, &ep->resend, link)
                resend_call_free(rc);
}

static void endpoint_free(Endpoint *ep) {
        OutFrame *f, *tmp;

        list_for_each_entry_safe(f, tmp, &ep->queue, link) {
                list_unlink(&f->link);
                out_frame_free(f);
        }
        endpoint_drop_resend(ep);
        if (!ep->local)
                sentlog_forget_endpoint(ep->conn, ep);
        if (list_is_linked(&ep->ready_link))
                list_unlink(&ep->ready_link);
        if (list_is_linked(&ep->peer_link))
                list_unlink(&ep->peer_link);
        if (list_is_linked(&ep->cap_link))
                list_unlink(&ep->cap_link);
        if (ep->key)
                hashmap_remove(&ep->conn->endpoints, ep->key);
        if (ep->local && ep->rx && ep->rx->local_ep == ep)
                ep->rx->local_ep = NULL;
        if (ep->oneshot_name && !conn_forked(ep->conn) && ep->conn->error >= 0)
                /* The server has seen us claim it; let the name go. */
                (void) sd_bus_call_method_async(ep->conn->bus, NULL, "org.freedesktop.DBus",
                                                "/org/freedesktop/DBus", "org.freedesktop.DBus",
                                                "ReleaseName", NULL, NULL, "s", ep->oneshot_name);
        free(ep->oneshot_name);
        free(ep->key);
        free((char *) ep->dest);
        free(ep->path);
        conn_unref(ep->conn);
        free(ep);
}

Endpoint *endpoint_unref(Endpoint *ep) {
        if (ep && --ep->n_ref == 0)
                endpoint_free(ep);
        return NULL;
}

static Endpoint *endpoint_alloc(Conn *c) {
        Endpoint *ep = calloc(1, sizeof(*ep));

        if (!ep)
                return NULL;
        ep->n_ref = 1;
        ep->conn = conn_ref(c);
        list_init(&ep->queue);
        list_init(&ep->resend);
        list_init(&ep->ready_link);
        list_init(&ep->peer_link);
        list_init(&ep->cap_link);
        return ep;
}

int endpoint_new_local(Conn *c, ipcmux_receiver *rx, Endpoint **ret) {
        Endpoint *ep = endpoint_alloc(c);

        if (!ep)
                return -ENOMEM;
        ep->local = true;
        ep->rx = rx;
        ep->closed = !rx;
        if (rx) {
                ep->path = strdup(rx->path);
                if (!ep->path) {
                        endpoint_free(ep);
                        return -ENOMEM;
                }
        }
        *ret = ep;
        return 0;
}

Endpoint *endpoint_find(Conn *c, const char *dest, const char *path) {
        char buf[512];
        int n;

        n = snprintf(buf, sizeof(buf), "%s%s", dest, path);
        if (n < 0 || (size_t) n >= sizeof(buf))
                return NULL;
        return hashmap_get(&c->endpoints, buf);
}

int endpoint_get_remote(Conn *c, const char *dest, const char *path, Endpoint **ret) {
        Endpoint *ep;
        Peer *p;
        int r;

        ep = endpoint_find(c, dest, path);
        if (ep) {
                *ret = endpoint_ref(ep);
                return 0;
        }
        if (strlen(dest) + strlen(path) >= 512)
                return -EINVAL;

        ep = endpoint_alloc(c);
        if (!ep)
                return -ENOMEM;
        ep->dest = strdup(dest);
        ep->path = strdup(path);
        if (!ep->dest || !ep->path || asprintf(&ep->key, "%s%s", dest, path) < 0) {
                ep->key = NULL;
                endpoint_free(ep);
                return -ENOMEM;
        }
        r = hashmap_put(&c->endpoints, ep->key, ep);
        if (r < 0) {
                free(ep->key);
                ep->key = NULL;
                endpoint_free(ep);
                return r;
        }
        r = peer_watch(c, dest, &p);
        if (r < 0) {
                endpoint_free(ep);
                return r;
        }
        if (p) {
                ep->peer = p;
                list_append(&p->endpoints, &ep->peer_link);
                if (p->gone)
                        ep->closed = true;
        }
        *ret = ep;
        return 0;
}

/* Queued output (frames, releases) pins its endpoint: one reference while
 * there is any, independent of whether the window lets it move now. */
static void endpoint_pin(Endpoint *ep) {
        if (!ep->pinned) {
                ep->pinned = true;
                endpoint_ref(ep);
        }
}

static bool endpoint_has_output(Endpoint *ep) {
        return !list_is_empty(&ep->queue) || !list_is_empty(&ep->resend) || ep->pending_releases > 0;
}

static void endpoint_mark_ready(Endpoint *ep);

/* Off the cap's waiters: its output may go again (it asks anew if not). */
static void endpoint_uncap(Endpoint *ep) {
        list_unlink(&ep->cap_link);
        ep->credit_requested = false;
        if (endpoint_has_output(ep))
                endpoint_mark_ready(ep);
}

/* On conn->ready: it has output that may be able to move. */
static void endpoint_mark_ready(Endpoint *ep) {
        __atomic_store_n(&ep->full, false, __ATOMIC_RELAXED);
        endpoint_pin(ep);
        if (!list_is_linked(&ep->ready_link))
                list_append(&ep->conn->ready, &ep->ready_link);
}

static void endpoint_unmark_ready(Endpoint *ep) {
        if (list_is_linked(&ep->ready_link))
                list_unlink(&ep->ready_link);
        if (ep->pinned && !endpoint_has_output(ep)) {
                ep->pinned = false;
                endpoint_unref(ep);
        }
}

/* Tell a subchannel's owner about an in-flight copy it will never see used. */
static void decline_own_copy(Conn *c, const WireSenderRef *ref) {
        sd_bus_message *m = NULL;

        if (conn_new_call(c, ref->owner, ref->path, IPCMUX_INTERFACE_SUBCHANNEL, "Decline", &m) < 0)
                return;
        if (sd_bus_message_append(m, "st", c->unique_name, ref->token) < 0) {
                sd_bus_message_unref(m);
                return;
        }
        (void) conn_send_ctrl(c, m);
}

static void cancel_frame_transfers(Conn *c, OutFrame *f) {
        for (unsigned i = 0; i < f->n_senders; i++)
                sender_decline_ref(c, c->unique_name, &f->senders[i]);
}

void endpoint_close(Endpoint *ep) {
        Conn *c = ep->conn;
        OutFrame *f, *tmp;

        if (ep->closed)
                return;
        ep->closed = true;
        endpoint_ref(ep);
        /* Unsent frames die here: their embedded copies were registered as
         * in flight at their owners, withdraw them. */
        list_for_each_entry_safe(f, tmp, &ep->queue, link) {
                list_unlink(&f->link);
                cancel_frame_transfers(c, f);
                out_frame_free(f);
        }
        ep->n_queued = 0;
        ep->queued_bytes = 0;
        __atomic_store_n(&ep->full, false, __ATOMIC_RELAXED);
        ep->pending_releases = 0;
        ep->retry_wait = false;
        endpoint_drop_resend(ep);
        endpoint_unmark_ready(ep);
        if (list_is_linked(&ep->cap_link))
                list_unlink(&ep->cap_link);
        conn_notify(c);
        endpoint_unref(ep);
}

/* ---- credit window ------------------------------------------------------- */

/* Does the per-peer cap let @cost more into the bus, in a new call if
 * @new_call?  A lone call larger than the cap goes when nothing is in it. */
static bool cap_allows(Endpoint *ep, uint64_t batch_cost, uint64_t cost, bool new_call) {
        Peer *p = ep->peer;

        if (!p)
                return true;
        uint64_t in_bus = p->tx_bytes - p->tx_acked + batch_cost;
        /* The lowered calls cap is for batching a subchannel that streams
         * (256 or more of its messages in flight); it must not hold the
         * first message of a new one, nor what a last unref flushes, behind
         * other subchannels' calls while nobody may dispatch this connection
         * (seen: four threads each bridging subchannels between two
         * connections of one process, each waiting on the other connection
         * for 10 s, then the unref giving up). */
        bool streaming = ep->sent_msgs - ep->credit_msgs >= PEER_CAP_STREAM_MSGS;
        uint64_t max_calls = streaming && !ep->releasing ? p->tx_cap_calls : PEER_CAP_CALLS;
        if ((in_bus > 0 && in_bus + cost > p->tx_cap) ||
            (new_call && p->tx_calls - p->tx_calls_acked >= max_calls)) {
                ep->stalled_on_cap = true;
                return false;
        }
        return true;
}

/* May a frame of @cost leave now?  A lone frame larger than the window
 * still goes when nothing is in flight. */
static bool window_allows_after(Endpoint *ep, unsigned n_batch, uint64_t batch_cost, uint64_t cost) {
        uint64_t msgs = ep->sent_msgs - ep->credit_msgs + n_batch;
        uint64_t bytes = ep->sent_bytes - ep->credit_bytes + batch_cost;

        if (msgs > 0 && (msgs + 1 > WINDOW_MSGS || bytes + cost > WINDOW_BYTES)) {
                ep->stalled_on_cap = false;
                return false;
        }
        return cap_allows(ep, batch_cost, cost, n_batch == 0);
}

static bool window_allows(Endpoint *ep, uint64_t cost) {
        return window_allows_after(ep, 0, 0, cost);
}

static void account_sent(Endpoint *ep, unsigned n, uint64_t cost) {
        ep->sent_msgs += n;
        ep->sent_bytes += cost;
        if (ep->peer) {
                ep->peer->tx_bytes += cost;
                ep->peer->tx_bytes_total += cost;
        }
        /* A WantCredit sent after this reaches the receiver after it, so
         * its answer (Ack, Credit) covers it: the next stall may ask again. */
        ep->credit_requested = false;
}

void endpoint_credit(Endpoint *ep, uint64_t msgs, uint64_t bytes) {
        log_debug("ipcmux: credit %s%s: %" PRIu64 "/%" PRIu64 " msgs, %" PRIu64 "/%" PRIu64 " bytes",
                  ep->dest, ep->path, msgs, ep->sent_msgs, bytes, ep->sent_bytes);
        /* Running totals: late or repeated credits change nothing. */
        if (msgs > ep->sent_msgs || bytes > ep->sent_bytes)
                return;         /* more than we ever sent: a confused peer */
        if (msgs > ep->credit_msgs) {
                ep->credit_msgs = msgs;
                ep->last_credit_usec = now_coarse_usec();
                __atomic_store_n(&ep->full, false, __ATOMIC_RELAXED);
                sentlog_progress(ep->conn);
        }
        if (bytes > ep->credit_bytes)
                ep->credit_bytes = bytes;
        ep->credit_requested = false;
        if (!list_is_empty(&ep->queue) || ep->pending_releases > 0) {
                endpoint_mark_ready(ep);
                (void) conn_flush(ep->conn);
        }
        conn_notify(ep->conn);
}

void endpoint_refused(Endpoint *ep, uint64_t cost) {
        Peer *p = ep->peer;

        if (!p)
                return;
        /* It left the bus unread: it no longer counts against the cap, but
         * the cap was too high for the broker's queue: halve it, once per
         * round of refusals (one congestion, many refused calls). */
        p->tx_bytes -= MIN(cost, p->tx_bytes - p->tx_acked);
        if (p->cap_round != ep->conn->sent.rounds) {
                p->cap_round = ep->conn->sent.rounds;
                p->tx_cap = MAX(p->tx_cap / 2, PEER_CAP_MIN);
        }
}

int endpoint_resend(Endpoint *ep, sd_bus_message *m, uint64_t cost, uint64_t seq, bool first) {
        ResendCall *rc;

        if (ep->closed)
                return 0;
        /* What is still waiting here was never sent, so it comes after what
         * was (and is now refused): a rewind goes in front of it, in order. */
        if (first)
                ep->resend_at = list_is_empty(&ep->resend) ? &ep->resend : list_first(&ep->resend);
        rc = malloc(sizeof(*rc));
        if (!rc)
                return -ENOMEM;
        rc->m = sd_bus_message_ref(m);
        rc->cost = cost;
        rc->seq = seq;
        list_link_before(ep->resend_at, &rc->link);
        ep->retry_wait = true;
        endpoint_pin(ep);
        return 0;
}

static void endpoint_abandon_queue(Endpoint *ep);

void endpoint_unrepairable(Endpoint *ep) {
        log_warning("ipcmux: %s%s: the broker refused a call with fds; the rest of this stream is lost",
                    ep->dest, ep->path);
        /* Every frame sent after the refused one is set aside at the
         * receiver, and nothing of this stream can follow the hole: the
         * queue goes with it.  The empty Send that skips to the end makes
         * the receiver count the loss and cut us off (Closed). */
        endpoint_drop_resend(ep);
        endpoint_abandon_queue(ep);
}

void endpoint_probe_refused(Endpoint *ep) {
        ep->credit_requested = false;
        ep->retry_wait = true;
        endpoint_pin(ep);
}

void endpoint_retry(Endpoint *ep) {
        if (!ep->retry_wait)
                return;
        log_debug("ipcmux: %s%s: retry (%s)", ep->dest, ep->path, list_is_empty(&ep->resend) ? "probe" : "resend");
        ep->retry_wait = false;
        if (endpoint_has_output(ep))
                endpoint_mark_ready(ep);
        else
                endpoint_unmark_ready(ep);      /* drops the pin */
}

/* Send the first refused call again, within the per-peer cap like anything
 * new: a refused call left the cap's count (endpoint_refused), so what the
 * cap waits for is in the bus and will be acknowledged; sending everything
 * refused at once overflows the same queue again (seen: refused calls of
 * 256 frames going round for minutes). */
static int endpoint_resend_one(Endpoint *ep, bool *sent) {
        ResendCall *rc = list_first_entry(&ep->resend, ResendCall, link);
        Peer *p = ep->peer;
        int r;

        *sent = false;
        if (!cap_allows(ep, 0, rc->cost, true))
                return 0;
        /* rc->m is a new, never sent copy (sentlog builds it): send it as is. */
        log_debug("ipcmux: %s%s: sending again from #%" PRIu64, ep->dest, ep->path, rc->seq);
        r = sentlog_send_again(ep->conn, rc->m, ep, rc->cost, rc->seq);
        if (r < 0) {
                if (IN_SET(r, -ECONNRESET, -ENOTCONN))
                        return r;
                /* Retrying would fail the same way, for ever: give up, loudly. */
                endpoint_unrepairable(ep);
                return 0;
        }
        if (p) {
                p->tx_bytes += rc->cost;
                p->tx_bytes_total += rc->cost;
        }
        ep->credit_requested = false;   /* see account_sent() */
        ep->last_emit = ++ep->conn->emitted;
        resend_call_free(rc);
        *sent = true;
        return 0;
}

/* Only endpoints the cap held back, oldest first, as many as there is room
 * for calls (those the bytes still hold stall again, at the back): one
 * waiting for its window (an unread subchannel) stays where it is, or every
 * Ack would make it ask again, and every ask bring an Ack. */
static void peer_wake_cap_waiters(Peer *p) {
        uint64_t in_bus = p->tx_calls - p->tx_calls_acked;
        uint64_t room = in_bus < p->tx_cap_calls ? p->tx_cap_calls - in_bus : 1;

        while (room-- > 0 && !list_is_empty(&p->cap_waiters))
                endpoint_uncap(list_first_entry(&p->cap_waiters, Endpoint, cap_link));
}

void peer_ack(Peer *p, uint64_t bytes, uint64_t calls) {

        if (bytes <= p->tx_acked && calls <= p->tx_calls_acked)
                return;
        /* The receiver's count is the truth: refusals and copies sent again
         * can leave ours behind it (never let the difference block us); it
         * also counts subchannel calls that are not part of a stream
         * (Decline), which errs on the side of fewer calls in the bus. */
        if (bytes > p->tx_bytes) {
                log_debug("ipcmux: %s acknowledged %" PRIu64 " bytes, we counted %" PRIu64, p->name, bytes,
                          p->tx_bytes);
                p->tx_bytes = bytes;
        }
        if (calls > p->tx_calls)
                p->tx_calls = calls;
        /* Keep 4 of the receiver's Ack intervals in the bus (PEER_CAP_CALLS). */
        if (calls > p->tx_calls_acked) {
                uint64_t want = MIN(MAX(4 * (calls - p->tx_calls_acked), (uint64_t) PEER_CAP_CALLS_MIN),
                                    (uint64_t) PEER_CAP_CALLS);
                p->tx_cap_calls = MIN(want, 2 * p->tx_cap_calls);
        }
        p->tx_acked = MAX(p->tx_acked, bytes);
        p->tx_calls_acked = MAX(p->tx_calls_acked, calls);
        p->tx_cap = MIN(p->tx_cap + PEER_CAP_STEP, (uint64_t) PEER_CAP_BYTES);
        sentlog_progress(p->conn);
        peer_wake_cap_waiters(p);
        (void) conn_flush(p->conn);
        conn_notify(p->conn);
}

void endpoints_fail_all(Conn *c) {
        Endpoint *ep;
        size_t i = 0;
        void *v;

        /* endpoint_close() never removes map entries while we iterate: the
         * extra ref it takes keeps every endpoint alive until it returns,
         * and the queue ref it may drop is not the last one of a mapped
         * endpoint unless no sender refers to it; collect first to be safe. */
        size_t n = hashmap_size(&c->endpoints), k = 0;
        Endpoint **all = calloc(n ? n : 1, sizeof(Endpoint *));
        if (!all)
                return;
        while (hashmap_iterate(&c->endpoints, &i, &v))
                all[k++] = endpoint_ref(v);
        for (size_t j = 0; j < k; j++) {
                ep = all[j];
                endpoint_close(ep);
                endpoint_unref(ep);
        }
        free(all);
}

/* ---- building calls ------------------------------------------------------ */

typedef struct FrameView {
        uint32_t flags;
        const void *payload;
        size_t payload_size;
        ipcmux_shmem *const *regions;
        unsigned n_regions;
        const int *fds;
        unsigned n_fds;
        const WireSenderRef *senders;
        unsigned n_senders;
} FrameView;

static unsigned frame_view_fds(const FrameView *v) {
        return v->n_regions + v->n_fds;
}

/* What a frame weighs in the credit window (the receiver computes the same). */
static uint64_t frame_view_cost(const FrameView *v) {
        uint64_t cost = v->payload_size;

        for (unsigned i = 0; i < v->n_regions; i++)
                cost += v->regions[i]->size;
        return cost;
}

/* Send StageFds calls carrying fds [0, n) so that at most WIRE_MAX_FDS_PER_CALL remain. */
static int stage_fds(Endpoint *ep, const int *fds, unsigned n) {
        Conn *c = ep->conn;

        for (unsigned at = 0; at < n; at += WIRE_MAX_FDS_PER_CALL) {
                _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
                unsigned k = MIN(WIRE_MAX_FDS_PER_CALL, n - at);
                int r;

                r = conn_new_call(c, ep->dest, ep->path, IPCMUX_INTERFACE_SUBCHANNEL, "StageFds", &m);
                if (r < 0)
                        return r;
                r = sd_bus_message_open_container(m, 'a', "h");
                if (r < 0)
                        return r;
                for (unsigned i = 0; i < k; i++) {
                        r = sd_bus_message_append_basic(m, 'h', &fds[at + i]);
                        if (r < 0)
                                return r;
                }
                r = sd_bus_message_close_container(m);
                if (r < 0)
                        return r;
                r = sentlog_send_unkept(c, m, ep, 0);
                if (r < 0)
                        return r;
        }
        return 0;
}

static bool frame_view_is_plain(const FrameView *v) {
        return v->flags == 0 && v->n_regions == 0 && v->n_fds == 0 && v->n_senders == 0;
}

/*
 * Emit plain frames (no attachments) as one SendPacked call: one byte array
 * laid out by us (u64 first_seq, then per frame a u32 length and its bytes,
 * all little-endian), so a message costs one array copy, like a raw `ay`
 * call, instead of seven D-Bus containers.
 */
static int emit_packed(Endpoint *ep, const FrameView *views, unsigned n_views, uint64_t cost) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        Conn *c = ep->conn;
        size_t total = 0;
        uint8_t *p;
        int r;

        uint64_t seq = htole64(ep->next_seq);

        total = sizeof(seq);
        for (unsigned i = 0; i < n_views; i++)
                total += 4 + views[i].payload_size;
        if (c->error < 0)
                return -ECONNRESET;
        /* No explicit set_expect_reply: sd_bus_send(..., NULL) makes it no-reply. */
        r = sd_bus_message_new_method_call(c->bus, &m, ep->dest, ep->path, IPCMUX_INTERFACE_SUBCHANNEL,
                                           "SendPacked");
        if (r < 0)
                return r;
        r = sd_bus_message_append_array_space(m, 'y', total, (void **) &p);
        if (r < 0)
                return r;
        memcpy(p, &seq, sizeof(seq));
        p += sizeof(seq);
        for (unsigned i = 0; i < n_views; i++) {
                uint32_t len = htole32((uint32_t) views[i].payload_size);

                memcpy(p, &len, 4);
                if (views[i].payload_size > 0)
                        memcpy(p + 4, views[i].payload, views[i].payload_size);
                p += 4 + views[i].payload_size;
        }
        r = sentlog_send_packed(c, m, ep, cost, p - total, total);
        if (r < 0)
                return r;
        ep->next_seq += n_views;
        ep->last_emit = ++c->emitted;
        return 0;
}

/*
 * Emit frames as one Send call (plus StageFds calls when a single frame has
 * more fds than one call may carry).  @n_views frames together have at most
 * WIRE_MAX_FDS_PER_CALL fds unless @n_views is 1.
 */
static int emit_frames(Endpoint *ep, const FrameView *views, unsigned n_views, uint64_t cost) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        Conn *c = ep->conn;
        int fdbuf[64], *fds = fdbuf;
        _cleanup_free_ int *fds_heap = NULL;
        unsigned n_fds = 0, n_staged = 0, total = 0;
        int r;

        for (unsigned i = 0; i < n_views; i++)
                total += frame_view_fds(&views[i]);
        if (total > ELEMENTSOF(fdbuf)) {
                fds = fds_heap = malloc(total * sizeof(int));
                if (!fds)
                        return -ENOMEM;
        }
        for (unsigned i = 0; i < n_views; i++) {
                for (unsigned j = 0; j < views[i].n_regions; j++)
                        fds[n_fds++] = shmem_get_fd(views[i].regions[j]);
                for (unsigned j = 0; j < views[i].n_fds; j++)
                        fds[n_fds++] = views[i].fds[j];
        }
        if (n_fds > WIRE_MAX_FDS_PER_CALL) {
                /* Only a lone frame can get here: stage the excess ahead of it. */
                n_staged = n_fds - WIRE_MAX_FDS_PER_CALL;
                r = stage_fds(ep, fds, n_staged);
                if (r < 0)
                        return r;
        }

        r = conn_new_call(c, ep->dest, ep->path, IPCMUX_INTERFACE_SUBCHANNEL, "Send", &m);
        if (r < 0)
                return r;
        r = wire_open_frames(m, ep->next_seq);
        if (r < 0)
                return r;

        unsigned fd_index = 0;
        for (unsigned i = 0; i < n_views; i++) {
                const FrameView *v = &views[i];
                uint32_t flags = v->flags;
                uint32_t ridx[v->n_regions ? v->n_regions : 1], fidx[v->n_fds ? v->n_fds : 1];
                uint64_t rsize[v->n_regions ? v->n_regions : 1];

                for (unsigned j = 0; j < v->n_regions; j++) {
                        ridx[j] = fd_index++;
                        rsize[j] = v->regions[j]->size;
                }
                for (unsigned j = 0; j < v->n_fds; j++)
                        fidx[j] = fd_index++;
                r = wire_append_frame(m, flags, v->payload, v->payload_size,
                                      v->n_regions, ridx, rsize, v->n_fds, fidx,
                                      v->n_senders, v->senders);
                if (r < 0)
                        return r;
        }
        r = wire_close_frames(m, fds + n_staged, n_fds - n_staged);
        if (r < 0)
                return r;
        r = n_fds > 0 ? sentlog_send_unkept(c, m, ep, cost) : sentlog_send(c, m, ep, cost);
        log_debug("ipcmux: Send to %s%s: %u frames from #%" PRIu64 ": %d", ep->dest, ep->path, n_views,
                  ep->next_seq, r);
        if (r < 0)
                return r;
        ep->next_seq += n_views;
        ep->last_emit = ++c->emitted;
        return 0;
}

static void frame_view_from_out(FrameView *v, const OutFrame *f) {
        *v = (FrameView) {
                .flags = f->flags,
                .payload = f->payload,
                .payload_size = f->payload_size,
                .regions = f->regions,
                .n_regions = f->n_regions,
                .fds = f->fds,
                .n_fds = f->n_fds,
                .senders = f->senders,
                .n_senders = f->n_senders,
        };
}

static int send_release(Endpoint *ep, unsigned n) {
        sd_bus_message *m = NULL;
        int r;

        r = conn_new_call(ep->conn, ep->dest, ep->path, IPCMUX_INTERFACE_SUBCHANNEL, "Release", &m);
        if (r < 0)
                return r;
        r = sd_bus_message_append_basic(m, 'u', &n);
        if (r < 0) {
                sd_bus_message_unref(m);
                return r;
        }
        r = sentlog_send(ep->conn, m, ep, 0);
        sd_bus_message_unref(m);
        /* Like a frame, it must be confirmed by the broker before the last
         * unref returns (endpoint_settle()): refused, it goes again. */
        if (r >= 0)
                ep->last_emit = ++ep->conn->emitted;
        return r;
}

/*
 * The per-peer cap holds us back: ask the peer (WantCredit, with a reply)
 * for an Ack.  The receiver acknowledges before it replies, and the broker
 * sent us its refusals of anything before the ask before it forwarded the
 * ask: when the reply comes, every call sent before the ask has been read
 * (and acknowledged) or refused.  What may still be in the bus is only what
 * went since, so the counts are corrected to that at most: a refusal we
 * never saw, or a call the peer never counted, cannot hold the cap for ever.
 * No reply in a second, or a refusal: ask again after the retry delay.
 */
static void peer_wake_cap_waiters(Peer *p);

/* The ask's slot belongs to the peer (peer_free() cancels it), so nothing
 * of it outlives the connection. */
static int on_ack_ask_reply(sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Peer *p = userdata;
        Conn *c = p->conn;

        /* sd-bus holds its own reference while this runs. */
        p->ask_slot = sd_bus_slot_unref(p->ask_slot);
        p->ack_requested = false;
        if (p->gone)
                return 0;
        if (sd_bus_message_is_method_error(reply, NULL)) {
                /* Refused (the queue that holds our calls is full) or lost:
                 * the oldest waiter asks again when the retry timer fires. */
                if (!list_is_empty(&p->cap_waiters)) {
                        Endpoint *ep = list_first_entry(&p->cap_waiters, Endpoint, cap_link);

                        ep->retry_wait = true;
                        endpoint_pin(ep);
                        sentlog_arm_retry(c);
                }
                return 0;
        }
        uint64_t calls_since = p->tx_calls_total - p->ask_calls_total;
        uint64_t bytes_since = p->tx_bytes_total - p->ask_bytes_total;
        if (p->tx_calls - p->tx_calls_acked > calls_since) {
                log_debug("ipcmux: %s: %" PRIu64 " calls counted in the bus, at most %" PRIu64 " can be",
                          p->name, p->tx_calls - p->tx_calls_acked, calls_since);
                p->tx_calls = p->tx_calls_acked + calls_since;
        }
        if (p->tx_bytes - p->tx_acked > bytes_since) {
                log_debug("ipcmux: %s: %" PRIu64 " bytes counted in the bus, at most %" PRIu64 " can be",
                          p->name, p->tx_bytes - p->tx_acked, bytes_since);
                p->tx_bytes = p->tx_acked + bytes_since;
        }
        peer_wake_cap_waiters(p);
        (void) conn_flush(c);
        conn_notify(c);
        return 0;
}

static int peer_ask_ack(Peer *p, Endpoint *ep) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int r;

        if (p->ask_slot)
                return 0;       /* one is on its way */
        r = conn_new_call(ep->conn, ep->dest, ep->path, IPCMUX_INTERFACE_SUBCHANNEL, "WantCredit", &m);
        if (r < 0)
                return r;
        r = sd_bus_message_set_expect_reply(m, true);
        if (r < 0)
                return r;
        r = sd_bus_call_async(ep->conn->bus, &p->ask_slot, m, on_ack_ask_reply, p, ACK_ASK_TIMEOUT_USEC);
        if (r < 0)
                return r;
        p->ask_calls_total = p->tx_calls_total;
        p->ask_bytes_total = p->tx_bytes_total;
        return 0;
}

/* Out of credit: off the ready list until Credit or Ack.  The receiver only
 * credits in quarter windows or when asked: ask, once per stall, or a small
 * residue could block us forever. */
static void endpoint_stalled(Endpoint *ep) {
        Peer *p = ep->peer;

        log_debug("ipcmux: %s%s: stalled (%s%s): window %" PRIu64 " msgs, %" PRIu64 " bytes; in the bus %" PRIu64
                  " bytes of %" PRIu64 ", %" PRIu64 " calls",
                  ep->dest, ep->path, ep->stalled_on_cap ? "cap" : "window",
                  ep->credit_requested ? ", asked" : "", ep->sent_msgs - ep->credit_msgs,
                  ep->sent_bytes - ep->credit_bytes, p ? p->tx_bytes - p->tx_acked : 0, p ? p->tx_cap : 0,
                  p ? p->tx_calls - p->tx_calls_acked : 0);
        list_unlink(&ep->ready_link);
        if (p && ep->stalled_on_cap) {
                if (!list_is_linked(&ep->cap_link))
                        list_append(&p->cap_waiters, &ep->cap_link);
                /* The Ack that frees the cap is the peer's, not ours: one
                 * endpoint asking is enough. */
                if (!p->ack_requested && peer_ask_ack(p, ep) >= 0)
                        p->ack_requested = true;
                return;
        } else if (list_is_linked(&ep->cap_link))
                list_unlink(&ep->cap_link);
        if (!ep->credit_requested) {
                sd_bus_message *m = NULL;

                if (conn_new_call(ep->conn, ep->dest, ep->path, IPCMUX_INTERFACE_SUBCHANNEL, "WantCredit", &m) >=
                    0) {
                        /* Not part of the stream: refused, it is asked
                         * again later, not queued behind the frames it is
                         * meant to unblock. */
                        if (sentlog_send_probe(ep->conn, m, ep) >= 0) {
                                ep->credit_requested = true;
                                if (p && ep->stalled_on_cap)
                                        p->ack_requested = true;
                        }
                        sd_bus_message_unref(m);
                }
        }
}

int endpoint_flush_one(Endpoint *ep) {
        FrameView views[BATCH_MAX_FRAMES];
        OutFrame *batch[BATCH_MAX_FRAMES];
        unsigned n = 0, fds = 0;
        uint64_t bytes = 0, cost = 0;
        OutFrame *f;
        int r = 0;

        endpoint_ref(ep);
        if (ep->retry_wait) {
                /* Refused: off the ready list until the retry timer. */
                list_unlink(&ep->ready_link);
                endpoint_unref(ep);
                return 0;
        }
        /* What the broker refused goes again first, in its order. */
        if (!list_is_empty(&ep->resend)) {
                bool sent;

                r = endpoint_resend_one(ep, &sent);
                if (r < 0 || sent) {
                        list_unlink(&ep->ready_link);
                        list_append(&ep->conn->ready, &ep->ready_link);
                } else
                        endpoint_stalled(ep);
                endpoint_unref(ep);
                return r;
        }
        /* Coalesce queued frames into one call, within the bus's limits and
         * the credit window (counting what this batch already takes). */
        bool plain = false, full = false;
        list_for_each_entry(f, &ep->queue, link) {
                if (f->is_run) {
                        /* Its records, one frame each, from the head on. */
                        uint32_t off = f->run_head;

                        if (n > 0 && !plain)
                                break;
                        plain = true;
                        for (unsigned i = 0; i < f->run_n; i++) {
                                uint32_t len;

                                memcpy(&len, f->inline_payload + off, 4);
                                if (n == BATCH_MAX_FRAMES || (n > 0 && bytes + len > BATCH_MAX_BYTES) ||
                                    !window_allows_after(ep, n, cost, len)) {
                                        full = true;
                                        break;
                                }
                                views[n] = (FrameView) { .payload = f->inline_payload + off + 4, .payload_size = len };
                                batch[n++] = f;
                                bytes += len;
                                cost += len;
                                off += 4 + len;
                        }
                        if (full)
                                break;
                        continue;
                }

                unsigned k = f->n_regions + f->n_fds;
                FrameView v;

                if (n == BATCH_MAX_FRAMES)
                        break;
                if (n > 0 && (fds + k > WIRE_MAX_FDS_PER_CALL || bytes + f->payload_size > BATCH_MAX_BYTES))
                        break;
                if (!window_allows_after(ep, n, cost, f->cost))
                        break;
                frame_view_from_out(&v, f);
                /* Plain frames go packed, the others in Send: one kind per call. */
                if (n == 0)
                        plain = frame_view_is_plain(&v);
                else if (frame_view_is_plain(&v) != plain)
                        break;
                views[n] = v;
                batch[n++] = f;
                fds += k;
                bytes += f->payload_size;
                cost += f->cost;
        }
        if (n > 0) {
                r = plain ? emit_packed(ep, views, n, cost) : emit_frames(ep, views, n, cost);
                if (r < 0)
                        log_debug("ipcmux: sending to %s%s failed: %s", ep->dest, ep->path, strerror(-r));
                else
                        account_sent(ep, n, cost);
                /* Gone either way (a failed call failed the connection). */
                __atomic_store_n(&ep->full, false, __ATOMIC_RELAXED);
                for (unsigned i = 0; i < n; i++) {
                        OutFrame *g = batch[i];

                        ep->n_queued--;
                        if (g->is_run) {
                                ep->queued_bytes -= views[i].payload_size;
                                g->run_head += 4 + (uint32_t) views[i].payload_size;
                                if (--g->run_n > 0)
                                        continue;
                        } else {
                                ep->queued_bytes -= g->cost;
                                if (r < 0)
                                        cancel_frame_transfers(ep->conn, g);
                        }
                        list_unlink(&g->link);
                        out_frame_free(g);
                }
        }
        if (list_is_empty(&ep->queue)) {
                if (ep->pending_releases > 0 && r >= 0) {
                        r = send_release(ep, ep->pending_releases);
                        ep->pending_releases = 0;
                }
                endpoint_unmark_ready(ep);
        } else if (n == 0) {
                endpoint_stalled(ep);
        } else {
                /* Round robin: let the other endpoints have the next call. */
                list_unlink(&ep->ready_link);
                list_append(&ep->conn->ready, &ep->ready_link);
        }
        endpoint_unref(ep);
        return r;
}

/* ---- sending ------------------------------------------------------------- */

/* Register the message's senders as in flight to @ep's process; fill @refs. */
static int prepare_transfers(Endpoint *ep, ipcmux_message *m, WireSenderRef *refs) {
        Conn *c = ep->conn;
        int r;

        for (size_t i = 0; i < m->n_senders; i++) {
                ipcmux_sender *s = m->senders[i];
                Endpoint *sep;
                uint64_t token = random_u64();

                if (!s)
                        return -ENXIO;  /* taken: nothing to send */
                sep = s->ep;
                /* A sender of another connection of this process: its
                 * bookkeeping lives under that connection's lock and name. */
                if (sep->conn != c)
                        return -EXDEV;
                refs[i].token = token;
                if (sep->local) {
                        refs[i].owner = c->unique_name;
                        refs[i].path = sep->path ? sep->path : "/";
                        if (sep->rx && !sep->closed) {
                                Peer *p;

                                r = peer_watch(c, ep->dest, &p);
                                if (r < 0)
                                        return r;
                                r = lifecycle_sending(sep->rx->lc, NULL, token, ep->dest);
                                if (r < 0)
                                        return r;
                        }
                } else {
                        sd_bus_message *call = NULL;

                        refs[i].owner = sep->dest;
                        refs[i].path = sep->path;
                        if (sep->closed)
                                continue;
                        r = conn_new_call(c, sep->dest, sep->path, IPCMUX_INTERFACE_SUBCHANNEL, "Sending", &call);
                        if (r < 0)
                                return r;
                        r = sd_bus_message_append(call, "ts", token, ep->dest);
                        if (r < 0) {
                                sd_bus_message_unref(call);
                                return r;
                        }
                        r = conn_send_ctrl(c, call);
                        if (r < 0)
                                return r;
                }
        }
        return 0;
}

static int out_frame_new(const FrameView *v, OutFrame **ret) {
        bool small = v->payload_size <= OUT_FRAME_INLINE_MAX;
        OutFrame *f = malloc(sizeof(*f) + (small ? v->payload_size : 0));

        if (!f)
                return -ENOMEM;
        /* Frames that wait for credit pile up by the hundred thousand
         * beside a busy neighbour: one allocation each, not two. */
        *f = (OutFrame) {
                .flags = v->flags,
                .payload_size = v->payload_size,
        };
        list_init(&f->link);
        if (small) {
                f->payload = f->inline_payload;
                if (v->payload_size > 0)
                        memcpy(f->payload, v->payload, v->payload_size);
        } else {
                f->payload = memdup(v->payload, v->payload_size);
                if (!f->payload)
                        goto oom;
        }
        if (v->n_regions > 0) {
                f->regions = calloc(v->n_regions, sizeof(ipcmux_shmem *));
                if (!f->regions)
                        goto oom;
                for (; f->n_regions < v->n_regions; f->n_regions++)
                        f->regions[f->n_regions] = ipcmux_shmem_ref(v->regions[f->n_regions]);
        }
        if (v->n_fds > 0) {
                f->fds = calloc(v->n_fds, sizeof(int));
                if (!f->fds)
                        goto oom;
                for (; f->n_fds < v->n_fds; f->n_fds++) {
                        f->fds[f->n_fds] = fcntl(v->fds[f->n_fds], F_DUPFD_CLOEXEC, 3);
                        if (f->fds[f->n_fds] < 0) {
                                int r = negative_errno();
                                out_frame_free(f);
                                return r;
                        }
                }
        }
        if (v->n_senders > 0) {
                f->senders = calloc(v->n_senders, sizeof(WireSenderRef));
                if (!f->senders)
                        goto oom;
                for (; f->n_senders < v->n_senders; f->n_senders++) {
                        WireSenderRef *d = &f->senders[f->n_senders];
                        d->token = v->senders[f->n_senders].token;
                        d->owner = strdup(v->senders[f->n_senders].owner);
                        d->path = strdup(v->senders[f->n_senders].path);
                        if (!d->owner || !d->path) {
                                f->n_senders++;
                                goto oom;
                        }
                }
        }
        *ret = f;
        return 0;
oom:
        out_frame_free(f);
        return -ENOMEM;
}

static int send_view(Endpoint *ep, const FrameView *v, uint64_t cost);

/* Queue a small plain frame: into the last run if it is one with room. */
static int run_append(Endpoint *ep, const void *payload, uint32_t size) {
        OutFrame *run = list_is_empty(&ep->queue) ? NULL : list_last_entry(&ep->queue, OutFrame, link);

        if (!run || !run->is_run || run->run_used + 4 + size > run->run_cap) {
                uint32_t cap = run && run->is_run ? MIN(2 * run->run_cap, OUT_RUN_MAX) : OUT_RUN_MIN;

                run = malloc(sizeof(*run) + cap);
                if (!run)
                        return -ENOMEM;
                *run = (OutFrame) {
                        .is_run = true,
                        .run_cap = cap,
                };
                list_append(&ep->queue, &run->link);
        }
        uint8_t *p = run->inline_payload + run->run_used;
        memcpy(p, &size, 4);
        if (size > 0)
                memcpy(p + 4, payload, size);
        run->run_used += 4 + size;
        run->run_n++;
        return 0;
}

static int send_remote(Endpoint *ep, ipcmux_message *m) {
        Conn *c = ep->conn;
        _cleanup_(ipcmux_shmem_unrefp) ipcmux_shmem *spill = NULL;
        ipcmux_shmem *regions_buf[17], **regions = m->shmems;
        _cleanup_free_ ipcmux_shmem **regions_heap = NULL;
        WireSenderRef refs_buf[8], *refs = refs_buf;
        _cleanup_free_ WireSenderRef *refs_heap = NULL;
        FrameView v;
        int r;

        if (c->error < 0)
                return -ECONNRESET;
        if (ep->closed)
                return -EPIPE;

        for (size_t i = 0; i < m->n_shmems; i++)
                if (!m->shmems[i])
                        return -ENXIO;
        for (size_t i = 0; i < m->n_fds; i++)
                if (m->fds[i] < 0)
                        return -ENXIO;
        if (m->n_fds > 0 || m->n_shmems > 0 || m->size > c->spill_threshold) {
                r = sd_bus_can_send(c->bus, SD_BUS_TYPE_UNIX_FD);
                if (r <= 0)
                        return -EOPNOTSUPP;
        }

        v = (FrameView) {
                .payload = m->data,
                .payload_size = m->size,
                .regions = m->shmems,
                .n_regions = (unsigned) m->n_shmems,
                .fds = m->fds,
                .n_fds = (unsigned) m->n_fds,
                .n_senders = (unsigned) m->n_senders,
        };

        if (m->n_shmems + m->n_fds + (m->size > c->spill_threshold) > WIRE_MAX_FDS_PER_MESSAGE)
                return -EMSGSIZE;       /* more fds than any receiver stages */

        if (m->size > c->spill_threshold) {
                /* Too big to travel inline: move the bytes into a sealed memfd,
                 * carried as region 0 ahead of the user's regions. */
                r = shmem_new_uninit(m->size, &spill);      /* memcpy overwrites it all */
                if (r < 0)
                        return r;
                memcpy(spill->data, m->data, m->size);
                if (m->n_shmems + 1 > ELEMENTSOF(regions_buf)) {
                        regions = regions_heap = malloc((m->n_shmems + 1) * sizeof(ipcmux_shmem *));
                        if (!regions)
                                return -ENOMEM;
                } else
                        regions = regions_buf;
                regions[0] = spill;
                for (size_t i = 0; i < m->n_shmems; i++)
                        regions[i + 1] = m->shmems[i];
                v.flags |= WIRE_FRAME_SPILLED;
                v.payload = NULL;
                v.payload_size = 0;
                v.regions = regions;
                v.n_regions = (unsigned) m->n_shmems + 1;
        }

        if (m->n_senders > ELEMENTSOF(refs_buf)) {
                refs = refs_heap = calloc(m->n_senders, sizeof(WireSenderRef));
                if (!refs)
                        return -ENOMEM;
        }
        r = prepare_transfers(ep, m, refs);
        if (r < 0)
                return r;
        v.senders = refs;
        return send_view(ep, &v, frame_view_cost(&v));
}

/* Send (or queue) the frame @v of @cost; its senders are registered in flight. */
static int send_view(Endpoint *ep, const FrameView *v, uint64_t cost) {
        Conn *c = ep->conn;
        int r;

        /* Direct path: nothing queued ahead, credit left, the socket takes it now. */
        if (list_is_empty(&ep->queue) && list_is_empty(&ep->resend) && list_is_empty(&c->ctrlq) &&
            frame_view_fds(v) <= WIRE_MAX_FDS_PER_CALL &&
            window_allows(ep, cost)) {
                uint64_t n = 0;

                if (sd_bus_get_n_queued_write(c->bus, &n) >= 0 && n == 0) {
                        r = frame_view_is_plain(v) ? emit_packed(ep, v, 1, cost) : emit_frames(ep, v, 1, cost);
                        if (r >= 0) {
                                account_sent(ep, 1, cost);
                                return 0;
                        }
                        if (IN_SET(r, -ECONNRESET, -ENOTCONN)) {
                                conn_fail(c, r);
                                return -ECONNRESET;
                        }
                        return r;
                }
        }

        /* The optional bound on the backlog: refuse rather than grow. */
        if ((ep->max_queued_msgs && ep->n_queued + 1 > ep->max_queued_msgs) ||
            (ep->max_queued_bytes && ep->n_queued > 0 && ep->queued_bytes + cost > ep->max_queued_bytes)) {
                /* The copies just registered in flight will never leave. */
                for (unsigned i = 0; i < v->n_senders; i++)
                        sender_decline_ref(c, c->unique_name, &v->senders[i]);
                /* Stalled, and not credited lately: sender_poll_bus() reads
                 * the socket every SEND_DISPATCH_INTERVAL_USEC for it. */
                if (ep->max_queued_msgs && ep->n_queued >= ep->max_queued_msgs &&
                    !list_is_linked(&ep->ready_link) &&
                    now_coarse_usec() - ep->last_credit_usec >= SEND_DISPATCH_INTERVAL_USEC)
                        __atomic_store_n(&ep->full, true, __ATOMIC_RELAXED);
                return -ENOBUFS;
        }

        /* Frames already waiting and off the ready list: the endpoint is
         * stalled (credit, the cap, a refusal) and this one can only wait
         * behind them; nothing to flush (what wakes the endpoint up
         * flushes). */
        bool stalled = ep->n_queued > 0 && !list_is_linked(&ep->ready_link);
        if (v->payload_size <= OUT_RUN_RECORD_MAX && frame_view_is_plain(v)) {
                r = run_append(ep, v->payload, (uint32_t) v->payload_size);
                if (r < 0)
                        return r;
        } else {
                OutFrame *f;

                r = out_frame_new(v, &f);
                if (r < 0)
                        return r;
                f->cost = cost;
                list_append(&ep->queue, &f->link);
        }
        ep->n_queued++;
        ep->queued_bytes += cost;
        if (stalled)
                return 0;
        endpoint_mark_ready(ep);
        return conn_flush(c);
}

static int send_local(Endpoint *ep, ipcmux_message *m) {
        _cleanup_(ipcmux_message_unrefp) ipcmux_message *copy = NULL;
        int r;

        if (ep->closed || !ep->rx)
                return -EPIPE;
        r = message_new(&copy);
        if (r < 0)
                return r;
        if (m->size > 0) {
                copy->data = memdup(m->data, m->size);
                if (!copy->data)
                        return -ENOMEM;
                copy->size = copy->allocated = m->size;
        }
        for (size_t i = 0; i < m->n_shmems; i++) {
                _cleanup_(ipcmux_shmem_unrefp) ipcmux_shmem *view = NULL;

                if (!m->shmems[i])
                        return -ENXIO;
                /* Read-only, as from another process (a view, not a copy). */
                r = shmem_new_view(m->shmems[i], &view);
                if (r < 0)
                        return r;
                r = message_push_shmem(copy, view);
                if (r < 0)
                        return r;
        }
        for (size_t i = 0; i < m->n_fds; i++) {
                int fd;

                if (m->fds[i] < 0)
                        return -ENXIO;
                fd = fcntl(m->fds[i], F_DUPFD_CLOEXEC, 3);
                if (fd < 0)
                        return negative_errno();
                r = message_push_fd(copy, fd);
                if (r < 0) {
                        safe_close(fd);
                        return r;
                }
        }
        for (size_t i = 0; i < m->n_senders; i++) {
                /* In one process a copy is just another reference. */
                if (!m->senders[i])
                        return -ENXIO;
                r = message_push_sender(copy, ipcmux_sender_ref(m->senders[i]));
                if (r < 0) {
                        ipcmux_sender_unref(m->senders[i]);
                        return r;
                }
        }
        copy->wire_size = m->size;
        receiver_enqueue(ep->rx, TAKE_PTR(copy));
        return 0;
}

/* Learn about Closed and peers' deaths even if the application only ever
 * sends (and move what waits for the socket). */
static void sender_poll_bus(Endpoint *ep) {
        Conn *c = ep->conn;

        if (!c->processing) {
                uint64_t now = now_coarse_usec();
                /* A subchannel nobody has credited for a while (nobody
                 * reads it) gains nothing from frequent reads. */
                bool waiting = !list_is_empty(&ep->queue) &&
                        (list_is_linked(&ep->ready_link) || now - ep->last_credit_usec < SEND_DISPATCH_INTERVAL_USEC);

                if (now - c->last_dispatch_usec > (waiting ? SEND_BACKLOG_INTERVAL_USEC : SEND_DISPATCH_INTERVAL_USEC))
                        (void) conn_dispatch_pending(c);
        }
}

static int sender_send_locked(ipcmux_sender *s, ipcmux_message *m) {
        Endpoint *ep = s->ep;

        if (ep->local)
                return send_local(ep, m);
        sender_poll_bus(ep);
        return send_remote(ep, m);
}

/* Bytes alone, to another process: no message to build or check. */
static int sender_send_plain_locked(ipcmux_sender *s, const void *data, size_t size) {
        Endpoint *ep = s->ep;
        Conn *c = ep->conn;
        FrameView v = {
                .payload = data,
                .payload_size = size,
        };

        sender_poll_bus(ep);
        if (c->error < 0)
                return -ECONNRESET;
        if (ep->closed)
                return -EPIPE;
        return send_view(ep, &v, size);
}

/*
 * No reference on the connection around a send: the caller's sender holds
 * its endpoint and the endpoint the connection, and nothing a send does
 * drops either.  The two atomic operations were the sender's most sampled
 * instructions (perf, 2M sends to a never-read subchannel: 10% of all CPU).
 */
_public_ int ipcmux_sender_send(ipcmux_sender *s, ipcmux_message *m) {
        Conn *c;
        int r;

        assert_return(s, -EINVAL);
        assert_return(m, -EINVAL);

        c = s->ep->conn;
        r = conn_enter(c);
        if (r >= 0) {
                r = sender_send_locked(s, m);
                conn_unlock(c);
        }
        return r;
}

_public_ int ipcmux_sender_send_bytes(ipcmux_sender *s, const void *data, size_t size) {
        Conn *c;
        int r;

        assert_return(s, -EINVAL);
        assert_return(data || size == 0, -EINVAL);

        /* Bounded and full (the last send was refused while the endpoint
         * was stalled and not credited lately; nothing left, no credit came
         * since), and the socket was read recently enough that
         * sender_poll_bus() would not read it now: what the locked path
         * would do is refuse, so refuse without the lock.  A never-read
         * subchannel with a bounded backlog is refused on every send; the
         * lock was most of that cost. */
        c = s->ep->conn;
        if (__atomic_load_n(&s->ep->full, __ATOMIC_RELAXED) && !conn_forked(c) &&
            now_coarse_usec() - __atomic_load_n(&c->last_dispatch_usec, __ATOMIC_RELAXED) <= SEND_DISPATCH_INTERVAL_USEC)
                return -ENOBUFS;

        /* No reference on c: see ipcmux_sender_send(). */
        r = conn_enter(c);
        if (r >= 0) {
                if (!s->ep->local && size <= c->spill_threshold)
                        r = sender_send_plain_locked(s, data, size);
                else {
                        /* A stack message: send copies what it needs, nothing to free. */
                        ipcmux_message m = {
                                .n_ref = 1,
                                .data = (uint8_t *) data,
                                .size = size,
                        };

                        list_init(&m.qlink);
                        r = sender_send_locked(s, &m);
                }
                conn_unlock(c);
        }
        return r;
}

/* ---- sender objects ------------------------------------------------------ */

static ipcmux_sender *sender_wrap(Endpoint *ep) {
        ipcmux_sender *s = calloc(1, sizeof(*s));

        if (!s)
                return NULL;
        s->n_ref = 1;
        s->ep = endpoint_ref(ep);
        ep->n_senders++;
        ep->releasing = false;  /* held again (a copy came back in a message) */
        return s;
}

int sender_new(Endpoint *ep, ipcmux_sender **ret) {
        ipcmux_sender *s = sender_wrap(ep);

        if (!s)
                return -ENOMEM;
        if (ep->local && ep->rx)
                lifecycle_hold_local(ep->rx->lc);
        *ret = s;
        return 0;
}

static int closed_sender(Conn *c, ipcmux_sender **ret) {
        Endpoint *ep;
        int r;

        r = endpoint_new_local(c, NULL, &ep);
        if (r < 0)
                return r;
        *ret = sender_wrap(ep);
        endpoint_unref(ep);
        return *ret ? 0 : -ENOMEM;
}

static bool is_own_name(Conn *c, const char *name) {
        return name && c->unique_name && strcmp(name, c->unique_name) == 0;
}

int sender_new_received(Conn *c, const char *from, const WireSenderRef *ref, ipcmux_sender **ret) {
        const char *from_norm = is_own_name(c, from) ? NULL : from;
        sd_bus_message *claim = NULL;
        Endpoint *ep;
        int r;

        if (is_own_name(c, ref->owner)) {
                uint8_t id[PATH_ID_BYTES];
                ipcmux_receiver *rx = NULL;

                if (receiver_path_get_id(ref->path, id) >= 0)
                        rx = hashmap_get(&c->receivers, id);
                if (!rx || rx->dropped || strcmp(rx->path, ref->path) != 0 || !rx->local_ep ||
                    lifecycle_claim(rx->lc, NULL, from_norm, ref->token) < 0)
                        return closed_sender(c, ret);
                /* The claim gave us the local hold this object stands for. */
                *ret = sender_wrap(rx->local_ep);
                if (!*ret) {
                        (void) lifecycle_release_local(rx->lc);
                        return -ENOMEM;
                }
                return 0;
        }

        r = endpoint_get_remote(c, ref->owner, ref->path, &ep);
        if (r < 0)
                return r == -ENOMEM ? r : closed_sender(c, ret);
        if (!ep->closed) {
                r = conn_new_call(c, ref->owner, ref->path, IPCMUX_INTERFACE_SUBCHANNEL, "Claim", &claim);
                if (r >= 0)
                        r = sd_bus_message_append(claim, "st", from, ref->token);
                if (r >= 0) {
                        r = conn_send_ctrl(c, claim);
                        claim = NULL;
                }
                sd_bus_message_unref(claim);
                if (r < 0)
                        ep->closed = true;
        }
        *ret = sender_wrap(ep);
        endpoint_unref(ep);
        return *ret ? 0 : -ENOMEM;
}

void sender_decline_ref(Conn *c, const char *from, const WireSenderRef *ref) {
        const char *from_norm = is_own_name(c, from) ? NULL : from;

        if (is_own_name(c, ref->owner)) {
                uint8_t id[PATH_ID_BYTES];
                ipcmux_receiver *rx = NULL;

                if (receiver_path_get_id(ref->path, id) >= 0)
                        rx = hashmap_get(&c->receivers, id);
                if (rx && !rx->dropped) {
                        (void) lifecycle_decline(rx->lc, NULL, from_norm, ref->token);
                        receiver_changed(rx);
                }
                return;
        }
        if (!from_norm) {
                /* Our own copy: withdraw it at the owner. */
                decline_own_copy(c, ref);
                return;
        }
        sd_bus_message *m = NULL;
        if (conn_new_call(c, ref->owner, ref->path, IPCMUX_INTERFACE_SUBCHANNEL, "Decline", &m) < 0)
                return;
        if (sd_bus_message_append(m, "st", from, ref->token) < 0) {
                sd_bus_message_unref(m);
                return;
        }
        (void) conn_send_ctrl(c, m);
}

_public_ ipcmux_sender *ipcmux_sender_ref(ipcmux_sender *s) {
        if (s)
                __atomic_add_fetch(&s->n_ref, 1, __ATOMIC_RELAXED);
        return s;
}

/* Changes whenever the receiving process credits or acknowledges anything
 * of ours, or a frame of @ep leaves. */
static uint64_t endpoint_progress(Endpoint *ep) {
        Peer *p = ep->peer;

        return ep->credit_msgs + ep->sent_msgs + (p ? p->tx_acked + p->tx_calls_acked : 0);
}

static bool endpoint_drained(void *userdata) {
        Endpoint *ep = userdata;
        Conn *c = ep->conn;
        uint64_t n = 0;

        if (ep->closed || c->error < 0)
                return true;
        return list_is_empty(&ep->queue) && list_is_empty(&ep->resend) && ep->pending_releases == 0 &&
                list_is_empty(&c->ctrlq) &&
                sd_bus_get_n_queued_write(c->bus, &n) >= 0 && n == 0;
}

/*
 * The receiver never granted credit for what is queued: give up on it, but
 * not silently.  An empty Send whose first_seq skips the dropped frames
 * makes the receiver count them in its Lost property; the copies inside are
 * withdrawn; the sender's loss is logged and counted (ipcmux_sender_get_lost).
 */
static void endpoint_abandon_queue(Endpoint *ep) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        Conn *c = ep->conn;
        uint64_t n = ep->n_queued;
        OutFrame *f, *tmp;

        list_for_each_entry_safe(f, tmp, &ep->queue, link) {
                list_unlink(&f->link);
                cancel_frame_transfers(c, f);
                out_frame_free(f);
        }
        ep->n_queued = 0;
        ep->queued_bytes = 0;
        __atomic_store_n(&ep->full, false, __ATOMIC_RELAXED);
        ep->lost += n;
        ep->next_seq += n;
        log_warning("ipcmux: %s%s granted no credit: %" PRIu64 " messages lost", ep->dest, ep->path, n);
        if (conn_new_call(c, ep->dest, ep->path, IPCMUX_INTERFACE_SUBCHANNEL, "Send", &m) >= 0 &&
            wire_open_frames(m, ep->next_seq) >= 0 && wire_close_frames(m, NULL, 0) >= 0 &&
            sentlog_send(c, m, ep, 0) >= 0)
                ep->last_emit = ++c->emitted;
        if (ep->pending_releases > 0) {
                (void) send_release(ep, ep->pending_releases);
                ep->pending_releases = 0;
        }
        endpoint_unmark_ready(ep);
}

/*
 * Wait until everything @ep sent is in the broker and no refusal of it can
 * still come (a round trip to the broker after the last call, again while
 * refused calls went again meanwhile).  Gives up on what is still queued
 * after RELEASE_FLUSH_TIMEOUT_USEC without progress, loudly.  Returns < 0
 * when the broker did not take or confirm our calls in that time (it does
 * not read us, or the round trip timed out).
 */
static int endpoint_settle(Endpoint *ep) {
        Conn *c = ep->conn;
        uint64_t deadline = now_usec() + RELEASE_FLUSH_TIMEOUT_USEC;
        uint64_t progress = endpoint_progress(ep);

        for (;;) {
                int r = conn_wait(c, endpoint_drained, ep, deadline);

                if (r == -ETIMEDOUT && endpoint_progress(ep) != progress) {
                        /* Slow, not stuck: wait on. */
                        progress = endpoint_progress(ep);
                        deadline = now_usec() + RELEASE_FLUSH_TIMEOUT_USEC;
                        continue;
                }
                if (r == -ETIMEDOUT && ep->n_senders == 1 &&
                    (!list_is_empty(&ep->queue) || !list_is_empty(&ep->resend))) {
                        /* Refused calls not sent again are lost too: the
                         * receiver counts the hole the abandon skips. */
                        endpoint_drop_resend(ep);
                        endpoint_abandon_queue(ep);
                        return 0;
                }
                /* In the socket is not enough: a broker may drop what it has
                 * not read when we exit, or refuse it (then it goes again,
                 * and we wait again).  One round trip to it (skipped when
                 * nothing was sent since the last); what went again while it
                 * ran needs another. */
                if (r < 0)
                        return r;
                if (ep->last_emit <= c->synced || ep->closed)
                        return 0;
                r = conn_sync_bus(c, deadline);
                if (r < 0)
                        return r;
        }
}

static void endpoint_release_one(Endpoint *ep) {
        if (list_is_empty(&ep->queue)) {
                if (send_release(ep, 1) < 0)
                        log_debug("ipcmux: release to %s%s failed", ep->dest, ep->path);
        } else {
                ep->pending_releases++;
                endpoint_mark_ready(ep);
        }
        (void) conn_flush(ep->conn);
}

static void sender_destroy_locked(ipcmux_sender *s) {
        Endpoint *ep = s->ep;
        Conn *c = ep->conn;

        if (ep->local) {
                if (ep->rx && !ep->closed) {
                        (void) lifecycle_release_local(ep->rx->lc);
                        receiver_changed(ep->rx);
                }
        } else if (!ep->closed && c->error >= 0) {
                /* What was sent, then the release, must reach the bus before
                 * the application may exit; skipped inside callbacks. */
                bool wait = !c->processing && c->depth == 1;

                if (ep->n_senders == 1) {
                        ep->releasing = true;
                        if (list_is_linked(&ep->cap_link))
                                endpoint_uncap(ep);     /* held by the lowered cap: look again */
                }

                if (wait && ep->n_senders == 1) {
                        /* Our last hold: the release goes only once every
                         * frame before it is known to be in the broker.  A
                         * release carries no sequence number: one that
                         * overtook a refused call (sent again later) would
                         * let the receiver report the end before those
                         * frames arrive, and then refuse them. */
                        (void) conn_flush(c);
                        /* A broker that did not answer in time will not
                         * answer for the release either: one wait, not two. */
                        wait = endpoint_settle(ep) >= 0;
                        if (ep->closed || c->error < 0)
                                goto done;
                }
                endpoint_release_one(ep);
                if (wait)
                        (void) endpoint_settle(ep);
        }
done:
        ep->n_senders--;
        endpoint_unref(ep);
        free(s);
}

_public_ ipcmux_sender *ipcmux_sender_unref(ipcmux_sender *s) {
        Conn *c;

        if (!s || __atomic_sub_fetch(&s->n_ref, 1, __ATOMIC_ACQ_REL) > 0)
                return NULL;

        c = conn_ref(s->ep->conn);
        if (conn_enter(c) < 0) {
                conn_unref(c);
                return NULL;    /* forked child: the parent's state, leave it */
        }
        sender_destroy_locked(s);
        conn_unlock(c);
        conn_unref(c);
        return NULL;
}

_public_ const char *ipcmux_sender_get_path(ipcmux_sender *s) {
        return s ? s->ep->path : NULL;
}

_public_ const char *ipcmux_sender_get_destination(ipcmux_sender *s) {
        if (!s)
                return NULL;
        return s->ep->local ? s->ep->conn->unique_name : s->ep->dest;
}

/* ---- backlog ------------------------------------------------------------- */

_public_ int ipcmux_sender_get_queued(ipcmux_sender *s, uint64_t *ret_msgs, uint64_t *ret_bytes) {
        Conn *c;
        int r;

        assert_return(s, -EINVAL);
        c = s->ep->conn;
        r = conn_enter(c);
        if (r < 0)
                return r;
        if (ret_msgs)
                *ret_msgs = s->ep->n_queued;
        if (ret_bytes)
                *ret_bytes = s->ep->queued_bytes;
        conn_unlock(c);
        return 0;
}

_public_ int ipcmux_sender_set_max_queued(ipcmux_sender *s, uint64_t max_msgs, uint64_t max_bytes) {
        Conn *c;
        int r;

        assert_return(s, -EINVAL);
        c = s->ep->conn;
        r = conn_enter(c);
        if (r < 0)
                return r;
        s->ep->max_queued_msgs = max_msgs;
        s->ep->max_queued_bytes = max_bytes;
        __atomic_store_n(&s->ep->full, false, __ATOMIC_RELAXED);
        conn_unlock(c);
        return 0;
}

_public_ uint64_t ipcmux_sender_get_lost(ipcmux_sender *s) {
        return s ? s->ep->lost : 0;
}
