/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * bench-ipcmux: ipcmux side of the benchmarks (public API only).
 *
 * Every mode has a counterpart in bench-raw (plain sd-bus), with the same
 * payloads, so that run.sh can run both in the same invocation on the same
 * private bus and print ratios.  README.md describes each mode in full.
 *
 * Modes:
 *   oneway   -n N -s SIZE [-w W] [-k KIND] [-D recv|event|glib] [-T THREADS]
 *            The parent is the receiver: it creates a one-shot server
 *            (ipcmux_server_new) and spawns itself ("send" mode) as the
 *            sender, passing the server name.  The child connects, sends a
 *            small hello message (which accept() returns; never counted),
 *            W warm-up messages and N measured messages of SIZE bytes, drops
 *            its sender (flushes) and exits.  The parent receives until
 *            -EPIPE, checksumming every payload (as bench-raw's receiver
 *            does), and times the N measured messages: from the receipt of
 *            the last warm-up message (or the hello) to the receipt of the
 *            last one.  Connection setup is never timed.
 *            -k bytes (default) sends with ipcmux_sender_send_bytes();
 *            -k message builds an ipcmux_message per send;
 *            -k sender attaches a clone of one sender (of a subchannel whose
 *            receiver lives in the sending process) to every message;
 *            -k newsender attaches the sender of a NEW subchannel per message
 *            (its receiver stays in the sending process).
 *            -K: the receiver keeps every sender it receives (fd/RSS growth
 *            is reported: fds0/fds1k/fds_end, rss_kb0/...).
 *            -D event|glib: the receiver sets a receive handler and drives
 *            the connection with sd-event (ipcmux_channel_attach_event) or a
 *            GMainLoop (ipcmux_glib_source_new) instead of blocking recv.
 *            -T THREADS: the measured messages are sent by THREADS threads,
 *            each on its own clone (ipcmux_sender_ref) of one sender.
 *   region   as oneway, but every message carries a region of SIZE bytes
 *            and no inline payload; the receiver takes the region and
 *            checksums every byte.  Default: a fresh ipcmux_shmem per
 *            message (created, filled, attached, sent, dropped).
 *            -R K: a pool of K regions, created once; each is rewritten
 *            (memcpy) before it is sent again, and only after the receiver
 *            acknowledged the previous message in it (on a back subchannel
 *            whose sender rides in the hello): bench-raw memfd -R K.
 *            -u: one region, filled once, sent again and again (no acks).
 *   local    -n N -s SIZE [-k bytes|sender] [-b BURST]: one process, one
 *            subchannel whose both ends are here; sends BURST messages, then
 *            receives them, and so on (issue 4, "to the same process").
 *   slow     -n N [-E EVERY] [-q MAX]: two subchannels from one sending
 *            process: a busy one the parent receives from, and a slow one
 *            it never reads.  The child sends one slow message after every
 *            EVERY busy ones (0: none, the solo reference); -q MAX bounds
 *            the slow backlog (ipcmux_sender_set_max_queued), refused sends
 *            are counted.  Busy throughput as in oneway; the child reports
 *            the slow backlog (ipcmux_sender_get_queued).
 *   rr       -n N -M SUBS: the parent creates SUBS subchannels and sends
 *            their senders to the child (64 per message); the child sends
 *            round robin over them, the parent receives in the same order.
 *   pingpong -n N -s SIZE [-w W] [-B attach|server]
 *            Two subchannels, one each way.  The child ("echo" mode)
 *            connects to the parent's one-shot server and sends its own
 *            reply sender inside the first message
 *            (ipcmux_message_attach_sender).  With -B server it instead
 *            creates a second one-shot server and sends its name as the
 *            first message's payload (the fallback if sender transfer
 *            misbehaves).  Per round trip the parent sends SIZE bytes and
 *            waits for the child's echo; p50/p99 of W+N round trips after
 *            the first W.
 *   serve    [-n N -w W] [-s SIZE]   receiver only: prints "NAME <name>" and
 *            "READY", accepts one client, receives until -EPIPE, prints a
 *            RESULT line.  For callgrind (run.sh CALLGRIND=1).
 *   send     -c NAME -n N -s SIZE [-w W] [-k ...] [-i USEC]  sender only
 *            (also the child of oneway/region/slow/rr).  For callgrind.
 *   echo     -c NAME [-B attach|server]   the pingpong child.
 *
 * -i USEC (send): sleep USEC after every message: paces the sender one
 *    message at a time (the "unbatched" callgrind runs).
 * -S (oneway, send, serve): the first 8 payload bytes carry the message
 *    number; the receiver reports gaps and where messages went missing
 *    (a diagnostic: the timed runs keep every payload identical, as raw).
 * -Q MSGS (oneway, region, send; default 8192, the credit window): bound the
 *    sender's backlog (ipcmux_sender_set_max_queued); on -ENOBUFS the sender
 *    drives the connection itself (ipcmux_channel_attach_loop, poll,
 *    ipcmux_channel_process) until there is room: backpressure, as
 *    bench-raw's sender blocks in sd_bus_flush() when its socket is full.
 *    -Q 0: unbounded (sends never block; the last unref then waits at most
 *    10 s for the backlog and drops the rest, by the library's contract).
 * -X (oneway, region, send): after dropping its sender, the sender process
 *    makes one synchronous call to the bus driver before it exits (a barrier:
 *    the reply proves dbus-daemon has read and routed everything before it).
 *    Diagnostic for a tail loss seen in some runs (see README.md).
 * -F FD (send): write a report ("key=value ...") to FD at the end; the
 *    parent appends it to its RESULT line.
 * -P N (pingpong): N idle peers first: raw connections that each make one
 *    Subchannel1 call to the parent (so it watches them) and stay connected.
 *    A diagnostic for services with many quiet clients (README.md).
 *
 * Output: "RESULT <name> msgs=.. secs=.. msg_s=.. mib_s=.. p50_us=.. ..."
 * (common.h), the format of shared/bench-baselines, plus extra key=value
 * fields for some modes.  The bus is $DBUS_SESSION_BUS_ADDRESS (ipcmux's
 * process-wide connection).
 */
#include "common.h"

#include <dirent.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <syslog.h>
#include <unistd.h>

#include <ipcmux/ipcmux.h>
#include <systemd/sd-event.h>
#ifdef BENCH_HAVE_GLIB
#include <ipcmux/ipcmux-glib.h>
#endif

extern char **environ;

enum kind { KIND_BYTES, KIND_MESSAGE, KIND_REGION, KIND_SENDER, KIND_NEWSENDER };
enum driver { DRIVER_RECV, DRIVER_EVENT, DRIVER_GLIB };

struct opts {
        const char *mode;
        size_t size;
        uint64_t count;
        uint64_t warmup;
        int count_set;
        double time_limit;
        enum kind kind;
        int via_server;         /* pingpong: -B server */
        const char *connect;    /* send/echo: -c NAME */
        const char *connect_slow; /* send: -C NAME, the slow subchannel */
        const char *label;
        int verbose;
        int seq;                /* -S: number the messages, report gaps */
        int sync_exit;          /* -X: bus round trip before the sender exits */
        uint64_t max_queued;    /* -Q: sender backlog bound in messages, 0 = unbounded */
        unsigned pool;          /* -R: region pool size (0: fresh regions) */
        int same_region;        /* -u: one region sent again and again */
        int keep;               /* -K: the receiver keeps received senders */
        enum driver driver;     /* -D */
        unsigned threads;       /* -T */
        unsigned slow_every;    /* -E */
        uint64_t slow_max;      /* -q */
        unsigned n_sub;         /* -M */
        unsigned pace_us;       /* -i */
        unsigned burst;         /* -b */
        int report_fd;          /* -F */
        unsigned idle_peers;    /* -P (pingpong) */
};

/* Our own executable, for spawning the child side.  Resolved once with
 * readlink(), which valgrind answers with the client's path (exec'ing
 * "/proc/self/exe" under valgrind would start valgrind's tool binary). */
static char self_exe[4096] = "/proc/self/exe";

static void resolve_self_exe(void) {
        ssize_t n = readlink("/proc/self/exe", self_exe, sizeof(self_exe) - 1);
        if (n > 0)
                self_exe[n] = '\0';
        else
                snprintf(self_exe, sizeof(self_exe), "/proc/self/exe");
}

/* How long a parent waits for its child's first message. */
#define ACCEPT_TIMEOUT_USEC (60ull * 1000000ull)
/* Senders per message when the rr parent hands out its subchannels. */
#define RR_SENDERS_PER_MSG 64u

#define CHECK(expr)                                                                     \
        do {                                                                            \
                int _r = (expr);                                                        \
                if (_r < 0)                                                             \
                        die("%s:%d: %s: %s", __FILE__, __LINE__, #expr, strerror(-_r)); \
        } while (0)

static void log_to_stderr(int level, const char *message, void *userdata) {
        if (level <= LOG_DEBUG)
                fprintf(stderr, "ipcmux[%d]: <%d> %s\n", (int) getpid(), level, message);
}

static void size_label(size_t s, char *out, size_t outlen) {
        if (s >= (1u << 20) && s % (1u << 20) == 0)
                snprintf(out, outlen, "%zuMiB", s >> 20);
        else if (s >= 1024 && s % 1024 == 0)
                snprintf(out, outlen, "%zuKiB", s >> 10);
        else
                snprintf(out, outlen, "%zuB", s);
}

static const char *kind_arg(enum kind k) {
        switch (k) {
        case KIND_REGION: return "region";
        case KIND_MESSAGE: return "message";
        case KIND_SENDER: return "sender";
        case KIND_NEWSENDER: return "newsender";
        default: return "bytes";
        }
}

static void result_name(const struct opts *o, char *out, size_t outlen) {
        char sz[32], extra[64] = "";
        if (o->label) {
                snprintf(out, outlen, "%s", o->label);
                return;
        }
        size_label(o->size, sz, sizeof(sz));
        if (strcmp(o->mode, "pingpong") == 0) {
                snprintf(out, outlen, "ipcmux-pingpong-%s%s", sz, o->via_server ? "-viaserver" : "");
                return;
        }
        if (strcmp(o->mode, "local") == 0) {
                snprintf(out, outlen, "ipcmux-local-%s%s", sz, o->kind == KIND_SENDER ? "-sender" : "");
                return;
        }
        if (strcmp(o->mode, "slow") == 0) {
                snprintf(out, outlen, "ipcmux-busy-%s-%s", o->slow_every == 0 ? "solo" : o->slow_max ? "slowQ" : "slow", sz);
                return;
        }
        if (strcmp(o->mode, "rr") == 0) {
                snprintf(out, outlen, "ipcmux-rr%u-%s", o->n_sub, sz);
                return;
        }
        if (o->kind == KIND_REGION) {
                if (o->pool)
                        snprintf(out, outlen, "ipcmux-region-pool%u-%s", o->pool, sz);
                else
                        snprintf(out, outlen, "ipcmux-region-%s%s", o->same_region ? "same-" : "", sz);
                return;
        }
        if (o->kind != KIND_BYTES)
                snprintf(extra + strlen(extra), sizeof(extra) - strlen(extra), "-%s",
                         o->kind == KIND_MESSAGE ? "msg" : kind_arg(o->kind));
        if (o->driver != DRIVER_RECV)
                snprintf(extra + strlen(extra), sizeof(extra) - strlen(extra), "-%s",
                         o->driver == DRIVER_EVENT ? "event" : "glib");
        if (o->threads > 1)
                snprintf(extra + strlen(extra), sizeof(extra) - strlen(extra), "-T%u", o->threads);
        snprintf(out, outlen, "ipcmux-oneway-%s%s", sz, extra);
}

/* Open fds of this process (the /proc/self/fd listing, minus its own fd). */
static long count_fds(void) {
        DIR *d = opendir("/proc/self/fd");
        struct dirent *e;
        long n = 0;
        if (!d)
                return -1;
        while ((e = readdir(d)))
                if (e->d_name[0] != '.')
                        n++;
        closedir(d);
        return n - 1;
}

static long rss_kb(void) {
        long pages = 0, rss = 0;
        FILE *f = fopen("/proc/self/statm", "re");
        if (!f)
                return -1;
        if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
                rss = -1;
        fclose(f);
        return rss < 0 ? -1 : rss * (sysconf(_SC_PAGESIZE) / 1024);
}

/* CPU seconds (user + system; system alone) this process used so far. */
static double cpu_s(int sys_only) {
        struct rusage ru;

        if (getrusage(RUSAGE_SELF, &ru) < 0)
                return -1;
        double sys = (double) ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
        return sys_only ? sys : sys + (double) ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6;
}

static void sleep_us(unsigned us) {
        struct timespec ts = { .tv_sec = us / 1000000u, .tv_nsec = (long) (us % 1000000u) * 1000 };
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

/* ------------------------------------------------------------ child process */

struct child {
        pid_t pid;
        int report_fd;          /* read end of the child's -F pipe, or -1 */
};

static struct child spawn_self(char *const argv[], int with_report) {
        struct child ch = { .report_fd = -1 };
        posix_spawn_file_actions_t fa;
        int p[2] = { -1, -1 }, r;

        posix_spawn_file_actions_init(&fa);
        if (with_report) {
                if (pipe2(p, O_CLOEXEC) < 0)
                        die("pipe: %s", strerror(errno));
                posix_spawn_file_actions_adddup2(&fa, p[1], 3); /* clears O_CLOEXEC on 3 */
        }
        r = posix_spawn(&ch.pid, self_exe, &fa, NULL, argv, environ);
        posix_spawn_file_actions_destroy(&fa);
        if (r != 0)
                die("posix_spawn %s: %s", self_exe, strerror(r));
        if (with_report) {
                close(p[1]);
                ch.report_fd = p[0];
        }
        return ch;
}

/* Waits for the child; its report (if any) goes to @report (NUL-terminated). */
static void wait_child(struct child *ch, const char *what, char *report, size_t reportlen) {
        int status;
        if (report && reportlen)
                report[0] = '\0';
        if (ch->report_fd >= 0) {
                size_t got = 0;
                ssize_t k;
                while (report && got + 1 < reportlen &&
                       (k = read(ch->report_fd, report + got, reportlen - 1 - got)) > 0)
                        got += (size_t) k;
                if (report) {
                        report[got] = '\0';
                        while (got > 0 && (report[got - 1] == '\n' || report[got - 1] == ' '))
                                report[--got] = '\0';
                }
                close(ch->report_fd);
                ch->report_fd = -1;
        }
        if (waitpid(ch->pid, &status, 0) < 0)
                die("waitpid: %s", strerror(errno));
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
                die("%s child failed (status 0x%x)", what, status);
}

/* argv for "send" from the options; @name/@slow_name are the servers. */
static struct child spawn_sender(const struct opts *o, const char *name, const char *slow_name) {
        char nbuf[32], wbuf[32], sbuf[32], qbuf[32], rbuf[32], tbuf[32], ebuf[32], mbuf[32], mqbuf[32], pbuf[32];
        char *argv[48];
        int k = 0;

        snprintf(nbuf, sizeof(nbuf), "%" PRIu64, o->count);
        snprintf(wbuf, sizeof(wbuf), "%" PRIu64, o->warmup);
        snprintf(sbuf, sizeof(sbuf), "%zu", o->size);
        snprintf(qbuf, sizeof(qbuf), "%" PRIu64, o->max_queued);
        argv[k++] = (char *) "bench-ipcmux";
        argv[k++] = (char *) "send";
        argv[k++] = (char *) "-c";
        argv[k++] = (char *) name;
        argv[k++] = (char *) "-n";
        argv[k++] = nbuf;
        argv[k++] = (char *) "-w";
        argv[k++] = wbuf;
        argv[k++] = (char *) "-s";
        argv[k++] = sbuf;
        argv[k++] = (char *) "-k";
        argv[k++] = (char *) kind_arg(o->kind);
        argv[k++] = (char *) "-Q";
        argv[k++] = qbuf;
        argv[k++] = (char *) "-F";
        argv[k++] = (char *) "3";
        if (o->pool) {
                snprintf(rbuf, sizeof(rbuf), "%u", o->pool);
                argv[k++] = (char *) "-R";
                argv[k++] = rbuf;
        }
        if (o->same_region)
                argv[k++] = (char *) "-u";
        if (o->threads > 1) {
                snprintf(tbuf, sizeof(tbuf), "%u", o->threads);
                argv[k++] = (char *) "-T";
                argv[k++] = tbuf;
        }
        if (slow_name) {
                snprintf(ebuf, sizeof(ebuf), "%u", o->slow_every);
                snprintf(mqbuf, sizeof(mqbuf), "%" PRIu64, o->slow_max);
                argv[k++] = (char *) "-C";
                argv[k++] = (char *) slow_name;
                argv[k++] = (char *) "-E";
                argv[k++] = ebuf;
                argv[k++] = (char *) "-q";
                argv[k++] = mqbuf;
        }
        if (o->n_sub) {
                snprintf(mbuf, sizeof(mbuf), "%u", o->n_sub);
                argv[k++] = (char *) "-M";
                argv[k++] = mbuf;
        }
        if (o->pace_us) {
                snprintf(pbuf, sizeof(pbuf), "%u", o->pace_us);
                argv[k++] = (char *) "-i";
                argv[k++] = pbuf;
        }
        if (o->seq)
                argv[k++] = (char *) "-S";
        if (o->sync_exit)
                argv[k++] = (char *) "-X";
        if (o->verbose)
                argv[k++] = (char *) "-v";
        argv[k] = NULL;
        return spawn_self(argv, 1);
}

/* ------------------------------------------------------------------ sender */

/*
 * The sender's connection, driven by our own loop while a bounded backlog is
 * full (-Q): the analogue of bench-raw's sd_bus_flush() when the socket is
 * full.  NULL when the backlog is unbounded.  With -T, one thread at a time
 * drives it (room_lock); the others wait for the lock and retry.
 */
static ipcmux_channel *loop_ch;
static uint64_t n_backlog_waits;
static pthread_mutex_t room_lock = PTHREAD_MUTEX_INITIALIZER;

static void wait_for_room(void) {
        struct pollfd p = { .fd = ipcmux_channel_get_fd(loop_ch) };
        uint64_t until = UINT64_MAX;
        int r, timeout_ms = -1;

        r = ipcmux_channel_get_events(loop_ch);
        if (r < 0)
                die("ipcmux_channel_get_events: %s", strerror(-r));
        p.events = (short) r;
        if (ipcmux_channel_get_timeout(loop_ch, &until) >= 0 && until != UINT64_MAX) {
                uint64_t now = now_ns() / 1000;
                timeout_ms = until <= now ? 0 : (int) ((until - now + 999) / 1000);
        }
        if (poll(&p, 1, timeout_ms) < 0 && errno != EINTR)
                die("poll: %s", strerror(errno));
        while ((r = ipcmux_channel_process(loop_ch)) > 0)
                ;
        if (r < 0)
                die("ipcmux_channel_process: %s", strerror(-r));
        n_backlog_waits++;
}

/* What one sending thread sends, and where. */
struct plan {
        const struct opts *o;
        enum kind kind;
        void *buf;
        size_t size;
        ipcmux_sender *tx;              /* the target (rr: unused) */
        ipcmux_sender **txs;            /* -M: round robin over these */
        unsigned n_txs;
        ipcmux_sender *attach;          /* -k sender: attached to every message */
        ipcmux_channel *ch;             /* -k newsender: where new subchannels come from */
        ipcmux_receiver **new_rx;       /* their receivers, kept until the end */
        size_t n_new_rx, cap_new_rx;
        ipcmux_shmem **pool;            /* -R */
        unsigned n_pool;
        ipcmux_receiver *acks;          /* -R: the receiver's acks */
        uint64_t acked;
        ipcmux_shmem *same;             /* -u */
        ipcmux_sender *slow;            /* -C */
        unsigned slow_every;
        uint64_t slow_sent, slow_refused, slow_peak_msgs, slow_peak_bytes;
        uint64_t next;                  /* index of the next message */
};

static int send_with_backpressure(ipcmux_sender *tx, ipcmux_message *m, const void *buf, size_t size) {
        int r = m ? ipcmux_sender_send(tx, m) : ipcmux_sender_send_bytes(tx, buf, size);
        while (r == -ENOBUFS && loop_ch) {
                pthread_mutex_lock(&room_lock);
                r = m ? ipcmux_sender_send(tx, m) : ipcmux_sender_send_bytes(tx, buf, size);
                if (r == -ENOBUFS)
                        wait_for_room();
                pthread_mutex_unlock(&room_lock);
        }
        return r;
}

static void wait_acks(struct plan *p, uint64_t upto) {
        while (p->acked < upto) {
                ipcmux_message *a = NULL;
                int r = ipcmux_receiver_recv(p->acks, &a);
                if (r < 0)
                        die("region pool: waiting for an ack: %s", strerror(-r));
                ipcmux_message_unref(a);
                p->acked++;
        }
}

static void send_one(struct plan *p) {
        uint64_t i = p->next++;
        ipcmux_sender *tx = p->n_txs ? p->txs[i % p->n_txs] : p->tx;
        ipcmux_message *m = NULL;
        int r;

        if (p->kind != KIND_BYTES) {
                CHECK(ipcmux_message_new(&m));
                switch (p->kind) {
                case KIND_MESSAGE:
                        CHECK(ipcmux_message_append(m, p->buf, p->size));
                        break;
                case KIND_REGION:
                        if (p->n_pool) {
                                ipcmux_shmem *s = p->pool[i % p->n_pool];
                                /* Message i reuses the region of message i - K: acked? */
                                if (i >= p->n_pool)
                                        wait_acks(p, i - p->n_pool + 1);
                                memcpy(ipcmux_shmem_get_mutable_data(s), p->buf, p->size);
                                CHECK(ipcmux_message_attach_shmem(m, s));
                        } else if (p->same) {
                                CHECK(ipcmux_message_attach_shmem(m, p->same));
                        } else {
                                ipcmux_shmem *s = NULL;
                                CHECK(ipcmux_shmem_new(p->size, &s));
                                memcpy(ipcmux_shmem_get_mutable_data(s), p->buf, p->size);
                                CHECK(ipcmux_message_attach_shmem(m, s));
                                ipcmux_shmem_unref(s);
                        }
                        break;
                case KIND_SENDER:
                        CHECK(ipcmux_message_append(m, p->buf, p->size));
                        CHECK(ipcmux_message_attach_sender(m, p->attach));
                        break;
                case KIND_NEWSENDER: {
                        ipcmux_sender *t = NULL;
                        ipcmux_receiver *rx = NULL;
                        CHECK(ipcmux_channel_sub_channel(p->ch, &t, &rx));
                        CHECK(ipcmux_message_append(m, p->buf, p->size));
                        CHECK(ipcmux_message_attach_sender(m, t));
                        ipcmux_sender_unref(t); /* the message holds its own copy */
                        if (p->n_new_rx == p->cap_new_rx) {
                                p->cap_new_rx = p->cap_new_rx ? 2 * p->cap_new_rx : 1024;
                                p->new_rx = realloc(p->new_rx, p->cap_new_rx * sizeof(*p->new_rx));
                                if (!p->new_rx)
                                        die("out of memory");
                        }
                        p->new_rx[p->n_new_rx++] = rx;
                        break;
                }
                default:
                        break;
                }
        }
        r = send_with_backpressure(tx, m, p->buf, p->size);
        ipcmux_message_unref(m);
        if (r < 0)
                die("ipcmux_sender_send: %s", strerror(-r));
        if (p->slow && (i + 1) % p->slow_every == 0) {
                r = ipcmux_sender_send_bytes(p->slow, p->buf, p->size);
                if (r == -ENOBUFS)
                        p->slow_refused++;
                else if (r < 0)
                        die("slow subchannel: send: %s", strerror(-r));
                else
                        p->slow_sent++;
                if ((p->slow_sent + p->slow_refused) % 512 == 0) {
                        uint64_t qm = 0, qb = 0;
                        CHECK(ipcmux_sender_get_queued(p->slow, &qm, &qb));
                        if (qm > p->slow_peak_msgs)
                                p->slow_peak_msgs = qm;
                        if (qb > p->slow_peak_bytes)
                                p->slow_peak_bytes = qb;
                }
        }
        if (p->o->pace_us)
                sleep_us(p->o->pace_us);
}

/* The measured send loop (callgrind --toggle-collect target). */
uint64_t bench_ipcmux_send_loop(struct plan *p, uint64_t count);
__attribute__((noinline)) uint64_t bench_ipcmux_send_loop(struct plan *p, uint64_t count) {
        uint64_t i;
        for (i = 0; i < count; i++)
                send_one(p);
        return i;
}

/* -S: the first 8 payload bytes carry the message number (from 0). */
static void send_numbered(struct plan *p, uint64_t count) {
        for (uint64_t i = 0; i < count; i++) {
                uint64_t n = p->next;
                memcpy(p->buf, &n, sizeof(n));
                send_one(p);
        }
}

struct thread_arg {
        struct plan plan;
        uint64_t count;
        pthread_t tid;
};

static void *send_thread(void *userdata) {
        struct thread_arg *a = userdata;
        bench_ipcmux_send_loop(&a->plan, a->count);
        return NULL;
}

/* The measured messages, from o->threads threads on clones of p->tx. */
static void send_threaded(struct plan *p, uint64_t count, unsigned threads) {
        struct thread_arg *a = calloc(threads, sizeof(*a));
        if (!a)
                die("out of memory");
        for (unsigned t = 0; t < threads; t++) {
                a[t].plan = *p;
                a[t].plan.tx = ipcmux_sender_ref(p->tx); /* a clone: same subchannel */
                a[t].count = count / threads + (t < count % threads ? 1 : 0);
                if (pthread_create(&a[t].tid, NULL, send_thread, &a[t]) != 0)
                        die("pthread_create failed");
        }
        for (unsigned t = 0; t < threads; t++) {
                pthread_join(a[t].tid, NULL);
                ipcmux_sender_unref(a[t].plan.tx);
        }
        free(a);
}

static void report(int fd, const char *fmt, ...) {
        char line[1024];
        va_list ap;
        int n;
        if (fd < 0)
                return;
        va_start(ap, fmt);
        n = vsnprintf(line, sizeof(line), fmt, ap);
        va_end(ap);
        if (n > 0 && write(fd, line, (size_t) n < sizeof(line) ? (size_t) n : sizeof(line) - 1) < 0)
                die("report: %s", strerror(errno));
}

static int run_send(const struct opts *o) {
        struct plan p = { .o = o, .kind = o->kind, .size = o->size };
        ipcmux_sender *tx = NULL, *tx_back = NULL, *slow = NULL;
        ipcmux_receiver *rx_back = NULL, *rx_attach = NULL;
        ipcmux_channel *ch = NULL, *keep = NULL;
        ipcmux_message *m = NULL;
        double t0, t1, t2, t3;
        int rf = o->report_fd;

        if (!o->connect)
                die("send needs -c NAME");
        p.buf = malloc(o->size ? o->size : 1);
        if (!p.buf)
                die("out of memory");
        fill_pattern(p.buf, o->size, 7);
        CHECK(ipcmux_channel_new(&ch));
        CHECK(ipcmux_sender_connect(o->connect, &tx));
        p.tx = tx;
        if (o->max_queued > 0) {
                CHECK(ipcmux_channel_new(&loop_ch));
                CHECK(ipcmux_channel_attach_loop(loop_ch));
                CHECK(ipcmux_sender_set_max_queued(tx, o->max_queued, 0));
        }

        /* The hello: small, never counted; carries our back sender when the
         * receiver has to answer (region pool acks, rr senders). */
        CHECK(ipcmux_message_new(&m));
        CHECK(ipcmux_message_append(m, "hello", 6));
        if (o->pool || o->n_sub) {
                CHECK(ipcmux_channel_sub_channel(ch, &tx_back, &rx_back));
                CHECK(ipcmux_message_attach_sender(m, tx_back));
                tx_back = ipcmux_sender_unref(tx_back); /* the receiver's copy is the one */
        }
        CHECK(ipcmux_sender_send(tx, m));
        m = ipcmux_message_unref(m);

        if (o->connect_slow) {
                CHECK(ipcmux_sender_connect(o->connect_slow, &slow));
                CHECK(ipcmux_sender_send_bytes(slow, "hello", 6));
                if (o->slow_max)
                        CHECK(ipcmux_sender_set_max_queued(slow, o->slow_max, 0));
                if (o->slow_every) {
                        p.slow = slow;
                        p.slow_every = o->slow_every;
                }
        }
        if (o->kind == KIND_SENDER) {
                CHECK(ipcmux_channel_sub_channel(ch, &p.attach, &rx_attach));
        } else if (o->kind == KIND_NEWSENDER) {
                p.ch = ch;
        } else if (o->kind == KIND_REGION) {
                if (o->pool) {
                        p.n_pool = o->pool;
                        p.pool = calloc(o->pool, sizeof(*p.pool));
                        for (unsigned j = 0; j < o->pool; j++)
                                CHECK(ipcmux_shmem_new(o->size, &p.pool[j]));
                        p.acks = rx_back;
                } else if (o->same_region) {
                        CHECK(ipcmux_shmem_new_from_bytes(p.buf, o->size, &p.same));
                }
        }
        if (o->n_sub) {
                /* The receiver hands us its subchannels' senders, in order. */
                p.txs = calloc(o->n_sub, sizeof(*p.txs));
                while (p.n_txs < o->n_sub) {
                        CHECK(ipcmux_receiver_recv(rx_back, &m));
                        for (unsigned j = 0; j < ipcmux_message_get_n_senders(m) && p.n_txs < o->n_sub; j++)
                                CHECK(ipcmux_message_take_sender(m, j, &p.txs[p.n_txs++]));
                        m = ipcmux_message_unref(m);
                }
        }

        if (o->seq) {
                if (o->size < 8 || o->kind == KIND_REGION || o->threads > 1)
                        die("-S needs inline payloads of >= 8 bytes and one thread");
                t0 = now_s();
                send_numbered(&p, o->warmup + o->count);
                t1 = now_s();
        } else {
                bench_ipcmux_send_loop(&p, o->warmup);
                t0 = now_s();
                if (o->threads > 1) {
                        if (o->kind == KIND_REGION || o->kind == KIND_NEWSENDER || o->n_sub || p.slow)
                                die("-T works with -k bytes|message|sender only");
                        send_threaded(&p, o->count, o->threads);
                } else
                        bench_ipcmux_send_loop(&p, o->count);
                t1 = now_s();
        }
        if (p.slow) {
                uint64_t qm = 0, qb = 0;
                CHECK(ipcmux_sender_get_queued(slow, &qm, &qb));
                if (qm > p.slow_peak_msgs)
                        p.slow_peak_msgs = qm;
                if (qb > p.slow_peak_bytes)
                        p.slow_peak_bytes = qb;
                report(rf, "slow_sent=%" PRIu64 " slow_refused=%" PRIu64 " slow_queued_msgs=%" PRIu64
                       " slow_queued_bytes=%" PRIu64 " slow_peak_msgs=%" PRIu64 " slow_peak_bytes=%" PRIu64 " ",
                       p.slow_sent, p.slow_refused, qm, qb, p.slow_peak_msgs, p.slow_peak_bytes);
        }
        if (p.n_pool)
                wait_acks(&p, p.next); /* every region is back before we go */
        report(rf, "tx_fds=%ld tx_rss_kb=%ld tx_backlog_waits=%" PRIu64 " tx_cpu_s=%.3f tx_sys_s=%.3f ", count_fds(),
               rss_kb(), n_backlog_waits, cpu_s(0), cpu_s(1));
        if (o->sync_exit)
                CHECK(ipcmux_channel_new(&keep)); /* keeps the connection open past the unref */
        for (unsigned j = 0; j < p.n_txs; j++)
                ipcmux_sender_unref(p.txs[j]);
        free(p.txs);
        ipcmux_sender_unref(tx); /* flushes what is queued */
        t2 = now_s();
        ipcmux_sender_unref(p.attach);
        ipcmux_receiver_unref(rx_attach);
        for (size_t j = 0; j < p.n_new_rx; j++)
                ipcmux_receiver_unref(p.new_rx[j]);
        free(p.new_rx);
        for (unsigned j = 0; j < p.n_pool; j++)
                ipcmux_shmem_unref(p.pool[j]);
        free(p.pool);
        ipcmux_shmem_unref(p.same);
        ipcmux_receiver_unref(rx_back);
        /* The slow subchannel last: its backlog leaves (or is dropped) only
         * once the receiver closes it, after it got everything else. */
        t3 = now_s();
        ipcmux_sender_unref(slow);
        if (slow)
                report(rf, "slow_unref_s=%.3f ", now_s() - t3);
        if (keep) {
                /* The bus driver's reply proves that dbus-daemon has read and
                 * routed everything written before.  See -X in the header. */
                sd_bus_error e = SD_BUS_ERROR_NULL;
                int r = sd_bus_call_method(ipcmux_channel_get_bus(keep), "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                           "org.freedesktop.DBus", "GetId", &e, NULL, "");
                if (r < 0)
                        die("sync with the bus: %s", e.message ? e.message : strerror(-r));
                sd_bus_error_free(&e);
                ipcmux_channel_unref(keep);
        }
        if (o->verbose)
                fprintf(stderr, "sender: %" PRIu64 " msgs queued in %.3f s (%.0f/s), %" PRIu64
                        " waits for backlog room, final flush %.3f s\n", o->count, t1 - t0,
                        (double) o->count / (t1 - t0), n_backlog_waits, t2 - t1);
        if (loop_ch) {
                ipcmux_channel_detach_loop(loop_ch);
                loop_ch = ipcmux_channel_unref(loop_ch);
        }
        ipcmux_channel_unref(ch);
        free(p.buf);
        return 0;
}

/* ---------------------------------------------------------------- receiver */

struct rx_stats {
        uint64_t count, bytes, sum, bad_size, senders;
        int seq;
        uint64_t next_seq, gaps, missing, first_gap_at, first_gap_len;
};

struct rx_ctx {
        const struct opts *o;
        struct rx_stats st;
        double t0, t1;
        ipcmux_sender *back;            /* -R: acks go back on it */
        ipcmux_sender **kept;           /* -K */
        size_t n_kept, cap_kept;
        long fds[3], rss[3];            /* -K: after the hello, after 1000, at the end */
        int done;
        sd_event *event;
#ifdef BENCH_HAVE_GLIB
        GMainLoop *loop;
#endif
};

static void check_seq(const void *p, size_t n, struct rx_stats *st) {
        uint64_t s;
        if (n < 8)
                return;
        memcpy(&s, p, sizeof(s));
        if (s != st->next_seq) {
                if (st->gaps++ == 0) {
                        st->first_gap_at = st->next_seq;
                        st->first_gap_len = s - st->next_seq;
                }
                st->missing += s > st->next_seq ? s - st->next_seq : 0;
        }
        st->next_seq = s + 1;
}

/* One counted message (@m stays the caller's). */
static void consume(struct rx_ctx *x, ipcmux_message *m) {
        struct rx_stats *st = &x->st;
        const void *p;
        size_t n;

        if (ipcmux_message_get_n_shmem(m) > 0) {
                ipcmux_shmem *s = NULL;
                CHECK(ipcmux_message_take_shmem(m, 0, &s));
                p = ipcmux_shmem_get_data(s);
                n = ipcmux_shmem_get_size(s);
                st->sum += checksum(p, n);
                ipcmux_shmem_unref(s);
        } else {
                p = ipcmux_message_get_data(m, &n);
                if (st->seq)
                        check_seq(p, n, st);
                st->sum += checksum(p, n);
        }
        for (unsigned i = 0, k = ipcmux_message_get_n_senders(m); i < k; i++) {
                ipcmux_sender *s = NULL;
                CHECK(ipcmux_message_take_sender(m, i, &s));
                st->senders++;
                if (x->o->keep) {
                        if (x->n_kept == x->cap_kept) {
                                x->cap_kept = x->cap_kept ? 2 * x->cap_kept : 1024;
                                x->kept = realloc(x->kept, x->cap_kept * sizeof(*x->kept));
                                if (!x->kept)
                                        die("out of memory");
                        }
                        x->kept[x->n_kept++] = s;
                } else
                        ipcmux_sender_unref(s);
        }
        if (n != x->o->size)
                st->bad_size++;
        st->bytes += n;
        st->count++;
        if (x->back) {
                int r = ipcmux_sender_send_bytes(x->back, "a", 1);
                if (r < 0)
                        die("ack: %s", strerror(-r));
        }
        if (st->count == x->o->warmup)
                x->t0 = now_s();
        x->t1 = now_s();
        if (x->o->keep && st->count == 1000) {
                x->fds[1] = count_fds();
                x->rss[1] = rss_kb();
        }
}

/* The hello: the back sender if it carries one; not counted. */
static void take_hello(struct rx_ctx *x, ipcmux_message *m) {
        if (ipcmux_message_get_n_senders(m) > 0)
                CHECK(ipcmux_message_take_sender(m, 0, &x->back));
        ipcmux_message_unref(m);
        x->t0 = x->t1 = now_s();
        x->fds[0] = count_fds();
        x->rss[0] = rss_kb();
}

static void on_message(ipcmux_receiver *r, ipcmux_message *m, int error, void *userdata) {
        struct rx_ctx *x = userdata;
        if (!m) {
                if (error != -EPIPE)
                        die("receive handler: %s", strerror(-error));
                x->done = 1;
                if (x->event)
                        sd_event_exit(x->event, 0);
#ifdef BENCH_HAVE_GLIB
                if (x->loop)
                        g_main_loop_quit(x->loop);
#endif
                return;
        }
        consume(x, m);
}

/* Receive on @rx until -EPIPE, with the driver of -D. */
static void receive_rest(struct rx_ctx *x, ipcmux_receiver *rx) {
        ipcmux_message *m = NULL;
        ipcmux_channel *ch = NULL;
        int r;

        switch (x->o->driver) {
        case DRIVER_RECV:
                for (;;) {
                        r = ipcmux_receiver_recv(rx, &m);
                        if (r == -EPIPE)
                                break;
                        if (r < 0)
                                die("ipcmux_receiver_recv: %s", strerror(-r));
                        consume(x, m);
                        ipcmux_message_unref(m);
                }
                break;
        case DRIVER_EVENT:
                CHECK(ipcmux_channel_new(&ch));
                CHECK(sd_event_default(&x->event));
                CHECK(ipcmux_receiver_set_handler(rx, on_message, x));
                CHECK(ipcmux_channel_attach_event(ch, x->event, 0));
                if (!x->done)
                        CHECK(sd_event_loop(x->event));
                CHECK(ipcmux_channel_detach_event(ch));
                x->event = sd_event_unref(x->event);
                ipcmux_channel_unref(ch);
                break;
        case DRIVER_GLIB:
#ifdef BENCH_HAVE_GLIB
        {
                GSource *src;
                CHECK(ipcmux_channel_new(&ch));
                x->loop = g_main_loop_new(NULL, FALSE);
                src = ipcmux_glib_source_new(ch);
                if (!src)
                        die("ipcmux_glib_source_new: %s", strerror(errno));
                g_source_attach(src, NULL);
                CHECK(ipcmux_receiver_set_handler(rx, on_message, x));
                if (!x->done)
                        g_main_loop_run(x->loop);
                g_source_destroy(src);
                g_source_unref(src);
                g_main_loop_unref(x->loop);
                x->loop = NULL;
                ipcmux_channel_unref(ch);
                break;
        }
#else
                die("built without GLib: -D glib is not available");
#endif
        }
        if (x->st.count <= x->o->warmup)
                x->t0 = x->t1;
        if (x->o->keep) {
                x->fds[2] = count_fds();
                x->rss[2] = rss_kb();
        }
}

static void check_stats(const struct opts *o, const struct rx_stats *st) {
        void *buf = malloc(o->size ? o->size : 1);
        uint64_t one_sum, total = o->warmup + o->count;
        fill_pattern(buf, o->size, 7);
        one_sum = checksum(buf, o->size);
        free(buf);
        if (st->bad_size)
                die("receiver: %" PRIu64 " messages of the wrong size", st->bad_size);
        if (st->seq) {
                if (st->gaps || (o->count_set && st->next_seq != total))
                        die("receiver: sequence: %" PRIu64 " gaps, %" PRIu64 " missing inside, first gap at #%" PRIu64
                            " (%" PRIu64 " lost), last seen #%" PRIu64 " of %" PRIu64 " (%" PRIu64 " lost at the end)",
                            st->gaps, st->missing, st->first_gap_at, st->first_gap_len, st->next_seq - 1, total - 1,
                            total - st->next_seq);
                if (o->count_set && st->count != total)
                        die("receiver: got %" PRIu64 " messages, expected %" PRIu64, st->count, total);
                return; /* payloads differ per message: no constant checksum */
        }
        if (o->count_set && st->count != total)
                die("receiver: got %" PRIu64 " messages, expected %" PRIu64, st->count, total);
        if (st->sum != one_sum * st->count)
                die("receiver: checksum mismatch");
}

static void keep_fields(const struct rx_ctx *x, char *out, size_t outlen) {
        size_t l = strlen(out);
        if (!x->o->keep)
                return;
        snprintf(out + l, outlen - l,
                 "%sfds0=%ld fds1k=%ld fds_end=%ld fd_growth=%ld rss_kb0=%ld rss_kb1k=%ld rss_kb_end=%ld kept=%zu",
                 l ? " " : "", x->fds[0], x->fds[1], x->fds[2], x->fds[2] - x->fds[0], x->rss[0], x->rss[1],
                 x->rss[2], x->n_kept);
}

static void free_kept(struct rx_ctx *x) {
        for (size_t i = 0; i < x->n_kept; i++)
                ipcmux_sender_unref(x->kept[i]);
        free(x->kept);
        x->kept = NULL;
        x->n_kept = 0;
}

/* oneway and region: one sender child, one receiver (-D driver). */
static int run_oneway(const struct opts *o) {
        ipcmux_server *srv = NULL;
        ipcmux_receiver *rx = NULL;
        ipcmux_message *m = NULL;
        char *name = NULL, label[128], extra[1536];
        struct rx_ctx x = { .o = o, .st.seq = o->seq };
        struct child child;

        CHECK(ipcmux_server_new(&srv, &name));
        child = spawn_sender(o, name, NULL);
        CHECK(ipcmux_server_accept_timeout(srv, ACCEPT_TIMEOUT_USEC, &rx, &m));
        take_hello(&x, m);
        receive_rest(&x, rx);
        wait_child(&child, "sender", extra, sizeof(extra));
        check_stats(o, &x.st);
        keep_fields(&x, extra, sizeof(extra));
        result_name(o, label, sizeof(label));
        print_result_extra(label, x.st.count - o->warmup, x.t1 - x.t0, o->size, NULL, NULL, NULL, extra);
        free_kept(&x);
        ipcmux_sender_unref(x.back);
        ipcmux_receiver_unref(rx);
        ipcmux_server_unref(srv);
        free(name);
        return 0;
}

/* slow: a busy subchannel and one that is never read, from one sender. */
static int run_slow(const struct opts *o) {
        ipcmux_server *srv = NULL, *srv_slow = NULL;
        ipcmux_receiver *rx = NULL, *rx_slow = NULL;
        ipcmux_message *m = NULL;
        char *name = NULL, *name_slow = NULL, label[128], extra[1536];
        struct rx_ctx x = { .o = o };
        struct child child;
        size_t l;

        CHECK(ipcmux_server_new(&srv, &name));
        CHECK(ipcmux_server_new(&srv_slow, &name_slow));
        child = spawn_sender(o, name, name_slow);
        CHECK(ipcmux_server_accept_timeout(srv, ACCEPT_TIMEOUT_USEC, &rx, &m));
        take_hello(&x, m);
        CHECK(ipcmux_server_accept_timeout(srv_slow, ACCEPT_TIMEOUT_USEC, &rx_slow, &m));
        ipcmux_message_unref(m);
        receive_rest(&x, rx);
        /* Everything busy is in; now close the slow one: its sender's backlog
         * is dropped and its last unref returns. */
        l = 0;
        {
                long rss = rss_kb();
                ipcmux_receiver_unref(rx_slow);
                wait_child(&child, "sender", extra, sizeof(extra));
                l = strlen(extra);
                snprintf(extra + l, sizeof(extra) - l, "%srx_rss_kb=%ld rx_cpu_s=%.3f rx_sys_s=%.3f", l ? " " : "", rss,
                         cpu_s(0), cpu_s(1));
        }
        check_stats(o, &x.st);
        result_name(o, label, sizeof(label));
        print_result_extra(label, x.st.count - o->warmup, x.t1 - x.t0, o->size, NULL, NULL, NULL, extra);
        ipcmux_receiver_unref(rx);
        ipcmux_server_unref(srv);
        ipcmux_server_unref(srv_slow);
        free(name);
        free(name_slow);
        return 0;
}

/* rr: SUBS subchannels, their senders handed to the child, round robin. */
static int run_rr(const struct opts *o) {
        ipcmux_server *srv = NULL;
        ipcmux_receiver *rx = NULL, **rxs;
        ipcmux_channel *ch = NULL;
        ipcmux_message *m = NULL;
        char *name = NULL, label[128], extra[1536];
        struct rx_ctx x = { .o = o };
        struct child child;
        uint64_t total = o->warmup + o->count;
        double ts;
        int r;

        if (o->n_sub == 0 || o->warmup == 0)
                die("rr needs -M SUBS and -w WARMUP > 0 (the clock starts after the warm-up)");
        rxs = calloc(o->n_sub, sizeof(*rxs));
        CHECK(ipcmux_channel_new(&ch));
        CHECK(ipcmux_server_new(&srv, &name));
        child = spawn_sender(o, name, NULL);
        CHECK(ipcmux_server_accept_timeout(srv, ACCEPT_TIMEOUT_USEC, &rx, &m));
        take_hello(&x, m);
        if (!x.back)
                die("rr: the hello carries no back sender");
        ts = now_s();
        for (unsigned i = 0; i < o->n_sub;) {
                CHECK(ipcmux_message_new(&m));
                for (unsigned j = 0; j < RR_SENDERS_PER_MSG && i < o->n_sub; j++, i++) {
                        ipcmux_sender *t = NULL;
                        CHECK(ipcmux_channel_sub_channel(ch, &t, &rxs[i]));
                        CHECK(ipcmux_message_attach_sender(m, t));
                        ipcmux_sender_unref(t);
                }
                CHECK(ipcmux_sender_send(x.back, m));
                m = ipcmux_message_unref(m);
        }
        x.back = ipcmux_sender_unref(x.back); /* acks are for -R only */
        for (uint64_t i = 0; i < total; i++) {
                r = ipcmux_receiver_recv(rxs[i % o->n_sub], &m);
                if (r < 0)
                        die("rr: recv on subchannel %" PRIu64 ": %s", i % o->n_sub, strerror(-r));
                if (i == 0)
                        ts = now_s() - ts; /* handing out the senders, until the first message is back */
                consume(&x, m); /* the clock starts after the warm-up */
                ipcmux_message_unref(m);
        }
        r = ipcmux_receiver_recv(rx, &m);
        if (r != -EPIPE)
                die("rr: expected -EPIPE on the bootstrap subchannel, got %d", r);
        wait_child(&child, "sender", extra, sizeof(extra));
        {
                size_t l = strlen(extra);
                snprintf(extra + l, sizeof(extra) - l, "%ssubs=%u handout_s=%.3f", l ? " " : "", o->n_sub, ts);
        }
        check_stats(o, &x.st);
        result_name(o, label, sizeof(label));
        print_result_extra(label, o->count, x.t1 - x.t0, o->size, NULL, NULL, NULL, extra);
        for (unsigned i = 0; i < o->n_sub; i++)
                ipcmux_receiver_unref(rxs[i]);
        free(rxs);
        ipcmux_receiver_unref(rx);
        ipcmux_server_unref(srv);
        ipcmux_channel_unref(ch);
        free(name);
        return 0;
}

/* local: both ends of the subchannel in this process. */
uint64_t bench_ipcmux_local_loop(struct plan *p, ipcmux_receiver *rx, struct rx_ctx *x, uint64_t count);
__attribute__((noinline)) uint64_t bench_ipcmux_local_loop(struct plan *p, ipcmux_receiver *rx, struct rx_ctx *x,
                                                           uint64_t count) {
        unsigned burst = x->o->burst ? x->o->burst : 64;
        uint64_t done = 0;
        while (done < count) {
                uint64_t k = count - done < burst ? count - done : burst;
                for (uint64_t i = 0; i < k; i++)
                        send_one(p);
                for (uint64_t i = 0; i < k; i++) {
                        ipcmux_message *m = NULL;
                        CHECK(ipcmux_receiver_recv(rx, &m));
                        consume(x, m);
                        ipcmux_message_unref(m);
                }
                done += k;
        }
        return done;
}

static int run_local(const struct opts *o) {
        struct plan p = { .o = o, .kind = o->kind, .size = o->size };
        struct rx_ctx x = { .o = o };
        struct opts xo = *o;
        ipcmux_channel *ch = NULL;
        ipcmux_receiver *rx = NULL, *rx_attach = NULL;
        char label[128];
        double t0, t1;

        if (o->kind != KIND_BYTES && o->kind != KIND_SENDER && o->kind != KIND_MESSAGE)
                die("local: -k bytes|message|sender");
        xo.warmup = 0; /* consume() starts no clock here */
        x.o = &xo;
        p.buf = malloc(o->size ? o->size : 1);
        fill_pattern(p.buf, o->size, 7);
        CHECK(ipcmux_channel_new(&ch));
        CHECK(ipcmux_channel_sub_channel(ch, &p.tx, &rx));
        if (o->kind == KIND_SENDER)
                CHECK(ipcmux_channel_sub_channel(ch, &p.attach, &rx_attach));
        bench_ipcmux_local_loop(&p, rx, &x, o->warmup);
        t0 = now_s();
        bench_ipcmux_local_loop(&p, rx, &x, o->count);
        t1 = now_s();
        {
                struct opts co = *o;
                co.warmup = 0;
                co.count = o->warmup + o->count;
                check_stats(&co, &x.st);
        }
        result_name(o, label, sizeof(label));
        print_result(label, o->count, t1 - t0, o->size, NULL, NULL, NULL);
        ipcmux_sender_unref(p.tx);
        ipcmux_sender_unref(p.attach);
        ipcmux_receiver_unref(rx_attach);
        ipcmux_receiver_unref(rx);
        ipcmux_channel_unref(ch);
        free(p.buf);
        return 0;
}

static int run_serve(const struct opts *o) {
        ipcmux_server *srv = NULL;
        ipcmux_receiver *rx = NULL;
        ipcmux_message *m = NULL;
        char *name = NULL;
        struct rx_ctx x = { .o = o, .st.seq = o->seq };

        CHECK(ipcmux_server_new(&srv, &name));
        printf("NAME %s\nREADY\n", name);
        fflush(stdout);
        CHECK(ipcmux_server_accept_timeout(srv, ACCEPT_TIMEOUT_USEC, &rx, &m));
        take_hello(&x, m);
        receive_rest(&x, rx);
        check_stats(o, &x.st);
        print_result(o->label ? o->label : "ipcmux-serve", x.st.count, x.t1 - x.t0, o->size, NULL, NULL, NULL);
        free_kept(&x);
        ipcmux_sender_unref(x.back);
        ipcmux_receiver_unref(rx);
        ipcmux_server_unref(srv);
        free(name);
        return 0;
}

/* ---------------------------------------------------------------- pingpong */

static int run_echo(const struct opts *o) {
        ipcmux_sender *tx = NULL;
        ipcmux_receiver *rx_back = NULL;
        ipcmux_message *m = NULL;
        uint64_t n = 0;
        int r;

        if (!o->connect)
                die("echo needs -c NAME");
        CHECK(ipcmux_sender_connect(o->connect, &tx));
        if (!o->via_server) {
                ipcmux_channel *ch = NULL;
                ipcmux_sender *tx_back = NULL;
                CHECK(ipcmux_channel_new(&ch));
                CHECK(ipcmux_channel_sub_channel(ch, &tx_back, &rx_back));
                CHECK(ipcmux_message_new(&m));
                CHECK(ipcmux_message_attach_sender(m, tx_back));
                CHECK(ipcmux_sender_send(tx, m));
                ipcmux_message_unref(m);
                ipcmux_sender_unref(tx_back); /* the parent's copy is the only holder now */
                ipcmux_channel_unref(ch);
                m = NULL;
        } else {
                ipcmux_server *srv = NULL;
                char *name = NULL;
                CHECK(ipcmux_server_new(&srv, &name));
                CHECK(ipcmux_sender_send_bytes(tx, name, strlen(name) + 1));
                CHECK(ipcmux_server_accept_timeout(srv, ACCEPT_TIMEOUT_USEC, &rx_back, &m)); /* m: the first ping */
                ipcmux_server_unref(srv);
                free(name);
        }
        for (;;) {
                if (!m) {
                        r = ipcmux_receiver_recv(rx_back, &m);
                        if (r == -EPIPE)
                                break;
                        if (r < 0)
                                die("echo: recv: %s", strerror(-r));
                }
                {
                        size_t sz;
                        const void *p = ipcmux_message_get_data(m, &sz);
                        CHECK(ipcmux_sender_send_bytes(tx, p, sz));
                }
                ipcmux_message_unref(m);
                m = NULL;
                n++;
        }
        if (o->verbose)
                fprintf(stderr, "echo: %" PRIu64 " echoes\n", n);
        ipcmux_receiver_unref(rx_back);
        ipcmux_sender_unref(tx);
        return 0;
}

/*
 * -P N: N idle peers of this process's connection, as a service with many
 * quiet clients has: raw connections that each made one Subchannel1 call
 * to us (to no receiver; it only makes us watch them).  Freed by the caller
 * with close_idle_peers().
 */
static sd_bus **open_idle_peers(const char *server_name, unsigned n) {
        char *me = strndup(server_name, strcspn(server_name, "/"));
        sd_bus **peers = calloc(n ? n : 1, sizeof(sd_bus *));
        struct rlimit rl;

        if (!me || !peers)
                die("out of memory");
        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max;
                (void) setrlimit(RLIMIT_NOFILE, &rl);
        }
        for (unsigned i = 0; i < n; i++) {
                CHECK(sd_bus_open_user(&peers[i]));
                CHECK(sd_bus_call_method_async(peers[i], NULL, me, "/org/ipcmux/idle/peer", "org.ipcmux.Subchannel1",
                                               "Release", NULL, NULL, "u", 1u));
                CHECK(sd_bus_flush(peers[i]));
        }
        free(me);
        return peers;
}

static void close_idle_peers(sd_bus **peers, unsigned n) {
        for (unsigned i = 0; i < n; i++)
                sd_bus_flush_close_unref(peers[i]);
        free(peers);
}

static int run_pingpong(const struct opts *o) {
        ipcmux_server *srv = NULL;
        ipcmux_receiver *rx = NULL;
        ipcmux_sender *tx = NULL;
        ipcmux_message *m = NULL;
        char *name = NULL, label[128];
        void *buf = malloc(o->size ? o->size : 1);
        uint64_t *lat = calloc(o->count + 1, sizeof(uint64_t));
        uint64_t i, n = 0;
        double t0, t1, deadline = 0, p50, p99, mean;
        struct child child;
        int r;

        fill_pattern(buf, o->size, 3);
        CHECK(ipcmux_server_new(&srv, &name));
        sd_bus **idle = open_idle_peers(name, o->idle_peers);
        {
                char *argv[] = { (char *) "bench-ipcmux", (char *) "echo", (char *) "-c", name, (char *) "-B",
                                 (char *) (o->via_server ? "server" : "attach"), o->verbose ? (char *) "-v" : NULL,
                                 NULL };
                child = spawn_self(argv, 0);
        }
        CHECK(ipcmux_server_accept_timeout(srv, ACCEPT_TIMEOUT_USEC, &rx, &m));
        if (!o->via_server) {
                if (ipcmux_message_get_n_senders(m) != 1)
                        die("pingpong: first message carries %u senders, expected 1",
                            ipcmux_message_get_n_senders(m));
                CHECK(ipcmux_message_take_sender(m, 0, &tx));
        } else {
                size_t sz;
                const char *p = ipcmux_message_get_data(m, &sz);
                if (sz == 0 || p[sz - 1] != '\0')
                        die("pingpong: first message is not a server name");
                CHECK(ipcmux_sender_connect(p, &tx));
        }
        ipcmux_message_unref(m);

        t0 = now_s();
        for (i = 0; i < o->warmup + o->count; i++) {
                uint64_t s = now_ns();
                size_t sz;
                if (i == o->warmup) {
                        t0 = now_s();
                        deadline = o->time_limit > 0 ? t0 + o->time_limit : 0;
                }
                r = ipcmux_sender_send_bytes(tx, buf, o->size);
                if (r < 0)
                        die("pingpong: send: %s", strerror(-r));
                r = ipcmux_receiver_recv(rx, &m);
                if (r < 0)
                        die("pingpong: recv: %s", strerror(-r));
                ipcmux_message_get_data(m, &sz);
                if (sz != o->size)
                        die("pingpong: echo of %zu bytes, expected %zu", sz, o->size);
                ipcmux_message_unref(m);
                if (i >= o->warmup)
                        lat[n++] = now_ns() - s;
                if (deadline > 0 && i >= o->warmup && now_s() > deadline)
                        break;
        }
        t1 = now_s();
        ipcmux_sender_unref(tx); /* the child's receiver disconnects, it exits */
        r = ipcmux_receiver_recv(rx, &m);
        if (r != -EPIPE)
                die("pingpong: expected -EPIPE after the echo child left, got %d", r);
        wait_child(&child, "echo", NULL, 0);
        lat_summary(lat, n, &p50, &p99, &mean);
        result_name(o, label, sizeof(label));
        print_result(label, n, t1 - t0, o->size, &p50, &p99, &mean);
        close_idle_peers(idle, o->idle_peers);
        ipcmux_receiver_unref(rx);
        ipcmux_server_unref(srv);
        free(name);
        free(lat);
        free(buf);
        return 0;
}

/* ------------------------------------------------------------------- driver */

static void usage(void) {
        fprintf(stderr,
                "usage: bench-ipcmux oneway|region|pingpong [-s SIZE] [-n COUNT] [-w WARMUP] [-t SECS]\n"
                "                    [-k bytes|message|sender|newsender] [-K] [-D recv|event|glib] [-T THREADS]\n"
                "                    [-R POOL] [-u] [-B attach|server] [-l LABEL] [-v] [-S] [-X] [-Q MSGS] [-P PEERS]\n"
                "       bench-ipcmux local [-n COUNT] [-w WARMUP] [-s SIZE] [-k bytes|sender] [-b BURST]\n"
                "       bench-ipcmux slow [-n COUNT] [-w WARMUP] [-s SIZE] [-E EVERY] [-q MAX]\n"
                "       bench-ipcmux rr -M SUBS [-n COUNT] [-w WARMUP] [-s SIZE]\n"
                "       bench-ipcmux serve [-n COUNT -w WARMUP] [-s SIZE] [-K]       (prints NAME <name>)\n"
                "       bench-ipcmux send -c NAME [-n COUNT] [-w WARMUP] [-s SIZE] [-k KIND] [-i USEC]\n"
                "       bench-ipcmux echo -c NAME [-B attach|server]\n");
        exit(2);
}

int main(int argc, char **argv) {
        struct opts o = { .size = 64, .count = 200000, .warmup = 0, .time_limit = 0, .max_queued = 8192,
                          .threads = 1, .slow_every = 1, .report_fd = -1 };
        struct rlimit rl = { 65536, 65536 };
        int c;

        if (argc < 2)
                usage();
        o.mode = argv[1];
        optind = 2;
        while ((c = getopt(argc, argv, "s:n:w:t:k:B:c:C:l:vSXQ:R:uKD:T:E:q:M:i:b:F:P:")) != -1) {
                switch (c) {
                case 's': o.size = parse_size(optarg); break;
                case 'n': o.count = strtoull(optarg, NULL, 10); o.count_set = 1; break;
                case 'w': o.warmup = strtoull(optarg, NULL, 10); break;
                case 't': o.time_limit = atof(optarg); break;
                case 'k':
                        if (strcmp(optarg, "bytes") == 0)
                                o.kind = KIND_BYTES;
                        else if (strcmp(optarg, "message") == 0)
                                o.kind = KIND_MESSAGE;
                        else if (strcmp(optarg, "region") == 0)
                                o.kind = KIND_REGION;
                        else if (strcmp(optarg, "sender") == 0)
                                o.kind = KIND_SENDER;
                        else if (strcmp(optarg, "newsender") == 0)
                                o.kind = KIND_NEWSENDER;
                        else
                                usage();
                        break;
                case 'B':
                        if (strcmp(optarg, "attach") == 0)
                                o.via_server = 0;
                        else if (strcmp(optarg, "server") == 0)
                                o.via_server = 1;
                        else
                                usage();
                        break;
                case 'c': o.connect = optarg; break;
                case 'C': o.connect_slow = optarg; break;
                case 'l': o.label = optarg; break;
                case 'P': o.idle_peers = (unsigned) strtoul(optarg, NULL, 10); break;
                case 'v': o.verbose = 1; break;
                case 'S': o.seq = 1; break;
                case 'X': o.sync_exit = 1; break;
                case 'Q': o.max_queued = strtoull(optarg, NULL, 10); break;
                case 'R': o.pool = (unsigned) strtoul(optarg, NULL, 10); break;
                case 'u': o.same_region = 1; break;
                case 'K': o.keep = 1; break;
                case 'D':
                        if (strcmp(optarg, "recv") == 0)
                                o.driver = DRIVER_RECV;
                        else if (strcmp(optarg, "event") == 0)
                                o.driver = DRIVER_EVENT;
                        else if (strcmp(optarg, "glib") == 0)
                                o.driver = DRIVER_GLIB;
                        else
                                usage();
                        break;
                case 'T': o.threads = (unsigned) strtoul(optarg, NULL, 10); break;
                case 'E': o.slow_every = (unsigned) strtoul(optarg, NULL, 10); break;
                case 'q': o.slow_max = strtoull(optarg, NULL, 10); break;
                case 'M': o.n_sub = (unsigned) strtoul(optarg, NULL, 10); break;
                case 'i': o.pace_us = (unsigned) strtoul(optarg, NULL, 10); break;
                case 'b': o.burst = (unsigned) strtoul(optarg, NULL, 10); break;
                case 'F': o.report_fd = atoi(optarg); break;
                default: usage();
                }
        }
        if (optind != argc)
                usage();
        if (o.threads == 0)
                o.threads = 1;
#ifndef BENCH_HAVE_GLIB
        if (o.driver == DRIVER_GLIB)
                die("built without GLib: -D glib is not available");
#endif
        setrlimit(RLIMIT_NOFILE, &rl);
        signal(SIGPIPE, SIG_IGN);
        resolve_self_exe();
        if (o.verbose)
                ipcmux_set_log_handler(log_to_stderr, NULL);
        if (!getenv("DBUS_SESSION_BUS_ADDRESS"))
                die("DBUS_SESSION_BUS_ADDRESS is not set (run.sh starts a private bus)");

        if (strcmp(o.mode, "oneway") == 0) {
                if (o.kind == KIND_REGION)
                        usage();
                o.count_set = 1;
                return run_oneway(&o);
        }
        if (strcmp(o.mode, "region") == 0) {
                o.kind = KIND_REGION;
                o.count_set = 1;
                if (o.pool && o.same_region)
                        die("-R and -u exclude each other");
                return run_oneway(&o);
        }
        if (strcmp(o.mode, "local") == 0) {
                o.count_set = 1;
                return run_local(&o);
        }
        if (strcmp(o.mode, "slow") == 0) {
                o.count_set = 1;
                return run_slow(&o);
        }
        if (strcmp(o.mode, "rr") == 0) {
                o.count_set = 1;
                return run_rr(&o);
        }
        if (strcmp(o.mode, "pingpong") == 0) {
                if (!o.count_set)
                        o.count = 20000;
                return run_pingpong(&o);
        }
        if (strcmp(o.mode, "serve") == 0)
                return run_serve(&o);
        if (strcmp(o.mode, "send") == 0) {
                if (!o.count_set)
                        o.count = 0;
                return run_send(&o);
        }
        if (strcmp(o.mode, "echo") == 0)
                return run_echo(&o);
        usage();
}
