/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Conn: the bus connection, its lock, the waiting protocol and the output
 * queues.  See conn.h for the threading design.
 */

#include <stdarg.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <time.h>

#include "channel.h"
#include "conn.h"
#include "endpoint.h"
#include "log.h"
#include "macro.h"
#include "peer.h"
#include "receiver.h"
#include "sentlog.h"

/* Payloads above this travel in a sealed memfd instead of inline. */
#define DEFAULT_SPILL_THRESHOLD (1u << 20)
/* Messages sd_bus_process()ed per dispatch round before re-checking. */
#define DISPATCH_BUDGET 256

uint64_t conn_fork_gen;

static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static List registry = LIST_INIT(registry);
static Conn *default_conn;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

typedef struct CtrlItem {
        List link;
        sd_bus_message *m;
} CtrlItem;

static void on_fork_child(void) {
        /* Everything inherited belongs to the parent: new objects only. */
        __atomic_add_fetch(&conn_fork_gen, 1, __ATOMIC_RELAXED);
        pthread_mutex_init(&registry_lock, NULL);
        list_init(&registry);
        default_conn = NULL;
}

static void setup_atfork(void) {
        (void) pthread_atfork(NULL, NULL, on_fork_child);
}

uint64_t now_usec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
}

/* CLOCK_MONOTONIC_COARSE: no clock read (5 ns, not 23 ns: a send costs
 * ~150 ns in all), advancing in ticks of a few ms.  For the intervals of a
 * sender that only sends, checked on every send. */
uint64_t now_coarse_usec(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
        return (uint64_t) ts.tv_sec * 1000000u + (uint64_t) ts.tv_nsec / 1000u;
}

void random_bytes(void *p, size_t n) {
        uint8_t *b = p;

        while (n > 0) {
                ssize_t k = getrandom(b, n, 0);
                if (k < 0) {
                        if (errno == EINTR)
                                continue;
                        /* Cannot happen on Linux >= 3.17 after boot; stay unique anyway. */
                        uint64_t x = now_usec() ^ ((uint64_t) getpid() << 32) ^ (uintptr_t) b;
                        memcpy(b, &x, MIN(n, sizeof(x)));
                        k = (ssize_t) MIN(n, sizeof(x));
                }
                b += k;
                n -= (size_t) k;
        }
}

uint64_t random_u64(void) {
        uint64_t v;

        random_bytes(&v, sizeof(v));
        return v;
}

/* ---- lock ---------------------------------------------------------------- */

void conn_lock(Conn *c) {
        pthread_t self = pthread_self();

        /* Only this thread ever stores its own id in owner (under the
         * mutex), so seeing it means we hold the mutex and depth is ours. */
        if (pthread_equal(__atomic_load_n(&c->owner, __ATOMIC_RELAXED), self)) {
                c->depth++;
                return;
        }
        pthread_mutex_lock(&c->mutex);
        __atomic_store_n(&c->owner, self, __ATOMIC_RELAXED);
        c->depth = 1;
}

static void poller_look_again(Conn *c);

void conn_unlock(Conn *c) {
        if (--c->depth > 0)
                return;
        /* Leaving with output queued that the polling thread does not poll
         * for: tell it (see poller_look_again()). */
        if (c->polling)
                poller_look_again(c);
        __atomic_store_n(&c->owner, (pthread_t) 0, __ATOMIC_RELAXED);
        pthread_mutex_unlock(&c->mutex);
}

int conn_enter(Conn *c) {
        if (conn_forked(c))
                return -ECHILD;
        conn_lock(c);
        return 0;
}

/* Release the lock entirely around a blocking syscall; returns the depth to restore. */
unsigned conn_lock_suspend(Conn *c) {
        unsigned d = c->depth;

        c->depth = 0;
        __atomic_store_n(&c->owner, (pthread_t) 0, __ATOMIC_RELAXED);
        pthread_mutex_unlock(&c->mutex);
        return d;
}

void conn_lock_resume(Conn *c, unsigned d) {
        pthread_mutex_lock(&c->mutex);
        __atomic_store_n(&c->owner, pthread_self(), __ATOMIC_RELAXED);
        c->depth = d;
}

/* ---- life cycle ---------------------------------------------------------- */

static int conn_new(sd_bus *bus, bool is_default, Conn **ret);

int conn_get_default(Conn **ret) {
        _cleanup_(sd_bus_unrefp) sd_bus *bus = NULL;
        Conn *c;
        int r;

        pthread_once(&atfork_once, setup_atfork);

        pthread_mutex_lock(&registry_lock);
        c = default_conn;
        if (c) {
                /* Revive only a live object: n_ref 0 means it is being torn down. */
                unsigned n = __atomic_load_n(&c->n_ref, __ATOMIC_RELAXED);
                while (n > 0 && !__atomic_compare_exchange_n(&c->n_ref, &n, n + 1, false,
                                                             __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
                        ;
                if (n > 0 && c->error >= 0) {
                        pthread_mutex_unlock(&registry_lock);
                        *ret = c;
                        return 0;
                }
                if (n > 0)
                        conn_unref(c);  /* lost connection: open a new one */
                default_conn = NULL;
        }

        r = sd_bus_open_user(&bus);
        if (r >= 0)
                r = conn_new(bus, true, &c);
        if (r < 0) {
                pthread_mutex_unlock(&registry_lock);
                return r;
        }
        default_conn = c;
        list_append(&registry, &c->link);
        pthread_mutex_unlock(&registry_lock);
        *ret = c;
        return 0;
}

int conn_get_for_bus(sd_bus *bus, Conn **ret) {
        Conn *c;
        int r;

        pthread_once(&atfork_once, setup_atfork);

        pthread_mutex_lock(&registry_lock);
        list_for_each_entry(c, &registry, link) {
                unsigned n;

                if (c->bus != bus)
                        continue;
                n = __atomic_load_n(&c->n_ref, __ATOMIC_RELAXED);
                while (n > 0 && !__atomic_compare_exchange_n(&c->n_ref, &n, n + 1, false,
                                                             __ATOMIC_ACQ_REL, __ATOMIC_RELAXED))
                        ;
                if (n > 0) {
                        pthread_mutex_unlock(&registry_lock);
                        *ret = c;
                        return 0;
                }
        }
        r = conn_new(bus, false, &c);
        if (r >= 0)
                list_append(&registry, &c->link);
        pthread_mutex_unlock(&registry_lock);
        if (r < 0)
                return r;
        *ret = c;
        return 0;
}

Conn *conn_ref(Conn *c) {
        if (c)
                __atomic_add_fetch(&c->n_ref, 1, __ATOMIC_RELAXED);
        return c;
}

static void conn_free(Conn *c) {
        CtrlItem *item, *tmp;

        /* Nothing references us any more (channels, receivers, endpoints all
         * hold refs), so only our own slots and peer watches remain. */
        if (!conn_forked(c)) {
                conn_lock(c);
                if (c->error >= 0) {
                        /* Last words (releases, Closed) must reach the bus. */
                        uint64_t deadline = now_usec() + 5 * 1000000u;
                        while (conn_output_pending(c) && c->error >= 0 && now_usec() < deadline) {
                                if (conn_flush(c) < 0)
                                        break;
                                if (sd_bus_process(c->bus, NULL) < 0)
                                        break;
                                (void) sd_bus_wait(c->bus, 100000);
                        }
                }
                peers_free_all(c);
                sentlog_done(c);
                conn_detach_event(c);
                c->root_slot = sd_bus_slot_unref(c->root_slot);
                conn_unlock(c);
        }
        list_for_each_entry_safe(item, tmp, &c->ctrlq, link) {
                list_unlink(&item->link);
                sd_bus_message_unref(item->m);
                free(item);
        }
        if (c->bus && !conn_forked(c)) {
                if (c->is_default)
                        sd_bus_flush_close_unref(c->bus);
                else
                        sd_bus_unref(c->bus);
        }
        hashmap_deinit(&c->receivers);
        hashmap_deinit(&c->endpoints);
        hashmap_deinit(&c->peers);
        hashmap_deinit(&c->listeners);
        wire_call_done(&c->scratch);
        safe_close(c->wake_fd);
        safe_close(c->loop_wake_fd);
        safe_close(c->epoll_fd);
        pthread_cond_destroy(&c->cond);
        pthread_mutex_destroy(&c->mutex);
        free(c->unique_name);
        free(c);
}

Conn *conn_unref(Conn *c) {
        if (!c)
                return NULL;
        if (__atomic_sub_fetch(&c->n_ref, 1, __ATOMIC_ACQ_REL) > 0)
                return NULL;
        if (conn_forked(c))
                return NULL;    /* the parent's: leave it alone */

        pthread_mutex_lock(&registry_lock);
        if (default_conn == c)
                default_conn = NULL;
        if (list_is_linked(&c->link))
                list_unlink(&c->link);
        pthread_mutex_unlock(&registry_lock);
        conn_free(c);
        return NULL;
}

static int root_method_closed(sd_bus_message *m, void *userdata, sd_bus_error *error);
static int root_method_credit(sd_bus_message *m, void *userdata, sd_bus_error *error);
static int root_method_sync(sd_bus_message *m, void *userdata, sd_bus_error *error);
static int root_method_ack(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        const char *sender = sd_bus_message_get_sender(m);
        uint64_t bytes, calls;
        Peer *p;
        int r;

        r = sd_bus_message_read(m, "tt", &bytes, &calls);
        if (r < 0)
                return r;
        p = sender ? peer_find(userdata, sender) : NULL;
        if (p)
                peer_ack(p, bytes, calls);
        return sd_bus_message_get_expect_reply(m) ? sd_bus_reply_method_return(m, NULL) : 1;
}
static int root_method_connect(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        return listener_method_connect(m, userdata, error);
}
static int root_prop_backlog(sd_bus *bus, const char *path, const char *iface, const char *prop,
                             sd_bus_message *reply, void *userdata, sd_bus_error *error);
static int root_prop_version(sd_bus *bus, const char *path, const char *iface, const char *prop,
                             sd_bus_message *reply, void *userdata, sd_bus_error *error);
static int root_prop_count(sd_bus *bus, const char *path, const char *iface, const char *prop,
                           sd_bus_message *reply, void *userdata, sd_bus_error *error);

static const sd_bus_vtable root_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_METHOD_WITH_NAMES("Closed", "o", SD_BUS_PARAM(path), "", , root_method_closed,
                                 SD_BUS_VTABLE_UNPRIVILEGED | SD_BUS_VTABLE_METHOD_NO_REPLY),
        SD_BUS_METHOD_WITH_NAMES("Credit", "ott", SD_BUS_PARAM(path) SD_BUS_PARAM(messages) SD_BUS_PARAM(bytes),
                                 "", , root_method_credit,
                                 SD_BUS_VTABLE_UNPRIVILEGED | SD_BUS_VTABLE_METHOD_NO_REPLY),
        SD_BUS_METHOD_WITH_NAMES("Ack", "tt", SD_BUS_PARAM(bytes) SD_BUS_PARAM(calls), "", , root_method_ack,
                                 SD_BUS_VTABLE_UNPRIVILEGED | SD_BUS_VTABLE_METHOD_NO_REPLY),
        SD_BUS_METHOD("Sync", "", "", root_method_sync, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD_WITH_NAMES("Connect", "s", SD_BUS_PARAM(listener), "o", SD_BUS_PARAM(path),
                                 root_method_connect, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_PROPERTY("Version", "s", root_prop_version, 0, SD_BUS_VTABLE_PROPERTY_CONST),
        SD_BUS_PROPERTY("Channels", "u", root_prop_count, offsetof(Conn, n_channels), 0),
        SD_BUS_PROPERTY("Receivers", "u", root_prop_count, offsetof(Conn, receivers.n_entries), 0),
        SD_BUS_PROPERTY("Endpoints", "u", root_prop_count, offsetof(Conn, endpoints.n_entries), 0),
        SD_BUS_PROPERTY("Backlog", "a(sott)", root_prop_backlog, 0, 0),
        SD_BUS_PROPERTY("Resent", "t", NULL, offsetof(Conn, sent.refused), 0),
        SD_BUS_VTABLE_END,
};

static int conn_new(sd_bus *bus, bool is_default, Conn **ret) {
        _cleanup_free_ Conn *c = NULL;
        pthread_condattr_t attr;
        const char *unique;
        int r;

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        c->n_ref = 1;
        c->fork_gen = __atomic_load_n(&conn_fork_gen, __ATOMIC_RELAXED);
        list_init(&c->link);
        list_init(&c->channels);
        list_init(&c->ctrlq);
        list_init(&c->ready);
        list_init(&c->handled);
        list_init(&c->handler_ready);
        list_init(&c->peer_graveyard);
        c->epoll_fd = -1;
        hashmap_init(&c->receivers, &hash_ops_id64);
        hashmap_init(&c->endpoints, &hash_ops_string);
        hashmap_init(&c->peers, &hash_ops_string);
        hashmap_init(&c->listeners, &hash_ops_string);
        c->is_default = is_default;
        c->spill_threshold = DEFAULT_SPILL_THRESHOLD;
        c->fd_budget = fd_budget();

        /* Blocks until Hello is answered: peers can call us as soon as we return. */
        r = sd_bus_get_unique_name(bus, &unique);
        if (r < 0)
                return r;
        c->unique_name = strdup(unique);
        if (!c->unique_name)
                return -ENOMEM;

        c->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        c->loop_wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (c->wake_fd < 0 || c->loop_wake_fd < 0) {
                r = negative_errno();
                safe_close(c->wake_fd);
                safe_close(c->loop_wake_fd);
                free(c->unique_name);
                return r;
        }

        pthread_mutex_init(&c->mutex, NULL);
        pthread_condattr_init(&attr);
        pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);
        pthread_cond_init(&c->cond, &attr);
        pthread_condattr_destroy(&attr);

        r = sd_bus_add_object_vtable(bus, &c->root_slot, IPCMUX_ROOT_PATH, IPCMUX_INTERFACE_PEER,
                                     root_vtable, c);
        if (r < 0) {
                safe_close(c->wake_fd);
                safe_close(c->loop_wake_fd);
                pthread_cond_destroy(&c->cond);
                pthread_mutex_destroy(&c->mutex);
                free(c->unique_name);
                return r;
        }
        c->bus = sd_bus_ref(bus);
        r = sentlog_init(c);
        if (r < 0)
                log_debug("ipcmux: cannot watch for refused calls: %s", strerror(-r));
        *ret = TAKE_PTR(c);
        return 0;
}

void conn_fail(Conn *c, int error) {
        if (c->error < 0)
                return;
        c->error = error < 0 ? error : -ECONNRESET;
        log_warning("ipcmux: bus connection lost: %s", strerror(-c->error));
        endpoints_fail_all(c);
        receivers_fail_all(c);
        conn_notify(c);
}

static bool is_connection_error(int r) {
        return IN_SET(r, -ECONNRESET, -ENOTCONN, -EPIPE, -ESHUTDOWN, -ECONNABORTED, -EXFULL);
}

/* ---- waking -------------------------------------------------------------- */

/* The thread in ppoll() (if any) wakes up and looks again. */
static void poller_kick(Conn *c) {
        uint64_t one = 1;

        if (c->polling)
                (void) !write(c->wake_fd, &one, sizeof(one));
}

void conn_notify(Conn *c) {
        pthread_cond_broadcast(&c->cond);
        poller_kick(c);
}

void conn_wake(Conn *c) {
        uint64_t one = 1;

        pthread_cond_broadcast(&c->cond);
        poller_kick(c);
        if (c->driven)
                (void) !write(c->loop_wake_fd, &one, sizeof(one));
}

/* ---- output -------------------------------------------------------------- */

bool conn_output_pending(Conn *c) {
        uint64_t n = 0;

        if (!list_is_empty(&c->ctrlq) || !list_is_empty(&c->ready))
                return true;
        return sd_bus_get_n_queued_write(c->bus, &n) >= 0 && n > 0;
}

static bool bus_writable(Conn *c) {
        uint64_t n = 0;

        return sd_bus_get_n_queued_write(c->bus, &n) >= 0 && n == 0;
}

void conn_queue_ctrl(Conn *c, sd_bus_message *m) {
        CtrlItem *item = malloc(sizeof(*item));

        if (!item) {
                log_warning("ipcmux: out of memory: dropping a control message to %s",
                            sd_bus_message_get_destination(m));
                sd_bus_message_unref(m);
                return;
        }
        item->m = m;
        list_append(&c->ctrlq, &item->link);
}

int conn_flush(Conn *c) {
        int r;

        if (c->error < 0)
                return -ECONNRESET;
        sentlog_tick(c);

        while (bus_writable(c)) {
                CtrlItem *item = list_first_entry(&c->ctrlq, CtrlItem, link);

                if (item) {
                        list_unlink(&item->link);
                        r = sentlog_send(c, item->m, NULL, 0);
                        sd_bus_message_unref(item->m);
                        free(item);
                        if (r < 0) {
                                if (is_connection_error(r)) {
                                        conn_fail(c, r);
                                        return -ECONNRESET;
                                }
                                log_debug("ipcmux: dropping control message: %s", strerror(-r));
                        }
                        continue;
                }

                Endpoint *ep = list_first_entry(&c->ready, Endpoint, ready_link);
                if (!ep)
                        break;
                r = endpoint_flush_one(ep);
                if (r < 0 && is_connection_error(r)) {
                        conn_fail(c, r);
                        return -ECONNRESET;
                }
        }

        /* The poller's event mask may lack POLLOUT now: let it recompute. */
        if (c->polling && !bus_writable(c))
                conn_notify(c);
        return 0;
}

int conn_send_ctrl(Conn *c, sd_bus_message *m) {
        CtrlItem *item;

        if (c->error < 0) {
                sd_bus_message_unref(m);
                return -ECONNRESET;
        }
        /* Fast path: nothing queued ahead of it, hand it over directly. */
        if (list_is_empty(&c->ctrlq) && bus_writable(c)) {
                int r = sentlog_send(c, m, NULL, 0);
                sd_bus_message_unref(m);
                if (r < 0 && is_connection_error(r)) {
                        conn_fail(c, r);
                        return -ECONNRESET;
                }
                return r < 0 ? r : 0;
        }
        item = malloc(sizeof(*item));
        if (!item) {
                sd_bus_message_unref(m);
                return -ENOMEM;
        }
        item->m = m;
        list_append(&c->ctrlq, &item->link);
        return conn_flush(c);
}

int conn_new_call(Conn *c, const char *dest, const char *path, const char *iface,
                  const char *member, sd_bus_message **ret) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        int r;

        if (c->error < 0)
                return -ECONNRESET;
        r = sd_bus_message_new_method_call(c->bus, &m, dest, path, iface, member);
        if (r < 0)
                return r;
        r = sd_bus_message_set_expect_reply(m, 0);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(m);
        return 0;
}

typedef struct PendingCall {
        sd_bus_message *reply;
        bool done;
} PendingCall;

static int on_call_reply(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        PendingCall *pc = userdata;

        pc->reply = sd_bus_message_ref(m);
        pc->done = true;
        return 0;
}

static bool call_done(void *userdata) {
        return ((PendingCall *) userdata)->done;
}

int conn_call(Conn *c, sd_bus_message *m, uint64_t timeout_usec, sd_bus_message **ret_reply) {
        _cleanup_(sd_bus_slot_unrefp) sd_bus_slot *slot = NULL;
        PendingCall pc = {};
        int r;

        if (c->error < 0)
                return -ECONNRESET;
        r = sd_bus_call_async(c->bus, &slot, m, on_call_reply, &pc, timeout_usec);
        if (r < 0)
                return r;
        r = conn_wait(c, call_done, &pc, UINT64_MAX);
        if (r < 0)
                return r;
        *ret_reply = pc.reply;
        return 0;
}

int conn_call_driver(Conn *c, sd_bus_message **ret_reply, const char *member, const char *types, ...) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL;
        va_list ap;
        int r;

        r = sd_bus_message_new_method_call(c->bus, &m, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                           "org.freedesktop.DBus", member);
        if (r < 0)
                return r;
        va_start(ap, types);
        r = sd_bus_message_appendv(m, types, ap);
        va_end(ap);
        if (r < 0)
                return r;
        return conn_call(c, m, 0, ret_reply);
}

int conn_request_name(Conn *c, const char *name, uint32_t *ret_result) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        uint32_t result;
        int r;

        r = conn_call_driver(c, &reply, "RequestName", "su", name, (uint32_t) 4 /* DBUS_NAME_FLAG_DO_NOT_QUEUE */);
        if (r < 0)
                return r;
        if (sd_bus_message_is_method_error(reply, NULL))
                return -sd_bus_message_get_errno(reply) ?: -EIO;
        r = sd_bus_message_read_basic(reply, 'u', &result);
        if (r < 0)
                return r;
        *ret_result = result;
        return 0;
}

int conn_sync_bus(Conn *c, uint64_t deadline) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        uint64_t target = c->emitted, now = now_usec();
        int r;

        uint64_t mark = sentlog_mark(c);

        if (c->synced >= target)
                return 0;
        r = sd_bus_message_new_method_call(c->bus, &m, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                           "org.freedesktop.DBus.Peer", "Ping");
        if (r < 0)
                return r;
        r = conn_call(c, m, deadline > now ? deadline - now : 1, &reply);
        if (r < 0)
                return r;
        /* A timeout (sd-bus's own error reply) proves nothing: the calls
         * stay kept, since the broker may still refuse them. */
        if (sd_bus_message_is_method_error(reply, NULL))
                return -sd_bus_message_get_errno(reply) ?: -EIO;
        if (target > c->synced)
                c->synced = target;
        sentlog_release(c, mark);
        return 0;
}

/* ---- input --------------------------------------------------------------- */

static int process_one(Conn *c) {
        int r;

        c->processing++;
        r = sd_bus_process(c->bus, NULL);
        c->processing--;
        /* One sd_bus_process() dispatches one message: forget it. */
        c->last_gone_call = NULL;
        if (r < 0) {
                if (r == -EBUSY)
                        return 0;
                conn_fail(c, r);
                return r;
        }
        if (sd_bus_is_open(c->bus) <= 0) {
                conn_fail(c, -ECONNRESET);
                return -ECONNRESET;
        }
        peers_sweep(c);
        return r;
}

/* Process until idle, @ready, or the budget is spent; flush after each step. */
static int dispatch(Conn *c, bool (*ready)(void *), void *userdata) {
        bool progress = false;
        int r = 0;

        if (c->processing || c->error < 0)
                return 0;
        /* Read without the lock by ipcmux_sender_send_bytes(). */
        __atomic_store_n(&c->last_dispatch_usec, now_coarse_usec(), __ATOMIC_RELAXED);
        for (unsigned i = 0; i < DISPATCH_BUDGET; i++) {
                r = process_one(c);
                if (r < 0)
                        return r;
                (void) conn_flush(c);
                if (!list_is_empty(&c->handler_ready))
                        (void) receivers_run_handlers(c);
                if (r == 0)
                        break;
                progress = true;
                if (ready && ready(userdata))
                        break;
        }
        /* Another thread sits in ppoll() for its own condition: what we
         * read may have been what it waits for (the reply to its call, say),
         * and it would sleep on, since the socket has nothing new for it.
         * Seen: a last unref's round trip to the broker answered, read by
         * a pump thread, its caller polling on for 10 s. */
        if (progress)
                poller_kick(c);
        return 0;
}

int conn_process(Conn *c) {
        uint64_t v;
        int r, n;

        if (c->error < 0)
                return -ECONNRESET;
        (void) !read(c->loop_wake_fd, &v, sizeof(v));
        if (c->processing)
                return 0;
        r = process_one(c);
        if (r < 0)
                return r;
        (void) conn_flush(c);
        n = receivers_run_handlers(c);
        return r > 0 || n > 0;
}

int conn_dispatch_pending(Conn *c) {
        int r;

        if (c->error < 0)
                return -ECONNRESET;
        r = dispatch(c, NULL, NULL);
        if (r < 0)
                return r;
        return conn_flush(c);
}

static void deadline_to_timespec(uint64_t usec, struct timespec *ts) {
        ts->tv_sec = (time_t) (usec / 1000000u);
        ts->tv_nsec = (long) (usec % 1000000u) * 1000;
}

/* Sleep in ppoll() on the bus and the wake eventfd, without the lock. */
static void poll_bus(Conn *c, uint64_t deadline) {
        struct pollfd p[2] = {
                { .fd = sd_bus_get_fd(c->bus), .events = POLLIN },
                { .fd = c->wake_fd, .events = POLLIN },
        };
        uint64_t until = UINT64_MAX, now;
        struct timespec ts, *tsp = NULL;
        unsigned depth;
        int events;

        events = sd_bus_get_events(c->bus);
        if (events > 0)
                p[0].events = (short) events;
        if (sd_bus_get_timeout(c->bus, &until) < 0)
                until = UINT64_MAX;
        until = MIN(until, deadline);
        until = MIN(until, SENTLOG_NEXT_RETRY(c));
        if (until != UINT64_MAX) {
                now = now_usec();
                deadline_to_timespec(until > now ? until - now : 0, &ts);
                tsp = &ts;
        }

        c->polling = true;
        c->polled_events = p[0].events;
        c->polled_until = until;
        depth = conn_lock_suspend(c);
        (void) ppoll(p, 2, tsp, NULL);
        conn_lock_resume(c, depth);
        c->polling = false;

        if (p[1].revents & POLLIN) {
                uint64_t v;
                (void) !read(c->wake_fd, &v, sizeof(v));
        }
        /* Let a waiter take over polling should we return now. */
        pthread_cond_broadcast(&c->cond);
}

static void cond_wait_until(Conn *c, uint64_t deadline) {
        unsigned depth = c->depth;
        struct timespec ts;

        c->depth = 0;
        __atomic_store_n(&c->owner, (pthread_t) 0, __ATOMIC_RELAXED);
        c->n_waiters++;
        if (deadline == UINT64_MAX)
                pthread_cond_wait(&c->cond, &c->mutex);
        else {
                deadline_to_timespec(deadline, &ts);
                pthread_cond_timedwait(&c->cond, &c->mutex, &ts);
        }
        c->n_waiters--;
        __atomic_store_n(&c->owner, pthread_self(), __ATOMIC_RELAXED);
        c->depth = depth;
}

/*
 * Another thread polls the bus for us, with the events and the timeout it
 * chose when it started.  Output queued since (in sd-bus's write queue: the
 * socket was full) needs POLLOUT, and a call made since may time out
 * earlier (or sd-bus may hold read messages to process now, timeout 0):
 * kick it to choose again, or nobody does that work and whoever waits for
 * it (a last unref) waits for its own deadline (seen: a sender thread's
 * unref stuck 10 s while a pump thread polled for input that never came).
 * Only then: kicking on every wait would keep the two threads waking each
 * other while the socket stays full.
 */
static void poller_look_again(Conn *c) {
        uint64_t n = 0, until = UINT64_MAX;

        if ((sd_bus_get_n_queued_write(c->bus, &n) >= 0 && n > 0 && !(c->polled_events & POLLOUT)) ||
            (sd_bus_get_timeout(c->bus, &until) >= 0 && until < c->polled_until))
                poller_kick(c);
}

int conn_wait(Conn *c, bool (*ready)(void *userdata), void *userdata, uint64_t deadline) {
        int r;

        for (;;) {
                if (ready(userdata))
                        return 0;
                if (c->error < 0)
                        return -ECONNRESET;

                r = dispatch(c, ready, userdata);
                if (ready(userdata))
                        return 0;
                if (r < 0 || c->error < 0)
                        return -ECONNRESET;

                if (now_usec() >= deadline)
                        return -ETIMEDOUT;
                /* Inside a callback of sd_bus_process() we can neither
                 * dispatch nor give the lock away: waiting would deadlock. */
                if (c->processing || c->depth > 1)
                        return -EDEADLK;

                if (!c->polling)
                        poll_bus(c, deadline);
                else {
                        poller_look_again(c);
                        cond_wait_until(c, deadline);
                }
        }
}

/* ---- org.ipcmux.Peer1 at /org/ipcmux -------------------------------------- */

static int root_method_closed(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Conn *c = userdata;
        const char *path, *sender = sd_bus_message_get_sender(m);
        Endpoint *ep;
        int r;

        r = sd_bus_message_read_basic(m, 'o', &path);
        if (r < 0)
                return r;
        /* Only the receiver's own process can say its receiver is closed. */
        ep = sender ? endpoint_find(c, sender, path) : NULL;
        if (ep)
                endpoint_close(ep);
        return sd_bus_message_get_expect_reply(m) ? sd_bus_reply_method_return(m, NULL) : 1;
}

static int root_method_credit(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Conn *c = userdata;
        const char *path, *sender = sd_bus_message_get_sender(m);
        uint64_t msgs, bytes;
        Endpoint *ep;
        int r;

        r = sd_bus_message_read(m, "ott", &path, &msgs, &bytes);
        if (r < 0)
                return r;
        ep = sender ? endpoint_find(c, sender, path) : NULL;
        if (ep)
                endpoint_credit(ep, msgs, bytes);
        return sd_bus_message_get_expect_reply(m) ? sd_bus_reply_method_return(m, NULL) : 1;
}

static int root_method_sync(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Conn *c = userdata;
        sd_bus_message *reply = NULL;
        int r;

        /* The reply queues behind everything we already queued for the
         * caller (Claims in particular): that is the barrier. */
        r = sd_bus_message_new_method_return(m, &reply);
        if (r < 0)
                return r;
        r = conn_send_ctrl(c, reply);
        return r < 0 ? r : 1;
}

static int root_prop_version(sd_bus *bus, const char *path, const char *iface, const char *prop,
                             sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        return sd_bus_message_append_basic(reply, 's', "1");
}

static int root_prop_count(sd_bus *bus, const char *path, const char *iface, const char *prop,
                           sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        /* userdata is the field address (vtable offset + Conn); fields are
         * unsigned or size_t, so read as the right width. */
        uint32_t v;

        if (strcmp(prop, "Channels") == 0)
                v = *(unsigned *) userdata;
        else
                v = (uint32_t) *(size_t *) userdata;
        return sd_bus_message_append_basic(reply, 'u', &v);
}

static int root_prop_backlog(sd_bus *bus, const char *path, const char *iface, const char *prop,
                             sd_bus_message *reply, void *userdata, sd_bus_error *error) {
        Conn *c = userdata;
        size_t i = 0;
        void *v;
        int r;

        r = sd_bus_message_open_container(reply, 'a', "(sott)");
        if (r < 0)
                return r;
        while (hashmap_iterate(&c->endpoints, &i, &v)) {
                Endpoint *ep = v;

                if (ep->n_queued == 0)
                        continue;
                r = sd_bus_message_append(reply, "(sott)", ep->dest, ep->path, (uint64_t) ep->n_queued,
                                          ep->queued_bytes);
                if (r < 0)
                        return r;
        }
        return sd_bus_message_close_container(reply);
}
