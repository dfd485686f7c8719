/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* bench-raw: the raw sd-bus side of the ipcmux benchmarks.
 *
 * Copied from shared/bench-baselines/bench-sdbus.c (the harness behind
 * shared/reference/perf-baseline.md), with result labels "raw-*" instead of
 * "sdbus-*" so that run.sh can pair every raw row with its "ipcmux-*" row.
 * Payloads, modes and timing are unchanged, so the numbers stay comparable
 * with perf-baseline.md §4-§5.
 *
 * Raw sd-bus baselines: one-way throughput, ping-pong latency, memfd passing.
 *
 * Modes (fork a receiver child unless noted):
 *   oneway    N method calls with NO_REPLY_EXPECTED carrying 'ay' of -s bytes
 *   pingpong  method call + reply carrying 'ay' of -s bytes, per-call latency
 *   memfd     N one-way calls carrying 'h' (sealed memfd of -s bytes) + 't' size;
 *             the receiver checks seals, mmaps and checksums every byte.
 *             -S full seals SHRINK|GROW|WRITE (after munmap), -S grow only
 *             SHRINK|GROW; -R K reuses a pool of K memfds (calls with reply)
 * -W BYTES adds credit-window flow control to oneway (see struct window).
 *   serve     receiver only (no fork): on the bus with well-known name -N, or
 *             peer-to-peer listening on UNIX socket path -L (one client)
 *   send      sender only (no fork) of the oneway kind to -N on the bus, or to a
 *             peer-to-peer address -P; used under callgrind
 * -p runs oneway/pingpong/memfd peer-to-peer over a socketpair (no broker).
 * -i USEC (oneway, send): sleep USEC after every message, so that the sender
 *    paces one message at a time (run.sh's "unbatched" callgrind rows; added
 *    for ipcmux, not in the baselines).
 * The bus address comes from -a or $DBUS_SESSION_BUS_ADDRESS. */
#include "common.h"

#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <systemd/sd-bus.h>

#define OBJ_PATH "/org/bench/Sink"
#define IFACE "org.bench.Sink"

struct opts {
        const char *mode;
        size_t size;
        uint64_t count;
        double time_limit;
        uint64_t warmup;
        int p2p;
        int seal_write;
        int pool;
        size_t window;
        int quit;
        const char *name;
        const char *address;
        const char *p2p_address;
        const char *listen_path;
        const char *label;
};

/* ---------------------------------------------------------------- receiver */

static uint64_t rx_count, rx_bytes, rx_sum, rx_write_sealed;
static int rx_quit;

static int m_msg(sd_bus_message *m, void *ud, sd_bus_error *e) {
        const void *p;
        size_t n;
        int r = sd_bus_message_read_array(m, 'y', &p, &n);
        if (r < 0)
                return r;
        rx_sum += checksum(p, n);
        rx_bytes += n;
        rx_count++;
        return sd_bus_reply_method_return(m, NULL); /* no-op for NO_REPLY_EXPECTED */
}

static int m_fd(sd_bus_message *m, void *ud, sd_bus_error *e) {
        int fd, seals;
        uint64_t size;
        struct stat st;
        void *p;
        int r = sd_bus_message_read(m, "ht", &fd, &size);
        if (r < 0)
                return r;
        seals = fcntl(fd, F_GET_SEALS);
        if (seals < 0 || (seals & (F_SEAL_SHRINK | F_SEAL_GROW)) != (F_SEAL_SHRINK | F_SEAL_GROW))
                return sd_bus_error_set(e, "org.bench.Error.Seals", "memfd lacks shrink/grow seals");
        if (fstat(fd, &st) < 0 || (uint64_t) st.st_size < size)
                return sd_bus_error_set(e, "org.bench.Error.Size", "memfd smaller than announced");
        if (seals & F_SEAL_WRITE)
                rx_write_sealed++;
        p = mmap(NULL, size, PROT_READ, MAP_SHARED | MAP_POPULATE, fd, 0);
        if (p == MAP_FAILED)
                return -errno;
        rx_sum += checksum(p, size);
        munmap(p, size);
        rx_bytes += size;
        rx_count++;
        return sd_bus_reply_method_return(m, NULL);
}

static int m_echo(sd_bus_message *m, void *ud, sd_bus_error *e) {
        const void *p;
        size_t n;
        sd_bus_message *reply = NULL;
        int r = sd_bus_message_read_array(m, 'y', &p, &n);
        if (r < 0)
                return r;
        r = sd_bus_message_new_method_return(m, &reply);
        if (r < 0)
                return r;
        r = sd_bus_message_append_array(reply, 'y', p, n);
        if (r >= 0)
                r = sd_bus_send(NULL, reply, NULL);
        sd_bus_message_unref(reply);
        rx_count++;
        return r < 0 ? r : 1;
}

static int m_done(sd_bus_message *m, void *ud, sd_bus_error *e) {
        int r = sd_bus_reply_method_return(m, "tttt", rx_count, rx_bytes, rx_sum, rx_write_sealed);
        rx_count = rx_bytes = rx_sum = rx_write_sealed = 0;
        return r;
}

static int m_ping(sd_bus_message *m, void *ud, sd_bus_error *e) {
        return sd_bus_reply_method_return(m, NULL);
}

static int m_quit(sd_bus_message *m, void *ud, sd_bus_error *e) {
        rx_quit = 1;
        return sd_bus_reply_method_return(m, NULL);
}

static const sd_bus_vtable sink_vtable[] = {
        SD_BUS_VTABLE_START(0),
        SD_BUS_METHOD("Msg", "ay", "", m_msg, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("Fd", "ht", "", m_fd, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("Echo", "ay", "ay", m_echo, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("Done", "", "tttt", m_done, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("Ping", "", "", m_ping, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_METHOD("Quit", "", "", m_quit, SD_BUS_VTABLE_UNPRIVILEGED),
        SD_BUS_VTABLE_END
};

static void receiver_loop(sd_bus *bus) {
        int r;
        while (!rx_quit) {
                r = sd_bus_process(bus, NULL);
                if (r < 0)
                        die("receiver: sd_bus_process: %s", strerror(-r));
                if (r > 0)
                        continue;
                r = sd_bus_wait(bus, UINT64_MAX);
                if (r < 0 && r != -EINTR)
                        die("receiver: sd_bus_wait: %s", strerror(-r));
        }
        sd_bus_flush(bus);
}

/* -------------------------------------------------------------- connections */

static const char *bus_address(const struct opts *o) {
        const char *a = o->address ? o->address : getenv("DBUS_SESSION_BUS_ADDRESS");
        if (!a)
                die("no bus address: pass -a or set DBUS_SESSION_BUS_ADDRESS");
        return a;
}

static sd_bus *connect_broker(const char *address) {
        sd_bus *b = NULL;
        int r;
        if ((r = sd_bus_new(&b)) < 0 ||
            (r = sd_bus_set_address(b, address)) < 0 ||
            (r = sd_bus_set_bus_client(b, 1)) < 0 ||
            (r = sd_bus_negotiate_fds(b, 1)) < 0 ||
            (r = sd_bus_start(b)) < 0)
                die("connect to bus %s: %s", address, strerror(-r));
        sd_bus_set_method_call_timeout(b, 120 * 1000000ull);
        return b;
}

/* Peer-to-peer bus on an already-connected socket; server side accepts ANONYMOUS. */
static sd_bus *connect_p2p_fd(int fd, int server) {
        sd_bus *b = NULL;
        sd_id128_t id;
        int r;
        if ((r = sd_bus_new(&b)) < 0 || (r = sd_bus_set_fd(b, fd, fd)) < 0)
                die("p2p: %s", strerror(-r));
        if (server) {
                sd_id128_randomize(&id);
                if ((r = sd_bus_set_server(b, 1, id)) < 0)
                        die("p2p set_server: %s", strerror(-r));
        }
        if ((r = sd_bus_set_anonymous(b, 1)) < 0 ||
            (r = sd_bus_negotiate_fds(b, 1)) < 0 ||
            (r = sd_bus_start(b)) < 0)
                die("p2p start: %s", strerror(-r));
        sd_bus_set_method_call_timeout(b, 120 * 1000000ull);
        return b;
}

static sd_bus *connect_p2p_address(const char *address) {
        sd_bus *b = NULL;
        int r, tries;
        for (tries = 0; tries < 500; tries++) {
                if ((r = sd_bus_new(&b)) < 0 || (r = sd_bus_set_address(b, address)) < 0 ||
                    (r = sd_bus_set_anonymous(b, 1)) < 0 || (r = sd_bus_negotiate_fds(b, 1)) < 0)
                        die("p2p client: %s", strerror(-r));
                r = sd_bus_start(b);
                if (r >= 0) {
                        sd_bus_set_method_call_timeout(b, 120 * 1000000ull);
                        return b;
                }
                b = sd_bus_unref(b);
                usleep(10000);
        }
        die("p2p connect %s: %s", address, strerror(-r));
}

/* Wait (bounded) until a well-known name has an owner. */
static void wait_for_name(sd_bus *bus, const char *name) {
        for (int i = 0; i < 1000; i++) {
                sd_bus_error err = SD_BUS_ERROR_NULL;
                sd_bus_message *reply = NULL;
                int has = 0, r;
                r = sd_bus_call_method(bus, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                       "org.freedesktop.DBus", "NameHasOwner", &err, &reply, "s", name);
                if (r >= 0)
                        sd_bus_message_read(reply, "b", &has);
                sd_bus_message_unref(reply);
                sd_bus_error_free(&err);
                if (has)
                        return;
                usleep(10000);
        }
        die("name %s never appeared", name);
}

/* ------------------------------------------------------------------ sender */

/* If the connection has queued output (socket was full), block until drained:
 * a streaming sender with the kernel socket buffer as flow control. */
static inline void drain_if_queued(sd_bus *bus) {
        int ev = sd_bus_get_events(bus);
        if (ev > 0 && (ev & POLLOUT)) {
                int r = sd_bus_flush(bus);
                if (r < 0)
                        die("sd_bus_flush: %s", strerror(-r));
        }
}

static void send_msg(sd_bus *bus, sd_bus_message *m) {
        int r = sd_bus_send(bus, m, NULL);
        if (r == -ENOBUFS) {
                sd_bus_flush(bus);
                r = sd_bus_send(bus, m, NULL);
        }
        if (r < 0)
                die("sd_bus_send: %s", strerror(-r));
}

/* Optional credit window (-W BYTES): after every BYTES sent, an async Ping()
 * call is issued; the sender never runs more than two windows ahead of the
 * last Ping reply. This bounds what sits queued in the broker for the
 * receiver, as a flow-controlled multiplexer would (dbus-broker disconnects
 * a peer whose queued bytes exceed its quota; dbus-daemon queues ~1 GB). */
struct window {
        sd_bus *bus;
        const char *dest;
        size_t limit, cur;
        uint64_t issued, acked;
};

static int on_window_ack(sd_bus_message *m, void *ud, sd_bus_error *e) {
        struct window *w = ud;
        if (sd_bus_message_is_method_error(m, NULL))
                die("Ping failed: %s", sd_bus_message_get_error(m)->message);
        w->acked++;
        return 0;
}

static void window_account(struct window *w, size_t n) {
        int r;
        w->cur += n;
        if (w->cur < w->limit)
                return;
        w->cur = 0;
        r = sd_bus_call_method_async(w->bus, NULL, w->dest, OBJ_PATH, IFACE, "Ping", on_window_ack, w, "");
        if (r < 0)
                die("Ping: %s", strerror(-r));
        w->issued++;
        while (w->issued - w->acked >= 2) {
                r = sd_bus_process(w->bus, NULL);
                if (r < 0)
                        die("sd_bus_process: %s", strerror(-r));
                if (r == 0)
                        sd_bus_wait(w->bus, UINT64_MAX);
        }
}

static void window_drain(struct window *w) {
        while (w && w->issued != w->acked) {
                int r = sd_bus_process(w->bus, NULL);
                if (r < 0)
                        die("sd_bus_process: %s", strerror(-r));
                if (r == 0)
                        sd_bus_wait(w->bus, UINT64_MAX);
        }
}

/* -P: pause after every message (0: none). */
static unsigned pace_us;

static void pace(void) {
        struct timespec ts = { .tv_sec = pace_us / 1000000u, .tv_nsec = (long) (pace_us % 1000000u) * 1000 };
        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

/* The measured one-way send loop (callgrind --toggle-collect target). */
uint64_t bench_send_oneway_loop(sd_bus *bus, const char *dest, const void *buf, size_t size, uint64_t count,
                                double deadline, struct window *win);
__attribute__((noinline)) uint64_t bench_send_oneway_loop(sd_bus *bus, const char *dest, const void *buf,
                                                          size_t size, uint64_t count, double deadline,
                                                          struct window *win) {
        uint64_t i;
        uint64_t check_mask = size >= 4096 ? 0 : 63;
        for (i = 0; i < count; i++) {
                sd_bus_message *m = NULL;
                int r = sd_bus_message_new_method_call(bus, &m, dest, OBJ_PATH, IFACE, "Msg");
                if (r < 0)
                        die("new_method_call: %s", strerror(-r));
                sd_bus_message_set_expect_reply(m, 0);
                r = sd_bus_message_append_array(m, 'y', buf, size);
                if (r < 0)
                        die("append_array: %s", strerror(-r));
                send_msg(bus, m);
                sd_bus_message_unref(m);
                drain_if_queued(bus);
                if (win)
                        window_account(win, size);
                if (pace_us)
                        pace();
                if (deadline > 0 && (i & check_mask) == check_mask && now_s() > deadline) {
                        i++;
                        break;
                }
        }
        return i;
}

static uint64_t send_memfd_loop(sd_bus *bus, const char *dest, const void *src, size_t size, int seal_write,
                                uint64_t count, double deadline) {
        uint64_t i;
        for (i = 0; i < count; i++) {
                sd_bus_message *m = NULL;
                int fd = memfd_create("bench-payload", MFD_CLOEXEC | MFD_ALLOW_SEALING);
                void *p;
                int r;
                if (fd < 0)
                        die("memfd_create: %s", strerror(errno));
                if (ftruncate(fd, (off_t) size) < 0)
                        die("ftruncate: %s", strerror(errno));
                p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
                if (p == MAP_FAILED)
                        die("mmap: %s", strerror(errno));
                memcpy(p, src, size); /* "produce" the payload: one copy, as append_array does inline */
                if (seal_write) {
                        munmap(p, size); /* F_SEAL_WRITE needs no writable shared mapping */
                        if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) < 0)
                                die("F_ADD_SEALS: %s", strerror(errno));
                } else {
                        if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0)
                                die("F_ADD_SEALS: %s", strerror(errno));
                        munmap(p, size);
                }
                r = sd_bus_message_new_method_call(bus, &m, dest, OBJ_PATH, IFACE, "Fd");
                if (r < 0)
                        die("new_method_call: %s", strerror(-r));
                sd_bus_message_set_expect_reply(m, 0);
                r = sd_bus_message_append(m, "ht", fd, (uint64_t) size); /* sd-bus dups the fd */
                if (r < 0)
                        die("append h: %s", strerror(-r));
                send_msg(bus, m);
                sd_bus_message_unref(m);
                close(fd);
                drain_if_queued(bus);
                if (deadline > 0 && now_s() > deadline) {
                        i++;
                        break;
                }
        }
        return i;
}

/* Pool variant: -R K memfds created once (sealed SHRINK|GROW only, so they stay
 * writable), mapped once by the sender and reused; each transfer is a method
 * call WITH reply, and a buffer is rewritten only after its reply arrived. The
 * receiver still mmaps/checksums/munmaps per message. Shows what reusing
 * already-allocated shmem pages buys compared to a fresh memfd per message. */
struct pool_buf {
        int fd;
        void *p;
        int busy;
};

static int on_pool_reply(sd_bus_message *m, void *ud, sd_bus_error *e) {
        struct pool_buf *b = ud;
        if (sd_bus_message_is_method_error(m, NULL))
                die("Fd call failed: %s", sd_bus_message_get_error(m)->message);
        b->busy = 0;
        return 0;
}

static void pool_wait_free(sd_bus *bus, struct pool_buf *b) {
        while (b->busy) {
                int r = sd_bus_process(bus, NULL);
                if (r < 0)
                        die("sd_bus_process: %s", strerror(-r));
                if (r == 0 && b->busy)
                        sd_bus_wait(bus, UINT64_MAX);
        }
}

static uint64_t send_memfd_pool_loop(sd_bus *bus, const char *dest, const void *src, size_t size,
                                     struct pool_buf *pool, int k, uint64_t count, double deadline) {
        uint64_t i;
        for (i = 0; i < count; i++) {
                struct pool_buf *b = &pool[i % (uint64_t) k];
                sd_bus_message *m = NULL;
                int r;
                pool_wait_free(bus, b);
                memcpy(b->p, src, size);
                r = sd_bus_message_new_method_call(bus, &m, dest, OBJ_PATH, IFACE, "Fd");
                if (r >= 0)
                        r = sd_bus_message_append(m, "ht", b->fd, (uint64_t) size);
                if (r >= 0)
                        r = sd_bus_call_async(bus, NULL, m, on_pool_reply, b, 0);
                if (r < 0)
                        die("pool send: %s", strerror(-r));
                b->busy = 1;
                sd_bus_message_unref(m);
                if (deadline > 0 && now_s() > deadline) {
                        i++;
                        break;
                }
        }
        for (int j = 0; j < k; j++)
                pool_wait_free(bus, &pool[j]);
        return i;
}

struct done_info {
        uint64_t count, bytes, sum, write_sealed;
};

static struct done_info call_simple(sd_bus *bus, const char *dest, const char *member) {
        sd_bus_error err = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        struct done_info d = { 0 };
        int r = sd_bus_call_method(bus, dest, OBJ_PATH, IFACE, member, &err, &reply, "");
        if (r < 0)
                die("%s call failed: %s %s", member, err.name ? err.name : "", err.message ? err.message : strerror(-r));
        if (strcmp(member, "Done") == 0)
                sd_bus_message_read(reply, "tttt", &d.count, &d.bytes, &d.sum, &d.write_sealed);
        sd_bus_message_unref(reply);
        return d;
}

static void check_done(const char *what, struct done_info d, uint64_t sent, uint64_t expect_sum) {
        if (d.count != sent)
                die("%s: receiver counted %" PRIu64 " of %" PRIu64 " messages", what, d.count, sent);
        if (d.sum != expect_sum)
                die("%s: checksum mismatch", what);
}

static void run_oneway(sd_bus *bus, const char *dest, const struct opts *o, const char *name) {
        void *buf = malloc(o->size ? o->size : 1);
        uint64_t one_sum, sent;
        double t0, t1;
        struct done_info d;
        struct window win = { .bus = bus, .dest = dest, .limit = o->window }, *winp = o->window ? &win : NULL;
        fill_pattern(buf, o->size, 7);
        one_sum = checksum(buf, o->size);
        if (o->warmup) {
                sent = bench_send_oneway_loop(bus, dest, buf, o->size, o->warmup, 0, winp);
                window_drain(winp);
                d = call_simple(bus, dest, "Done");
                check_done("warmup", d, sent, one_sum * sent);
        }
        t0 = now_s();
        sent = bench_send_oneway_loop(bus, dest, buf, o->size, o->count, o->time_limit > 0 ? t0 + o->time_limit : 0,
                                      winp);
        window_drain(winp);
        d = call_simple(bus, dest, "Done");
        t1 = now_s();
        check_done(name, d, sent, one_sum * sent);
        if (name)
                print_result(name, sent, t1 - t0, o->size, NULL, NULL, NULL);
        free(buf);
}

static void run_pingpong(sd_bus *bus, const char *dest, const struct opts *o, const char *name) {
        void *buf = malloc(o->size ? o->size : 1);
        uint64_t *lat = calloc(o->count + o->warmup + 1, sizeof(uint64_t));
        uint64_t i, n = 0;
        double t0, t1, deadline, p50, p99, mean;
        fill_pattern(buf, o->size, 3);
        t0 = now_s();
        deadline = o->time_limit > 0 ? t0 + o->time_limit : 0;
        for (i = 0; i < o->warmup + o->count; i++) {
                sd_bus_message *m = NULL, *reply = NULL;
                sd_bus_error err = SD_BUS_ERROR_NULL;
                const void *p;
                size_t rn;
                uint64_t s = now_ns();
                int r;
                if (i == o->warmup)
                        t0 = now_s();
                r = sd_bus_message_new_method_call(bus, &m, dest, OBJ_PATH, IFACE, "Echo");
                if (r >= 0)
                        r = sd_bus_message_append_array(m, 'y', buf, o->size);
                if (r >= 0)
                        r = sd_bus_call(bus, m, 0, &err, &reply);
                if (r < 0)
                        die("Echo: %s", err.message ? err.message : strerror(-r));
                r = sd_bus_message_read_array(reply, 'y', &p, &rn);
                if (r < 0 || rn != o->size)
                        die("Echo reply size mismatch");
                sd_bus_message_unref(m);
                sd_bus_message_unref(reply);
                if (i >= o->warmup)
                        lat[n++] = now_ns() - s;
                if (deadline > 0 && i >= o->warmup && now_s() > deadline)
                        break;
        }
        t1 = now_s();
        call_simple(bus, dest, "Done");
        lat_summary(lat, n, &p50, &p99, &mean);
        print_result(name, n, t1 - t0, o->size, &p50, &p99, &mean);
        free(lat);
        free(buf);
}

static void run_memfd(sd_bus *bus, const char *dest, const struct opts *o, const char *name) {
        void *src = malloc(o->size);
        uint64_t one_sum, sent;
        double t0, t1;
        struct done_info d;
        struct pool_buf *pool = NULL;
        fill_pattern(src, o->size, 11);
        one_sum = checksum(src, o->size);
        if (o->pool > 0) {
                pool = calloc((size_t) o->pool, sizeof(*pool));
                for (int j = 0; j < o->pool; j++) {
                        pool[j].fd = memfd_create("bench-pool", MFD_CLOEXEC | MFD_ALLOW_SEALING);
                        if (pool[j].fd < 0 || ftruncate(pool[j].fd, (off_t) o->size) < 0 ||
                            fcntl(pool[j].fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) < 0)
                                die("pool memfd: %s", strerror(errno));
                        pool[j].p = mmap(NULL, o->size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, pool[j].fd, 0);
                        if (pool[j].p == MAP_FAILED)
                                die("pool mmap: %s", strerror(errno));
                }
        }
#define MEMFD_SEND(n, dl) (pool ? send_memfd_pool_loop(bus, dest, src, o->size, pool, o->pool, (n), (dl)) \
                                : send_memfd_loop(bus, dest, src, o->size, o->seal_write, (n), (dl)))
        if (o->warmup) {
                sent = MEMFD_SEND(o->warmup, 0);
                d = call_simple(bus, dest, "Done");
                check_done("warmup", d, sent, one_sum * sent);
        }
        t0 = now_s();
        sent = MEMFD_SEND(o->count, o->time_limit > 0 ? t0 + o->time_limit : 0);
#undef MEMFD_SEND
        d = call_simple(bus, dest, "Done");
        t1 = now_s();
        check_done(name, d, sent, one_sum * sent);
        if (!pool && o->seal_write && d.write_sealed != sent)
                die("receiver saw %" PRIu64 " write-sealed memfds of %" PRIu64, d.write_sealed, sent);
        print_result(name, sent, t1 - t0, o->size, NULL, NULL, NULL);
        for (int j = 0; pool && j < o->pool; j++) {
                munmap(pool[j].p, o->size);
                close(pool[j].fd);
        }
        free(pool);
        free(src);
}

/* ------------------------------------------------------------------- driver */

static void size_label(size_t s, char *out, size_t outlen) {
        if (s >= (1u << 20) && s % (1u << 20) == 0)
                snprintf(out, outlen, "%zuMiB", s >> 20);
        else if (s >= 1024 && s % 1024 == 0)
                snprintf(out, outlen, "%zuKiB", s >> 10);
        else
                snprintf(out, outlen, "%zuB", s);
}

static void run_sender(sd_bus *bus, const char *dest, const struct opts *o) {
        char name[128], sz[32];
        size_label(o->size, sz, sizeof(sz));
        if (o->label)
                snprintf(name, sizeof(name), "%s", o->label);
        else if (strcmp(o->mode, "memfd") == 0 && o->pool > 0)
                snprintf(name, sizeof(name), "raw%s-memfd-pool%d-%s", o->p2p ? "-p2p" : "", o->pool, sz);
        else if (strcmp(o->mode, "memfd") == 0)
                snprintf(name, sizeof(name), "raw%s-memfd-%s-%s", o->p2p ? "-p2p" : "", o->seal_write ? "sealW" : "sealSG", sz);
        else
                snprintf(name, sizeof(name), "raw%s-%s-%s%s", o->p2p ? "-p2p" : "", o->mode, sz, o->window ? "-win" : "");
        if (strcmp(o->mode, "oneway") == 0)
                run_oneway(bus, dest, o, name);
        else if (strcmp(o->mode, "pingpong") == 0)
                run_pingpong(bus, dest, o, name);
        else if (strcmp(o->mode, "memfd") == 0)
                run_memfd(bus, dest, o, name);
        else
                die("unknown mode %s", o->mode);
}

static int run_forked(const struct opts *o) {
        int sv[2], pfd[2];
        pid_t pid;
        int status;
        if (o->p2p) {
                if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
                        die("socketpair: %s", strerror(errno));
        } else if (pipe2(pfd, O_CLOEXEC) < 0)
                die("pipe: %s", strerror(errno));

        pid = fork();
        if (pid < 0)
                die("fork: %s", strerror(errno));
        if (pid == 0) {
                sd_bus *bus;
                sd_bus_slot *slot = NULL;
                int r;
                if (o->p2p) {
                        close(sv[0]);
                        bus = connect_p2p_fd(sv[1], 1);
                } else {
                        const char *uniq = NULL;
                        close(pfd[0]);
                        bus = connect_broker(bus_address(o));
                        sd_bus_get_unique_name(bus, &uniq);
                        if (write(pfd[1], uniq, strlen(uniq) + 1) < 0)
                                _exit(3);
                        close(pfd[1]);
                }
                r = sd_bus_add_object_vtable(bus, &slot, OBJ_PATH, IFACE, sink_vtable, NULL);
                if (r < 0)
                        die("add_object_vtable: %s", strerror(-r));
                receiver_loop(bus);
                sd_bus_flush_close_unref(bus);
                _exit(0);
        }

        {
                sd_bus *bus;
                char dest[256] = { 0 };
                const char *d = NULL;
                if (o->p2p) {
                        close(sv[1]);
                        bus = connect_p2p_fd(sv[0], 0);
                } else {
                        ssize_t k, got = 0;
                        close(pfd[1]);
                        while ((k = read(pfd[0], dest + got, sizeof(dest) - 1 - (size_t) got)) > 0)
                                got += k;
                        close(pfd[0]);
                        if (got <= 1)
                                die("receiver did not report its unique name");
                        d = dest;
                        bus = connect_broker(bus_address(o));
                }
                /* The receiver's vtable may not be registered yet: Done round-trip
                 * is harmless either way because calls queue in order; but wait
                 * until it answers so the first measured message is dispatched. */
                for (int i = 0; i < 500; i++) {
                        sd_bus_error err = SD_BUS_ERROR_NULL;
                        int r = sd_bus_call_method(bus, d, OBJ_PATH, IFACE, "Done", &err, NULL, "");
                        sd_bus_error_free(&err);
                        if (r >= 0)
                                break;
                        usleep(2000);
                }
                run_sender(bus, d, o);
                call_simple(bus, d, "Quit");
                sd_bus_flush_close_unref(bus);
        }
        if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
                die("receiver child failed (status %d)", status);
        return 0;
}

static int run_serve(const struct opts *o) {
        sd_bus *bus;
        sd_bus_slot *slot = NULL;
        int r;
        if (o->listen_path) {
                struct sockaddr_un sa = { .sun_family = AF_UNIX };
                int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0), cfd;
                if (strlen(o->listen_path) >= sizeof(sa.sun_path))
                        die("listen path too long");
                strcpy(sa.sun_path, o->listen_path);
                unlink(o->listen_path);
                if (lfd < 0 || bind(lfd, (struct sockaddr *) &sa, sizeof(sa)) < 0 || listen(lfd, 4) < 0)
                        die("listen %s: %s", o->listen_path, strerror(errno));
                printf("READY\n");
                fflush(stdout);
                cfd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
                if (cfd < 0)
                        die("accept: %s", strerror(errno));
                close(lfd);
                unlink(o->listen_path);
                bus = connect_p2p_fd(cfd, 1);
        } else {
                if (!o->name)
                        die("serve needs -N NAME or -L PATH");
                bus = connect_broker(bus_address(o));
                r = sd_bus_request_name(bus, o->name, 0);
                if (r < 0)
                        die("request_name %s: %s", o->name, strerror(-r));
                printf("READY\n");
                fflush(stdout);
        }
        r = sd_bus_add_object_vtable(bus, &slot, OBJ_PATH, IFACE, sink_vtable, NULL);
        if (r < 0)
                die("add_object_vtable: %s", strerror(-r));
        receiver_loop(bus);
        sd_bus_flush_close_unref(bus);
        return 0;
}

static int run_send(const struct opts *o) {
        sd_bus *bus;
        const char *dest = NULL;
        char name[128], sz[32];
        if (o->p2p_address) {
                bus = connect_p2p_address(o->p2p_address);
        } else {
                if (!o->name)
                        die("send needs -N NAME or -P ADDRESS");
                bus = connect_broker(bus_address(o));
                wait_for_name(bus, o->name);
                dest = o->name;
        }
        size_label(o->size, sz, sizeof(sz));
        snprintf(name, sizeof(name), "%s", o->label ? o->label : "raw-send");
        /* Synchronous round-trip first: sd_bus_start() authenticates
         * asynchronously, and anything sent before authentication completes
         * lands in sd-bus's write queue (drained with one memmove per message,
         * i.e. quadratically) instead of going straight to the socket. */
        call_simple(bus, dest, "Done");
        {
                struct opts so = *o;
                so.warmup = 0;
                run_oneway(bus, dest, &so, name);
        }
        if (o->quit)
                call_simple(bus, dest, "Quit");
        sd_bus_flush_close_unref(bus);
        return 0;
}

static void usage(void) {
        fprintf(stderr,
                "usage: bench-raw oneway|pingpong|memfd|serve|send [-s SIZE] [-n COUNT] [-t SECS]\n"
                "       [-w WARMUP] [-p] [-S full|grow] [-R POOL] [-W WINDOW] [-N NAME] [-a ADDR] [-P P2P_ADDR] [-L PATH] [-q] [-l LABEL] [-i USEC]\n");
        exit(2);
}

int main(int argc, char **argv) {
        struct opts o = { .size = 64, .count = 100000, .time_limit = 2.0, .warmup = 0, .seal_write = 1 };
        int c;
        struct rlimit rl = { 65536, 65536 };
        if (argc < 2)
                usage();
        o.mode = argv[1];
        optind = 2;
        while ((c = getopt(argc, argv, "s:n:t:w:pS:R:W:N:a:P:L:ql:i:")) != -1) {
                switch (c) {
                case 's': o.size = parse_size(optarg); break;
                case 'n': o.count = strtoull(optarg, NULL, 10); break;
                case 't': o.time_limit = atof(optarg); break;
                case 'w': o.warmup = strtoull(optarg, NULL, 10); break;
                case 'p': o.p2p = 1; break;
                case 'S': o.seal_write = strcmp(optarg, "full") == 0; break;
                case 'R': o.pool = atoi(optarg); break;
                case 'W': o.window = parse_size(optarg); break;
                case 'N': o.name = optarg; break;
                case 'a': o.address = optarg; break;
                case 'P': o.p2p_address = optarg; break;
                case 'L': o.listen_path = optarg; break;
                case 'q': o.quit = 1; break;
                case 'l': o.label = optarg; break;
                case 'i': pace_us = (unsigned) strtoul(optarg, NULL, 10); break;
                default: usage();
                }
        }
        setrlimit(RLIMIT_NOFILE, &rl);
        signal(SIGPIPE, SIG_IGN);
        if (strcmp(o.mode, "serve") == 0)
                return run_serve(&o);
        if (strcmp(o.mode, "send") == 0)
                return run_send(&o);
        if (strcmp(o.mode, "oneway") && strcmp(o.mode, "pingpong") && strcmp(o.mode, "memfd"))
                usage();
        return run_forked(&o);
}
