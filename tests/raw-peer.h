/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * A raw sd-bus peer for attack tests: it speaks the org.ipcmux wire
 * protocol by hand (no libipcmux), so it can send anything.  It runs its
 * blocking calls on its own thread while the test thread keeps the
 * library's connection dispatched (ipcmux dispatches only inside its calls).
 */

#include <atomic>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include <ipcmux/ipcmux.h>
#include <systemd/sd-bus.h>

#include "util-bus.h"

struct RawFrame {
        uint32_t flags = 0;
        std::string payload;
        std::vector<std::pair<uint32_t, uint64_t>> regions;   /* fd index, size */
        std::vector<uint32_t> fds;
        struct Ref {
                std::string owner, path;
                uint64_t token;
        };
        std::vector<Ref> senders;
};

/* Build a Send call by hand. */
static inline int raw_build_send(sd_bus *bus, const char *dest, const char *path, uint64_t seq,
                                 const std::vector<RawFrame> &frames, const std::vector<int> &fds,
                                 sd_bus_message **ret) {
        sd_bus_message *m = NULL;
        int r;

        r = sd_bus_message_new_method_call(bus, &m, dest, path, "org.ipcmux.Subchannel1", "Send");
        if (r < 0)
                return r;
        r = sd_bus_message_append_basic(m, 't', &seq);
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', "(uaya(ut)aua(sot))");
        for (const RawFrame &f : frames) {
                if (r >= 0)
                        r = sd_bus_message_open_container(m, 'r', "uaya(ut)aua(sot)");
                if (r >= 0)
                        r = sd_bus_message_append_basic(m, 'u', &f.flags);
                if (r >= 0)
                        r = sd_bus_message_append_array(m, 'y', f.payload.data(), f.payload.size());
                if (r >= 0)
                        r = sd_bus_message_open_container(m, 'a', "(ut)");
                for (auto &reg : f.regions)
                        if (r >= 0)
                                r = sd_bus_message_append(m, "(ut)", reg.first, reg.second);
                if (r >= 0)
                        r = sd_bus_message_close_container(m);
                if (r >= 0)
                        r = sd_bus_message_append_array(m, 'u', f.fds.data(), f.fds.size() * sizeof(uint32_t));
                if (r >= 0)
                        r = sd_bus_message_open_container(m, 'a', "(sot)");
                for (auto &s : f.senders)
                        if (r >= 0)
                                r = sd_bus_message_append(m, "(sot)", s.owner.c_str(), s.path.c_str(), s.token);
                if (r >= 0)
                        r = sd_bus_message_close_container(m);
                if (r >= 0)
                        r = sd_bus_message_close_container(m);
        }
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r >= 0)
                r = sd_bus_message_open_container(m, 'a', "h");
        for (int fd : fds)
                if (r >= 0)
                        r = sd_bus_message_append_basic(m, 'h', &fd);
        if (r >= 0)
                r = sd_bus_message_close_container(m);
        if (r < 0) {
                sd_bus_message_unref(m);
                return r;
        }
        *ret = m;
        return 0;
}

/* Result of a call: 0 on a method return, else the error name. */
struct CallResult {
        int r = 0;
        std::string error;
};

static inline CallResult raw_call(sd_bus *bus, sd_bus_message *m) {
        sd_bus_error e = SD_BUS_ERROR_NULL;
        sd_bus_message *reply = NULL;
        CallResult res;

        res.r = sd_bus_call(bus, m, 10 * 1000000ULL, &e, &reply);
        if (res.r < 0 && e.name)
                res.error = e.name;
        sd_bus_error_free(&e);
        sd_bus_message_unref(reply);
        sd_bus_message_unref(m);
        return res;
}

/*
 * Run @fn (the attacker) on its own thread while the test thread keeps
 * ipcmux dispatching through @pump (a receiver that is polled with short
 * timeouts; whatever it receives is appended to @got).
 */
static inline void run_with_pump(ipcmux_receiver *pump, std::vector<std::string> *got, std::function<void()> fn) {
        std::atomic<bool> done{false};
        std::thread t([&] {
                fn();
                done = true;
        });
        uint64_t deadline = test_now_usec() + 60 * 1000000ULL;
        while (!done && test_now_usec() < deadline) {
                ipcmux_message *m = NULL;
                int r = ipcmux_receiver_try_recv_timeout(pump, 10000, &m);
                if (r >= 0) {
                        size_t n;
                        const char *p = (const char *) ipcmux_message_get_data(m, &n);
                        if (got)
                                got->emplace_back(p, n);
                        ipcmux_message_unref(m);
                }
        }
        t.join();
}
