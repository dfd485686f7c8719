/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* ipcmux_channel (see channel.h). */

#include <stdio.h>

#include "channel.h"
#include "endpoint.h"
#include "macro.h"
#include "receiver.h"

void hex_encode(const uint8_t *b, size_t n, char *out) {
        static const char digits[] = "0123456789abcdef";

        for (size_t i = 0; i < n; i++) {
                out[2 * i] = digits[b[i] >> 4];
                out[2 * i + 1] = digits[b[i] & 15];
        }
        out[2 * n] = 0;
}

static int unhex(char ch) {
        if (ch >= '0' && ch <= '9')
                return ch - '0';
        if (ch >= 'a' && ch <= 'f')
                return ch - 'a' + 10;
        return -1;
}

static int parse_id(const char *s, uint8_t id[PATH_ID_BYTES]) {
        for (unsigned i = 0; i < PATH_ID_BYTES; i++) {
                int hi = unhex(s[2 * i]), lo = hi < 0 ? -1 : unhex(s[2 * i + 1]);
                if (hi < 0 || lo < 0)
                        return -EINVAL;
                id[i] = (uint8_t) (hi << 4 | lo);
        }
        return s[PATH_ID_HEX] == 0 ? 0 : -EINVAL;
}

int channel_parse_receiver_path(const char *prefix, const char *path, uint8_t id[PATH_ID_BYTES]) {
        size_t n = strlen(prefix);

        if (strncmp(path, prefix, n) != 0 || path[n] != '/')
                return -EINVAL;
        return parse_id(path + n + 1, id);
}

int receiver_path_get_id(const char *path, uint8_t id[PATH_ID_BYTES]) {
        const char *slash = strrchr(path, '/');

        if (!slash || strlen(slash + 1) != PATH_ID_HEX)
                return -EINVAL;
        return parse_id(slash + 1, id);
}

/* Strict lookup: only live receivers of this channel exist. */
static int channel_find(sd_bus *bus, const char *path, const char *interface, void *userdata,
                        void **ret_found, sd_bus_error *error) {
        ipcmux_channel *ch = userdata;
        ipcmux_receiver *rx;
        uint8_t id[PATH_ID_BYTES];

        if (channel_parse_receiver_path(ch->prefix, path, id) < 0)
                return 0;
        rx = hashmap_get(&ch->conn->receivers, id);
        if (rx && rx->channel == ch && !rx->dropped) {
                *ret_found = rx;
                return 1;
        }
        /* A call for a receiver that is gone still has lifecycle meaning. */
        sd_bus_message *m = sd_bus_get_current_message(bus);
        if (m)
                receiver_handle_gone_call(ch->conn, m, path);
        return 0;
}

static int channel_enumerate(sd_bus *bus, const char *prefix, void *userdata, char ***ret_nodes,
                             sd_bus_error *error) {
        ipcmux_channel *ch = userdata;
        size_t n = 0, i = 0;
        char **l;
        void *v;

        l = calloc(ch->n_receivers + 1, sizeof(char *));
        if (!l)
                return -ENOMEM;
        while (hashmap_iterate(&ch->conn->receivers, &i, &v)) {
                ipcmux_receiver *rx = v;

                if (rx->channel != ch || rx->dropped || n >= ch->n_receivers)
                        continue;
                l[n] = strdup(rx->path);
                if (!l[n]) {
                        for (size_t k = 0; k < n; k++)
                                free(l[k]);
                        free(l);
                        return -ENOMEM;
                }
                n++;
        }
        *ret_nodes = l;
        return 0;
}

static int channel_new(Conn *c, ipcmux_channel **ret) {
        ipcmux_channel *ch;
        char hex[PATH_ID_HEX + 1];
        int r;

        ch = calloc(1, sizeof(*ch));
        if (!ch)
                return -ENOMEM;
        ch->n_ref = 1;
        list_init(&ch->link);
        random_bytes(ch->id, sizeof(ch->id));
        hex_encode(ch->id, sizeof(ch->id), hex);
        if (asprintf(&ch->prefix, "%s/%s", IPCMUX_ROOT_PATH, hex) < 0) {
                free(ch);
                return -ENOMEM;
        }

        conn_lock(c);
        r = sd_bus_add_fallback_vtable(c->bus, &ch->vtable_slot, ch->prefix, IPCMUX_INTERFACE_SUBCHANNEL,
                                       receiver_vtable, channel_find, ch);
        if (r >= 0)
                r = sd_bus_add_node_enumerator(c->bus, &ch->enumerator_slot, ch->prefix, channel_enumerate, ch);
        if (r < 0) {
                sd_bus_slot_unref(ch->vtable_slot);
                conn_unlock(c);
                free(ch->prefix);
                free(ch);
                return r;
        }
        ch->conn = conn_ref(c);
        list_append(&c->channels, &ch->link);
        c->n_channels++;
        conn_unlock(c);
        *ret = ch;
        return 0;
}

_public_ int ipcmux_channel_new(ipcmux_channel **ret) {
        Conn *c;
        int r;

        assert_return(ret, -EINVAL);

        r = conn_get_default(&c);
        if (r < 0)
                return r;
        r = channel_new(c, ret);
        conn_unref(c);
        return r;
}

_public_ int ipcmux_channel_new_for_bus(sd_bus *bus, ipcmux_channel **ret) {
        Conn *c;
        int r;

        assert_return(bus, -EINVAL);
        assert_return(ret, -EINVAL);

        r = conn_get_for_bus(bus, &c);
        if (r < 0)
                return r;
        r = channel_new(c, ret);
        conn_unref(c);
        return r;
}

_public_ ipcmux_channel *ipcmux_channel_ref(ipcmux_channel *ch) {
        if (ch)
                __atomic_add_fetch(&ch->n_ref, 1, __ATOMIC_RELAXED);
        return ch;
}

_public_ ipcmux_channel *ipcmux_channel_unref(ipcmux_channel *ch) {
        Conn *c;

        if (!ch || __atomic_sub_fetch(&ch->n_ref, 1, __ATOMIC_ACQ_REL) > 0)
                return NULL;
        c = ch->conn;
        if (conn_enter(c) < 0)
                return NULL;
        ch->vtable_slot = sd_bus_slot_unref(ch->vtable_slot);
        ch->enumerator_slot = sd_bus_slot_unref(ch->enumerator_slot);
        list_unlink(&ch->link);
        c->n_channels--;
        conn_unlock(c);
        free(ch->prefix);
        free(ch);
        conn_unref(c);
        return NULL;
}

_public_ int ipcmux_channel_sub_channel(ipcmux_channel *ch, ipcmux_sender **ret_tx, ipcmux_receiver **ret_rx) {
        ipcmux_receiver *rx;
        ipcmux_sender *tx;
        Conn *c;
        int r;

        assert_return(ch, -EINVAL);
        assert_return(ret_tx, -EINVAL);
        assert_return(ret_rx, -EINVAL);

        c = ch->conn;
        r = conn_enter(c);
        if (r < 0)
                return r;
        r = receiver_new(ch, &rx);
        if (r >= 0) {
                r = sender_new(rx->local_ep, &tx);
                if (r < 0) {
                        conn_unlock(c);
                        ipcmux_receiver_unref(rx);
                        return r;
                }
        }
        conn_unlock(c);
        if (r < 0)
                return r;
        *ret_tx = tx;
        *ret_rx = rx;
        return 0;
}

_public_ const char *ipcmux_channel_get_prefix(ipcmux_channel *ch) {
        return ch ? ch->prefix : NULL;
}

_public_ const char *ipcmux_channel_get_unique_name(ipcmux_channel *ch) {
        return ch ? ch->conn->unique_name : NULL;
}

_public_ sd_bus *ipcmux_channel_get_bus(ipcmux_channel *ch) {
        return ch ? ch->conn->bus : NULL;
}
