/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests of the Send call codec (plugin/wire.c): what the encoder writes
 * the decoder reads back, and wire_validate() refuses every inconsistent
 * call.  Messages are built on an unstarted socketpair bus, sealed and
 * rewound: no daemon needed.
 */

#include <gtest/gtest.h>
#include <string>
#include <fcntl.h>
#include <sys/socket.h>
#include <unistd.h>
#include <vector>

extern "C" {
#include "wire.h"
}

class Wire : public ::testing::Test {
protected:
        sd_bus *bus = nullptr;
        WireCall w = {};

        void SetUp() override {
                int pair[2];
                ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
                ASSERT_GE(sd_bus_new(&bus), 0);
                ASSERT_GE(sd_bus_set_fd(bus, pair[0], pair[0]), 0);
                ASSERT_GE(sd_bus_negotiate_fds(bus, 1), 0);
                ASSERT_GE(sd_bus_start(bus), 0);
                close(pair[1]);
        }
        void TearDown() override {
                wire_call_done(&w);
                sd_bus_unref(bus);
        }

        sd_bus_message *new_call() {
                sd_bus_message *m = NULL;
                EXPECT_GE(sd_bus_message_new_method_call(bus, &m, NULL, "/org/ipcmux/a/b",
                                                         IPCMUX_INTERFACE_SUBCHANNEL, "Send"), 0);
                return m;
        }

        /* Seal and rewind so the message reads like a received one. */
        void seal(sd_bus_message *m) {
                ASSERT_GE(sd_bus_message_seal(m, 1, 0), 0);
                ASSERT_GE(sd_bus_message_rewind(m, 1), 0);
        }
};

TEST_F(Wire, RoundTrip) {
        sd_bus_message *m = new_call();
        int pipefd[2];
        ASSERT_EQ(pipe2(pipefd, O_CLOEXEC), 0);

        uint32_t ridx[] = {0}, fidx[] = {1};
        uint64_t rsize[] = {4096};
        WireSenderRef refs[] = {{":1.7", "/org/ipcmux/x/y", 99}};
        ASSERT_GE(wire_open_frames(m, 41), 0);
        ASSERT_GE(wire_append_frame(m, 0, "hello", 5, 1, ridx, rsize, 1, fidx, 1, refs), 0);
        ASSERT_GE(wire_append_frame(m, 0, "", 0, 0, NULL, NULL, 0, NULL, 0, NULL), 0);
        int fds[] = {pipefd[0], pipefd[1]};
        ASSERT_GE(wire_close_frames(m, fds, 2), 0);
        seal(m);

        ASSERT_GE(wire_read_send(m, &w), 0);
        EXPECT_EQ(w.first_seq, 41u);
        ASSERT_EQ(w.n_frames, 2u);
        EXPECT_EQ(std::string((const char *) w.frames[0].payload, w.frames[0].payload_size), "hello");
        ASSERT_EQ(w.frames[0].n_regions, 1u);
        EXPECT_EQ(w.regions[w.frames[0].regions_at].size, 4096u);
        ASSERT_EQ(w.frames[0].n_fds, 1u);
        EXPECT_EQ(w.fds[w.frames[0].fds_at], 1u);
        ASSERT_EQ(w.frames[0].n_senders, 1u);
        EXPECT_STREQ(w.senders[0].owner, ":1.7");
        EXPECT_STREQ(w.senders[0].path, "/org/ipcmux/x/y");
        EXPECT_EQ(w.senders[0].token, 99u);
        EXPECT_EQ(w.frames[1].payload_size, 0u);
        EXPECT_EQ(w.n_call_fds, 2u);
        EXPECT_EQ(wire_validate(&w, 0), 0);
        /* With 3 staged fds the indices 0 and 1 are still in range. */
        EXPECT_EQ(wire_validate(&w, 3), 0);

        sd_bus_message_unref(m);
        close(pipefd[0]);
        close(pipefd[1]);
}

TEST_F(Wire, ReuseBetweenCalls) {
        for (int i = 0; i < 3; i++) {
                sd_bus_message *m = new_call();
                ASSERT_GE(wire_open_frames(m, (uint64_t) i), 0);
                for (int k = 0; k <= i; k++)
                        ASSERT_GE(wire_append_frame(m, 0, "x", 1, 0, NULL, NULL, 0, NULL, 0, NULL), 0);
                ASSERT_GE(wire_close_frames(m, NULL, 0), 0);
                seal(m);
                ASSERT_GE(wire_read_send(m, &w), 0);
                EXPECT_EQ(w.n_frames, (size_t) i + 1);
                EXPECT_EQ(w.first_seq, (uint64_t) i);
                sd_bus_message_unref(m);
        }
}

struct BadCase {
        const char *what;
        uint32_t flags;
        std::vector<uint32_t> region_idx;
        std::vector<uint32_t> fd_idx;
        const char *owner;
        size_t payload;
        int n_fds;
};

TEST_F(Wire, ValidateRefuses) {
        const BadCase cases[] = {
                {"unknown flag", 0x10, {}, {}, NULL, 0, 0},
                {"fd index out of range", 0, {}, {0}, NULL, 0, 0},
                {"region index out of range", 0, {3}, {}, NULL, 0, 2},
                {"fd used twice", 0, {}, {0, 0}, NULL, 0, 1},
                {"region and fd share an index", 0, {0}, {0}, NULL, 0, 1},
                {"spilled without region", WIRE_FRAME_SPILLED, {}, {}, NULL, 0, 0},
                {"spilled with inline bytes", WIRE_FRAME_SPILLED, {0}, {}, NULL, 5, 1},
                {"owner not a unique name", 0, {}, {}, "org.example", 0, 0},
        };
        for (const BadCase &c : cases) {
                sd_bus_message *m = new_call();
                std::vector<uint64_t> sizes(c.region_idx.size(), 16);
                WireSenderRef ref = {c.owner ? c.owner : ":1.1", "/a", 1};
                std::vector<int> fds;
                for (int i = 0; i < c.n_fds; i++)
                        fds.push_back(0);       /* stdin stands in: only numbers matter */
                ASSERT_GE(wire_open_frames(m, 0), 0);
                ASSERT_GE(wire_append_frame(m, c.flags, "12345", c.payload, (unsigned) c.region_idx.size(),
                                            c.region_idx.data(), sizes.data(), (unsigned) c.fd_idx.size(),
                                            c.fd_idx.data(), c.owner ? 1 : 0, &ref), 0);
                ASSERT_GE(wire_close_frames(m, fds.data(), (unsigned) fds.size()), 0);
                seal(m);
                ASSERT_GE(wire_read_send(m, &w), 0) << c.what;
                EXPECT_EQ(wire_validate(&w, 0), -EBADMSG) << c.what;
                sd_bus_message_unref(m);
        }
}

TEST_F(Wire, WrongSignatureIsAnError) {
        sd_bus_message *m = new_call();
        ASSERT_GE(sd_bus_message_append(m, "s", "not a send call"), 0);
        seal(m);
        EXPECT_LT(wire_read_send(m, &w), 0);
        sd_bus_message_unref(m);
}
