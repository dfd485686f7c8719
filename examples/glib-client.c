/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * A GLib application (GMainLoop) using org.ipcmux.Example.Checksum.
 *
 * It connects to the service's listener, says hello with a sender for
 * replies, gets a private subchannel back, then sends REQUESTS regions (no
 * copy through the bus) from a GLib timeout, each with a reply sender.
 * Replies arrive in a receive handler run by the ipcmux GSource.
 *
 *   glib-client [REQUESTS]
 */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ipcmux/ipcmux-glib.h>

typedef struct Client {
        GMainLoop *loop;
        ipcmux_channel *channel;
        ipcmux_sender *session;         /* our private subchannel at the service */
        ipcmux_sender *reply_tx;
        ipcmux_receiver *reply_rx;
        int requests, sent, answered, status;
} Client;

static void finish(Client *cl, int status) {
        cl->status = status;
        g_main_loop_quit(cl->loop);
}

static gboolean send_request(gpointer userdata) {
        Client *cl = userdata;
        g_autofree char *text = g_strdup_printf("request %d from a GLib client", cl->sent);
        ipcmux_shmem *region = NULL;
        ipcmux_message *m = NULL;
        int r;

        r = ipcmux_shmem_new_from_bytes(text, strlen(text), &region);
        if (r >= 0)
                r = ipcmux_message_new(&m);
        if (r >= 0)
                r = ipcmux_message_attach_shmem(m, region);
        if (r >= 0)
                r = ipcmux_message_attach_sender(m, cl->reply_tx);
        if (r >= 0)
                r = ipcmux_sender_send(cl->session, m);
        ipcmux_message_unref(m);
        ipcmux_shmem_unref(region);
        if (r < 0) {
                fprintf(stderr, "glib-client: send: %s\n", strerror(-r));
                finish(cl, EXIT_FAILURE);
                return G_SOURCE_REMOVE;
        }
        return ++cl->sent < cl->requests ? G_SOURCE_CONTINUE : G_SOURCE_REMOVE;
}

static void on_reply(ipcmux_receiver *rx, ipcmux_message *m, int error, void *userdata) {
        Client *cl = userdata;
        size_t n;
        const char *p;

        if (error < 0) {
                fprintf(stderr, "glib-client: service went away\n");
                finish(cl, EXIT_FAILURE);
                return;
        }
        p = ipcmux_message_get_data(m, &n);
        if (!cl->session) {
                /* The answer to hello carries our private subchannel. */
                if (ipcmux_message_take_sender(m, 0, &cl->session) < 0) {
                        finish(cl, EXIT_FAILURE);
                        return;
                }
                printf("glib-client: %.*s, session at %s\n", (int) n, p, ipcmux_sender_get_path(cl->session));
                g_timeout_add(10, send_request, cl);
                return;
        }
        printf("glib-client: %.*s\n", (int) n, p);
        if (++cl->answered == cl->requests)
                finish(cl, EXIT_SUCCESS);
}

int main(int argc, char **argv) {
        Client cl = { .requests = argc > 1 ? atoi(argv[1]) : 3, .status = EXIT_FAILURE };
        ipcmux_sender *service = NULL;
        ipcmux_message *hello = NULL;
        GSource *source;
        int r;

        cl.loop = g_main_loop_new(NULL, FALSE);
        r = ipcmux_channel_new(&cl.channel);
        if (r >= 0)
                r = ipcmux_sender_connect_service(cl.channel, "org.ipcmux.Example.Checksum", NULL, &service);
        if (r < 0) {
                fprintf(stderr, "glib-client: cannot reach the service: %s\n", strerror(-r));
                return EXIT_FAILURE;
        }
        source = ipcmux_glib_source_new(cl.channel);
        if (!source) {
                fprintf(stderr, "glib-client: no GSource: %s\n", strerror(errno));
                return EXIT_FAILURE;
        }
        g_source_attach(source, NULL);

        r = ipcmux_channel_sub_channel(cl.channel, &cl.reply_tx, &cl.reply_rx);
        if (r >= 0)
                r = ipcmux_receiver_set_handler(cl.reply_rx, on_reply, &cl);
        if (r >= 0)
                r = ipcmux_message_new(&hello);
        if (r >= 0)
                r = ipcmux_message_append(hello, "hello", 5);
        if (r >= 0)
                r = ipcmux_message_attach_sender(hello, cl.reply_tx);
        if (r >= 0)
                r = ipcmux_sender_send(service, hello);
        ipcmux_message_unref(hello);
        if (r < 0) {
                fprintf(stderr, "glib-client: hello: %s\n", strerror(-r));
                return EXIT_FAILURE;
        }

        g_main_loop_run(cl.loop);

        ipcmux_sender_unref(cl.session);        /* ends our session at the service */
        ipcmux_sender_unref(service);
        ipcmux_sender_unref(cl.reply_tx);
        ipcmux_receiver_unref(cl.reply_rx);
        g_source_destroy(source);
        g_source_unref(source);
        ipcmux_channel_unref(cl.channel);
        g_main_loop_unref(cl.loop);
        return cl.status;
}
