/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Helper process for tests/test-regions.cc and test-regions-big.cc
 * (fork+exec'd by them; public API only).
 *
 *   helper-regions serve NAME
 *       Connect to the test's one-shot server NAME, send "first" carrying a
 *       sender of our own subchannel, then serve messages arriving on that
 *       subchannel until it is disconnected (exit 0).  Small payloads
 *       starting with '!' are commands (below); anything else is data and is
 *       answered on the server's subchannel with a report (see report()).
 *
 *   helper-regions quota
 *       Run a one-shot server, print its name, accept, print "accepted", then
 *       only dispatch the connection (queued messages stay queued) until
 *       signalled: SIGUSR1 prints "fds=N"; SIGUSR2 receives and drops every
 *       queued message and prints "drained K bad=B fds=N".  The test runs it
 *       unprivileged with a low RLIMIT_NOFILE (the fd budget is a quarter).
 *
 * Commands (payload "!cmd args"):
 *   !echo                 send back the attached regions and fds (payload "echo")
 *   !regions K SIZE SEED  one message with K regions, region j = pattern(SEED + j)
 *   !many N SIZE          through attached sender 0: N messages "m<i>" with one
 *                         region of SIZE bytes of (i & 0xff); drop that sender
 *                         (flushes), then answer "sent N fds=<our fd count>"
 *   !big SIZE SEED HOW    a payload of SIZE bytes of pattern(SEED), sent with
 *                         ipcmux_sender_send_bytes (HOW=bytes) or built with
 *                         ipcmux_message_append in 7 MiB pieces (HOW=append)
 *   !bigregion SIZE SEED  one region of SIZE bytes of pattern(SEED), payload "bigregion"
 *   !pipe                 write "through the pipe" into attached fd 0, close it,
 *                         answer "written"
 *   !truncate             try to shrink and to grow every attached region's fd
 *                         with ftruncate(); answer "truncate=" + per region
 *                         "EPERM" (all refused), "OK" (one worked) or the error
 *   !fds                  answer "fds=<our fd count>"
 *   !zero K               K zero-length regions, payload "zero"
 *   !hold                 keep this message (its region 0) and answer "held"
 *   !check                answer "held <size>:<sum>" of the kept region 0, then
 *                         drop it (the region pool test: its bytes must not
 *                         have changed meanwhile)
 *
 * Data messages: attached senders are each used once to send "via-sender"
 * with a region "region via sender", then dropped; the report is
 *   "size=<payload size> sum=<sum> regions=<k>[ <size>:<sum>]... fds=<n> senders=<n> ro=<0|1>"
 * with sums from sum64() below (same code in the tests), ro=1 iff every
 * received region is read-only.
 */

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
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
                        fprintf(stderr, "helper-regions: %s: %s\n", #expr, strerror(-_r)); \
                        exit(10);                                                       \
                }                                                                       \
        } while (0)

/* ---- shared with the tests (keep identical) ------------------------------ */

static uint64_t sum64(const void *p, size_t n) {
        const uint8_t *b = p;
        uint64_t h = UINT64_C(0xcbf29ce484222325) ^ n;
        size_t i = 0;

        for (; i + 8 <= n; i += 8) {
                uint64_t w;
                memcpy(&w, b + i, 8);
                h = (h ^ w) * UINT64_C(0x100000001b3);
                h ^= h >> 29;
        }
        for (; i < n; i++)
                h = (h ^ b[i]) * UINT64_C(0x100000001b3);
        return h;
}

/* Bytes [off, off + n) of the pattern stream @seed (never starts with '!'). */
static uint64_t pattern_word(uint64_t idx, uint64_t seed) {
        uint64_t w = idx * UINT64_C(0x9e3779b97f4a7c15) + seed * UINT64_C(0xbf58476d1ce4e5b9);

        return w ^ (w >> 31);
}

static uint8_t pattern_byte(size_t k, uint64_t seed) {
        uint8_t v = (uint8_t) (pattern_word(k / 8, seed) >> (8 * (k % 8)));

        return k == 0 && v == '!' ? '?' : v;
}

static void pattern_fill(void *p, size_t n, uint64_t seed, size_t off) {
        uint8_t *b = p;
        size_t i = 0;

        for (; i < n && ((off + i) % 8 != 0 || off + i == 0); i++)
                b[i] = pattern_byte(off + i, seed);
        for (; i + 8 <= n; i += 8) {
                uint64_t w = pattern_word((off + i) / 8, seed);
                uint8_t le[8];
                for (unsigned j = 0; j < 8; j++)
                        le[j] = (uint8_t) (w >> (8 * j));
                memcpy(b + i, le, 8);
        }
        for (; i < n; i++)
                b[i] = pattern_byte(off + i, seed);
}

/* ---------------------------------------------------------------------------- */

static void say(const char *line) {
        printf("%s\n", line);
        fflush(stdout);
}

static ipcmux_shmem *pattern_region(size_t size, uint64_t seed) {
        ipcmux_shmem *s;

        CHECK(ipcmux_shmem_new(size, &s));
        if (size > 0)
                pattern_fill(ipcmux_shmem_get_mutable_data(s), size, seed, 0);
        return s;
}

static void send_text(ipcmux_sender *tx, const char *text) {
        CHECK(ipcmux_sender_send_bytes(tx, text, strlen(text)));
}

/* Growable string. */
typedef struct Buf {
        char *p;
        size_t n, cap;
} Buf;

static void buf_printf(Buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void buf_printf(Buf *b, const char *fmt, ...) {
        va_list ap;
        int k;

        for (;;) {
                va_start(ap, fmt);
                k = vsnprintf(b->p ? b->p + b->n : NULL, b->p ? b->cap - b->n : 0, fmt, ap);
                va_end(ap);
                if (k < 0)
                        exit(11);
                if (b->p && b->n + (size_t) k < b->cap)
                        break;
                b->cap = (b->cap + (size_t) k + 1) * 2;
                b->p = realloc(b->p, b->cap);
                if (!b->p)
                        exit(11);
        }
        b->n += (size_t) k;
}

static void report(ipcmux_sender *tx, ipcmux_message *m) {
        unsigned nr = ipcmux_message_get_n_shmem(m);
        size_t size;
        const void *p = ipcmux_message_get_data(m, &size);
        bool ro = true;
        Buf b = {};

        buf_printf(&b, "size=%zu sum=%016" PRIx64 " regions=%u", size, sum64(p, size), nr);
        for (unsigned i = 0; i < nr; i++) {
                ipcmux_shmem *s;

                CHECK(ipcmux_message_take_shmem(m, i, &s));
                buf_printf(&b, " %zu:%016" PRIx64, ipcmux_shmem_get_size(s),
                           sum64(ipcmux_shmem_get_data(s), ipcmux_shmem_get_size(s)));
                if (ipcmux_shmem_get_mutable_data(s))
                        ro = false;
                ipcmux_shmem_unref(s);
        }
        buf_printf(&b, " fds=%u senders=%u ro=%d", ipcmux_message_get_n_fds(m),
                   ipcmux_message_get_n_senders(m), ro ? 1 : 0);
        CHECK(ipcmux_sender_send_bytes(tx, b.p, b.n));
        free(b.p);
}

static void use_senders(ipcmux_message *m) {
        for (unsigned i = 0; i < ipcmux_message_get_n_senders(m); i++) {
                static const char text[] = "region via sender";
                ipcmux_sender *s;
                ipcmux_shmem *r;
                ipcmux_message *out;

                CHECK(ipcmux_message_take_sender(m, i, &s));
                CHECK(ipcmux_shmem_new_from_bytes(text, sizeof(text) - 1, &r));
                CHECK(ipcmux_message_new(&out));
                CHECK(ipcmux_message_append(out, "via-sender", 10));
                CHECK(ipcmux_message_attach_shmem(out, r));
                CHECK(ipcmux_sender_send(s, out));
                ipcmux_message_unref(out);
                ipcmux_shmem_unref(r);
                ipcmux_sender_unref(s);
        }
}

static void cmd_echo(ipcmux_sender *tx, ipcmux_message *m) {
        ipcmux_message *out;

        CHECK(ipcmux_message_new(&out));
        CHECK(ipcmux_message_append(out, "echo", 4));
        for (unsigned i = 0; i < ipcmux_message_get_n_shmem(m); i++) {
                ipcmux_shmem *s;

                CHECK(ipcmux_message_take_shmem(m, i, &s));
                CHECK(ipcmux_message_attach_shmem(out, s));
                ipcmux_shmem_unref(s);
        }
        for (unsigned i = 0; i < ipcmux_message_get_n_fds(m); i++) {
                int fd;

                CHECK(ipcmux_message_take_fd(m, i, &fd));
                CHECK(ipcmux_message_attach_fd(out, fd));
                close(fd);
        }
        CHECK(ipcmux_sender_send(tx, out));
        ipcmux_message_unref(out);
}

static void cmd_regions(ipcmux_sender *tx, unsigned k, size_t size, uint64_t seed) {
        ipcmux_message *out;

        CHECK(ipcmux_message_new(&out));
        CHECK(ipcmux_message_append(out, "regions", 7));
        for (unsigned j = 0; j < k; j++) {
                ipcmux_shmem *s = pattern_region(size, seed + j);

                CHECK(ipcmux_message_attach_shmem(out, s));
                ipcmux_shmem_unref(s);
        }
        CHECK(ipcmux_sender_send(tx, out));
        ipcmux_message_unref(out);
}

static void cmd_many(ipcmux_sender *tx, ipcmux_message *m, unsigned n, size_t size) {
        ipcmux_sender *data;
        char buf[64];

        CHECK(ipcmux_message_take_sender(m, 0, &data));
        for (unsigned i = 0; i < n; i++) {
                ipcmux_message *out;
                ipcmux_shmem *s;
                int k = snprintf(buf, sizeof(buf), "m%u", i);

                CHECK(ipcmux_shmem_new_from_byte((uint8_t) (i & 0xff), size, &s));
                CHECK(ipcmux_message_new(&out));
                CHECK(ipcmux_message_append(out, buf, (size_t) k));
                CHECK(ipcmux_message_attach_shmem(out, s));
                CHECK(ipcmux_sender_send(data, out));
                ipcmux_message_unref(out);
                ipcmux_shmem_unref(s);
        }
        /* The last reference flushes what was sent before releasing. */
        ipcmux_sender_unref(data);
        snprintf(buf, sizeof(buf), "sent %u fds=%d", n, test_count_fds());
        send_text(tx, buf);
}

static void cmd_big(ipcmux_sender *tx, size_t size, uint64_t seed, const char *how) {
        if (strcmp(how, "bytes") == 0) {
                uint8_t *p = malloc(size ? size : 1);

                if (!p)
                        exit(11);
                pattern_fill(p, size, seed, 0);
                CHECK(ipcmux_sender_send_bytes(tx, p, size));
                free(p);
        } else {
                const size_t piece = 7u << 20;
                uint8_t *p = malloc(piece);
                ipcmux_message *out;

                if (!p)
                        exit(11);
                CHECK(ipcmux_message_new(&out));
                for (size_t off = 0; off < size; off += piece) {
                        size_t k = size - off < piece ? size - off : piece;

                        pattern_fill(p, k, seed, off);
                        CHECK(ipcmux_message_append(out, p, k));
                }
                free(p);
                CHECK(ipcmux_sender_send(tx, out));
                ipcmux_message_unref(out);
        }
}

static void cmd_pipe(ipcmux_sender *tx, ipcmux_message *m) {
        static const char text[] = "through the pipe";
        int fd;

        CHECK(ipcmux_message_take_fd(m, 0, &fd));
        if (write(fd, text, sizeof(text) - 1) != (ssize_t) sizeof(text) - 1)
                exit(12);
        close(fd);
        send_text(tx, "written");
}

static void cmd_truncate(ipcmux_sender *tx, ipcmux_message *m) {
        Buf b = {};

        buf_printf(&b, "truncate=");
        for (unsigned i = 0; i < ipcmux_message_get_n_shmem(m); i++) {
                ipcmux_shmem *s;

                size_t size;
                int fd, e = EPERM;

                CHECK(ipcmux_message_take_shmem(m, i, &s));
                size = ipcmux_shmem_get_size(s);
                fd = ipcmux_shmem_get_fd(s);
                /* Shrink (if there is anything to shrink) and grow: both must fail. */
                if (size > 0 && ftruncate(fd, (off_t) (size / 2)) == 0)
                        e = 0;
                else if (size > 0 && errno != EPERM)
                        e = errno;
                if (ftruncate(fd, (off_t) (size + 4096)) == 0)
                        e = 0;
                else if (errno != EPERM)
                        e = errno;
                buf_printf(&b, "%s%s", i ? "," : "", e == 0 ? "OK" : e == EPERM ? "EPERM" : strerror(e));
                /* The mapping is still whole: read every page. */
                (void) sum64(ipcmux_shmem_get_data(s), ipcmux_shmem_get_size(s));
                ipcmux_shmem_unref(s);
        }
        CHECK(ipcmux_sender_send_bytes(tx, b.p, b.n));
        free(b.p);
}

static int mode_serve(const char *name) {
        ipcmux_channel *ch;
        ipcmux_sender *tx, *mine_tx;
        ipcmux_receiver *mine_rx;
        ipcmux_message *m;
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

        ipcmux_shmem *held = NULL;

        while ((r = ipcmux_receiver_recv(mine_rx, &m)) >= 0) {
                size_t size;
                const char *p = ipcmux_message_get_data(m, &size);
                char cmd[256] = "";
                char how[32] = "";
                unsigned long long a = 0, b = 0, c = 0;

                if (size > 0 && size < sizeof(cmd) && p[0] == '!') {
                        memcpy(cmd, p, size);
                        cmd[size] = 0;
                }
                if (!cmd[0]) {
                        use_senders(m);
                        report(tx, m);
                } else if (strcmp(cmd, "!echo") == 0)
                        cmd_echo(tx, m);
                else if (sscanf(cmd, "!regions %llu %llu %llu", &a, &b, &c) == 3)
                        cmd_regions(tx, (unsigned) a, (size_t) b, c);
                else if (sscanf(cmd, "!many %llu %llu", &a, &b) == 2)
                        cmd_many(tx, m, (unsigned) a, (size_t) b);
                else if (sscanf(cmd, "!big %llu %llu %31s", &a, &b, how) == 3)
                        cmd_big(tx, (size_t) a, b, how);
                else if (sscanf(cmd, "!bigregion %llu %llu", &a, &b) == 2)
                        cmd_regions(tx, 1, (size_t) a, b);
                else if (strcmp(cmd, "!pipe") == 0)
                        cmd_pipe(tx, m);
                else if (strcmp(cmd, "!truncate") == 0)
                        cmd_truncate(tx, m);
                else if (strcmp(cmd, "!fds") == 0) {
                        char buf[32];
                        snprintf(buf, sizeof(buf), "fds=%d", test_count_fds());
                        send_text(tx, buf);
                } else if (strcmp(cmd, "!hold") == 0) {
                        held = ipcmux_shmem_unref(held);
                        CHECK(ipcmux_message_take_shmem(m, 0, &held));
                        send_text(tx, "held");
                } else if (strcmp(cmd, "!check") == 0) {
                        char buf[64] = "held none";

                        if (held)
                                snprintf(buf, sizeof(buf), "held %zu:%016" PRIx64, ipcmux_shmem_get_size(held),
                                         sum64(ipcmux_shmem_get_data(held), ipcmux_shmem_get_size(held)));
                        send_text(tx, buf);
                        held = ipcmux_shmem_unref(held);
                } else if (sscanf(cmd, "!zero %llu", &a) == 1)
                        cmd_regions(tx, (unsigned) a, 0, 0);
                else {
                        fprintf(stderr, "helper-regions: unknown command %s\n", cmd);
                        exit(13);
                }
                ipcmux_message_unref(m);
        }
        ipcmux_shmem_unref(held);
        ipcmux_sender_unref(tx);
        ipcmux_receiver_unref(mine_rx);
        ipcmux_channel_unref(ch);
        return r == -EPIPE ? 0 : 12;
}

static volatile sig_atomic_t got_usr1, got_usr2;

static void on_signal(int sig) {
        if (sig == SIGUSR1)
                got_usr1 = 1;
        else
                got_usr2 = 1;
}

static int mode_quota(void) {
        ipcmux_server *srv;
        ipcmux_receiver *rx, *pump_rx;
        ipcmux_sender *pump_tx;
        ipcmux_channel *ch;
        ipcmux_message *m;
        struct sigaction sa = { .sa_handler = on_signal };
        char *name, buf[128];

        sigemptyset(&sa.sa_mask);
        sigaction(SIGUSR1, &sa, NULL);
        sigaction(SIGUSR2, &sa, NULL);

        CHECK(ipcmux_channel_new(&ch));
        /* A subchannel of our own that nobody sends on: waiting on it
         * dispatches the connection without taking anything from rx. */
        CHECK(ipcmux_channel_sub_channel(ch, &pump_tx, &pump_rx));
        CHECK(ipcmux_server_new_for_channel(ch, &srv, &name));
        say(name);
        free(name);
        CHECK(ipcmux_server_accept(srv, &rx, &m));
        ipcmux_message_unref(m);
        say("accepted");

        for (;;) {
                int r = ipcmux_receiver_try_recv_timeout(pump_rx, 10000, &m);

                if (r >= 0)
                        ipcmux_message_unref(m);
                else if (r != -ETIMEDOUT) {
                        fprintf(stderr, "helper-regions: pump: %s\n", strerror(-r));
                        return 14;
                }
                if (got_usr1) {
                        got_usr1 = 0;
                        snprintf(buf, sizeof(buf), "fds=%d", test_count_fds());
                        say(buf);
                }
                if (got_usr2) {
                        unsigned n = 0, bad = 0;

                        got_usr2 = 0;
                        while (ipcmux_receiver_try_recv(rx, &m) >= 0) {
                                for (unsigned i = 0; i < ipcmux_message_get_n_shmem(m); i++) {
                                        ipcmux_shmem *s;
                                        const uint8_t *d;

                                        CHECK(ipcmux_message_take_shmem(m, i, &s));
                                        d = ipcmux_shmem_get_data(s);
                                        /* The test fills every byte with 'q'. */
                                        for (size_t k = 0; k < ipcmux_shmem_get_size(s); k++)
                                                if (d[k] != 'q') {
                                                        bad++;
                                                        break;
                                                }
                                        ipcmux_shmem_unref(s);
                                }
                                ipcmux_message_unref(m);
                                n++;
                        }
                        snprintf(buf, sizeof(buf), "drained %u bad=%u fds=%d", n, bad, test_count_fds());
                        say(buf);
                }
        }
}

int main(int argc, char **argv) {
        if (argc < 2) {
                fprintf(stderr, "usage: helper-regions serve NAME | quota\n");
                return 2;
        }
        signal(SIGPIPE, SIG_IGN);
        if (strcmp(argv[1], "serve") == 0 && argc >= 3)
                return mode_serve(argv[2]);
        if (strcmp(argv[1], "quota") == 0)
                return mode_quota();
        fprintf(stderr, "helper-regions: unknown mode %s\n", argv[1]);
        return 2;
}
