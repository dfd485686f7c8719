/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * ipcmux_receiver (see receiver.h): the org.ipcmux.Subchannel1 object.
 *
 * Every call is checked against the Lifecycle with the bus-stamped sender:
 * a process that holds no sender for this subchannel (and has none in
 * flight to it) gets AccessDenied and changes nothing.  A malformed call is
 * refused as a whole (error reply, its fds closed), never half-delivered.
 */

#include <assert.h>
#include <fcntl.h>
#include <sys/resource.h>

#include "channel.h"
#include "endpoint.h"
#include "log.h"
#include "macro.h"
#include "message.h"
#include "peer.h"
#include "receiver.h"
#include "shmem.h"

/* Per peer and receiver: fds staged ahead of a Send. */
#define MAX_STAGED_FDS WIRE_MAX_FDS_PER_MESSAGE
/* Per peer: region bytes (declared sizes) queued and not yet received by the
 * application; a sparse 64 GiB memfd must not be mapped on a peer's say-so. */
#define MAX_PEER_REGION_BYTES (UINT64_C(8) << 30)

struct RxPeer {
        unsigned n_ref;                 /* the map + queued messages from this peer */
        char *name;
        uint64_t next_seq;
        int *staged;
        size_t n_staged, allocated_staged;
        size_t fds_held;                /* fds in queued messages from this peer */
        uint64_t region_bytes_held;

        /* Credit: what the application consumed from this peer (running
         * totals, in frames and frame cost) and what we last reported. */
        uint64_t consumed_msgs, consumed_bytes;
        uint64_t credited_msgs, credited_bytes;
        size_t n_queued;                /* messages from this peer still queued */
        bool want_credit;               /* the sender is stalled: credit when drained */
};

static RxPeer *rxpeer_unref(RxPeer *p) {
        if (p && --p->n_ref == 0) {
                for (size_t i = 0; i < p->n_staged; i++)
                        safe_close(p->staged[i]);
                free(p->staged);
                free(p->name);
                free(p);
        }
        return NULL;
}

static RxPeer *rxpeer_get(ipcmux_receiver *rx, const char *name) {
        RxPeer *p = hashmap_get(&rx->rxpeers, name);

        if (p)
                return p;
        p = calloc(1, sizeof(*p));
        if (!p)
                return NULL;
        p->n_ref = 1;
        p->name = strdup(name);
        if (!p->name || hashmap_put(&rx->rxpeers, p->name, p) < 0) {
                free(p->name);
                free(p);
                return NULL;
        }
        return p;
}

static void rxpeer_drop_staged(RxPeer *p) {
        for (size_t i = 0; i < p->n_staged; i++)
                safe_close(p->staged[i]);
        p->n_staged = 0;
}

/* Budget of fds that queued messages may hold, per peer (a quarter of
 * RLIMIT_NOFILE, read when the connection is made): peers must never push
 * us into EMFILE, which makes sd-bus drop the whole connection. */
size_t fd_budget(void) {
        struct rlimit rl;

        if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY)
                return 4096;
        return MAX((size_t) rl.rlim_cur / 4, (size_t) 16);
}

/* ---- life cycle ---------------------------------------------------------- */

int receiver_new(ipcmux_channel *ch, ipcmux_receiver **ret) {
        Conn *c = ch->conn;
        ipcmux_receiver *rx;
        char hex[PATH_ID_HEX + 1];
        int r;

        rx = calloc(1, sizeof(*rx));
        if (!rx)
                return -ENOMEM;
        rx->n_ref = 1;
        list_init(&rx->queue);
        list_init(&rx->handled_link);
        list_init(&rx->ready_link);
        hashmap_init(&rx->rxpeers, &hash_ops_string);
        /* 64 random bits: a clash with a live receiver is unlikely, not
         * impossible (the map would refuse it). */
        do
                random_bytes(rx->id, sizeof(rx->id));
        while (hashmap_get(&c->receivers, rx->id));
        hex_encode(rx->id, sizeof(rx->id), hex);
        if (asprintf(&rx->path, "%s/%s", ch->prefix, hex) < 0) {
                rx->path = NULL;
                r = -ENOMEM;
                goto fail;
        }
        r = lifecycle_new(&rx->lc);
        if (r < 0)
                goto fail;
        r = endpoint_new_local(c, rx, &rx->local_ep);
        if (r < 0)
                goto fail;
        r = hashmap_put(&c->receivers, rx->id, rx);
        if (r < 0)
                goto fail;
        rx->conn = conn_ref(c);
        rx->channel = ipcmux_channel_ref(ch);
        ch->n_receivers++;
        *ret = rx;
        return 0;
fail:
        if (rx->local_ep) {
                rx->local_ep->rx = NULL;
                endpoint_unref(rx->local_ep);
        }
        lifecycle_free(rx->lc);
        hashmap_deinit(&rx->rxpeers);
        free(rx->path);
        free(rx);
        return r;
}

static void tell_closed(const char *peer, void *userdata) {
        ipcmux_receiver *rx = userdata;
        sd_bus_message *m = NULL;

        if (conn_new_call(rx->conn, peer, IPCMUX_ROOT_PATH, IPCMUX_INTERFACE_PEER, "Closed", &m) < 0)
                return;
        if (sd_bus_message_append_basic(m, 'o', rx->path) < 0) {
                sd_bus_message_unref(m);
                return;
        }
        (void) conn_send_ctrl(rx->conn, m);
}

static void message_release_accounting(ipcmux_receiver *rx, ipcmux_message *m, bool consumed);

/*
 * The application let go of the receiver: the object disappears from the
 * bus, every holder is told, and what was never received is released.  The
 * memory stays while a handler call still runs on it (internal refs).
 */
static void receiver_drop_locked(ipcmux_receiver *rx) {
        Conn *c = rx->conn;
        ipcmux_message *m, *tmp;
        RxPeer *p;
        size_t i = 0;
        void *v;

        rx->dropped = true;
        rx->handler = NULL;
        if (list_is_linked(&rx->handled_link))
                list_unlink(&rx->handled_link);
        if (list_is_linked(&rx->ready_link))
                list_unlink(&rx->ready_link);
        hashmap_remove(&c->receivers, rx->id);
        rx->channel->n_receivers--;

        /* Every process that holds (or is being sent) a sender must learn now. */
        if (c->error >= 0)
                lifecycle_foreach_peer(rx->lc, tell_closed, rx);

        if (rx->local_ep) {
                rx->local_ep->closed = true;
                rx->local_ep->rx = NULL;
                rx->local_ep = endpoint_unref(rx->local_ep);
        }
        lifecycle_clear(rx->lc);

        /* Discard what was never received: attached senders are released
         * (their holders see Release), regions and fds closed. */
        list_for_each_entry_safe(m, tmp, &rx->queue, qlink) {
                list_unlink(&m->qlink);
                message_release_accounting(rx, m, false);
                ipcmux_message_unref(m);
        }
        rx->n_queued = 0;
        rx->queued_bytes = 0;

        while (hashmap_iterate(&rx->rxpeers, &i, &v)) {
                p = v;
                rxpeer_drop_staged(p);
                rxpeer_unref(p);
        }
        hashmap_deinit(&rx->rxpeers);
        conn_notify(c);
}

ipcmux_receiver *receiver_ref(ipcmux_receiver *rx) {
        rx->n_ref++;
        return rx;
}

void receiver_unref_locked(ipcmux_receiver *rx) {
        Conn *c = rx->conn;

        if (--rx->n_ref > 0)
                return;
        assert(rx->dropped);
        lifecycle_free(rx->lc);
        ipcmux_channel_unref(rx->channel);
        free(rx->path);
        free(rx);
        conn_unref(c);  /* the receiver's reference */
}

_public_ ipcmux_receiver *ipcmux_receiver_unref(ipcmux_receiver *rx) {
        Conn *c;

        if (!rx)
                return NULL;
        c = conn_ref(rx->conn);
        if (conn_enter(c) < 0) {
                conn_unref(c);
                return NULL;
        }
        if (!rx->dropped) {
                receiver_drop_locked(rx);
                (void) conn_flush(c);
                receiver_unref_locked(rx);
        }
        conn_unlock(c);
        conn_unref(c);
        return NULL;
}

/* ---- queue --------------------------------------------------------------- */

/* Report consumption to the sending process (Peer1.Credit, running totals). */
static void rxpeer_credit(ipcmux_receiver *rx, RxPeer *p) {
        sd_bus_message *m = NULL;

        if (p->consumed_msgs == p->credited_msgs && p->consumed_bytes == p->credited_bytes)
                return;
        if (conn_new_call(rx->conn, p->name, IPCMUX_ROOT_PATH, IPCMUX_INTERFACE_PEER, "Credit", &m) < 0)
                return;
        if (sd_bus_message_append(m, "ott", rx->path, p->consumed_msgs, p->consumed_bytes) < 0) {
                sd_bus_message_unref(m);
                return;
        }
        p->credited_msgs = p->consumed_msgs;
        p->credited_bytes = p->consumed_bytes;
        (void) conn_send_ctrl(rx->conn, m);
}

/* Credit a quarter window at a time, and at once when the sender asked for
 * it (WantCredit: it is stalled) and nothing of its is left queued. */
static void rxpeer_consumed(ipcmux_receiver *rx, RxPeer *p, uint64_t cost) {
        p->consumed_msgs++;
        p->consumed_bytes += cost;
        if (p->consumed_msgs - p->credited_msgs >= WINDOW_MSGS / 4 ||
            p->consumed_bytes - p->credited_bytes >= WINDOW_BYTES / 4 ||
            (p->want_credit && p->n_queued == 0)) {
                p->want_credit = false;
                rxpeer_credit(rx, p);
        }
}

/* The message leaves the receiver: its fds and regions stop counting
 * against its peer and, when the application took it, credit flows back. */
static void message_release_accounting(ipcmux_receiver *rx, ipcmux_message *m, bool consumed) {
        RxPeer *p = m->accounted_peer;

        if (!p)
                return;
        p->fds_held -= m->accounted_fds;
        p->region_bytes_held -= m->accounted_region_bytes;
        p->n_queued--;
        if (consumed && !rx->dropped && rx->conn->error >= 0)
                rxpeer_consumed(rx, p, m->wire_size);
        m->accounted_peer = rxpeer_unref(p);
}

void receiver_enqueue(ipcmux_receiver *rx, ipcmux_message *m) {
        list_append(&rx->queue, &m->qlink);
        rx->n_queued++;
        rx->queued_bytes += m->size;
        rx->n_received++;
        receiver_changed(rx);
}

static bool handler_due(ipcmux_receiver *rx) {
        return rx->handler && !rx->dropped &&
                (rx->n_queued > 0 || (!rx->eof_delivered && !lifecycle_is_connected(rx->lc)));
}

void receiver_changed(ipcmux_receiver *rx) {
        Conn *c = rx->conn;

        if (handler_due(rx) && !list_is_linked(&rx->ready_link)) {
                list_append(&c->handler_ready, &rx->ready_link);
                conn_wake(c);
                return;
        }
        conn_notify(c);
}

void receivers_changed_all(Conn *c) {
        ipcmux_receiver *rx;

        list_for_each_entry(rx, &c->handled, handled_link)
                if (handler_due(rx) && !list_is_linked(&rx->ready_link))
                        list_append(&c->handler_ready, &rx->ready_link);
        if (!list_is_empty(&c->handler_ready))
                conn_wake(c);
        else
                conn_notify(c);
}

static ipcmux_message *receiver_pop(ipcmux_receiver *rx) {
        ipcmux_message *m = list_first_entry(&rx->queue, ipcmux_message, qlink);

        if (!m)
                return NULL;
        list_unlink(&m->qlink);
        rx->n_queued--;
        rx->queued_bytes -= m->size;
        message_release_accounting(rx, m, true);
        return m;
}

bool receiver_is_disconnected(ipcmux_receiver *rx) {
        return rx->n_queued == 0 && !lifecycle_is_connected(rx->lc);
}

static bool receiver_ready(void *userdata) {
        ipcmux_receiver *rx = userdata;

        return rx->n_queued > 0 || !lifecycle_is_connected(rx->lc);
}

_public_ int ipcmux_receiver_try_recv_timeout(ipcmux_receiver *rx, uint64_t timeout_usec, ipcmux_message **ret) {
        uint64_t deadline;
        Conn *c;
        int r;

        assert_return(rx, -EINVAL);
        assert_return(ret, -EINVAL);

        c = rx->conn;
        r = conn_enter(c);
        if (r < 0)
                return r;
        if (rx->handler || rx->dropped) {
                /* Messages go to the handler; a dropped receiver is a use after free. */
                conn_unlock(c);
                return -EBUSY;
        }

        if (timeout_usec == UINT64_MAX)
                deadline = UINT64_MAX;
        else {
                uint64_t now = now_usec();
                deadline = timeout_usec > UINT64_MAX - now ? UINT64_MAX - 1 : now + timeout_usec;
        }

        if (!receiver_ready(rx))
                r = conn_wait(c, receiver_ready, rx, deadline);
        if (rx->n_queued > 0) {
                *ret = receiver_pop(rx);
                r = 0;
        } else if (!lifecycle_is_connected(rx->lc))
                r = -EPIPE;
        conn_unlock(c);
        return r;
}

_public_ int ipcmux_receiver_recv(ipcmux_receiver *rx, ipcmux_message **ret) {
        return ipcmux_receiver_try_recv_timeout(rx, UINT64_MAX, ret);
}

_public_ int ipcmux_receiver_try_recv(ipcmux_receiver *rx, ipcmux_message **ret) {
        int r = ipcmux_receiver_try_recv_timeout(rx, 0, ret);

        return r == -ETIMEDOUT ? -EAGAIN : r;
}

_public_ const char *ipcmux_receiver_get_path(ipcmux_receiver *rx) {
        return rx ? rx->path : NULL;
}

/* Handler calls delivered per receiver per round, so one busy subchannel
 * cannot starve the others. */
#define HANDLER_BUDGET 64

int receivers_run_handlers(Conn *c) {
        ipcmux_receiver *rx;
        int n = 0;

        /* Only at the top level of a public call (never inside sd-bus
         * callbacks), and one thread at a time keeps per-receiver order. */
        if (c->in_handlers || c->processing || c->depth != 1)
                return 0;
        c->in_handlers = true;
        while ((rx = list_first_entry(&c->handler_ready, ipcmux_receiver, ready_link))) {
                list_unlink(&rx->ready_link);
                receiver_ref(rx);
                for (unsigned k = 0; k < HANDLER_BUDGET && handler_due(rx); k++) {
                        ipcmux_receive_handler_t h = rx->handler;
                        void *userdata = rx->userdata;
                        ipcmux_message *m = NULL;
                        unsigned depth;
                        int error = 0;

                        if (rx->n_queued > 0)
                                m = receiver_pop(rx);
                        else {
                                rx->eof_delivered = true;
                                error = -EPIPE;
                        }
                        /* The handler runs without the lock: it may send,
                         * block, or drop anything, this receiver included. */
                        depth = conn_lock_suspend(c);
                        h(rx, m, error, userdata);
                        ipcmux_message_unref(m);
                        conn_lock_resume(c, depth);
                        n++;
                }
                if (handler_due(rx) && !list_is_linked(&rx->ready_link))
                        list_append(&c->handler_ready, &rx->ready_link);
                receiver_unref_locked(rx);
        }
        c->in_handlers = false;
        return n;
}

_public_ int ipcmux_receiver_set_handler(ipcmux_receiver *rx, ipcmux_receive_handler_t handler, void *userdata) {
        Conn *c;
        int r;

        assert_return(rx, -EINVAL);

        c = rx->conn;
        r = conn_enter(c);
        if (r < 0)
                return r;
        if (rx->dropped)
                r = -EPIPE;
        else {
                rx->handler = handler;
                rx->userdata = userdata;
                if (handler && !list_is_linked(&rx->handled_link))
                        list_append(&c->handled, &rx->handled_link);
                else if (!handler && list_is_linked(&rx->handled_link)) {
                        list_unlink(&rx->handled_link);
                        if (list_is_linked(&rx->ready_link))
                                list_unlink(&rx->ready_link);
                }
                /* Messages queued before the handler was set go to it first. */
                receiver_changed(rx);
        }
        conn_unlock(c);
        return r;
}

typedef struct SelectState {
        ipcmux_receiver *const *rxs;
        size_t n;
        size_t found;
} SelectState;

static bool select_ready(void *userdata) {
        SelectState *st = userdata;

        for (size_t i = 0; i < st->n; i++)
                if (receiver_ready(st->rxs[i])) {
                        st->found = i;
                        return true;
                }
        return false;
}

_public_ int ipcmux_receiver_select(ipcmux_receiver *const *rxs, size_t n, uint64_t timeout_usec, size_t *ret_index) {
        SelectState st = { .rxs = rxs, .n = n };
        uint64_t deadline;
        Conn *c;
        int r;

        assert_return(rxs || n == 0, -EINVAL);
        assert_return(n > 0, -EINVAL);
        assert_return(ret_index, -EINVAL);
        for (size_t i = 0; i < n; i++) {
                assert_return(rxs[i], -EINVAL);
                assert_return(rxs[i]->conn == rxs[0]->conn, -EXDEV);
        }

        c = rxs[0]->conn;
        r = conn_enter(c);
        if (r < 0)
                return r;
        for (size_t i = 0; i < n; i++)
                if (rxs[i]->dropped || rxs[i]->handler) {
                        conn_unlock(c);
                        return -EINVAL;
                }
        if (timeout_usec == UINT64_MAX)
                deadline = UINT64_MAX;
        else {
                uint64_t now = now_usec();
                deadline = timeout_usec > UINT64_MAX - now ? UINT64_MAX - 1 : now + timeout_usec;
        }
        r = conn_wait(c, select_ready, &st, deadline);
        if (r >= 0)
                *ret_index = st.found;
        conn_unlock(c);
        return r;
}

/* ---- peers --------------------------------------------------------------- */

void receiver_peer_gone(ipcmux_receiver *rx, const char *name, uint64_t gen) {
        RxPeer *p;

        lifecycle_peer_gone(rx->lc, name, gen);
        /* Carriers to ourselves were dispatched before the bus told us of the
         * death (same ordered stream): orphans addressed here are settled. */
        lifecycle_drop_orphans(rx->lc, NULL, gen);
        p = hashmap_remove(&rx->rxpeers, name);
        if (p) {
                rxpeer_drop_staged(p);
                rxpeer_unref(p);
        }
}

static void collect_peer(const char *peer, void *userdata) {
        char ***names = userdata;
        size_t n = 0;
        char **l;

        while (*names && (*names)[n])
                n++;
        l = realloc(*names, (n + 2) * sizeof(char *));
        if (!l)
                return;
        l[n] = strdup(peer);
        l[n + (l[n] ? 1 : 0)] = NULL;
        *names = l;
}

void receivers_fail_all(Conn *c) {
        size_t i = 0;
        void *v;

        /* The bus is gone: no remote hold can ever be resolved. */
        while (hashmap_iterate(&c->receivers, &i, &v)) {
                ipcmux_receiver *rx = v;
                char **names = NULL;

                lifecycle_foreach_peer(rx->lc, collect_peer, &names);
                for (size_t k = 0; names && names[k]; k++) {
                        receiver_peer_gone(rx, names[k], ++c->death_gen);
                        free(names[k]);
                }
                free(names);
                lifecycle_clear(rx->lc);
        }
        receivers_changed_all(c);
}

/* ---- org.ipcmux.Subchannel1 ---------------------------------------------- */

static int refuse(ipcmux_receiver *rx, sd_bus_error *error, const char *name, const char *text) {
        rx->n_refused++;
        log_debug("ipcmux: %s: refused a call: %s", rx->path, text);
        return sd_bus_error_set(error, name, text);
}

/* Handled: > 0 stops sd-bus from looking further (with 0 it walks the
 * remaining path prefixes and builds an error reply it then drops). */
static int reply_ok(sd_bus_message *m) {
        if (sd_bus_message_get_expect_reply(m)) {
                int r = sd_bus_reply_method_return(m, NULL);
                if (r < 0)
                        return r;
        }
        return 1;
}

/* Logical fd @idx of a call: staged ones first, then the call's own. */
static int call_fd(RxPeer *p, const WireCall *w, uint32_t idx) {
        return idx < p->n_staged ? p->staged[idx] : w->call_fds[idx - p->n_staged];
}

/* Build the messages of a validated call; nothing is enqueued on failure. */
static int build_messages(ipcmux_receiver *rx, sd_bus_message *call, const char *sender, RxPeer *p,
                          const WireCall *w, ipcmux_message **msgs) {
        Conn *c = rx->conn;
        size_t budget = c->fd_budget;
        size_t fds_total = p->fds_held;
        uint64_t region_total = p->region_bytes_held;
        int r;

        /* Regions and fds first (these can fail on peer input)... */
        for (size_t i = 0; i < w->n_frames; i++) {
                const WireFrame *f = &w->frames[i];
                ipcmux_message *m;
                unsigned first_region = 0;

                r = message_new(&msgs[i]);
                if (r < 0)
                        return r;
                m = msgs[i];
                r = message_set_sender(m, sender);
                if (r < 0)
                        return r;

                if (f->flags & WIRE_FRAME_SPILLED) {
                        const WireRegion *reg = &w->regions[f->regions_at];

                        if (reg->size > MAX_PEER_REGION_BYTES - MIN(region_total, MAX_PEER_REGION_BYTES))
                                return -EDQUOT;
                        r = shmem_new_from_peer_fd(call_fd(p, w, reg->fd_index), reg->size,
                                                   MAX_PEER_REGION_BYTES, &m->borrowed_region);
                        if (r < 0)
                                return r;
                        m->data = m->borrowed_region->data;
                        m->size = reg->size;
                        first_region = 1;
                } else if (f->payload_size > 0 && w->n_call_fds == 0) {
                        /* Zero copy: point into the bus message and keep it. */
                        m->borrowed_bus = sd_bus_message_ref(call);
                        m->borrowed_conn = conn_ref(c);
                        m->data = (uint8_t *) f->payload;
                        m->size = f->payload_size;
                } else if (f->payload_size > 0) {
                        /* Keeping a call that carries fds would keep every one
                         * of them open as long as any of its messages: copy. */
                        m->data = memdup(f->payload, f->payload_size);
                        if (!m->data)
                                return -ENOMEM;
                        m->size = m->allocated = f->payload_size;
                }
                m->wire_size = m->size;

                for (unsigned j = first_region; j < f->n_regions; j++) {
                        const WireRegion *reg = &w->regions[f->regions_at + j];
                        ipcmux_shmem *s;

                        if (reg->size > MAX_PEER_REGION_BYTES - MIN(region_total, MAX_PEER_REGION_BYTES))
                                return -EDQUOT;
                        r = shmem_new_from_peer_fd(call_fd(p, w, reg->fd_index), reg->size,
                                                   MAX_PEER_REGION_BYTES, &s);
                        if (r < 0)
                                return r;
                        r = message_push_shmem(m, s);
                        ipcmux_shmem_unref(s);
                        if (r < 0)
                                return r;
                        region_total += reg->size;
                        m->accounted_region_bytes += reg->size;
                        m->wire_size += reg->size;
                }
                if (f->flags & WIRE_FRAME_SPILLED) {
                        region_total += m->size;
                        m->accounted_region_bytes += m->size;
                }
                for (unsigned j = 0; j < f->n_fds; j++) {
                        int fd;

                        if (fds_total + 1 > budget)
                                return -EDQUOT;
                        fd = fcntl(call_fd(p, w, w->fds[f->fds_at + j]), F_DUPFD_CLOEXEC, 3);
                        if (fd < 0)
                                return negative_errno();
                        r = message_push_fd(m, fd);
                        if (r < 0) {
                                safe_close(fd);
                                return r;
                        }
                        fds_total++;
                        m->accounted_fds++;
                }
                /* Each region holds an fd too. */
                fds_total += m->n_shmems + (m->borrowed_region ? 1 : 0);
                m->accounted_fds += m->n_shmems + (m->borrowed_region ? 1 : 0);
                if (fds_total > budget)
                        return -EDQUOT;
        }

        /* ...then senders, which cannot fail on peer input (a bad reference
         * yields a closed sender): no claim is ever made for a refused call. */
        for (size_t i = 0; i < w->n_frames; i++) {
                const WireFrame *f = &w->frames[i];

                for (unsigned j = 0; j < f->n_senders; j++) {
                        ipcmux_sender *s;

                        r = sender_new_received(c, sender, &w->senders[f->senders_at + j], &s);
                        if (r < 0)
                                return r;
                        r = message_push_sender(msgs[i], s);
                        if (r < 0) {
                                ipcmux_sender_unref(s);
                                return r;
                        }
                }
        }
        return 0;
}

static void decline_all(Conn *c, const char *sender, const WireCall *w) {
        for (size_t i = 0; i < w->n_senders; i++)
                sender_decline_ref(c, sender, &w->senders[i]);
}

/* A frame's cost in the credit window; the sender computes the same. */
static uint64_t frame_cost(const WireCall *w, const WireFrame *f) {
        uint64_t cost = f->payload_size;

        for (unsigned j = 0; j < f->n_regions; j++) {
                uint64_t size = w->regions[f->regions_at + j].size;
                cost = size > UINT64_MAX - cost ? UINT64_MAX : cost + size;
        }
        return cost;
}

static uint64_t call_cost(const WireCall *w) {
        uint64_t cost = 0;

        for (size_t i = 0; i < w->n_frames; i++) {
                uint64_t f = frame_cost(w, &w->frames[i]);
                cost = f > UINT64_MAX - cost ? UINT64_MAX : cost + f;
        }
        return cost;
}

/* Frames we refuse never reach the application: credit them at once so the
 * sender's window does not shrink forever. */
static void refuse_frames(ipcmux_receiver *rx, RxPeer *p, const WireCall *w) {
        for (size_t i = 0; i < w->n_frames; i++) {
                p->consumed_msgs++;
                p->consumed_bytes += frame_cost(w, &w->frames[i]);
        }
        /* next_seq stays: garbage does not take sequence numbers (an ipcmux
         * sender never sends it), and frames refused in good faith end the
         * peer's part anyway. */
        rxpeer_credit(rx, p);
}

/*
 * No silent loss: frames of @sender were lost or refused, so its stream has
 * a hole.  Its holds go (the receiver reports -EPIPE once nobody else holds)
 * and it is told Closed (its sends fail with -EPIPE).
 */
static void end_peer_part(ipcmux_receiver *rx, const char *sender) {
        unsigned holds = lifecycle_get_holds(rx->lc, sender);

        if (holds > 0)
                (void) lifecycle_release(rx->lc, sender, holds);
        tell_closed(sender, rx);
        receiver_changed(rx);
}

/* Deliver a decoded Send or SendPacked call (see PROTOCOL.md). */
static int receive_call(ipcmux_receiver *rx, sd_bus_message *call, const char *sender, WireCall *w,
                        sd_bus_error *error) {
        Conn *c = rx->conn;
        ipcmux_message *stack_msgs[16], **msgs = stack_msgs;
        _cleanup_free_ ipcmux_message **heap_msgs = NULL;
        Peer *peer;
        RxPeer *p;
        int r;

        p = rxpeer_get(rx, sender);
        if (!p)
                return -ENOMEM;
        /* Off the bus now: acknowledge receipt to the sender's per-peer cap.
         * The filter that counted the call has looked its sender up. */
        peer = c->dispatch_call == call ? c->dispatch_peer : NULL;
        if (!peer)
                peer = peer_find(c, sender);
        if (!peer)
                (void) peer_watch(c, sender, &peer);
        if (peer)
                peer_received(peer, call_cost(w));

        r = wire_validate(w, p->n_staged);
        if (r < 0) {
                rxpeer_drop_staged(p);
                decline_all(c, sender, w);
                refuse_frames(rx, p, w);
                return refuse(rx, error, SD_BUS_ERROR_INVALID_ARGS, "Invalid frames");
        }

        /* A sender's endpoint may be freed (all its senders dropped) and a
         * later copy open a new one, whose stream starts again at 0. */
        if (w->first_seq == 0)
                p->next_seq = 0;
        if (w->first_seq != p->next_seq && w->n_frames > 0) {
                /* Out of order: the broker refused an earlier call (its
                 * queue to us was full) and the sender will send it and
                 * everything after it again, this one included; or this is
                 * such a copy that arrived before (a duplicate).  Take
                 * nothing now: no credit, no sequence numbers, no declines
                 * (the copy carries the same senders). */
                log_debug("ipcmux: %s: frames from %s out of order (got #%" PRIu64 ", expected #%" PRIu64
                          "): waiting for them again", rx->path, sender, w->first_seq, p->next_seq);
                rxpeer_drop_staged(p);
                rx->n_reordered++;
                return sd_bus_error_set(error, SD_BUS_ERROR_IO_ERROR, "Out of sequence");
        }
        if (w->first_seq != p->next_seq) {
                /* An empty Send that skips frames: the sender gave up on
                 * them (they never got credit).  No silent loss: what came
                 * before was delivered, the stream with a hole ends here and
                 * so does the peer's part in the subchannel. */
                if (w->first_seq > p->next_seq)
                        rx->n_lost += w->first_seq - p->next_seq;
                log_warning("ipcmux: %s: frames from %s lost (got #%" PRIu64 ", expected #%" PRIu64 ")",
                            rx->path, sender, w->first_seq, p->next_seq);
                rxpeer_drop_staged(p);
                decline_all(c, sender, w);
                rx->n_lost += w->n_frames;
                refuse_frames(rx, p, w);
                end_peer_part(rx, sender);
                return refuse(rx, error, SD_BUS_ERROR_IO_ERROR, "Frames were lost before this call");
        }

        if (w->n_frames > ELEMENTSOF(stack_msgs)) {
                msgs = heap_msgs = calloc(w->n_frames, sizeof(ipcmux_message *));
                if (!msgs)
                        return -ENOMEM;
        } else
                memset(stack_msgs, 0, sizeof(stack_msgs));

        r = build_messages(rx, call, sender, p, w, msgs);
        rxpeer_drop_staged(p);  /* consumed (dup'ed) or refused with the call */
        if (r < 0) {
                for (size_t i = 0; i < w->n_frames; i++)
                        ipcmux_message_unref(msgs[i]);
                /* Frames whose senders were not yet claimed decline them. */
                decline_all(c, sender, w);
                refuse_frames(rx, p, w);
                log_debug("ipcmux: refusing Send from %s to %s: %s", sender, rx->path, strerror(-r));
                /* An ipcmux sender never sends malformed frames, but it can
                 * exceed our quota in good faith: then its frames are lost,
                 * and that must not be silent.  Garbage only gets refused. */
                if (IN_SET(r, -EDQUOT, -ENOMEM, -EMFILE, -ENFILE))
                        end_peer_part(rx, sender);
                if (r == -ENOMEM)
                        return r;
                if (r == -EDQUOT)
                        return refuse(rx, error, SD_BUS_ERROR_LIMITS_EXCEEDED, "Peer quota exceeded");
                return refuse(rx, error, SD_BUS_ERROR_INVALID_ARGS, "Invalid region or fd");
        }

        p->next_seq = w->first_seq + w->n_frames;
        for (size_t i = 0; i < w->n_frames; i++) {
                ipcmux_message *m = msgs[i];

                p->fds_held += m->accounted_fds;
                p->region_bytes_held += m->accounted_region_bytes;
                p->n_queued++;
                p->n_ref++;
                m->accounted_peer = p;
                receiver_enqueue(rx, m);
        }
        return reply_ok(call);
}

static int method_send(sd_bus_message *call, void *userdata, sd_bus_error *error) {
        ipcmux_receiver *rx = userdata;
        const char *sender = sd_bus_message_get_sender(call);
        WireCall *w = &rx->conn->scratch;

        if (!sender || !lifecycle_may_send(rx->lc, sender))
                return refuse(rx, error, SD_BUS_ERROR_ACCESS_DENIED, "Not a holder of this subchannel");
        if (wire_read_send(call, w) < 0)
                return refuse(rx, error, SD_BUS_ERROR_INVALID_ARGS, "Malformed Send call");
        return receive_call(rx, call, sender, w, error);
}

static int method_send_packed(sd_bus_message *call, void *userdata, sd_bus_error *error) {
        ipcmux_receiver *rx = userdata;
        const char *sender = sd_bus_message_get_sender(call);
        WireCall *w = &rx->conn->scratch;

        if (!sender || !lifecycle_may_send(rx->lc, sender))
                return refuse(rx, error, SD_BUS_ERROR_ACCESS_DENIED, "Not a holder of this subchannel");
        if (wire_read_packed(call, w) < 0)
                return refuse(rx, error, SD_BUS_ERROR_INVALID_ARGS, "Malformed SendPacked call");
        return receive_call(rx, call, sender, w, error);
}

/*
 * Subchannel1 calls skip sd-bus's object dispatch: for a fallback vtable it
 * walks the path's prefixes, calls our find function and looks the member
 * up, some 3,800 instructions a call (callgrind, ping-pong: a round trip
 * cost 53,300 instructions against raw's 32,400, then 45,700).  Only a call
 * to a live receiver, of a method of receiver_vtable with the signature it
 * declares, is taken here; the rest (properties, introspection, errors)
 * goes the normal way.  The filter's return value gets sd-bus's treatment
 * of a handler's: an error reply when the caller expects one.
 */
int receiver_dispatch_call(Conn *c, sd_bus_message *m, sd_bus_error *error) {
        const char *member = sd_bus_message_get_member(m), *path = sd_bus_message_get_path(m);
        const sd_bus_vtable *v;
        uint8_t id[PATH_ID_BYTES];
        ipcmux_receiver *rx;
        int r;

        if (!member || !path)
                return 0;
        for (v = receiver_vtable; v->type != _SD_BUS_VTABLE_END; v++)
                if (v->type == _SD_BUS_VTABLE_METHOD && strcmp(v->x.method.member, member) == 0)
                        break;
        if (v->type == _SD_BUS_VTABLE_END)
                return 0;
        if (receiver_path_get_id(path, id) < 0)
                return 0;
        rx = hashmap_get(&c->receivers, id);
        if (!rx || rx->dropped || strcmp(rx->path, path) != 0)
                return 0;
        if (!sd_bus_message_has_signature(m, v->x.method.signature))
                return 0;
        r = v->x.method.handler(m, rx, error);
        return r < 0 ? r : 1;
}

static int method_stage_fds(sd_bus_message *call, void *userdata, sd_bus_error *error) {
        ipcmux_receiver *rx = userdata;
        const char *sender = sd_bus_message_get_sender(call);
        RxPeer *p;
        int r;

        if (!sender || !lifecycle_may_send(rx->lc, sender))
                return refuse(rx, error, SD_BUS_ERROR_ACCESS_DENIED, "Not a holder of this subchannel");
        p = rxpeer_get(rx, sender);
        if (!p)
                return -ENOMEM;

        r = sd_bus_message_enter_container(call, 'a', "h");
        if (r < 0)
                return refuse(rx, error, SD_BUS_ERROR_INVALID_ARGS, "Malformed StageFds call");
        for (;;) {
                int fd, copy;

                r = sd_bus_message_read_basic(call, 'h', &fd);
                if (r < 0)
                        return refuse(rx, error, SD_BUS_ERROR_INVALID_ARGS, "Malformed StageFds call");
                if (r == 0)
                        break;
                /* Staged fds count against the peer's fd budget like queued ones. */
                if (p->n_staged >= MAX_STAGED_FDS || p->n_staged + p->fds_held + 1 > rx->conn->fd_budget) {
                        rxpeer_drop_staged(p);
                        end_peer_part(rx, sender);
                        return refuse(rx, error, SD_BUS_ERROR_LIMITS_EXCEEDED, "Too many staged fds");
                }
                if (!GREEDY_REALLOC(p->staged, p->allocated_staged, p->n_staged + 1))
                        return -ENOMEM;
                copy = fcntl(fd, F_DUPFD_CLOEXEC, 3);
                if (copy < 0)
                        return refuse(rx, error, SD_BUS_ERROR_LIMITS_EXCEEDED, "Cannot keep fd");
                p->staged[p->n_staged++] = copy;
        }
        return reply_ok(call);
}

static int method_want_credit(sd_bus_message *call, void *userdata, sd_bus_error *error) {
        ipcmux_receiver *rx = userdata;
        const char *sender = sd_bus_message_get_sender(call);
        Peer *peer;
        RxPeer *p;

        if (!sender || !lifecycle_may_send(rx->lc, sender))
                return refuse(rx, error, SD_BUS_ERROR_ACCESS_DENIED, "Not a holder of this subchannel");
        p = rxpeer_get(rx, sender);
        if (!p)
                return -ENOMEM;
        /* It may be stalled on the per-destination cap: acknowledge receipt. */
        peer = peer_find(rx->conn, sender);
        log_debug("ipcmux: %s: WantCredit from %s (read %" PRIu64 " bytes, %" PRIu64 " calls; acked %" PRIu64 ", %" PRIu64 ")",
                  rx->path, sender, peer ? peer->rx_bytes : 0, peer ? peer->rx_calls : 0, peer ? peer->rx_acked : 0,
                  peer ? peer->rx_calls_acked : 0);
        if (peer)
                peer_send_ack(peer);
        /* Credit now if everything from it was consumed, else when it is. */
        if (p->n_queued == 0)
                rxpeer_credit(rx, p);
        else
                p->want_credit = true;
        return reply_ok(call);
}

static int method_release(sd_bus_message *call, void *userdata, sd_bus_error *error) {
        ipcmux_receiver *rx = userdata;
        const char *sender = sd_bus_message_get_sender(call);
        uint32_t n;
        int r;

        r = sd_bus_message_read_basic(call, 'u', &n);
        if (r < 0)
                return refuse(rx, error, SD_BUS_ERROR_INVALID_ARGS, "Malformed Release call");
        if (!sender || n == 0 || lifecycle_release(rx->lc, sender, n) < 0)
                return refuse(rx, error, SD_BUS_ERROR_ACCESS_DENIED, "Caller does not hold that many");
        receiver_changed(rx);
        return reply_ok(call);
}

static const char *normalize_name(Conn *c, const char *name) {
        return c->unique_name && strcmp(name, c->unique_name) == 0 ? NULL : name;
}

static int method_sending(sd_bus_message *call, void *userdata, sd_bus_error *error) {
        ipcmux_receiver *rx = userdata;
        Conn *c = rx->conn;
        const char *sender = sd_bus_message_get_sender(call), *to;
        uint64_t token;
        Peer *peer;
        int r;

        r = sd_bus_message_read(call, "ts", &token, &to);
        if (r < 0)
                return refuse(rx, error, SD_BUS_ERROR_INVALID_ARGS, "Malformed Sending call");
        if (!sender || to[0] != ':')
                return refuse(rx, error, SD_BUS_ERROR_INVALID_ARGS, "Destination must be a unique name");
        /* Check before watching anything: a stranger must not make us
         * subscribe to names of its choosing. */
        if (lifecycle_get_holds(rx->lc, sender) == 0)
                return refuse(rx, error, SD_BUS_ERROR_ACCESS_DENIED, "Caller holds no sender to send");
        to = normalize_name(c, to);
        if (to) {
                /* Watch the destination before the copy counts: if it is
                 * already gone the check after subscribing says so. */
                r = peer_watch(c, to, &peer);
                if (r < 0)
                        return r;
        }
        r = lifecycle_sending(rx->lc, sender, token, to);
        if (r < 0)
                return refuse(rx, error, SD_BUS_ERROR_ACCESS_DENIED, "Caller holds no sender to send");
        if (to && peer && peer->gone) {
                lifecycle_peer_gone(rx->lc, to, ++c->death_gen);
                receiver_changed(rx);
        }
        return reply_ok(call);
}

static int method_claim_or_decline(sd_bus_message *call, ipcmux_receiver *rx, sd_bus_error *error, bool claim) {
        Conn *c = rx->conn;
        const char *sender = sd_bus_message_get_sender(call), *from;
        uint64_t token;
        int r;

        r = sd_bus_message_read(call, "st", &from, &token);
        if (r < 0)
                return refuse(rx, error, SD_BUS_ERROR_INVALID_ARGS, "Malformed call");
        if (!sender)
                return refuse(rx, error, SD_BUS_ERROR_ACCESS_DENIED, "No sender");
        from = normalize_name(c, from);
        r = claim ? lifecycle_claim(rx->lc, sender, from, token) : lifecycle_decline(rx->lc, sender, from, token);
        if (r < 0)
                return refuse(rx, error, SD_BUS_ERROR_ACCESS_DENIED, "No such copy in flight to the caller");
        receiver_changed(rx);
        return reply_ok(call);
}

static int method_claim(sd_bus_message *call, void *userdata, sd_bus_error *error) {
        return method_claim_or_decline(call, userdata, error, true);
}

static int method_decline(sd_bus_message *call, void *userdata, sd_bus_error *error) {
        return method_claim_or_decline(call, userdata, error, false);
}

void receiver_handle_gone_call(Conn *c, sd_bus_message *m, const char *path) {
        const char *sender = sd_bus_message_get_sender(m);
        sd_bus_message *closed = NULL;
        const char *member;

        if (!sender || !sd_bus_message_is_method_call(m, IPCMUX_INTERFACE_SUBCHANNEL, NULL))
                return;
        if (c->last_gone_call == (const void *) m)
                return;
        c->last_gone_call = m;
        member = sd_bus_message_get_member(m);

        if (strcmp(member, "Send") == 0) {
                /* The copies inside can never be used: decline them. */
                if (wire_read_send(m, &c->scratch) >= 0)
                        decline_all(c, sender, &c->scratch);
        } else if (strcmp(member, "Claim") != 0 && strcmp(member, "Sending") != 0)
                return;

        /* The caller believes it holds (or is about to) a sender: tell it. */
        if (conn_new_call(c, sender, IPCMUX_ROOT_PATH, IPCMUX_INTERFACE_PEER, "Closed", &closed) < 0)
                return;
        if (sd_bus_message_append_basic(closed, 'o', path) < 0) {
                sd_bus_message_unref(closed);
                return;
        }
        (void) conn_send_ctrl(c, closed);
}

/* ---- properties ---------------------------------------------------------- */

static int prop_get(sd_bus *bus, const char *path, const char *iface, const char *prop,
                    sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        ipcmux_receiver *rx = userdata;

        if (strcmp(prop, "QueuedMessages") == 0)
                return sd_bus_message_append(reply, "u", (uint32_t) rx->n_queued);
        if (strcmp(prop, "QueuedBytes") == 0)
                return sd_bus_message_append(reply, "t", rx->queued_bytes);
        if (strcmp(prop, "LocalSenders") == 0)
                return sd_bus_message_append(reply, "b", lifecycle_get_local_holds(rx->lc) > 0);
        if (strcmp(prop, "RemoteHolds") == 0)
                return sd_bus_message_append(reply, "u", lifecycle_get_remote_holds(rx->lc));
        if (strcmp(prop, "InFlight") == 0)
                return sd_bus_message_append(reply, "u", lifecycle_get_in_flight(rx->lc));
        if (strcmp(prop, "Received") == 0)
                return sd_bus_message_append(reply, "t", rx->n_received);
        if (strcmp(prop, "Refused") == 0)
                return sd_bus_message_append(reply, "t", rx->n_refused);
        if (strcmp(prop, "Lost") == 0)
                return sd_bus_message_append(reply, "t", rx->n_lost);
        if (strcmp(prop, "Holders") == 0) {
                char **l = NULL;
                int r = lifecycle_get_holders(rx->lc, &l);
                if (r < 0)
                        return r;
                r = sd_bus_message_append_strv(reply, l);
                lifecycle_strv_free(l);
                return r;
        }
        return -ENOENT;
}

const sd_bus_vtable receiver_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_METHOD_WITH_NAMES("Send", "ta" IPCMUX_FRAME_SIGNATURE "ah",
                                 SD_BUS_PARAM(first_seq) SD_BUS_PARAM(frames) SD_BUS_PARAM(fds),
                                 "", , method_send, SD_BUS_VTABLE_UNPRIVILEGED | SD_BUS_VTABLE_METHOD_NO_REPLY),
        SD_BUS_METHOD_WITH_NAMES("SendPacked", "ay", SD_BUS_PARAM(packed),
                                 "", , method_send_packed, SD_BUS_VTABLE_UNPRIVILEGED | SD_BUS_VTABLE_METHOD_NO_REPLY),
        SD_BUS_METHOD_WITH_NAMES("StageFds", "ah", SD_BUS_PARAM(fds), "", , method_stage_fds,
                                 SD_BUS_VTABLE_UNPRIVILEGED | SD_BUS_VTABLE_METHOD_NO_REPLY),
        /* Replies when asked to (the per-peer cap's ask, after its Ack). */
        SD_BUS_METHOD("WantCredit", "", "", method_want_credit, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("Release", "u", SD_BUS_PARAM(count), "", , method_release,
                                 SD_BUS_VTABLE_UNPRIVILEGED | SD_BUS_VTABLE_METHOD_NO_REPLY),
        SD_BUS_METHOD_WITH_NAMES("Sending", "ts", SD_BUS_PARAM(token) SD_BUS_PARAM(destination), "", ,
                                 method_sending, SD_BUS_VTABLE_UNPRIVILEGED | SD_BUS_VTABLE_METHOD_NO_REPLY),
        SD_BUS_METHOD_WITH_NAMES("Claim", "st", SD_BUS_PARAM(from) SD_BUS_PARAM(token), "", , method_claim,
                                 SD_BUS_VTABLE_UNPRIVILEGED | SD_BUS_VTABLE_METHOD_NO_REPLY),
        SD_BUS_METHOD_WITH_NAMES("Decline", "st", SD_BUS_PARAM(from) SD_BUS_PARAM(token), "", , method_decline,
                                 SD_BUS_VTABLE_UNPRIVILEGED | SD_BUS_VTABLE_METHOD_NO_REPLY),
        SD_BUS_PROPERTY("QueuedMessages", "u", prop_get, 0, 0),
        SD_BUS_PROPERTY("QueuedBytes", "t", prop_get, 0, 0),
        SD_BUS_PROPERTY("LocalSenders", "b", prop_get, 0, 0),
        SD_BUS_PROPERTY("RemoteHolds", "u", prop_get, 0, 0),
        SD_BUS_PROPERTY("Holders", "as", prop_get, 0, 0),
        SD_BUS_PROPERTY("InFlight", "u", prop_get, 0, 0),
        SD_BUS_PROPERTY("Received", "t", prop_get, 0, 0),
        SD_BUS_PROPERTY("Refused", "t", prop_get, 0, 0),
        SD_BUS_PROPERTY("Lost", "t", prop_get, 0, 0),
        SD_BUS_VTABLE_END,
};

_public_ uint64_t ipcmux_receiver_get_lost(ipcmux_receiver *rx) {
        return rx ? rx->n_lost : 0;
}
