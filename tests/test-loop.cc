/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Handlers and event loops, listeners and peers, through the public API
 * (ipcmux.h sections "handlers and event loops", "listeners", "peers").
 *
 *  - receive handlers: once per message (m borrowed, error 0), once with
 *    m NULL / -EPIPE at disconnect, queued-before-set first, FIFO, never
 *    overlapping; what a handler may do from inside the call (send, keep
 *    the message, drop the receiver / senders / channel, create
 *    subchannels, set another handler, block in recv);
 *  - drivers: a blocking call on another receiver, sd-event
 *    (ipcmux_channel_attach_event), a custom poll() loop over the quartet
 *    (fd, events, absolute timeout, process), the single driver slot;
 *  - ipcmux_receiver_select over several receivers;
 *  - listeners (multi-client services) and peer credentials.
 *
 * Local handler tests are driven by a "pump": a blocking
 * try_recv_timeout() on a subchannel nobody sends to, which dispatches the
 * whole connection (and so runs due handlers) while it waits.  Remote
 * senders are the helper binary (tests/helper-client.c, modes "send" and
 * "serve") or a second connection of this process
 * (ipcmux_channel_new_for_bus()).
 */

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <thread>

#include "test-util.h"

namespace {

/* Time a statement that must finish within @bound_usec. */
#define EXPECT_WITHIN(bound_usec, stmt)                                                 \
        do {                                                                            \
                uint64_t _t0 = test_now_usec();                                         \
                stmt;                                                                   \
                EXPECT_LT(test_now_usec() - _t0, (uint64_t) (bound_usec)) << #stmt;     \
        } while (0)

class LoopTest : public BusTest {
protected:
        /* Driven by the test thread: see drive_until(). */
        Sub pump;
        Server srv;
        std::string name;
        pid_t child = -1;
        int child_out = -1;

        void SetUp() override {
                BusTest::SetUp();
                if (HasFatalFailure())
                        return;
                /* The loop fd (an epoll set) lives as long as the connection:
                 * create it before counting, it is no leak. */
                ASSERT_GE(ipcmux_channel_get_fd(warm), 0);
                fds_before = test_count_fds();
                ASSERT_NO_FATAL_FAILURE(new_sub(warm, &pump));
        }
        void TearDown() override {
                if (child > 0) {
                        kill(child, SIGKILL);
                        test_wait(child, 10000, NULL);
                }
                if (child_out >= 0)
                        close(child_out);
                srv.reset();
                pump.tx.reset();
                pump.rx.reset();
                BusTest::TearDown();
        }

        /* Dispatch (and so run due handlers) by blocking on the pump until
         * @pred holds; false after @usec. */
        bool drive_until(const std::function<bool()> &pred, uint64_t usec = 10000000) {
                uint64_t end = test_now_usec() + usec;
                while (!pred()) {
                        if (test_now_usec() >= end)
                                return false;
                        ipcmux_message *m = nullptr;
                        int r = ipcmux_receiver_try_recv_timeout(pump.rx.get(), 10000, &m);
                        EXPECT_EQ(r, -ETIMEDOUT);
                        ipcmux_message_unref(m);
                }
                return true;
        }
        void drive_for(uint64_t usec) { (void) drive_until([] { return false; }, usec); }

        /* fork+exec the helper with a one-shot server name of this process. */
        void start(std::vector<std::string> args) {
                char *n = NULL;
                ASSERT_OK(ipcmux_server_new_for_channel(warm, out(srv), &n));
                name = n;
                free(n);
                std::vector<std::string> full = {test_helper_path("helper-client"), args[0], name};
                full.insert(full.end(), args.begin() + 1, args.end());
                std::vector<char *> argv;
                for (auto &a : full)
                        argv.push_back((char *) a.c_str());
                argv.push_back(nullptr);
                ASSERT_OK(test_spawn(argv.data(), &child_out, &child));
        }
        /* accept; the first message must be "first". */
        void accept(Receiver *rx, Message *first = nullptr) {
                Message m;
                ASSERT_OK(ipcmux_server_accept_timeout(srv.get(), 20000000, out(*rx), out(m)));
                ASSERT_NE(*rx, nullptr);
                EXPECT_EQ(msg_str(m.get()), "first");
                if (first)
                        *first = std::move(m);
        }
        std::string line() {
                char buf[256];
                int r = test_read_line(child_out, buf, sizeof(buf), 20000);
                EXPECT_GE(r, 0) << "no line from the helper: " << strerror(-r);
                return r >= 0 ? std::string(buf) : std::string();
        }
        int wait_child() {
                int status = -1;
                int r = test_wait(child, 30000, &status);
                EXPECT_GE(r, 0);
                child = -1;
                return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        }

        /*
         * A custom loop over the quartet: poll get_fd() for get_events()
         * until the absolute get_timeout(), then process() until 0.
         * Returns true once @pred holds, false after @usec.
         */
        bool run_custom_loop(ipcmux_channel *ch, const std::function<bool()> &pred, uint64_t usec = 10000000) {
                uint64_t end = test_now_usec() + usec;
                int fd = ipcmux_channel_get_fd(ch);
                EXPECT_GE(fd, 0);
                while (!pred()) {
                        uint64_t now = test_now_usec(), until = 0;
                        int events, r, ms;

                        if (now >= end)
                                return false;
                        events = ipcmux_channel_get_events(ch);
                        EXPECT_GT(events, 0);
                        EXPECT_EQ(events & ~(POLLIN | POLLOUT), 0);
                        r = ipcmux_channel_get_timeout(ch, &until);
                        EXPECT_EQ(r, 0);
                        if (until <= now)
                                ms = 0;
                        else if (until == UINT64_MAX || until - now > 200000)
                                ms = 200;       /* bound the test, not the loop's contract */
                        else
                                ms = (int) ((until - now + 999) / 1000);
                        struct pollfd p = { .fd = fd, .events = (short) events, .revents = 0 };
                        r = poll(&p, 1, ms);
                        EXPECT_GE(r, 0);
                        while ((r = ipcmux_channel_process(ch)) > 0)
                                ;
                        EXPECT_EQ(r, 0) << strerror(-r);
                }
                return true;
        }

        /* sd_event_run() until @pred; false after @usec. */
        bool run_event(sd_event *e, const std::function<bool()> &pred, uint64_t usec = 10000000) {
                uint64_t end = test_now_usec() + usec;
                while (!pred()) {
                        if (test_now_usec() >= end)
                                return false;
                        int r = sd_event_run(e, 5000000);
                        EXPECT_GE(r, 0) << strerror(-r);
                        if (r < 0)
                                return false;
                }
                return true;
        }
};

} /* namespace */

/* ---- handlers: delivery ----------------------------------------------------- */

TEST_F(LoopTest, HandlerGetsEachMessageThenEofOnce) {
        Sub s;
        Rec rec;

        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
        ASSERT_OK(ipcmux_receiver_set_handler(s.rx.get(), rec_handler, &rec));
        for (auto &p : numbered("m-", 10))
                ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), p));
        ASSERT_TRUE(drive_until([&] { return rec.n_log() >= 10; }));
        EXPECT_EQ(rec.get_log(), numbered("m-", 10));
        EXPECT_EQ(rec.n_eof(), 0);
        for (auto &snd : rec.senders)
                EXPECT_EQ(snd, "") << "a local message has no sender name";

        s.tx.reset();   /* the last sender: disconnected */
        ASSERT_TRUE(drive_until([&] { return rec.n_eof() >= 1; }));
        drive_for(100000);
        EXPECT_EQ(rec.get_log(), with_eof(numbered("m-", 10)));
        expect_clean(rec);
        /* The driver is the pump: the test thread. */
        EXPECT_EQ(rec.threads, std::set<std::thread::id>{std::this_thread::get_id()});
}

TEST_F(LoopTest, EmptyPayloadsAndKeptMessages) {
        Sub s;
        Rec rec;
        std::vector<ipcmux_message *> kept;

        rec.then = [&](ipcmux_receiver *, ipcmux_message *m, int) {
                if (m)
                        kept.push_back(ipcmux_message_ref(m));   /* keep past the call */
        };
        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
        ASSERT_OK(ipcmux_receiver_set_handler(s.rx.get(), rec_handler, &rec));
        ASSERT_OK(ipcmux_sender_send_bytes(s.tx.get(), "", 0));
        ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), "kept"));
        s.tx.reset();
        ASSERT_TRUE(drive_until([&] { return rec.n_eof() >= 1; }));
        EXPECT_EQ(rec.get_log(), (std::vector<std::string>{"", "kept", kEof}));
        ASSERT_EQ(kept.size(), 2u);
        /* Borrowed for the call, but a reference taken inside stays valid. */
        EXPECT_EQ(msg_str(kept[1]), "kept");
        s.rx.reset();
        EXPECT_EQ(msg_str(kept[1]), "kept");
        for (auto *m : kept)
                ipcmux_message_unref(m);
        expect_clean(rec);
}

TEST_F(LoopTest, QueuedBeforeHandlerDeliveredFirstInOrder) {
        Sub s;
        Rec rec;

        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
        for (auto &p : numbered("q-", 5))
                ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), p));
        ASSERT_OK(ipcmux_receiver_set_handler(s.rx.get(), rec_handler, &rec));
        for (auto &p : numbered("h-", 5))
                ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), p));
        ASSERT_TRUE(drive_until([&] { return rec.n_log() >= 10; }));
        auto want = numbered("q-", 5);
        for (auto &p : numbered("h-", 5))
                want.push_back(p);
        EXPECT_EQ(rec.get_log(), want);
        expect_clean(rec);
}

TEST_F(LoopTest, QueuedAndDisconnectedBeforeHandler) {
        Sub s;
        Rec rec;

        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
        for (auto &p : numbered("q-", 3))
                ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), p));
        s.tx.reset();
        /* Disconnected with messages queued: they come first, EOF once, last. */
        ASSERT_OK(ipcmux_receiver_set_handler(s.rx.get(), rec_handler, &rec));
        ASSERT_TRUE(drive_until([&] { return rec.n_eof() >= 1; }));
        drive_for(50000);
        EXPECT_EQ(rec.get_log(), with_eof(numbered("q-", 3)));
        expect_clean(rec);
}

TEST_F(LoopTest, HandlerSetOnDisconnectedEmptyReceiverGetsEof) {
        Sub s;
        Rec rec;

        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
        s.tx.reset();
        ASSERT_OK(ipcmux_receiver_set_handler(s.rx.get(), rec_handler, &rec));
        ASSERT_TRUE(drive_until([&] { return rec.n_eof() >= 1; }));
        drive_for(50000);
        EXPECT_EQ(rec.get_log(), std::vector<std::string>{kEof});
        expect_clean(rec);
}

TEST_F(LoopTest, ManyHandledReceiversKeepTheirOwnOrder) {
        const int R = 5, N = 300;
        Sub s[R];
        Rec rec[R];

        for (int i = 0; i < R; i++) {
                ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s[i]));
                ASSERT_OK(ipcmux_receiver_set_handler(s[i].rx.get(), rec_handler, &rec[i]));
        }
        /* Interleaved, and more than one delivery round per receiver. */
        for (int k = 0; k < N; k++)
                for (int i = 0; i < R; i++)
                        ASSERT_NO_FATAL_FAILURE(send_str(s[i].tx.get(), std::to_string(k)));
        for (int i = 0; i < R; i++)
                s[i].tx.reset();
        ASSERT_TRUE(drive_until([&] {
                for (int i = 0; i < R; i++)
                        if (rec[i].n_eof() < 1)
                                return false;
                return true;
        }));
        for (int i = 0; i < R; i++) {
                EXPECT_EQ(rec[i].get_log(), with_eof(numbered("", N))) << "receiver " << i;
                expect_clean(rec[i]);
        }
}

/* ---- handlers: over the bus --------------------------------------------------- */

TEST_F(LoopTest, HandlerOverTheBus) {
        Receiver rx;
        Message first;
        Rec rec;

        ASSERT_NO_FATAL_FAILURE(start({"send", "100"}));
        ASSERT_NO_FATAL_FAILURE(accept(&rx, &first));
        const char *owner = ipcmux_server_get_name_owner(srv.get());
        ASSERT_NE(owner, nullptr);
        ASSERT_NE(ipcmux_message_get_sender(first.get()), nullptr);
        EXPECT_STREQ(ipcmux_message_get_sender(first.get()), owner);

        /* Whatever arrived meanwhile is queued: it goes to the handler first. */
        ASSERT_OK(ipcmux_receiver_set_handler(rx.get(), rec_handler, &rec));
        ASSERT_TRUE(drive_until([&] { return rec.n_eof() >= 1; }, 20000000));
        drive_for(50000);
        EXPECT_EQ(rec.get_log(), with_eof(numbered("msg-", 100)));
        {
                std::lock_guard<std::mutex> g(rec.mu);
                for (auto &snd : rec.senders)
                        EXPECT_EQ(snd, owner);
        }
        expect_clean(rec);
        EXPECT_EQ(wait_child(), 0);
}

TEST_F(LoopTest, HandlerRepliesOverTheBus) {
        /* The helper echoes: a handler that answers every echo with the next
         * ping runs a conversation with no recv in sight. */
        Receiver rx;
        Message first;
        Sender to_child;
        Rec rec;

        ASSERT_NO_FATAL_FAILURE(start({"serve", "echo"}));
        ASSERT_NO_FATAL_FAILURE(accept(&rx, &first));
        ASSERT_EQ(ipcmux_message_get_n_senders(first.get()), 1u);
        ASSERT_OK(ipcmux_message_take_sender(first.get(), 0, out(to_child)));
        ipcmux_sender *tx = to_child.get();
        rec.then = [&](ipcmux_receiver *, ipcmux_message *m, int) {
                if (!m)
                        return;
                int n = atoi(msg_str(m).c_str() + 5);
                if (n < 49) {
                        std::string next = "ping-" + std::to_string(n + 1);
                        EXPECT_OK(ipcmux_sender_send_bytes(tx, next.data(), next.size()));
                }
        };
        ASSERT_OK(ipcmux_receiver_set_handler(rx.get(), rec_handler, &rec));
        ASSERT_NO_FATAL_FAILURE(send_str(tx, "ping-0"));
        ASSERT_TRUE(drive_until([&] { return rec.n_log() >= 50; }, 20000000));
        EXPECT_EQ(rec.get_log(), numbered("ping-", 50));
        /* Dropping our only copy makes the child exit; its sender goes: EOF. */
        to_child.reset();
        ASSERT_TRUE(drive_until([&] { return rec.n_eof() >= 1; }, 20000000));
        EXPECT_EQ(wait_child(), 0);
        expect_clean(rec);
}

/* ---- handlers: what they may do inside the call ------------------------------ */

TEST_F(LoopTest, DropReceiverInsideHandler) {
        Sub s;
        Rec rec;
        ipcmux_receiver *raw;
        int drops = 0;

        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
        raw = s.rx.release();
        rec.then = [&](ipcmux_receiver *r, ipcmux_message *, int) {
                EXPECT_EQ(r, raw);
                drops++;
                EXPECT_EQ(ipcmux_receiver_unref(r), nullptr);
        };
        ASSERT_OK(ipcmux_receiver_set_handler(raw, rec_handler, &rec));
        for (auto &p : numbered("d-", 3))
                ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), p));
        ASSERT_TRUE(drive_until([&] { return rec.n_log() >= 1; }));
        drive_for(100000);
        /* No call follows the drop: neither the queued messages nor EOF. */
        EXPECT_EQ(rec.get_log(), std::vector<std::string>{"d-0"});
        EXPECT_EQ(drops, 1);
        EXPECT_EQ(ipcmux_sender_send_bytes(s.tx.get(), "x", 1), -EPIPE);
        expect_clean(rec);
}

TEST_F(LoopTest, DropReceiverInsideEofCall) {
        Sub s;
        Rec rec;
        ipcmux_receiver *raw;

        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
        raw = s.rx.release();
        rec.then = [&](ipcmux_receiver *r, ipcmux_message *m, int) {
                if (!m)
                        ipcmux_receiver_unref(r);
        };
        ASSERT_OK(ipcmux_receiver_set_handler(raw, rec_handler, &rec));
        ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), "a"));
        ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), "b"));
        s.tx.reset();
        ASSERT_TRUE(drive_until([&] { return rec.n_eof() >= 1; }));
        drive_for(100000);
        EXPECT_EQ(rec.get_log(), (std::vector<std::string>{"a", "b", kEof}));
        expect_clean(rec);
}

TEST_F(LoopTest, DropReceiverWithQueuedMessagesHoldingSenders) {
        /* Dropped inside the call with messages still queued that carry
         * senders and fds: all of it is released (the fd check and ASan see
         * leaks), and the carried senders' subchannel disconnects. */
        Sub s, carried;
        Rec rec;
        ipcmux_receiver *raw;
        int p[2];

        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &carried));
        ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
        raw = s.rx.release();
        rec.then = [&](ipcmux_receiver *r, ipcmux_message *, int) { ipcmux_receiver_unref(r); };
        for (int i = 0; i < 3; i++) {
                Message m;
                ASSERT_OK(ipcmux_message_new(out(m)));
                ASSERT_OK(ipcmux_message_append(m.get(), "c", 1));
                ASSERT_OK(ipcmux_message_attach_sender(m.get(), carried.tx.get()));
                ASSERT_OK(ipcmux_message_attach_fd(m.get(), p[0]));
                ASSERT_OK(ipcmux_sender_send(s.tx.get(), m.get()));
        }
        close(p[0]);
        close(p[1]);
        carried.tx.reset();     /* only the copies inside the messages remain */
        ASSERT_OK(ipcmux_receiver_set_handler(raw, rec_handler, &rec));
        ASSERT_TRUE(drive_until([&] { return rec.n_log() >= 1; }));
        Message m;
        EXPECT_EQ(recv_bounded(carried.rx.get(), out(m), 5000000), -EPIPE);
        EXPECT_EQ(rec.n_log(), 1u);
        expect_clean(rec);
}

TEST_F(LoopTest, DropSenderInsideHandler) {
        Sub s;
        Rec rec;

        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
        rec.then = [&](ipcmux_receiver *, ipcmux_message *m, int) {
                if (m && msg_str(m) == "s-0")
                        s.tx.reset();   /* the last sender, from inside the call */
        };
        for (auto &p : numbered("s-", 3))
                ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), p));
        ASSERT_OK(ipcmux_receiver_set_handler(s.rx.get(), rec_handler, &rec));
        ASSERT_TRUE(drive_until([&] { return rec.n_eof() >= 1; }));
        drive_for(50000);
        EXPECT_EQ(rec.get_log(), with_eof(numbered("s-", 3)));
        expect_clean(rec);
}

TEST_F(LoopTest, SendFromInsideHandler) {
        /* To its own subchannel (a chain of 20) and to a recv-mode one. */
        Sub a, b;
        Rec rec;

        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &a));
        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &b));
        rec.then = [&](ipcmux_receiver *, ipcmux_message *m, int) {
                if (!m)
                        return;
                int n = atoi(msg_str(m).c_str());
                EXPECT_OK(ipcmux_sender_send_bytes(b.tx.get(), msg_str(m).data(), msg_str(m).size()));
                if (n < 20) {
                        std::string next = std::to_string(n + 1);
                        EXPECT_OK(ipcmux_sender_send_bytes(a.tx.get(), next.data(), next.size()));
                }
        };
        ASSERT_OK(ipcmux_receiver_set_handler(a.rx.get(), rec_handler, &rec));
        ASSERT_NO_FATAL_FAILURE(send_str(a.tx.get(), "0"));
        ASSERT_TRUE(drive_until([&] { return rec.n_log() >= 21; }));
        drive_for(20000);
        EXPECT_EQ(rec.get_log(), numbered("", 21));
        for (int i = 0; i <= 20; i++)
                EXPECT_EQ(recv_str(b.rx.get(), 1000000), std::to_string(i));
        expect_clean(rec);
}

TEST_F(LoopTest, DropChannelInsideHandler) {
        /* The handler drops the only reference to the channel its receiver
         * was made from: the subchannel lives on. */
        ipcmux_channel *ch2 = nullptr;
        Sub s;
        Rec rec;

        ASSERT_OK(ipcmux_channel_new(&ch2));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch2, &s));
        rec.then = [&](ipcmux_receiver *, ipcmux_message *m, int) {
                if (m && ch2)
                        ch2 = ipcmux_channel_unref(ch2);
        };
        ASSERT_OK(ipcmux_receiver_set_handler(s.rx.get(), rec_handler, &rec));
        ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), "a"));
        ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), "b"));
        ASSERT_TRUE(drive_until([&] { return rec.n_log() >= 2; }));
        EXPECT_EQ(ch2, nullptr);
        ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), "c"));
        s.tx.reset();
        ASSERT_TRUE(drive_until([&] { return rec.n_eof() >= 1; }));
        EXPECT_EQ(rec.get_log(), (std::vector<std::string>{"a", "b", "c", kEof}));
        expect_clean(rec);
        if (ch2)
                ipcmux_channel_unref(ch2);
}

TEST_F(LoopTest, DropEverythingInsideHandler) {
        /* Receiver, sender and channel, all from inside one call. */
        ipcmux_channel *ch2 = nullptr;
        ipcmux_sender *tx = nullptr;
        ipcmux_receiver *rx = nullptr;
        Rec rec;

        ASSERT_OK(ipcmux_channel_new(&ch2));
        ASSERT_OK(ipcmux_channel_sub_channel(ch2, &tx, &rx));
        rec.then = [&](ipcmux_receiver *r, ipcmux_message *, int) {
                ipcmux_receiver_unref(r);
                ipcmux_sender_unref(tx);
                ipcmux_channel_unref(ch2);
        };
        ASSERT_OK(ipcmux_receiver_set_handler(rx, rec_handler, &rec));
        ASSERT_OK(ipcmux_sender_send_bytes(tx, "x", 1));
        ASSERT_OK(ipcmux_sender_send_bytes(tx, "y", 1));
        ASSERT_TRUE(drive_until([&] { return rec.n_log() >= 1; }));
        drive_for(100000);
        EXPECT_EQ(rec.get_log(), std::vector<std::string>{"x"});
        expect_clean(rec);
}

TEST_F(LoopTest, CreateSubchannelsAndSetAnotherHandlerInside) {
        Sub s;
        Rec first, second;
        std::vector<Sub> made;

        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
        first.then = [&](ipcmux_receiver *r, ipcmux_message *m, int) {
                if (!m)
                        return;
                made.emplace_back();
                EXPECT_OK(ipcmux_channel_sub_channel(warm, out(made.back().tx), out(made.back().rx)));
                EXPECT_OK(ipcmux_sender_send_bytes(made.back().tx.get(), "new", 3));
                /* From now on the second handler gets this receiver's calls. */
                EXPECT_OK(ipcmux_receiver_set_handler(r, rec_handler, &second));
        };
        ASSERT_OK(ipcmux_receiver_set_handler(s.rx.get(), rec_handler, &first));
        for (auto &p : numbered("x-", 3))
                ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), p));
        s.tx.reset();
        ASSERT_TRUE(drive_until([&] { return second.n_eof() >= 1; }));
        EXPECT_EQ(first.get_log(), std::vector<std::string>{"x-0"});
        EXPECT_EQ(second.get_log(), (std::vector<std::string>{"x-1", "x-2", kEof}));
        ASSERT_EQ(made.size(), 1u);
        EXPECT_EQ(recv_str(made[0].rx.get(), 1000000), "new");
        expect_clean(first);
        expect_clean(second);
}

TEST_F(LoopTest, BlockingRecvInsideHandler) {
        /* A handler may block in recv on another receiver; another thread
         * sends what it waits for. */
        Sub a, b;
        Rec rec;
        std::string inner;
        std::thread late;

        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &a));
        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &b));
        ipcmux_sender *btx = b.tx.get();
        rec.then = [&](ipcmux_receiver *, ipcmux_message *m, int) {
                if (!m)
                        return;
                late = std::thread([btx]() {
                        usleep(50000);
                        (void) ipcmux_sender_send_bytes(btx, "late", 4);
                });
                inner = recv_str(b.rx.get(), 5000000);
        };
        ASSERT_OK(ipcmux_receiver_set_handler(a.rx.get(), rec_handler, &rec));
        ASSERT_NO_FATAL_FAILURE(send_str(a.tx.get(), "go"));
        ASSERT_TRUE(drive_until([&] { return rec.n_log() >= 1; }));
        if (late.joinable())
                late.join();
        EXPECT_EQ(inner, "late");
        expect_clean(rec);
}

TEST_F(LoopTest, BlockingAcceptInsideHandler) {
        /* A handler blocks in accept on a one-shot server a helper connects to. */
        Sub a;
        Rec rec;
        Receiver got;
        std::string first_payload;

        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &a));
        ASSERT_NO_FATAL_FAILURE(start({"send", "3"}));
        rec.then = [&](ipcmux_receiver *, ipcmux_message *m, int) {
                if (!m)
                        return;
                Message f;
                EXPECT_OK(ipcmux_server_accept_timeout(srv.get(), 20000000, out(got), out(f)));
                if (f)
                        first_payload = msg_str(f.get());
        };
        ASSERT_OK(ipcmux_receiver_set_handler(a.rx.get(), rec_handler, &rec));
        ASSERT_NO_FATAL_FAILURE(send_str(a.tx.get(), "go"));
        ASSERT_TRUE(drive_until([&] { return rec.n_log() >= 1; }, 25000000));
        EXPECT_EQ(first_payload, "first");
        ASSERT_NE(got, nullptr);
        for (auto &p : numbered("msg-", 3))
                EXPECT_EQ(recv_str(got.get()), p);
        EXPECT_EQ(wait_child(), 0);
        expect_clean(rec);
}

/* ---- handlers: recv mode and back ------------------------------------------- */

TEST_F(LoopTest, RecvOnHandledReceiverIsBusy) {
        Sub s;
        Rec rec;
        Message m;
        size_t idx = 99;

        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
        ASSERT_OK(ipcmux_receiver_set_handler(s.rx.get(), rec_handler, &rec));
        EXPECT_EQ(ipcmux_receiver_recv(s.rx.get(), out(m)), -EBUSY);
        EXPECT_EQ(ipcmux_receiver_try_recv(s.rx.get(), out(m)), -EBUSY);
        EXPECT_EQ(ipcmux_receiver_try_recv_timeout(s.rx.get(), 1000000, out(m)), -EBUSY);
        ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), "x"));
        /* Even with a message queued and not yet delivered. */
        EXPECT_EQ(ipcmux_receiver_try_recv(s.rx.get(), out(m)), -EBUSY);
        EXPECT_EQ(m, nullptr);
        ipcmux_receiver *rxs[] = {pump.rx.get(), s.rx.get()};
        EXPECT_EQ(ipcmux_receiver_select(rxs, 2, 0, &idx), -EINVAL);
        EXPECT_EQ(idx, 99u);
        EXPECT_EQ(ipcmux_receiver_set_handler(nullptr, rec_handler, &rec), -EINVAL);
        ASSERT_TRUE(drive_until([&] { return rec.n_log() >= 1; }));
        expect_clean(rec);
}

TEST_F(LoopTest, NullHandlerReturnsToRecvMode) {
        Sub s;
        Rec rec;

        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
        ASSERT_OK(ipcmux_receiver_set_handler(s.rx.get(), rec_handler, &rec));
        ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), "a"));
        ASSERT_TRUE(drive_until([&] { return rec.n_log() >= 1; }));
        ASSERT_OK(ipcmux_receiver_set_handler(s.rx.get(), nullptr, nullptr));
        ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), "b"));
        ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), "c"));
        drive_for(50000);
        EXPECT_EQ(rec.get_log(), std::vector<std::string>{"a"});
        EXPECT_EQ(recv_str(s.rx.get(), 1000000), "b");
        EXPECT_EQ(recv_str(s.rx.get(), 1000000), "c");
        s.tx.reset();
        Message m;
        EXPECT_EQ(recv_bounded(s.rx.get(), out(m), 1000000), -EPIPE);
        drive_for(20000);
        EXPECT_EQ(rec.n_eof(), 0) << "no EOF call once the handler is unset";
        expect_clean(rec);
}

TEST_F(LoopTest, HandlerUnsetBeforeDeliveryLeavesMessagesQueued) {
        Sub s;
        Rec rec;

        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
        ASSERT_OK(ipcmux_receiver_set_handler(s.rx.get(), rec_handler, &rec));
        ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), "x"));
        ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), "y"));
        /* Nothing drove the connection since: nothing delivered yet. */
        ASSERT_OK(ipcmux_receiver_set_handler(s.rx.get(), nullptr, nullptr));
        drive_for(20000);
        size_t got = rec.n_log();
        EXPECT_EQ(got, 0u);
        EXPECT_EQ(recv_str(s.rx.get(), 1000000), "x");
        EXPECT_EQ(recv_str(s.rx.get(), 1000000), "y");
        expect_clean(rec);
}

/* ---- sd-event ------------------------------------------------------------- */

TEST_F(LoopTest, SdEventDrivesHandlers) {
        Event e;
        Sub s;
        Rec rec;

        ASSERT_OK(sd_event_new(out(e)));
        ASSERT_OK(ipcmux_channel_attach_event(warm, e.get(), 0));
        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
        ASSERT_OK(ipcmux_receiver_set_handler(s.rx.get(), rec_handler, &rec));

        /* Another thread sends (and disconnects): the loop must wake for
         * local work too, not only for the socket. */
        Sender tx = std::move(s.tx);
        std::thread sender([&tx]() {
                for (int i = 0; i < 200; i++) {
                        std::string p = "e-" + std::to_string(i);
                        EXPECT_OK(ipcmux_sender_send_bytes(tx.get(), p.data(), p.size()));
                        if (i % 50 == 0)
                                usleep(10000);
                }
                tx.reset();
        });
        uint64_t t0 = test_now_usec();
        bool done = run_event(e.get(), [&] { return rec.n_eof() >= 1; });
        sender.join();
        ASSERT_TRUE(done);
        /* Each sd_event_run() would sleep up to 5 s on a lost wake-up. */
        EXPECT_LT(test_now_usec() - t0, 4000000u);
        EXPECT_EQ(rec.get_log(), with_eof(numbered("e-", 200)));
        EXPECT_EQ(rec.threads, std::set<std::thread::id>{std::this_thread::get_id()});
        expect_clean(rec);

        ASSERT_OK(ipcmux_channel_detach_event(warm));
        /* The slot is free again. */
        ASSERT_OK(ipcmux_channel_attach_loop(warm));
        ASSERT_OK(ipcmux_channel_detach_loop(warm));
}

TEST_F(LoopTest, SdEventOverTheBus) {
        Event e;
        Receiver rx;
        Rec rec;

        ASSERT_OK(sd_event_new(out(e)));
        ASSERT_OK(ipcmux_channel_attach_event(warm, e.get(), 0));
        ASSERT_NO_FATAL_FAILURE(start({"send", "300"}));
        /* Blocking calls keep working beside the attached loop. */
        ASSERT_NO_FATAL_FAILURE(accept(&rx));
        ASSERT_OK(ipcmux_receiver_set_handler(rx.get(), rec_handler, &rec));
        ASSERT_TRUE(run_event(e.get(), [&] { return rec.n_eof() >= 1; }, 20000000));
        EXPECT_EQ(rec.get_log(), with_eof(numbered("msg-", 300)));
        expect_clean(rec);
        EXPECT_EQ(wait_child(), 0);
        ASSERT_OK(ipcmux_channel_detach_event(warm));
}

TEST_F(LoopTest, SdEventDefaultLoop) {
        Sub s;
        Rec rec;

        ASSERT_OK(ipcmux_channel_attach_event(warm, nullptr, 0));
        Event def;
        ASSERT_OK(sd_event_default(out(def)));
        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
        ASSERT_OK(ipcmux_receiver_set_handler(s.rx.get(), rec_handler, &rec));
        ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), "d"));
        s.tx.reset();
        ASSERT_TRUE(run_event(def.get(), [&] { return rec.n_eof() >= 1; }));
        EXPECT_EQ(rec.get_log(), (std::vector<std::string>{"d", kEof}));
        ASSERT_OK(ipcmux_channel_detach_event(warm));
        expect_clean(rec);
}

TEST_F(LoopTest, BlockingRecvBesideAttachedLoop) {
        /* The loop is attached but nobody runs it: recv drives by itself. */
        Event e;
        Sub s;

        ASSERT_OK(sd_event_new(out(e)));
        ASSERT_OK(ipcmux_channel_attach_event(warm, e.get(), 0));
        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
        std::thread t([&s]() {
                usleep(20000);
                (void) ipcmux_sender_send_bytes(s.tx.get(), "r", 1);
        });
        EXPECT_EQ(recv_str(s.rx.get(), 5000000), "r");
        t.join();
        ASSERT_OK(ipcmux_channel_detach_event(warm));
}

TEST_F(LoopTest, OneDriverPerConnection) {
        Event e, e2;
        Channel other, far;

        ASSERT_OK(sd_event_new(out(e)));
        ASSERT_OK(sd_event_new(out(e2)));
        ASSERT_OK(ipcmux_channel_new(out(other)));      /* same process-wide connection */

        ASSERT_OK(ipcmux_channel_attach_event(warm, e.get(), 0));
        EXPECT_EQ(ipcmux_channel_attach_event(warm, e.get(), 0), -EBUSY);
        EXPECT_EQ(ipcmux_channel_attach_event(warm, e2.get(), 0), -EBUSY);
        EXPECT_EQ(ipcmux_channel_attach_loop(warm), -EBUSY);
        EXPECT_EQ(ipcmux_channel_attach_event(other.get(), e2.get(), 0), -EBUSY);
        EXPECT_EQ(ipcmux_channel_attach_loop(other.get()), -EBUSY);

        /* Another connection has a slot of its own. */
        ASSERT_NO_FATAL_FAILURE(new_far_channel(&far));
        EXPECT_EQ(ipcmux_channel_attach_loop(far.get()), 0);
        EXPECT_EQ(ipcmux_channel_attach_event(far.get(), e2.get(), 0), -EBUSY);
        EXPECT_EQ(ipcmux_channel_detach_loop(far.get()), 0);

        ASSERT_OK(ipcmux_channel_detach_event(warm));
        ASSERT_OK(ipcmux_channel_attach_loop(other.get()));
        EXPECT_EQ(ipcmux_channel_attach_loop(warm), -EBUSY);
        EXPECT_EQ(ipcmux_channel_attach_event(warm, e.get(), 0), -EBUSY);
        ASSERT_OK(ipcmux_channel_detach_loop(other.get()));
        ASSERT_OK(ipcmux_channel_attach_event(warm, e2.get(), 0));
        ASSERT_OK(ipcmux_channel_detach_event(warm));
        far.reset();
}

/* ---- custom loops ------------------------------------------------------- */

TEST_F(LoopTest, CustomLoopQuartet) {
        Sub s;
        Rec rec;
        uint64_t until = 0;
        int r;

        ASSERT_OK(ipcmux_channel_attach_loop(warm));
        int fd = ipcmux_channel_get_fd(warm);
        ASSERT_GE(fd, 0);
        EXPECT_EQ(ipcmux_channel_get_fd(warm), fd) << "one fd for the connection's life";
        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
        ASSERT_OK(ipcmux_receiver_set_handler(s.rx.get(), rec_handler, &rec));

        /* Idle once processed: no work due now. */
        while ((r = ipcmux_channel_process(warm)) > 0)
                ;
        ASSERT_EQ(r, 0);
        ASSERT_OK(ipcmux_channel_get_timeout(warm, &until));
        EXPECT_NE(until, 0u) << "nothing is due";

        /* A local send makes handler work due: timeout 0 and the fd wakes. */
        ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), "q"));
        ASSERT_OK(ipcmux_channel_get_timeout(warm, &until));
        EXPECT_EQ(until, 0u);
        int events = ipcmux_channel_get_events(warm);
        ASSERT_GT(events, 0);
        struct pollfd p = { .fd = fd, .events = (short) events, .revents = 0 };
        EXPECT_EQ(poll(&p, 1, 1000), 1) << "a local send must wake a loop polling the fd";
        while ((r = ipcmux_channel_process(warm)) > 0)
                ;
        ASSERT_EQ(r, 0);
        EXPECT_EQ(rec.get_log(), std::vector<std::string>{"q"});
        ASSERT_OK(ipcmux_channel_get_timeout(warm, &until));
        EXPECT_NE(until, 0u);

        /* Messages from another thread, then its disconnect. */
        Sender tx = std::move(s.tx);
        std::thread sender([&tx]() {
                for (int i = 0; i < 100; i++) {
                        std::string pl = "c-" + std::to_string(i);
                        EXPECT_OK(ipcmux_sender_send_bytes(tx.get(), pl.data(), pl.size()));
                        if (i % 20 == 0)
                                usleep(5000);
                }
                tx.reset();
        });
        bool done = run_custom_loop(warm, [&] { return rec.n_eof() >= 1; });
        sender.join();
        ASSERT_TRUE(done);
        auto want = numbered("c-", 100);
        want.insert(want.begin(), "q");
        EXPECT_EQ(rec.get_log(), with_eof(want));
        expect_clean(rec);
        ASSERT_OK(ipcmux_channel_detach_loop(warm));
}

TEST_F(LoopTest, CustomLoopOverTheBus) {
        Receiver rx;
        Rec rec;

        ASSERT_OK(ipcmux_channel_attach_loop(warm));
        ASSERT_NO_FATAL_FAILURE(start({"send", "200"}));
        ASSERT_NO_FATAL_FAILURE(accept(&rx));
        ASSERT_OK(ipcmux_receiver_set_handler(rx.get(), rec_handler, &rec));
        ASSERT_TRUE(run_custom_loop(warm, [&] { return rec.n_eof() >= 1; }, 20000000));
        EXPECT_EQ(rec.get_log(), with_eof(numbered("msg-", 200)));
        expect_clean(rec);
        EXPECT_EQ(wait_child(), 0);
        ASSERT_OK(ipcmux_channel_detach_loop(warm));
}

TEST_F(LoopTest, CustomLoopSendsLargeOutput) {
        /* Output that cannot all be written at once: the loop must see
         * POLLOUT interest (get_events before each poll) and finish writing. */
        Channel far;
        Pump far_pump;
        Receiver rx;
        Sender tx;
        Rec rec;

        ASSERT_NO_FATAL_FAILURE(new_far_channel(&far));
        {
                Server s;
                char *n = nullptr;
                Message first;
                ASSERT_OK(ipcmux_server_new_for_channel(far.get(), out(s), &n));
                int r = ipcmux_sender_connect_for_channel(warm, n, out(tx));
                free(n);
                ASSERT_OK(r);
                ASSERT_NO_FATAL_FAILURE(send_str(tx.get(), "hello"));
                ASSERT_OK(ipcmux_server_accept_timeout(s.get(), 10000000, out(rx), out(first)));
        }
        ASSERT_OK(ipcmux_receiver_set_handler(rx.get(), rec_handler, &rec));
        ASSERT_NO_FATAL_FAILURE(far_pump.start(far.get()));
        ASSERT_OK(ipcmux_channel_attach_loop(warm));
        std::string big(256 * 1024, 'b');
        for (int i = 0; i < 64; i++) {
                big[0] = (char) ('A' + i % 26);
                ASSERT_OK(ipcmux_sender_send_bytes(tx.get(), big.data(), big.size()));
        }
        tx.reset();
        ASSERT_TRUE(run_custom_loop(warm, [&] { return rec.n_eof() >= 1; }, 20000000));
        EXPECT_EQ(rec.n_log(), 65u);
        expect_clean(rec);
        ASSERT_OK(ipcmux_channel_detach_loop(warm));
        far_pump.stop();
        rx.reset();
        far.reset();
}

/* ---- select ---------------------------------------------------------------- */

TEST_F(LoopTest, SelectOverThreeReceivers) {
        Sub s[3];
        size_t idx = 99;
        Message m;

        for (auto &x : s)
                ASSERT_NO_FATAL_FAILURE(new_sub(warm, &x));
        ipcmux_receiver *rxs[] = {s[0].rx.get(), s[1].rx.get(), s[2].rx.get()};

        uint64_t t0 = test_now_usec();
        EXPECT_EQ(ipcmux_receiver_select(rxs, 3, 50000, &idx), -ETIMEDOUT);
        EXPECT_GE(test_now_usec() - t0, 45000u);
        EXPECT_EQ(idx, 99u);
        EXPECT_EQ(ipcmux_receiver_select(rxs, 3, 0, &idx), -ETIMEDOUT);

        ASSERT_NO_FATAL_FAILURE(send_str(s[1].tx.get(), "one"));
        ASSERT_OK(ipcmux_receiver_select(rxs, 3, 1000000, &idx));
        EXPECT_EQ(idx, 1u);
        /* Ready means recv will not block; select consumes nothing. */
        ASSERT_OK(ipcmux_receiver_select(rxs, 3, 0, &idx));
        EXPECT_EQ(idx, 1u);
        EXPECT_EQ(recv_str(s[1].rx.get(), 0), "one");

        /* Woken by another thread's send while blocked. */
        std::thread t([&s]() {
                usleep(50000);
                (void) ipcmux_sender_send_bytes(s[2].tx.get(), "two", 3);
        });
        t0 = test_now_usec();
        ASSERT_OK(ipcmux_receiver_select(rxs, 3, 10000000, &idx));
        EXPECT_LT(test_now_usec() - t0, 5000000u);
        t.join();
        EXPECT_EQ(idx, 2u);
        EXPECT_EQ(recv_str(s[2].rx.get(), 0), "two");

        /* Disconnected counts as ready. */
        s[0].tx.reset();
        ASSERT_OK(ipcmux_receiver_select(rxs, 3, 1000000, &idx));
        EXPECT_EQ(idx, 0u);
        EXPECT_EQ(ipcmux_receiver_try_recv(s[0].rx.get(), out(m)), -EPIPE);

        /* Disconnected by another thread while blocked. */
        ipcmux_receiver *rest[] = {s[1].rx.get(), s[2].rx.get()};
        std::thread t2([&s]() {
                usleep(50000);
                s[1].tx.reset();
        });
        ASSERT_OK(ipcmux_receiver_select(rest, 2, 10000000, &idx));
        t2.join();
        EXPECT_EQ(idx, 0u);

        /* Argument checks. */
        EXPECT_EQ(ipcmux_receiver_select(rxs, 0, 0, &idx), -EINVAL);
        EXPECT_EQ(ipcmux_receiver_select(nullptr, 3, 0, &idx), -EINVAL);
        EXPECT_EQ(ipcmux_receiver_select(rxs, 3, 0, nullptr), -EINVAL);
        ipcmux_receiver *with_null[] = {s[2].rx.get(), nullptr};
        EXPECT_EQ(ipcmux_receiver_select(with_null, 2, 0, &idx), -EINVAL);
}

TEST_F(LoopTest, SelectOverTheBusAndAcrossConnections) {
        Receiver rx;
        Sub a, b;
        size_t idx = 99;
        Channel far;

        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &a));
        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &b));
        ASSERT_NO_FATAL_FAILURE(start({"send", "2"}));
        ASSERT_NO_FATAL_FAILURE(accept(&rx));
        ipcmux_receiver *rxs[] = {a.rx.get(), b.rx.get(), rx.get()};
        ASSERT_OK(ipcmux_receiver_select(rxs, 3, 10000000, &idx));
        EXPECT_EQ(idx, 2u);
        EXPECT_EQ(recv_str(rx.get()), "msg-0");
        EXPECT_EQ(recv_str(rx.get()), "msg-1");
        ASSERT_OK(ipcmux_receiver_select(rxs, 3, 10000000, &idx));   /* the helper's exit */
        EXPECT_EQ(idx, 2u);
        Message m;
        EXPECT_EQ(ipcmux_receiver_try_recv(rx.get(), out(m)), -EPIPE);
        EXPECT_EQ(wait_child(), 0);

        /* All receivers must be on one connection. */
        Sub f;
        ASSERT_NO_FATAL_FAILURE(new_far_channel(&far));
        ASSERT_NO_FATAL_FAILURE(new_sub(far.get(), &f));
        ipcmux_receiver *mixed[] = {a.rx.get(), f.rx.get()};
        idx = 99;
        EXPECT_EQ(ipcmux_receiver_select(mixed, 2, 0, &idx), -EXDEV);
        EXPECT_EQ(idx, 99u);
        f.tx.reset();
        f.rx.reset();
        far.reset();
}

/* ---- peers ------------------------------------------------------------------- */

TEST_F(LoopTest, MessageSenderAndPeerCreds) {
        Sub s;
        Message m;
        uid_t uid = 12345;
        pid_t pid = 12345;

        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
        ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), "local"));
        ASSERT_OK(recv_bounded(s.rx.get(), out(m)));
        EXPECT_EQ(ipcmux_message_get_sender(m.get()), nullptr) << "from this process";
        EXPECT_EQ(ipcmux_message_get_sender(nullptr), nullptr);

        /* Ourselves. */
        ASSERT_OK(ipcmux_channel_get_peer_creds(warm, ipcmux_channel_get_unique_name(warm), &uid, &pid));
        EXPECT_EQ(uid, getuid());
        EXPECT_EQ(pid, getpid());
        EXPECT_OK(ipcmux_channel_get_peer_creds(warm, ipcmux_channel_get_unique_name(warm), nullptr, nullptr));
        EXPECT_EQ(ipcmux_channel_get_peer_creds(warm, "org.example.NotUnique", &uid, &pid), -EINVAL);
        EXPECT_EQ(ipcmux_channel_get_peer_creds(warm, nullptr, &uid, &pid), -EINVAL);

        /* A helper process: its pid. */
        Receiver rx;
        Message first;
        Sender to_child;
        ASSERT_NO_FATAL_FAILURE(start({"serve", "echo"}));
        ASSERT_NO_FATAL_FAILURE(accept(&rx, &first));
        const char *owner = ipcmux_server_get_name_owner(srv.get());
        ASSERT_NE(owner, nullptr);
        std::string owner_name = owner;
        ASSERT_NE(ipcmux_message_get_sender(first.get()), nullptr);
        EXPECT_EQ(std::string(ipcmux_message_get_sender(first.get())), owner_name);
        uid = 12345;
        pid = 12345;
        ASSERT_OK(ipcmux_channel_get_peer_creds(warm, owner_name.c_str(), &uid, &pid));
        EXPECT_EQ(uid, getuid());
        EXPECT_EQ(pid, child);
        pid = 0;
        ASSERT_OK(ipcmux_channel_get_peer_creds(warm, owner_name.c_str(), nullptr, &pid));   /* cached */
        EXPECT_EQ(pid, child);

        /* An echo carries the helper's name too. */
        ASSERT_OK(ipcmux_message_take_sender(first.get(), 0, out(to_child)));
        ASSERT_NO_FATAL_FAILURE(send_str(to_child.get(), "echo"));
        Message e;
        ASSERT_OK(recv_bounded(rx.get(), out(e)));
        EXPECT_EQ(msg_str(e.get()), "echo");
        ASSERT_NE(ipcmux_message_get_sender(e.get()), nullptr);
        EXPECT_EQ(std::string(ipcmux_message_get_sender(e.get())), owner_name);

        /* Gone: -ESRCH once the bus has said so. */
        to_child.reset();
        EXPECT_EQ(wait_child(), 0);
        int r = 0;
        ASSERT_TRUE(drive_until([&] {
                r = ipcmux_channel_get_peer_creds(warm, owner_name.c_str(), &uid, &pid);
                return r == -ESRCH;
        }, 5000000)) << "last: " << r;
        /* A name that never existed. */
        EXPECT_EQ(ipcmux_channel_get_peer_creds(warm, ":1.999999", &uid, &pid), -ESRCH);
}

TEST_F(LoopTest, PeerCredsOfAnotherConnectionOfThisProcess) {
        Channel far;
        uid_t uid = 12345;
        pid_t pid = 12345;

        ASSERT_NO_FATAL_FAILURE(new_far_channel(&far));
        ASSERT_OK(ipcmux_channel_get_peer_creds(warm, ipcmux_channel_get_unique_name(far.get()), &uid, &pid));
        EXPECT_EQ(uid, getuid());
        EXPECT_EQ(pid, getpid());
        far.reset();
}

/* ---- listeners -------------------------------------------------------------- */

/* Two client connections of this process; the service is the process-wide
 * connection, kept dispatched by a pump thread (clients block on their own
 * connections while the service answers Connect). */
class ListenerTest : public LoopTest {
protected:
        Channel a, b;
        Pump service;

        void SetUp() override {
                LoopTest::SetUp();
                if (HasFatalFailure())
                        return;
                ASSERT_NO_FATAL_FAILURE(new_far_channel(&a));
                ASSERT_NO_FATAL_FAILURE(new_far_channel(&b));
        }
        void TearDown() override {
                service.stop();
                a.reset();
                b.reset();
                LoopTest::TearDown();
        }
};

/* Receive @n messages: payload -> sender name. */
std::map<std::string, std::string> recv_from(ipcmux_receiver *rx, int n) {
        std::map<std::string, std::string> got;
        for (int i = 0; i < n; i++) {
                Message m;
                int r = recv_bounded(rx, out(m));
                EXPECT_GE(r, 0) << strerror(-r);
                if (r < 0)
                        break;
                const char *s = ipcmux_message_get_sender(m.get());
                got[msg_str(m.get())] = s ? s : "<null>";
        }
        return got;
}

TEST_F(ListenerTest, ClientsByWellKnownName) {
        Listener l;
        Sender ta, tb;

        ASSERT_OK(ipcmux_listener_new(warm, "org.ipcmux.test.Echo", out(l)));
        ipcmux_receiver *lrx = ipcmux_listener_get_receiver(l.get());
        ASSERT_NE(lrx, nullptr);
        ASSERT_NO_FATAL_FAILURE(service.start(warm));

        ASSERT_OK(ipcmux_sender_connect_service(a.get(), "org.ipcmux.test.Echo", nullptr, out(ta)));
        ASSERT_OK(ipcmux_sender_connect_service(b.get(), "org.ipcmux.test.Echo", nullptr, out(tb)));
        ASSERT_NO_FATAL_FAILURE(send_str(ta.get(), "from-a"));
        ASSERT_NO_FATAL_FAILURE(send_str(tb.get(), "from-b"));
        ASSERT_NO_FATAL_FAILURE(send_str(ta.get(), "again-a"));

        auto got = recv_from(lrx, 3);
        EXPECT_EQ(got["from-a"], ipcmux_channel_get_unique_name(a.get()));
        EXPECT_EQ(got["again-a"], ipcmux_channel_get_unique_name(a.get()));
        EXPECT_EQ(got["from-b"], ipcmux_channel_get_unique_name(b.get()));

        /* In-process clients: our own uid and pid. */
        uid_t uid = 12345;
        pid_t pid = 12345;
        ASSERT_OK(ipcmux_channel_get_peer_creds(warm, got["from-b"].c_str(), &uid, &pid));
        EXPECT_EQ(uid, getuid());
        EXPECT_EQ(pid, getpid());

        EXPECT_EQ(ipcmux_listener_get_n_clients(l.get()), 2u);
}

TEST_F(ListenerTest, ClientsByUniqueNameAndListenerName) {
        /* Not a bus name: reachable through the service's unique name. */
        Listener l;
        Sender ta;

        ASSERT_OK(ipcmux_listener_new(warm, "plain listener", out(l)));
        ASSERT_NO_FATAL_FAILURE(service.start(warm));
        ASSERT_OK(ipcmux_sender_connect_service(a.get(), ipcmux_channel_get_unique_name(warm), "plain listener",
                                                out(ta)));
        ASSERT_NO_FATAL_FAILURE(send_str(ta.get(), "hi"));
        auto got = recv_from(ipcmux_listener_get_receiver(l.get()), 1);
        EXPECT_EQ(got["hi"], ipcmux_channel_get_unique_name(a.get()));
}

TEST_F(ListenerTest, RepliesThroughAttachedSenders) {
        /* The usual service shape: clients attach a sender for the reply. */
        Listener l;
        Sender ta;
        Sub reply;

        ASSERT_OK(ipcmux_listener_new(warm, "org.ipcmux.test.Reply", out(l)));
        ASSERT_NO_FATAL_FAILURE(service.start(warm));
        ASSERT_OK(ipcmux_sender_connect_service(a.get(), "org.ipcmux.test.Reply", nullptr, out(ta)));
        ASSERT_NO_FATAL_FAILURE(new_sub(a.get(), &reply));
        {
                Message m;
                ASSERT_OK(ipcmux_message_new(out(m)));
                ASSERT_OK(ipcmux_message_append(m.get(), "question", 8));
                ASSERT_OK(ipcmux_message_attach_sender(m.get(), reply.tx.get()));
                ASSERT_OK(ipcmux_sender_send(ta.get(), m.get()));
        }
        reply.tx.reset();
        Message q;
        Sender back;
        ASSERT_OK(recv_bounded(ipcmux_listener_get_receiver(l.get()), out(q)));
        EXPECT_EQ(msg_str(q.get()), "question");
        ASSERT_OK(ipcmux_message_take_sender(q.get(), 0, out(back)));
        ASSERT_NO_FATAL_FAILURE(send_str(back.get(), "answer"));
        EXPECT_EQ(recv_str(reply.rx.get()), "answer");
        back.reset();
        q.reset();
        Message m;
        EXPECT_EQ(recv_bounded(reply.rx.get(), out(m)), -EPIPE);
}

TEST_F(ListenerTest, HandlerOnListenerDrivenByAnotherThread) {
        /* The handler runs on whichever thread drives: here the pump thread. */
        Listener l;
        Sender ta, tb;
        Rec rec;

        ASSERT_OK(ipcmux_listener_new(warm, "org.ipcmux.test.Handled", out(l)));
        ASSERT_OK(ipcmux_receiver_set_handler(ipcmux_listener_get_receiver(l.get()), rec_handler, &rec));
        ASSERT_NO_FATAL_FAILURE(service.start(warm));
        ASSERT_OK(ipcmux_sender_connect_service(a.get(), "org.ipcmux.test.Handled", nullptr, out(ta)));
        ASSERT_OK(ipcmux_sender_connect_service(b.get(), "org.ipcmux.test.Handled", nullptr, out(tb)));
        for (int i = 0; i < 20; i++) {
                ASSERT_NO_FATAL_FAILURE(send_str(ta.get(), "a-" + std::to_string(i)));
                ASSERT_NO_FATAL_FAILURE(send_str(tb.get(), "b-" + std::to_string(i)));
        }
        uint64_t end = test_now_usec() + 10000000;
        while (rec.n_log() < 40 && test_now_usec() < end)
                usleep(2000);
        ASSERT_EQ(rec.n_log(), 40u);
        std::vector<std::string> from_a, from_b;
        {
                std::lock_guard<std::mutex> g(rec.mu);
                for (size_t i = 0; i < rec.log.size(); i++) {
                        if (rec.log[i][0] == 'a') {
                                from_a.push_back(rec.log[i]);
                                EXPECT_EQ(rec.senders[i], ipcmux_channel_get_unique_name(a.get()));
                        } else {
                                from_b.push_back(rec.log[i]);
                                EXPECT_EQ(rec.senders[i], ipcmux_channel_get_unique_name(b.get()));
                        }
                }
                EXPECT_EQ(rec.threads.count(std::this_thread::get_id()), 0u);
        }
        /* Per-client order. */
        EXPECT_EQ(from_a, numbered("a-", 20));
        EXPECT_EQ(from_b, numbered("b-", 20));
        service.stop();
        expect_clean(rec);
}

TEST_F(ListenerTest, ClosingTheListenerFailsClientSends) {
        Listener l;
        Sender ta, tb;

        ASSERT_OK(ipcmux_listener_new(warm, "org.ipcmux.test.Close", out(l)));
        ASSERT_NO_FATAL_FAILURE(service.start(warm));
        ASSERT_OK(ipcmux_sender_connect_service(a.get(), "org.ipcmux.test.Close", nullptr, out(ta)));
        ASSERT_OK(ipcmux_sender_connect_service(b.get(), "org.ipcmux.test.Close", nullptr, out(tb)));
        ASSERT_NO_FATAL_FAILURE(send_str(ta.get(), "x"));
        ASSERT_NO_FATAL_FAILURE(send_str(tb.get(), "y"));
        (void) recv_from(ipcmux_listener_get_receiver(l.get()), 2);

        l.reset();
        for (ipcmux_sender *tx : {ta.get(), tb.get()}) {
                uint64_t t0 = test_now_usec();
                int r;
                while ((r = ipcmux_sender_send_bytes(tx, "z", 1)) >= 0 && test_now_usec() - t0 < 5000000)
                        usleep(1000);
                EXPECT_EQ(r, -EPIPE);
                EXPECT_LT(test_now_usec() - t0, 1000000u) << "clients must fail within 1 s";
        }
        /* The name is gone with it. */
        Sender tc;
        int r = ipcmux_sender_connect_service(a.get(), "org.ipcmux.test.Close", nullptr, out(tc));
        EXPECT_LT(r, 0);
}

TEST_F(ListenerTest, NameConflictsAndMissingListeners) {
        Listener l, dup, other;
        Sender tx;

        ASSERT_OK(ipcmux_listener_new(warm, "org.ipcmux.test.Dup", out(l)));
        EXPECT_EQ(ipcmux_listener_new(warm, "org.ipcmux.test.Dup", out(dup)), -EEXIST);
        EXPECT_EQ(dup, nullptr);
        /* Owned on the bus by another connection. */
        EXPECT_EQ(ipcmux_listener_new(a.get(), "org.ipcmux.test.Dup", out(other)), -EEXIST);
        EXPECT_EQ(other, nullptr);
        EXPECT_EQ(ipcmux_listener_new(warm, "", out(dup)), -EINVAL);
        EXPECT_EQ(ipcmux_listener_new(warm, nullptr, out(dup)), -EINVAL);

        ASSERT_NO_FATAL_FAILURE(service.start(warm));
        EXPECT_EQ(ipcmux_sender_connect_service(a.get(), ipcmux_channel_get_unique_name(warm), "org.ipcmux.test.Nope",
                                                out(tx)), -ENOENT);
        EXPECT_EQ(ipcmux_sender_connect_service(a.get(), "org.ipcmux.test.Dup", "other name", out(tx)), -ENOENT);
        int r = ipcmux_sender_connect_service(a.get(), "org.ipcmux.test.NoSuchService", nullptr, out(tx));
        EXPECT_LT(r, 0);
        EXPECT_NE(r, -ENOENT) << "-ENOENT means the service is there without that listener";
        EXPECT_EQ(tx, nullptr);

        /* Closing releases the bus name: another connection may take it. */
        l.reset();
        uint64_t end = test_now_usec() + 2000000;
        do
                r = ipcmux_listener_new(a.get(), "org.ipcmux.test.Dup", out(other));
        while (r == -EEXIST && test_now_usec() < end && (usleep(5000), true));
        EXPECT_OK(r);
        other.reset();
}
