/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Non-blocking and bounded receives: every try_recv and try_recv_timeout
 * scenario of the reference (ipc-channel-mux src/mux_test.rs, typed and
 * bytes forms alike, since ipcmux has one kind of subchannel) and the
 * try_recv ones of its stress test (tests/ipc_channel_stress_test.rs).
 *
 * The contract (include/ipcmux/ipcmux.h): try_recv returns -EAGAIN when
 * nothing is queued; try_recv_timeout returns -ETIMEDOUT when its relative
 * timeout expires (so a timeout of 0 on an empty receiver is -ETIMEDOUT);
 * both return -EPIPE once every sender is gone and the queue is drained;
 * out-parameters are untouched on failure.
 *
 * Timing: lower bounds are what the contract promises (a 100 ms timeout
 * does not return before ~100 ms); upper bounds are generous failure bounds
 * only.  The only sleeps are those the scenarios are made of ("the message
 * arrives after 100 ms").
 */

#include <stdint.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <thread>
#include <utility>

#include "test-util.h"

namespace {

/* Handle holders, Sub, new_sub(), send_str(): tests/test-util.h. */

void send_u32(ipcmux_sender *tx, uint32_t v) {
        ASSERT_OK(ipcmux_sender_send_bytes(tx, &v, sizeof(v)));
}

std::string u32s(uint32_t v) {
        return std::string((const char *) &v, sizeof(v));
}

constexpr uint64_t MSEC = 1000;
constexpr uint64_t SEC = 1000000;

/* Outcome of one receive: the payload, or the error as "<ENAME>". */
struct Outcome {
        int r;
        std::string payload;
        uint64_t usec;  /* how long the call took */
};

std::ostream &operator<<(std::ostream &os, const Outcome &o) {
        if (o.r >= 0)
                return os << "message \"" << o.payload << "\" after " << o.usec << " us";
        return os << "error " << o.r << " (" << strerror(-o.r) << ") after " << o.usec << " us";
}

/* ipcmux_receiver_try_recv with the out-parameter checked on failure. */
Outcome try_recv(ipcmux_receiver *rx) {
        ipcmux_message *m = (ipcmux_message *) 0x1;
        uint64_t t0 = test_now_usec();
        int r = ipcmux_receiver_try_recv(rx, &m);
        Outcome o{r, "", test_now_usec() - t0};
        if (r >= 0) {
                o.payload = msg_str(m);
                ipcmux_message_unref(m);
        } else if (m != (ipcmux_message *) 0x1) {
                o.r = -EFAULT;  /* out-parameter touched on failure */
                o.payload = "<out-parameter touched>";
        }
        return o;
}

Outcome try_recv_timeout(ipcmux_receiver *rx, uint64_t usec) {
        ipcmux_message *m = (ipcmux_message *) 0x1;
        uint64_t t0 = test_now_usec();
        int r = ipcmux_receiver_try_recv_timeout(rx, usec, &m);
        Outcome o{r, "", test_now_usec() - t0};
        if (r >= 0) {
                o.payload = msg_str(m);
                ipcmux_message_unref(m);
        } else if (m != (ipcmux_message *) 0x1) {
                o.r = -EFAULT;
                o.payload = "<out-parameter touched>";
        }
        return o;
}

#define EXPECT_MSG(outcome, text)                                               \
        do {                                                                    \
                Outcome _o = (outcome);                                         \
                EXPECT_TRUE(_o.r >= 0 && _o.payload == (text)) << _o;           \
        } while (0)
#define EXPECT_ERR(outcome, err)                                                \
        do {                                                                    \
                Outcome _o = (outcome);                                         \
                EXPECT_EQ(_o.r, (err)) << _o;                                   \
        } while (0)

/*
 * Poll with try_recv until something other than -EAGAIN comes (the
 * reference's loop with 10 ms sleeps; here the sleep is only the polling
 * interval, nothing waits for it).  Bound: 5 s.
 */
Outcome poll_until_not_empty(ipcmux_receiver *rx) {
        uint64_t deadline = test_now_usec() + 5 * SEC;
        for (;;) {
                Outcome o = try_recv(rx);
                if (o.r != -EAGAIN || test_now_usec() > deadline)
                        return o;
                usleep(10000);
        }
}

class TryRecvTest : public BusTest {
protected:
        Channel ch;

        void SetUp() override {
                BusTest::SetUp();
                if (HasFatalFailure())
                        return;
                ASSERT_OK(ipcmux_channel_new(out(ch)));
        }
        void TearDown() override {
                ch.reset();
                BusTest::TearDown();
        }
};

} /* namespace */

/* ---- try_recv ------------------------------------------------------------ */

/* try_recv_empty_channel, bytes_try_recv_empty */
TEST_F(TryRecvTest, EmptyChannel) {
        Sub s;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        EXPECT_ERR(try_recv(s.rx.get()), -EAGAIN);
        /* Repeatable, and never blocks. */
        for (int i = 0; i < 100; i++) {
                Outcome o = try_recv(s.rx.get());
                ASSERT_EQ(o.r, -EAGAIN) << o;
                ASSERT_LT(o.usec, 1 * SEC) << o;
        }
}

/* try_recv_with_message, bytes_try_recv_with_message */
TEST_F(TryRecvTest, WithMessage) {
        Sub s;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), "hello"));
        EXPECT_MSG(try_recv(s.rx.get()), "hello");
}

/* try_recv_empty_after_receive */
TEST_F(TryRecvTest, EmptyAfterReceive) {
        Sub s;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        ASSERT_NO_FATAL_FAILURE(send_u32(s.tx.get(), 42));
        EXPECT_MSG(try_recv(s.rx.get()), u32s(42));
        EXPECT_ERR(try_recv(s.rx.get()), -EAGAIN);
}

/* try_recv_multiple_messages */
TEST_F(TryRecvTest, MultipleMessages) {
        Sub s;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        for (uint32_t i = 1; i <= 3; i++)
                ASSERT_NO_FATAL_FAILURE(send_u32(s.tx.get(), i));
        for (uint32_t i = 1; i <= 3; i++)
                EXPECT_MSG(try_recv(s.rx.get()), u32s(i));
        EXPECT_ERR(try_recv(s.rx.get()), -EAGAIN);
}

/* try_recv_disconnected_after_sender_drop, bytes_try_recv_disconnected:
 * only -EAGAIN may come before -EPIPE, nothing else */
TEST_F(TryRecvTest, DisconnectedAfterSenderDrop) {
        Sub s;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        s.tx.reset();
        EXPECT_ERR(poll_until_not_empty(s.rx.get()), -EPIPE);
        /* It stays disconnected. */
        EXPECT_ERR(try_recv(s.rx.get()), -EPIPE);
        EXPECT_ERR(try_recv(s.rx.get()), -EPIPE);
}

/* try_recv_buffered_messages_before_disconnect */
TEST_F(TryRecvTest, BufferedMessagesBeforeDisconnect) {
        Sub s;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        ASSERT_NO_FATAL_FAILURE(send_u32(s.tx.get(), 1));
        ASSERT_NO_FATAL_FAILURE(send_u32(s.tx.get(), 2));
        s.tx.reset();
        EXPECT_MSG(try_recv(s.rx.get()), u32s(1));
        EXPECT_MSG(try_recv(s.rx.get()), u32s(2));
        EXPECT_ERR(poll_until_not_empty(s.rx.get()), -EPIPE);
}

/* try_recv_two_subchannels_independent */
TEST_F(TryRecvTest, TwoSubchannelsIndependent) {
        Sub a, b;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &a));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &b));
        ASSERT_NO_FATAL_FAILURE(send_u32(a.tx.get(), 42));
        EXPECT_ERR(try_recv(b.rx.get()), -EAGAIN);
        EXPECT_MSG(try_recv(a.rx.get()), u32s(42));
        EXPECT_ERR(try_recv(b.rx.get()), -EAGAIN);
        /* One disconnected does not disconnect the other. */
        a.tx.reset();
        EXPECT_ERR(poll_until_not_empty(a.rx.get()), -EPIPE);
        EXPECT_ERR(try_recv(b.rx.get()), -EAGAIN);
        ASSERT_NO_FATAL_FAILURE(send_u32(b.tx.get(), 7));
        EXPECT_MSG(try_recv(b.rx.get()), u32s(7));
}

/* try_recv_with_cloned_sender_partial_drop */
TEST_F(TryRecvTest, ClonedSenderPartialDrop) {
        Sub s;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        Sender c = clone(s.tx);
        s.tx.reset();
        EXPECT_ERR(try_recv(s.rx.get()), -EAGAIN);
        ASSERT_NO_FATAL_FAILURE(send_u32(c.get(), 7));
        EXPECT_MSG(try_recv(s.rx.get()), u32s(7));
        c.reset();
        EXPECT_ERR(poll_until_not_empty(s.rx.get()), -EPIPE);
}

/* try_recv_with_in_flight_subsender: a sender inside a message not yet
 * received keeps its subchannel connected */
TEST_F(TryRecvTest, WithInFlightSubsender) {
        Sub super, sub;
        Message m, got;
        Sender received;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &super));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &sub));
        ASSERT_OK(ipcmux_message_new(out(m)));
        ASSERT_EQ(ipcmux_message_attach_sender(m.get(), sub.tx.get()), 0);
        ASSERT_OK(ipcmux_sender_send(super.tx.get(), m.get()));
        m.reset();
        sub.tx.reset();
        Outcome o = try_recv(sub.rx.get());
        EXPECT_EQ(o.r, -EAGAIN) << "in flight, not disconnected: " << o;

        ASSERT_OK(recv_bounded(super.rx.get(), out(got)));
        ASSERT_OK(ipcmux_message_take_sender(got.get(), 0, out(received)));
        got.reset();
        ASSERT_NO_FATAL_FAILURE(send_u32(received.get(), 99));
        EXPECT_MSG(poll_until_not_empty(sub.rx.get()), u32s(99));
        received.reset();
        EXPECT_ERR(poll_until_not_empty(sub.rx.get()), -EPIPE);
}

/* ---- try_recv_timeout ---------------------------------------------------- */

/* try_recv_timeout_empty_channel, bytes_try_recv_timeout_empty */
TEST_F(TryRecvTest, TimeoutEmptyChannel) {
        Sub s;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        Outcome o = try_recv_timeout(s.rx.get(), 100 * MSEC);
        EXPECT_EQ(o.r, -ETIMEDOUT) << o;
        EXPECT_GE(o.usec, 50 * MSEC) << o;
        EXPECT_LT(o.usec, 5 * SEC) << o;
}

/* The wait is at least the timeout asked for (the clock is monotonic). */
TEST_F(TryRecvTest, TimeoutIsNotShort) {
        Sub s;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        for (uint64_t t : {1 * MSEC, 10 * MSEC, 30 * MSEC, 200 * MSEC}) {
                Outcome o = try_recv_timeout(s.rx.get(), t);
                EXPECT_EQ(o.r, -ETIMEDOUT) << o;
                EXPECT_GE(o.usec, t) << "timeout " << t << ": " << o;
                EXPECT_LT(o.usec, t + 5 * SEC) << o;
        }
}

/* try_recv_timeout_with_message, bytes_try_recv_timeout_with_message */
TEST_F(TryRecvTest, TimeoutWithMessage) {
        Sub s;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), "ready"));
        Outcome o = try_recv_timeout(s.rx.get(), 5 * SEC);
        EXPECT_MSG(o, "ready");
        EXPECT_LT(o.usec, 1 * SEC) << "a queued message is returned at once: " << o;
}

/* try_recv_timeout_empty_after_receive */
TEST_F(TryRecvTest, TimeoutEmptyAfterReceive) {
        Sub s;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        ASSERT_NO_FATAL_FAILURE(send_u32(s.tx.get(), 1));
        EXPECT_MSG(try_recv_timeout(s.rx.get(), 5 * SEC), u32s(1));
        Outcome o = try_recv_timeout(s.rx.get(), 100 * MSEC);
        EXPECT_EQ(o.r, -ETIMEDOUT) << o;
        EXPECT_GE(o.usec, 50 * MSEC) << o;
}

/* try_recv_timeout_disconnected_after_sender_drop, bytes_try_recv_timeout_disconnected */
TEST_F(TryRecvTest, TimeoutDisconnectedAfterSenderDrop) {
        Sub s;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        s.tx.reset();
        Outcome o = try_recv_timeout(s.rx.get(), 5 * SEC);
        EXPECT_EQ(o.r, -EPIPE) << o;
        EXPECT_LT(o.usec, 5 * SEC) << o;
        /* Even an infinite wait returns -EPIPE at once now. */
        o = try_recv_timeout(s.rx.get(), IPCMUX_TIMEOUT_INFINITE);
        EXPECT_EQ(o.r, -EPIPE) << o;
}

/* try_recv_timeout_buffered_messages_before_disconnect */
TEST_F(TryRecvTest, TimeoutBufferedMessagesBeforeDisconnect) {
        Sub s;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        ASSERT_NO_FATAL_FAILURE(send_u32(s.tx.get(), 1));
        ASSERT_NO_FATAL_FAILURE(send_u32(s.tx.get(), 2));
        s.tx.reset();
        EXPECT_MSG(try_recv_timeout(s.rx.get(), 1 * SEC), u32s(1));
        EXPECT_MSG(try_recv_timeout(s.rx.get(), 1 * SEC), u32s(2));
        Outcome o = try_recv_timeout(s.rx.get(), 1 * SEC);
        EXPECT_EQ(o.r, -EPIPE) << o;
        EXPECT_LT(o.usec, 1 * SEC) << o;
}

/* try_recv_timeout_message_arrives_during_wait,
 * bytes_try_recv_timeout_message_arrives_during_wait */
TEST_F(TryRecvTest, TimeoutMessageArrivesDuringWait) {
        Sub s;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        ipcmux_sender *tx = s.tx.get();
        uint64_t t0 = test_now_usec();
        std::thread t([tx]() {
                std::this_thread::sleep_for(std::chrono::milliseconds(100));
                uint32_t v = 77;
                (void) ipcmux_sender_send_bytes(tx, &v, sizeof(v));
        });
        Outcome o = try_recv_timeout(s.rx.get(), 5 * SEC);
        uint64_t elapsed = test_now_usec() - t0;
        t.join();
        EXPECT_MSG(o, u32s(77));
        EXPECT_GE(elapsed, 90 * MSEC) << "returned before the message was sent: " << o;
        EXPECT_LT(o.usec, 5 * SEC) << o;
}

/* The same with "delayed" bytes and an infinite timeout. */
TEST_F(TryRecvTest, InfiniteTimeoutMessageArrivesDuringWait) {
        Sub s;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        ipcmux_sender *tx = s.tx.get();
        auto sent = std::async(std::launch::async, [tx]() {
                std::this_thread::sleep_for(std::chrono::milliseconds(100));
                return ipcmux_sender_send_bytes(tx, "delayed", 7);
        });
        ipcmux_receiver *rx = s.rx.get();
        auto got = std::async(std::launch::async, [rx]() { return try_recv_timeout(rx, IPCMUX_TIMEOUT_INFINITE); });
        ASSERT_EQ(got.wait_for(std::chrono::seconds(10)), std::future_status::ready)
                << "infinite wait not woken by a message";
        EXPECT_MSG(got.get(), "delayed");
        EXPECT_EQ(sent.get(), 0);
}

/* The sender drops (last reference) while the receiver waits: -EPIPE before
 * the timeout. */
TEST_F(TryRecvTest, TimeoutDisconnectedDuringWait) {
        Sub s;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        ipcmux_sender *tx = s.tx.release();
        std::thread t([tx]() {
                std::this_thread::sleep_for(std::chrono::milliseconds(100));
                ipcmux_sender_unref(tx);
        });
        Outcome o = try_recv_timeout(s.rx.get(), 5 * SEC);
        t.join();
        EXPECT_EQ(o.r, -EPIPE) << o;
        EXPECT_LT(o.usec, 5 * SEC) << o;
}

/* stress try_recv_timeout_disconnect_during_wait: 50 rounds, sender dropped
 * after 10 ms -> -EPIPE */
TEST_F(TryRecvTest, TimeoutDisconnectDuringWaitRounds) {
        for (int round = 0; round < 50; round++) {
                Sub s;

                ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
                ipcmux_sender *tx = s.tx.release();
                std::thread t([tx]() {
                        std::this_thread::sleep_for(std::chrono::milliseconds(10));
                        ipcmux_sender_unref(tx);
                });
                Outcome o = try_recv_timeout(s.rx.get(), 5 * SEC);
                t.join();
                ASSERT_EQ(o.r, -EPIPE) << "round " << round << ": " << o;
        }
}

/* Timeout 0 is try_recv with try_recv_timeout's error: -ETIMEDOUT. */
TEST_F(TryRecvTest, TimeoutZero) {
        Sub s;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        Outcome o = try_recv_timeout(s.rx.get(), 0);
        EXPECT_EQ(o.r, -ETIMEDOUT) << o;
        EXPECT_LT(o.usec, 1 * SEC) << o;
        EXPECT_ERR(try_recv(s.rx.get()), -EAGAIN);
        ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), "now"));
        EXPECT_MSG(try_recv_timeout(s.rx.get(), 0), "now");
        s.tx.reset();
        EXPECT_ERR(try_recv_timeout(s.rx.get(), 0), -EPIPE);
}

/* Huge finite timeouts must not overflow the deadline into the past. */
TEST_F(TryRecvTest, HugeTimeoutDoesNotOverflow) {
        Sub s;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        ipcmux_receiver *rx = s.rx.get();
        for (uint64_t t : {UINT64_MAX - 1, UINT64_MAX / 2, (uint64_t) INT64_MAX + 1}) {
                SCOPED_TRACE("timeout " + std::to_string(t));
                auto got = std::async(std::launch::async, [rx, t]() { return try_recv_timeout(rx, t); });
                EXPECT_EQ(got.wait_for(std::chrono::milliseconds(200)), std::future_status::timeout)
                        << "returned at once: the deadline overflowed";
                ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), "wake"));
                ASSERT_EQ(got.wait_for(std::chrono::seconds(10)), std::future_status::ready);
                EXPECT_MSG(got.get(), "wake");
        }
}

/* A message for another subchannel does not end the wait. */
TEST_F(TryRecvTest, TimeoutIgnoresOtherSubchannels) {
        Sub a, b;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &a));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &b));
        ipcmux_sender *tx = b.tx.get();
        std::thread t([tx]() {
                for (int i = 0; i < 5; i++) {
                        std::this_thread::sleep_for(std::chrono::milliseconds(20));
                        (void) ipcmux_sender_send_bytes(tx, "for b", 5);
                }
        });
        Outcome o = try_recv_timeout(a.rx.get(), 300 * MSEC);
        t.join();
        EXPECT_EQ(o.r, -ETIMEDOUT) << o;
        EXPECT_GE(o.usec, 300 * MSEC) << o;
        for (int i = 0; i < 5; i++)
                EXPECT_MSG(try_recv(b.rx.get()), "for b");
        EXPECT_ERR(try_recv(b.rx.get()), -EAGAIN);
}

/* Two threads wait on two receivers of one channel at once. */
TEST_F(TryRecvTest, TwoWaitersTwoReceivers) {
        Sub a, b;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &a));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &b));
        ipcmux_receiver *ra = a.rx.get(), *rb = b.rx.get();
        ipcmux_sender *ta = a.tx.get(), *tb = b.tx.get();
        auto wa = std::async(std::launch::async, [ra]() { return try_recv_timeout(ra, 10 * SEC); });
        auto wb = std::async(std::launch::async, [rb]() { return try_recv_timeout(rb, 10 * SEC); });
        /* The messages arrive after 100 ms, b's first. */
        std::thread t([ta, tb]() {
                std::this_thread::sleep_for(std::chrono::milliseconds(100));
                (void) ipcmux_sender_send_bytes(tb, "b", 1);
                (void) ipcmux_sender_send_bytes(ta, "a", 1);
        });
        Outcome ob = wb.get(), oa = wa.get();
        t.join();
        EXPECT_MSG(ob, "b");
        EXPECT_MSG(oa, "a");
}

/* Two threads wait on the same receiver: one message wakes exactly one with
 * it; the other keeps waiting until its own message (or timeout). */
TEST_F(TryRecvTest, TwoWaitersOneReceiver) {
        Sub s;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        ipcmux_receiver *rx = s.rx.get();
        auto w1 = std::async(std::launch::async, [rx]() { return try_recv_timeout(rx, 10 * SEC); });
        auto w2 = std::async(std::launch::async, [rx]() { return try_recv_timeout(rx, 10 * SEC); });
        ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), "one"));
        ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), "two"));
        Outcome o1 = w1.get(), o2 = w2.get();
        ASSERT_GE(o1.r, 0) << o1;
        ASSERT_GE(o2.r, 0) << o2;
        EXPECT_TRUE((o1.payload == "one" && o2.payload == "two") || (o1.payload == "two" && o2.payload == "one"))
                << o1 << " / " << o2;
}

/* ---- stress (tests/ipc_channel_stress_test.rs) ---------------------------- */

/* try_recv_polling_loop: try_recv with 100 us sleeps while a thread sends
 * with jitter; every message arrives once, in order */
TEST_F(TryRecvTest, PollingLoop) {
        constexpr uint32_t N = 500;
        Sub s;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        ipcmux_sender *tx = s.tx.release();
        std::thread t([tx]() {
                Sender owned(tx);
                for (uint32_t i = 0; i < N; i++) {
                        if (i % 7 == 0)
                                std::this_thread::sleep_for(std::chrono::microseconds(50 * (i % 5)));
                        if (ipcmux_sender_send_bytes(owned.get(), &i, sizeof(i)) < 0)
                                return;
                }
        });
        uint32_t next = 0;
        uint64_t deadline = test_now_usec() + 30 * SEC;
        while (next < N && test_now_usec() < deadline) {
                Outcome o = try_recv(s.rx.get());
                if (o.r == -EAGAIN) {
                        usleep(100);
                        continue;
                }
                ASSERT_GE(o.r, 0) << "after " << next << ": " << o;
                ASSERT_EQ(o.payload, u32s(next));
                next++;
        }
        t.join();
        EXPECT_EQ(next, N);
        EXPECT_ERR(poll_until_not_empty(s.rx.get()), -EPIPE);
}

/* try_recv_timeout_with_concurrent_sender: 100 ms timeouts */
TEST_F(TryRecvTest, TimeoutWithConcurrentSender) {
        constexpr uint32_t N = 500;
        Sub s;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        ipcmux_sender *tx = s.tx.release();
        std::thread t([tx]() {
                Sender owned(tx);
                for (uint32_t i = 0; i < N; i++)
                        if (ipcmux_sender_send_bytes(owned.get(), &i, sizeof(i)) < 0)
                                return;
        });
        uint32_t next = 0;
        int timeouts = 0;
        while (next < N && timeouts < 50) {
                Outcome o = try_recv_timeout(s.rx.get(), 100 * MSEC);
                if (o.r == -ETIMEDOUT) {
                        timeouts++;
                        continue;
                }
                ASSERT_GE(o.r, 0) << "after " << next << ": " << o;
                ASSERT_EQ(o.payload, u32s(next));
                next++;
        }
        t.join();
        EXPECT_EQ(next, N);
        EXPECT_ERR(try_recv_timeout(s.rx.get(), 5 * SEC), -EPIPE);
}

/* interleaved_try_recv_and_timeout: alternate try_recv and 50 ms waits */
TEST_F(TryRecvTest, InterleavedTryRecvAndTimeout) {
        constexpr uint32_t N = 200;
        Sub s;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        ipcmux_sender *tx = s.tx.release();
        std::thread t([tx]() {
                Sender owned(tx);
                for (uint32_t i = 0; i < N; i++) {
                        if (i % 10 == 0)
                                std::this_thread::sleep_for(std::chrono::milliseconds(1));
                        if (ipcmux_sender_send_bytes(owned.get(), &i, sizeof(i)) < 0)
                                return;
                }
        });
        uint32_t next = 0;
        uint64_t deadline = test_now_usec() + 30 * SEC;
        for (unsigned k = 0; next < N && test_now_usec() < deadline; k++) {
                Outcome o = k % 2 ? try_recv(s.rx.get()) : try_recv_timeout(s.rx.get(), 50 * MSEC);
                if (o.r == -EAGAIN || o.r == -ETIMEDOUT) {
                        /* each form reports emptiness its own way */
                        EXPECT_EQ(o.r, k % 2 ? -EAGAIN : -ETIMEDOUT) << o;
                        continue;
                }
                ASSERT_GE(o.r, 0) << "after " << next << ": " << o;
                ASSERT_EQ(o.payload, u32s(next));
                next++;
        }
        t.join();
        EXPECT_EQ(next, N);
        EXPECT_ERR(try_recv_timeout(s.rx.get(), 5 * SEC), -EPIPE);
}
