/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * One-shot servers: bootstrap a subchannel between two processes by name.
 *
 * Name format: "<server unique name><receiver path>#<32 hex token>", e.g.
 *   :1.42/org/ipcmux/0f…c1/8a…77#5e…d0
 *
 * The bus arbitrates who connects, so a busy server still refuses a second
 * client at once: the client claims the well-known name
 * "org.ipcmux.OneShot.t<token>" with DO_NOT_QUEUE.  Only the first claimant
 * gets it (the others get EXISTS: -EADDRINUSE from connect).  The server has
 * a match on that name's NameOwnerChanged, installed before server_new()
 * returns; the owner it sees become the subchannel's only holder.  The token
 * is never on the bus until claimed, so the name cannot be guessed or
 * pre-claimed from `busctl list`.
 */

#include <stdio.h>

#include "channel.h"
#include "endpoint.h"
#include "macro.h"
#include "peer.h"
#include "receiver.h"

#define ONESHOT_PREFIX "org.ipcmux.OneShot.t"

struct ipcmux_server {
        Conn *conn;
        ipcmux_channel *channel;
        ipcmux_sender *tx;              /* keeps the subchannel alive until claimed */
        ipcmux_receiver *rx;
        char *wkname;
        sd_bus_slot *match_slot;
        bool installed;
        int install_error;              /* < 0: the bus refused the match (or timed out) */
        char *client;
};

static int on_claimed(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        ipcmux_server *srv = userdata;
        const char *name, *old, *new;
        Peer *p;

        if (sd_bus_message_read(m, "sss", &name, &old, &new) < 0 || strcmp(name, srv->wkname) != 0)
                return 0;
        if (srv->client || !srv->rx || new[0] != ':')
                return 0;       /* one client only, ever */
        srv->client = strdup(new);
        if (!srv->client)
                return -ENOMEM;
        if (peer_watch(srv->conn, new, &p) < 0 || lifecycle_hold(srv->rx->lc, new, 1) < 0)
                return 0;
        if (p && p->gone)
                receiver_peer_gone(srv->rx, new, ++srv->conn->death_gen);
        /* From now on the client's hold alone keeps the subchannel open. */
        srv->tx = ipcmux_sender_unref(srv->tx);
        receiver_changed(srv->rx);
        return 0;
}

static int on_match_installed(sd_bus_message *m, void *userdata, sd_bus_error *error) {
        ipcmux_server *srv = userdata;

        srv->installed = true;
        if (sd_bus_message_is_method_error(m, NULL))
                srv->install_error = -sd_bus_message_get_errno(m) ?: -EIO;
        return 0;
}

static bool match_ready(void *userdata) {
        return ((ipcmux_server *) userdata)->installed;
}

static ipcmux_server *server_free(ipcmux_server *srv) {
        if (!srv)
                return NULL;
        srv->match_slot = sd_bus_slot_unref(srv->match_slot);
        ipcmux_sender_unref(srv->tx);
        ipcmux_receiver_unref(srv->rx);
        ipcmux_channel_unref(srv->channel);
        free(srv->wkname);
        free(srv->client);
        free(srv);
        return NULL;
}

_public_ int ipcmux_server_new_for_channel(ipcmux_channel *ch, ipcmux_server **ret, char **ret_name) {
        _cleanup_free_ char *rule = NULL, *name = NULL;
        ipcmux_server *srv;
        uint8_t token[16];
        char hex[33];
        Conn *c;
        int r;

        assert_return(ch, -EINVAL);
        assert_return(ret, -EINVAL);
        assert_return(ret_name, -EINVAL);

        srv = calloc(1, sizeof(*srv));
        if (!srv)
                return -ENOMEM;
        c = srv->conn = ch->conn;
        srv->channel = ipcmux_channel_ref(ch);
        r = ipcmux_channel_sub_channel(ch, &srv->tx, &srv->rx);
        if (r < 0) {
                server_free(srv);
                return r;
        }
        random_bytes(token, sizeof(token));
        hex_encode(token, sizeof(token), hex);
        if (asprintf(&srv->wkname, ONESHOT_PREFIX "%s", hex) < 0 ||
            asprintf(&name, "%s%s#%s", c->unique_name, srv->rx->path, hex) < 0 ||
            asprintf(&rule, "type='signal',sender='org.freedesktop.DBus',path='/org/freedesktop/DBus',"
                            "interface='org.freedesktop.DBus',member='NameOwnerChanged',arg0='%s'", srv->wkname) < 0) {
                srv->wkname = NULL;
                server_free(srv);
                return -ENOMEM;
        }

        r = conn_enter(c);
        if (r < 0) {
                server_free(srv);
                return r;
        }
        r = sd_bus_add_match_async(c->bus, &srv->match_slot, rule, on_claimed, on_match_installed, srv);
        /* The name must not be handed out before the bus would tell us of a claim. */
        if (r >= 0)
                r = conn_wait(c, match_ready, srv, UINT64_MAX);
        if (r >= 0 && srv->install_error < 0)
                r = srv->install_error;
        conn_unlock(c);
        if (r < 0) {
                server_free(srv);
                return r;
        }
        *ret = srv;
        *ret_name = TAKE_PTR(name);
        return 0;
}

_public_ int ipcmux_server_new(ipcmux_server **ret, char **ret_name) {
        ipcmux_channel *ch;
        int r;

        assert_return(ret, -EINVAL);
        assert_return(ret_name, -EINVAL);

        r = ipcmux_channel_new(&ch);
        if (r < 0)
                return r;
        r = ipcmux_server_new_for_channel(ch, ret, ret_name);
        ipcmux_channel_unref(ch);
        return r;
}

_public_ int ipcmux_server_accept_timeout(ipcmux_server *srv, uint64_t timeout_usec,
                                          ipcmux_receiver **ret_rx, ipcmux_message **ret_first) {
        ipcmux_message *first;
        int r;

        assert_return(srv, -EINVAL);
        assert_return(ret_rx, -EINVAL);
        assert_return(ret_first, -EINVAL);
        assert_return(srv->rx, -EALREADY);

        /* Until a client claims, the server's own sender keeps the
         * subchannel open; once claimed, a client that dies before its
         * first message leaves no holder: -EPIPE. */
        r = ipcmux_receiver_try_recv_timeout(srv->rx, timeout_usec, &first);
        if (r < 0)
                return r;
        *ret_rx = TAKE_PTR(srv->rx);
        *ret_first = first;
        return 0;
}

_public_ int ipcmux_server_accept(ipcmux_server *srv, ipcmux_receiver **ret_rx, ipcmux_message **ret_first) {
        return ipcmux_server_accept_timeout(srv, UINT64_MAX, ret_rx, ret_first);
}

_public_ ipcmux_server *ipcmux_server_unref(ipcmux_server *srv) {
        Conn *c;

        if (!srv)
                return NULL;
        c = conn_ref(srv->conn);
        if (conn_enter(c) < 0) {
                conn_unref(c);
                return NULL;
        }
        server_free(srv);
        conn_unlock(c);
        conn_unref(c);
        return NULL;
}

_public_ const char *ipcmux_server_get_name_owner(ipcmux_server *srv) {
        return srv ? srv->client : NULL;
}

/* ---- client side --------------------------------------------------------- */

static int parse_name(const char *name, char **ret_owner, char **ret_path, char **ret_token) {
        const char *slash = strchr(name, '/'), *hash = strrchr(name, '#');
        _cleanup_free_ char *owner = NULL, *path = NULL, *token = NULL;

        if (name[0] != ':' || !slash || !hash || hash < slash || strlen(hash + 1) != 32)
                return -EINVAL;
        owner = strndup(name, (size_t) (slash - name));
        path = strndup(slash, (size_t) (hash - slash));
        token = strdup(hash + 1);
        if (!owner || !path || !token)
                return -ENOMEM;
        if (!sd_bus_object_path_is_valid(path) || strspn(token, "0123456789abcdef") != 32)
                return -EINVAL;
        *ret_owner = TAKE_PTR(owner);
        *ret_path = TAKE_PTR(path);
        *ret_token = TAKE_PTR(token);
        return 0;
}

/* 0 when we became the owner of @name, -EADDRINUSE when anybody (we too)
 * owned it already: somebody connected already. */
static int bus_request_name(Conn *c, const char *name) {
        uint32_t result;
        int r = conn_request_name(c, name, &result);

        if (r < 0)
                return r;
        return result == 1 ? 0 : -EADDRINUSE;
}

static int bus_name_has_owner(Conn *c, const char *name) {
        _cleanup_(sd_bus_message_unrefp) sd_bus_message *reply = NULL;
        int r;

        r = conn_call_driver(c, &reply, "GetNameOwner", "s", name);
        if (r < 0)
                return r;
        if (!sd_bus_message_is_method_error(reply, NULL))
                return 1;
        /* Only that error says "no owner"; a timeout says nothing. */
        if (sd_bus_message_is_method_error(reply, "org.freedesktop.DBus.Error.NameHasNoOwner"))
                return 0;
        return -sd_bus_message_get_errno(reply) ?: -EIO;
}

_public_ int ipcmux_sender_connect_for_channel(ipcmux_channel *ch, const char *name, ipcmux_sender **ret) {
        _cleanup_free_ char *owner = NULL, *path = NULL, *token = NULL, *wkname = NULL;
        ipcmux_sender *s;
        Endpoint *ep;
        Conn *c;
        int r;

        assert_return(ch, -EINVAL);
        assert_return(name, -EINVAL);
        assert_return(ret, -EINVAL);

        r = parse_name(name, &owner, &path, &token);
        if (r < 0)
                return r;
        if (asprintf(&wkname, ONESHOT_PREFIX "%s", token) < 0)
                return -ENOMEM;

        c = conn_ref(ch->conn);
        r = conn_enter(c);
        if (r < 0)
                goto out;
        if (c->unique_name && strcmp(owner, c->unique_name) == 0) {
                /* Same connection: the bus cannot route to ourselves. */
                r = -EINVAL;
                goto unlock;
        }
        r = bus_name_has_owner(c, owner);
        if (r == 0)
                r = -ECONNREFUSED;
        if (r < 0)
                goto unlock;
        r = bus_request_name(c, wkname);
        if (r < 0)
                goto unlock;
        r = endpoint_get_remote(c, owner, path, &ep);
        if (r < 0)
                goto unlock;
        if (!ep->oneshot_name)
                ep->oneshot_name = TAKE_PTR(wkname);
        r = sender_new(ep, &s);
        endpoint_unref(ep);
        if (r >= 0)
                *ret = s;
unlock:
        conn_unlock(c);
out:
        conn_unref(c);
        return r;
}

_public_ int ipcmux_sender_connect(const char *name, ipcmux_sender **ret) {
        ipcmux_channel *ch;
        int r;

        assert_return(name, -EINVAL);
        assert_return(ret, -EINVAL);

        r = ipcmux_channel_new(&ch);
        if (r < 0)
                return r;
        r = ipcmux_sender_connect_for_channel(ch, name, ret);
        ipcmux_channel_unref(ch);
        return r;
}

_public_ int ipcmux_server_new_for_bus(sd_bus *bus, ipcmux_server **ret, char **ret_name) {
        ipcmux_channel *ch;
        int r;

        assert_return(bus, -EINVAL);
        assert_return(ret, -EINVAL);
        assert_return(ret_name, -EINVAL);

        r = ipcmux_channel_new_for_bus(bus, &ch);
        if (r < 0)
                return r;
        r = ipcmux_server_new_for_channel(ch, ret, ret_name);
        ipcmux_channel_unref(ch);
        return r;
}

_public_ int ipcmux_sender_connect_for_bus(sd_bus *bus, const char *name, ipcmux_sender **ret) {
        ipcmux_channel *ch;
        int r;

        assert_return(bus, -EINVAL);
        assert_return(name, -EINVAL);
        assert_return(ret, -EINVAL);

        r = ipcmux_channel_new_for_bus(bus, &ch);
        if (r < 0)
                return r;
        r = ipcmux_sender_connect_for_channel(ch, name, ret);
        ipcmux_channel_unref(ch);
        return r;
}
