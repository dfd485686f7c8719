/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Channels and subchannels through the public API, in one process: the
 * reference's (ipc-channel-mux src/mux_test.rs) basic multiplexing, bytes,
 * scale, embedded-sender and in-flight tests, the message and attachment
 * API, receiver paths, NULL handling, and threads (senders moved to and
 * cloned across threads, a receiver blocked while the last sender goes).
 *
 * In one process every channel from ipcmux_channel_new() shares one
 * connection, so "two Channels" of the reference are two ipcmux channels on
 * that connection.  The last section repeats the in-flight tests across two
 * connections of this process (ipcmux_channel_new_for_bus()), where the
 * messages really travel through the bus.
 *
 * Reference names are kept in comments above the ported tests.
 */

#include <fcntl.h>
#include <stdint.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <set>
#include <thread>
#include <utility>

#include "test-util.h"

namespace {

void recv_msg(ipcmux_receiver *rx, Message *m) {
        m->reset();
        ASSERT_OK(recv_bounded(rx, out(*m)));
        ASSERT_NE(*m, nullptr);
}

/* Receive a message carrying exactly one sender and take that sender. */
void recv_sender(ipcmux_receiver *rx, Sender *s, std::string *payload = nullptr) {
        Message m;
        ASSERT_NO_FATAL_FAILURE(recv_msg(rx, &m));
        ASSERT_EQ(ipcmux_message_get_n_senders(m.get()), 1u);
        ASSERT_OK(ipcmux_message_take_sender(m.get(), 0, out(*s)));
        ASSERT_NE(*s, nullptr);
        if (payload)
                *payload = msg_str(m.get());
}

std::string person(const char *name, uint32_t age) {
        std::string s(name);
        s.push_back('\0');
        s.append((const char *) &age, sizeof(age));
        return s;
}

bool is_lower_hex(const std::string &s) {
        for (char ch : s)
                if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f')))
                        return false;
        return true;
}

} /* namespace */

/* ---- basic multiplexing -------------------------------------------------- */

/* multiplex_simple */
TEST_F(ChannelTest, MultiplexSimple) {
        Sub s;
        Message m;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), person("Patrick Walton", 29)));
        ASSERT_OK(ipcmux_receiver_recv(s.rx.get(), out(m)));
        EXPECT_EQ(msg_str(m.get()), person("Patrick Walton", 29));
        s.tx.reset();
        m.reset();
        /* Nothing queued and no sender: recv must not block. */
        EXPECT_EQ(ipcmux_receiver_recv(s.rx.get(), out(m)), -EPIPE);
        EXPECT_EQ(m, nullptr);
}

/* multiplex_two_subchannels */
TEST_F(ChannelTest, MultiplexTwoSubchannels) {
        Sub a, b;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &a));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &b));
        ASSERT_NO_FATAL_FAILURE(send_str(a.tx.get(), "1"));
        EXPECT_EQ(recv_str(a.rx.get()), "1");
        ASSERT_NO_FATAL_FAILURE(send_str(b.tx.get(), "2"));
        EXPECT_EQ(recv_str(b.rx.get()), "2");
        EXPECT_EQ(try_recv_state(a.rx.get()), -EAGAIN);
        EXPECT_EQ(try_recv_state(b.rx.get()), -EAGAIN);
}

/* multiplex_two_subchannels_reverse_ordered: no head-of-line blocking */
TEST_F(ChannelTest, MultiplexTwoSubchannelsReverseOrdered) {
        Sub a, b;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &a));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &b));
        ASSERT_NO_FATAL_FAILURE(send_str(a.tx.get(), "1"));
        ASSERT_NO_FATAL_FAILURE(send_str(b.tx.get(), "2"));
        EXPECT_EQ(recv_str(b.rx.get()), "2");
        EXPECT_EQ(recv_str(a.rx.get()), "1");
}

/* mux_integration_test muxing: two subchannels of different "types" */
TEST_F(ChannelTest, Muxing) {
        Sub a, b;
        uint8_t v = 45;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &a));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &b));
        ASSERT_OK(ipcmux_sender_send_bytes(a.tx.get(), &v, 1));
        ASSERT_NO_FATAL_FAILURE(send_str(b.tx.get(), "bananas"));
        EXPECT_EQ(recv_str(a.rx.get()), std::string(1, (char) 45));
        EXPECT_EQ(recv_str(b.rx.get()), "bananas");
}

/* Many subchannels interleaved: each receiver sees exactly its own messages. */
TEST_F(ChannelTest, InterleavedSubchannelsKeepTheirOwnOrder) {
        const int N = 16, K = 50;
        std::vector<Sub> subs(N);

        for (auto &s : subs)
                ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        for (int k = 0; k < K; k++)
                for (int i = 0; i < N; i++)
                        ASSERT_NO_FATAL_FAILURE(send_str(subs[i].tx.get(), std::to_string(i) + ":" + std::to_string(k)));
        for (int i = N - 1; i >= 0; i--) {
                for (int k = 0; k < K; k++)
                        ASSERT_EQ(recv_str(subs[i].rx.get()), std::to_string(i) + ":" + std::to_string(k));
                EXPECT_EQ(try_recv_state(subs[i].rx.get()), -EAGAIN);
        }
}

/* ---- bytes --------------------------------------------------------------- */

/* bytes_simple */
TEST_F(ChannelTest, BytesSimple) {
        const uint8_t data[] = {1, 2, 3, 4, 5, 6, 7};
        Sub s;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        ASSERT_OK(ipcmux_sender_send_bytes(s.tx.get(), data, sizeof(data)));
        EXPECT_EQ(recv_str(s.rx.get()), std::string((const char *) data, sizeof(data)));
}

/* bytes_empty */
TEST_F(ChannelTest, BytesEmpty) {
        Sub s;
        Message m;
        size_t n = 12345;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        ASSERT_OK(ipcmux_sender_send_bytes(s.tx.get(), nullptr, 0));
        ASSERT_OK(ipcmux_sender_send_bytes(s.tx.get(), "", 0));
        for (int i = 0; i < 2; i++) {
                ASSERT_NO_FATAL_FAILURE(recv_msg(s.rx.get(), &m));
                EXPECT_NE(ipcmux_message_get_data(m.get(), &n), nullptr);
                EXPECT_EQ(n, 0u);
                EXPECT_EQ(ipcmux_message_get_n_senders(m.get()), 0u);
                EXPECT_EQ(ipcmux_message_get_n_fds(m.get()), 0u);
                EXPECT_EQ(ipcmux_message_get_n_shmem(m.get()), 0u);
        }
        EXPECT_EQ(try_recv_state(s.rx.get()), -EAGAIN);
}

/* bytes_large: 64 KiB of (i % 256) */
TEST_F(ChannelTest, BytesLarge) {
        std::string data(65536, '\0');
        Sub s;

        for (size_t i = 0; i < data.size(); i++)
                data[i] = (char) (i % 256);
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        ASSERT_OK(ipcmux_sender_send_bytes(s.tx.get(), data.data(), data.size()));
        EXPECT_TRUE(recv_str(s.rx.get()) == data);
}

/* Payloads well above any inline limit still arrive intact and in order. */
TEST_F(ChannelTest, BytesVeryLarge) {
        const size_t sizes[] = {(size_t) 1 << 20, ((size_t) 4 << 20) + 3, 1};
        Sub s;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        for (size_t k = 0; k < 3; k++) {
                std::string data(sizes[k], '\0');
                for (size_t i = 0; i < data.size(); i++)
                        data[i] = (char) ((i * 7 + k) % 251);
                ASSERT_OK(ipcmux_sender_send_bytes(s.tx.get(), data.data(), data.size()));
        }
        for (size_t k = 0; k < 3; k++) {
                std::string got = recv_str(s.rx.get());
                ASSERT_EQ(got.size(), sizes[k]);
                for (size_t i = 0; i < got.size(); i++)
                        if (got[i] != (char) ((i * 7 + k) % 251))
                                FAIL() << "message " << k << " differs at byte " << i;
        }
}

/* bytes_multiple_messages */
TEST_F(ChannelTest, BytesMultipleMessages) {
        Sub s;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        for (const char *w : {"first", "second", "third"})
                ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), w));
        EXPECT_EQ(recv_str(s.rx.get()), "first");
        EXPECT_EQ(recv_str(s.rx.get()), "second");
        EXPECT_EQ(recv_str(s.rx.get()), "third");
        EXPECT_EQ(try_recv_state(s.rx.get()), -EAGAIN);
}

/* Order over many messages. */
TEST_F(ChannelTest, ManyMessagesInOrder) {
        const uint32_t N = 10000;
        Sub s;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        for (uint32_t i = 0; i < N; i++)
                ASSERT_OK(ipcmux_sender_send_bytes(s.tx.get(), &i, sizeof(i)));
        for (uint32_t i = 0; i < N; i++) {
                Message m;
                size_t n;
                uint32_t v;
                ASSERT_NO_FATAL_FAILURE(recv_msg(s.rx.get(), &m));
                const void *p = ipcmux_message_get_data(m.get(), &n);
                ASSERT_EQ(n, sizeof(v));
                memcpy(&v, p, sizeof(v));
                ASSERT_EQ(v, i);
        }
        EXPECT_EQ(try_recv_state(s.rx.get()), -EAGAIN);
}

/* bytes_two_subchannels */
TEST_F(ChannelTest, BytesTwoSubchannels) {
        Sub a, b;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &a));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &b));
        ASSERT_NO_FATAL_FAILURE(send_str(a.tx.get(), "one"));
        ASSERT_NO_FATAL_FAILURE(send_str(b.tx.get(), "two"));
        EXPECT_EQ(recv_str(b.rx.get()), "two");
        EXPECT_EQ(recv_str(a.rx.get()), "one");
}

/* bytes_odd_alignment: a 7-byte payload from an odd address */
TEST_F(ChannelTest, BytesOddAlignment) {
        alignas(16) char buf[32] = "_abcdefg";
        Sub s;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        ASSERT_OK(ipcmux_sender_send_bytes(s.tx.get(), buf + 1, 7));
        ASSERT_OK(ipcmux_sender_send_bytes(s.tx.get(), buf + 3, 5));
        EXPECT_EQ(recv_str(s.rx.get()), "abcdefg");
        EXPECT_EQ(recv_str(s.rx.get()), "cdefg");
}

/* bytes_binary_data: all 256 byte values, including NUL */
TEST_F(ChannelTest, BytesBinaryData) {
        std::string data;
        Sub s;

        for (int i = 0; i < 256; i++)
                data.push_back((char) i);
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        ASSERT_OK(ipcmux_sender_send_bytes(s.tx.get(), data.data(), data.size()));
        std::reverse(data.begin(), data.end());
        ASSERT_OK(ipcmux_sender_send_bytes(s.tx.get(), data.data(), data.size()));
        std::string first = recv_str(s.rx.get()), second = recv_str(s.rx.get());
        ASSERT_EQ(second, data);
        std::reverse(data.begin(), data.end());
        ASSERT_EQ(first, data);
}

/* The payload is copied at send time: the caller may reuse its buffer. */
TEST_F(ChannelTest, SendCopiesThePayload) {
        char buf[] = "original";
        Sub s;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        ASSERT_OK(ipcmux_sender_send_bytes(s.tx.get(), buf, 8));
        memcpy(buf, "CHANGED!", 8);
        EXPECT_EQ(recv_str(s.rx.get()), "original");
}

/* bytes_alongside_typed_subchannel */
TEST_F(ChannelTest, BytesAlongsideOtherSubchannel) {
        Sub typed, bytes;
        int32_t v = 42;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &typed));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &bytes));
        ASSERT_OK(ipcmux_sender_send_bytes(typed.tx.get(), &v, sizeof(v)));
        ASSERT_NO_FATAL_FAILURE(send_str(bytes.tx.get(), "hello"));
        EXPECT_EQ(recv_str(typed.rx.get()), std::string((const char *) &v, sizeof(v)));
        EXPECT_EQ(recv_str(bytes.rx.get()), "hello");
}

/* ---- senders: clones and disconnection ----------------------------------- */

/* bytes_sender_clone: original and clone both deliver, in send order */
TEST_F(ChannelTest, SenderClone) {
        Sub s;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        Sender c = clone(s.tx);
        ASSERT_EQ(c.get(), s.tx.get()) << "ipcmux_sender_ref returns its argument";
        ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), "from original"));
        ASSERT_NO_FATAL_FAILURE(send_str(c.get(), "from clone"));
        ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), "original again"));
        EXPECT_EQ(recv_str(s.rx.get()), "from original");
        EXPECT_EQ(recv_str(s.rx.get()), "from clone");
        EXPECT_EQ(recv_str(s.rx.get()), "original again");
}

/* multiplex_drop_only_subsender_for_channel, bytes_disconnect_on_sender_drop */
TEST_F(ChannelTest, DropOnlySenderDisconnects) {
        Sub s;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        s.tx.reset();
        EXPECT_EQ(recv_error(s.rx.get()), -EPIPE);
        /* Disconnection is permanent. */
        EXPECT_EQ(recv_error(s.rx.get()), -EPIPE);
        EXPECT_EQ(try_recv_state(s.rx.get()), -EPIPE);
}

/* multiplex_drop_cloned_subsender, bytes_disconnect_cloned_sender_partial_drop,
 * bytes_disconnect_all_cloned_senders_dropped */
TEST_F(ChannelTest, ClonedSenderPartialThenFullDrop) {
        Sub s;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        Sender c1 = clone(s.tx), c2 = clone(s.tx);
        c1.reset();
        EXPECT_EQ(try_recv_state(s.rx.get()), -EAGAIN);
        ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), "still alive"));
        EXPECT_EQ(recv_str(s.rx.get()), "still alive");
        s.tx.reset();
        EXPECT_EQ(try_recv_state(s.rx.get()), -EAGAIN) << "one clone is left";
        ASSERT_NO_FATAL_FAILURE(send_str(c2.get(), "last clone"));
        EXPECT_EQ(recv_str(s.rx.get()), "last clone");
        c2.reset();
        EXPECT_EQ(recv_error(s.rx.get()), -EPIPE);
}

/* stress sender_clone_and_partial_drop: 10 clones, drop half, 5 values, then all */
TEST_F(ChannelTest, TenClonesDropHalf) {
        Sub s;
        std::vector<Sender> clones;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        for (int i = 0; i < 10; i++)
                clones.push_back(clone(s.tx));
        s.tx.reset();
        clones.erase(clones.begin(), clones.begin() + 5);
        for (int i = 0; i < 5; i++)
                ASSERT_NO_FATAL_FAILURE(send_str(clones[i].get(), std::to_string(i)));
        for (int i = 0; i < 5; i++)
                EXPECT_EQ(recv_str(s.rx.get()), std::to_string(i));
        EXPECT_EQ(try_recv_state(s.rx.get()), -EAGAIN);
        clones.clear();
        EXPECT_EQ(recv_error(s.rx.get()), -EPIPE);
}

/* bytes_buffered_messages_before_disconnect */
TEST_F(ChannelTest, BufferedMessagesBeforeDisconnect) {
        Sub s;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), "one"));
        ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), "two"));
        s.tx.reset();
        EXPECT_EQ(recv_str(s.rx.get()), "one");
        EXPECT_EQ(recv_str(s.rx.get()), "two");
        EXPECT_EQ(recv_error(s.rx.get()), -EPIPE);
}

/* ---- scale --------------------------------------------------------------- */

/* creating_many_subchannels: 10,000 retained subchannels cost no fd */
TEST_F(ChannelTest, CreatingManySubchannels) {
        const int N = 10000;
        std::vector<Sub> subs(N);
        int before = test_count_fds();

        ASSERT_GE(before, 0);
        for (int i = 0; i < N; i++)
                ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &subs[i]));
        EXPECT_EQ(test_count_fds(), before) << "subchannels must not open fds";
        /* All retained subchannels work. */
        for (int i = 0; i < N; i++)
                ASSERT_OK(ipcmux_sender_send_bytes(subs[i].tx.get(), &i, sizeof(i)));
        for (int i = N - 1; i >= 0; i--) {
                Message m;
                size_t n;
                ASSERT_NO_FATAL_FAILURE(recv_msg(subs[i].rx.get(), &m));
                const void *p = ipcmux_message_get_data(m.get(), &n);
                ASSERT_EQ(n, sizeof(int));
                ASSERT_EQ(memcmp(p, &i, sizeof(i)), 0);
        }
        EXPECT_EQ(test_count_fds(), before);
        /* All paths distinct. */
        std::set<std::string> paths;
        for (auto &s : subs)
                paths.insert(ipcmux_receiver_get_path(s.rx.get()));
        EXPECT_EQ(paths.size(), (size_t) N);
}

/* 50 channels x 200 subchannels cost at most 4 fds more than one channel. */
TEST_F(ChannelTest, ManyChannelsShareOneConnection) {
        std::vector<Channel> chans(50);
        std::vector<Sub> subs;
        int before = test_count_fds();

        ASSERT_GE(before, 0);
        subs.reserve(50 * 200);
        for (auto &c : chans) {
                ASSERT_NO_FATAL_FAILURE(new_channel(&c));
                for (int i = 0; i < 200; i++) {
                        subs.emplace_back();
                        ASSERT_NO_FATAL_FAILURE(new_sub(c.get(), &subs.back()));
                }
        }
        int after = test_count_fds();
        EXPECT_LE(after - before, 4) << before << " fds before, " << after << " after";
        /* Every channel has its own prefix; all share one unique name. */
        std::set<std::string> prefixes;
        for (auto &c : chans) {
                prefixes.insert(ipcmux_channel_get_prefix(c.get()));
                EXPECT_STREQ(ipcmux_channel_get_unique_name(c.get()), ipcmux_channel_get_unique_name(ch.get()));
                EXPECT_EQ(ipcmux_channel_get_bus(c.get()), ipcmux_channel_get_bus(ch.get()));
        }
        EXPECT_EQ(prefixes.size(), chans.size());
        /* A sample of them work. */
        for (size_t i = 0; i < subs.size(); i += 97) {
                ASSERT_NO_FATAL_FAILURE(send_str(subs[i].tx.get(), std::to_string(i)));
                EXPECT_EQ(recv_str(subs[i].rx.get()), std::to_string(i));
        }
}

/* receiving_many_subchannels (one process): 10,000 senders arrive inside
 * messages, a second thread answers on each and retains them all. */
TEST_F(ChannelTest, ReceivingManySubchannels) {
        constexpr int N = 10000;
        Sub carrier, reply;
        int before = test_count_fds();

        ASSERT_GE(before, 0);
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &carrier));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &reply));

        ipcmux_receiver *carrier_rx = carrier.rx.get();
        auto client = std::async(std::launch::async, [carrier_rx]() -> std::string {
                std::vector<Sender> retained;
                for (int i = 0; i < N; i++) {
                        Message m;
                        Sender s;
                        int r = recv_bounded(carrier_rx, out(m));
                        if (r < 0)
                                return "recv " + std::to_string(i) + ": " + strerror(-r);
                        r = ipcmux_message_take_sender(m.get(), 0, out(s));
                        if (r < 0)
                                return "take " + std::to_string(i) + ": " + strerror(-r);
                        uint8_t yes = 1;
                        r = ipcmux_sender_send_bytes(s.get(), &yes, 1);
                        if (r < 0)
                                return "reply " + std::to_string(i) + ": " + strerror(-r);
                        retained.push_back(std::move(s));
                }
                return "";
        });
        for (int i = 0; i < N; i++)
                ASSERT_NO_FATAL_FAILURE(send_with(carrier.tx.get(), "", {reply.tx.get()}));
        int ok = 0;
        for (int i = 0; i < N; i++)
                if (recv_str(reply.rx.get()) == std::string(1, '\1'))
                        ok++;
        EXPECT_EQ(ok, N);
        ASSERT_EQ(client.wait_for(std::chrono::seconds(60)), std::future_status::ready);
        EXPECT_EQ(client.get(), "");
        EXPECT_EQ(test_count_fds(), before);
        /* The client dropped every copy; ours is the last. */
        EXPECT_EQ(try_recv_state(reply.rx.get()), -EAGAIN);
        reply.tx.reset();
        EXPECT_EQ(recv_error(reply.rx.get()), -EPIPE);
}

/* stress rapid_channel_create_destroy */
TEST_F(BusTest, RapidChannelCreateDestroy) {
        for (int i = 0; i < 500; i++) {
                Channel c;
                Sub s;
                ASSERT_NO_FATAL_FAILURE(new_channel(&c));
                ASSERT_NO_FATAL_FAILURE(new_sub(c.get(), &s));
                ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), std::to_string(i)));
                ASSERT_EQ(recv_str(s.rx.get()), std::to_string(i));
                /* Alternate the order things go away in. */
                if (i % 3 == 0) {
                        c.reset();
                        s.tx.reset();
                } else if (i % 3 == 1) {
                        s.rx.reset();
                        c.reset();
                }
        }
}

/* ---- channel dropped before its subchannels ------------------------------ */

/* multiplex_drop_only_subsender_for_dropped_channel */
TEST_F(ChannelTest, DropOnlySenderOfDroppedChannel) {
        Sub s;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        ch.reset();
        s.tx.reset();
        EXPECT_EQ(recv_error(s.rx.get()), -EPIPE);
}

/* Dropping the channel does not disconnect subchannels already created. */
TEST_F(ChannelTest, SubchannelsOutliveTheirChannel) {
        Sub a, b;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &a));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &b));
        std::string path = ipcmux_receiver_get_path(a.rx.get());
        ch.reset();
        EXPECT_EQ(try_recv_state(a.rx.get()), -EAGAIN);
        ASSERT_NO_FATAL_FAILURE(send_str(a.tx.get(), "after channel drop"));
        EXPECT_EQ(recv_str(a.rx.get()), "after channel drop");
        EXPECT_EQ(ipcmux_receiver_get_path(a.rx.get()), path);
        /* Senders travel between subchannels of a dropped channel too. */
        ASSERT_NO_FATAL_FAILURE(send_with(b.tx.get(), "carrier", {a.tx.get()}));
        a.tx.reset();
        Sender got;
        ASSERT_NO_FATAL_FAILURE(recv_sender(b.rx.get(), &got));
        ASSERT_NO_FATAL_FAILURE(send_str(got.get(), "via received copy"));
        EXPECT_EQ(recv_str(a.rx.get()), "via received copy");
        got.reset();
        EXPECT_EQ(recv_error(a.rx.get()), -EPIPE);
}

/* multiplex_drop_only_subsender_for_subchannel_of_dropped_channel (with the
 * channel really dropped) and multiplex_drop_only_subsender_for_subchannel */
TEST_F(ChannelTest, DropOnlySenderOfOneSubchannel) {
        for (bool drop_channel : {false, true}) {
                SCOPED_TRACE(drop_channel ? "channel dropped" : "channel kept");
                Channel c;
                Sub a, b;

                ASSERT_NO_FATAL_FAILURE(new_channel(&c));
                ASSERT_NO_FATAL_FAILURE(new_sub(c.get(), &a));
                ASSERT_NO_FATAL_FAILURE(new_sub(c.get(), &b));
                if (drop_channel)
                        c.reset();
                a.tx.reset();
                EXPECT_EQ(recv_error(a.rx.get()), -EPIPE);
                ASSERT_NO_FATAL_FAILURE(send_str(b.tx.get(), "1"));
                EXPECT_EQ(recv_str(b.rx.get()), "1");
        }
}

/* A new subchannel on a channel whose other subchannels are all gone. */
TEST_F(ChannelTest, ChannelReusableAfterSubchannelsGone) {
        for (int round = 0; round < 3; round++) {
                Sub s;
                ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
                ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), "round"));
                EXPECT_EQ(recv_str(s.rx.get()), "round");
        }
}

/* ---- names and paths ----------------------------------------------------- */

TEST_F(ChannelTest, ReceiverPathFormat) {
        Sub a, b;
        Channel other;
        std::string prefix = ipcmux_channel_get_prefix(ch.get());

        ASSERT_NO_FATAL_FAILURE(new_channel(&other));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &a));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &b));

        EXPECT_GT(sd_bus_object_path_is_valid(prefix.c_str()), 0) << prefix;
        EXPECT_NE(prefix, ipcmux_channel_get_prefix(other.get()));

        for (Sub *s : {&a, &b}) {
                std::string path = ipcmux_receiver_get_path(s->rx.get());
                SCOPED_TRACE(path);
                EXPECT_GT(sd_bus_object_path_is_valid(path.c_str()), 0);
                ASSERT_EQ(path.size(), prefix.size() + 1 + 16);
                EXPECT_EQ(path.compare(0, prefix.size(), prefix), 0);
                EXPECT_EQ(path[prefix.size()], '/');
                EXPECT_TRUE(is_lower_hex(path.substr(prefix.size() + 1)));
                /* The sender names its receiver. */
                EXPECT_STREQ(ipcmux_sender_get_path(s->tx.get()), path.c_str());
                EXPECT_STREQ(ipcmux_sender_get_destination(s->tx.get()), ipcmux_channel_get_unique_name(ch.get()));
                /* The path is stable. */
                EXPECT_EQ(ipcmux_receiver_get_path(s->rx.get()), path);
        }
        EXPECT_STRNE(ipcmux_receiver_get_path(a.rx.get()), ipcmux_receiver_get_path(b.rx.get()));

        const char *name = ipcmux_channel_get_unique_name(ch.get());
        ASSERT_NE(name, nullptr);
        EXPECT_EQ(name[0], ':');
        ASSERT_NE(ipcmux_channel_get_bus(ch.get()), nullptr);
        const char *bus_name = nullptr;
        ASSERT_OK(sd_bus_get_unique_name(ipcmux_channel_get_bus(ch.get()), &bus_name));
        EXPECT_STREQ(bus_name, name);
}

/* A received sender copy names the same receiver. */
TEST_F(ChannelTest, ReceivedSenderNamesSameReceiver) {
        Sub carrier, target;
        Sender got;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &carrier));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &target));
        ASSERT_NO_FATAL_FAILURE(send_with(carrier.tx.get(), "", {target.tx.get()}));
        ASSERT_NO_FATAL_FAILURE(recv_sender(carrier.rx.get(), &got));
        EXPECT_STREQ(ipcmux_sender_get_path(got.get()), ipcmux_receiver_get_path(target.rx.get()));
        EXPECT_STREQ(ipcmux_sender_get_destination(got.get()), ipcmux_channel_get_unique_name(ch.get()));
}

/* ---- NULL handling ------------------------------------------------------- */

TEST_F(ChannelTest, NullHandling) {
        Sub s;
        Message m;
        ipcmux_sender *tx_sentinel = (ipcmux_sender *) 0x1;
        ipcmux_receiver *rx_sentinel = (ipcmux_receiver *) 0x1;
        ipcmux_message *m_sentinel = (ipcmux_message *) 0x1;

        EXPECT_EQ(ipcmux_channel_unref(nullptr), nullptr);
        EXPECT_EQ(ipcmux_sender_unref(nullptr), nullptr);
        EXPECT_EQ(ipcmux_receiver_unref(nullptr), nullptr);
        EXPECT_EQ(ipcmux_message_unref(nullptr), nullptr);
        EXPECT_EQ(ipcmux_shmem_unref(nullptr), nullptr);
        EXPECT_EQ(ipcmux_server_unref(nullptr), nullptr);
        EXPECT_EQ(ipcmux_channel_ref(nullptr), nullptr);
        EXPECT_EQ(ipcmux_sender_ref(nullptr), nullptr);
        EXPECT_EQ(ipcmux_message_ref(nullptr), nullptr);
        EXPECT_EQ(ipcmux_shmem_ref(nullptr), nullptr);

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        ASSERT_OK(ipcmux_message_new(out(m)));

        EXPECT_EQ(ipcmux_channel_new(nullptr), -EINVAL);
        EXPECT_EQ(ipcmux_channel_new_for_bus(nullptr, nullptr), -EINVAL);
        EXPECT_EQ(ipcmux_channel_sub_channel(nullptr, &tx_sentinel, &rx_sentinel), -EINVAL);
        EXPECT_EQ(ipcmux_channel_sub_channel(ch.get(), nullptr, &rx_sentinel), -EINVAL);
        EXPECT_EQ(ipcmux_channel_sub_channel(ch.get(), &tx_sentinel, nullptr), -EINVAL);
        EXPECT_EQ(tx_sentinel, (ipcmux_sender *) 0x1) << "out-parameter touched on failure";
        EXPECT_EQ(rx_sentinel, (ipcmux_receiver *) 0x1) << "out-parameter touched on failure";

        EXPECT_EQ(ipcmux_sender_send(nullptr, m.get()), -EINVAL);
        EXPECT_EQ(ipcmux_sender_send(s.tx.get(), nullptr), -EINVAL);
        EXPECT_EQ(ipcmux_sender_send_bytes(nullptr, "x", 1), -EINVAL);
        EXPECT_EQ(ipcmux_sender_send_bytes(s.tx.get(), nullptr, 1), -EINVAL);

        EXPECT_EQ(ipcmux_receiver_recv(nullptr, &m_sentinel), -EINVAL);
        EXPECT_EQ(ipcmux_receiver_recv(s.rx.get(), nullptr), -EINVAL);
        EXPECT_EQ(ipcmux_receiver_try_recv(nullptr, &m_sentinel), -EINVAL);
        EXPECT_EQ(ipcmux_receiver_try_recv(s.rx.get(), nullptr), -EINVAL);
        EXPECT_EQ(ipcmux_receiver_try_recv_timeout(nullptr, 0, &m_sentinel), -EINVAL);
        EXPECT_EQ(ipcmux_receiver_try_recv_timeout(s.rx.get(), 0, nullptr), -EINVAL);
        EXPECT_EQ(m_sentinel, (ipcmux_message *) 0x1) << "out-parameter touched on failure";

        EXPECT_EQ(ipcmux_message_new(nullptr), -EINVAL);
        EXPECT_EQ(ipcmux_message_append(nullptr, "x", 1), -EINVAL);
        EXPECT_EQ(ipcmux_message_append(m.get(), nullptr, 1), -EINVAL);
        EXPECT_EQ(ipcmux_message_attach_sender(nullptr, s.tx.get()), -EINVAL);
        EXPECT_EQ(ipcmux_message_attach_sender(m.get(), nullptr), -EINVAL);
        EXPECT_EQ(ipcmux_message_attach_shmem(m.get(), nullptr), -EINVAL);
        EXPECT_EQ(ipcmux_message_take_sender(m.get(), 0, nullptr), -EINVAL);
        EXPECT_EQ(ipcmux_message_take_sender(nullptr, 0, &tx_sentinel), -EINVAL);
        EXPECT_EQ(ipcmux_message_take_fd(nullptr, 0, nullptr), -EINVAL);
        EXPECT_EQ(ipcmux_message_take_shmem(nullptr, 0, nullptr), -EINVAL);
        EXPECT_EQ(tx_sentinel, (ipcmux_sender *) 0x1) << "out-parameter touched on failure";

        /* None of the failures above changed anything. */
        size_t n = 99;
        EXPECT_NE(ipcmux_message_get_data(m.get(), &n), nullptr);
        EXPECT_EQ(n, 0u);
        EXPECT_EQ(ipcmux_message_get_n_senders(m.get()), 0u);
        ASSERT_NO_FATAL_FAILURE(send_str(s.tx.get(), "still fine"));
        EXPECT_EQ(recv_str(s.rx.get()), "still fine");
        EXPECT_EQ(ipcmux_message_get_n_senders(nullptr), 0u);
        EXPECT_EQ(ipcmux_message_get_n_fds(nullptr), 0u);
        EXPECT_EQ(ipcmux_message_get_n_shmem(nullptr), 0u);
}

/* ---- the message API ----------------------------------------------------- */

TEST_F(ChannelTest, MessageAppendAndGetData) {
        Message m;
        size_t n = 99;

        ASSERT_OK(ipcmux_message_new(out(m)));
        const void *p = ipcmux_message_get_data(m.get(), &n);
        EXPECT_NE(p, nullptr) << "an empty message still has a valid pointer";
        EXPECT_EQ(n, 0u);
        EXPECT_NE(ipcmux_message_get_data(m.get(), nullptr), nullptr) << "ret_size may be NULL";

        ASSERT_OK(ipcmux_message_append(m.get(), "hello, ", 7));
        ASSERT_OK(ipcmux_message_append(m.get(), nullptr, 0));
        ASSERT_OK(ipcmux_message_append(m.get(), "world", 5));
        EXPECT_EQ(msg_str(m.get()), "hello, world");

        /* Growing through many appends keeps every byte. */
        std::string expect = "hello, world";
        for (int i = 0; i < 1000; i++) {
                std::string piece = std::to_string(i) + ",";
                ASSERT_OK(ipcmux_message_append(m.get(), piece.data(), piece.size()));
                expect += piece;
        }
        EXPECT_EQ(msg_str(m.get()), expect);

        /* ref/unref */
        ipcmux_message *r = ipcmux_message_ref(m.get());
        EXPECT_EQ(r, m.get());
        EXPECT_EQ(ipcmux_message_unref(r), nullptr);
        EXPECT_EQ(msg_str(m.get()), expect);
}

/* The message stays the caller's: it can be sent twice, and a received
 * message can be appended to (its payload is copied on write). */
TEST_F(ChannelTest, MessageReusableAfterSend) {
        Sub s;
        Message m, got;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        ASSERT_OK(ipcmux_message_new(out(m)));
        ASSERT_OK(ipcmux_message_append(m.get(), "abc", 3));
        ASSERT_OK(ipcmux_sender_send(s.tx.get(), m.get()));
        ASSERT_OK(ipcmux_message_append(m.get(), "def", 3));
        ASSERT_OK(ipcmux_sender_send(s.tx.get(), m.get()));
        EXPECT_EQ(msg_str(m.get()), "abcdef");
        EXPECT_EQ(recv_str(s.rx.get()), "abc");
        ASSERT_NO_FATAL_FAILURE(recv_msg(s.rx.get(), &got));
        EXPECT_EQ(msg_str(got.get()), "abcdef");
        ASSERT_OK(ipcmux_message_append(got.get(), "ghi", 3));
        EXPECT_EQ(msg_str(got.get()), "abcdefghi");
        /* ...and sent on. */
        ASSERT_OK(ipcmux_sender_send(s.tx.get(), got.get()));
        EXPECT_EQ(recv_str(s.rx.get()), "abcdefghi");
}

/* An empty received message: valid pointer, size 0. */
TEST_F(ChannelTest, EmptyMessageRoundTrip) {
        Sub s;
        Message m, got;
        size_t n = 99;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        ASSERT_OK(ipcmux_message_new(out(m)));
        ASSERT_OK(ipcmux_sender_send(s.tx.get(), m.get()));
        ASSERT_NO_FATAL_FAILURE(recv_msg(s.rx.get(), &got));
        EXPECT_NE(ipcmux_message_get_data(got.get(), &n), nullptr);
        EXPECT_EQ(n, 0u);
}

/* Attachment indices: dense, per kind, 0-based; taken -> -ENXIO; out of
 * range -> -EINVAL; the same object twice gets two indices. */
TEST_F(ChannelTest, AttachmentIndices) {
        Sub a, b;
        Message m;
        Shmem r1, r2;
        int p[2];

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &a));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &b));
        ASSERT_OK(ipcmux_message_new(out(m)));
        ASSERT_OK(pipe2(p, O_CLOEXEC));
        Fd rd(p[0]), wr(p[1]);
        ASSERT_OK(ipcmux_shmem_new_from_bytes("r1", 2, out(r1)));
        ASSERT_OK(ipcmux_shmem_new_from_bytes("r2", 2, out(r2)));

        EXPECT_EQ(ipcmux_message_attach_sender(m.get(), a.tx.get()), 0);
        EXPECT_EQ(ipcmux_message_attach_fd(m.get(), rd.fd), 0);
        EXPECT_EQ(ipcmux_message_attach_sender(m.get(), b.tx.get()), 1);
        EXPECT_EQ(ipcmux_message_attach_shmem(m.get(), r1.get()), 0);
        EXPECT_EQ(ipcmux_message_attach_sender(m.get(), a.tx.get()), 2);
        EXPECT_EQ(ipcmux_message_attach_fd(m.get(), wr.fd), 1);
        EXPECT_EQ(ipcmux_message_attach_shmem(m.get(), r2.get()), 1);
        EXPECT_EQ(ipcmux_message_attach_fd(m.get(), rd.fd), 2);
        EXPECT_EQ(ipcmux_message_get_n_senders(m.get()), 3u);
        EXPECT_EQ(ipcmux_message_get_n_fds(m.get()), 3u);
        EXPECT_EQ(ipcmux_message_get_n_shmem(m.get()), 2u);

        /* Out of range. */
        Sender s_bad;
        int fd_bad = -7;
        Shmem r_bad;
        EXPECT_EQ(ipcmux_message_take_sender(m.get(), 3, out(s_bad)), -EINVAL);
        EXPECT_EQ(ipcmux_message_take_fd(m.get(), 3, &fd_bad), -EINVAL);
        EXPECT_EQ(ipcmux_message_take_shmem(m.get(), 2, out(r_bad)), -EINVAL);
        EXPECT_EQ(ipcmux_message_take_sender(m.get(), UINT32_MAX, out(s_bad)), -EINVAL);
        EXPECT_EQ(s_bad, nullptr);
        EXPECT_EQ(fd_bad, -7);
        EXPECT_EQ(r_bad, nullptr);

        /* Take once, then -ENXIO; counts and other indices unchanged. */
        Sender s1;
        ASSERT_OK(ipcmux_message_take_sender(m.get(), 1, out(s1)));
        EXPECT_STREQ(ipcmux_sender_get_path(s1.get()), ipcmux_receiver_get_path(b.rx.get()));
        Sender s1_again;
        EXPECT_EQ(ipcmux_message_take_sender(m.get(), 1, out(s1_again)), -ENXIO);
        EXPECT_EQ(s1_again, nullptr);
        EXPECT_EQ(ipcmux_message_get_n_senders(m.get()), 3u);

        int fd1 = -1;
        ASSERT_OK(ipcmux_message_take_fd(m.get(), 1, &fd1));
        Fd taken(fd1);
        EXPECT_NE(fd1, wr.fd) << "attach_fd dups";
        EXPECT_TRUE(fcntl(fd1, F_GETFD) & FD_CLOEXEC);
        int fd_again = -7;
        EXPECT_EQ(ipcmux_message_take_fd(m.get(), 1, &fd_again), -ENXIO);
        EXPECT_EQ(fd_again, -7);
        EXPECT_EQ(ipcmux_message_get_n_fds(m.get()), 3u);
        /* fd index 1 is the write end: it writes into our pipe. */
        ASSERT_EQ(write(fd1, "x", 1), 1);
        char c = 0;
        ASSERT_EQ(read(rd.fd, &c, 1), 1);
        EXPECT_EQ(c, 'x');

        Shmem got_r;
        ASSERT_OK(ipcmux_message_take_shmem(m.get(), 0, out(got_r)));
        EXPECT_EQ(ipcmux_shmem_equal(got_r.get(), r1.get()), 1);
        Shmem got_r_again;
        EXPECT_EQ(ipcmux_message_take_shmem(m.get(), 0, out(got_r_again)), -ENXIO);
        EXPECT_EQ(ipcmux_message_get_n_shmem(m.get()), 2u);
}

/* At the receiver, indices are the sender's: each kind in attach order. */
TEST_F(ChannelTest, AttachmentIndicesSurviveTransfer) {
        Sub carrier, a, b;
        Message m, got;
        int p1[2], p2[2];
        Shmem r1, r2;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &carrier));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &a));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &b));
        ASSERT_OK(pipe2(p1, O_CLOEXEC));
        Fd rd1(p1[0]), wr1(p1[1]);
        ASSERT_OK(pipe2(p2, O_CLOEXEC));
        Fd rd2(p2[0]), wr2(p2[1]);
        ASSERT_OK(ipcmux_shmem_new_from_bytes("first", 5, out(r1)));
        ASSERT_OK(ipcmux_shmem_new_from_bytes("second", 6, out(r2)));

        ASSERT_NO_FATAL_FAILURE(build(&m, "payload", {b.tx.get(), a.tx.get(), b.tx.get()}));
        ASSERT_EQ(ipcmux_message_attach_fd(m.get(), wr2.fd), 0);
        ASSERT_EQ(ipcmux_message_attach_fd(m.get(), wr1.fd), 1);
        ASSERT_EQ(ipcmux_message_attach_shmem(m.get(), r2.get()), 0);
        ASSERT_EQ(ipcmux_message_attach_shmem(m.get(), r1.get()), 1);
        ASSERT_OK(ipcmux_sender_send(carrier.tx.get(), m.get()));
        m.reset();

        ASSERT_NO_FATAL_FAILURE(recv_msg(carrier.rx.get(), &got));
        EXPECT_EQ(msg_str(got.get()), "payload");
        ASSERT_EQ(ipcmux_message_get_n_senders(got.get()), 3u);
        ASSERT_EQ(ipcmux_message_get_n_fds(got.get()), 2u);
        ASSERT_EQ(ipcmux_message_get_n_shmem(got.get()), 2u);

        const char *expect_sender[] = {"b", "a", "b"};
        for (unsigned i = 0; i < 3; i++) {
                Sender s;
                ASSERT_OK(ipcmux_message_take_sender(got.get(), i, out(s)));
                ASSERT_NO_FATAL_FAILURE(send_str(s.get(), "via " + std::to_string(i)));
                Receiver &rx = expect_sender[i][0] == 'a' ? a.rx : b.rx;
                EXPECT_EQ(recv_str(rx.get()), "via " + std::to_string(i)) << "sender index " << i;
        }
        for (unsigned i = 0; i < 2; i++) {
                int fd = -1;
                ASSERT_OK(ipcmux_message_take_fd(got.get(), i, &fd));
                Fd f(fd);
                EXPECT_TRUE(fcntl(fd, F_GETFD) & FD_CLOEXEC);
                char tag = (char) ('0' + i);
                ASSERT_EQ(write(fd, &tag, 1), 1);
                /* index 0 was wr2, index 1 wr1 */
                Fd &rd = i == 0 ? rd2 : rd1;
                char c = 0;
                ASSERT_EQ(read(rd.fd, &c, 1), 1);
                EXPECT_EQ(c, tag) << "fd index " << i;
        }
        Shmem g0, g1;
        ASSERT_OK(ipcmux_message_take_shmem(got.get(), 0, out(g0)));
        ASSERT_OK(ipcmux_message_take_shmem(got.get(), 1, out(g1)));
        EXPECT_EQ(ipcmux_shmem_equal(g0.get(), r2.get()), 1);
        EXPECT_EQ(ipcmux_shmem_equal(g1.get(), r1.get()), 1);
        EXPECT_EQ(ipcmux_shmem_get_size(g0.get()), 6u);
        EXPECT_EQ(ipcmux_shmem_get_size(g1.get()), 5u);
}

/* The message holds its own copy of an attached sender. */
TEST_F(ChannelTest, MessageHoldsItsOwnSenderCopy) {
        Sub s;
        Message m;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        ASSERT_NO_FATAL_FAILURE(build(&m, "", {s.tx.get()}));
        s.tx.reset();
        EXPECT_EQ(try_recv_state(s.rx.get()), -EAGAIN) << "the message's copy keeps the subchannel open";
        /* Taking it hands the copy to us. */
        Sender taken;
        ASSERT_OK(ipcmux_message_take_sender(m.get(), 0, out(taken)));
        m.reset();
        EXPECT_EQ(try_recv_state(s.rx.get()), -EAGAIN);
        ASSERT_NO_FATAL_FAILURE(send_str(taken.get(), "from the message's copy"));
        EXPECT_EQ(recv_str(s.rx.get()), "from the message's copy");
        taken.reset();
        EXPECT_EQ(recv_error(s.rx.get()), -EPIPE);
}

/* What is never taken is released with the message. */
TEST_F(ChannelTest, UntakenSenderReleasedWithMessage) {
        Sub s;
        Message m;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        ASSERT_NO_FATAL_FAILURE(build(&m, "", {s.tx.get(), s.tx.get()}));
        s.tx.reset();
        EXPECT_EQ(try_recv_state(s.rx.get()), -EAGAIN);
        m.reset();
        EXPECT_EQ(recv_error(s.rx.get()), -EPIPE);
}

/* ---- embedded (transmitted) senders, one process -------------------------- */

/* embedded_multiplexed_senders */
TEST_F(ChannelTest, EmbeddedMultiplexedSenders) {
        Sub super, sub;
        Sender got;
        std::string payload;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &super));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &sub));
        ASSERT_NO_FATAL_FAILURE(send_with(super.tx.get(), person("Patrick Walton", 29), {sub.tx.get()}));
        sub.tx.reset(); /* moved into the message */
        ASSERT_NO_FATAL_FAILURE(recv_sender(super.rx.get(), &got, &payload));
        EXPECT_EQ(payload, person("Patrick Walton", 29));
        ASSERT_NO_FATAL_FAILURE(send_str(got.get(), person("Arthur Dent", 42)));
        ASSERT_NO_FATAL_FAILURE(send_str(got.get(), person("Ford Prefect", 200)));
        EXPECT_EQ(recv_str(sub.rx.get()), person("Arthur Dent", 42));
        EXPECT_EQ(recv_str(sub.rx.get()), person("Ford Prefect", 200));
        got.reset();
        EXPECT_EQ(recv_error(sub.rx.get()), -EPIPE);
}

/* embedded_multiplexed_sender_lifecycle: sub and super on different channels */
TEST_F(ChannelTest, EmbeddedMultiplexedSenderLifecycle) {
        Channel ch2;
        Sub super, sub;
        Sender got;

        ASSERT_NO_FATAL_FAILURE(new_channel(&ch2));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch2.get(), &super));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &sub));

        Sender c = clone(sub.tx);
        ASSERT_NO_FATAL_FAILURE(send_with(super.tx.get(), "clone", {c.get()}));
        c.reset();
        ASSERT_NO_FATAL_FAILURE(recv_sender(super.rx.get(), &got));
        ASSERT_NO_FATAL_FAILURE(send_str(got.get(), "1"));
        EXPECT_EQ(recv_str(sub.rx.get()), "1");
        got.reset();
        EXPECT_EQ(try_recv_state(sub.rx.get()), -EAGAIN) << "the original is still held";

        ASSERT_NO_FATAL_FAILURE(send_with(super.tx.get(), "original", {sub.tx.get()}));
        sub.tx.reset();
        ASSERT_NO_FATAL_FAILURE(recv_sender(super.rx.get(), &got));
        ASSERT_NO_FATAL_FAILURE(send_str(got.get(), "2"));
        EXPECT_EQ(recv_str(sub.rx.get()), "2");
        got.reset();
        EXPECT_EQ(recv_error(sub.rx.get()), -EPIPE);
}

/* embedded_multiplexed_two_senders */
TEST_F(ChannelTest, EmbeddedMultiplexedTwoSenders) {
        Sub super, sub1, sub2;
        Message m;
        Sender g1, g2;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &super));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &sub1));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &sub2));
        ASSERT_NO_FATAL_FAILURE(send_with(super.tx.get(), "two", {sub1.tx.get(), sub2.tx.get()}));
        sub1.tx.reset();
        sub2.tx.reset();
        ASSERT_NO_FATAL_FAILURE(recv_msg(super.rx.get(), &m));
        ASSERT_EQ(ipcmux_message_get_n_senders(m.get()), 2u);
        ASSERT_OK(ipcmux_message_take_sender(m.get(), 0, out(g1)));
        ASSERT_OK(ipcmux_message_take_sender(m.get(), 1, out(g2)));
        m.reset();
        ASSERT_NO_FATAL_FAILURE(send_str(g1.get(), "1a"));
        ASSERT_NO_FATAL_FAILURE(send_str(g2.get(), "2a"));
        ASSERT_NO_FATAL_FAILURE(send_str(g1.get(), "1b"));
        ASSERT_NO_FATAL_FAILURE(send_str(g2.get(), "2b"));
        EXPECT_EQ(recv_str(sub2.rx.get()), "2a");
        EXPECT_EQ(recv_str(sub2.rx.get()), "2b");
        EXPECT_EQ(recv_str(sub1.rx.get()), "1a");
        EXPECT_EQ(recv_str(sub1.rx.get()), "1b");
        g1.reset();
        EXPECT_EQ(recv_error(sub1.rx.get()), -EPIPE);
        EXPECT_EQ(try_recv_state(sub2.rx.get()), -EAGAIN);
        g2.reset();
        EXPECT_EQ(recv_error(sub2.rx.get()), -EPIPE);
}

/* embedded_multiplexed_senders_interacting: two channels swap senders */
TEST_F(ChannelTest, EmbeddedMultiplexedSendersInteracting) {
        Channel ch2;
        Sub super1, sub1, super2, sub2;
        Sender to_sub2, to_sub1;

        ASSERT_NO_FATAL_FAILURE(new_channel(&ch2));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &super1));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &sub1));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch2.get(), &super2));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch2.get(), &sub2));
        /* channel 1 sends its sub sender to channel 2 and vice versa */
        ASSERT_NO_FATAL_FAILURE(send_with(super2.tx.get(), "", {sub1.tx.get()}));
        ASSERT_NO_FATAL_FAILURE(send_with(super1.tx.get(), "", {sub2.tx.get()}));
        sub1.tx.reset();
        sub2.tx.reset();
        ASSERT_NO_FATAL_FAILURE(recv_sender(super1.rx.get(), &to_sub2));
        ASSERT_NO_FATAL_FAILURE(recv_sender(super2.rx.get(), &to_sub1));
        ASSERT_NO_FATAL_FAILURE(send_str(to_sub2.get(), "2"));
        ASSERT_NO_FATAL_FAILURE(send_str(to_sub1.get(), "1"));
        EXPECT_EQ(recv_str(sub2.rx.get()), "2");
        EXPECT_EQ(recv_str(sub1.rx.get()), "1");
        to_sub1.reset();
        to_sub2.reset();
        EXPECT_EQ(recv_error(sub1.rx.get()), -EPIPE);
        EXPECT_EQ(recv_error(sub2.rx.get()), -EPIPE);
}

/* embedded_multiplexed_senders_with_middleman */
TEST_F(ChannelTest, EmbeddedMultiplexedSendersWithMiddleman) {
        Channel ch2, ch3;
        Sub super, sub, mid;
        Message m;
        Sender mid_super, mid_sub;

        ASSERT_NO_FATAL_FAILURE(new_channel(&ch2));
        ASSERT_NO_FATAL_FAILURE(new_channel(&ch3));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &super));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch2.get(), &sub));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch3.get(), &mid));

        /* Hand super_tx and sub_tx to the middleman. */
        ASSERT_NO_FATAL_FAILURE(send_with(mid.tx.get(), "", {super.tx.get(), sub.tx.get()}));
        super.tx.reset();
        sub.tx.reset();
        ASSERT_NO_FATAL_FAILURE(recv_msg(mid.rx.get(), &m));
        ASSERT_EQ(ipcmux_message_get_n_senders(m.get()), 2u);
        ASSERT_OK(ipcmux_message_take_sender(m.get(), 0, out(mid_super)));
        ASSERT_OK(ipcmux_message_take_sender(m.get(), 1, out(mid_sub)));
        m.reset();

        /* The middleman forwards sub_tx through super_tx, then lets go. */
        ASSERT_NO_FATAL_FAILURE(send_with(mid_super.get(), "forwarded", {mid_sub.get()}));
        mid_sub.reset();
        mid_super.reset();
        EXPECT_EQ(try_recv_state(sub.rx.get()), -EAGAIN) << "a copy is in flight";

        /* super_rx goes before the copy is received: nobody can use it. */
        super.rx.reset();
        EXPECT_EQ(recv_error(sub.rx.get()), -EPIPE);
}

/* Middleman variant where the forwarded copy is received and used. */
TEST_F(ChannelTest, MiddlemanForwarding) {
        Sub super, sub, mid;
        Message m;
        Sender mid_super, mid_sub, final_copy;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &super));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &sub));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &mid));
        ASSERT_NO_FATAL_FAILURE(send_with(mid.tx.get(), "", {super.tx.get(), sub.tx.get()}));
        super.tx.reset();
        sub.tx.reset();
        ASSERT_NO_FATAL_FAILURE(recv_msg(mid.rx.get(), &m));
        ASSERT_OK(ipcmux_message_take_sender(m.get(), 0, out(mid_super)));
        ASSERT_OK(ipcmux_message_take_sender(m.get(), 1, out(mid_sub)));
        m.reset();
        ASSERT_NO_FATAL_FAILURE(send_with(mid_super.get(), "forwarded", {mid_sub.get()}));
        mid_sub.reset();
        mid_super.reset();
        /* super's last sender went after the forward: buffered then EPIPE. */
        std::string payload;
        ASSERT_NO_FATAL_FAILURE(recv_sender(super.rx.get(), &final_copy, &payload));
        EXPECT_EQ(payload, "forwarded");
        EXPECT_EQ(recv_error(super.rx.get()), -EPIPE);
        ASSERT_NO_FATAL_FAILURE(send_str(final_copy.get(), "made it"));
        EXPECT_EQ(recv_str(sub.rx.get()), "made it");
        final_copy.reset();
        EXPECT_EQ(recv_error(sub.rx.get()), -EPIPE);
}

/* drop_transmitted_subsender */
TEST_F(ChannelTest, DropTransmittedSubsender) {
        Sub super, sub;
        Sender got;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &super));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &sub));
        ASSERT_NO_FATAL_FAILURE(send_with(super.tx.get(), "", {sub.tx.get()}));
        sub.tx.reset();
        ASSERT_NO_FATAL_FAILURE(recv_sender(super.rx.get(), &got));
        got.reset();
        EXPECT_EQ(recv_error(sub.rx.get()), -EPIPE);
}

/* drop_transmitted_subsender_send_using_clone_of_original */
TEST_F(ChannelTest, DropTransmittedSubsenderSendUsingCloneOfOriginal) {
        Sub super, sub;
        Sender got;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &super));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &sub));
        Sender keep = clone(sub.tx);
        ASSERT_NO_FATAL_FAILURE(send_with(super.tx.get(), "", {sub.tx.get()}));
        sub.tx.reset();
        ASSERT_NO_FATAL_FAILURE(recv_sender(super.rx.get(), &got));
        got.reset();
        EXPECT_EQ(try_recv_state(sub.rx.get()), -EAGAIN);
        ASSERT_NO_FATAL_FAILURE(send_str(keep.get(), "1"));
        EXPECT_EQ(recv_str(sub.rx.get()), "1");
        keep.reset();
        EXPECT_EQ(recv_error(sub.rx.get()), -EPIPE);
}

/* drop_transmitted_subsender_send_using_another_transmitted_subsender and
 * ..._over_another_ipc_channel (super2 on a different channel) */
TEST_F(ChannelTest, DropTransmittedSubsenderSendUsingAnotherTransmittedSubsender) {
        for (bool other_channel : {false, true}) {
                SCOPED_TRACE(other_channel ? "super2 on another channel" : "same channel");
                Channel ch2;
                Sub super1, super2, sub;
                Sender g1, g2;

                ASSERT_NO_FATAL_FAILURE(new_channel(&ch2));
                ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &super1));
                ASSERT_NO_FATAL_FAILURE(new_sub(other_channel ? ch2.get() : ch.get(), &super2));
                ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &sub));
                Sender c = clone(sub.tx);
                ASSERT_NO_FATAL_FAILURE(send_with(super1.tx.get(), "", {c.get()}));
                c.reset();
                ASSERT_NO_FATAL_FAILURE(send_with(super2.tx.get(), "", {sub.tx.get()}));
                sub.tx.reset();
                ASSERT_NO_FATAL_FAILURE(recv_sender(super1.rx.get(), &g1));
                g1.reset();
                EXPECT_EQ(try_recv_state(sub.rx.get()), -EAGAIN);
                ASSERT_NO_FATAL_FAILURE(recv_sender(super2.rx.get(), &g2));
                ASSERT_NO_FATAL_FAILURE(send_str(g2.get(), "1"));
                EXPECT_EQ(recv_str(sub.rx.get()), "1");
                g2.reset();
                EXPECT_EQ(recv_error(sub.rx.get()), -EPIPE);
        }
}

/* sender_transmission_dropped_in_flight, bytes_sender_dropped_in_flight */
TEST_F(ChannelTest, SenderTransmissionDroppedInFlight) {
        Sub super, sub;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &super));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &sub));
        ASSERT_NO_FATAL_FAILURE(send_with(super.tx.get(), "", {sub.tx.get()}));
        super.rx.reset();
        EXPECT_EQ(try_recv_state(sub.rx.get()), -EAGAIN) << "the original still holds it";
        ASSERT_NO_FATAL_FAILURE(send_str(sub.tx.get(), "original works"));
        EXPECT_EQ(recv_str(sub.rx.get()), "original works");
        sub.tx.reset();
        EXPECT_EQ(recv_error(sub.rx.get()), -EPIPE);
}

/* The same, with the original moved into the message (the reference's form). */
TEST_F(ChannelTest, SenderTransmissionDroppedInFlightOnlyCopy) {
        Sub super, sub;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &super));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &sub));
        ASSERT_NO_FATAL_FAILURE(send_with(super.tx.get(), "", {sub.tx.get()}));
        sub.tx.reset();
        EXPECT_EQ(try_recv_state(sub.rx.get()), -EAGAIN) << "a copy is in flight";
        super.rx.reset();
        EXPECT_EQ(recv_error(sub.rx.get()), -EPIPE);
}

/* compare_base_transmission_failure: tx of channel 1 over a subchannel of channel 2 */
TEST_F(ChannelTest, CompareBaseTransmissionFailure) {
        Channel ch2;
        Sub s, via;

        ASSERT_NO_FATAL_FAILURE(new_channel(&ch2));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch2.get(), &via));
        ASSERT_NO_FATAL_FAILURE(send_with(via.tx.get(), "", {s.tx.get()}));
        s.tx.reset();
        via.rx.reset();
        EXPECT_EQ(recv_error(s.rx.get()), -EPIPE);
        /* The carrier's sender sees the drop too. */
        EXPECT_EQ(ipcmux_sender_send_bytes(via.tx.get(), "x", 1), -EPIPE);
}

/* A subchannel's sender sent over that very subchannel. */
TEST_F(ChannelTest, SenderSentOverItself) {
        Sub s;
        Sender got;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        ASSERT_NO_FATAL_FAILURE(send_with(s.tx.get(), "self", {s.tx.get()}));
        s.tx.reset();
        ASSERT_NO_FATAL_FAILURE(recv_sender(s.rx.get(), &got));
        ASSERT_NO_FATAL_FAILURE(send_str(got.get(), "again"));
        EXPECT_EQ(recv_str(s.rx.get()), "again");
        got.reset();
        EXPECT_EQ(recv_error(s.rx.get()), -EPIPE);
}

/* A self-carrying message left unread when the receiver goes: no cycle keeps
 * anything alive (the fd check and the leak checker see it). */
TEST_F(ChannelTest, SenderSentOverItselfThenReceiverDropped) {
        Sub s;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        ASSERT_NO_FATAL_FAILURE(send_with(s.tx.get(), "self", {s.tx.get()}));
        s.tx.reset();
        s.rx.reset();
}

/* stress many_senders_over_ipc: 500 transmissions, each used once */
TEST_F(ChannelTest, ManySendersOverSubchannel) {
        Sub carrier, target;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &carrier));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &target));
        for (int i = 0; i < 500; i++)
                ASSERT_NO_FATAL_FAILURE(send_with(carrier.tx.get(), std::to_string(i), {target.tx.get()}));
        target.tx.reset();
        for (int i = 0; i < 500; i++) {
                Sender got;
                std::string payload;
                ASSERT_NO_FATAL_FAILURE(recv_sender(carrier.rx.get(), &got, &payload));
                ASSERT_EQ(payload, std::to_string(i));
                ASSERT_NO_FATAL_FAILURE(send_str(got.get(), payload));
        }
        for (int i = 0; i < 500; i++)
                ASSERT_EQ(recv_str(target.rx.get()), std::to_string(i));
        EXPECT_EQ(recv_error(target.rx.get()), -EPIPE);
}

/* ---- threads ------------------------------------------------------------- */

/* bytes_cross_thread: the sender moves to another thread */
TEST_F(ChannelTest, BytesCrossThread) {
        Sub s;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        ipcmux_sender *moved = s.tx.release();
        std::thread t([moved]() {
                Sender tx(moved);
                ipcmux_sender_send_bytes(tx.get(), "cross-thread", 12);
        });
        EXPECT_EQ(recv_str(s.rx.get()), "cross-thread");
        t.join();
        EXPECT_EQ(recv_error(s.rx.get()), -EPIPE);
}

/* stress concurrent_bytes_send_recv: 500 messages from a thread, in order,
 * received while they are being sent */
TEST_F(ChannelTest, ConcurrentSendRecv) {
        Sub s;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        ipcmux_sender *moved = s.tx.release();
        std::thread t([moved]() {
                Sender tx(moved);
                for (uint32_t i = 0; i < 500; i++)
                        if (ipcmux_sender_send_bytes(tx.get(), &i, sizeof(i)) < 0)
                                break;
        });
        for (uint32_t i = 0; i < 500; i++) {
                Message m;
                ASSERT_NO_FATAL_FAILURE(recv_msg(s.rx.get(), &m));
                ASSERT_EQ(msg_str(m.get()), std::string((const char *) &i, sizeof(i)));
        }
        t.join();
        EXPECT_EQ(recv_error(s.rx.get()), -EPIPE);
}

/* stress high_throughput_multi_sender: 4 threads x 5000 sends on clones of
 * one sender; per-thread order holds at the receiver. */
TEST_F(ChannelTest, FourThreadsCloneOrder) {
        constexpr uint32_t T = 4, N = 5000;
        Sub s;
        std::vector<std::thread> threads;
        std::atomic<int> send_errors{0};

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        for (uint32_t t = 0; t < T; t++) {
                ipcmux_sender *c = ipcmux_sender_ref(s.tx.get());
                threads.emplace_back([c, t, &send_errors]() {
                        Sender tx(c);
                        for (uint32_t i = 0; i < N; i++) {
                                uint32_t msg[2] = {t, i};
                                if (ipcmux_sender_send_bytes(tx.get(), msg, sizeof(msg)) < 0)
                                        send_errors++;
                        }
                });
        }
        s.tx.reset();

        std::vector<uint32_t> next(T, 0);
        bool order_ok = true;
        for (uint32_t k = 0; k < T * N; k++) {
                Message m;
                size_t n;
                uint32_t msg[2];
                int r = recv_bounded(s.rx.get(), out(m));
                if (r < 0) {
                        ADD_FAILURE() << "recv after " << k << " messages: " << strerror(-r);
                        break;
                }
                const void *p = ipcmux_message_get_data(m.get(), &n);
                if (n != sizeof(msg)) {
                        ADD_FAILURE() << "message " << k << " has " << n << " bytes";
                        break;
                }
                memcpy(msg, p, sizeof(msg));
                if (msg[0] >= T || msg[1] != next[msg[0]]) {
                        if (order_ok)
                                ADD_FAILURE() << "thread " << msg[0] << ": got seq " << msg[1] << ", expected "
                                              << (msg[0] < T ? next[msg[0]] : 0);
                        order_ok = false;
                        if (msg[0] >= T)
                                break;
                }
                next[msg[0]] = msg[1] + 1;
        }
        for (auto &t : threads)
                t.join();
        EXPECT_EQ(send_errors.load(), 0);
        for (uint32_t t = 0; t < T; t++)
                EXPECT_EQ(next[t], N) << "thread " << t;
        EXPECT_EQ(recv_error(s.rx.get()), -EPIPE);
}

/* stress multiple_channels_concurrent_recv: 4 channels, each with a sender
 * thread and a receiver thread */
TEST_F(ChannelTest, MultipleChannelsConcurrentRecv) {
        constexpr int C = 4;
        constexpr uint32_t N = 500;
        std::vector<Channel> chans(C);
        std::vector<Sub> subs(C);
        std::vector<std::thread> threads;
        std::vector<std::string> errors(C);

        for (int i = 0; i < C; i++) {
                ASSERT_NO_FATAL_FAILURE(new_channel(&chans[i]));
                ASSERT_NO_FATAL_FAILURE(new_sub(chans[i].get(), &subs[i]));
        }
        for (int i = 0; i < C; i++) {
                ipcmux_sender *tx = subs[i].tx.release();
                ipcmux_receiver *rx = subs[i].rx.get();
                std::string *err = &errors[i];
                threads.emplace_back([tx]() {
                        Sender s(tx);
                        for (uint32_t k = 0; k < N; k++)
                                if (ipcmux_sender_send_bytes(s.get(), &k, sizeof(k)) < 0)
                                        return;
                });
                threads.emplace_back([rx, err]() {
                        for (uint32_t k = 0; k < N; k++) {
                                Message m;
                                int r = recv_bounded(rx, out(m));
                                if (r < 0) {
                                        *err = "recv " + std::to_string(k) + ": " + strerror(-r);
                                        return;
                                }
                                if (msg_str(m.get()) != std::string((const char *) &k, sizeof(k))) {
                                        *err = "out of order at " + std::to_string(k);
                                        return;
                                }
                        }
                        Message m;
                        int r = recv_bounded(rx, out(m));
                        if (r != -EPIPE)
                                *err = "final recv: " + std::to_string(r);
                });
        }
        for (auto &t : threads)
                t.join();
        for (int i = 0; i < C; i++)
                EXPECT_EQ(errors[i], "") << "channel " << i;
}

/* A receiver blocked in recv on one thread while another thread drops the
 * last sender: recv returns -EPIPE.  Repeated so that some rounds catch the
 * receiver asleep in the wait and others just before it. */
TEST_F(ChannelTest, BlockedRecvWokenByLastSenderDrop) {
        for (int round = 0; round < 20; round++) {
                SCOPED_TRACE("round " + std::to_string(round));
                Sub s;
                auto entering = std::make_shared<std::promise<void>>();
                auto result = std::make_shared<std::promise<int>>();

                ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
                ipcmux_receiver *rx = s.rx.get();
                std::future<int> done = result->get_future();
                std::thread t([rx, entering, result]() {
                        ipcmux_message *m = nullptr;
                        entering->set_value();
                        int r = ipcmux_receiver_recv(rx, &m);
                        ipcmux_message_unref(m);
                        result->set_value(r >= 0 ? 1 : r);
                });
                entering->get_future().wait();
                s.tx.reset();
                if (done.wait_for(std::chrono::seconds(10)) != std::future_status::ready) {
                        /* Leave the receiver to the stuck thread rather than free it under it. */
                        t.detach();
                        (void) s.rx.release();
                        FAIL() << "recv still blocked 10 s after the last sender was dropped";
                }
                t.join();
                EXPECT_EQ(done.get(), -EPIPE);
        }
}

/* The same with a clone: dropping one of two clones must not wake recv with
 * -EPIPE; a message from the survivor does. */
TEST_F(ChannelTest, BlockedRecvSurvivesPartialDrop) {
        Sub s;
        std::promise<void> entering;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &s));
        Sender c = clone(s.tx);
        ipcmux_receiver *rx = s.rx.get();
        auto result = std::async(std::launch::async, [rx, &entering]() {
                entering.set_value();
                return recv_str(rx);
        });
        entering.get_future().wait();
        s.tx.reset();
        EXPECT_EQ(result.wait_for(std::chrono::milliseconds(100)), std::future_status::timeout)
                << "recv returned although a clone is left";
        ASSERT_NO_FATAL_FAILURE(send_str(c.get(), "survivor"));
        EXPECT_EQ(result.get(), "survivor");
}

/* Two threads blocked on two receivers of one channel: each gets its own. */
TEST_F(ChannelTest, TwoThreadsBlockedOnTwoReceivers) {
        Sub a, b;

        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &a));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &b));
        ipcmux_receiver *ra = a.rx.get(), *rb = b.rx.get();
        auto fa = std::async(std::launch::async, [ra]() { return recv_str(ra); });
        auto fb = std::async(std::launch::async, [rb]() { return recv_str(rb); });
        ASSERT_NO_FATAL_FAILURE(send_str(b.tx.get(), "for b"));
        ASSERT_NO_FATAL_FAILURE(send_str(a.tx.get(), "for a"));
        EXPECT_EQ(fb.get(), "for b");
        EXPECT_EQ(fa.get(), "for a");
}

/* ---- over the bus: two connections in one process ------------------------- */

/*
 * Channel "near" lives on the process-wide connection, "far" on a second
 * connection of this process; messages between them travel through the
 * daemon, as between processes.  The far side gets a sender for a near
 * subchannel (and vice versa) the way processes do: a one-shot server.
 * Every call is made from this one thread: the bus daemon, not the other
 * connection, answers the calls the bootstrap makes.
 */
class TwoConnTest : public ChannelTest {
protected:
        Channel far;
        /* Keeps the far connection dispatched, as a process busy in recv
         * would (started by the tests that need it). */
        Pump pump;

        void SetUp() override {
                ChannelTest::SetUp();
                if (HasFatalFailure())
                        return;
                ASSERT_NO_FATAL_FAILURE(new_far_channel(&far));
                ASSERT_STRNE(ipcmux_channel_get_unique_name(far.get()), ipcmux_channel_get_unique_name(ch.get()));
        }
        void TearDown() override {
                pump.stop();
                far.reset();
                ChannelTest::TearDown();
        }
};

TEST_F(TwoConnTest, RoundTripOverTheBus) {
        Sender tx;
        Receiver rx;

        ASSERT_NO_FATAL_FAILURE(bridge(far.get(), ch.get(), &tx, &rx));
        EXPECT_STREQ(ipcmux_sender_get_destination(tx.get()), ipcmux_channel_get_unique_name(far.get()));
        EXPECT_STREQ(ipcmux_sender_get_path(tx.get()), ipcmux_receiver_get_path(rx.get()));
        for (int i = 0; i < 100; i++)
                ASSERT_NO_FATAL_FAILURE(send_str(tx.get(), std::to_string(i)));
        for (int i = 0; i < 100; i++)
                ASSERT_EQ(recv_str(rx.get()), std::to_string(i));
        tx.reset();
        EXPECT_EQ(recv_error(rx.get()), -EPIPE);
}

/* Payloads of every size class over the bus (inline and spilled to a memfd). */
TEST_F(TwoConnTest, PayloadSizesOverTheBus) {
        const size_t sizes[] = {0, 1, 7, 256, 4096, 65536, 65537, (size_t) 1 << 20, ((size_t) 4 << 20) + 3};
        Sender tx;
        Receiver rx;

        ASSERT_NO_FATAL_FAILURE(bridge(far.get(), ch.get(), &tx, &rx));
        for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
                std::string data(sizes[k], '\0');
                for (size_t i = 0; i < data.size(); i++)
                        data[i] = (char) ((i * 13 + k) % 256);
                ASSERT_OK(ipcmux_sender_send_bytes(tx.get(), data.data(), data.size()));
        }
        for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
                Message m;
                size_t n = 99;
                ASSERT_NO_FATAL_FAILURE(recv_msg(rx.get(), &m));
                const uint8_t *p = (const uint8_t *) ipcmux_message_get_data(m.get(), &n);
                ASSERT_NE(p, nullptr);
                ASSERT_EQ(n, sizes[k]);
                for (size_t i = 0; i < n; i++)
                        if (p[i] != (uint8_t) ((i * 13 + k) % 256))
                                FAIL() << "size " << sizes[k] << ": byte " << i << " differs";
        }
}

/* embedded_multiplexed_senders across connections */
TEST_F(TwoConnTest, EmbeddedSenderOverTheBus) {
        Sender carrier_tx, got;
        Receiver carrier_rx;
        Sub sub;

        ASSERT_NO_FATAL_FAILURE(bridge(far.get(), ch.get(), &carrier_tx, &carrier_rx));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &sub));
        ASSERT_NO_FATAL_FAILURE(send_with(carrier_tx.get(), "take this", {sub.tx.get()}));
        sub.tx.reset();
        std::string payload;
        ASSERT_NO_FATAL_FAILURE(recv_sender(carrier_rx.get(), &got, &payload));
        EXPECT_EQ(payload, "take this");
        EXPECT_STREQ(ipcmux_sender_get_destination(got.get()), ipcmux_channel_get_unique_name(ch.get()));
        EXPECT_STREQ(ipcmux_sender_get_path(got.get()), ipcmux_receiver_get_path(sub.rx.get()));
        ASSERT_NO_FATAL_FAILURE(send_str(got.get(), "1"));
        ASSERT_NO_FATAL_FAILURE(send_str(got.get(), "2"));
        EXPECT_EQ(recv_str(sub.rx.get()), "1");
        EXPECT_EQ(recv_str(sub.rx.get()), "2");
        EXPECT_EQ(try_recv_state(sub.rx.get()), -EAGAIN);
        got.reset();
        EXPECT_EQ(recv_error(sub.rx.get()), -EPIPE);
}

/*
 * A connection left undispatched for longer than its method call timeout
 * (an application busy elsewhere, a process stopped in a debugger) must not
 * take its peers for dead.  sd-bus looks at timeouts before it reads: the
 * calls that watch a new peer (AddMatch, GetNameOwner) then fail with a
 * timeout although their replies wait in the socket.  Here the receiving
 * side has a 1 s call timeout and is left alone for 2.5 s after it met the
 * sender.  The watch must still work after: the sender's connection then
 * drops (no Release: a crash, as far as the receiver can tell).
 */
TEST_F(ChannelTest, UndispatchedPastTheCallTimeoutKeepsPeers) {
        Channel slow, near;
        Server srv;
        Sender tx;
        Receiver rx;
        sd_bus *slow_bus = nullptr, *near_bus = nullptr;
        char *name = nullptr;

        ASSERT_OK(test_bus_connect(PrivateBus::bus, &slow_bus));
        std::unique_ptr<sd_bus, decltype(&sd_bus_unref)> slow_bus_owner(slow_bus, sd_bus_unref);
        ASSERT_OK(ipcmux_channel_new_for_bus(slow_bus, out(slow)));
        ASSERT_OK(test_bus_connect(PrivateBus::bus, &near_bus));
        std::unique_ptr<sd_bus, decltype(&sd_bus_unref)> near_bus_owner(near_bus, sd_bus_unref);
        ASSERT_OK(ipcmux_channel_new_for_bus(near_bus, out(near)));

        /* bridge(), with the short timeout set after the blocking calls
         * (a loaded sanitizer build could take a second for RequestName). */
        ASSERT_OK(ipcmux_server_new_for_channel(slow.get(), out(srv), &name));
        std::unique_ptr<char, decltype(&free)> name_owner(name, free);
        ASSERT_OK(sd_bus_set_method_call_timeout(slow_bus, 1000000));
        ASSERT_OK(ipcmux_sender_connect_for_channel(near.get(), name, out(tx)));
        ASSERT_OK(ipcmux_sender_send_bytes(tx.get(), "hello", 5));
        Message first;
        ASSERT_OK(ipcmux_server_accept_timeout(srv.get(), 10000000, out(rx), out(first)));
        EXPECT_EQ(msg_str(first.get()), "hello");

        usleep(2500000);        /* the watch calls of the new peer time out meanwhile */
        ASSERT_NO_FATAL_FAILURE(send_str(tx.get(), "x"));
        Message m;
        ASSERT_OK(recv_bounded(rx.get(), out(m), 10000000));
        EXPECT_EQ(msg_str(m.get()), "x");
        /* Let the watch be asked for again and answered. */
        Message none;
        EXPECT_EQ(recv_bounded(rx.get(), out(none), 300000), -ETIMEDOUT);

        sd_bus_close(near_bus);
        Message end;
        EXPECT_EQ(recv_bounded(rx.get(), out(end), 10000000), -EPIPE);
        tx.reset();
}

/*
 * A process that dropped every copy of a sender and later gets a new one
 * starts a new stream (first_seq 0, PROTOCOL.md "Data"): the receiver must
 * take it, not set it aside as out of order (which would lose "3" and "4"
 * silently).
 */
TEST_F(TwoConnTest, StreamStartsAgainWithANewCopy) {
        Sender carrier_tx, got;
        Receiver carrier_rx;
        Sub sub;
        std::string payload;

        ASSERT_NO_FATAL_FAILURE(bridge(far.get(), ch.get(), &carrier_tx, &carrier_rx));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &sub));
        for (int round = 0; round < 2; round++) {
                ASSERT_NO_FATAL_FAILURE(send_with(carrier_tx.get(), "copy", {sub.tx.get()}));
                ASSERT_NO_FATAL_FAILURE(recv_sender(carrier_rx.get(), &got, &payload));
                ASSERT_NO_FATAL_FAILURE(send_str(got.get(), std::to_string(2 * round + 1)));
                ASSERT_NO_FATAL_FAILURE(send_str(got.get(), std::to_string(2 * round + 2)));
                got.reset();    /* the far connection holds no copy any more */
        }
        for (int i = 1; i <= 4; i++)
                EXPECT_EQ(recv_str(sub.rx.get()), std::to_string(i));
        EXPECT_EQ(ipcmux_receiver_get_lost(sub.rx.get()), 0u);
        sub.tx.reset();
        EXPECT_EQ(recv_error(sub.rx.get()), -EPIPE);
}

/* sender_transmission_dropped_in_flight across connections: the only copy is
 * in a message at the far receiver, which is dropped without reading it. */
TEST_F(TwoConnTest, SenderDroppedInFlightOverTheBus) {
        Sender carrier_tx, marker_tx;
        Receiver carrier_rx, marker_rx;
        Sub sub;

        ASSERT_NO_FATAL_FAILURE(bridge(far.get(), ch.get(), &carrier_tx, &carrier_rx));
        ASSERT_NO_FATAL_FAILURE(bridge(far.get(), ch.get(), &marker_tx, &marker_rx));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &sub));
        ASSERT_NO_FATAL_FAILURE(send_with(carrier_tx.get(), "", {sub.tx.get()}));
        sub.tx.reset();
        EXPECT_EQ(try_recv_state(sub.rx.get()), -EAGAIN) << "a copy is in flight";
        /* Receiving a later message on another far receiver makes it likely
         * (not certain: two endpoints) that the carrier is already queued. */
        ASSERT_NO_FATAL_FAILURE(send_str(marker_tx.get(), "marker"));
        EXPECT_EQ(recv_str(marker_rx.get()), "marker");
        ASSERT_NO_FATAL_FAILURE(pump.start(far.get()));
        carrier_rx.reset();
        EXPECT_EQ(recv_error(sub.rx.get()), -EPIPE);
}

/* compare_base_transmission_failure across connections: the carrier's
 * receiver is gone before the carrier is sent. */
TEST_F(TwoConnTest, CarrierReceiverDroppedBeforeSend) {
        Sender carrier_tx;
        Receiver carrier_rx;
        Sub sub;

        ASSERT_NO_FATAL_FAILURE(bridge(far.get(), ch.get(), &carrier_tx, &carrier_rx));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &sub));
        ASSERT_NO_FATAL_FAILURE(pump.start(far.get()));
        carrier_rx.reset();
        /* The near side may not know yet: the send succeeds or says -EPIPE. */
        Message m;
        ASSERT_NO_FATAL_FAILURE(build(&m, "", {sub.tx.get()}));
        int r = ipcmux_sender_send(carrier_tx.get(), m.get());
        EXPECT_TRUE(r == 0 || r == -EPIPE) << strerror(-r);
        m.reset();
        sub.tx.reset();
        EXPECT_EQ(recv_error(sub.rx.get()), -EPIPE);
        /* Eventually the carrier's sender learns the receiver is gone. */
        uint64_t deadline = test_now_usec() + 5000000;
        while ((r = ipcmux_sender_send_bytes(carrier_tx.get(), "x", 1)) == 0 && test_now_usec() < deadline)
                (void) ipcmux_receiver_try_recv_timeout(sub.rx.get(), 1000, out(m));
        EXPECT_EQ(r, -EPIPE);
}

/* A received copy dropped on the far side releases its hold at the owner. */
TEST_F(TwoConnTest, DropTransmittedSubsenderOverTheBus) {
        Sender carrier_tx, got;
        Receiver carrier_rx;
        Sub sub;

        ASSERT_NO_FATAL_FAILURE(bridge(far.get(), ch.get(), &carrier_tx, &carrier_rx));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &sub));
        Sender keep = clone(sub.tx);
        ASSERT_NO_FATAL_FAILURE(send_with(carrier_tx.get(), "", {sub.tx.get()}));
        sub.tx.reset();
        ASSERT_NO_FATAL_FAILURE(recv_sender(carrier_rx.get(), &got));
        got.reset();
        EXPECT_EQ(try_recv_state(sub.rx.get()), -EAGAIN) << "a clone of the original is left";
        ASSERT_NO_FATAL_FAILURE(send_str(keep.get(), "1"));
        EXPECT_EQ(recv_str(sub.rx.get()), "1");
        keep.reset();
        EXPECT_EQ(recv_error(sub.rx.get()), -EPIPE);
}

/* Senders going both ways between the connections (interacting). */
TEST_F(TwoConnTest, EmbeddedSendersInteractingOverTheBus) {
        Sender near_to_far, far_to_near, g_on_far, g_on_near;
        Receiver far_rx, near_rx;
        Sub sub_near, sub_far;

        ASSERT_NO_FATAL_FAILURE(bridge(far.get(), ch.get(), &near_to_far, &far_rx));
        ASSERT_NO_FATAL_FAILURE(bridge(ch.get(), far.get(), &far_to_near, &near_rx));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &sub_near));
        ASSERT_NO_FATAL_FAILURE(new_sub(far.get(), &sub_far));
        ASSERT_NO_FATAL_FAILURE(send_with(near_to_far.get(), "", {sub_near.tx.get()}));
        ASSERT_NO_FATAL_FAILURE(send_with(far_to_near.get(), "", {sub_far.tx.get()}));
        sub_near.tx.reset();
        sub_far.tx.reset();
        ASSERT_NO_FATAL_FAILURE(recv_sender(far_rx.get(), &g_on_far));
        ASSERT_NO_FATAL_FAILURE(recv_sender(near_rx.get(), &g_on_near));
        ASSERT_NO_FATAL_FAILURE(send_str(g_on_far.get(), "to near"));
        ASSERT_NO_FATAL_FAILURE(send_str(g_on_near.get(), "to far"));
        EXPECT_EQ(recv_str(sub_near.rx.get()), "to near");
        EXPECT_EQ(recv_str(sub_far.rx.get()), "to far");
        ASSERT_NO_FATAL_FAILURE(pump.start(far.get()));
        g_on_far.reset();
        g_on_near.reset();
        EXPECT_EQ(recv_error(sub_near.rx.get()), -EPIPE);
        EXPECT_EQ(recv_error(sub_far.rx.get()), -EPIPE);
}

/* embedded_multiplexed_senders_with_middleman across connections: the far
 * side forwards a near sender back over a near subchannel, whose receiver is
 * dropped before the copy is read. */
TEST_F(TwoConnTest, MiddlemanOverTheBus) {
        Sender to_mid, mid_super, mid_sub;
        Receiver mid_rx;
        Sub super, sub;
        Message m;

        ASSERT_NO_FATAL_FAILURE(bridge(far.get(), ch.get(), &to_mid, &mid_rx));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &super));
        ASSERT_NO_FATAL_FAILURE(new_sub(ch.get(), &sub));
        ASSERT_NO_FATAL_FAILURE(send_with(to_mid.get(), "", {super.tx.get(), sub.tx.get()}));
        super.tx.reset();
        sub.tx.reset();
        ASSERT_NO_FATAL_FAILURE(recv_msg(mid_rx.get(), &m));
        ASSERT_EQ(ipcmux_message_get_n_senders(m.get()), 2u);
        ASSERT_OK(ipcmux_message_take_sender(m.get(), 0, out(mid_super)));
        ASSERT_OK(ipcmux_message_take_sender(m.get(), 1, out(mid_sub)));
        m.reset();
        ASSERT_NO_FATAL_FAILURE(pump.start(far.get()));
        ASSERT_NO_FATAL_FAILURE(send_with(mid_super.get(), "forwarded", {mid_sub.get()}));
        mid_sub.reset();
        mid_super.reset();
        super.rx.reset();
        EXPECT_EQ(recv_error(sub.rx.get()), -EPIPE);
}
