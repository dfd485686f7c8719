/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Threads (ipcmux.h: "Every function may be called from any thread"):
 * stress tests meant for a ThreadSanitizer build (./run-tests.sh tsan),
 * also run in the plain and ASan builds.
 *
 *  - a sender and its clones used by many threads at once: per-thread
 *    send order kept (locally and over the bus);
 *  - subchannels created and dropped concurrently;
 *  - a receiver blocked in recv while another thread drops the last sender;
 *  - several threads blocked in recv, each on its own receiver, while one
 *    thread sends to all of them (no lost wake-ups);
 *  - handler delivery from several driving threads while receivers are
 *    dropped (from inside their handlers and from outside);
 *  - one-shot servers bootstrapped concurrently;
 *  - an event loop (sd-event or a custom poll() loop) running in one thread
 *    beside threads blocked in recv/select ("blocking ipcmux calls keep
 *    working beside it"): their wake-ups must not be lost.
 *
 * Handler state is deliberately touched WITHOUT a lock inside the handlers:
 * calls for one receiver never overlap, and the library's lock must order
 * them (TSan reports it otherwise).  The test thread reads that state only
 * after joining the threads that drove the handlers.
 *
 * Sizes keep the binary under ~30 s with TSan.
 */

#include <signal.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <poll.h>

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "test-util.h"

namespace {

/* "t:i" payloads: which thread, which of its sends. */
std::string tagged(int t, int i) {
        return std::to_string(t) + ":" + std::to_string(i);
}
bool parse_tagged(const std::string &s, int *t, int *i) {
        return sscanf(s.c_str(), "%d:%d", t, i) == 2;
}

class ThreadTest : public BusTest {
protected:
        /* A second connection of this process (new_far_channel()): its
         * messages travel through the bus. */
        Channel far;

        void TearDown() override {
                far.reset();
                BusTest::TearDown();
        }

        /*
         * @T threads send @N tagged messages each through their own clone of
         * @tx (dropped when done), while this thread receives on @rx: all
         * arrive, each thread's in order.  Then the original is dropped: EOF.
         */
        void clones_stress(Sender tx, ipcmux_receiver *rx, int T, int N) {
                std::vector<std::thread> threads;
                std::atomic<int> send_errors{0};

                for (int t = 0; t < T; t++) {
                        Sender mine = clone(tx.get());
                        threads.emplace_back([t, N, &send_errors](Sender s) {
                                for (int i = 0; i < N; i++) {
                                        std::string p = tagged(t, i);
                                        if (ipcmux_sender_send_bytes(s.get(), p.data(), p.size()) < 0)
                                                send_errors++;
                                }
                        }, std::move(mine));
                }
                std::vector<int> next(T, 0);
                int total = 0, bad = 0;
                while (total < T * N) {
                        Message m;
                        int r = recv_bounded(rx, out(m), 20000000);
                        ASSERT_GE(r, 0) << "after " << total << " messages: " << strerror(-r);
                        int t = -1, i = -1;
                        ASSERT_TRUE(parse_tagged(msg_str(m.get()), &t, &i)) << msg_str(m.get());
                        ASSERT_TRUE(t >= 0 && t < T);
                        if (i != next[t])
                                bad++;
                        next[t] = i + 1;
                        total++;
                }
                for (auto &th : threads)
                        th.join();
                EXPECT_EQ(send_errors.load(), 0);
                EXPECT_EQ(bad, 0) << "per-thread send order not kept";
                for (int t = 0; t < T; t++)
                        EXPECT_EQ(next[t], N);
                tx.reset();
                Message m;
                EXPECT_EQ(recv_bounded(rx, out(m), 20000000), -EPIPE);
        }
};

} /* namespace */

/* ---- senders shared by threads ----------------------------------------------- */

TEST_F(ThreadTest, ClonesOfOneSenderFromFourThreads) {
        Sub s;
        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
        ASSERT_NO_FATAL_FAILURE(clones_stress(std::move(s.tx), s.rx.get(), 4, 5000));
}

TEST_F(ThreadTest, ClonesOfOneSenderFromFourThreadsOverTheBus) {
        Sender tx;
        Receiver rx;
        Pump far_pump;

        ASSERT_NO_FATAL_FAILURE(new_far_channel(&far));
        ASSERT_NO_FATAL_FAILURE(bridge(warm, far.get(), &tx, &rx));
        /* The sending connection is also read by a thread of its own (credits, Closed). */
        ASSERT_NO_FATAL_FAILURE(far_pump.start(far.get()));
        ASSERT_NO_FATAL_FAILURE(clones_stress(std::move(tx), rx.get(), 4, 5000));
        far_pump.stop();
}

TEST_F(ThreadTest, OneSenderObjectSharedWithoutClones) {
        /* The very same ipcmux_sender pointer in four threads at once. */
        Sub s;
        std::vector<std::thread> threads;
        const int T = 4, N = 2000;

        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
        ipcmux_sender *tx = s.tx.get();
        for (int t = 0; t < T; t++)
                threads.emplace_back([tx, t]() {
                        for (int i = 0; i < N; i++) {
                                std::string p = tagged(t, i);
                                EXPECT_OK(ipcmux_sender_send_bytes(tx, p.data(), p.size()));
                        }
                });
        std::vector<int> next(T, 0);
        for (int k = 0; k < T * N; k++) {
                Message m;
                ASSERT_OK(recv_bounded(s.rx.get(), out(m)));
                int t = -1, i = -1;
                ASSERT_TRUE(parse_tagged(msg_str(m.get()), &t, &i));
                ASSERT_TRUE(t >= 0 && t < T);
                EXPECT_EQ(i, next[t]);
                next[t] = i + 1;
        }
        for (auto &th : threads)
                th.join();
}

/* ---- subchannel life cycles in parallel -------------------------------------- */

TEST_F(ThreadTest, ConcurrentSubchannelCreationAndDrops) {
        const int T = 4, N = 400;
        std::vector<std::thread> threads;
        std::atomic<int> failures{0};

        for (int t = 0; t < T; t++)
                threads.emplace_back([this, t, &failures]() {
                        for (int i = 0; i < N; i++) {
                                ipcmux_channel *ch = nullptr;
                                ipcmux_sender *tx = nullptr, *tx2;
                                ipcmux_receiver *rx = nullptr;
                                ipcmux_message *m = nullptr;
                                bool own = i % 3 == 0;

                                /* Sometimes a channel of its own (same connection). */
                                if (own && ipcmux_channel_new(&ch) < 0) {
                                        failures++;
                                        continue;
                                }
                                if (ipcmux_channel_sub_channel(own ? ch : warm, &tx, &rx) < 0) {
                                        failures++;
                                        ipcmux_channel_unref(ch);
                                        continue;
                                }
                                if (own && i % 2 == 0)
                                        ch = ipcmux_channel_unref(ch);  /* before its subchannel */
                                tx2 = ipcmux_sender_ref(tx);
                                if (ipcmux_sender_send_bytes(tx2, "x", 1) < 0)
                                        failures++;
                                switch ((i + t) % 3) {
                                case 0: /* receiver first: the sender sees -EPIPE */
                                        ipcmux_receiver_unref(rx);
                                        if (ipcmux_sender_send_bytes(tx, "y", 1) != -EPIPE)
                                                failures++;
                                        ipcmux_sender_unref(tx2);
                                        ipcmux_sender_unref(tx);
                                        break;
                                case 1: /* senders first: message, then EOF */
                                        ipcmux_sender_unref(tx);
                                        ipcmux_sender_unref(tx2);
                                        if (recv_bounded(rx, &m) < 0)
                                                failures++;
                                        m = ipcmux_message_unref(m);
                                        if (recv_bounded(rx, &m) != -EPIPE)
                                                failures++;
                                        ipcmux_receiver_unref(rx);
                                        break;
                                default: /* receive, then drop both with a message queued */
                                        if (recv_bounded(rx, &m) < 0)
                                                failures++;
                                        m = ipcmux_message_unref(m);
                                        (void) ipcmux_sender_send_bytes(tx, "z", 1);
                                        ipcmux_sender_unref(tx2);
                                        ipcmux_receiver_unref(rx);
                                        ipcmux_sender_unref(tx);
                                        break;
                                }
                                ipcmux_channel_unref(ch);
                        }
                });
        for (auto &th : threads)
                th.join();
        EXPECT_EQ(failures.load(), 0);
}

TEST_F(ThreadTest, SendersAndReceiversDroppedOnOtherThreads) {
        /* Made on one thread, used on a second, dropped on a third. */
        const int N = 200;
        std::vector<Sub> subs(N);
        for (auto &s : subs)
                ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
        std::thread sender([&subs]() {
                for (auto &s : subs)
                        EXPECT_OK(ipcmux_sender_send_bytes(s.tx.get(), "m", 1));
        });
        sender.join();
        std::thread dropper([&subs]() {
                for (auto &s : subs)
                        s.tx.reset();
        });
        std::thread receiver([&subs]() {
                for (auto &s : subs) {
                        Message m;
                        EXPECT_OK(recv_bounded(s.rx.get(), out(m)));
                        m.reset();
                        EXPECT_EQ(recv_bounded(s.rx.get(), out(m)), -EPIPE);
                }
        });
        dropper.join();
        receiver.join();
        std::thread rx_dropper([&subs]() {
                for (auto &s : subs)
                        s.rx.reset();
        });
        rx_dropper.join();
}

TEST_F(ThreadTest, ReceiverBlockedWhileAnotherThreadDropsLastSender) {
        for (int i = 0; i < 200; i++) {
                Sub s;
                ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
                int result = 1;
                ipcmux_receiver *rx = s.rx.get();
                std::thread blocked([rx, &result]() {
                        Message m;
                        result = recv_bounded(rx, out(m), 10000000);
                });
                if (i % 2)
                        usleep(i % 7 * 100);
                s.tx.reset();
                blocked.join();
                ASSERT_EQ(result, -EPIPE) << "iteration " << i;
        }
}

TEST_F(ThreadTest, ReceiverBlockedWhileClonesDroppedOnManyThreads) {
        for (int i = 0; i < 50; i++) {
                Sub s;
                ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
                ipcmux_receiver *rx = s.rx.get();
                int got = 0, end = 1;
                std::thread blocked([rx, &got, &end]() {
                        Message m;
                        int r;
                        while ((r = recv_bounded(rx, out(m), 10000000)) >= 0)
                                got++;
                        end = r;
                });
                std::vector<std::thread> droppers;
                for (int t = 0; t < 3; t++)
                        droppers.emplace_back([](Sender c) {
                                EXPECT_OK(ipcmux_sender_send_bytes(c.get(), "c", 1));
                        }, clone(s.tx.get()));
                s.tx.reset();
                for (auto &d : droppers)
                        d.join();
                blocked.join();
                EXPECT_EQ(got, 3);
                ASSERT_EQ(end, -EPIPE) << "iteration " << i;
        }
}

TEST_F(ThreadTest, ReceiverBlockedWhileRemoteSenderDropped) {
        /* The last sender is on another connection: the EOF comes over the bus. */
        ASSERT_NO_FATAL_FAILURE(new_far_channel(&far));
        for (int i = 0; i < 30; i++) {
                Sender tx;
                Receiver rx;
                ASSERT_NO_FATAL_FAILURE(bridge(warm, far.get(), &tx, &rx));
                int result = 1;
                ipcmux_receiver *r = rx.get();
                std::thread blocked([r, &result]() {
                        Message m;
                        result = recv_bounded(r, out(m), 10000000);
                });
                std::thread dropper([&tx]() { tx.reset(); });
                dropper.join();
                blocked.join();
                ASSERT_EQ(result, -EPIPE) << "iteration " << i;
        }
}

/* ---- many waiters -------------------------------------------------------------- */

namespace {

/* @R threads each block in recv on their own receiver; one thread sends
 * @N messages to each in turn, then drops the senders. */
void fan_out(std::vector<Sender> &txs, std::vector<Receiver> &rxs, int N) {
        const size_t R = rxs.size();
        std::vector<int> got(R, 0), bad(R, 0), end(R, 1);
        std::vector<std::thread> receivers;

        for (size_t k = 0; k < R; k++)
                receivers.emplace_back([&, k]() {
                        int r;
                        for (;;) {
                                Message m;
                                r = recv_bounded(rxs[k].get(), out(m), 10000000);
                                if (r < 0)
                                        break;
                                if (msg_str(m.get()) != std::to_string(got[k]))
                                        bad[k]++;
                                got[k]++;
                        }
                        end[k] = r;
                });
        std::thread sender([&]() {
                for (int i = 0; i < N; i++) {
                        for (size_t k = 0; k < R; k++) {
                                std::string p = std::to_string(i);
                                EXPECT_OK(ipcmux_sender_send_bytes(txs[k].get(), p.data(), p.size()));
                        }
                        /* Now and then let the receivers drain and block again. */
                        if (i % 64 == 0)
                                usleep(200);
                }
                for (auto &t : txs)
                        t.reset();
        });
        sender.join();
        for (auto &t : receivers)
                t.join();
        for (size_t k = 0; k < R; k++) {
                EXPECT_EQ(got[k], N) << "receiver " << k << " (a lost wake-up times out with fewer)";
                EXPECT_EQ(bad[k], 0) << "receiver " << k;
                EXPECT_EQ(end[k], -EPIPE) << "receiver " << k << ": " << strerror(-end[k]);
        }
}

} /* namespace */

TEST_F(ThreadTest, FourBlockedReceiversOneSenderThread) {
        std::vector<Sender> txs(4);
        std::vector<Receiver> rxs(4);
        for (int k = 0; k < 4; k++)
                ASSERT_OK(ipcmux_channel_sub_channel(warm, out(txs[k]), out(rxs[k])));
        ASSERT_NO_FATAL_FAILURE(fan_out(txs, rxs, 2000));
}

TEST_F(ThreadTest, FourBlockedReceiversOneSenderThreadOverTheBus) {
        /* Input arrives on the socket: whichever receiver thread polls must
         * hand the others their messages. */
        std::vector<Sender> txs(4);
        std::vector<Receiver> rxs(4);
        Pump far_pump;

        ASSERT_NO_FATAL_FAILURE(new_far_channel(&far));
        for (int k = 0; k < 4; k++)
                ASSERT_NO_FATAL_FAILURE(bridge(warm, far.get(), &txs[k], &rxs[k]));
        ASSERT_NO_FATAL_FAILURE(far_pump.start(far.get()));
        ASSERT_NO_FATAL_FAILURE(fan_out(txs, rxs, 1000));
        far_pump.stop();
}

TEST_F(ThreadTest, ReceiverHandedFromThreadToThread) {
        /* One thread at a time, but not always the same one. */
        Sub s;
        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
        std::thread sender([&s]() {
                for (int i = 0; i < 1000; i++) {
                        std::string p = std::to_string(i);
                        EXPECT_OK(ipcmux_sender_send_bytes(s.tx.get(), p.data(), p.size()));
                }
                s.tx.reset();
        });
        int next = 0;
        for (int round = 0; round < 10; round++) {
                std::thread t([&s, &next]() {
                        for (int i = 0; i < 100; i++) {
                                Message m;
                                ASSERT_OK(recv_bounded(s.rx.get(), out(m)));
                                EXPECT_EQ(msg_str(m.get()), std::to_string(next));
                                next++;
                        }
                });
                t.join();
        }
        sender.join();
        Message m;
        EXPECT_EQ(recv_bounded(s.rx.get(), out(m)), -EPIPE);
}

/* ---- handlers under threads ------------------------------------------------------ */

namespace {

constexpr int kSenders = 2;

/* Touched by handler calls only (no lock: the library orders the calls). */
struct HState {
        int last[kSenders];
        int count = 0;
        int bad_order = 0;
        int bad_call = 0;
        int eofs = 0;
        int after_end = 0;
        bool ended = false;
        int drop_inside_at = 0;         /* drop the receiver inside call #n (0: never) */
        std::atomic<int> in_call{0};
        std::atomic<int> overlaps{0};
        std::atomic<int> progress{0};
        std::atomic<bool> done{false};
        HState() {
                for (int &l : last)
                        l = -1;
        }
};

void stress_handler(ipcmux_receiver *r, ipcmux_message *m, int error, void *userdata) {
        HState *st = (HState *) userdata;

        if (st->in_call.fetch_add(1) != 0)
                st->overlaps++;
        if (st->ended)
                st->after_end++;
        if (m && error == 0) {
                int t = -1, i = -1;
                if (!parse_tagged(msg_str(m), &t, &i) || t < 0 || t >= kSenders)
                        st->bad_call++;
                else {
                        if (i != st->last[t] + 1)
                                st->bad_order++;
                        st->last[t] = i;
                }
                st->count++;
                st->progress++;
                if (st->drop_inside_at && st->count == st->drop_inside_at) {
                        ipcmux_receiver_unref(r);
                        st->ended = true;
                        st->done = true;
                }
        } else if (!m && error == -EPIPE) {
                st->eofs++;
                st->ended = true;
                st->done = true;
        } else
                st->bad_call++;
        st->in_call.fetch_sub(1);
}

} /* namespace */

TEST_F(ThreadTest, ConcurrentHandlerDeliveryAndDrops) {
        const int R = 8, N = 800, D = 3;
        std::vector<Sub> subs(R);
        std::vector<HState> st(R);
        std::vector<ipcmux_receiver *> raw(R);
        std::vector<Sub> pumps(D);
        std::atomic<bool> stop{false};

        for (int k = 0; k < R; k++) {
                ASSERT_NO_FATAL_FAILURE(new_sub(warm, &subs[k]));
                raw[k] = subs[k].rx.release();
                if (k % 4 == 3)
                        st[k].drop_inside_at = 100;     /* dropped from inside its handler */
                ASSERT_OK(ipcmux_receiver_set_handler(raw[k], stress_handler, &st[k]));
        }
        /* Several threads drive the connection (blocking calls on their pumps). */
        std::vector<std::thread> drivers;
        for (int d = 0; d < D; d++) {
                ASSERT_NO_FATAL_FAILURE(new_sub(warm, &pumps[d]));
                ipcmux_receiver *prx = pumps[d].rx.get();
                drivers.emplace_back([prx, &stop]() {
                        while (!stop.load()) {
                                ipcmux_message *m = nullptr;
                                (void) ipcmux_receiver_try_recv_timeout(prx, 5000, &m);
                                ipcmux_message_unref(m);
                        }
                });
        }
        std::vector<std::thread> senders;
        std::atomic<int> send_errors{0};
        for (int t = 0; t < kSenders; t++) {
                std::vector<ipcmux_sender *> mine;
                for (auto &s : subs)
                        mine.push_back(ipcmux_sender_ref(s.tx.get()));
                senders.emplace_back([t, N, mine, &send_errors]() {
                        for (int i = 0; i < N; i++)
                                for (ipcmux_sender *s : mine) {
                                        std::string p = tagged(t, i);
                                        int r = ipcmux_sender_send_bytes(s, p.data(), p.size());
                                        if (r < 0 && r != -EPIPE)      /* -EPIPE: receiver dropped */
                                                send_errors++;
                                }
                        for (ipcmux_sender *s : mine)
                                ipcmux_sender_unref(s);
                });
        }
        /* Receivers k % 4 == 1 are dropped from this thread mid-stream,
         * possibly while a driver thread runs their handler. */
        uint64_t end = test_now_usec() + 30000000;
        for (int k = 1; k < R; k += 4) {
                while (st[k].progress.load() < 150 && test_now_usec() < end)
                        usleep(500);
                ipcmux_receiver_unref(raw[k]);
                raw[k] = nullptr;
        }
        for (auto &t : senders)
                t.join();
        for (auto &s : subs)
                s.tx.reset();
        /* Every receiver still there sees its EOF. */
        for (int k = 0; k < R; k++)
                if (raw[k] && k % 4 != 3)
                        while (!st[k].done.load() && test_now_usec() < end)
                                usleep(1000);
        stop = true;
        for (auto &p : pumps)
                (void) ipcmux_sender_send_bytes(p.tx.get(), "", 0);
        for (auto &t : drivers)
                t.join();

        for (int k = 0; k < R; k++) {
                SCOPED_TRACE("receiver " + std::to_string(k));
                EXPECT_EQ(st[k].overlaps.load(), 0);
                EXPECT_EQ(st[k].bad_call, 0);
                EXPECT_EQ(st[k].bad_order, 0);
                EXPECT_EQ(st[k].after_end, 0);
                if (k % 4 == 3) {
                        EXPECT_EQ(st[k].count, 100);
                        EXPECT_EQ(st[k].eofs, 0);
                } else if (k % 4 == 1) {
                        EXPECT_GE(st[k].count, 150);
                        EXPECT_LE(st[k].eofs, 1);
                } else {
                        EXPECT_EQ(st[k].count, kSenders * N);
                        EXPECT_EQ(st[k].eofs, 1);
                }
        }
        for (int k = 0; k < R; k++)
                if (raw[k] && k % 4 != 3)
                        ipcmux_receiver_unref(raw[k]);
        pumps.clear();
}

TEST_F(ThreadTest, HandlerSetAndUnsetWhileMessagesFlow) {
        /* set_handler(h) / set_handler(NULL) from this thread while another
         * drives and a third sends: every message is delivered exactly
         * once, to the handler or to recv, each side in send order.  (A
         * handler call may still be running on the driver after
         * set_handler(NULL) returns, so the two sides interleave.) */
        const int N = 3000;
        Sub s, pump;
        std::atomic<bool> stop{false};
        struct Seen {
                std::vector<char> by_handler;
                int last = -1, bad_order = 0, bad_call = 0;
                std::atomic<int> n{0}, in_call{0}, overlaps{0};
        } seen;
        seen.by_handler.assign(N, 0);
        auto handler = [](ipcmux_receiver *, ipcmux_message *m, int error, void *userdata) {
                Seen *sn = (Seen *) userdata;
                int t = -1, i = -1;

                if (sn->in_call.fetch_add(1) != 0)
                        sn->overlaps++;
                if (!m || error != 0 || !parse_tagged(msg_str(m), &t, &i) || i < 0 || i >= N)
                        sn->bad_call++;
                else {
                        if (i <= sn->last)
                                sn->bad_order++;
                        sn->last = i;
                        sn->by_handler[i]++;
                        sn->n++;
                }
                sn->in_call.fetch_sub(1);
        };

        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &pump));
        ipcmux_receiver *prx = pump.rx.get();
        std::thread driver([prx, &stop]() {
                while (!stop.load()) {
                        ipcmux_message *m = nullptr;
                        (void) ipcmux_receiver_try_recv_timeout(prx, 2000, &m);
                        ipcmux_message_unref(m);
                }
        });
        std::thread sender([&s]() {
                for (int i = 0; i < N; i++) {
                        std::string p = tagged(0, i);
                        EXPECT_OK(ipcmux_sender_send_bytes(s.tx.get(), p.data(), p.size()));
                }
        });
        std::vector<char> by_recv(N, 0);
        int received = 0, last = -1, bad_order = 0;
        uint64_t end = test_now_usec() + 20000000;
        while (seen.n.load() + received < N && test_now_usec() < end) {
                ASSERT_OK(ipcmux_receiver_set_handler(s.rx.get(), handler, &seen));
                usleep(200);
                ASSERT_OK(ipcmux_receiver_set_handler(s.rx.get(), nullptr, nullptr));
                Message m;
                while (ipcmux_receiver_try_recv(s.rx.get(), out(m)) >= 0) {
                        int t = -1, i = -1;
                        ASSERT_TRUE(parse_tagged(msg_str(m.get()), &t, &i) && i >= 0 && i < N);
                        if (i <= last)
                                bad_order++;
                        last = i;
                        by_recv[i]++;
                        received++;
                }
        }
        sender.join();
        stop = true;
        (void) ipcmux_sender_send_bytes(pump.tx.get(), "", 0);
        driver.join();
        EXPECT_EQ(seen.n.load() + received, N);
        EXPECT_EQ(bad_order, 0) << "recv out of order";
        EXPECT_EQ(seen.bad_order, 0) << "handler calls out of order";
        EXPECT_EQ(seen.bad_call, 0);
        EXPECT_EQ(seen.overlaps.load(), 0);
        int wrong = 0;
        for (int i = 0; i < N; i++)
                wrong += seen.by_handler[i] + by_recv[i] != 1;
        EXPECT_EQ(wrong, 0) << "messages lost or delivered twice";
}

TEST_F(ThreadTest, EventLoopThreadBesideBlockingThreads) {
        /* One thread runs an attached sd-event loop (handlers), another
         * blocks in recv, senders are local threads and a second
         * connection: all of them dispatch the same connection. */
        const int N = 1500;
        sd_event *e = nullptr;
        Sub handled, plain;
        Sender remote_tx;
        Receiver remote_rx;
        HState st;
        std::atomic<bool> stop{false};
        Pump far_pump;

        /* The loop fd lives as long as the connection: not a leak. */
        ASSERT_GE(ipcmux_channel_get_fd(warm), 0);
        fds_before = test_count_fds();
        ASSERT_NO_FATAL_FAILURE(new_far_channel(&far));
        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &handled));
        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &plain));
        ASSERT_NO_FATAL_FAILURE(bridge(warm, far.get(), &remote_tx, &remote_rx));
        ASSERT_OK(ipcmux_receiver_set_handler(handled.rx.get(), stress_handler, &st));
        ASSERT_NO_FATAL_FAILURE(far_pump.start(far.get()));

        std::thread loop([&]() {
                ASSERT_OK(sd_event_new(&e));
                ASSERT_OK(ipcmux_channel_attach_event(warm, e, 0));
                while (!stop.load())
                        if (sd_event_run(e, 100000) < 0)
                                break;
                EXPECT_OK(ipcmux_channel_detach_event(warm));
                e = sd_event_unref(e);
        });
        struct Side {
                ipcmux_receiver *rx;
                int got = 0, bad = 0, end = 1;
                bool done = false;
        } sides[2] = {{plain.rx.get()}, {remote_rx.get()}};
        int stalls = 0;         /* selects that slept > 2 s although work kept coming */
        std::thread blocked([&]() {
                for (;;) {
                        ipcmux_receiver *rxs[2];
                        Side *which[2];
                        size_t n = 0, idx = 0;
                        for (auto &sd : sides)
                                if (!sd.done) {
                                        rxs[n] = sd.rx;
                                        which[n++] = &sd;
                                }
                        if (n == 0)
                                return;
                        uint64_t t0 = test_now_usec();
                        int r = ipcmux_receiver_select(rxs, n, 10000000, &idx);
                        if (test_now_usec() - t0 > 2000000)
                                stalls++;
                        if (r < 0) {
                                ADD_FAILURE() << "select: " << strerror(-r);
                                return;
                        }
                        Side *sd = which[idx];
                        Message m;
                        r = ipcmux_receiver_try_recv(sd->rx, out(m));
                        if (r >= 0)
                                sd->bad += msg_str(m.get()) != std::to_string(sd->got++);
                        else {
                                sd->end = r;
                                sd->done = true;
                        }
                }
        });
        std::thread local_sender([&]() {
                for (int i = 0; i < N; i++) {
                        std::string p = std::to_string(i);
                        EXPECT_OK(ipcmux_sender_send_bytes(plain.tx.get(), p.data(), p.size()));
                        p = tagged(0, i);
                        EXPECT_OK(ipcmux_sender_send_bytes(handled.tx.get(), p.data(), p.size()));
                }
                plain.tx.reset();
        });
        std::thread remote_sender([&]() {
                for (int i = 0; i < N; i++) {
                        std::string p = std::to_string(i);
                        EXPECT_OK(ipcmux_sender_send_bytes(remote_tx.get(), p.data(), p.size()));
                        p = tagged(1, i);
                        EXPECT_OK(ipcmux_sender_send_bytes(handled.tx.get(), p.data(), p.size()));
                }
                remote_tx.reset();
        });
        local_sender.join();
        remote_sender.join();
        handled.tx.reset();
        blocked.join();
        uint64_t end = test_now_usec() + 20000000;
        while (!st.done.load() && test_now_usec() < end)
                usleep(1000);
        stop = true;
        loop.join();
        far_pump.stop();

        EXPECT_EQ(stalls, 0) << "lost wake-up: select slept while its receivers became ready";
        for (auto &sd : sides) {
                EXPECT_EQ(sd.got, N);
                EXPECT_EQ(sd.bad, 0);
                EXPECT_EQ(sd.end, -EPIPE);
        }
        EXPECT_EQ(st.count, 2 * N);
        EXPECT_EQ(st.eofs, 1);
        EXPECT_EQ(st.bad_order, 0);
        EXPECT_EQ(st.bad_call, 0);
        EXPECT_EQ(st.after_end, 0);
        EXPECT_EQ(st.overlaps.load(), 0);
}

namespace {

/* A thread driving @ch as an application's event loop would: sd-event
 * (attach_event + sd_event_run) or a custom poll() loop over the quartet. */
class LoopThread {
public:
        enum Kind { SD_EVENT, CUSTOM };
        ~LoopThread() { stop(); }
        void start(ipcmux_channel *ch, Kind kind) {
                ch_ = ch;
                stop_ = false;
                thread_ = std::thread([this, kind]() {
                        if (kind == SD_EVENT)
                                run_event();
                        else
                                run_custom();
                });
                /* Attached before the test goes on. */
                std::unique_lock<std::mutex> g(mu_);
                cv_.wait(g, [this] { return attached_; });
        }
        void stop() {
                if (!thread_.joinable())
                        return;
                stop_ = true;
                thread_.join();
        }

private:
        void attached(int r) {
                EXPECT_OK(r);
                std::lock_guard<std::mutex> g(mu_);
                attached_ = true;
                cv_.notify_all();
        }
        void run_event() {
                sd_event *e = nullptr;
                int r = sd_event_new(&e);
                if (r >= 0)
                        r = ipcmux_channel_attach_event(ch_, e, 0);
                attached(r);
                if (r < 0) {
                        sd_event_unref(e);
                        return;
                }
                while (!stop_.load())
                        if (sd_event_run(e, 20000) < 0)
                                break;
                EXPECT_OK(ipcmux_channel_detach_event(ch_));
                sd_event_unref(e);
        }
        void run_custom() {
                int r = ipcmux_channel_attach_loop(ch_);
                int fd = ipcmux_channel_get_fd(ch_);
                attached(r < 0 ? r : fd);
                if (r < 0 || fd < 0)
                        return;
                while (!stop_.load()) {
                        uint64_t until = UINT64_MAX, now = test_now_usec();
                        int events = ipcmux_channel_get_events(ch_), ms = 20;
                        if (events < 0 || ipcmux_channel_get_timeout(ch_, &until) < 0)
                                break;
                        if (until <= now)
                                ms = 0;
                        else if (until - now < 20000)
                                ms = (int) ((until - now + 999) / 1000);
                        struct pollfd p = { .fd = fd, .events = (short) events, .revents = 0 };
                        (void) poll(&p, 1, ms);
                        while (ipcmux_channel_process(ch_) > 0)
                                ;
                }
                EXPECT_OK(ipcmux_channel_detach_loop(ch_));
        }

        ipcmux_channel *ch_ = nullptr;
        std::thread thread_;
        std::atomic<bool> stop_{false};
        std::mutex mu_;
        std::condition_variable cv_;
        bool attached_ = false;
};

} /* namespace */

/*
 * ipcmux.h: "Blocking ipcmux calls keep working beside [an attached loop]".
 * A loop runs in one thread; this thread blocks in recv; a third thread
 * sends.  Each recv must return promptly: a wake-up meant for the blocked
 * thread must not be consumed by the loop's ipcmux_channel_process().
 */
class BesideLoopTest : public ThreadTest, public ::testing::WithParamInterface<LoopThread::Kind> {
protected:
        void SetUp() override {
                ThreadTest::SetUp();
                if (HasFatalFailure())
                        return;
                /* The loop fd lives as long as the connection: not a leak. */
                ASSERT_GE(ipcmux_channel_get_fd(warm), 0);
                fds_before = test_count_fds();
        }

        /* @n rounds: another thread makes receiver #i ready after a short
         * delay (@make_ready); recv must see it within 1 s.  A lost wake-up
         * shows as a recv that sleeps to its 1.5 s bound and then finds
         * the message anyway. */
        void rounds(int n, const std::function<void(int)> &make_ready, const std::function<ipcmux_receiver *(int)> &rx_of,
                    bool expect_eof) {
                int slow = 0, wrong = 0;
                for (int i = 0; i < n; i++) {
                        std::thread t([&make_ready, i]() {
                                usleep(2000);
                                make_ready(i);
                        });
                        Message m;
                        uint64_t t0 = test_now_usec();
                        int r = recv_bounded(rx_of(i), out(m), 1500000);
                        uint64_t dt = test_now_usec() - t0;
                        t.join();
                        if (dt > 1000000)
                                slow++;
                        if (expect_eof ? r != -EPIPE : r < 0)
                                wrong++;
                        if (slow >= 2)
                                break;  /* proven; spare the time */
                }
                EXPECT_EQ(slow, 0) << "recvs slept > 1 s although woken (lost wake-up)";
                EXPECT_EQ(wrong, 0) << "of " << n << " recvs returned the wrong result";
        }
};

TEST_P(BesideLoopTest, BlockedRecvWokenByLocalSend) {
        LoopThread loop;
        const int N = 60;
        std::vector<Sub> subs(N);
        for (auto &s : subs)
                ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
        ASSERT_NO_FATAL_FAILURE(loop.start(warm, GetParam()));
        rounds(N, [&](int i) { (void) ipcmux_sender_send_bytes(subs[i].tx.get(), "x", 1); },
               [&](int i) { return subs[i].rx.get(); }, false);
        loop.stop();
}

TEST_P(BesideLoopTest, BlockedRecvWokenByLocalDisconnect) {
        LoopThread loop;
        const int N = 60;
        std::vector<Sub> subs(N);
        for (auto &s : subs)
                ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
        ASSERT_NO_FATAL_FAILURE(loop.start(warm, GetParam()));
        rounds(N, [&](int i) { subs[i].tx.reset(); }, [&](int i) { return subs[i].rx.get(); }, true);
        loop.stop();
}

TEST_P(BesideLoopTest, BlockedRecvWokenByMessageOverTheBus) {
        LoopThread loop;
        Pump far_pump;
        const int N = 60;
        std::vector<Sender> txs(N);
        std::vector<Receiver> rxs(N);

        ASSERT_NO_FATAL_FAILURE(new_far_channel(&far));
        for (int i = 0; i < N; i++)
                ASSERT_NO_FATAL_FAILURE(bridge(warm, far.get(), &txs[i], &rxs[i]));
        ASSERT_NO_FATAL_FAILURE(far_pump.start(far.get()));
        ASSERT_NO_FATAL_FAILURE(loop.start(warm, GetParam()));
        rounds(N, [&](int i) { (void) ipcmux_sender_send_bytes(txs[i].get(), "x", 1); },
               [&](int i) { return rxs[i].get(); }, false);
        loop.stop();
        far_pump.stop();
        txs.clear();
        rxs.clear();
}

INSTANTIATE_TEST_SUITE_P(Loops, BesideLoopTest, ::testing::Values(LoopThread::SD_EVENT, LoopThread::CUSTOM),
                         [](const ::testing::TestParamInfo<LoopThread::Kind> &info) {
                                 return std::string(info.param == LoopThread::SD_EVENT ? "SdEvent" : "Custom");
                         });

/* ---- one-shot servers in parallel ---------------------------------------------- */

/*
 * One thread waits in a blocking call (RequestName, inside
 * ipcmux_server_new_for_channel()) and polls the connection; another keeps
 * dispatching it (try_recv with no timeout).  When the dispatching thread
 * reads the reply, the waiting one must learn of it: its socket has nothing
 * new to wake it (a pump thread once kept a last unref waiting 10 s so).
 */
TEST_F(ThreadTest, ReplyReadByAnotherThreadWakesTheWaiter) {
        Sub pump;
        std::atomic<bool> stop{false};
        std::atomic<uint64_t> round_start{0};

        ASSERT_NO_FATAL_FAILURE(new_far_channel(&far));
        ASSERT_NO_FATAL_FAILURE(new_sub(far.get(), &pump));
        std::thread dispatcher([&]() {
                while (!stop.load()) {
                        ipcmux_message *m = nullptr;
                        (void) ipcmux_receiver_try_recv_timeout(pump.rx.get(), 0, &m);
                        ipcmux_message_unref(m);
                        /* A waiter that slept on would sleep for ever (its
                         * call has no timeout): after 2 s, a local send
                         * wakes the connection, and the round fails. */
                        uint64_t t0 = round_start.load();
                        if (t0 && test_now_usec() - t0 > 2000000u) {
                                (void) ipcmux_sender_send_bytes(pump.tx.get(), "wake", 4);
                                round_start = 0;
                        }
                }
        });
        for (int i = 0; i < 300; i++) {
                Server srv;
                char *name = nullptr;
                uint64_t t0 = test_now_usec();
                round_start = t0;
                int r = ipcmux_server_new_for_channel(far.get(), out(srv), &name);
                round_start = 0;
                free(name);
                EXPECT_OK(r);
                uint64_t took = test_now_usec() - t0;
                EXPECT_LT(took, 2000000u) << "round " << i << ": the waiter slept on";
                if (r < 0 || took >= 2000000u)
                        break;
        }
        stop = true;
        dispatcher.join();
}

namespace {

/* A thread blocked in recv on a local subchannel of a channel: it polls
 * that channel's connection, for input only, until stop(). */
class Poller {
public:
        ~Poller() { (void) stop(); }
        void start(ipcmux_channel *ch) {
                ASSERT_NO_FATAL_FAILURE(new_sub(ch, &sub_));
                thread_ = std::thread([this]() {
                        Message m;
                        end_ = recv_bounded(sub_.rx.get(), out(m), 30000000);
                });
                usleep(100000);         /* let it settle in ppoll() */
        }
        /* Wakes it with a local send; what its recv returned. */
        int stop() {
                if (thread_.joinable()) {
                        (void) ipcmux_sender_send_bytes(sub_.tx.get(), "stop", 4);
                        thread_.join();
                }
                return end_;
        }

private:
        Sub sub_;
        std::thread thread_;
        std::atomic<int> end_{1};
};

/* The test's dbus-daemon stopped (SIGSTOP) until resume() or scope exit. */
class BusPause {
public:
        ~BusPause() { resume(); }
        void stop() {
                ASSERT_GT(pid_, 0);
                ASSERT_EQ(kill(pid_, SIGSTOP), 0);
                stopped_ = true;
        }
        void resume() {
                if (stopped_)
                        (void) kill(pid_, SIGCONT);
                stopped_ = false;
        }

private:
        pid_t pid_ = test_bus_pid(PrivateBus::bus);
        bool stopped_ = false;
};

} /* namespace */

/*
 * One thread blocks in recv on a local subchannel: it polls the connection,
 * for input only (nothing to write when it started).  Meanwhile this thread
 * sends to another connection while the bus is stopped (SIGSTOP): the
 * socket fills (its send buffer shrunk to 64 KiB; sd-bus makes it 8 MiB),
 * and the rest waits in sd-bus's write queue and ipcmux's backlog.  Sends
 * never block, and this thread then only waits on the far side.  When the
 * bus runs again, only a poll for POLLOUT notices the socket has room: the
 * polling thread must have been told to look again, or the rest stays
 * queued.  (10 x 64 KiB stays below the 1 MiB and 256 calls after which
 * the far side acks; an Ack would wake the poller anyway.)
 */
TEST_F(ThreadTest, OutputQueuedWhileAnotherThreadPollsIsWritten) {
        constexpr int K = 10;
        const std::string big(64 << 10, 'q');
        Channel near;
        Sender tx;
        Receiver rx;
        BusPause pause;
        Poller poller;

        {
                sd_bus *bus = nullptr;
                int sndbuf = 64 << 10;

                ASSERT_OK(test_bus_connect(PrivateBus::bus, &bus));
                std::unique_ptr<sd_bus, decltype(&sd_bus_unref)> bus_owner(bus, sd_bus_unref);
                ASSERT_EQ(setsockopt(sd_bus_get_fd(bus), SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf)), 0)
                        << strerror(errno);
                ASSERT_OK(ipcmux_channel_new_for_bus(bus, out(near)));
        }
        ASSERT_NO_FATAL_FAILURE(new_far_channel(&far));
        ASSERT_NO_FATAL_FAILURE(bridge(far.get(), near.get(), &tx, &rx));
        ASSERT_NO_FATAL_FAILURE(poller.start(near.get()));

        ASSERT_NO_FATAL_FAILURE(pause.stop());
        uint64_t queued = 0;
        for (int i = 0; i < K; i++)
                EXPECT_OK(ipcmux_sender_send_bytes(tx.get(), big.data(), big.size()));
        EXPECT_OK(ipcmux_sender_get_queued(tx.get(), &queued, nullptr));
        EXPECT_GT(queued, 0u) << "the socket took everything: nothing tested";
        pause.resume();

        /* Only the far connection from here on (it acks none of this). */
        for (int got = 0; got < K; got++) {
                Message m;
                int r = recv_bounded(rx.get(), out(m), 5000000);
                if (r < 0) {
                        ADD_FAILURE() << "message " << got << " of " << K << ": " << strerror(-r)
                                      << " (left queued: nobody polled for POLLOUT)";
                        break;
                }
                EXPECT_EQ(msg_str(m.get()).size(), big.size());
        }

        int end = poller.stop();
        EXPECT_GE(end, 0) << strerror(-end);
}

/*
 * The call's own timeout must end a wait while another thread polls: a last
 * unref waits for a round trip to the broker (conn_sync_bus()), bounded by
 * the sd-bus timeout of that call, and the thread polling for its own recv
 * (30 s) must be told to wake up for it.  With the bus stopped nothing
 * else arrives to wake it.
 */
TEST_F(ThreadTest, CallTimeoutEndsTheWaitWhileAnotherThreadPolls) {
        Channel near;
        Sender tx;
        Receiver rx;
        BusPause pause;
        Poller poller;

        ASSERT_NO_FATAL_FAILURE(new_far_channel(&near));
        ASSERT_NO_FATAL_FAILURE(new_far_channel(&far));
        ASSERT_NO_FATAL_FAILURE(bridge(far.get(), near.get(), &tx, &rx));
        ASSERT_NO_FATAL_FAILURE(poller.start(near.get()));

        ASSERT_NO_FATAL_FAILURE(pause.stop());
        EXPECT_OK(ipcmux_sender_send_bytes(tx.get(), "x", 1));
        uint64_t t0 = test_now_usec();
        tx.reset();             /* waits for the broker: at most its 10 s */
        uint64_t took = test_now_usec() - t0;
        pause.resume();
        EXPECT_LT(took, 20000000u) << "the unref waited for the other thread's poll to end";
        EXPECT_GE(took, 9000000u) << "the unref did not wait for the broker";

        Message m;
        EXPECT_OK(recv_bounded(rx.get(), out(m), 10000000));
        EXPECT_EQ(msg_str(m.get()), "x");
        Message end;
        EXPECT_EQ(recv_bounded(rx.get(), out(end), 10000000), -EPIPE);

        int r = poller.stop();
        EXPECT_GE(r, 0) << strerror(-r);
}

TEST_F(ThreadTest, ConcurrentOneShotServers) {
        const int T = 4, N = 25;
        std::vector<std::thread> threads;
        std::atomic<int> failures{0};

        ASSERT_NO_FATAL_FAILURE(new_far_channel(&far));
        for (int t = 0; t < T; t++)
                threads.emplace_back([this, t, &failures]() {
                        for (int i = 0; i < N; i++) {
                                Sender tx;
                                Receiver rx;
                                bridge(warm, far.get(), &tx, &rx);
                                if (!tx || !rx) {
                                        failures++;
                                        continue;
                                }
                                std::string p = tagged(t, i);
                                if (ipcmux_sender_send_bytes(tx.get(), p.data(), p.size()) < 0)
                                        failures++;
                                tx.reset();
                                Message m;
                                int r = recv_bounded(rx.get(), out(m));
                                if (r < 0 || msg_str(m.get()) != p) {
                                        ADD_FAILURE() << "thread " << t << " #" << i << ": recv " << r << " "
                                                      << (m ? msg_str(m.get()) : "") << " != " << p;
                                        failures++;
                                }
                                m.reset();
                                r = recv_bounded(rx.get(), out(m));
                                if (r != -EPIPE) {
                                        ADD_FAILURE() << "thread " << t << " #" << i << ": end " << r;
                                        failures++;
                                }
                        }
                });
        for (auto &th : threads)
                th.join();
        EXPECT_EQ(failures.load(), 0);
}

TEST_F(ThreadTest, ConcurrentOneShotServersWithHelperProcesses) {
        const int T = 3;
        std::vector<std::thread> threads;
        std::vector<int> got(T, -1), end(T, 1), status(T, -1);

        for (int t = 0; t < T; t++)
                threads.emplace_back([t, &got, &end, &status]() {
                        ipcmux_server *srv = nullptr;
                        char *name = nullptr;
                        pid_t pid = -1;

                        if (ipcmux_server_new(&srv, &name) < 0)
                                return;
                        std::string helper = test_helper_path("helper-client");
                        char *argv[] = {(char *) helper.c_str(), (char *) "send", name, (char *) "50", nullptr};
                        /* PDEATHSIG follows this thread: it waits for the child. */
                        if (test_spawn(argv, NULL, &pid) >= 0) {
                                ipcmux_receiver *rx = nullptr;
                                ipcmux_message *first = nullptr;
                                if (ipcmux_server_accept_timeout(srv, 20000000, &rx, &first) >= 0) {
                                        ipcmux_message *m = nullptr;
                                        int r, n = 0;
                                        ipcmux_message_unref(first);
                                        while ((r = recv_bounded(rx, &m)) >= 0) {
                                                if (msg_str(m) == "msg-" + std::to_string(n))
                                                        n++;
                                                m = ipcmux_message_unref(m);
                                        }
                                        got[t] = n;
                                        end[t] = r;
                                        ipcmux_receiver_unref(rx);
                                }
                                int st = -1;
                                if (test_wait(pid, 30000, &st) < 0) {
                                        kill(pid, SIGKILL);
                                        test_wait(pid, 10000, NULL);
                                }
                                status[t] = st;
                        }
                        free(name);
                        ipcmux_server_unref(srv);
                });
        for (auto &th : threads)
                th.join();
        for (int t = 0; t < T; t++) {
                EXPECT_EQ(got[t], 50) << "thread " << t;
                EXPECT_EQ(end[t], -EPIPE) << "thread " << t;
                EXPECT_TRUE(WIFEXITED(status[t]) && WEXITSTATUS(status[t]) == 0) << "thread " << t;
        }
}
