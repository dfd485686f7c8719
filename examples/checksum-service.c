/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * A desktop service on the session bus: org.ipcmux.Example.Checksum.
 *
 * Many clients at once.  A client connects to the listener and says hello,
 * attaching a sender for replies; the service answers with a sender for a
 * subchannel of the client's own.  On that private subchannel the client
 * sends requests: a shared-memory region (no copy through the bus) plus a
 * reply sender; the service answers with the checksum and tells who asked
 * (unique name, uid, pid from the bus).  Runs on sd-event; the receive
 * handlers do all the work.
 *
 *   checksum-service [--clients N]    exit after N clients came and went
 */

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ipcmux/ipcmux.h>

#define SERVICE_NAME "org.ipcmux.Example.Checksum"

static ipcmux_channel *channel;
static sd_event *event;
static long clients_left = -1;          /* -1: serve forever */
static unsigned clients_active;

static uint64_t fnv1a(const uint8_t *p, size_t n) {
        uint64_t h = 0xcbf29ce484222325ull;

        for (size_t i = 0; i < n; i++)
                h = (h ^ p[i]) * 0x100000001b3ull;
        return h;
}

/* Reply through the sender the request carried (index 0). */
static void reply(ipcmux_message *request, const char *text) {
        ipcmux_sender *to_client = NULL;

        if (ipcmux_message_take_sender(request, 0, &to_client) < 0)
                return;         /* nobody to answer */
        (void) ipcmux_sender_send_bytes(to_client, text, strlen(text));
        ipcmux_sender_unref(to_client);
}

/* A request on a client's private subchannel. */
static void on_request(ipcmux_receiver *rx, ipcmux_message *m, int error, void *userdata) {
        char *client = userdata;
        ipcmux_shmem *region = NULL;
        char text[256];
        uid_t uid = 0;
        pid_t pid = 0;

        if (error == -EPIPE) {
                /* The client dropped its sender (or died): its session is over. */
                printf("service: client %s left\n", client);
                fflush(stdout);
                ipcmux_receiver_unref(rx);
                free(client);
                clients_active--;
                if (clients_left > 0)
                        clients_left--;
                if (clients_left == 0 && clients_active == 0)
                        sd_event_exit(event, 0);
                return;
        }
        if (ipcmux_message_take_shmem(m, 0, &region) < 0) {
                reply(m, "error: send a region");
                return;
        }
        (void) ipcmux_channel_get_peer_creds(channel, ipcmux_message_get_sender(m), &uid, &pid);
        snprintf(text, sizeof(text), "client %s (uid %u, pid %d): %zu bytes, fnv1a %016" PRIx64,
                 ipcmux_message_get_sender(m), (unsigned) uid, (int) pid, ipcmux_shmem_get_size(region),
                 fnv1a(ipcmux_shmem_get_data(region), ipcmux_shmem_get_size(region)));
        ipcmux_shmem_unref(region);
        reply(m, text);
}

/* "hello" on the listener: give the client a subchannel of its own. */
static void on_hello(ipcmux_receiver *rx, ipcmux_message *m, int error, void *userdata) {
        ipcmux_sender *session_tx = NULL, *to_client = NULL;
        ipcmux_receiver *session_rx = NULL;
        ipcmux_message *answer = NULL;
        char *client;

        if (error < 0 || ipcmux_message_take_sender(m, 0, &to_client) < 0)
                return;
        client = strdup(ipcmux_message_get_sender(m));
        if (!client || ipcmux_channel_sub_channel(channel, &session_tx, &session_rx) < 0 ||
            ipcmux_receiver_set_handler(session_rx, on_request, client) < 0 ||
            ipcmux_message_new(&answer) < 0 || ipcmux_message_append(answer, "welcome", 7) < 0 ||
            ipcmux_message_attach_sender(answer, session_tx) < 0 ||
            ipcmux_sender_send(to_client, answer) < 0) {
                fprintf(stderr, "service: cannot open a session for %s\n", client ? client : "?");
                ipcmux_receiver_unref(session_rx);
                free(client);
        } else {
                clients_active++;
                printf("service: client %s connected, session %s\n", client,
                       ipcmux_receiver_get_path(session_rx));
                fflush(stdout);
        }
        /* Only the copy we sent keeps the session open: the client's. */
        ipcmux_sender_unref(session_tx);
        ipcmux_sender_unref(to_client);
        ipcmux_message_unref(answer);
}

int main(int argc, char **argv) {
        ipcmux_listener *listener = NULL;
        sigset_t mask;
        int r;

        if (argc > 2 && strcmp(argv[1], "--clients") == 0)
                clients_left = strtol(argv[2], NULL, 10);

        sigemptyset(&mask);
        sigaddset(&mask, SIGTERM);
        sigaddset(&mask, SIGINT);
        sigprocmask(SIG_BLOCK, &mask, NULL);

        if ((r = sd_event_default(&event)) < 0 ||
            (r = sd_event_add_signal(event, NULL, SIGTERM, NULL, NULL)) < 0 ||
            (r = sd_event_add_signal(event, NULL, SIGINT, NULL, NULL)) < 0 ||
            (r = ipcmux_channel_new(&channel)) < 0 ||
            (r = ipcmux_channel_attach_event(channel, event, 0)) < 0) {
                fprintf(stderr, "service: setup: %s\n", strerror(-r));
                return EXIT_FAILURE;
        }
        r = ipcmux_listener_new(channel, SERVICE_NAME, &listener);
        if (r < 0) {
                fprintf(stderr, "service: cannot own %s: %s\n", SERVICE_NAME, strerror(-r));
                return EXIT_FAILURE;
        }
        r = ipcmux_receiver_set_handler(ipcmux_listener_get_receiver(listener), on_hello, NULL);
        if (r < 0)
                return EXIT_FAILURE;
        printf("service: %s ready as %s, listener %s\n", SERVICE_NAME, ipcmux_channel_get_unique_name(channel),
               ipcmux_receiver_get_path(ipcmux_listener_get_receiver(listener)));
        fflush(stdout);

        r = sd_event_loop(event);
        printf("service: served %" PRIu64 " clients, exiting\n", ipcmux_listener_get_n_clients(listener));
        ipcmux_listener_unref(listener);
        ipcmux_channel_detach_event(channel);
        ipcmux_channel_unref(channel);
        sd_event_unref(event);
        return r < 0 ? EXIT_FAILURE : EXIT_SUCCESS;
}
