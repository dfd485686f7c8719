/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * fork() after init: the child gets -ECHILD from every call on inherited
 * objects and nothing goes on the parent's socket; the parent is unaffected;
 * after exec no ipcmux fd survives (all O_CLOEXEC); the child can start
 * afresh with new objects.
 */

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "bus-fixture.h"

TEST_F(BusTest, ForkedChildGetsEchild) {
        ipcmux_sender *tx = NULL;
        ipcmux_receiver *rx = NULL;
        ASSERT_OK(ipcmux_channel_sub_channel(warm, &tx, &rx));
        ASSERT_OK(ipcmux_sender_send_bytes(tx, "before", 6));

        pid_t pid = fork();
        ASSERT_GE(pid, 0);
        if (pid == 0) {
                ipcmux_message *m = NULL;
                ipcmux_sender *tx2 = NULL;
                ipcmux_receiver *rx2 = NULL;
                int bad = 0;

                bad |= ipcmux_sender_send_bytes(tx, "child", 5) != -ECHILD;
                bad |= (ipcmux_receiver_try_recv(rx, &m) != -ECHILD) << 1;
                bad |= (ipcmux_receiver_recv(rx, &m) != -ECHILD) << 2;
                bad |= (ipcmux_channel_sub_channel(warm, &tx2, &rx2) != -ECHILD) << 3;
                bad |= (ipcmux_channel_get_fd(warm) != -ECHILD) << 4;
                /* Unrefs are no-ops on the parent's objects. */
                ipcmux_sender_unref(tx);
                ipcmux_receiver_unref(rx);
                _exit(bad);
        }
        int status;
        ASSERT_EQ(waitpid(pid, &status, 0), pid);
        ASSERT_TRUE(WIFEXITED(status));
        EXPECT_EQ(WEXITSTATUS(status), 0) << "bitmask of calls that did not return -ECHILD";

        /* The parent is unaffected: its queue and its connection are intact. */
        ipcmux_message *m = NULL;
        ASSERT_OK(ipcmux_receiver_try_recv(rx, &m));
        EXPECT_EQ(msg_str(m), "before");
        ipcmux_message_unref(m);
        ASSERT_OK(ipcmux_sender_send_bytes(tx, "after", 5));
        ASSERT_OK(ipcmux_receiver_try_recv(rx, &m));
        EXPECT_EQ(msg_str(m), "after");
        ipcmux_message_unref(m);
        ipcmux_sender_unref(tx);
        ipcmux_receiver_unref(rx);
}

TEST_F(BusTest, ChildCanStartAfresh) {
        pid_t pid = fork();
        ASSERT_GE(pid, 0);
        if (pid == 0) {
                ipcmux_channel *ch = NULL;
                ipcmux_sender *tx = NULL;
                ipcmux_receiver *rx = NULL;
                ipcmux_message *m = NULL;

                if (ipcmux_channel_new(&ch) < 0 || ipcmux_channel_sub_channel(ch, &tx, &rx) < 0 ||
                    ipcmux_sender_send_bytes(tx, "x", 1) < 0 || ipcmux_receiver_recv(rx, &m) < 0)
                        _exit(1);
                _exit(ipcmux_channel_get_unique_name(ch) &&
                      strcmp(ipcmux_channel_get_unique_name(ch), ipcmux_channel_get_unique_name(warm)) != 0 ? 0 : 2);
        }
        int status;
        ASSERT_EQ(waitpid(pid, &status, 0), pid);
        ASSERT_TRUE(WIFEXITED(status));
        EXPECT_EQ(WEXITSTATUS(status), 0) << "a fresh connection in the child (1: API failed, 2: same name)";
}

class ForkExec : public BusTest {
protected:
        void SetUp() override {
                BusTest::SetUp();
                /* The epoll set is made on first use and lives with the connection. */
                ASSERT_GE(ipcmux_channel_get_fd(warm), 0);
                fds_before = test_count_fds();
        }
};

TEST_F(ForkExec, NoFdSurvivesExec) {
        /* Exercise every kind of fd the library makes: bus socket, eventfd,
         * epoll set, memfd regions. */
        ipcmux_shmem *region = NULL;
        ASSERT_OK(ipcmux_shmem_new_from_byte(1, 4096, &region));
        ASSERT_GE(ipcmux_channel_get_fd(warm), 0);

        int p[2];
        ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
        pid_t pid = fork();
        ASSERT_GE(pid, 0);
        if (pid == 0) {
                dup2(p[1], 1);
                /* After exec: no fd that points at a socket, eventfd, epoll
                 * set or memfd may be open (the test runner's own fds are
                 * pipes or ttys). */
                execl("/bin/sh", "sh", "-c",
                      "for f in /proc/self/fd/*; do readlink $f; done | "
                      "grep -c -E 'socket:|anon_inode:|memfd:'", (char *) NULL);
                _exit(127);
        }
        close(p[1]);
        char buf[32] = {};
        ssize_t n = read(p[0], buf, sizeof(buf) - 1);
        close(p[0]);
        int status;
        ASSERT_EQ(waitpid(pid, &status, 0), pid);
        ASSERT_GT(n, 0);
        EXPECT_EQ(atoi(buf), 0) << "library fds leaked across exec: " << buf;
        ipcmux_shmem_unref(region);
}
