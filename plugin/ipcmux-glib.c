/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * libipcmux-glib: a GSource over the public loop quartet (see
 * ipcmux-glib.h), following dbus-platform.md §4: re-read the events in
 * prepare, ready time from the absolute timeout (GLib and sd-bus share
 * CLOCK_MONOTONIC microseconds), bounded work per dispatch.
 */

#include <errno.h>
#include <poll.h>
#include <string.h>

#include "ipcmux/ipcmux-glib.h"

#define _public_ __attribute__((visibility("default")))

/* ipcmux_channel_process() steps per dispatch before yielding to other sources. */
#define DISPATCH_BUDGET 64

typedef struct IpcmuxSource {
        GSource source;         /* must be first */
        ipcmux_channel *channel;
        gpointer tag;
} IpcmuxSource;

static gboolean source_prepare(GSource *s, gint *timeout) {
        IpcmuxSource *src = (IpcmuxSource *) s;
        uint64_t until = UINT64_MAX;

        *timeout = -1;
        /* Also refreshes whether the fd reports POLLOUT (output waiting). */
        if (ipcmux_channel_get_events(src->channel) < 0)
                return TRUE;    /* let dispatch see the error */
        if (ipcmux_channel_get_timeout(src->channel, &until) < 0)
                return TRUE;
        if (until == 0)
                return TRUE;
        g_source_set_ready_time(s, until == UINT64_MAX ? -1 : (gint64) until);
        return FALSE;
}

static gboolean source_dispatch(GSource *s, GSourceFunc callback, gpointer userdata) {
        IpcmuxSource *src = (IpcmuxSource *) s;

        for (unsigned i = 0; i < DISPATCH_BUDGET; i++) {
                int r = ipcmux_channel_process(src->channel);
                if (r == -ECONNRESET)
                        return G_SOURCE_REMOVE; /* the bus is gone: calls report it */
                if (r <= 0)
                        break;
        }
        return G_SOURCE_CONTINUE;
}

static void source_finalize(GSource *s) {
        IpcmuxSource *src = (IpcmuxSource *) s;

        src->channel = ipcmux_channel_unref(src->channel);
}

/* The source's callback data goes away exactly once, when it is destroyed
 * (or finalized unattached): that is when the driver slot frees, even if
 * the application still holds references to the GSource. */
static gboolean no_callback(gpointer userdata) {
        return G_SOURCE_CONTINUE;
}

static void on_source_destroyed(gpointer userdata) {
        ipcmux_channel *c = userdata;

        (void) ipcmux_channel_detach_loop(c);
        ipcmux_channel_unref(c);
}

static GSourceFuncs source_funcs = {
        .prepare = source_prepare,
        .dispatch = source_dispatch,
        .finalize = source_finalize,
};

_public_ GSource *ipcmux_glib_source_new(ipcmux_channel *c) {
        IpcmuxSource *src;
        int fd, r;

        if (!c) {
                errno = EINVAL;
                return NULL;
        }
        r = ipcmux_channel_attach_loop(c);
        if (r < 0) {
                errno = -r;
                return NULL;
        }
        fd = ipcmux_channel_get_fd(c);
        if (fd < 0) {
                (void) ipcmux_channel_detach_loop(c);
                errno = -fd;
                return NULL;
        }
        src = (IpcmuxSource *) g_source_new(&source_funcs, sizeof(IpcmuxSource));
        src->channel = ipcmux_channel_ref(c);
        src->tag = g_source_add_unix_fd(&src->source, fd, G_IO_IN | G_IO_HUP | G_IO_ERR);
        g_source_set_callback(&src->source, no_callback, ipcmux_channel_ref(c), on_source_destroyed);
        g_source_set_name(&src->source, "ipcmux");
        return &src->source;
}

_public_ int ipcmux_glib_send_variant(ipcmux_sender *s, GVariant *value) {
        ipcmux_message *m = NULL;
        const char *type;
        gsize size;
        int r;

        if (!s || !value)
                return -EINVAL;
        type = g_variant_get_type_string(value);
        size = g_variant_get_size(value);
        r = ipcmux_message_new(&m);
        if (r < 0)
                return r;
        r = ipcmux_message_append(m, type, strlen(type) + 1);
        if (r >= 0 && size > 0) {
                /* Normal form, so a peer that checks gets exactly this value. */
                g_autoptr(GVariant) normal = g_variant_get_normal_form(value);
                r = ipcmux_message_append(m, g_variant_get_data(normal), g_variant_get_size(normal));
        }
        if (r >= 0)
                r = ipcmux_sender_send(s, m);
        ipcmux_message_unref(m);
        return r;
}

_public_ GVariant *ipcmux_glib_message_get_variant(ipcmux_message *m, const GVariantType *type) {
        const char *data, *nul;
        size_t size;
        GBytes *bytes;
        GVariant *v;

        if (!m || !type) {
                errno = EINVAL;
                return NULL;
        }
        data = ipcmux_message_get_data(m, &size);
        nul = memchr(data, 0, size);
        if (!nul || !g_variant_type_string_is_valid(data) ||
            !g_variant_type_equal(G_VARIANT_TYPE(data), type)) {
                errno = EBADMSG;
                return NULL;
        }
        /* Untrusted bytes: GLib validates them lazily and never reads out of bounds. */
        bytes = g_bytes_new(nul + 1, size - (size_t) (nul + 1 - data));
        v = g_variant_ref_sink(g_variant_new_from_bytes(type, bytes, FALSE));
        g_bytes_unref(bytes);
        /* Senders send normal form; anything else is not a value of @type
         * (GLib would silently read defaults out of garbage). */
        if (!g_variant_is_normal_form(v)) {
                g_variant_unref(v);
                errno = EBADMSG;
                return NULL;
        }
        return v;
}
