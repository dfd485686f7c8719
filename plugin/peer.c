/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Peer death watching (see peer.h). */

#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>

#include "channel.h"
#include "endpoint.h"
#include "log.h"
#include "macro.h"
#include "peer.h"
#include "receiver.h"
#include "sentlog.h"

static void peer_free(Peer *p) {
        Endpoint *ep, *tmp;

        list_for_each_entry_safe(ep, tmp, &p->endpoints, peer_link) {
                list_unlink(&ep->peer_link);
                if (list_is_linked(&ep->cap_link))
                        list_unlink(&ep->cap_link);
                ep->peer = NULL;
        }
        hashmap_remove(&p->conn->peers, p->name);
        if (list_is_linked(&p->graveyard_link))
                list_unlink(&p->graveyard_link);
        sentlog_forget_peer(p->conn, p);
        sd_bus_slot_unref(p->ask_slot);
        sd_bus_slot_unref(p->match_slot);
        sd_bus_slot_unref(p->check_slot);
        free(p->name);
        free(p);
}

typedef struct SyncCall {
        Conn *conn;
        char *name;
        uint64_t gen;
} SyncCall;

static void send_sync(Conn *c, const char *dest, uint64_t gen);

/*
 * A call that timed out, by sd-bus's clock (or the broker's): NoReply from
 * the bus, never from a peer (which could answer so at once, for ever).
 * It says nothing about the callee: sd-bus looks at timeouts before it
 * reads, so a connection left undispatched for longer than its call timeout
 * (an application busy elsewhere, a debugger) sees one although the reply
 * waits in the socket.  The callers ask again.
 */
static bool reply_timed_out(sd_bus_message *m) {
        const char *sender = sd_bus_message_get_sender(m);

        return (sd_bus_message_is_method_error(m, SD_BUS_ERROR_NO_REPLY) ||
                sd_bus_message_is_method_error(m, SD_BUS_ERROR_TIMEOUT)) &&
                (!sender || strcmp(sender, "org.freedesktop.DBus") == 0);
}

static int on_sync_reply(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        SyncCall *s = userdata;
        Conn *c = s->conn;
        size_t i = 0;
        void *v;

        if (reply_timed_out(m)) {
                send_sync(c, s->name, s->gen);
                return 0;
        }

        /* Everything the destination claimed before the death has reached us
         * (its Claims precede this reply): what remains orphaned never will. */
        while (hashmap_iterate(&c->receivers, &i, &v)) {
                ipcmux_receiver *rx = v;

                lifecycle_drop_orphans(rx->lc, s->name, s->gen);
        }
        receivers_changed_all(c);
        return 0;
}

static void sync_call_free(void *userdata) {
        SyncCall *s = userdata;

        free(s->name);
        free(s);
}

/* Barrier towards @dest for orphans of generation <= @gen. */
static void send_sync(Conn *c, const char *dest, uint64_t gen) {
        sd_bus_slot *slot = NULL;
        SyncCall *s;

        s = calloc(1, sizeof(*s));
        if (!s)
                return;
        s->conn = c;
        s->gen = gen;
        s->name = strdup(dest);
        if (!s->name ||
            sd_bus_call_method_async(c->bus, &slot, dest, IPCMUX_ROOT_PATH, IPCMUX_INTERFACE_PEER, "Sync",
                                     on_sync_reply, s, "") < 0) {
                sync_call_free(s);
                return;
        }
        sd_bus_slot_set_destroy_callback(slot, sync_call_free);
        sd_bus_slot_set_floating(slot, 1);
        sd_bus_slot_unref(slot);
}

static void peer_gone(Peer *p) {
        Conn *c = p->conn;
        uint64_t gen;
        Endpoint *ep, *tmp;
        size_t i = 0, j;
        void *v, *w;

        if (p->gone)
                return;
        p->gone = true;
        list_append(&c->peer_graveyard, &p->graveyard_link);
        gen = ++c->death_gen;
        log_debug("ipcmux: peer %s vanished", p->name);

        list_for_each_entry_safe(ep, tmp, &p->endpoints, peer_link) {
                endpoint_ref(ep);
                list_unlink(&ep->peer_link);
                if (list_is_linked(&ep->cap_link))
                        list_unlink(&ep->cap_link);
                ep->peer = NULL;
                endpoint_close(ep);
                endpoint_unref(ep);
        }
        while (hashmap_iterate(&c->receivers, &i, &v))
                receiver_peer_gone(v, p->name, gen);

        /* Copies the dead peer had sent may still be on their way to live
         * destinations: ask each such destination for a barrier. */
        j = 0;
        while (hashmap_iterate(&c->peers, &j, &w)) {
                Peer *q = w;
                bool needed = false;

                if (q->gone)
                        continue;
                i = 0;
                while (!needed && hashmap_iterate(&c->receivers, &i, &v))
                        needed = lifecycle_has_orphans_to(((ipcmux_receiver *) v)->lc, q->name);
                if (needed)
                        send_sync(c, q->name, gen);
        }
        receivers_changed_all(c);
}

static int on_name_owner_changed(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Peer *p = userdata;
        const char *name, *old, *new;

        if (sd_bus_message_read(m, "sss", &name, &old, &new) < 0)
                return 0;
        if (strcmp(name, p->name) == 0 && new[0] == 0)
                peer_gone(p);
        return 0;
}

static char *match_rule(const char *name) {
        char *rule;

        if (asprintf(&rule, "type='signal',sender='org.freedesktop.DBus',path='/org/freedesktop/DBus',"
                            "interface='org.freedesktop.DBus',member='NameOwnerChanged',arg0='%s'", name) < 0)
                return NULL;
        return rule;
}

static int on_get_name_owner(sd_bus_message *m, void *userdata, sd_bus_error *error);

static int check_owner(Peer *p) {
        return sd_bus_call_method_async(p->conn->bus, &p->check_slot, "org.freedesktop.DBus",
                                        "/org/freedesktop/DBus", "org.freedesktop.DBus", "GetNameOwner",
                                        on_get_name_owner, p, "s", p->name);
}

static int on_get_name_owner(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Peer *p = userdata;

        p->check_slot = sd_bus_slot_unref(p->check_slot);
        if (reply_timed_out(m)) {
                if (check_owner(p) < 0)
                        peer_gone(p);
        } else if (sd_bus_message_is_method_error(m, NULL))
                peer_gone(p);
        return 0;
}

static int on_match_installed(sd_bus_message *m, void *userdata, sd_bus_error *error);

/* The match slot stays (sd-bus filters by it); only the broker's side is
 * asked for again.  Should the first AddMatch have gone through after all,
 * the broker holds the rule twice and delivers each signal once; the
 * extra rule goes with the connection. */
static int add_match_again(Peer *p) {
        _cleanup_free_ char *rule = match_rule(p->name);

        if (!rule)
                return -ENOMEM;
        return sd_bus_call_method_async(p->conn->bus, &p->check_slot, "org.freedesktop.DBus",
                                        "/org/freedesktop/DBus", "org.freedesktop.DBus", "AddMatch",
                                        on_match_installed, p, "s", rule);
}

/* The reply to the match's AddMatch (or to add_match_again()'s). */
static int on_match_installed(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        Peer *p = userdata;

        p->check_slot = sd_bus_slot_unref(p->check_slot);
        if (reply_timed_out(m)) {
                if (add_match_again(p) < 0)
                        peer_gone(p);
                return 0;
        }
        if (sd_bus_message_is_method_error(m, NULL)) {
                /* Without the match we would never hear of the death; fail
                 * safe: treat the peer as gone rather than wait forever. */
                log_warning("ipcmux: cannot watch %s: %s", p->name, sd_bus_message_get_error(m)->message);
                peer_gone(p);
                return 0;
        }
        /* Subscribed first, checked second: no window in which a death goes unseen. */
        if (check_owner(p) < 0)
                peer_gone(p);
        return 0;
}

Peer *peer_find(Conn *c, const char *name) {
        return hashmap_get(&c->peers, name);
}

int peer_watch(Conn *c, const char *name, Peer **ret) {
        _cleanup_free_ char *rule = NULL;
        Peer *p;
        int r;

        if (c->unique_name && strcmp(name, c->unique_name) == 0) {
                *ret = NULL;
                return 0;
        }
        p = peer_find(c, name);
        if (p) {
                *ret = p;
                return 0;
        }
        if (name[0] != ':' || strlen(name) > 255)
                return -EINVAL;

        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->conn = c;
        p->tx_cap = PEER_CAP_BYTES;
        p->tx_cap_calls = PEER_CAP_CALLS;
        list_init(&p->endpoints);
        list_init(&p->cap_waiters);
        list_init(&p->graveyard_link);
        p->name = strdup(name);
        if (!p->name) {
                free(p);
                return -ENOMEM;
        }
        r = hashmap_put(&c->peers, p->name, p);
        if (r < 0) {
                free(p->name);
                free(p);
                return r;
        }
        rule = match_rule(name);
        if (!rule) {
                peer_free(p);
                return -ENOMEM;
        }
        r = sd_bus_add_match_async(c->bus, &p->match_slot, rule, on_name_owner_changed, on_match_installed, p);
        if (r < 0) {
                peer_free(p);
                return r;
        }
        *ret = p;
        return 0;
}

/* Runs after every dispatch step: it looks at the gone peers only (a scan
 * of all of them made a message cost 3.4x as much beside 3,000 idle peers). */
void peers_sweep(Conn *c) {
        while (!list_is_empty(&c->peer_graveyard))
                peer_free(list_first_entry(&c->peer_graveyard, Peer, graveyard_link));
}

void peers_free_all(Conn *c) {
        size_t i = 0;
        void *v;

        while (hashmap_iterate(&c->peers, &i, &v)) {
                peer_free(v);
                i = 0;
        }
}

/* GetConnectionCredentials, once per peer (cached until the peer goes). */
static int fetch_creds(Conn *c, const char *name, uint32_t *uid, uint32_t *pid) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int r;

        r = conn_call_driver(c, &reply, "GetConnectionCredentials", "s", name);
        if (r < 0)
                return r;
        if (sd_bus_message_is_method_error(reply, NULL))
                return -ESRCH;
        r = sd_bus_message_enter_container(reply, 'a', "{sv}");
        if (r < 0)
                return r;
        while ((r = sd_bus_message_enter_container(reply, 'e', "sv")) > 0) {
                const char *key;

                r = sd_bus_message_read_basic(reply, 's', &key);
                if (r < 0)
                        return r;
                if (strcmp(key, "UnixUserID") == 0)
                        r = sd_bus_message_read(reply, "v", "u", uid);
                else if (strcmp(key, "ProcessID") == 0)
                        r = sd_bus_message_read(reply, "v", "u", pid);
                else
                        r = sd_bus_message_skip(reply, "v");
                if (r < 0)
                        return r;
                r = sd_bus_message_exit_container(reply);
                if (r < 0)
                        return r;
        }
        return r < 0 ? r : 0;
}

_public_ int ipcmux_channel_get_peer_creds(ipcmux_channel *ch, const char *unique_name, uid_t *ret_uid, pid_t *ret_pid) {
        Conn *c;
        Peer *p;
        int r;

        assert_return(ch, -EINVAL);
        assert_return(unique_name && unique_name[0] == ':', -EINVAL);

        c = conn_ref(ch->conn);
        r = conn_enter(c);
        if (r < 0) {
                conn_unref(c);
                return r;
        }
        r = peer_watch(c, unique_name, &p);
        if (r >= 0 && !p) {
                /* Ourselves. */
                if (ret_uid)
                        *ret_uid = getuid();
                if (ret_pid)
                        *ret_pid = getpid();
                r = 0;
        } else if (r >= 0) {
                uint32_t uid = 0, pid = 0;

                if (p->gone)
                        r = -ESRCH;
                else if (!p->creds_known) {
                        /* The call dispatches: the peer may go meanwhile, look it up again. */
                        r = fetch_creds(c, unique_name, &uid, &pid);
                        p = peer_find(c, unique_name);
                        if (r >= 0 && (!p || p->gone))
                                r = -ESRCH;
                        if (r >= 0) {
                                p->uid = uid;
                                p->pid = pid;
                                p->creds_known = true;
                        }
                }
                if (r >= 0) {
                        if (ret_uid)
                                *ret_uid = (uid_t) p->uid;
                        if (ret_pid)
                                *ret_pid = (pid_t) p->pid;
                }
        }
        conn_unlock(c);
        conn_unref(c);
        return r;
}

/* ---- receipt acknowledgements (the per-peer cap) -------------------------- */

void peer_send_ack(Peer *p) {
        sd_bus_message *m = NULL;

        if (p->gone || (p->rx_bytes == p->rx_acked && p->rx_calls == p->rx_calls_acked))
                return;
        if (conn_new_call(p->conn, p->name, IPCMUX_ROOT_PATH, IPCMUX_INTERFACE_PEER, "Ack", &m) < 0)
                return;
        if (sd_bus_message_append(m, "tt", p->rx_bytes, p->rx_calls) < 0) {
                sd_bus_message_unref(m);
                return;
        }
        p->rx_acked = p->rx_bytes;
        p->rx_calls_acked = p->rx_calls;
        log_debug("ipcmux: %s: Ack to %s: %" PRIu64 " bytes, %" PRIu64 " calls", p->conn->unique_name, p->name,
                  p->rx_bytes, p->rx_calls);
        (void) conn_send_ctrl(p->conn, m);
}

void peer_received(Peer *p, uint64_t bytes) {
        p->rx_bytes += bytes;
        if (p->rx_bytes - p->rx_acked >= ACK_EVERY_BYTES)
                peer_send_ack(p);
}

/* More is waiting in our socket: we are behind the senders. */
static bool conn_behind(Conn *c) {
        int n = 0;

        return ioctl(sd_bus_get_fd(c->bus), FIONREAD, &n) >= 0 && n > 0;
}

void peer_received_call(Peer *p) {
        uint64_t n = ++p->rx_calls - p->rx_calls_acked;

        /* Behind, Ack often: the sender then keeps few calls in the bus
         * and batches the rest (see PEER_CAP_CALLS). */
        if (n >= ACK_EVERY_CALLS || (n % ACK_EVERY_CALLS_BEHIND == 0 && conn_behind(p->conn)))
                peer_send_ack(p);
}

