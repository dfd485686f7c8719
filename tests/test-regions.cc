/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Shared-memory regions and fd attachments, through the bus.
 *
 * The reference's SharedMemory scenarios (simple, from_byte, empty, large,
 * several in one message, with a sender, cross-thread via a one-shot server,
 * deref, take, take of an empty region) run three ways: in one process on
 * one connection (local delivery), in one process over two connections
 * (through the daemon), and between two processes (tests/helper-regions.c).
 * Then the limits: 16 fds per D-Bus message (tests/data/bus.conf sets the
 * daemon's max_message_unix_fds to 16: a message with more disconnects its
 * sender), 1,000 regions per message, payloads that spill into a memfd,
 * zero-length regions, plain fds, fd leaks over thousands of messages, peers
 * that send hostile fds (the receiver must never SIGBUS), per-peer quotas
 * (an unprivileged child with a low RLIMIT_NOFILE) and connections that
 * cannot pass fds at all.
 *
 * test-regions-big.cc includes this file with REGIONS_BIG defined: it holds
 * the 1 GiB cases only (their own binary, so the time bound of the others
 * stays tight).
 */

#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <functional>
#include <memory>
#include <thread>

#include "test-util.h"
#include "raw-peer.h"

#define INVALID_ARGS "org.freedesktop.DBus.Error.InvalidArgs"
#define ACCESS_DENIED "org.freedesktop.DBus.Error.AccessDenied"
#define LIMITS "org.freedesktop.DBus.Error.LimitsExceeded"

#ifndef F_SEAL_FUTURE_WRITE
#  define F_SEAL_FUTURE_WRITE 0x0010
#endif

static constexpr size_t KiB = 1024, MiB = 1024 * KiB;
static constexpr uint64_t GiB = 1024 * MiB;

/* The receiver's fd budget is a quarter of RLIMIT_NOFILE: make room for the
 * thousands of regions below even where the soft limit defaults to 1024. */
__attribute__((constructor)) static void raise_nofile(void) {
        struct rlimit rl;

        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 65536 && rl.rlim_cur < rl.rlim_max) {
                rl.rlim_cur = rl.rlim_max < 65536 ? rl.rlim_max : 65536;
                (void) setrlimit(RLIMIT_NOFILE, &rl);
        }
}

[[maybe_unused]] static size_t fd_budget(void) {
        struct rlimit rl;

        if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY)
                return 4096;
        return rl.rlim_cur / 4;
}

/* ---- shared with tests/helper-regions.c (keep identical) ----------------- */

static uint64_t sum64(const void *p, size_t n) {
        const uint8_t *b = (const uint8_t *) p;
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

static uint64_t pattern_word(uint64_t idx, uint64_t seed) {
        uint64_t w = idx * UINT64_C(0x9e3779b97f4a7c15) + seed * UINT64_C(0xbf58476d1ce4e5b9);

        return w ^ (w >> 31);
}

static uint8_t pattern_byte(size_t k, uint64_t seed) {
        uint8_t v = (uint8_t) (pattern_word(k / 8, seed) >> (8 * (k % 8)));

        return k == 0 && v == '!' ? '?' : v;
}

static void pattern_fill(void *p, size_t n, uint64_t seed, size_t off) {
        uint8_t *b = (uint8_t *) p;
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

/* ---- helpers ------------------------------------------------------------- */

static std::string hex16(uint64_t v) {
        char b[17];
        snprintf(b, sizeof(b), "%016" PRIx64, v);
        return b;
}

static uint64_t pattern_sum(size_t size, uint64_t seed) {
        std::vector<uint8_t> buf(size);
        pattern_fill(buf.data(), size, seed, 0);
        return sum64(buf.data(), size);
}

/* Owned list of regions (unref'd on destruction). */
struct Regs {
        std::vector<ipcmux_shmem *> v;

        Regs() = default;
        Regs(const Regs &) = delete;
        Regs &operator=(const Regs &) = delete;
        ~Regs() {
                for (auto s : v)
                        ipcmux_shmem_unref(s);
        }
        size_t size() const { return v.size(); }
        ipcmux_shmem *operator[](size_t i) const { return v[i]; }
        void add(ipcmux_shmem *s) { v.push_back(s); }
};

static ipcmux_shmem *pattern_region(size_t size, uint64_t seed) {
        ipcmux_shmem *s = NULL;
        int r = ipcmux_shmem_new(size, &s);
        EXPECT_GE(r, 0) << "shmem_new(" << size << "): " << strerror(-r);
        if (r < 0)
                return NULL;
        if (size > 0)
                pattern_fill(ipcmux_shmem_get_mutable_data(s), size, seed, 0);
        return s;
}

static ipcmux_message *build(const std::string &payload, const Regs &regs, const std::vector<int> &fds = {}) {
        ipcmux_message *m = NULL;
        EXPECT_GE(ipcmux_message_new(&m), 0);
        EXPECT_GE(ipcmux_message_append(m, payload.data(), payload.size()), 0);
        for (size_t i = 0; i < regs.size(); i++)
                EXPECT_EQ(ipcmux_message_attach_shmem(m, regs[i]), (int) i);
        for (size_t i = 0; i < fds.size(); i++)
                EXPECT_EQ(ipcmux_message_attach_fd(m, fds[i]), (int) i);
        return m;
}

/* build() and send; the message is dropped either way. */
static void send_regions(ipcmux_sender *tx, const std::string &payload, const Regs &regs,
                         const std::vector<int> &fds = {}) {
        ipcmux_message *m = build(payload, regs, fds);
        int r = ipcmux_sender_send(tx, m);
        ipcmux_message_unref(m);
        ASSERT_GE(r, 0) << "ipcmux_sender_send(\"" << payload.substr(0, 20) << "\"): " << strerror(-r);
}

/* What helper-regions answers for a data message. */
static std::string report_of(const void *p, size_t n, const Regs &regs, unsigned n_fds = 0,
                             unsigned n_senders = 0) {
        std::string s = "size=" + std::to_string(n) + " sum=" + hex16(sum64(p, n)) +
                        " regions=" + std::to_string(regs.size());
        for (size_t i = 0; i < regs.size(); i++)
                s += " " + std::to_string(ipcmux_shmem_get_size(regs[i])) + ":" +
                     hex16(sum64(ipcmux_shmem_get_data(regs[i]), ipcmux_shmem_get_size(regs[i])));
        s += " fds=" + std::to_string(n_fds) + " senders=" + std::to_string(n_senders) + " ro=1";
        return s;
}

static std::string report_of(const std::string &payload, const Regs &regs, unsigned n_fds = 0,
                             unsigned n_senders = 0) {
        return report_of(payload.data(), payload.size(), regs, n_fds, n_senders);
}

/*
 * A received message must carry exactly @want (same sizes, same bytes), each
 * index taken once; received regions are read-only, from this process too.
 */
static void expect_regions(ipcmux_message *m, const Regs &want) {
        ASSERT_EQ(ipcmux_message_get_n_shmem(m), want.size());
        for (size_t i = 0; i < want.size(); i++) {
                ipcmux_shmem *got = NULL;
                ASSERT_OK(ipcmux_message_take_shmem(m, (unsigned) i, &got));
                EXPECT_EQ(ipcmux_shmem_get_size(got), ipcmux_shmem_get_size(want[i])) << "region " << i;
                EXPECT_NE(ipcmux_shmem_get_data(got), nullptr);
                EXPECT_EQ(ipcmux_shmem_equal(got, want[i]), 1) << "region " << i;
                EXPECT_EQ(ipcmux_shmem_get_mutable_data(got), nullptr) << "region " << i;
                EXPECT_EQ(ipcmux_message_take_shmem(m, (unsigned) i, &got), -ENXIO);
                ipcmux_shmem_unref(got);
        }
        ipcmux_shmem *none = NULL;
        EXPECT_EQ(ipcmux_message_take_shmem(m, (unsigned) want.size(), &none), -EINVAL);
}

/* Receive one message; its payload must be @payload and regions @want. */
[[maybe_unused]] static void recv_expect(ipcmux_receiver *rx, const std::string &payload, const Regs &want,
                        uint64_t usec = 20000000) {
        ipcmux_message *m = NULL;
        ASSERT_OK(recv_bounded(rx, &m, usec));
        EXPECT_EQ(msg_str(m), payload);
        expect_regions(m, want);
        ipcmux_message_unref(m);
}

/* The round trip most tests are made of: @payload and @regs sent on @tx
 * arrive unchanged on @rx. */
[[maybe_unused]] static void send_expect(ipcmux_sender *tx, ipcmux_receiver *rx, const std::string &payload,
                                         const Regs &regs) {
        ASSERT_NO_FATAL_FAILURE(send_regions(tx, payload, regs));
        recv_expect(rx, payload, regs);
}

[[maybe_unused]] static std::string recv_text(ipcmux_receiver *rx, uint64_t usec = 20000000) {
        ipcmux_message *m = NULL;
        int r = recv_bounded(rx, &m, usec);
        EXPECT_GE(r, 0) << strerror(-r);
        if (r < 0)
                return "<" + std::string(strerror(-r)) + ">";
        std::string s = msg_str(m);
        ipcmux_message_unref(m);
        return s;
}

/* Read @fd to EOF (bounded: a leaked write end must fail the test, not hang it). */
[[maybe_unused]] static std::string read_all(int fd, int timeout_ms = 10000) {
        std::string s;
        uint64_t deadline = test_now_usec() + (uint64_t) timeout_ms * 1000;
        for (;;) {
                char buf[4096];
                struct pollfd p = {fd, POLLIN, 0};
                int left = (int) ((deadline - std::min(deadline, test_now_usec())) / 1000);
                if (left <= 0 || poll(&p, 1, left) <= 0) {
                        ADD_FAILURE() << "no EOF: a copy of the write end is still open somewhere";
                        return s;
                }
                ssize_t k = read(fd, buf, sizeof(buf));
                if (k <= 0)
                        return s;
                s.append(buf, (size_t) k);
        }
}

[[maybe_unused]] static int count_maps(const char *needle) {
        FILE *f = fopen("/proc/self/maps", "re");
        char line[4096];
        int n = 0;

        if (!f)
                return -errno;
        while (fgets(line, sizeof(line), f))
                if (strstr(line, needle))
                        n++;
        fclose(f);
        return n;
}

[[maybe_unused]] static int sealed_memfd(size_t size, unsigned seals, char fill = 0) {
        int fd = memfd_create("test-region", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0)
                return -1;
        if (ftruncate(fd, (off_t) size) < 0)
                return -1;
        if (fill && size > 0) {
                std::vector<char> buf(size, fill);
                if (pwrite(fd, buf.data(), size, 0) != (ssize_t) size)
                        return -1;
        }
        if (seals && fcntl(fd, F_ADD_SEALS, seals) < 0)
                return -1;
        return fd;
}

/* A raw client of the private bus, optionally without fd passing. */
static int connect_raw(bool fds, sd_bus **ret) {
        sd_bus *bus = NULL;
        const char *unique;
        int r;

        r = sd_bus_new(&bus);
        if (r >= 0)
                r = sd_bus_set_address(bus, test_bus_address(PrivateBus::bus));
        if (r >= 0)
                r = sd_bus_set_bus_client(bus, 1);
        if (r >= 0)
                r = sd_bus_negotiate_fds(bus, fds);
        if (r >= 0)
                r = sd_bus_start(bus);
        if (r >= 0)
                r = sd_bus_get_unique_name(bus, &unique);
        if (r < 0) {
                sd_bus_unref(bus);
                return r;
        }
        *ret = bus;
        return 0;
}

/*
 * Two connections in this process: the far side (its own sd_bus, kept
 * dispatched by a pump thread, as an application with an event loop would)
 * holds `tx`, a sender to `rx` on the near channel.  Everything between them
 * goes through the daemon.
 */
struct BusPair {
        sd_bus *bus = nullptr;
        ipcmux_channel *ch = nullptr;
        ipcmux_server *srv = nullptr;
        ipcmux_sender *tx = nullptr;
        ipcmux_receiver *rx = nullptr;
        ipcmux_sender *pump_tx = nullptr;
        ipcmux_receiver *pump_rx = nullptr;
        std::thread pump;
        std::atomic<bool> stop{false};

        void open(ipcmux_channel *near, bool fds = true) {
                char *name = NULL;
                ipcmux_message *first = NULL;

                ASSERT_OK(connect_raw(fds, &bus));
                ASSERT_OK(ipcmux_channel_new_for_bus(bus, &ch));
                ASSERT_OK(ipcmux_channel_sub_channel(ch, &pump_tx, &pump_rx));
                pump = std::thread([this] {
                        while (!stop) {
                                ipcmux_message *m = NULL;
                                if (ipcmux_receiver_try_recv_timeout(pump_rx, 20000, &m) >= 0)
                                        ipcmux_message_unref(m);
                        }
                });
                ASSERT_OK(ipcmux_server_new_for_channel(near, &srv, &name));
                int r = ipcmux_sender_connect_for_channel(ch, name, &tx);
                free(name);
                ASSERT_OK(r);
                ASSERT_OK(ipcmux_sender_send_bytes(tx, "first", 5));
                ASSERT_OK(ipcmux_server_accept_timeout(srv, 20000000, &rx, &first));
                EXPECT_EQ(msg_str(first), "first");
                ipcmux_message_unref(first);
        }

        /* The far connection is alive and still delivers. */
        void expect_alive() {
                ASSERT_NE(bus, nullptr);
                EXPECT_GT(sd_bus_is_open(bus), 0) << "the sending connection was dropped";
                ASSERT_OK(ipcmux_sender_send_bytes(tx, "alive?", 6));
                EXPECT_EQ(recv_text(rx), "alive?");
        }

        void close() {
                stop = true;
                if (pump.joinable())
                        pump.join();
                tx = ipcmux_sender_unref(tx);
                rx = ipcmux_receiver_unref(rx);
                srv = ipcmux_server_unref(srv);
                pump_tx = ipcmux_sender_unref(pump_tx);
                pump_rx = ipcmux_receiver_unref(pump_rx);
                ch = ipcmux_channel_unref(ch);
                if (bus)
                        bus = sd_bus_flush_close_unref(bus);
        }

        ~BusPair() { close(); }
};

/* tests/helper-regions.c in "serve" mode. */
struct Child {
        ipcmux_server *srv = nullptr;
        pid_t pid = -1;
        ipcmux_receiver *rx = nullptr;  /* the child's answers */
        ipcmux_sender *tx = nullptr;    /* to the child's subchannel */

        void start() {
                char *n = NULL;
                ipcmux_message *first = NULL;

                ASSERT_OK(ipcmux_server_new(&srv, &n));
                std::string name(n);
                free(n);
                std::string helper = test_helper_path("helper-regions");
                char *argv[] = {(char *) helper.c_str(), (char *) "serve", (char *) name.c_str(), nullptr};
                ASSERT_OK(test_spawn(argv, NULL, &pid));
                ASSERT_OK(ipcmux_server_accept_timeout(srv, 20000000, &rx, &first));
                EXPECT_EQ(msg_str(first), "first");
                ASSERT_EQ(ipcmux_message_get_n_senders(first), 1u);
                ASSERT_OK(ipcmux_message_take_sender(first, 0, &tx));
                ipcmux_message_unref(first);
        }

        std::string call(ipcmux_message *m, uint64_t usec = 20000000) {
                int r = ipcmux_sender_send(tx, m);
                EXPECT_GE(r, 0) << strerror(-r);
                return recv_text(rx, usec);
        }

        /* call() with a message of @payload and @regs. */
        std::string call(const std::string &payload, const Regs &regs, uint64_t usec = 20000000) {
                ipcmux_message *m = build(payload, regs);
                std::string answer = call(m, usec);
                ipcmux_message_unref(m);
                return answer;
        }

        /* @regs out to the child and back ("!echo"); the first region that
         * returns lands in @got. */
        void echo_region(const Regs &regs, ipcmux_shmem **got, uint64_t usec = 10000000) {
                ipcmux_message *m = NULL;
                ASSERT_NO_FATAL_FAILURE(send_regions(tx, "!echo", regs));
                ASSERT_OK(recv_bounded(rx, &m, usec));
                EXPECT_EQ(msg_str(m), "echo");
                int r = ipcmux_message_take_shmem(m, 0, got);
                ipcmux_message_unref(m);
                ASSERT_OK(r);
        }

        /* The child makes @n regions of @size bytes (pattern seeds @seed,
         * @seed + 1, ...) and sends them: they must arrive intact. */
        void expect_made_regions(unsigned n, size_t size, uint64_t seed) {
                std::string cmd = "!regions " + std::to_string(n) + " " + std::to_string(size) + " " +
                                  std::to_string(seed);
                ASSERT_OK(ipcmux_sender_send_bytes(tx, cmd.data(), cmd.size()));
                Regs want;
                for (unsigned j = 0; j < n; j++)
                        want.add(pattern_region(size, seed + j));
                recv_expect(rx, "regions", want);
        }

        std::string command(const std::string &cmd) {
                int r = ipcmux_sender_send_bytes(tx, cmd.data(), cmd.size());
                EXPECT_GE(r, 0) << strerror(-r);
                return recv_text(rx);
        }

        int fds() {
                std::string s = command("!fds");
                return s.rfind("fds=", 0) == 0 ? atoi(s.c_str() + 4) : -1;
        }

        /* Drop our sender: the child's receiver disconnects, it exits 0. */
        int stop() {
                int status = -1;
                tx = ipcmux_sender_unref(tx);
                if (pid <= 0)
                        return -1;
                int r = test_wait(pid, 30000, &status);
                EXPECT_GE(r, 0);
                if (r < 0)
                        return -1;
                pid = -1;
                return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        }

        ~Child() {
                tx = ipcmux_sender_unref(tx);
                if (pid > 0) {
                        kill(pid, SIGKILL);
                        test_wait(pid, 10000, NULL);
                }
                ipcmux_receiver_unref(rx);
                ipcmux_server_unref(srv);
        }
};

class Regions : public BusTest {};

/* ---- the reference scenarios --------------------------------------------- */

struct Scenario {
        std::string name;
        std::string payload;
        std::function<void(Regs &)> make;
};

static const std::vector<Scenario> &scenarios() {
        static const std::vector<Scenario> all = {
                {"simple", "simple", [](Regs &r) {
                         static const char text[] = "Hello, shared memory!";
                         ipcmux_shmem *s = NULL;
                         EXPECT_GE(ipcmux_shmem_new_from_bytes(text, sizeof(text) - 1, &s), 0);
                         r.add(s);
                 }},
                {"from_byte", "from_byte", [](Regs &r) {
                         ipcmux_shmem *s = NULL;
                         EXPECT_GE(ipcmux_shmem_new_from_byte(0xba, 1024 * 1024, &s), 0);
                         r.add(s);
                 }},
                {"empty", "empty", [](Regs &r) {
                         ipcmux_shmem *s = NULL;
                         EXPECT_GE(ipcmux_shmem_new_from_bytes(NULL, 0, &s), 0);
                         r.add(s);
                 }},
                {"large", "large", [](Regs &r) { r.add(pattern_region(64 * MiB, 7)); }},
                {"multiple", "multiple", [](Regs &r) {
                         r.add(pattern_region(1, 1));
                         r.add(pattern_region(4096, 2));
                         r.add(pattern_region(0, 3));
                         r.add(pattern_region(3 * 4096 + 17, 4));
                         r.add(r[1]);   /* the same region twice: two indices */
                         ipcmux_shmem_ref(r[1]);
                 }},
                {"no payload", "", [](Regs &r) { r.add(pattern_region(100, 5)); }},
        };
        return all;
}

[[maybe_unused]] static void run_scenarios(ipcmux_sender *tx, ipcmux_receiver *rx) {
        for (const Scenario &sc : scenarios()) {
                SCOPED_TRACE(sc.name);
                Regs regs;
                sc.make(regs);
                ipcmux_message *m = build(sc.payload, regs);
                ASSERT_OK(ipcmux_sender_send(tx, m));
                /* The message stays the caller's: sending it twice sends it twice. */
                ASSERT_OK(ipcmux_sender_send(tx, m));
                ipcmux_message_unref(m);
                recv_expect(rx, sc.payload, regs);
                recv_expect(rx, sc.payload, regs);
        }
}

#ifndef REGIONS_BIG

TEST_F(Regions, ScenariosLocal) {
        Sub s;
        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
        run_scenarios(s.tx.get(), s.rx.get());
}

TEST_F(Regions, ScenariosInProcessBus) {
        BusPair p;
        ASSERT_NO_FATAL_FAILURE(p.open(warm));
        run_scenarios(p.tx, p.rx);
        p.expect_alive();
}

TEST_F(Regions, ScenariosCrossProcess) {
        Child c;
        ASSERT_NO_FATAL_FAILURE(c.start());
        for (const Scenario &sc : scenarios()) {
                SCOPED_TRACE(sc.name);
                Regs regs;
                sc.make(regs);

                /* To the child: it reports sizes and checksums of what it mapped. */
                EXPECT_EQ(c.call(sc.payload, regs), report_of(sc.payload, regs));

                /* And back: the child re-sends the regions it received. */
                ASSERT_NO_FATAL_FAILURE(send_regions(c.tx, "!echo", regs));
                recv_expect(c.rx, "echo", regs);
        }
        /* Regions made by the other process. */
        ASSERT_NO_FATAL_FAILURE(c.expect_made_regions(5, 4099, 100));
        EXPECT_EQ(c.stop(), 0);
}

/*
 * A region and a sender in one message, sent on @tx; the sender (to a
 * subchannel of @back_side) is used to answer with a region.  Once the
 * receiving side drops that only copy, the answer subchannel disconnects
 * (within @epipe_usec).
 */
[[maybe_unused]] static void check_with_sender(ipcmux_sender *tx, ipcmux_receiver *rx, ipcmux_channel *back_side,
                                               uint64_t seed, uint64_t epipe_usec) {
        ipcmux_sender *back_tx = NULL, *got_tx = NULL;
        ipcmux_receiver *back_rx = NULL;
        ASSERT_OK(ipcmux_channel_sub_channel(back_side, &back_tx, &back_rx));
        Regs regs, answer;
        regs.add(pattern_region(5000, seed));
        answer.add(pattern_region(77, seed + 1));

        ipcmux_message *m = build("with sender", regs);
        ASSERT_EQ(ipcmux_message_attach_sender(m, back_tx), 0);
        ASSERT_OK(ipcmux_sender_send(tx, m));
        ipcmux_message_unref(m);
        back_tx = ipcmux_sender_unref(back_tx);

        ASSERT_OK(recv_bounded(rx, &m));
        EXPECT_EQ(msg_str(m), "with sender");
        ASSERT_EQ(ipcmux_message_get_n_senders(m), 1u);
        ASSERT_OK(ipcmux_message_take_sender(m, 0, &got_tx));
        expect_regions(m, regs);
        ipcmux_message_unref(m);

        ASSERT_NO_FATAL_FAILURE(send_regions(got_tx, "answer", answer));
        ipcmux_sender_unref(got_tx);
        recv_expect(back_rx, "answer", answer);
        EXPECT_EQ(recv_bounded(back_rx, &m, epipe_usec), -EPIPE);
        ipcmux_receiver_unref(back_rx);
}

TEST_F(Regions, WithSenderLocal) {
        Sub s;
        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
        ASSERT_NO_FATAL_FAILURE(check_with_sender(s.tx.get(), s.rx.get(), warm, 11, 2000000));
}

TEST_F(Regions, WithSenderInProcessBus) {
        BusPair p;
        ASSERT_NO_FATAL_FAILURE(p.open(warm));
        /* The answer subchannel lives on the far connection. */
        ASSERT_NO_FATAL_FAILURE(check_with_sender(p.tx, p.rx, p.ch, 21, 5000000));
        p.expect_alive();
}

TEST_F(Regions, WithSenderCrossProcess) {
        Child c;
        ASSERT_NO_FATAL_FAILURE(c.start());
        ipcmux_sender *back_tx = NULL;
        ipcmux_receiver *back_rx = NULL;
        ASSERT_OK(ipcmux_channel_sub_channel(warm, &back_tx, &back_rx));
        Regs regs;
        regs.add(pattern_region(12345, 31));
        ipcmux_message *m = build("with sender", regs);
        ASSERT_OK(ipcmux_message_attach_sender(m, back_tx));
        back_tx = ipcmux_sender_unref(back_tx);
        /* The child answers through the sender first, then reports. */
        EXPECT_EQ(c.call(m), report_of("with sender", regs, 0, 1));
        ipcmux_message_unref(m);

        Regs answer;
        ASSERT_OK(ipcmux_shmem_new_from_bytes("region via sender", 17, &answer.v.emplace_back()));
        recv_expect(back_rx, "via-sender", answer);
        /* The child dropped the only copy. */
        EXPECT_EQ(recv_bounded(back_rx, &m, 5000000), -EPIPE);
        ipcmux_receiver_unref(back_rx);
        EXPECT_EQ(c.stop(), 0);
}

/*
 * A region and a sender in one message, where the attached sender belongs
 * to a subchannel on ANOTHER connection of this process than the one the
 * message goes out on.  Either send() refuses the mix (like
 * ipcmux_receiver_select(), -EXDEV), or the copy must work: its sends
 * arrive, and once it is dropped the subchannel disconnects.
 */
TEST_F(Regions, WithSenderOfAnotherConnection) {
        BusPair p;
        ASSERT_NO_FATAL_FAILURE(p.open(warm));
        ipcmux_sender *a_tx = NULL;
        ipcmux_receiver *a_rx = NULL;
        ASSERT_OK(ipcmux_channel_sub_channel(warm, &a_tx, &a_rx));      /* near connection */
        Regs regs;
        regs.add(pattern_region(64, 90));
        ipcmux_message *m = build("carrier", regs);
        ASSERT_OK(ipcmux_message_attach_sender(m, a_tx));
        int r = ipcmux_sender_send(p.tx, m);                             /* far connection */
        ipcmux_message_unref(m);
        a_tx = ipcmux_sender_unref(a_tx);
        if (r < 0) {
                EXPECT_EQ(r, -EXDEV) << strerror(-r);
                EXPECT_EQ(recv_bounded(a_rx, &m, 2000000), -EPIPE);
        } else {
                ASSERT_OK(recv_bounded(p.rx, &m));
                EXPECT_EQ(msg_str(m), "carrier");
                ipcmux_sender *got = NULL;
                ASSERT_OK(ipcmux_message_take_sender(m, 0, &got));
                expect_regions(m, regs);
                ipcmux_message_unref(m);
                EXPECT_STREQ(ipcmux_sender_get_destination(got), ipcmux_channel_get_unique_name(warm))
                        << "the copy names the wrong process as the subchannel's owner";
                ASSERT_OK(ipcmux_sender_send_bytes(got, "through the copy", 16));
                ipcmux_sender_unref(got);
                EXPECT_EQ(recv_text(a_rx, 5000000), "through the copy");
                EXPECT_EQ(recv_bounded(a_rx, &m, 5000000), -EPIPE) << "the dropped copy still holds the subchannel";
        }
        ipcmux_receiver_unref(a_rx);
        p.expect_alive();
}

/* The one-shot server accepts on this thread; the client connects and
 * sends regions in its first message from another thread, on its own
 * connection (the reference's cross-thread shared memory). */
TEST_F(Regions, CrossThreadOneShot) {
        ipcmux_server *srv = NULL;
        char *n = NULL;
        ASSERT_OK(ipcmux_server_new(&srv, &n));
        std::string name(n);
        free(n);
        std::atomic<int> client_result{1};
        std::atomic<bool> done{false};
        Regs expect;
        for (int i = 0; i < 3; i++)
                expect.add(pattern_region(1000 + 1000 * i, 40 + i));

        std::thread client([&] {
                sd_bus *bus = NULL;
                ipcmux_channel *ch = NULL;
                ipcmux_sender *tx = NULL;
                int r = connect_raw(true, &bus);
                if (r >= 0)
                        r = ipcmux_channel_new_for_bus(bus, &ch);
                if (r >= 0)
                        r = ipcmux_sender_connect_for_channel(ch, name.c_str(), &tx);
                if (r >= 0) {
                        Regs mine;
                        for (int i = 0; i < 3; i++)
                                mine.add(pattern_region(1000 + 1000 * i, 40 + i));
                        ipcmux_message *m = build("first", mine);
                        r = ipcmux_sender_send(tx, m);
                        ipcmux_message_unref(m);
                }
                /* Keep the connection up (and dispatched) until the server side has looked. */
                ipcmux_sender *dummy_tx = NULL;
                ipcmux_receiver *dummy_rx = NULL;
                if (r >= 0)
                        r = ipcmux_channel_sub_channel(ch, &dummy_tx, &dummy_rx);
                while (r >= 0 && !done) {
                        ipcmux_message *m = NULL;
                        (void) ipcmux_receiver_try_recv_timeout(dummy_rx, 10000, &m);
                }
                ipcmux_sender_unref(dummy_tx);
                ipcmux_receiver_unref(dummy_rx);
                client_result = r;
                ipcmux_sender_unref(tx);
                ipcmux_channel_unref(ch);
                if (bus)
                        sd_bus_flush_close_unref(bus);
        });

        ipcmux_receiver *rx = NULL;
        ipcmux_message *first = NULL;
        int r = ipcmux_server_accept_timeout(srv, 20000000, &rx, &first);
        EXPECT_GE(r, 0) << strerror(-r);
        if (r >= 0) {
                EXPECT_EQ(msg_str(first), "first");
                expect_regions(first, expect);
                ipcmux_message_unref(first);
        }
        done = true;
        client.join();
        EXPECT_GE(client_result.load(), 0) << strerror(-client_result.load());
        if (rx) {
                ipcmux_message *m = NULL;
                EXPECT_EQ(recv_bounded(rx, &m, 5000000), -EPIPE);
                ipcmux_receiver_unref(rx);
        }
        ipcmux_server_unref(srv);
}

/* deref: the bytes are readable in place; writes after sending are visible
 * to every holder (shared memory), a received mapping stays read-only. */
[[maybe_unused]] static void check_deref(ipcmux_sender *tx, ipcmux_receiver *rx) {
        Regs mine;
        mine.add(pattern_region(3 * 4096, 50));
        ASSERT_NO_FATAL_FAILURE(send_regions(tx, "deref", mine));

        ipcmux_message *m = NULL;
        ASSERT_OK(recv_bounded(rx, &m));
        ipcmux_shmem *got = NULL;
        ASSERT_OK(ipcmux_message_take_shmem(m, 0, &got));
        ipcmux_message_unref(m);
        const uint8_t *d = (const uint8_t *) ipcmux_shmem_get_data(got);
        ASSERT_NE(d, nullptr);
        EXPECT_EQ(sum64(d, 3 * 4096), pattern_sum(3 * 4096, 50));
        EXPECT_EQ(ipcmux_shmem_get_mutable_data(got), nullptr);

        uint8_t *w = (uint8_t *) ipcmux_shmem_get_mutable_data(mine[0]);
        ASSERT_NE(w, nullptr);
        memcpy(w + 4096, "written after send", 18);
        EXPECT_EQ(memcmp(d + 4096, "written after send", 18), 0);
        EXPECT_EQ(ipcmux_shmem_equal(got, mine[0]), 1);
        ipcmux_shmem_unref(got);
}

TEST_F(Regions, DerefLocal) {
        Sub s;
        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
        check_deref(s.tx.get(), s.rx.get());
}

TEST_F(Regions, DerefInProcessBus) {
        BusPair p;
        ASSERT_NO_FATAL_FAILURE(p.open(warm));
        check_deref(p.tx, p.rx);
}

TEST_F(Regions, DerefCrossProcess) {
        Child c;
        ASSERT_NO_FATAL_FAILURE(c.start());
        /* Out to the child and back: the echoed mapping is the same memory. */
        Regs mine;
        mine.add(pattern_region(2 * 4096, 51));
        ipcmux_shmem *got = NULL;
        ASSERT_NO_FATAL_FAILURE(c.echo_region(mine, &got));
        const uint8_t *d = (const uint8_t *) ipcmux_shmem_get_data(got);
        EXPECT_EQ(ipcmux_shmem_get_mutable_data(got), nullptr);
        EXPECT_EQ(sum64(d, 2 * 4096), pattern_sum(2 * 4096, 51));
        memcpy((uint8_t *) ipcmux_shmem_get_mutable_data(mine[0]) + 5000, "after", 5);
        EXPECT_EQ(memcmp(d + 5000, "after", 5), 0);
        ipcmux_shmem_unref(got);

        /* Received regions cannot be resized by their receiver either. */
        Regs two;
        two.add(pattern_region(4096, 52));
        two.add(pattern_region(0, 53));
        EXPECT_EQ(c.call("!truncate", two), "truncate=EPERM,EPERM");
        EXPECT_EQ(ipcmux_shmem_get_size(two[0]), 4096u);
        EXPECT_EQ(sum64(ipcmux_shmem_get_data(two[0]), 4096), pattern_sum(4096, 52));
        EXPECT_EQ(c.stop(), 0);
}

/* take: the bytes as a malloc()ed copy; take of an empty region. */
[[maybe_unused]] static void check_take(ipcmux_sender *tx, ipcmux_receiver *rx) {
        Regs mine;
        mine.add(pattern_region(10000, 60));
        mine.add(pattern_region(0, 61));
        ASSERT_NO_FATAL_FAILURE(send_regions(tx, "take", mine));
        ipcmux_message *m = NULL;
        ASSERT_OK(recv_bounded(rx, &m));
        ASSERT_EQ(ipcmux_message_get_n_shmem(m), 2u);

        ipcmux_shmem *s = NULL;
        void *data = NULL;
        size_t size = 1;
        ASSERT_OK(ipcmux_message_take_shmem(m, 0, &s));
        ASSERT_OK(ipcmux_shmem_take(s, &data, &size));  /* consumes s */
        EXPECT_EQ(size, 10000u);
        ASSERT_NE(data, nullptr);
        EXPECT_EQ(sum64(data, size), pattern_sum(10000, 60));
        free(data);

        /* take empty */
        ASSERT_OK(ipcmux_message_take_shmem(m, 1, &s));
        EXPECT_EQ(ipcmux_shmem_get_size(s), 0u);
        EXPECT_NE(ipcmux_shmem_get_data(s), nullptr);
        data = NULL;
        size = 1;
        ASSERT_OK(ipcmux_shmem_take(s, &data, &size));
        EXPECT_EQ(size, 0u);
        EXPECT_NE(data, nullptr);
        free(data);
        ipcmux_message_unref(m);
}

TEST_F(Regions, TakeLocal) {
        Sub s;
        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
        check_take(s.tx.get(), s.rx.get());
}

TEST_F(Regions, TakeInProcessBus) {
        BusPair p;
        ASSERT_NO_FATAL_FAILURE(p.open(warm));
        check_take(p.tx, p.rx);
}

TEST_F(Regions, TakeCrossProcess) {
        Child c;
        ASSERT_NO_FATAL_FAILURE(c.start());
        ASSERT_OK(ipcmux_sender_send_bytes(c.tx, "!regions 1 10000 60", 19));
        ipcmux_message *m = NULL;
        ASSERT_OK(recv_bounded(c.rx, &m));
        ipcmux_shmem *s = NULL;
        void *data = NULL;
        size_t size = 0;
        ASSERT_OK(ipcmux_message_take_shmem(m, 0, &s));
        ASSERT_OK(ipcmux_shmem_take(s, &data, &size));
        EXPECT_EQ(size, 10000u);
        EXPECT_EQ(sum64(data, size), pattern_sum(10000, 60));
        free(data);
        ipcmux_message_unref(m);

        ASSERT_OK(ipcmux_sender_send_bytes(c.tx, "!zero 1", 7));
        ASSERT_OK(recv_bounded(c.rx, &m));
        EXPECT_EQ(msg_str(m), "regions");
        ASSERT_OK(ipcmux_message_take_shmem(m, 0, &s));
        data = NULL;
        size = 1;
        ASSERT_OK(ipcmux_shmem_take(s, &data, &size));
        EXPECT_EQ(size, 0u);
        EXPECT_NE(data, nullptr);
        free(data);
        ipcmux_message_unref(m);
        EXPECT_EQ(c.stop(), 0);
}

/* ---- zero-length regions ------------------------------------------------- */

[[maybe_unused]] static void make_zero_mix(Regs &r) {
        r.add(pattern_region(0, 0));
        r.add(pattern_region(0, 0));
        r.add(pattern_region(1, 70));
        r.add(pattern_region(0, 0));
        r.add(pattern_region(4096, 71));
}

TEST_F(Regions, ZeroLengthRegions) {
        {
                Sub s;
                ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
                Regs r;
                make_zero_mix(r);
                ASSERT_NO_FATAL_FAILURE(send_expect(s.tx.get(), s.rx.get(), "", r));
        }
        {
                BusPair p;
                ASSERT_NO_FATAL_FAILURE(p.open(warm));
                Regs r;
                make_zero_mix(r);
                ASSERT_NO_FATAL_FAILURE(send_expect(p.tx, p.rx, "", r));

                /* Zero-length regions behind a spilled payload. */
                std::string big(2 * MiB + 3, 'z');
                ASSERT_NO_FATAL_FAILURE(send_expect(p.tx, p.rx, big, r));

                /* Only zero-length regions, 20 of them: more fds than one call carries. */
                Regs zeros;
                for (int i = 0; i < 20; i++)
                        zeros.add(pattern_region(0, 0));
                ASSERT_NO_FATAL_FAILURE(send_expect(p.tx, p.rx, "zeros", zeros));
                p.expect_alive();
        }
        {
                Child c;
                ASSERT_NO_FATAL_FAILURE(c.start());
                Regs r;
                make_zero_mix(r);
                EXPECT_EQ(c.call("zero", r), report_of("zero", r));
                ASSERT_OK(ipcmux_sender_send_bytes(c.tx, "!zero 17", 8));
                Regs zeros;
                for (int i = 0; i < 17; i++)
                        zeros.add(pattern_region(0, 0));
                recv_expect(c.rx, "regions", zeros);
                EXPECT_EQ(c.stop(), 0);
        }
}

/* ---- the 16-fd limit ------------------------------------------------------ */

/* Control: the private bus really disconnects a client that puts 17 fds
 * into one message (so the tests below prove something). */
TEST_F(Regions, BusEnforces16FdsPerMessage) {
        int fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        ASSERT_GE(fd, 0);
        for (int n : {16, 17}) {
                sd_bus *raw = NULL;
                sd_bus_message *m = NULL;
                ASSERT_OK(connect_raw(true, &raw));
                ASSERT_OK(sd_bus_message_new_method_call(raw, &m, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                                         "org.freedesktop.DBus.Peer", "Ping"));
                ASSERT_OK(sd_bus_message_open_container(m, 'a', "h"));
                for (int i = 0; i < n; i++)
                        ASSERT_OK(sd_bus_message_append_basic(m, 'h', &fd));
                ASSERT_OK(sd_bus_message_close_container(m));
                CallResult res = raw_call(raw, m);
                if (n == 16) {
                        EXPECT_GT(sd_bus_is_open(raw), 0);
                        EXPECT_TRUE(res.r >= 0 || !res.error.empty()) << strerror(-res.r);
                } else {
                        EXPECT_LT(res.r, 0);
                        /* sd-bus reports the lost connection as a local Disconnected error. */
                        EXPECT_TRUE(res.error.empty() || res.error == "org.freedesktop.DBus.Error.Disconnected")
                                << "expected a disconnect, got " << res.error;
                        EXPECT_LE(sd_bus_is_open(raw), 0) << "the daemon did not enforce max_message_unix_fds=16";
                }
                sd_bus_flush_close_unref(raw);
        }
        close(fd);
}

struct FdCase {
        unsigned regions, fds;
        size_t payload;
};

static const FdCase fd_cases[] = {
        {1, 0, 5}, {15, 0, 5}, {16, 0, 5}, {17, 0, 5}, {18, 0, 5}, {31, 0, 5}, {32, 0, 5}, {33, 0, 5},
        {8, 8, 5}, {8, 9, 5}, {16, 2, 5}, {0, 17, 5},
        {15, 0, 2 * MiB}, {16, 0, 2 * MiB}, {17, 0, 2 * MiB},   /* + the spill region */
};

[[maybe_unused]] static void check_fd_case(ipcmux_sender *tx, ipcmux_receiver *rx, const FdCase &fc, uint64_t seed) {
        SCOPED_TRACE("regions=" + std::to_string(fc.regions) + " fds=" + std::to_string(fc.fds) +
                     " payload=" + std::to_string(fc.payload));
        Regs regs;
        std::vector<int> fds;
        for (unsigned i = 0; i < fc.regions; i++)
                regs.add(pattern_region(100 + i, seed + i));
        for (unsigned i = 0; i < fc.fds; i++)
                fds.push_back(memfd_create("plain", MFD_CLOEXEC));
        std::string payload(fc.payload, 'p');
        ASSERT_NO_FATAL_FAILURE(send_regions(tx, payload, regs, fds));

        ipcmux_message *m = NULL;
        ASSERT_OK(recv_bounded(rx, &m));
        EXPECT_EQ(msg_str(m), payload);
        ASSERT_EQ(ipcmux_message_get_n_fds(m), fc.fds);
        for (unsigned i = 0; i < fc.fds; i++) {
                int fd = -1;
                struct stat a, b;
                ASSERT_OK(ipcmux_message_take_fd(m, i, &fd));
                ASSERT_EQ(fstat(fd, &a), 0);
                ASSERT_EQ(fstat(fds[i], &b), 0);
                EXPECT_EQ(a.st_ino, b.st_ino) << "fd " << i << " arrived at the wrong index";
                close(fd);
        }
        expect_regions(m, regs);
        ipcmux_message_unref(m);
        for (int fd : fds)
                close(fd);
}

TEST_F(Regions, FdLimitInProcessBus) {
        BusPair p;
        ASSERT_NO_FATAL_FAILURE(p.open(warm));
        uint64_t seed = 1000;
        for (const FdCase &fc : fd_cases) {
                check_fd_case(p.tx, p.rx, fc, seed);
                seed += 100;
                ASSERT_GT(sd_bus_is_open(p.bus), 0) << "the sender was disconnected by the daemon";
        }
        p.expect_alive();
}

/* Back to back, so frames queue up and go out batched: batches must split
 * at 16 fds, a lone frame with more stages the excess. */
TEST_F(Regions, FdLimitBurst) {
        BusPair p;
        ASSERT_NO_FATAL_FAILURE(p.open(warm));
        const unsigned counts[] = {15, 16, 17, 18, 1, 0, 3, 16};
        const int N = 64;
        std::vector<std::unique_ptr<Regs>> sent;
        for (int i = 0; i < N; i++) {
                unsigned k = counts[i % 8];
                auto regs = std::make_unique<Regs>();
                for (unsigned j = 0; j < k; j++)
                        regs->add(pattern_region(64, (uint64_t) i * 100 + j));
                ASSERT_NO_FATAL_FAILURE(send_regions(p.tx, "burst-" + std::to_string(i), *regs));
                sent.push_back(std::move(regs));
        }
        for (int i = 0; i < N; i++)
                ASSERT_NO_FATAL_FAILURE(recv_expect(p.rx, "burst-" + std::to_string(i), *sent[i]));
        EXPECT_GT(sd_bus_is_open(p.bus), 0);
        p.expect_alive();
}

TEST_F(Regions, FdLimitCrossProcess) {
        Child c;
        ASSERT_NO_FATAL_FAILURE(c.start());
        uint64_t seed = 5000;
        for (const FdCase &fc : fd_cases) {
                if (fc.fds > 0)
                        continue;       /* plain fds: see PlainFds */
                SCOPED_TRACE("regions=" + std::to_string(fc.regions) + " payload=" + std::to_string(fc.payload));
                Regs regs;
                for (unsigned i = 0; i < fc.regions; i++)
                        regs.add(pattern_region(100 + i, seed + i));
                seed += 100;
                std::string payload(fc.payload, 'p');
                EXPECT_EQ(c.call(payload, regs), report_of(payload, regs));
        }
        /* And from the child: 15..18 regions. */
        for (unsigned k = 15; k <= 18; k++)
                ASSERT_NO_FATAL_FAILURE(c.expect_made_regions(k, 333, k * 1000));
        EXPECT_EQ(c.stop(), 0) << "the child must still be connected and exit cleanly";
}

/* ---- many regions ---------------------------------------------------------- */

[[maybe_unused]] static void make_many(Regs &r, unsigned n, uint64_t seed) {
        for (unsigned i = 0; i < n; i++)
                r.add(pattern_region(i % 7 == 0 ? 0 : 16 + i % 200, seed + i));
}

TEST_F(Regions, ThousandRegions) {
        {
                Sub s;
                ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
                Regs r;
                make_many(r, 1000, 10000);
                ASSERT_NO_FATAL_FAILURE(send_expect(s.tx.get(), s.rx.get(), "thousand", r));
        }
        {
                BusPair p;
                ASSERT_NO_FATAL_FAILURE(p.open(warm));
                Regs r;
                make_many(r, 1000, 20000);
                ASSERT_NO_FATAL_FAILURE(send_expect(p.tx, p.rx, "thousand", r));
                p.expect_alive();
        }
        {
                Child c;
                ASSERT_NO_FATAL_FAILURE(c.start());
                Regs r;
                make_many(r, 1000, 30000);
                EXPECT_EQ(c.call("thousand", r), report_of("thousand", r));
                ASSERT_NO_FATAL_FAILURE(c.expect_made_regions(1000, 64, 40000));
                EXPECT_EQ(c.stop(), 0);
        }
}

/*
 * At most 1,024 fds per message (regions, plain fds and a spilled payload
 * together; no receiver stages more): up to the limit everything arrives,
 * above it send() refuses with -EMSGSIZE and nothing is sent or kept.
 * Never: send() succeeding and the message being dropped by the receiver.
 */
TEST_F(Regions, FdsPerMessageLimit) {
        BusPair p;
        ASSERT_NO_FATAL_FAILURE(p.open(warm));
        struct Case {
                unsigned regions, fds;
                size_t payload;
                bool fits;
        } cases[] = {
                {1024, 0, 5, true}, {1025, 0, 5, false}, {2000, 0, 5, false},
                {1023, 0, 2 * MiB, true}, {1024, 0, 2 * MiB, false},     /* + the spill region */
                {1000, 24, 5, true}, {1000, 25, 5, false},
        };
        for (const Case &c : cases) {
                SCOPED_TRACE("regions=" + std::to_string(c.regions) + " fds=" + std::to_string(c.fds) +
                             " payload=" + std::to_string(c.payload));
                Regs r;
                std::vector<int> fds;
                for (unsigned i = 0; i < c.regions; i++)
                        r.add(pattern_region(8, i));
                for (unsigned i = 0; i < c.fds; i++)
                        fds.push_back(open("/dev/null", O_RDONLY | O_CLOEXEC));
                std::string payload(c.payload, 'l');
                ipcmux_message *m = build(payload, r, fds);
                for (int fd : fds)
                        close(fd);
                int fds_before = test_count_fds();
                int res = ipcmux_sender_send(p.tx, m);
                ipcmux_message_unref(m);
                ASSERT_OK(ipcmux_sender_send_bytes(p.tx, "marker", 6));
                if (!c.fits) {
                        EXPECT_EQ(res, -EMSGSIZE);
                        EXPECT_EQ(test_count_fds(), fds_before - (int) c.fds) << "a refused message keeps nothing";
                } else {
                        ASSERT_OK(res);
                        ipcmux_message *got = NULL;
                        ASSERT_OK(recv_bounded(p.rx, &got));
                        bool ok = msg_str(got) == payload;
                        EXPECT_TRUE(ok) << "send() returned 0 but the message did not arrive (got \""
                                        << msg_str(got).substr(0, 20) << "\")";
                        if (ok) {
                                EXPECT_EQ(ipcmux_message_get_n_fds(got), c.fds);
                                expect_regions(got, r);
                        }
                        ipcmux_message_unref(got);
                }
                EXPECT_EQ(recv_text(p.rx), "marker");
        }
        p.expect_alive();
}

/* ---- payload spill ---------------------------------------------------------- */

/* Sizes around the 1 MiB spill threshold, through the daemon, with regions
 * after the spilled payload (their indices must not move). */
TEST_F(Regions, PayloadSpillBoundaries) {
        BusPair p;
        ASSERT_NO_FATAL_FAILURE(p.open(warm));
        for (size_t size : {MiB - 1, MiB, MiB + 1, 3 * MiB + 5, 40 * MiB}) {
                SCOPED_TRACE("size=" + std::to_string(size));
                std::string payload(size, 0);
                pattern_fill(&payload[0], size, size, 0);
                Regs r;
                r.add(pattern_region(10, 1));
                r.add(pattern_region(0, 2));
                ASSERT_NO_FATAL_FAILURE(send_regions(p.tx, payload, r));
                ASSERT_OK(ipcmux_sender_send_bytes(p.tx, payload.data(), payload.size()));

                ipcmux_message *m = NULL;
                ASSERT_OK(recv_bounded(p.rx, &m));
                size_t n = 0;
                const void *d = ipcmux_message_get_data(m, &n);
                EXPECT_EQ(n, size);
                EXPECT_EQ(sum64(d, n), sum64(payload.data(), size));
                expect_regions(m, r);
                /* A received (possibly spilled, read-only) payload can be appended to. */
                ASSERT_OK(ipcmux_message_append(m, "+tail", 5));
                d = ipcmux_message_get_data(m, &n);
                EXPECT_EQ(n, size + 5);
                EXPECT_EQ(memcmp((const char *) d + size, "+tail", 5), 0);
                EXPECT_EQ(sum64(d, size), sum64(payload.data(), size));
                ipcmux_message_unref(m);

                ASSERT_OK(recv_bounded(p.rx, &m));
                d = ipcmux_message_get_data(m, &n);
                EXPECT_EQ(n, size);
                EXPECT_EQ(sum64(d, n), sum64(payload.data(), size));
                EXPECT_EQ(ipcmux_message_get_n_shmem(m), 0u) << "the spill region must not show as a region";
                ipcmux_message_unref(m);
        }
        p.expect_alive();
}

/*
 * The sender's region pool (plugin/shmem.c) across processes, on the bus:
 * a region a child still holds is never recycled for a later region of the
 * same size, so the child keeps seeing its own bytes.  Run by the test
 * 'regions-pool' only, with the pool on and bounded to one 256 KiB region
 * (IPCMUX_SHMEM_POOL=262144), so that what the pool parks is known.
 */
TEST_F(Regions, PoolNeverRecyclesAHeldRegion) {
        const char *pool = getenv("IPCMUX_SHMEM_POOL");
        if (!pool || strcmp(pool, "262144") != 0)
                GTEST_SKIP() << "needs IPCMUX_SHMEM_POOL=262144 (test 'regions-pool')";
        const size_t SIZE = 256 * 1024;
        Child c;
        ASSERT_NO_FATAL_FAILURE(c.start());

        /* One region parked in the pool from here on: the fd baseline. */
        ipcmux_shmem_unref(pattern_region(SIZE, 1));
        fds_before = test_count_fds();

        for (uint64_t seed = 2; seed < 6; seed++) {
                /* A region (the parked memfd, if nobody holds it) that the
                 * child keeps... */
                Regs held;
                held.add(pattern_region(SIZE, seed));
                EXPECT_EQ(c.call("!hold", held), "held");
                ipcmux_shmem_unref(held.v[0]);
                held.v.clear();

                /* ...then a region of the same size, filled differently,
                 * sent and checked as usual... */
                Regs other;
                other.add(pattern_region(SIZE, seed + 100));
                EXPECT_EQ(c.call("data", other), report_of("data", other));

                /* ...did not overwrite what the child holds. */
                EXPECT_EQ(c.command("!check"), "held " + std::to_string(SIZE) + ":" + hex16(pattern_sum(SIZE, seed)));
        }
        EXPECT_EQ(c.stop(), 0);
}

#endif /* !REGIONS_BIG */

/* A payload of @size bytes to the child and back, with send_bytes and with
 * message_append; the receiver sees ordinary payload bytes. */
static void spill_round(Child &c, size_t size, uint64_t seed) {
        SCOPED_TRACE("size=" + std::to_string(size));
        uint8_t *buf = (uint8_t *) malloc(size);
        ASSERT_NE(buf, nullptr);
        pattern_fill(buf, size, seed, 0);
        uint64_t want = sum64(buf, size);
        Regs none;
        std::string expect = "size=" + std::to_string(size) + " sum=" + hex16(want) + " regions=0 fds=0 senders=0 ro=1";

        /* ipcmux_sender_send_bytes */
        ASSERT_OK(ipcmux_sender_send_bytes(c.tx, buf, size));
        EXPECT_EQ(recv_text(c.rx, 120000000), expect);

        /* ipcmux_message_append, in uneven pieces */
        ipcmux_message *m = NULL;
        ASSERT_OK(ipcmux_message_new(&m));
        for (size_t off = 0, piece = 5 * MiB + 3; off < size; off += piece)
                ASSERT_OK(ipcmux_message_append(m, buf + off, std::min(piece, size - off)));
        free(buf);
        EXPECT_EQ(c.call(m, 120000000), expect);
        ipcmux_message_unref(m);

        /* From the child, both ways. */
        for (const char *how : {"bytes", "append"}) {
                SCOPED_TRACE(how);
                std::string cmd = "!big " + std::to_string(size) + " " + std::to_string(seed) + " " + how;
                ASSERT_OK(ipcmux_sender_send_bytes(c.tx, cmd.data(), cmd.size()));
                ASSERT_OK(recv_bounded(c.rx, &m, 120000000));
                size_t n = 0;
                const void *d = ipcmux_message_get_data(m, &n);
                EXPECT_EQ(n, size);
                EXPECT_EQ(sum64(d, n), want);
                EXPECT_EQ(ipcmux_message_get_n_shmem(m), 0u);
                ipcmux_message_unref(m);
        }
}

#ifndef REGIONS_BIG

TEST_F(Regions, PayloadSpill64MiB) {
        Child c;
        ASSERT_NO_FATAL_FAILURE(c.start());
        spill_round(c, 64 * MiB, 64);
        EXPECT_EQ(c.stop(), 0);
}

TEST_F(Regions, PayloadSpill200MiB) {
        Child c;
        ASSERT_NO_FATAL_FAILURE(c.start());
        spill_round(c, 200 * MiB, 200);
        EXPECT_EQ(c.stop(), 0);
}

/* ---- plain fds -------------------------------------------------------------- */

[[maybe_unused]] static void check_pipe(ipcmux_sender *tx, ipcmux_receiver *rx) {
        int p[2];
        ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
        Regs none;
        ipcmux_message *m = build("pipe", none, {p[1]});
        close(p[1]);
        ASSERT_OK(ipcmux_sender_send(tx, m));
        ipcmux_message_unref(m);

        ASSERT_OK(recv_bounded(rx, &m));
        ASSERT_EQ(ipcmux_message_get_n_fds(m), 1u);
        EXPECT_EQ(ipcmux_message_get_n_shmem(m), 0u);
        int fd = -1;
        ASSERT_OK(ipcmux_message_take_fd(m, 0, &fd));
        EXPECT_EQ(ipcmux_message_take_fd(m, 0, &fd), -ENXIO);
        EXPECT_EQ(ipcmux_message_take_fd(m, 1, &fd), -EINVAL);
        ipcmux_message_unref(m);
        EXPECT_TRUE(fcntl(fd, F_GETFD) & FD_CLOEXEC);
        ASSERT_EQ(write(fd, "through the pipe", 16), 16);
        close(fd);
        /* Every write end is closed now: read to EOF. */
        EXPECT_EQ(read_all(p[0]), "through the pipe");
        close(p[0]);
}

TEST_F(Regions, PlainFds) {
        {
                Sub s;
                ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
                check_pipe(s.tx.get(), s.rx.get());
        }
        {
                BusPair p;
                ASSERT_NO_FATAL_FAILURE(p.open(warm));
                check_pipe(p.tx, p.rx);
                /* Regions and fds side by side keep their own indices. */
                check_fd_case(p.tx, p.rx, {3, 2, 10}, 900);
                p.expect_alive();
        }
        {
                Child c;
                ASSERT_NO_FATAL_FAILURE(c.start());
                int p[2];
                ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
                Regs none;
                ipcmux_message *m = build("!pipe", none, {p[1]});
                close(p[1]);
                EXPECT_EQ(c.call(m), "written");
                ipcmux_message_unref(m);
                EXPECT_EQ(read_all(p[0]), "through the pipe");
                close(p[0]);

                /* A pipe out and back: the echoed fd is the same pipe. */
                ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
                m = build("!echo", none, {p[1]});
                ASSERT_OK(ipcmux_sender_send(c.tx, m));
                ipcmux_message_unref(m);
                close(p[1]);
                ASSERT_OK(recv_bounded(c.rx, &m));
                int fd = -1;
                ASSERT_OK(ipcmux_message_take_fd(m, 0, &fd));
                ipcmux_message_unref(m);
                ASSERT_EQ(write(fd, "round trip", 10), 10);
                close(fd);
                EXPECT_EQ(read_all(p[0]), "round trip");
                close(p[0]);
                EXPECT_EQ(c.stop(), 0);
        }
}

/* ---- fd and mapping leaks ----------------------------------------------------- */

enum class Fate { Taken, Untaken, Discarded };

/*
 * The child sends N messages with one region each to a subchannel of ours;
 * we take every region, or leave them in the messages, or never receive
 * and drop the receiver.  Afterwards this process has exactly the fds and
 * memfd mappings it had before, and so has the child.
 */
[[maybe_unused]] static void leak_round(ipcmux_channel *warm, Child &c, Fate fate, unsigned n) {
        /* Small regions: a subchannel's credit window (8 MiB of frame cost,
         * regions included) must hold all n while nobody receives. */
        const size_t size = 100;
        ipcmux_sender *d_tx = NULL;
        ipcmux_receiver *d_rx = NULL;
        int fds0 = test_count_fds(), maps0 = count_maps("ipcmux-shmem");
        int child0 = c.fds();

        ASSERT_OK(ipcmux_channel_sub_channel(warm, &d_tx, &d_rx));
        ipcmux_message *m = NULL;
        ASSERT_OK(ipcmux_message_new(&m));
        std::string cmd = "!many " + std::to_string(n) + " " + std::to_string(size);
        ASSERT_OK(ipcmux_message_append(m, cmd.data(), cmd.size()));
        ASSERT_OK(ipcmux_message_attach_sender(m, d_tx));
        d_tx = ipcmux_sender_unref(d_tx);

        if (fate != Fate::Discarded) {
                ASSERT_OK(ipcmux_sender_send(c.tx, m));
                ipcmux_message_unref(m);
                for (unsigned i = 0; i < n; i++) {
                        ipcmux_message *x = NULL;
                        ASSERT_OK(recv_bounded(d_rx, &x));
                        ASSERT_EQ(msg_str(x), "m" + std::to_string(i));
                        ASSERT_EQ(ipcmux_message_get_n_shmem(x), 1u);
                        if (fate == Fate::Taken) {
                                ipcmux_shmem *s = NULL;
                                ASSERT_OK(ipcmux_message_take_shmem(x, 0, &s));
                                const uint8_t *d = (const uint8_t *) ipcmux_shmem_get_data(s);
                                EXPECT_EQ(d[0], (uint8_t) (i & 0xff));
                                EXPECT_EQ(d[size - 1], (uint8_t) (i & 0xff));
                                ipcmux_message_unref(x);  /* the region outlives its message */
                                ipcmux_shmem_unref(s);
                        } else
                                ipcmux_message_unref(x);
                }
                EXPECT_EQ(recv_bounded(d_rx, &m, 5000000), -EPIPE);
                std::string sent = recv_text(c.rx);
                EXPECT_EQ(sent.substr(0, sent.find(' ', 5)), "sent " + std::to_string(n));
                EXPECT_EQ(atoi(sent.c_str() + sent.find("fds=") + 4), child0) << "the sending child leaked";
        } else {
                ASSERT_OK(ipcmux_sender_send(c.tx, m));
                ipcmux_message_unref(m);
                /* "sent" comes after the child flushed all N: they are queued here. */
                std::string sent = recv_text(c.rx, 60000000);
                EXPECT_EQ(sent.substr(0, sent.find(' ', 5)), "sent " + std::to_string(n));
                EXPECT_EQ(atoi(sent.c_str() + sent.find("fds=") + 4), child0) << "the sending child leaked";
                EXPECT_GE(test_count_fds(), fds0 + (int) n) << "queued regions hold one fd each";
        }
        d_rx = ipcmux_receiver_unref(d_rx);
        EXPECT_EQ(test_count_fds(), fds0);
        EXPECT_EQ(count_maps("ipcmux-shmem"), maps0);
        EXPECT_EQ(c.fds(), child0);
}

[[maybe_unused]] static unsigned leak_n(void) {
        /* Queued messages count against the sender's fd budget here. */
        return (unsigned) std::min<size_t>(3000, fd_budget() > 200 ? fd_budget() - 100 : 100);
}

TEST_F(Regions, NoLeakTaken) {
        Child c;
        ASSERT_NO_FATAL_FAILURE(c.start());
        leak_round(warm, c, Fate::Taken, leak_n());
        EXPECT_EQ(c.stop(), 0);
}

TEST_F(Regions, NoLeakUntaken) {
        Child c;
        ASSERT_NO_FATAL_FAILURE(c.start());
        leak_round(warm, c, Fate::Untaken, leak_n());
        EXPECT_EQ(c.stop(), 0);
}

TEST_F(Regions, NoLeakDiscardedWithReceiver) {
        Child c;
        ASSERT_NO_FATAL_FAILURE(c.start());
        leak_round(warm, c, Fate::Discarded, leak_n());
        EXPECT_EQ(c.stop(), 0);
}

/* The same in one process, both ends counted together. */
TEST_F(Regions, NoLeakInProcess) {
        int fds0 = test_count_fds(), maps0 = count_maps("ipcmux-shmem");
        {
                BusPair p;
                ASSERT_NO_FATAL_FAILURE(p.open(warm));
                int fds1 = test_count_fds();
                const unsigned n = 2000;
                for (Fate fate : {Fate::Taken, Fate::Untaken}) {
                        for (unsigned i = 0; i < n; i++) {
                                Regs r;
                                r.add(pattern_region(100, i));
                                ASSERT_NO_FATAL_FAILURE(send_regions(p.tx, "x", r));
                                if (i % 50 == 49 || i == n - 1) {
                                        for (unsigned k = 0; k < (i % 50) + 1; k++) {
                                                ipcmux_message *m = NULL;
                                                ASSERT_OK(recv_bounded(p.rx, &m));
                                                if (fate == Fate::Taken) {
                                                        ipcmux_shmem *s = NULL;
                                                        ASSERT_OK(ipcmux_message_take_shmem(m, 0, &s));
                                                        ipcmux_shmem_unref(s);
                                                }
                                                ipcmux_message_unref(m);
                                        }
                                }
                        }
                        p.expect_alive();
                        EXPECT_EQ(test_count_fds(), fds1);
                }
                /* Discarded: queue them, then drop the receiver. */
                for (unsigned i = 0; i < n; i++) {
                        Regs r;
                        r.add(pattern_region(100, i));
                        ASSERT_NO_FATAL_FAILURE(send_regions(p.tx, "x", r));
                }
                /* Wait until all n are queued here (read QueuedMessages from
                 * another thread while this one dispatches); then the far
                 * side holds no region any more and each queued message
                 * holds exactly one fd.  The last unref flushes: what the
                 * per-peer cap holds back leaves as this side reads and
                 * acknowledges, so it runs on a thread of its own. */
                std::thread dropper([&] { p.tx = ipcmux_sender_unref(p.tx); });
                ipcmux_sender *s2 = NULL;
                ipcmux_receiver *r2 = NULL;
                ASSERT_OK(ipcmux_channel_sub_channel(warm, &s2, &r2));
                std::atomic<bool> watch_done{false};
                std::atomic<uint32_t> queued{0};
                std::string owner = ipcmux_channel_get_unique_name(warm), rxpath = ipcmux_receiver_get_path(p.rx);
                std::thread watcher([&] {
                        sd_bus *q = NULL;
                        uint64_t t0 = test_now_usec();
                        if (test_bus_connect(PrivateBus::bus, &q) >= 0) {
                                (void) sd_bus_set_method_call_timeout(q, 2000000);
                                while (queued < n && test_now_usec() - t0 < 20000000) {
                                        sd_bus_error e = SD_BUS_ERROR_NULL;
                                        uint32_t v = 0;
                                        if (sd_bus_get_property_trivial(q, owner.c_str(), rxpath.c_str(),
                                                                        "org.ipcmux.Subchannel1", "QueuedMessages",
                                                                        &e, 'u', &v) >= 0)
                                                queued = v;
                                        sd_bus_error_free(&e);
                                        if (queued < n)
                                                usleep(10000);
                                }
                                sd_bus_flush_close_unref(q);
                        }
                        watch_done = true;
                });
                while (!watch_done) {
                        ipcmux_message *m = NULL;
                        (void) ipcmux_receiver_try_recv_timeout(r2, 10000, &m);   /* dispatches */
                }
                watcher.join();
                dropper.join();
                EXPECT_EQ(queued.load(), n);
                EXPECT_EQ(test_count_fds(), fds1 + (int) n);
                p.rx = ipcmux_receiver_unref(p.rx);
                EXPECT_EQ(test_count_fds(), fds1);
                ipcmux_sender_unref(s2);
                ipcmux_receiver_unref(r2);
        }
        EXPECT_EQ(test_count_fds(), fds0);
        EXPECT_EQ(count_maps("ipcmux-shmem"), maps0);
}

/* ---- connections that cannot pass fds --------------------------------------- */

TEST_F(Regions, NoFdPassingConnection) {
        BusPair p;
        ASSERT_NO_FATAL_FAILURE(p.open(warm, false));
        EXPECT_EQ(sd_bus_can_send(p.bus, SD_BUS_TYPE_UNIX_FD), 0);
        Regs r;
        r.add(pattern_region(100, 1));
        int fds0 = test_count_fds();    /* refused sends must leave no fd behind */
        ipcmux_message *m = build("region", r);
        EXPECT_EQ(ipcmux_sender_send(p.tx, m), -EOPNOTSUPP);
        ipcmux_message_unref(m);

        Regs none;
        int pfd[2];
        ASSERT_EQ(pipe2(pfd, O_CLOEXEC), 0);
        m = build("fd", none, {pfd[0]});
        EXPECT_EQ(ipcmux_sender_send(p.tx, m), -EOPNOTSUPP);
        ipcmux_message_unref(m);
        close(pfd[0]);
        close(pfd[1]);

        /* A payload that would spill needs an fd too. */
        std::string big(2 * MiB, 'b');
        EXPECT_EQ(ipcmux_sender_send_bytes(p.tx, big.data(), big.size()), -EOPNOTSUPP);
        m = build(big, none);
        EXPECT_EQ(ipcmux_sender_send(p.tx, m), -EOPNOTSUPP);
        ipcmux_message_unref(m);

        /* Up to the threshold, and senders (no fd cost), still go. */
        std::string inl(MiB, 'i');
        ASSERT_OK(ipcmux_sender_send_bytes(p.tx, inl.data(), inl.size()));
        ipcmux_sender *s2 = NULL;
        ipcmux_receiver *r2 = NULL;
        ASSERT_OK(ipcmux_channel_sub_channel(p.ch, &s2, &r2));
        ASSERT_OK(ipcmux_message_new(&m));
        ASSERT_OK(ipcmux_message_append(m, "sender", 6));
        ASSERT_OK(ipcmux_message_attach_sender(m, s2));
        ASSERT_OK(ipcmux_sender_send(p.tx, m));
        ipcmux_message_unref(m);
        s2 = ipcmux_sender_unref(s2);

        EXPECT_TRUE(recv_text(p.rx) == inl) << "nothing refused may have been delivered";
        ASSERT_OK(recv_bounded(p.rx, &m));
        EXPECT_EQ(msg_str(m), "sender");
        ipcmux_sender *got = NULL;
        ASSERT_OK(ipcmux_message_take_sender(m, 0, &got));
        ipcmux_message_unref(m);
        ASSERT_OK(ipcmux_sender_send_bytes(got, "back", 4));
        ipcmux_sender_unref(got);
        EXPECT_EQ(recv_text(r2), "back");
        ipcmux_receiver_unref(r2);
        p.expect_alive();
        EXPECT_EQ(test_count_fds(), fds0);
}

/* ---- hostile peers ------------------------------------------------------------ */

/* A raw sd-bus peer that holds a subchannel of ours (via the one-shot name). */
class RawRegions : public BusTest {
protected:
        sd_bus *raw = nullptr;
        ipcmux_server *srv = nullptr;
        ipcmux_receiver *rx = nullptr;
        std::string me, path;
        uint64_t seq = 0;

        void SetUp() override {
                BusTest::SetUp();
                ASSERT_OK(test_bus_connect(PrivateBus::bus, &raw));
                char *name = NULL;
                ASSERT_OK(ipcmux_server_new(&srv, &name));
                std::string n(name);
                free(name);
                me = n.substr(0, n.find('/'));
                path = n.substr(n.find('/'), n.find('#') - n.find('/'));
                std::string wk = "org.ipcmux.OneShot.t" + n.substr(n.find('#') + 1);
                sd_bus_error e = SD_BUS_ERROR_NULL;
                sd_bus_message *reply = NULL;
                ASSERT_OK(sd_bus_call_method(raw, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                             "org.freedesktop.DBus", "RequestName", &e, &reply, "su",
                                             wk.c_str(), 4u));
                sd_bus_message_unref(reply);
                send_good("first");
                ipcmux_message *first = NULL;
                ASSERT_OK(ipcmux_server_accept_timeout(srv, 10000000, &rx, &first));
                EXPECT_EQ(msg_str(first), "first");
                ipcmux_message_unref(first);
        }
        void TearDown() override {
                rx = ipcmux_receiver_unref(rx);
                srv = ipcmux_server_unref(srv);
                raw = sd_bus_flush_close_unref(raw);
                BusTest::TearDown();
        }

        void send_good(const std::string &payload) {
                sd_bus_message *m = NULL;
                RawFrame f;
                f.payload = payload;
                ASSERT_OK(raw_build_send(raw, me.c_str(), path.c_str(), seq++, {f}, {}, &m));
                ASSERT_OK(sd_bus_message_set_expect_reply(m, 0));
                ASSERT_OK(sd_bus_send(raw, m, NULL));
                sd_bus_message_unref(m);
        }

        CallResult call_send(const std::vector<RawFrame> &frames, const std::vector<int> &fds) {
                sd_bus_message *m = NULL;
                int r = raw_build_send(raw, me.c_str(), path.c_str(), seq, frames, fds, &m);
                EXPECT_GE(r, 0);
                CallResult res = raw_call(raw, m);
                /* Only delivered frames take sequence numbers: a refused
                 * call leaves the stream as if it had not been sent. */
                if (res.error.empty())
                        seq += frames.size();
                return res;
        }

        /* @fn runs on the attacker's thread while this one keeps ipcmux
         * dispatching; messages delivered meanwhile are kept in @got. */
        void attack(std::function<void()> fn, std::vector<ipcmux_message *> *got = nullptr) {
                std::atomic<bool> done{false};
                /* Dispatch through a subchannel of our own: rx may report
                 * -EPIPE at once (a peer that was cut off), which would not
                 * dispatch anything. */
                ipcmux_sender *ptx = NULL;
                ipcmux_receiver *prx = NULL;
                ASSERT_OK(ipcmux_channel_sub_channel(warm, &ptx, &prx));
                std::thread t([&] {
                        fn();
                        ASSERT_OK(sd_bus_flush(raw));
                        done = true;
                });
                uint64_t deadline = test_now_usec() + 60000000ULL;
                while (!done && test_now_usec() < deadline) {
                        ipcmux_message *m = NULL;
                        (void) ipcmux_receiver_try_recv_timeout(prx, 10000, &m);
                        while (ipcmux_receiver_try_recv(rx, &m) >= 0) {
                                if (got)
                                        got->push_back(m);
                                else
                                        ipcmux_message_unref(m);
                        }
                }
                t.join();
                ipcmux_sender_unref(ptx);
                ipcmux_receiver_unref(prx);
        }

        /* Everything delivered to rx now (after an attack), until @n or a timeout. */
        void collect(std::vector<ipcmux_message *> *got, size_t n) {
                ipcmux_message *m = NULL;
                while (got->size() < n && recv_bounded(rx, &m, 5000000) >= 0)
                        got->push_back(m);
        }

        /* The peer's part has ended: refused, and rx disconnects once drained. */
        void expect_cut_off() {
                std::vector<ipcmux_message *> got;
                std::string err;
                attack([&] {
                        RawFrame f;
                        f.payload = "after the cut";
                        err = call_send({f}, {}).error;
                }, &got);
                EXPECT_EQ(err, ACCESS_DENIED);
                ipcmux_message *m = NULL;
                int r;
                while ((r = recv_bounded(rx, &m, 5000000)) >= 0)
                        got.push_back(m);
                EXPECT_EQ(r, -EPIPE);
                for (ipcmux_message *x : got) {
                        EXPECT_NE(msg_str(x), "after the cut");
                        ipcmux_message_unref(x);
                }
        }
};

/* The peer keeps resizing an unsealed memfd while offering it as a region:
 * refused every time, never mapped, so never a SIGBUS here. */
TEST_F(RawRegions, TruncateAfterSend) {
        const size_t size = 64 * 4096;
        int unsealed = sealed_memfd(size, 0, 'u');
        int grow_only = sealed_memfd(size, F_SEAL_GROW, 'g');
        int shrink_only = sealed_memfd(size, F_SEAL_SHRINK, 's');
        ASSERT_GE(unsealed, 0);
        ASSERT_GE(grow_only, 0);
        ASSERT_GE(shrink_only, 0);

        std::atomic<bool> stop{false};
        std::thread resizer([&] {
                bool small = false;
                while (!stop) {
                        (void) ftruncate(unsealed, small ? (off_t) size : 0);
                        (void) ftruncate(grow_only, small ? 0 : 4096);
                        small = !small;
                }
        });
        std::vector<ipcmux_message *> got;
        attack([&] {
                for (int i = 0; i < 100; i++) {
                        RawFrame f;
                        f.payload = "bad";
                        f.regions = {{0, size}};
                        EXPECT_EQ(call_send({f}, {unsealed}).error, INVALID_ARGS) << "unsealed, i=" << i;
                        EXPECT_EQ(call_send({f}, {grow_only}).error, INVALID_ARGS) << "no F_SEAL_SHRINK";
                        EXPECT_EQ(call_send({f}, {shrink_only}).error, INVALID_ARGS) << "no F_SEAL_GROW";
                        /* A spilled payload is a region too. */
                        RawFrame s;
                        s.flags = 1;
                        s.regions = {{0, size}};
                        EXPECT_EQ(call_send({s}, {unsealed}).error, INVALID_ARGS);
                }
                send_good("after");
        }, &got);
        stop = true;
        resizer.join();
        /* Once the call was refused the peer may do as it likes. */
        EXPECT_EQ(ftruncate(unsealed, 0), 0);
        EXPECT_EQ(ftruncate(grow_only, 0), 0);

        ipcmux_message *m = NULL;
        while (got.empty() && recv_bounded(rx, &m, 5000000) >= 0)
                got.push_back(m);
        ASSERT_EQ(got.size(), 1u) << "nothing refused may be delivered";
        EXPECT_EQ(msg_str(got[0]), "after");
        ipcmux_message_unref(got[0]);
        close(unsealed);
        close(grow_only);
        close(shrink_only);
}

/* An accepted region cannot be resized by its sender afterwards: every byte
 * stays readable (a SIGBUS would kill this test).  Writes stay visible. */
TEST_F(RawRegions, SealedRegionOutlivesSendersTruncate) {
        const size_t size = 16 * 4096;
        int fd = sealed_memfd(size, F_SEAL_SHRINK | F_SEAL_GROW, 'a');
        int wsealed = sealed_memfd(4096, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL, 'w');
        ASSERT_GE(fd, 0);
        ASSERT_GE(wsealed, 0);
        std::vector<ipcmux_message *> got;
        attack([&] {
                RawFrame f;
                f.payload = "sealed";
                f.regions = {{0, size}, {1, 4096}};
                CallResult res = call_send({f}, {fd, wsealed});
                EXPECT_TRUE(res.error.empty()) << res.error;
        }, &got);
        ipcmux_message *m = NULL;
        while (got.empty() && recv_bounded(rx, &m, 5000000) >= 0)
                got.push_back(m);
        ASSERT_EQ(got.size(), 1u);
        m = got[0];
        EXPECT_EQ(msg_str(m), "sealed");
        ipcmux_shmem *s = NULL, *w = NULL;
        ASSERT_OK(ipcmux_message_take_shmem(m, 0, &s));
        ASSERT_OK(ipcmux_message_take_shmem(m, 1, &w));
        ipcmux_message_unref(m);

        EXPECT_EQ(ftruncate(fd, 0), -1);
        EXPECT_EQ(errno, EPERM);
        EXPECT_EQ(ftruncate(fd, (off_t) size * 2), -1);
        const uint8_t *d = (const uint8_t *) ipcmux_shmem_get_data(s);
        ASSERT_EQ(ipcmux_shmem_get_size(s), size);
        for (size_t i = 0; i < size; i++)
                ASSERT_EQ(d[i], 'a') << i;
        ASSERT_EQ(pwrite(fd, "changed", 7, 4096 * 3), 7);
        EXPECT_EQ(memcmp(d + 4096 * 3, "changed", 7), 0);
        EXPECT_EQ(ipcmux_shmem_get_mutable_data(s), nullptr);
        EXPECT_EQ(((const uint8_t *) ipcmux_shmem_get_data(w))[4095], 'w');
        ipcmux_shmem_unref(s);
        ipcmux_shmem_unref(w);
        close(fd);
        close(wsealed);
}

/* Sizes that do not match the file, and fds that are no memfd at all. */
TEST_F(RawRegions, WrongSizesAndKinds) {
        int fd = sealed_memfd(4096, F_SEAL_SHRINK | F_SEAL_GROW, 'x');
        int empty = sealed_memfd(0, F_SEAL_SHRINK | F_SEAL_GROW);
        int p[2];
        ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
        int devzero = open("/dev/zero", O_RDWR | O_CLOEXEC);
        char proc[64];
        snprintf(proc, sizeof(proc), "/proc/self/fd/%d", fd);
        int opath = open(proc, O_PATH | O_CLOEXEC);
        ASSERT_GE(fd, 0);
        ASSERT_GE(empty, 0);
        ASSERT_GE(devzero, 0);
        ASSERT_GE(opath, 0);
        std::vector<ipcmux_message *> got;
        attack([&] {
                for (uint64_t size : {(uint64_t) 8192, (uint64_t) 4097, (uint64_t) 4095, (uint64_t) 0}) {
                        RawFrame f;
                        f.regions = {{0, size}};
                        EXPECT_EQ(call_send({f}, {fd}).error, INVALID_ARGS) << "declared " << size;
                }
                RawFrame one;
                one.regions = {{0, 1}};
                EXPECT_EQ(call_send({one}, {empty}).error, INVALID_ARGS) << "empty file, declared 1";
                RawFrame f;
                f.regions = {{0, 4096}};
                EXPECT_EQ(call_send({f}, {p[0]}).error, INVALID_ARGS) << "pipe";
                EXPECT_EQ(call_send({f}, {devzero}).error, INVALID_ARGS) << "/dev/zero";
                EXPECT_EQ(call_send({f}, {opath}).error, INVALID_ARGS) << "O_PATH";
                /* A good region next to a bad one: the whole call goes. */
                RawFrame two;
                two.regions = {{0, 4096}, {1, 4096}};
                EXPECT_EQ(call_send({two}, {fd, p[1]}).error, INVALID_ARGS) << "good + pipe";
                RawFrame a, b;
                a.payload = "good frame";
                a.regions = {{0, 4096}};
                b.regions = {{1, 4096}};
                EXPECT_EQ(call_send({a, b}, {fd, devzero}).error, INVALID_ARGS) << "good frame + bad frame";
                send_good("after");
        }, &got);
        ipcmux_message *m = NULL;
        while (got.empty() && recv_bounded(rx, &m, 5000000) >= 0)
                got.push_back(m);
        ASSERT_EQ(got.size(), 1u);
        EXPECT_EQ(msg_str(got[0]), "after");
        ipcmux_message_unref(got[0]);
        for (int x : {fd, empty, p[0], p[1], devzero, opath})
                close(x);
}

/* A declared size past the per-peer byte quota (8 GiB): the quota answers
 * (LimitsExceeded, the peer is cut off), or the size check (InvalidArgs,
 * the peer may go on); either way nothing is mapped. */
TEST_F(RawRegions, DeclaredSizePastQuota) {
        for (uint64_t size : {UINT64_MAX, (uint64_t) INT64_MAX + 1, (uint64_t) 64 << 30}) {
                SCOPED_TRACE("declared " + std::to_string(size));
                int fd = sealed_memfd(4096, F_SEAL_SHRINK | F_SEAL_GROW, 'x');
                ASSERT_GE(fd, 0);
                std::string err;
                attack([&] {
                        RawFrame f;
                        f.regions = {{0, size}};
                        err = call_send({f}, {fd}).error;
                });
                close(fd);
                EXPECT_TRUE(err == INVALID_ARGS || err == LIMITS) << err;
                if (err == LIMITS) {
                        expect_cut_off();
                        break;  /* no holder left for the next size */
                }
        }
}

/* A raw spilled frame: region 0 is the payload, the user's regions follow. */
TEST_F(RawRegions, RawSpilledPayload) {
        int pay = sealed_memfd(3 * 4096, F_SEAL_SHRINK | F_SEAL_GROW, 'P');
        int reg = sealed_memfd(100, F_SEAL_SHRINK | F_SEAL_GROW, 'R');
        ASSERT_GE(pay, 0);
        ASSERT_GE(reg, 0);
        std::vector<ipcmux_message *> got;
        attack([&] {
                RawFrame f;
                f.flags = 1;
                f.regions = {{1, 3 * 4096}, {0, 100}};
                CallResult res = call_send({f}, {reg, pay});
                EXPECT_TRUE(res.error.empty()) << res.error;
        }, &got);
        ipcmux_message *m = NULL;
        while (got.empty() && recv_bounded(rx, &m, 5000000) >= 0)
                got.push_back(m);
        ASSERT_EQ(got.size(), 1u);
        m = got[0];
        EXPECT_EQ(msg_str(m), std::string(3 * 4096, 'P'));
        ASSERT_EQ(ipcmux_message_get_n_shmem(m), 1u);
        ipcmux_shmem *s = NULL;
        ASSERT_OK(ipcmux_message_take_shmem(m, 0, &s));
        EXPECT_EQ(std::string((const char *) ipcmux_shmem_get_data(s), ipcmux_shmem_get_size(s)), std::string(100, 'R'));
        ipcmux_shmem_unref(s);
        ipcmux_message_unref(m);
        close(pay);
        close(reg);
}

/* Region bytes queued per peer are bounded (8 GiB): sparse 3 GiB regions,
 * two fit, the third is refused and ends the peer's part. */
TEST_F(RawRegions, PeerRegionBytesQuota) {
        const uint64_t size = 3 * GiB;
        int fd = memfd_create("sparse", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        ASSERT_GE(fd, 0);
        ASSERT_EQ(ftruncate(fd, (off_t) size), 0);
        ASSERT_EQ(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
        auto big = [&](const char *payload) {
                RawFrame f;
                f.payload = payload;
                f.regions = {{0, size}};
                return call_send({f}, {fd});
        };
        std::atomic<bool> done{false};
        /* Nothing is received while the peer pushes. */
        std::thread t([&] {
                EXPECT_TRUE(big("one").error.empty());
                EXPECT_TRUE(big("two").error.empty());
                EXPECT_EQ(big("three").error, LIMITS);
                done = true;
        });
        /* Keep dispatching without taking from rx. */
        ipcmux_sender *ptx = NULL;
        ipcmux_receiver *prx = NULL;
        ASSERT_OK(ipcmux_channel_sub_channel(warm, &ptx, &prx));
        uint64_t deadline = test_now_usec() + 30000000;
        while (!done && test_now_usec() < deadline) {
                ipcmux_message *x = NULL;
                (void) ipcmux_receiver_try_recv_timeout(prx, 10000, &x);
        }
        t.join();
        for (const char *want : {"one", "two"}) {
                ipcmux_message *m = NULL;
                ASSERT_OK(recv_bounded(rx, &m));
                EXPECT_EQ(msg_str(m), want);
                EXPECT_EQ(ipcmux_message_get_n_shmem(m), 1u);
                ipcmux_message_unref(m);
        }
        /* Over quota the peer's part ended (an ipcmux sender could have
         * sent that in good faith: never silently lost). */
        expect_cut_off();
        ipcmux_sender_unref(ptx);
        ipcmux_receiver_unref(prx);
        close(fd);
}

/*
 * Per-peer fd quota where it bites: the receiver is an unprivileged child
 * (helper-regions quota) with RLIMIT_NOFILE 64, so its fd budget is 16; a
 * raw peer (this process) holds its subchannel and pushes fds that the child
 * does not receive.  Refused calls get LimitsExceeded and leave no fd
 * behind; the child stays on the bus; once it has received, the peer may
 * send again.
 */
class Quota : public BusTest {
protected:
        static constexpr unsigned NOFILE = 64, BUDGET = NOFILE / 4;
        pid_t pid = -1;
        int out = -1;
        sd_bus *raw = nullptr;
        std::string me, path;
        uint64_t seq = 0;
        int base = -1;
        std::vector<int> regions;       /* 4 sealed memfds of 4096 'q' */
        RawFrame four;                  /* a frame with those 4 regions */

        void SetUp() override {
                BusTest::SetUp();
                std::string helper = test_helper_path("helper-regions");
                char *argv[] = {(char *) helper.c_str(), (char *) "quota", nullptr};
                int r = test_spawn_unprivileged(argv, NOFILE, &out, &pid);
                if (r == -EPERM)
                        GTEST_SKIP() << "needs root to run the child as uid 65534";
                ASSERT_OK(r);
                char line[512];
                r = test_read_line(out, line, sizeof(line), 20000);
                ASSERT_GE(r, 0) << "helper did not start (can uid 65534 reach the build directory?): "
                                << strerror(-r);
                std::string n(line);
                ASSERT_NE(n.find('#'), std::string::npos) << n;
                me = n.substr(0, n.find('/'));
                path = n.substr(n.find('/'), n.find('#') - n.find('/'));
                std::string wk = "org.ipcmux.OneShot.t" + n.substr(n.find('#') + 1);

                ASSERT_OK(test_bus_connect(PrivateBus::bus, &raw));
                sd_bus_error e = SD_BUS_ERROR_NULL;
                sd_bus_message *reply = NULL;
                ASSERT_OK(sd_bus_call_method(raw, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                             "org.freedesktop.DBus", "RequestName", &e, &reply, "su",
                                             wk.c_str(), 4u));
                sd_bus_message_unref(reply);
                RawFrame first;
                first.payload = "first";
                CallResult res = send({first}, {});
                ASSERT_TRUE(res.error.empty()) << res.error;
                ASSERT_OK(test_read_line(out, line, sizeof(line), 20000));
                ASSERT_STREQ(line, "accepted");
                base = child_fds();
                ASSERT_GT(base, 0);

                for (int i = 0; i < 4; i++) {
                        regions.push_back(sealed_memfd(4096, F_SEAL_SHRINK | F_SEAL_GROW, 'q'));
                        ASSERT_GE(regions.back(), 0);
                }
                four.payload = "four";
                four.regions = {{0, 4096}, {1, 4096}, {2, 4096}, {3, 4096}};
        }

        void TearDown() override {
                if (pid > 0) {
                        kill(pid, SIGKILL);
                        test_wait(pid, 10000, NULL);
                }
                if (out >= 0)
                        close(out);
                for (int fd : regions)
                        close(fd);
                if (raw)
                        raw = sd_bus_flush_close_unref(raw);
                BusTest::TearDown();
        }

        CallResult send(const std::vector<RawFrame> &frames, const std::vector<int> &fds) {
                sd_bus_message *m = NULL;
                EXPECT_GE(raw_build_send(raw, me.c_str(), path.c_str(), seq, frames, fds, &m), 0);
                CallResult res = raw_call(raw, m);
                if (res.error.empty())
                        seq += frames.size();
                return res;
        }

        CallResult stage(const std::vector<int> &fds) {
                sd_bus_message *m = NULL;
                EXPECT_GE(sd_bus_message_new_method_call(raw, &m, me.c_str(), path.c_str(),
                                                         "org.ipcmux.Subchannel1", "StageFds"), 0);
                EXPECT_GE(sd_bus_message_open_container(m, 'a', "h"), 0);
                for (int fd : fds)
                        EXPECT_GE(sd_bus_message_append_basic(m, 'h', &fd), 0);
                EXPECT_GE(sd_bus_message_close_container(m), 0);
                return raw_call(raw, m);
        }

        /* Signal the child and read its answer line. */
        std::string child_line(int sig) {
                EXPECT_EQ(kill(pid, sig), 0);
                char buf[256] = "";
                int r = test_read_line(out, buf, sizeof(buf), 20000);
                EXPECT_GE(r, 0) << "the child did not answer: " << strerror(-r);
                return buf;
        }

        int child_fds() {
                std::string s = child_line(SIGUSR1);
                return s.rfind("fds=", 0) == 0 ? atoi(s.c_str() + 4) : -1;
        }

        bool child_running() {
                return test_wait(pid, 0, NULL) == -ETIMEDOUT;
        }

        /* Fill the budget with 4-region messages; returns how many were accepted. */
        int fill(std::string *refusal) {
                int accepted = 0;
                for (int i = 0; i < 20 && refusal->empty(); i++) {
                        CallResult res = send({four}, regions);
                        if (res.error.empty())
                                accepted++;
                        else
                                *refusal = res.error;
                }
                return accepted;
        }

        /* Over quota the peer was cut off: refused, its fds closed at once. */
        void expect_cut_off() {
                int p[2];
                ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
                RawFrame f;
                f.payload = "after the cut";
                f.fds = {0};
                EXPECT_EQ(send({f}, {p[0]}).error, ACCESS_DENIED);
                close(p[0]);
                close(p[1]);
                EXPECT_TRUE(child_running()) << "the receiver must stay on the bus";
        }
};

TEST_F(Quota, QueuedRegionsBounded) {
        std::string refusal;
        int accepted = fill(&refusal);
        EXPECT_EQ(refusal, LIMITS);
        EXPECT_EQ(accepted, (int) BUDGET / 4) << "regions held: a quarter of RLIMIT_NOFILE";
        EXPECT_EQ(child_fds(), base + 4 * accepted) << "the refused call's fds must be closed";
        expect_cut_off();
        EXPECT_EQ(child_fds(), base + 4 * accepted);
        /* What was accepted is still delivered, intact. */
        EXPECT_EQ(child_line(SIGUSR2), "drained " + std::to_string(accepted) + " bad=0 fds=" + std::to_string(base));
        EXPECT_TRUE(child_running());
}

TEST_F(Quota, QueuedPlainFdsBounded) {
        int p[2];
        ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
        RawFrame plain;
        plain.payload = "plain";
        plain.fds = {0, 1, 2, 3};
        int accepted = 0;
        std::string refusal;
        for (int i = 0; i < 20 && refusal.empty(); i++) {
                CallResult res = send({plain}, {p[0], p[1], p[0], p[1]});
                if (res.error.empty())
                        accepted++;
                else
                        refusal = res.error;
        }
        close(p[0]);
        close(p[1]);
        EXPECT_EQ(refusal, LIMITS);
        EXPECT_EQ(accepted, (int) BUDGET / 4);
        EXPECT_EQ(child_fds(), base + 4 * accepted);
        expect_cut_off();
        EXPECT_EQ(child_line(SIGUSR2), "drained " + std::to_string(accepted) + " bad=0 fds=" + std::to_string(base));
}

/* Regions and plain fds of one frame count together; so do several frames. */
TEST_F(Quota, MixedAndBatchedFdsBounded) {
        int p[2];
        ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
        RawFrame two;
        two.regions = {{0, 4096}, {1, 4096}};
        two.fds = {2, 3};
        /* Two frames of four fds in one call: 8; twice fits, the third call does not. */
        RawFrame a = two, b = two;
        b.regions = {{4, 4096}, {5, 4096}};
        b.fds = {6, 7};
        std::vector<int> fds = {regions[0], regions[1], p[0], p[1], regions[2], regions[3], p[0], p[1]};
        EXPECT_TRUE(send({a, b}, fds).error.empty());
        EXPECT_TRUE(send({a, b}, fds).error.empty());
        EXPECT_EQ(send({a, b}, fds).error, LIMITS) << "16 fds held: the budget is full";
        close(p[0]);
        close(p[1]);
        EXPECT_EQ(child_fds(), base + 16);
        expect_cut_off();
        EXPECT_EQ(child_line(SIGUSR2), "drained 4 bad=0 fds=" + std::to_string(base));
}

/*
 * StageFds (fds announced ahead of a Send with more than 16) is no way
 * around the budget: staged fds count like queued ones, so a peer that only
 * stages cannot make the receiver hold more than its budget (16 at
 * RLIMIT_NOFILE 64; beyond it the child would run into EMFILE).
 */
TEST_F(Quota, StagedFdsBounded) {
        int staged = 0;
        std::string refusal;
        for (int i = 0; i < 12 && refusal.empty(); i++) {
                CallResult res = stage(regions);
                if (res.r < 0 && res.error.empty()) {
                        refusal = "<" + std::string(strerror(-res.r)) + ">";
                        break;
                }
                if (res.error.empty())
                        staged += 4;
                else
                        refusal = res.error;
        }
        EXPECT_EQ(refusal, LIMITS) << "after staging " << staged << " fds";
        EXPECT_LE(staged, (int) BUDGET) << "staged fds are not counted against the fd budget";
        EXPECT_TRUE(child_running());
        EXPECT_EQ(child_fds(), base) << "refused: the staged fds are closed";
        expect_cut_off();
        EXPECT_EQ(child_fds(), base);
}

/* Staged and queued together: queued regions leave room for fewer staged. */
TEST_F(Quota, StagedAndQueuedShareTheBudget) {
        EXPECT_TRUE(send({four}, regions).error.empty());
        EXPECT_TRUE(send({four}, regions).error.empty());       /* 8 held */
        EXPECT_TRUE(stage(regions).error.empty());              /* 12 */
        EXPECT_TRUE(stage(regions).error.empty());              /* 16 */
        EXPECT_EQ(stage(regions).error, LIMITS);                /* 20 > 16 */
        EXPECT_EQ(child_fds(), base + 8);
        expect_cut_off();
        EXPECT_EQ(child_line(SIGUSR2), "drained 2 bad=0 fds=" + std::to_string(base));
}

#endif /* !REGIONS_BIG */

#ifdef REGIONS_BIG

TEST_F(Regions, PayloadSpill1GiB) {
        Child c;
        ASSERT_NO_FATAL_FAILURE(c.start());
        spill_round(c, GiB, 1024);
        EXPECT_EQ(c.stop(), 0);
}

/* 1 GiB in one region, out to the child (it checksums its read-only
 * mapping), back (the same memory), and a fresh one from the child. */
TEST_F(Regions, Region1GiBRoundTrip) {
        Child c;
        ASSERT_NO_FATAL_FAILURE(c.start());
        Regs r;
        r.add(pattern_region(GiB, 77));
        ASSERT_NE(r[0], nullptr);
        uint64_t want = sum64(ipcmux_shmem_get_data(r[0]), GiB);

        EXPECT_EQ(c.call("one gig", r, 120000000), report_of("one gig", r));

        ipcmux_shmem *got = NULL;
        ASSERT_NO_FATAL_FAILURE(c.echo_region(r, &got, 120000000));
        EXPECT_EQ(ipcmux_shmem_get_size(got), GiB);
        EXPECT_EQ(sum64(ipcmux_shmem_get_data(got), GiB), want);
        EXPECT_EQ(ipcmux_shmem_get_mutable_data(got), nullptr);
        ipcmux_shmem_unref(got);

        ASSERT_OK(ipcmux_sender_send_bytes(c.tx, "!bigregion 1073741824 78", 24));
        ipcmux_message *m = NULL;
        ASSERT_OK(recv_bounded(c.rx, &m, 120000000));
        EXPECT_EQ(msg_str(m), "regions");
        ASSERT_OK(ipcmux_message_take_shmem(m, 0, &got));
        ipcmux_message_unref(m);
        EXPECT_EQ(ipcmux_shmem_get_size(got), GiB);
        EXPECT_EQ(sum64(ipcmux_shmem_get_data(got), GiB), pattern_sum(GiB, 78));
        void *data = NULL;
        size_t size = 0;
        ASSERT_OK(ipcmux_shmem_take(got, &data, &size));
        EXPECT_EQ(size, GiB);
        free(data);
        EXPECT_EQ(c.stop(), 0);
}

/* 1 GiB payload in one process through the daemon (spilled). */
TEST_F(Regions, PayloadSpill1GiBInProcessBus) {
        BusPair p;
        ASSERT_NO_FATAL_FAILURE(p.open(warm));
        uint8_t *buf = (uint8_t *) malloc(GiB);
        ASSERT_NE(buf, nullptr);
        pattern_fill(buf, GiB, 5, 0);
        uint64_t want = sum64(buf, GiB);
        ASSERT_OK(ipcmux_sender_send_bytes(p.tx, buf, GiB));
        free(buf);
        ipcmux_message *m = NULL;
        ASSERT_OK(recv_bounded(p.rx, &m, 120000000));
        size_t n = 0;
        const void *d = ipcmux_message_get_data(m, &n);
        EXPECT_EQ(n, GiB);
        EXPECT_EQ(sum64(d, n), want);
        ipcmux_message_unref(m);
        p.expect_alive();
}

#endif /* REGIONS_BIG */
