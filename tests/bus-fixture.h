/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * GoogleTest glue for bus tests: one private dbus-daemon per test binary
 * (started before any test, killed after all), exported as
 * DBUS_SESSION_BUS_ADDRESS so ipcmux_channel_new() and the helper processes
 * use it and never the host's bus.  Include this in exactly one .cc file
 * per test binary (it defines the global environment).
 *
 * BusTest checks that every test leaves the process's fd count as it found
 * it (wayland's check_fd_leaks idea): we pass fds around, so leaks matter.
 */

#include <errno.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <string.h>
#include <string>
#include <vector>

#include <ipcmux/ipcmux.h>

#include "util-bus.h"

#define ASSERT_OK(expr)                                                         \
        do {                                                                    \
                int _r = (expr);                                                \
                ASSERT_GE(_r, 0) << #expr << ": " << strerror(-_r);             \
        } while (0)
#define EXPECT_OK(expr)                                                         \
        do {                                                                    \
                int _r = (expr);                                                \
                EXPECT_GE(_r, 0) << #expr << ": " << strerror(-_r);             \
        } while (0)

static inline void test_log_to_stderr(int level, const char *message, void *userdata) {
        (void) userdata;
        fprintf(stderr, "[ipcmux %d] %s\n", level, message);
}

class PrivateBus : public ::testing::Environment {
public:
        static TestBus *bus;
        static const char *config;      /* set before main() runs tests, NULL = bus.conf */

        void SetUp() override {
                const char *c = config ? config : getenv("IPCMUX_TEST_BUS_CONFIG");
                /* BusTest counts fds exactly: no region pool (a parked region
                 * holds two fds, plugin/shmem.c) here and in the helpers we
                 * spawn, unless the caller asked for one (tests/meson.build
                 * sets 0 too). */
                setenv("IPCMUX_SHMEM_POOL", "0", 0);
                /* IPCMUX_TEST_LOG=1: the library's debug log on stderr. */
                if (getenv("IPCMUX_TEST_LOG"))
                        ipcmux_set_log_handler(test_log_to_stderr, NULL);
                int r = test_bus_spawn(c, &bus);
                ASSERT_GE(r, 0) << "cannot start private dbus-daemon: " << strerror(-r);
                ASSERT_GE(test_bus_export(bus), 0);
        }
        void TearDown() override {
                test_bus_kill(bus);
                bus = nullptr;
        }
};

inline TestBus *PrivateBus::bus = nullptr;
inline const char *PrivateBus::config = nullptr;

static ::testing::Environment *const private_bus_env __attribute__((unused)) =
        ::testing::AddGlobalTestEnvironment(new PrivateBus);

class BusTest : public ::testing::Test {
protected:
        int fds_before = -1;
        /* Tests that keep the process-wide connection across tests open it
         * here, so the fd check does not count it as a leak. */
        ipcmux_channel *warm = nullptr;

        void SetUp() override {
                ASSERT_NE(PrivateBus::bus, nullptr);
                ASSERT_GE(ipcmux_channel_new(&warm), 0);
                fds_before = test_count_fds();
        }
        void TearDown() override {
                int after = test_count_fds();
                EXPECT_EQ(fds_before, after) << "fd leak in this test";
                warm = ipcmux_channel_unref(warm);
        }
};

/* Payload of a message as a string. */
static inline std::string msg_str(ipcmux_message *m) {
        size_t n;
        const void *p = ipcmux_message_get_data(m, &n);
        return std::string((const char *) p, n);
}

/* recv with a failure bound (never hang a test run). */
static inline int recv_bounded(ipcmux_receiver *rx, ipcmux_message **m, uint64_t usec = 10000000) {
        return ipcmux_receiver_try_recv_timeout(rx, usec, m);
}
