/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Listeners: a multi-client service endpoint (the reference's one-shot
 * server takes a single client; a listener takes clients until closed).
 *
 * A listener is a receiver registered under a name in its connection; when
 * the name is a well-known bus name, ipcmux also owns it on the bus.  A
 * client calls org.ipcmux.Peer1.Connect(name) on the service (addressed by
 * that bus name); the service grants the caller one hold on the listener's
 * subchannel and replies with its path.  Every message then tells which
 * client sent it (ipcmux_message_get_sender()); clients attach senders for
 * replies.  Closing the listener tells every client (Closed): their sends
 * fail with -EPIPE.
 */

#include <stdio.h>

#include "channel.h"
#include "endpoint.h"
#include "macro.h"
#include "peer.h"
#include "receiver.h"

struct ipcmux_listener {
        Conn *conn;
        char *name;
        ipcmux_sender *tx;              /* keeps the subchannel open between clients */
        ipcmux_receiver *rx;
        bool bus_name_owned;
        uint64_t n_clients;
};

ipcmux_listener *listener_find(Conn *c, const char *name) {
        return hashmap_get(&c->listeners, name);
}

/* 0 when @name is ours (now or already), -EEXIST when another owns it. */
static int request_bus_name(Conn *c, const char *name) {
        uint32_t result;
        int r = conn_request_name(c, name, &result);

        if (r < 0)
                return r;
        return result == 1 || result == 4 ? 0 : -EEXIST;
}

_public_ int ipcmux_listener_new(ipcmux_channel *ch, const char *name, ipcmux_listener **ret) {
        ipcmux_listener *l;
        Conn *c;
        int r;

        assert_return(ch, -EINVAL);
        assert_return(name && name[0] && strlen(name) < 256, -EINVAL);
        assert_return(ret, -EINVAL);

        l = calloc(1, sizeof(*l));
        if (!l)
                return -ENOMEM;
        l->name = strdup(name);
        if (!l->name) {
                free(l);
                return -ENOMEM;
        }
        r = ipcmux_channel_sub_channel(ch, &l->tx, &l->rx);
        if (r < 0) {
                free(l->name);
                free(l);
                return r;
        }
        c = l->conn = conn_ref(ch->conn);
        r = conn_enter(c);
        if (r < 0)
                goto fail;
        if (listener_find(c, name))
                r = -EEXIST;
        else if (sd_bus_service_name_is_valid(name) > 0 && name[0] != ':') {
                r = request_bus_name(c, name);
                l->bus_name_owned = r >= 0;
        }
        if (r >= 0)
                r = hashmap_put(&c->listeners, l->name, l);
        if (r < 0 && l->bus_name_owned)
                (void) sd_bus_release_name_async(c->bus, NULL, name, NULL, NULL);
        conn_unlock(c);
        if (r < 0)
                goto fail;
        *ret = l;
        return 0;
fail:
        ipcmux_sender_unref(l->tx);
        ipcmux_receiver_unref(l->rx);
        conn_unref(l->conn);
        free(l->name);
        free(l);
        return r;
}

_public_ ipcmux_receiver *ipcmux_listener_get_receiver(ipcmux_listener *l) {
        return l ? l->rx : NULL;
}

_public_ uint64_t ipcmux_listener_get_n_clients(ipcmux_listener *l) {
        return l ? l->n_clients : 0;
}

_public_ ipcmux_listener *ipcmux_listener_unref(ipcmux_listener *l) {
        Conn *c;

        if (!l)
                return NULL;
        c = l->conn;
        if (conn_enter(c) >= 0) {
                hashmap_remove(&c->listeners, l->name);
                if (l->bus_name_owned && c->error >= 0)
                        (void) sd_bus_release_name_async(c->bus, NULL, l->name, NULL, NULL);
                ipcmux_sender_unref(l->tx);
                ipcmux_receiver_unref(l->rx);     /* every client is told Closed */
                conn_unlock(c);
        }
        conn_unref(c);
        free(l->name);
        free(l);
        return NULL;
}

/* org.ipcmux.Peer1.Connect(s name) -> (o path), on the service's /org/ipcmux. */
int listener_method_connect(sd_bus_message *m, Conn *c, sd_bus_error *error) {
        const char *name, *sender = sd_bus_message_get_sender(m);
        ipcmux_listener *l;
        Peer *p;
        int r;

        r = sd_bus_message_read_basic(m, 's', &name);
        if (r < 0)
                return r;
        l = listener_find(c, name);
        if (!l || !l->rx || l->rx->dropped)
                return sd_bus_error_setf(error, "org.ipcmux.Error.NoSuchListener", "No listener '%s'", name);
        if (!sender)
                return sd_bus_error_set(error, SD_BUS_ERROR_ACCESS_DENIED, "Anonymous caller");
        /* Watch first: a client that dies drops its hold like any holder. */
        r = peer_watch(c, sender, &p);
        if (r < 0)
                return r;
        r = lifecycle_hold(l->rx->lc, sender, 1);
        if (r < 0)
                return r;
        l->n_clients++;
        return sd_bus_reply_method_return(m, "o", l->rx->path);
}

/* ---- client side --------------------------------------------------------- */

_public_ int ipcmux_sender_connect_service(ipcmux_channel *ch, const char *service, const char *name,
                                           ipcmux_sender **ret) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *m = NULL, *reply = NULL;
        const char *path, *owner;
        ipcmux_sender *s;
        Endpoint *ep;
        Conn *c;
        int r;

        assert_return(ch, -EINVAL);
        assert_return(service, -EINVAL);
        assert_return(ret, -EINVAL);
        if (!name)
                name = service;

        c = conn_ref(ch->conn);
        r = conn_enter(c);
        if (r < 0) {
                conn_unref(c);
                return r;
        }
        r = sd_bus_message_new_method_call(c->bus, &m, service, IPCMUX_ROOT_PATH, IPCMUX_INTERFACE_PEER, "Connect");
        if (r >= 0)
                r = sd_bus_message_append_basic(m, 's', name);
        if (r >= 0)
                r = conn_call(c, m, 0, &reply);
        if (r < 0)
                goto out;
        if (sd_bus_message_is_method_error(reply, NULL)) {
                const sd_bus_error *e = sd_bus_message_get_error(reply);
                r = sd_bus_error_has_name(e, "org.ipcmux.Error.NoSuchListener") ? -ENOENT :
                        (-sd_bus_message_get_errno(reply) ?: -ECONNREFUSED);
                goto out;
        }
        owner = sd_bus_message_get_sender(reply);
        r = sd_bus_message_read_basic(reply, 'o', &path);
        if (r < 0)
                goto out;
        if (!owner) {
                r = -EPROTO;
                goto out;
        }
        r = endpoint_get_remote(c, owner, path, &ep);
        if (r < 0)
                goto out;
        /* The service granted us one hold: this sender object stands for it. */
        r = sender_new(ep, &s);
        endpoint_unref(ep);
        if (r >= 0)
                *ret = s;
out:
        conn_unlock(c);
        conn_unref(c);
        return r;
}
