/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Drop semantics: what dropping a receiver (or its channel) does to senders,
 * to other subchannels, and to what was queued and never received.  The
 * reference's (ipc-channel-mux src/mux_test.rs) multiplex_drop_only_
 * subreceiver_* tests, plus the contract of ipcmux_receiver_unref():
 * "senders get -EPIPE; queued messages are discarded (their regions, fds and
 * senders released)".
 *
 * Resource checks are exact: fd counts return to the baseline, memfd
 * mappings go away, a pipe whose read ends were all queued reports POLLERR
 * at its write end once they are released, and a subchannel whose last
 * holders were queued reports -EPIPE.
 *
 * The last section repeats the resource checks with the receiver on a
 * second connection of this process, so that fds and senders really
 * travelled through the bus.
 */

#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <future>
#include <memory>
#include <thread>
#include <utility>

#include "test-util.h"

namespace {

struct Pipe {
        Fd rd, wr;
};

void new_pipe(Pipe *p) {
        int fds[2];
        ASSERT_OK(pipe2(fds, O_CLOEXEC | O_NONBLOCK));
        p->rd.reset(fds[0]);
        p->wr.reset(fds[1]);
}

/* Does the write end of a pipe see that every read end is closed? */
bool readers_gone(int wr) {
        struct pollfd p = {wr, POLLOUT, 0};
        return poll(&p, 1, 0) == 1 && (p.revents & POLLERR);
}

/* Mappings of memfds (shared-memory regions) in this process. */
int count_memfd_mappings() {
        std::ifstream maps("/proc/self/maps");
        std::string line;
        int n = 0;
        while (std::getline(maps, line))
                if (line.find("/memfd:") != std::string::npos)
                        n++;
        return n;
}

/* A send on a dropped receiver: -EPIPE, and without blocking. */
void expect_send_epipe(ipcmux_sender *tx, const char *what) {
        uint64_t t0 = test_now_usec();
        int r = ipcmux_sender_send_bytes(tx, "x", 1);
        uint64_t dt = test_now_usec() - t0;
        EXPECT_EQ(r, -EPIPE) << what;
        EXPECT_LT(dt, (uint64_t) 1000000) << what << ": send blocked for " << dt << " us";
}

/* ChannelTest (test-util.h), under the suite name these tests are known by. */
class DropTest : public ChannelTest {};

} /* namespace */

/* ---- senders after the receiver is gone ---------------------------------- */

/* multiplex_drop_only_subreceiver_for_channel, bytes_disconnect_on_receiver_drop:
 * two consecutive sends both fail, the second does not block */
TEST_F(DropTest, DropOnlyReceiver) {
        Sub s;
        Message m;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        s.rx.reset();
        expect_send_epipe(s.tx.get(), "first send");
        expect_send_epipe(s.tx.get(), "second send");
        /* The message form too, and the message stays the caller's. */
        ASSERT_NO_FATAL_FAILURE(build(&m, "payload"));
        EXPECT_EQ(ipcmux_sender_send(s.tx.get(), m.get()), -EPIPE);
        EXPECT_EQ(msg_str(m.get()), "payload");
}

/* multiplex_drop_only_subreceiver_for_dropped_channel */
TEST_F(DropTest, DropChannelThenReceiver) {
        Sub s;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        ch.reset();
        s.rx.reset();
        expect_send_epipe(s.tx.get(), "first send");
        expect_send_epipe(s.tx.get(), "second send");
}

/* multiplex_drop_only_subreceiver_for_subchannel_of_dropped_channel */
TEST_F(DropTest, DropChannelThenOneOfTwoReceivers) {
        Sub a, b;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &a));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &b));
        ch.reset();
        a.rx.reset();
        expect_send_epipe(a.tx.get(), "first send");
        expect_send_epipe(a.tx.get(), "second send");
        ASSERT_NO_FATAL_FAILURE(send_str(b.tx.get(), "1"));
        EXPECT_EQ(recv_str(b.rx.get()), "1");
}

/* Dropping one of two receivers leaves the other working, both ways round. */
TEST_F(DropTest, DropOneOfTwoReceivers) {
        for (int which = 0; which < 2; which++) {
                Sub s[2];
                ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s[0]));
                ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s[1]));
                ASSERT_NO_FATAL_FAILURE(send_str(s[1 - which].tx.get(), "queued before"));
                s[which].rx.reset();
                expect_send_epipe(s[which].tx.get(), "dropped subchannel");
                ASSERT_NO_FATAL_FAILURE(send_str(s[1 - which].tx.get(), "sent after"));
                EXPECT_EQ(recv_str(s[1 - which].rx.get()), "queued before");
                EXPECT_EQ(recv_str(s[1 - which].rx.get()), "sent after");
                EXPECT_EQ(try_recv_state(s[1 - which].rx.get()), -EAGAIN);
        }
}

/* Every holder learns: clones and copies received inside messages. */
TEST_F(DropTest, AllCopiesSeeEpipe) {
        Sub carrier, target;
        Message m;
        Sender copy;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &carrier));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &target));
        Sender c = clone(target.tx);
        ASSERT_NO_FATAL_FAILURE(send_with(carrier.tx.get(), "", {target.tx.get()}));
        ASSERT_OK(recv_bounded(carrier.rx.get(), out(m)));
        ASSERT_OK(ipcmux_message_take_sender(m.get(), 0, out(copy)));
        target.rx.reset();
        expect_send_epipe(target.tx.get(), "original");
        expect_send_epipe(c.get(), "clone");
        expect_send_epipe(copy.get(), "received copy");
}

/* A sender for a dropped receiver can still be sent around; it stays dead. */
TEST_F(DropTest, DeadSenderTravels) {
        Sub carrier, target;
        Message m;
        Sender copy;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &carrier));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &target));
        target.rx.reset();
        ASSERT_NO_FATAL_FAILURE(send_with(carrier.tx.get(), "", {target.tx.get()}));
        ASSERT_OK(recv_bounded(carrier.rx.get(), out(m)));
        ASSERT_OK(ipcmux_message_take_sender(m.get(), 0, out(copy)));
        expect_send_epipe(copy.get(), "copy of a dead sender");
}

/* Every order of dropping channel, sender and receiver: no leak, no crash,
 * and sends after the receiver went fail. */
TEST_F(BusTest, EveryDropOrder) {
        const char *orders[] = {"CTR", "CRT", "TCR", "TRC", "RCT", "RTC"};
        for (const char *order : orders) {
                SCOPED_TRACE(order);
                Channel c;
                Sub s;
                ASSERT_NO_FATAL_FAILURE(new_channel(&c));
                ASSERT_NO_FATAL_FAILURE(new_sub(c.get(), &s));
                ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), "queued"));
                bool rx_gone = false;
                for (const char *o = order; *o; o++) {
                        switch (*o) {
                        case 'C':
                                c.reset();
                                break;
                        case 'T':
                                if (rx_gone) {
                                        expect_send_epipe(s.tx.get(), "before dropping the sender");
                                }
                                s.tx.reset();
                                break;
                        case 'R':
                                if (!s.tx) {
                                        EXPECT_EQ(recv_str(s.rx.get()), "queued");
                                }
                                s.rx.reset();
                                rx_gone = true;
                                break;
                        }
                }
        }
}

/* The receiver is dropped while another thread keeps sending: the thread
 * sees -EPIPE (and keeps seeing it), nothing crashes. */
TEST_F(DropTest, DropReceiverWhileThreadSends) {
        Sub s;
        std::atomic<uint64_t> sent{0};
        std::atomic<int> last_error{0};

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        ipcmux_sender *tx = s.tx.get();
        std::thread t([tx, &sent, &last_error]() {
                uint64_t deadline = test_now_usec() + 10000000;
                int r;
                while ((r = ipcmux_sender_send_bytes(tx, "spam", 4)) == 0 && test_now_usec() < deadline)
                        sent++;
                last_error = r;
                /* Once -EPIPE, always -EPIPE. */
                for (int i = 0; r == -EPIPE && i < 100; i++)
                        if (ipcmux_sender_send_bytes(tx, "spam", 4) != -EPIPE)
                                last_error = 1;
        });
        /* Let it get going (bounded; no sleep needed). */
        uint64_t deadline = test_now_usec() + 5000000;
        while (sent.load() < 1000 && test_now_usec() < deadline)
                std::this_thread::yield();
        s.rx.reset();
        t.join();
        EXPECT_GE(sent.load(), 1000u);
        EXPECT_EQ(last_error.load(), -EPIPE);
}

/* ---- what was queued and never received ----------------------------------- */

/* Many queued payloads go with the receiver; the sender learns at once. */
TEST_F(DropTest, QueuedPayloadsDiscarded) {
        Sub s;
        std::string big(100000, 'b');

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        for (int i = 0; i < 1000; i++)
                ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), i % 100 ? "small" : big));
        s.rx.reset();
        expect_send_epipe(s.tx.get(), "after discarding 1000 messages");
}

/* fds in messages queued on a dropped receiver are closed. */
TEST_F(DropTest, QueuedFdsReleased) {
        Sub s;
        Pipe p;
        int before = test_count_fds();

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        ASSERT_NO_FATAL_FAILURE(new_pipe(&p));
        for (int i = 0; i < 100; i++)
                ASSERT_NO_FATAL_FAILURE(send_with(s.tx.get(), std::to_string(i), {}, {p.rd.fd}));
        EXPECT_GE(test_count_fds(), before + 2 + 100) << "each queued message holds its own fd";
        p.rd.reset();
        EXPECT_FALSE(readers_gone(p.wr.fd)) << "the queued copies are read ends";
        s.rx.reset();
        EXPECT_TRUE(readers_gone(p.wr.fd)) << "queued fds still open after the receiver was dropped";
        p.wr.reset();
        EXPECT_EQ(test_count_fds(), before);
}

/* Regions in messages queued on a dropped receiver are unmapped and closed. */
TEST_F(DropTest, QueuedRegionsReleased) {
        Sub s;
        int fds_before = test_count_fds(), maps_before = count_memfd_mappings();

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        for (int i = 0; i < 100; i++) {
                Shmem r;
                ASSERT_OK(ipcmux_shmem_new_from_byte((uint8_t) i, 4096, out(r)));
                ASSERT_NO_FATAL_FAILURE(send_with(s.tx.get(), "", {}, {}, {r.get()}));
        }
        EXPECT_GT(count_memfd_mappings(), maps_before);
        s.rx.reset();
        EXPECT_EQ(count_memfd_mappings(), maps_before) << "regions still mapped";
        EXPECT_EQ(test_count_fds(), fds_before) << "region fds still open";
}

/* Messages with payload, fds, regions and senders all at once, some of them
 * received and kept, the rest discarded: only the kept ones stay. */
TEST_F(DropTest, MixedQueueReleased) {
        Sub carrier, target;
        Pipe p;
        Message kept;
        int fds_before = test_count_fds(), maps_before = count_memfd_mappings();

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &carrier));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &target));
        ASSERT_NO_FATAL_FAILURE(new_pipe(&p));
        for (int i = 0; i < 50; i++) {
                Shmem r;
                ASSERT_OK(ipcmux_shmem_new_from_byte((uint8_t) i, 100, out(r)));
                ASSERT_NO_FATAL_FAILURE(send_with(carrier.tx.get(), std::string(i * 100, 'p'), {target.tx.get()},
                                                  {p.rd.fd, p.wr.fd}, {r.get()}));
        }
        target.tx.reset();
        p.rd.reset();
        ASSERT_OK(recv_bounded(carrier.rx.get(), out(kept)));
        carrier.rx.reset();
        EXPECT_EQ(try_recv_state(target.rx.get()), -EAGAIN) << "the kept message holds a copy";
        EXPECT_FALSE(readers_gone(p.wr.fd)) << "the kept message holds a read end";
        kept.reset();
        EXPECT_EQ(recv_error(target.rx.get()), -EPIPE);
        EXPECT_TRUE(readers_gone(p.wr.fd));
        p.wr.reset();
        EXPECT_EQ(count_memfd_mappings(), maps_before);
        EXPECT_EQ(test_count_fds(), fds_before);
}

/* Senders in unreceived messages are released with the receiver: when they
 * were the last holders, their subchannel is disconnected. */
TEST_F(DropTest, QueuedSendersReleased) {
        Sub carrier, target;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &carrier));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &target));
        for (int i = 0; i < 10; i++)
                ASSERT_NO_FATAL_FAILURE(send_with(carrier.tx.get(), "", {target.tx.get(), target.tx.get()}));
        target.tx.reset();
        EXPECT_EQ(try_recv_state(target.rx.get()), -EAGAIN) << "20 queued copies hold it";
        carrier.rx.reset();
        EXPECT_EQ(recv_error(target.rx.get()), -EPIPE);
}

/* ...and when they were not the last holders, the subchannel lives on. */
TEST_F(DropTest, QueuedSendersReleasedOtherHolderRemains) {
        Sub carrier, target;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &carrier));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &target));
        Sender keep = clone(target.tx);
        for (int i = 0; i < 10; i++)
                ASSERT_NO_FATAL_FAILURE(send_with(carrier.tx.get(), "", {target.tx.get()}));
        target.tx.reset();
        carrier.rx.reset();
        EXPECT_EQ(try_recv_state(target.rx.get()), -EAGAIN);
        ASSERT_NO_FATAL_FAILURE(send_str(keep.get(), "still here"));
        EXPECT_EQ(recv_str(target.rx.get()), "still here");
        keep.reset();
        EXPECT_EQ(recv_error(target.rx.get()), -EPIPE);
}

/* A thread blocked on the target is woken by the carrier's drop. */
TEST_F(DropTest, QueuedSendersReleasedWakesWaiter) {
        Sub carrier, target;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &carrier));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &target));
        ASSERT_NO_FATAL_FAILURE(send_with(carrier.tx.get(), "", {target.tx.get()}));
        target.tx.reset();
        ipcmux_receiver *rx = target.rx.get();
        auto waiter = std::async(std::launch::async, [rx]() { return recv_error(rx); });
        carrier.rx.reset();
        EXPECT_EQ(waiter.get(), -EPIPE);
}

/* Two receivers whose queues hold each other's senders: dropping one
 * releases the other's last holder; what is queued there still comes out,
 * and the dead copy it carries fails with -EPIPE. */
TEST_F(DropTest, CrossQueuedSenders) {
        Sub a, b;
        Message m;
        Sender copy_of_a;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &a));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &b));
        ASSERT_NO_FATAL_FAILURE(send_with(a.tx.get(), "b's sender", {b.tx.get()}));
        ASSERT_NO_FATAL_FAILURE(send_with(b.tx.get(), "a's sender", {a.tx.get()}));
        a.tx.reset();
        b.tx.reset();
        EXPECT_EQ(try_recv_state(a.rx.get()), 1) << "a's queue: one message";
        /* That consumed a's message (and dropped b's copy with it): b's only
         * holder is gone; b still has its queued message. */
        ASSERT_OK(recv_bounded(b.rx.get(), out(m)));
        EXPECT_EQ(msg_str(m.get()), "a's sender");
        EXPECT_EQ(recv_error(b.rx.get()), -EPIPE);
        ASSERT_OK(ipcmux_message_take_sender(m.get(), 0, out(copy_of_a)));
        m.reset();
        a.rx.reset();
        expect_send_epipe(copy_of_a.get(), "copy of a after a's receiver was dropped");
}

/* A received message outlives its receiver: payload, fds, regions and
 * senders stay usable. */
TEST_F(DropTest, ReceivedMessageOutlivesReceiver) {
        Sub carrier, target;
        Pipe p;
        Shmem region, got_region;
        Message m;
        Sender got_sender;
        int fd = -1;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &carrier));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &target));
        ASSERT_NO_FATAL_FAILURE(new_pipe(&p));
        ASSERT_OK(ipcmux_shmem_new_from_bytes("region", 6, out(region)));
        ASSERT_NO_FATAL_FAILURE(send_with(carrier.tx.get(), "payload", {target.tx.get()}, {p.wr.fd}, {region.get()}));
        target.tx.reset();
        ASSERT_OK(recv_bounded(carrier.rx.get(), out(m)));
        carrier.rx.reset();
        carrier.tx.reset();

        EXPECT_EQ(msg_str(m.get()), "payload");
        ASSERT_OK(ipcmux_message_take_fd(m.get(), 0, &fd));
        Fd owned(fd);
        ASSERT_EQ(write(fd, "!", 1), 1);
        char c = 0;
        ASSERT_EQ(read(p.rd.fd, &c, 1), 1);
        EXPECT_EQ(c, '!');
        ASSERT_OK(ipcmux_message_take_shmem(m.get(), 0, out(got_region)));
        EXPECT_EQ(ipcmux_shmem_equal(got_region.get(), region.get()), 1);
        EXPECT_EQ(try_recv_state(target.rx.get()), -EAGAIN) << "the message's copy holds the target";
        ASSERT_OK(ipcmux_message_take_sender(m.get(), 0, out(got_sender)));
        m.reset();
        ASSERT_NO_FATAL_FAILURE(send_str(got_sender.get(), "works"));
        EXPECT_EQ(recv_str(target.rx.get()), "works");
        got_sender.reset();
        EXPECT_EQ(recv_error(target.rx.get()), -EPIPE);
}

/* A failed send (-EPIPE) takes nothing: the message keeps its attachments
 * and, once it is dropped, nothing of it stays behind. */
TEST_F(DropTest, FailedSendLeaksNothing) {
        Sub dead, target;
        Pipe p;
        Shmem region;
        Message m;
        int fds_before = test_count_fds();

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &dead));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &target));
        ASSERT_NO_FATAL_FAILURE(new_pipe(&p));
        ASSERT_OK(ipcmux_shmem_new(64, out(region)));
        dead.rx.reset();
        ASSERT_NO_FATAL_FAILURE(build(&m, "x", {target.tx.get()}, {p.rd.fd}, {region.get()}));
        for (int i = 0; i < 10; i++)
                ASSERT_EQ(ipcmux_sender_send(dead.tx.get(), m.get()), -EPIPE);
        EXPECT_EQ(ipcmux_message_get_n_senders(m.get()), 1u);
        EXPECT_EQ(ipcmux_message_get_n_fds(m.get()), 1u);
        EXPECT_EQ(ipcmux_message_get_n_shmem(m.get()), 1u);
        target.tx.reset();
        EXPECT_EQ(try_recv_state(target.rx.get()), -EAGAIN) << "the message still holds its copy";
        m.reset();
        EXPECT_EQ(recv_error(target.rx.get()), -EPIPE) << "a failed send left a hold behind";
        region.reset();
        p.rd.reset();
        EXPECT_TRUE(readers_gone(p.wr.fd)) << "a failed send left an fd behind";
        p.wr.reset();
        EXPECT_EQ(test_count_fds(), fds_before);
}

/* ---- over the bus ---------------------------------------------------------- */

namespace {

/* The receivers live on a second connection of this process ("far"); a
 * thread keeps it dispatched, as a process sitting in recv would. */
class RemoteDropTest : public DropTest {
protected:
        Channel far;
        Pump pump;

        void SetUp() override {
                DropTest::SetUp();
                if (HasFatalFailure())
                        return;
                ASSERT_NO_FATAL_FAILURE(new_far_channel(&far));
        }
        void TearDown() override {
                pump.stop();
                far.reset();
                DropTest::TearDown();
        }
};

} /* namespace */

/* The remote sender learns of the drop: sends end in -EPIPE (the first few
 * may still succeed: the news travels), none blocks, and it stays -EPIPE. */
TEST_F(RemoteDropTest, RemoteSenderSeesEpipe) {
        Sender tx;
        Receiver rx;
        Sub near_dummy;

        ASSERT_NO_FATAL_FAILURE(bridge(far.get(), ch.get(), &tx, &rx));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &near_dummy));
        rx.reset();
        uint64_t deadline = test_now_usec() + 5000000;
        int r;
        for (;;) {
                uint64_t t0 = test_now_usec();
                r = ipcmux_sender_send_bytes(tx.get(), "x", 1);
                EXPECT_LT(test_now_usec() - t0, (uint64_t) 1000000) << "send blocked";
                if (r != 0 || test_now_usec() > deadline)
                        break;
                /* Let the near connection read what has arrived. */
                Message m;
                (void) ipcmux_receiver_try_recv_timeout(near_dummy.rx.get(), 1000, out(m));
        }
        EXPECT_EQ(r, -EPIPE);
        expect_send_epipe(tx.get(), "after the first -EPIPE");
        expect_send_epipe(tx.get(), "and again");
}

/* fds that travelled through the bus to a far receiver are closed when it
 * is dropped unread: those already queued are discarded, those still on
 * their way are refused for a gone receiver. */
TEST_F(RemoteDropTest, QueuedFdsReleasedRemote) {
        Sender tx;
        Receiver rx;
        Pipe p;
        Message first;
        int before = test_count_fds();

        ASSERT_NO_FATAL_FAILURE(bridge(far.get(), ch.get(), &tx, &rx));
        ASSERT_NO_FATAL_FAILURE(new_pipe(&p));
        for (int i = 0; i < 100; i++)
                ASSERT_NO_FATAL_FAILURE(send_with(tx.get(), std::to_string(i), {}, {p.rd.fd}));
        p.rd.reset();
        tx.reset(); /* the last sender: flushes everything to the bus */
        /* The first one arrives with its fd... */
        ASSERT_OK(recv_bounded(rx.get(), out(first)));
        EXPECT_EQ(msg_str(first.get()), "0");
        EXPECT_EQ(ipcmux_message_get_n_fds(first.get()), 1u);
        first.reset();
        EXPECT_FALSE(readers_gone(p.wr.fd)) << "99 read ends are queued or on their way";
        /* ...the other 99 are dropped with the receiver, read or not. */
        ASSERT_NO_FATAL_FAILURE(pump.start(far.get()));
        rx.reset();
        uint64_t deadline = test_now_usec() + 5000000;
        while (!readers_gone(p.wr.fd) && test_now_usec() < deadline)
                std::this_thread::sleep_for(std::chrono::milliseconds(1));
        EXPECT_TRUE(readers_gone(p.wr.fd)) << "fds sent to a dropped remote receiver still open";
        pump.stop();
        p.wr.reset();
        EXPECT_EQ(test_count_fds(), before);
}

/* Senders that travelled through the bus and sit unreceived in a far queue
 * are released when the far receiver is dropped: the near subchannel whose
 * last holders they were disconnects. */
TEST_F(RemoteDropTest, QueuedSendersReleasedRemote) {
        Sender tx;
        Receiver rx;
        Sub target;

        ASSERT_NO_FATAL_FAILURE(bridge(far.get(), ch.get(), &tx, &rx));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &target));
        for (int i = 0; i < 10; i++)
                ASSERT_NO_FATAL_FAILURE(send_with(tx.get(), "", {target.tx.get()}));
        target.tx.reset();
        EXPECT_EQ(try_recv_state(target.rx.get()), -EAGAIN) << "copies in flight hold it";
        /* Receive one so the far side has certainly read the first carrier. */
        {
                Message m;
                Sender s;
                ASSERT_OK(recv_bounded(rx.get(), out(m)));
                ASSERT_OK(ipcmux_message_take_sender(m.get(), 0, out(s)));
                ASSERT_NO_FATAL_FAILURE(send_str(s.get(), "from far"));
        }
        EXPECT_EQ(recv_str(target.rx.get()), "from far");
        ASSERT_NO_FATAL_FAILURE(pump.start(far.get()));
        rx.reset();
        EXPECT_EQ(recv_error(target.rx.get()), -EPIPE);
}
