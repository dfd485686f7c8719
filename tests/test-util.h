/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * C++ glue shared by the bus tests written against ipcmux's handles:
 * owning holders for the library's objects, subchannels, a fixture with a
 * channel of its own, the few send/receive helpers the tests are phrased
 * in, a second connection of this process and a thread that keeps a
 * connection dispatched, and a recorder for receive handlers.  One copy here, so that a fix (say, a
 * bound on a wait) reaches every test.
 *
 * It includes bus-fixture.h and so inherits its rule: include it in
 * exactly one .cc file per test binary.
 *
 * Helpers that assert return void: call them inside
 * ASSERT_NO_FATAL_FAILURE() so that a failure ends the test there.  Those
 * that return a value fold a failure into it (recv_str(), recv_error(),
 * try_recv_state()), so that the caller's EXPECT_EQ shows what happened.
 */

#include <unistd.h>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "bus-fixture.h"

/* ---- owning holders -------------------------------------------------------- */

/* One deleter for every handle type, so that out() below serves them all. */
struct Unref {
        void operator()(ipcmux_channel *p) const { ipcmux_channel_unref(p); }
        void operator()(ipcmux_sender *p) const { ipcmux_sender_unref(p); }
        void operator()(ipcmux_receiver *p) const { ipcmux_receiver_unref(p); }
        void operator()(ipcmux_message *p) const { ipcmux_message_unref(p); }
        void operator()(ipcmux_shmem *p) const { ipcmux_shmem_unref(p); }
        void operator()(ipcmux_server *p) const { ipcmux_server_unref(p); }
        void operator()(ipcmux_listener *p) const { ipcmux_listener_unref(p); }
        void operator()(sd_event *p) const { sd_event_unref(p); }
};
using Channel = std::unique_ptr<ipcmux_channel, Unref>;
using Sender = std::unique_ptr<ipcmux_sender, Unref>;
using Receiver = std::unique_ptr<ipcmux_receiver, Unref>;
using Message = std::unique_ptr<ipcmux_message, Unref>;
using Shmem = std::unique_ptr<ipcmux_shmem, Unref>;
using Server = std::unique_ptr<ipcmux_server, Unref>;
using Listener = std::unique_ptr<ipcmux_listener, Unref>;
using Event = std::unique_ptr<sd_event, Unref>;

/* out(u) passes a T** to a C call; the result lands in u when the call's
 * full expression ends (only if the call set it). */
template <typename T> class OutPtr {
public:
        explicit OutPtr(std::unique_ptr<T, Unref> &u) : u_(u) {}
        ~OutPtr() {
                if (p_)
                        u_.reset(p_);
        }
        operator T **() { return &p_; }

private:
        std::unique_ptr<T, Unref> &u_;
        T *p_ = nullptr;
};
template <typename T> OutPtr<T> out(std::unique_ptr<T, Unref> &u) {
        return OutPtr<T>(u);
}

/* An owned file descriptor (tests count fds exactly: none may leak). */
struct Fd {
        int fd = -1;
        Fd() = default;
        explicit Fd(int f) : fd(f) {}
        Fd(const Fd &) = delete;
        Fd &operator=(const Fd &) = delete;
        ~Fd() { reset(); }
        void reset(int f = -1) {
                if (fd >= 0)
                        close(fd);
                fd = f;
        }
};

/* A second reference to the same sender (what a clone is in ipcmux). */
static inline Sender clone(ipcmux_sender *s) {
        return Sender(ipcmux_sender_ref(s));
}
static inline Sender clone(const Sender &s) {
        return clone(s.get());
}

/* ---- channels and subchannels ---------------------------------------------- */

/* Both ends of one subchannel. */
struct Sub {
        Sender tx;
        Receiver rx;
};

/* Both ends must be set: the tests use them without checking again. */
static inline void new_sub(ipcmux_channel *c, Sub *s) {
        ASSERT_OK(ipcmux_channel_sub_channel(c, out(s->tx), out(s->rx)));
        ASSERT_NE(s->tx, nullptr);
        ASSERT_NE(s->rx, nullptr);
}

static inline void new_channel(Channel *c) {
        ASSERT_OK(ipcmux_channel_new(out(*c)));
        ASSERT_NE(*c, nullptr);
}

/* A test with one channel of its own, released before the fd check. */
class ChannelTest : public BusTest {
protected:
        Channel ch;

        void SetUp() override {
                BusTest::SetUp();
                if (HasFatalFailure())
                        return;
                ASSERT_NO_FATAL_FAILURE(new_channel(&ch));
        }
        void TearDown() override {
                ch.reset();
                BusTest::TearDown();
        }
};

/* A second connection of this process to the private bus: what goes
 * between it and the shared one really travels through the daemon. */
static inline void new_far_channel(Channel *far) {
        sd_bus *bus = nullptr;
        ASSERT_OK(test_bus_connect(PrivateBus::bus, &bus));
        int r = ipcmux_channel_new_for_bus(bus, out(*far));
        sd_bus_unref(bus);
        ASSERT_OK(r);
}

/* A subchannel whose receiver is on @rx_side and whose sender is held
 * through @tx_side's connection, bootstrapped by name (one-shot server);
 * its first message ("hello") is consumed here. */
static inline void bridge(ipcmux_channel *rx_side, ipcmux_channel *tx_side, Sender *tx, Receiver *rx) {
        Server srv;
        char *name = nullptr;
        Message first;

        ASSERT_OK(ipcmux_server_new_for_channel(rx_side, out(srv), &name));
        std::unique_ptr<char, decltype(&free)> name_owner(name, free);
        ASSERT_OK(ipcmux_sender_connect_for_channel(tx_side, name, out(*tx)));
        ASSERT_OK(ipcmux_sender_send_bytes(tx->get(), "hello", 5));
        ASSERT_OK(ipcmux_server_accept_timeout(srv.get(), 10000000, out(*rx), out(first)));
        ASSERT_EQ(msg_str(first.get()), "hello");
}

/* ---- sending ------------------------------------------------------------------ */

static inline void send_str(ipcmux_sender *tx, const std::string &s) {
        ASSERT_OK(ipcmux_sender_send_bytes(tx, s.data(), s.size()));
}

/* A message carrying @payload and the given senders, fds and regions, each
 * at the index of its position (the message holds its own copies; the
 * caller keeps its references). */
static inline void build(Message *m, const std::string &payload, std::vector<ipcmux_sender *> senders = {},
                         std::vector<int> fds = {}, std::vector<ipcmux_shmem *> regions = {}) {
        ASSERT_OK(ipcmux_message_new(out(*m)));
        ASSERT_OK(ipcmux_message_append(m->get(), payload.data(), payload.size()));
        for (size_t i = 0; i < senders.size(); i++)
                ASSERT_EQ(ipcmux_message_attach_sender(m->get(), senders[i]), (int) i);
        for (size_t i = 0; i < fds.size(); i++)
                ASSERT_EQ(ipcmux_message_attach_fd(m->get(), fds[i]), (int) i);
        for (size_t i = 0; i < regions.size(); i++)
                ASSERT_EQ(ipcmux_message_attach_shmem(m->get(), regions[i]), (int) i);
}

/* build() and send; the message is dropped afterwards. */
static inline void send_with(ipcmux_sender *tx, const std::string &payload, std::vector<ipcmux_sender *> senders = {},
                             std::vector<int> fds = {}, std::vector<ipcmux_shmem *> regions = {}) {
        Message m;
        ASSERT_NO_FATAL_FAILURE(build(&m, payload, std::move(senders), std::move(fds), std::move(regions)));
        ASSERT_OK(ipcmux_sender_send(tx, m.get()));
}

/* ---- receiving ---------------------------------------------------------------- */

/* The next payload as a string, or a description of the failure (which
 * then never equals an expected payload). */
static inline std::string recv_str(ipcmux_receiver *rx, uint64_t usec = 10000000) {
        Message m;
        int r = recv_bounded(rx, out(m), usec);
        if (r < 0)
                return std::string("<recv failed: ") + strerror(-r) + ">";
        if (!m)
                return "<recv returned no message>";
        return msg_str(m.get());
}

/* The error recv ends with; a message instead is reported as 1. */
static inline int recv_error(ipcmux_receiver *rx, uint64_t usec = 10000000) {
        Message m;
        int r = recv_bounded(rx, out(m), usec);
        return r >= 0 ? 1 : r;
}

/* try_recv, with a message counted as 1. */
static inline int try_recv_state(ipcmux_receiver *rx) {
        Message m;
        int r = ipcmux_receiver_try_recv(rx, out(m));
        return r >= 0 ? 1 : r;
}

/* ---- dispatching from a thread ------------------------------------------------ */

/*
 * Keeps a connection dispatched from a thread of its own, as a process busy
 * in a blocking call would (ipcmux has no I/O thread): it blocks in a
 * bounded recv on a subchannel nobody else sends to, which dispatches the
 * whole connection while it waits.  stop() wakes it with an empty message;
 * the bound only matters if that wake-up were lost.
 */
class Pump {
public:
        ~Pump() { stop(); }
        void start(ipcmux_channel *ch) {
                ASSERT_NO_FATAL_FAILURE(new_sub(ch, &sub_));
                ipcmux_receiver *rx = sub_.rx.get();
                stop_ = false;
                thread_ = std::thread([this, rx]() {
                        while (!stop_.load()) {
                                ipcmux_message *m = nullptr;
                                (void) ipcmux_receiver_try_recv_timeout(rx, 20000, &m);
                                ipcmux_message_unref(m);
                        }
                });
        }
        void stop() {
                if (!thread_.joinable())
                        return;
                stop_ = true;
                (void) ipcmux_sender_send_bytes(sub_.tx.get(), "", 0);
                thread_.join();
                sub_.tx.reset();
                sub_.rx.reset();
        }

private:
        Sub sub_;
        std::thread thread_;
        std::atomic<bool> stop_{false};
};

/* ---- recording receive handlers ----------------------------------------------- */

/* prefix0, prefix1, ...: the payloads of a numbered run of sends. */
static inline std::vector<std::string> numbered(const std::string &prefix, int n, int from = 0) {
        std::vector<std::string> v;
        for (int i = from; i < from + n; i++)
                v.push_back(prefix + std::to_string(i));
        return v;
}

/* What Rec logs for the handler's (m NULL, -EPIPE) call. */
inline const std::string kEof = "<EOF>";

/*
 * What a handler saw, in order: payloads, and kEof for the (m NULL,
 * -EPIPE) call.  Calls for one receiver may come from different threads
 * (never at once); the mutex lets the test thread read the record.
 */
struct Rec {
        std::mutex mu;
        std::vector<std::string> log;
        std::vector<std::string> senders;       /* ipcmux_message_get_sender(), "" for NULL */
        int eofs = 0;
        int bad = 0;            /* (m, error) outside the contract */
        int after_eof = 0;      /* calls after the EOF call */
        int overlaps = 0;       /* a call started while another ran */
        std::atomic<int> in_call{0};
        std::set<std::thread::id> threads;
        /* Run inside the call after recording (set before the handler). */
        std::function<void(ipcmux_receiver *, ipcmux_message *, int)> then;

        size_t n_log() {
                std::lock_guard<std::mutex> g(mu);
                return log.size();
        }
        int n_eof() {
                std::lock_guard<std::mutex> g(mu);
                return eofs;
        }
        std::vector<std::string> get_log() {
                std::lock_guard<std::mutex> g(mu);
                return log;
        }
};

/* The receive handler that fills a Rec (@userdata). */
static inline void rec_handler(ipcmux_receiver *r, ipcmux_message *m, int error, void *userdata) {
        Rec *rec = (Rec *) userdata;
        bool overlap = rec->in_call.fetch_add(1) != 0;
        {
                std::lock_guard<std::mutex> g(rec->mu);
                if (overlap)
                        rec->overlaps++;
                if (rec->eofs > 0)
                        rec->after_eof++;
                if (m && error == 0) {
                        const char *s = ipcmux_message_get_sender(m);
                        rec->log.push_back(msg_str(m));
                        rec->senders.push_back(s ? s : "");
                } else if (!m && error == -EPIPE) {
                        rec->log.push_back(kEof);
                        rec->eofs++;
                } else
                        rec->bad++;
                rec->threads.insert(std::this_thread::get_id());
        }
        if (rec->then)
                rec->then(r, m, error);
        rec->in_call.fetch_sub(1);
}

/* Contract checks every handler test ends with. */
static inline void expect_clean(Rec &rec) {
        std::lock_guard<std::mutex> g(rec.mu);
        EXPECT_EQ(rec.bad, 0) << "handler called with (m, error) outside the contract";
        EXPECT_EQ(rec.after_eof, 0) << "handler called after the EOF call";
        EXPECT_EQ(rec.overlaps, 0) << "calls for one receiver overlapped";
        EXPECT_LE(rec.eofs, 1) << "EOF delivered more than once";
}

static inline std::vector<std::string> with_eof(std::vector<std::string> v) {
        v.push_back(kEof);
        return v;
}
