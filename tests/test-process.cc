/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Real processes on a real private bus: one-shot bootstrap, senders
 * travelling between processes, and real crashes (SIGKILL) at precise
 * points.  The helper binary is tests/helper-client.c.
 */

#include <signal.h>
#include <sys/wait.h>
#include <thread>

#include "bus-fixture.h"

class Process : public BusTest {
public:
        ipcmux_server *srv = nullptr;
        std::string name;
        pid_t child = -1;
        int child_out = -1;

        void TearDown() override {
                if (child > 0) {
                        kill(child, SIGKILL);
                        test_wait(child, 10000, NULL);
                }
                if (child_out >= 0)
                        close(child_out);
                srv = ipcmux_server_unref(srv);
                BusTest::TearDown();
        }

        void start(std::vector<std::string> args) {
                char *n = NULL;
                ASSERT_OK(ipcmux_server_new(&srv, &n));
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

        void kill_child() {
                ASSERT_EQ(kill(child, SIGKILL), 0);
                int status;
                ASSERT_OK(test_wait(child, 10000, &status));
                child = -1;
        }

        /* accept; the first message must be "first". */
        ipcmux_receiver *accept(ipcmux_message **ret_first = nullptr) {
                ipcmux_receiver *rx = NULL;
                ipcmux_message *first = NULL;
                int r = ipcmux_server_accept_timeout(srv, 20000000, &rx, &first);
                EXPECT_GE(r, 0) << strerror(-r);
                if (r < 0)
                        return nullptr;
                EXPECT_EQ(msg_str(first), "first");
                if (ret_first)
                        *ret_first = first;
                else
                        ipcmux_message_unref(first);
                return rx;
        }
};

/* Time a call that must finish within @bound_usec. */
#define EXPECT_WITHIN(bound_usec, expr)                                                 \
        do {                                                                            \
                uint64_t _t0 = test_now_usec();                                         \
                expr;                                                                   \
                EXPECT_LT(test_now_usec() - _t0, (uint64_t) (bound_usec)) << #expr;     \
        } while (0)

TEST_F(Process, OneShotBootstrap) {
        start({"send", "100"});
        ipcmux_receiver *rx = accept();
        ASSERT_NE(rx, nullptr);
        for (int i = 0; i < 100; i++) {
                ipcmux_message *m = NULL;
                ASSERT_OK(recv_bounded(rx, &m));
                EXPECT_EQ(msg_str(m), "msg-" + std::to_string(i));
                ipcmux_message_unref(m);
        }
        ipcmux_message *m = NULL;
        EXPECT_EQ(recv_bounded(rx, &m), -EPIPE);
        EXPECT_EQ(wait_child(), 0);
        EXPECT_NE(ipcmux_server_get_name_owner(srv), nullptr);
        ipcmux_receiver_unref(rx);
}

TEST_F(Process, SendDropExitLosesNothing) {
        /* The child sends, drops its sender and exits at once. */
        start({"send", "20000"});
        ipcmux_receiver *rx = accept();
        ASSERT_NE(rx, nullptr);
        int n = 0, r;
        ipcmux_message *m = NULL;
        while ((r = recv_bounded(rx, &m)) >= 0) {
                EXPECT_EQ(msg_str(m), "msg-" + std::to_string(n));
                n++;
                ipcmux_message_unref(m);
        }
        EXPECT_EQ(r, -EPIPE);
        EXPECT_EQ(n, 20000);
        EXPECT_EQ(wait_child(), 0);
        ipcmux_receiver_unref(rx);
}

TEST_F(Process, SecondClientRefused) {
        start({"hold"});
        EXPECT_EQ(line(), "ready");
        /* This process is busy (not dispatching) while the second client
         * tries: the bus itself refuses it. */
        std::string helper = test_helper_path("helper-client");
        char *argv[] = {(char *) helper.c_str(), (char *) "send", (char *) name.c_str(), nullptr};
        pid_t second;
        int status = 0;
        ASSERT_OK(test_spawn(argv, NULL, &second));
        ASSERT_OK(test_wait(second, 20000, &status));
        EXPECT_TRUE(WIFEXITED(status));
        EXPECT_EQ(WEXITSTATUS(status), 10) << "the second connect must fail";

        ipcmux_receiver *rx = accept();
        ASSERT_NE(rx, nullptr);
        ipcmux_receiver_unref(rx);
}

TEST_F(Process, ClientKilledBeforeFirstMessage) {
        start({"hold", "silent"});
        EXPECT_EQ(line(), "ready");
        kill_child();
        ipcmux_receiver *rx = NULL;
        ipcmux_message *m = NULL;
        EXPECT_WITHIN(5000000, EXPECT_EQ(ipcmux_server_accept_timeout(srv, 10000000, &rx, &m), -EPIPE));
}

TEST_F(Process, ClientKilledAfterConnect) {
        start({"hold"});
        EXPECT_EQ(line(), "ready");
        ipcmux_receiver *rx = accept();
        ASSERT_NE(rx, nullptr);
        kill_child();
        ipcmux_message *m = NULL;
        EXPECT_WITHIN(1000000, EXPECT_EQ(recv_bounded(rx, &m), -EPIPE));
        ipcmux_receiver_unref(rx);
}

TEST_F(Process, EchoAcrossProcesses) {
        start({"serve", "echo"});
        ipcmux_message *first = NULL;
        ipcmux_receiver *rx = accept(&first);
        ASSERT_NE(rx, nullptr);
        ASSERT_EQ(ipcmux_message_get_n_senders(first), 1u);
        ipcmux_sender *to_child = NULL;
        ASSERT_OK(ipcmux_message_take_sender(first, 0, &to_child));
        EXPECT_EQ(ipcmux_message_take_sender(first, 0, &to_child), -ENXIO);
        ipcmux_message_unref(first);
        EXPECT_EQ(line(), "ready");
        for (int i = 0; i < 200; i++) {
                std::string s = "ping-" + std::to_string(i);
                ASSERT_OK(ipcmux_sender_send_bytes(to_child, s.data(), s.size()));
                ipcmux_message *m = NULL;
                ASSERT_OK(recv_bounded(rx, &m));
                EXPECT_EQ(msg_str(m), s);
                ipcmux_message_unref(m);
        }
        /* Dropping our only copy disconnects the child's receiver: it exits. */
        ipcmux_sender_unref(to_child);
        EXPECT_EQ(wait_child(), 0);
        ipcmux_message *m = NULL;
        EXPECT_EQ(recv_bounded(rx, &m), -EPIPE);
        ipcmux_receiver_unref(rx);
}

/* Accept a "serve" child and take the sender for its subchannel. */
static ipcmux_sender *take_child_sender(Process *t, ipcmux_receiver **ret_rx) {
        ipcmux_message *first = NULL;
        ipcmux_receiver *rx = t->accept(&first);
        ipcmux_sender *s = NULL;
        if (!rx)
                return nullptr;
        EXPECT_EQ(ipcmux_message_take_sender(first, 0, &s), 0);
        ipcmux_message_unref(first);
        *ret_rx = rx;
        return s;
}

TEST_F(Process, ReceiverProcessKilledWhileSending) {
        start({"serve", "stall"});
        ipcmux_receiver *rx = NULL;
        ipcmux_sender *to_child = take_child_sender(this, &rx);
        ASSERT_NE(to_child, nullptr);
        EXPECT_EQ(line(), "ready");
        ASSERT_OK(ipcmux_sender_send_bytes(to_child, "x", 1));
        kill_child();
        uint64_t t0 = test_now_usec();
        int r;
        while ((r = ipcmux_sender_send_bytes(to_child, "x", 1)) >= 0 && test_now_usec() - t0 < 5000000)
                ;
        EXPECT_EQ(r, -EPIPE);
        EXPECT_LT(test_now_usec() - t0, 1000000u) << "senders must fail within 1 s";
        EXPECT_EQ(ipcmux_sender_send_bytes(to_child, "x", 1), -EPIPE);
        ipcmux_sender_unref(to_child);
        ipcmux_receiver_unref(rx);
}

TEST_F(Process, RemoteReceiverDropped) {
        start({"serve", "drop"});
        ipcmux_receiver *rx = NULL;
        ipcmux_sender *to_child = take_child_sender(this, &rx);
        ASSERT_NE(to_child, nullptr);
        EXPECT_EQ(line(), "ready");
        EXPECT_EQ(line(), "dropped");
        uint64_t t0 = test_now_usec();
        int r;
        while ((r = ipcmux_sender_send_bytes(to_child, "x", 1)) >= 0 && test_now_usec() - t0 < 5000000)
                ;
        EXPECT_EQ(r, -EPIPE);
        EXPECT_LT(test_now_usec() - t0, 1000000u);
        ipcmux_sender_unref(to_child);
        ipcmux_receiver_unref(rx);
}

TEST_F(Process, SenderUsedRemotelyThenDropped) {
        start({"serve", "use"});
        ipcmux_receiver *rx = NULL;
        ipcmux_sender *to_child = take_child_sender(this, &rx);
        ASSERT_NE(to_child, nullptr);

        ipcmux_sender *d_tx = NULL;
        ipcmux_receiver *d_rx = NULL;
        ASSERT_OK(ipcmux_channel_sub_channel(warm, &d_tx, &d_rx));
        ipcmux_message *m = NULL;
        ASSERT_OK(ipcmux_message_new(&m));
        EXPECT_EQ(ipcmux_message_attach_sender(m, d_tx), 0);
        ASSERT_OK(ipcmux_sender_send(to_child, m));
        ipcmux_message_unref(m);
        d_tx = ipcmux_sender_unref(d_tx);       /* only the copy in flight remains */

        ASSERT_OK(recv_bounded(d_rx, &m));
        EXPECT_EQ(msg_str(m), "used");
        ipcmux_message_unref(m);
        ASSERT_OK(recv_bounded(rx, &m));
        EXPECT_EQ(msg_str(m), "done");
        ipcmux_message_unref(m);
        /* The child dropped the copy: nobody holds a sender any more. */
        EXPECT_EQ(recv_bounded(d_rx, &m), -EPIPE);

        ipcmux_sender_unref(to_child);
        EXPECT_EQ(wait_child(), 0);
        ipcmux_receiver_unref(d_rx);
        ipcmux_receiver_unref(rx);
}

TEST_F(Process, SenderInFlightToKilledProcess) {
        start({"serve", "stall"});
        ipcmux_receiver *rx = NULL;
        ipcmux_sender *to_child = take_child_sender(this, &rx);
        ASSERT_NE(to_child, nullptr);
        EXPECT_EQ(line(), "ready");

        ipcmux_sender *d_tx = NULL;
        ipcmux_receiver *d_rx = NULL;
        ASSERT_OK(ipcmux_channel_sub_channel(warm, &d_tx, &d_rx));
        ipcmux_message *m = NULL;
        ASSERT_OK(ipcmux_message_new(&m));
        ASSERT_OK(ipcmux_message_attach_sender(m, d_tx));
        ASSERT_OK(ipcmux_sender_send(to_child, m));
        ipcmux_message_unref(m);
        d_tx = ipcmux_sender_unref(d_tx);

        /* In flight to a live process that never reads: still connected. */
        EXPECT_EQ(ipcmux_receiver_try_recv_timeout(d_rx, 200000, &m), -ETIMEDOUT);
        kill_child();
        EXPECT_WITHIN(1000000, EXPECT_EQ(recv_bounded(d_rx, &m), -EPIPE));
        ipcmux_sender_unref(to_child);
        ipcmux_receiver_unref(d_rx);
        ipcmux_receiver_unref(rx);
}

TEST_F(Process, HolderKilledWhileReceiverBlockedOnAnotherThread) {
        start({"serve", "keep"});
        ipcmux_receiver *rx = NULL;
        ipcmux_sender *to_child = take_child_sender(this, &rx);
        ASSERT_NE(to_child, nullptr);
        EXPECT_EQ(line(), "ready");

        ipcmux_sender *d_tx = NULL;
        ipcmux_receiver *d_rx = NULL;
        ASSERT_OK(ipcmux_channel_sub_channel(warm, &d_tx, &d_rx));
        ipcmux_message *m = NULL;
        ASSERT_OK(ipcmux_message_new(&m));
        ASSERT_OK(ipcmux_message_attach_sender(m, d_tx));
        ASSERT_OK(ipcmux_sender_send(to_child, m));
        ipcmux_message_unref(m);
        d_tx = ipcmux_sender_unref(d_tx);

        /* The child holds the copy and answered "ok" through it. */
        ASSERT_OK(recv_bounded(d_rx, &m));
        EXPECT_EQ(msg_str(m), "ok");
        ipcmux_message_unref(m);

        int thread_result = 1;
        std::thread blocked([&] {
                ipcmux_message *x = NULL;
                thread_result = recv_bounded(d_rx, &x, 20000000);
                if (x)
                        ipcmux_message_unref(x);
        });
        /* Give the thread time to block, then crash the holder. */
        usleep(100000);
        uint64_t t0 = test_now_usec();
        kill_child();
        blocked.join();
        EXPECT_EQ(thread_result, -EPIPE);
        EXPECT_LT(test_now_usec() - t0, 1000000u);
        ipcmux_sender_unref(to_child);
        ipcmux_receiver_unref(d_rx);
        ipcmux_receiver_unref(rx);
}

TEST_F(Process, ReceivingManySendersKeepsFdsFlat) {
        start({"serve", "keep"});
        ipcmux_receiver *rx = NULL;
        ipcmux_sender *to_child = take_child_sender(this, &rx);
        ASSERT_NE(to_child, nullptr);
        EXPECT_EQ(line(), "ready");
        int child_fds_before = test_count_fds_of(child);
        ASSERT_GT(child_fds_before, 0);

        ipcmux_sender *b_tx = NULL;
        ipcmux_receiver *b_rx = NULL;
        ASSERT_OK(ipcmux_channel_sub_channel(warm, &b_tx, &b_rx));
        const int N = 10000;
        int oks = 0;
        for (int i = 0; i < N; i++) {
                ipcmux_message *m = NULL;
                ASSERT_OK(ipcmux_message_new(&m));
                ASSERT_OK(ipcmux_message_attach_sender(m, b_tx));
                ASSERT_OK(ipcmux_sender_send(to_child, m));
                ipcmux_message_unref(m);
                /* Keep our queue short while the child answers. */
                while (ipcmux_receiver_try_recv(b_rx, &m) >= 0) {
                        oks++;
                        ipcmux_message_unref(m);
                }
        }
        while (oks < N) {
                ipcmux_message *m = NULL;
                ASSERT_OK(recv_bounded(b_rx, &m));
                EXPECT_EQ(msg_str(m), "ok");
                ipcmux_message_unref(m);
                oks++;
        }
        ASSERT_OK(ipcmux_sender_send_bytes(to_child, "fds?", 4));
        ipcmux_message *m = NULL;
        ASSERT_OK(recv_bounded(rx, &m));
        int child_fds_after = atoi(msg_str(m).c_str() + 4);
        ipcmux_message_unref(m);
        EXPECT_LE(child_fds_after - child_fds_before, 1) << "received senders must cost no fd";

        ipcmux_sender_unref(b_tx);
        ipcmux_sender_unref(to_child);
        EXPECT_EQ(wait_child(), 0);
        /* The child released all 10,000 copies on exit. */
        EXPECT_EQ(recv_bounded(b_rx, &m), -EPIPE);
        ipcmux_receiver_unref(b_rx);
        ipcmux_receiver_unref(rx);
}

/* The sd_bus variants: server and client on connections the application made. */
TEST_F(Process, ServerAndClientOnApplicationConnections) {
        sd_bus *a = NULL, *b = NULL;
        ASSERT_OK(test_bus_connect(PrivateBus::bus, &a));
        ASSERT_OK(test_bus_connect(PrivateBus::bus, &b));
        ipcmux_server *s = NULL;
        char *n = NULL;
        ASSERT_OK(ipcmux_server_new_for_bus(a, &s, &n));
        EXPECT_EQ(std::string(n).rfind(":", 0), 0u);
        ipcmux_sender *tx = NULL;
        ASSERT_OK(ipcmux_sender_connect_for_bus(b, n, &tx));
        EXPECT_EQ(ipcmux_sender_connect_for_bus(b, n, &tx), -EADDRINUSE) << "one client only";
        free(n);
        ASSERT_OK(ipcmux_sender_send_bytes(tx, "first", 5));
        ipcmux_receiver *rx = NULL;
        ipcmux_message *first = NULL;
        ASSERT_OK(ipcmux_server_accept_timeout(s, 10000000, &rx, &first));
        EXPECT_EQ(msg_str(first), "first");
        ipcmux_message_unref(first);
        ipcmux_sender_unref(tx);
        ipcmux_message *m = NULL;
        EXPECT_EQ(recv_bounded(rx, &m), -EPIPE);
        ipcmux_receiver_unref(rx);
        ipcmux_server_unref(s);
        sd_bus_flush_close_unref(a);
        sd_bus_flush_close_unref(b);
}
