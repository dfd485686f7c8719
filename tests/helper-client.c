/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Helper process for the cross-process tests (fork+exec'd by them; public
 * API only).  argv[1] is the mode, argv[2] a one-shot server name of the
 * test process, the rest mode arguments.  Progress lines go to stdout so the
 * test can act at precise points (e.g. SIGKILL after "ready").
 */

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <ipcmux/ipcmux.h>

#include "util-bus.h"

#define CHECK(expr)                                                                     \
        do {                                                                            \
                int _r = (expr);                                                        \
                if (_r < 0) {                                                           \
                        fprintf(stderr, "helper: %s: %s\n", #expr, strerror(-_r));     \
                        exit(10);                                                       \
                }                                                                       \
        } while (0)

static void say(const char *line) {
        printf("%s\n", line);
        fflush(stdout);
}

static void block_forever(void) {
        for (;;)
                pause();
}

/* connect, send "first", then COUNT numbered messages, drop, exit. */
static int mode_send(const char *name, int argc, char **argv) {
        int count = argc > 0 ? atoi(argv[0]) : 0;
        ipcmux_sender *tx;
        char buf[64];

        CHECK(ipcmux_sender_connect(name, &tx));
        CHECK(ipcmux_sender_send_bytes(tx, "first", 5));
        for (int i = 0; i < count; i++) {
                int n = snprintf(buf, sizeof(buf), "msg-%d", i);
                CHECK(ipcmux_sender_send_bytes(tx, buf, (size_t) n));
        }
        ipcmux_sender_unref(tx);
        return 0;
}

/* connect and send "first" (or not, with "silent"), then say ready and hold the sender until killed. */
static int mode_hold(const char *name, int argc, char **argv) {
        bool silent = argc > 0 && strcmp(argv[0], "silent") == 0;
        ipcmux_sender *tx;

        CHECK(ipcmux_sender_connect(name, &tx));
        if (!silent)
                CHECK(ipcmux_sender_send_bytes(tx, "first", 5));
        say("ready");
        block_forever();
        return 0;
}

/* Connect, send "first" carrying a sender of our own subchannel, then serve
 * the test: "echo" sends every payload back through the connected sender;
 * "keep" retains every sender received and answers "ok" through each;
 * "stall" never reads. */
static int mode_serve(const char *name, int argc, char **argv) {
        const char *how = argc > 0 ? argv[0] : "echo";
        ipcmux_channel *ch;
        ipcmux_sender *tx, *mine_tx;
        ipcmux_receiver *mine_rx;
        ipcmux_message *m;
        ipcmux_sender **kept = NULL;
        size_t n_kept = 0;
        int r;

        CHECK(ipcmux_channel_new(&ch));
        CHECK(ipcmux_channel_sub_channel(ch, &mine_tx, &mine_rx));
        CHECK(ipcmux_sender_connect(name, &tx));
        CHECK(ipcmux_message_new(&m));
        CHECK(ipcmux_message_append(m, "first", 5));
        CHECK(ipcmux_message_attach_sender(m, mine_tx));
        CHECK(ipcmux_sender_send(tx, m));
        ipcmux_message_unref(m);
        mine_tx = ipcmux_sender_unref(mine_tx);
        say("ready");

        if (strcmp(how, "stall") == 0)
                block_forever();
        if (strcmp(how, "drop") == 0) {
                mine_rx = ipcmux_receiver_unref(mine_rx);
                say("dropped");
                block_forever();
        }

        while ((r = ipcmux_receiver_recv(mine_rx, &m)) >= 0) {
                size_t size;
                const void *p = ipcmux_message_get_data(m, &size);

                if (strcmp(how, "keep") == 0) {
                        ipcmux_sender *s;
                        for (unsigned i = 0; i < ipcmux_message_get_n_senders(m); i++) {
                                CHECK(ipcmux_message_take_sender(m, i, &s));
                                CHECK(ipcmux_sender_send_bytes(s, "ok", 2));
                                kept = realloc(kept, (n_kept + 1) * sizeof(*kept));
                                if (!kept)
                                        exit(11);
                                kept[n_kept++] = s;
                        }
                        if (size == 4 && memcmp(p, "fds?", 4) == 0) {
                                char buf[32];
                                int k = snprintf(buf, sizeof(buf), "fds=%d", test_count_fds());
                                CHECK(ipcmux_sender_send_bytes(tx, buf, (size_t) k));
                        }
                } else if (strcmp(how, "use") == 0) {
                        /* Send "used" through every sender received, then drop it. */
                        ipcmux_sender *s;
                        for (unsigned i = 0; i < ipcmux_message_get_n_senders(m); i++) {
                                CHECK(ipcmux_message_take_sender(m, i, &s));
                                CHECK(ipcmux_sender_send_bytes(s, "used", 4));
                                ipcmux_sender_unref(s);
                        }
                        CHECK(ipcmux_sender_send_bytes(tx, "done", 4));
                } else
                        CHECK(ipcmux_sender_send_bytes(tx, p, size));
                ipcmux_message_unref(m);
        }
        for (size_t i = 0; i < n_kept; i++)
                ipcmux_sender_unref(kept[i]);
        free(kept);
        ipcmux_sender_unref(tx);
        ipcmux_receiver_unref(mine_rx);
        ipcmux_channel_unref(ch);
        return r == -EPIPE ? 0 : 12;
}

/* Connect and flood until a send fails; report how it failed. */
static int mode_flood(const char *name, int argc, char **argv) {
        ipcmux_sender *tx;
        int r;

        CHECK(ipcmux_sender_connect(name, &tx));
        CHECK(ipcmux_sender_send_bytes(tx, "first", 5));
        say("ready");
        do
                r = ipcmux_sender_send_bytes(tx, "flood", 5);
        while (r >= 0);
        printf("send=%d\n", r);
        fflush(stdout);
        ipcmux_sender_unref(tx);
        return r == -EPIPE ? 0 : 13;
}

int main(int argc, char **argv) {
        if (argc < 3) {
                fprintf(stderr, "usage: helper-client MODE NAME [ARGS...]\n");
                return 2;
        }
        signal(SIGPIPE, SIG_IGN);
        if (strcmp(argv[1], "send") == 0)
                return mode_send(argv[2], argc - 3, argv + 3);
        if (strcmp(argv[1], "hold") == 0)
                return mode_hold(argv[2], argc - 3, argv + 3);
        if (strcmp(argv[1], "serve") == 0)
                return mode_serve(argv[2], argc - 3, argv + 3);
        if (strcmp(argv[1], "flood") == 0)
                return mode_flood(argv[2], argc - 3, argv + 3);
        fprintf(stderr, "unknown mode %s\n", argv[1]);
        return 2;
}
