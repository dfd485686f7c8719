/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Peers are untrusted: a raw sd-bus client (tests/raw-peer.h) sends wrong
 * signatures, garbage frames, bad fds, forged lifecycle calls and calls to
 * paths that do not exist.  Each must get an error reply (when one is asked
 * for); the library never crashes, leaks fds, blocks, or loses the good
 * traffic queued around the bad calls.
 */

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include "bus-fixture.h"
#include "raw-peer.h"

#define ACCESS_DENIED "org.freedesktop.DBus.Error.AccessDenied"
#define INVALID_ARGS "org.freedesktop.DBus.Error.InvalidArgs"
#define UNKNOWN_OBJECT "org.freedesktop.DBus.Error.UnknownObject"
#define LIMITS "org.freedesktop.DBus.Error.LimitsExceeded"

class BadInput : public BusTest {
protected:
        sd_bus *raw = nullptr;
        ipcmux_server *srv = nullptr;
        ipcmux_receiver *rx = nullptr;  /* the raw peer is its only remote holder */
        std::string me, path;
        uint64_t seq = 0;

        void SetUp() override {
                BusTest::SetUp();
                ASSERT_OK(test_bus_connect(PrivateBus::bus, &raw));
                char *name = NULL;
                ASSERT_OK(ipcmux_server_new(&srv, &name));
                std::string n(name);
                free(name);
                me = n.substr(0, n.find('/'));
                path = n.substr(n.find('/'), n.find('#') - n.find('/'));
                std::string wk = "org.ipcmux.OneShot.t" + n.substr(n.find('#') + 1);

                /* Connect by hand: claim the one-shot name, then send "first". */
                sd_bus_error e = SD_BUS_ERROR_NULL;
                sd_bus_message *reply = NULL;
                ASSERT_OK(sd_bus_call_method(raw, "org.freedesktop.DBus", "/org/freedesktop/DBus",
                                             "org.freedesktop.DBus", "RequestName", &e, &reply, "su",
                                             wk.c_str(), 4u));
                uint32_t res = 0;
                ASSERT_OK(sd_bus_message_read(reply, "u", &res));
                ASSERT_EQ(res, 1u);
                sd_bus_message_unref(reply);
                send_good("first");

                ipcmux_message *first = NULL;
                ASSERT_OK(ipcmux_server_accept_timeout(srv, 10000000, &rx, &first));
                EXPECT_EQ(msg_str(first), "first");
                ipcmux_message_unref(first);
        }
        void TearDown() override {
                rx = ipcmux_receiver_unref(rx);
                srv = ipcmux_server_unref(srv);
                raw = sd_bus_flush_close_unref(raw);
                BusTest::TearDown();
        }

        /* A well-formed one-frame Send, no reply expected (as the library sends). */
        void send_good(const std::string &payload) {
                sd_bus_message *m = NULL;
                RawFrame f;
                f.payload = payload;
                ASSERT_OK(raw_build_send(raw, me.c_str(), path.c_str(), seq++, {f}, {}, &m));
                ASSERT_OK(sd_bus_message_set_expect_reply(m, 0));
                ASSERT_OK(sd_bus_send(raw, m, NULL));
                sd_bus_message_unref(m);
        }

        /* Run bad calls on the raw peer's thread, then good traffic must all arrive in order. */
        void attack(std::function<void()> fn) {
                std::vector<std::string> got;
                run_with_pump(rx, &got, [&] {
                        send_good("before");
                        fn();
                        send_good("after");
                        ASSERT_OK(sd_bus_flush(raw));
                });
                /* Drain what may still be in flight. */
                while (got.size() < 2) {
                        ipcmux_message *m = NULL;
                        int r = recv_bounded(rx, &m, 5000000);
                        ASSERT_OK(r);
                        got.push_back(msg_str(m));
                        ipcmux_message_unref(m);
                }
                ASSERT_EQ(got.size(), 2u);
                EXPECT_EQ(got[0], "before");
                EXPECT_EQ(got[1], "after");
        }

        CallResult call_send(const std::vector<RawFrame> &frames, const std::vector<int> &fds,
                             const char *p = nullptr) {
                sd_bus_message *m = NULL;
                int r = raw_build_send(raw, me.c_str(), p ? p : path.c_str(), seq, frames, fds, &m);
                EXPECT_GE(r, 0);
                return raw_call(raw, m);
        }

        CallResult call(const char *p, const char *iface, const char *member, const char *sig, ...) {
                sd_bus_message *m = NULL;
                va_list ap;
                int r = sd_bus_message_new_method_call(raw, &m, me.c_str(), p, iface, member);
                EXPECT_GE(r, 0);
                va_start(ap, sig);
                if (sig)
                        r = sd_bus_message_appendv(m, sig, ap);
                va_end(ap);
                EXPECT_GE(r, 0);
                return raw_call(raw, m);
        }
};

static int sealed_memfd(size_t size, unsigned seals) {
        int fd = memfd_create("test", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0 || ftruncate(fd, (off_t) size) < 0)
                return -1;
        if (seals && fcntl(fd, F_ADD_SEALS, seals) < 0)
                return -1;
        return fd;
}

TEST_F(BadInput, WrongSignature) {
        attack([&] {
                CallResult res = call(path.c_str(), "org.ipcmux.Subchannel1", "Send", "s", "garbage");
                EXPECT_EQ(res.error, INVALID_ARGS);
                res = call(path.c_str(), "org.ipcmux.Subchannel1", "Release", "s", "x");
                EXPECT_EQ(res.error, INVALID_ARGS);
                res = call(path.c_str(), "org.ipcmux.Subchannel1", "Claim", "u", 7u);
                EXPECT_EQ(res.error, INVALID_ARGS);
                res = call(path.c_str(), "org.ipcmux.Subchannel1", "NoSuchMethod", NULL);
                EXPECT_FALSE(res.error.empty());
                /* Subchannel1 calls are run from the filter (receiver_dispatch_call());
                 * their errors must still reach a caller that asked for a reply. */
                res = call(path.c_str(), "org.ipcmux.Subchannel1", "SendPacked", "s", "garbage");
                EXPECT_EQ(res.error, INVALID_ARGS);
                res = call(path.c_str(), "org.ipcmux.Subchannel1", "SendPacked", "ay", 3, 'a', 'b', 'c');
                EXPECT_EQ(res.error, INVALID_ARGS) << "3 bytes: not even a sequence number";
        });
}

TEST_F(BadInput, GarbageFrames) {
        attack([&] {
                RawFrame f;
                f.flags = 0x80;         /* unknown flag */
                EXPECT_EQ(call_send({f}, {}).error, INVALID_ARGS);

                RawFrame spilled;
                spilled.flags = 1;      /* spilled payload without its region */
                EXPECT_EQ(call_send({spilled}, {}).error, INVALID_ARGS);

                RawFrame badfd;
                badfd.fds = {5};        /* no fds at all */
                EXPECT_EQ(call_send({badfd}, {}).error, INVALID_ARGS);

                RawFrame badref;
                badref.senders.push_back({"not.unique", "/x", 1});
                EXPECT_EQ(call_send({badref}, {}).error, INVALID_ARGS);
        });
}

TEST_F(BadInput, DuplicateFdIndex) {
        int p[2];
        ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
        attack([&] {
                RawFrame f;
                f.fds = {0, 0};
                EXPECT_EQ(call_send({f}, {p[0]}).error, INVALID_ARGS);
        });
        close(p[0]);
        close(p[1]);
}

TEST_F(BadInput, HostileRegions) {
        int p[2];
        ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
        int unsealed = sealed_memfd(4096, 0);
        int sealed = sealed_memfd(4096, F_SEAL_SHRINK | F_SEAL_GROW);
        int sparse = sealed_memfd(0, 0);
        ASSERT_GE(unsealed, 0);
        ASSERT_GE(sealed, 0);
        ASSERT_GE(sparse, 0);
        ASSERT_EQ(ftruncate(sparse, (off_t) (64ULL << 30)), 0);
        ASSERT_EQ(fcntl(sparse, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);

        attack([&] {
                RawFrame f;
                f.regions = {{0, 4096}};
                EXPECT_EQ(call_send({f}, {p[0]}).error, INVALID_ARGS) << "pipe as region";
                EXPECT_EQ(call_send({f}, {unsealed}).error, INVALID_ARGS) << "unsealed memfd";
                RawFrame wrong;
                wrong.regions = {{0, 8192}};
                EXPECT_EQ(call_send({wrong}, {sealed}).error, INVALID_ARGS) << "wrong size";
        });
        /* The unsealed region may be truncated afterwards: nothing of it was mapped. */
        ASSERT_EQ(ftruncate(unsealed, 0), 0);
        close(p[0]);
        close(p[1]);
        close(unsealed);
        close(sealed);
        close(sparse);
}

/* Over quota (here: a sparse 64 GiB region) the peer is refused AND cut off:
 * an ipcmux sender can only get there in good faith, and its lost frames
 * must not be silent (PROTOCOL.md).  Other holders' traffic is untouched. */
TEST_F(BadInput, QuotaCutsOffThePeer) {
        int sparse = sealed_memfd(0, 0);
        ASSERT_GE(sparse, 0);
        ASSERT_EQ(ftruncate(sparse, (off_t) (64ULL << 30)), 0);
        ASSERT_EQ(fcntl(sparse, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW), 0);
        /* Pump with a receiver of our own: rx itself disconnects on the way. */
        ipcmux_sender *pump_tx = NULL;
        ipcmux_receiver *pump = NULL;
        ASSERT_OK(ipcmux_channel_sub_channel(warm, &pump_tx, &pump));
        std::vector<std::string> got;

        run_with_pump(pump, nullptr, [&] {
                send_good("before");
                RawFrame huge;
                huge.regions = {{0, 64ULL << 30}};
                EXPECT_EQ(call_send({huge}, {sparse}).error, LIMITS);
                seq++;
                RawFrame after;
                after.payload = "after";
                EXPECT_EQ(call_send({after}, {}).error, ACCESS_DENIED) << "the peer holds nothing any more";
        });
        close(sparse);
        while (got.size() < 1) {
                ipcmux_message *m = NULL;
                ASSERT_OK(recv_bounded(rx, &m));
                got.push_back(msg_str(m));
                ipcmux_message_unref(m);
        }
        EXPECT_EQ(got, std::vector<std::string>{"before"});
        /* It was the only holder: the subchannel is now disconnected. */
        ipcmux_message *m = NULL;
        EXPECT_EQ(recv_bounded(rx, &m), -EPIPE);
        ipcmux_sender_unref(pump_tx);
        ipcmux_receiver_unref(pump);
}

TEST_F(BadInput, ForgedLifecycle) {
        attack([&] {
                /* Release more than held, claim and decline what is not in flight. */
                EXPECT_EQ(call(path.c_str(), "org.ipcmux.Subchannel1", "Release", "u", 5u).error, ACCESS_DENIED);
                EXPECT_EQ(call(path.c_str(), "org.ipcmux.Subchannel1", "Claim", "st", ":1.999", (uint64_t) 42).error,
                          ACCESS_DENIED);
                EXPECT_EQ(call(path.c_str(), "org.ipcmux.Subchannel1", "Decline", "st", ":1.999", (uint64_t) 42).error,
                          ACCESS_DENIED);
                EXPECT_EQ(call(path.c_str(), "org.ipcmux.Subchannel1", "Sending", "ts", (uint64_t) 1, "nonsense").error,
                          INVALID_ARGS);
        });
        /* The raw peer still holds exactly its one hold: its data goes through. */
}

TEST_F(BadInput, UnknownPaths) {
        std::string prefix = path.substr(0, path.rfind('/'));
        attack([&] {
                std::string unknown = prefix + "/00000000000000000000000000000000";
                EXPECT_EQ(call_send({RawFrame()}, {}, unknown.c_str()).error, UNKNOWN_OBJECT);
                EXPECT_FALSE(call_send({RawFrame()}, {}, prefix.c_str()).error.empty()) << "bare prefix";
                std::string bad = prefix + "/zz";
                EXPECT_FALSE(call_send({RawFrame()}, {}, bad.c_str()).error.empty());
                EXPECT_FALSE(call_send({RawFrame()}, {}, "/org/ipcmux/nothing/here").error.empty());
                /* The live receiver's id under another channel's prefix, or
                 * with a component after it, is not the receiver. */
                std::string id = path.substr(path.rfind('/'));
                std::string elsewhere = "/org/ipcmux/0123456789abcdef" + id;
                EXPECT_EQ(call_send({RawFrame()}, {}, elsewhere.c_str()).error, UNKNOWN_OBJECT);
                EXPECT_EQ(call(elsewhere.c_str(), "org.ipcmux.Subchannel1", "SendPacked", "ay", 0).error,
                          UNKNOWN_OBJECT);
                std::string below = path + "/0123456789abcdef";
                EXPECT_EQ(call_send({RawFrame()}, {}, below.c_str()).error, UNKNOWN_OBJECT);
        });
}

TEST_F(BadInput, DroppedSubchannel) {
        ipcmux_sender *tx = NULL;
        ipcmux_receiver *gone = NULL;
        ASSERT_OK(ipcmux_channel_sub_channel(warm, &tx, &gone));
        std::string gone_path = ipcmux_receiver_get_path(gone);
        ipcmux_receiver_unref(gone);
        attack([&] {
                EXPECT_EQ(call_send({RawFrame()}, {}, gone_path.c_str()).error, UNKNOWN_OBJECT);
                EXPECT_FALSE(call(gone_path.c_str(), "org.ipcmux.Subchannel1", "Release", "u", 1u).error.empty());
        });
        EXPECT_EQ(ipcmux_sender_send_bytes(tx, "x", 1), -EPIPE);
        ipcmux_sender_unref(tx);
}

TEST_F(BadInput, NonHolderIsDenied) {
        sd_bus *stranger = NULL;
        ASSERT_OK(test_bus_connect(PrivateBus::bus, &stranger));
        attack([&] {
                sd_bus_message *m = NULL;
                RawFrame f;
                f.payload = "intruder";
                ASSERT_OK(raw_build_send(stranger, me.c_str(), path.c_str(), 0, {f}, {}, &m));
                EXPECT_EQ(raw_call(stranger, m).error, ACCESS_DENIED);
                m = NULL;
                ASSERT_OK(sd_bus_message_new_method_call(stranger, &m, me.c_str(), path.c_str(),
                                                         "org.ipcmux.Subchannel1", "Release"));
                ASSERT_OK(sd_bus_message_append(m, "u", 1u));
                EXPECT_EQ(raw_call(stranger, m).error, ACCESS_DENIED) << "forged release";
        });
        sd_bus_flush_close_unref(stranger);
}

TEST_F(BadInput, StagedFdFlood) {
        int p[2];
        ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
        int fds_base = test_count_fds();
        std::vector<std::string> got;
        run_with_pump(rx, &got, [&] {
                send_good("before");
                bool refused = false;
                /* Staged fds are bounded (1024, and the peer's fd budget);
                 * beyond, the call is refused and the peer cut off. */
                for (int i = 0; i < 70 && !refused; i++) {
                        sd_bus_message *m = NULL;
                        ASSERT_OK(sd_bus_message_new_method_call(raw, &m, me.c_str(), path.c_str(),
                                                                 "org.ipcmux.Subchannel1", "StageFds"));
                        ASSERT_OK(sd_bus_message_open_container(m, 'a', "h"));
                        for (int k = 0; k < 16; k++)
                                ASSERT_OK(sd_bus_message_append_basic(m, 'h', &p[0]));
                        ASSERT_OK(sd_bus_message_close_container(m));
                        CallResult res = raw_call(raw, m);
                        if (!res.error.empty()) {
                                EXPECT_EQ(res.error, LIMITS);
                                refused = true;
                        }
                }
                EXPECT_TRUE(refused);
        });
        ipcmux_message *m = NULL;
        if (got.empty()) {
                ASSERT_OK(recv_bounded(rx, &m));
                got.push_back(msg_str(m));
                ipcmux_message_unref(m);
        }
        EXPECT_EQ(got[0], "before");
        /* Every staged fd was closed again. */
        EXPECT_EQ(test_count_fds(), fds_base);
        close(p[0]);
        close(p[1]);
}

TEST_F(BadInput, RootObject) {
        attack([&] {
                CallResult sync = call("/org/ipcmux", "org.ipcmux.Peer1", "Sync", NULL);
                EXPECT_GE(sync.r, 0);
                EXPECT_TRUE(sync.error.empty()) << sync.error;
                EXPECT_TRUE(call("/org/ipcmux", "org.ipcmux.Peer1", "Closed", "o", "/no/such").error.empty());
                EXPECT_TRUE(call("/org/ipcmux", "org.ipcmux.Peer1", "Credit", "ott", "/x", (uint64_t) 1,
                                 (uint64_t) 1).error.empty());
                EXPECT_EQ(call("/org/ipcmux", "org.ipcmux.Peer1", "Closed", "s", "x").error, INVALID_ARGS);
        });
}

TEST_F(BadInput, RefusedIsCounted) {
        attack([&] {
                for (int i = 0; i < 3; i++)
                        EXPECT_EQ(call(path.c_str(), "org.ipcmux.Subchannel1", "Release", "u", 9u).error, ACCESS_DENIED);
                sd_bus_error e = SD_BUS_ERROR_NULL;
                uint64_t refused = 0;
                ASSERT_OK(sd_bus_get_property_trivial(raw, me.c_str(), path.c_str(), "org.ipcmux.Subchannel1",
                                                      "Refused", &e, 't', &refused));
                EXPECT_EQ(refused, 3u);
        });
}

/*
 * A stranger that learned the paths calls every method of every object the
 * process exports, with well-typed random arguments, expecting replies:
 * every call is answered promptly, nothing is delivered, nothing closed, no
 * phantom holder appears.
 */
TEST_F(BadInput, StrangerCallsEverythingWithRandomArguments) {
        sd_bus *stranger = NULL;
        ASSERT_OK(test_bus_connect(PrivateBus::bus, &stranger));
        ipcmux_sender *local_tx = NULL;
        ipcmux_receiver *local_rx = NULL;
        ASSERT_OK(ipcmux_channel_sub_channel(warm, &local_tx, &local_rx));
        std::string local_path = ipcmux_receiver_get_path(local_rx);
        unsigned seed = 12345;
        auto rnd = [&] { return seed = seed * 1103515245u + 12345u; };
        auto rnd_name = [&] { return ":1." + std::to_string(rnd() % 50); };
        auto rnd_path = [&](const std::string &base) {
                return (rnd() % 2) ? base : std::string("/org/ipcmux/x") + std::to_string(rnd() % 10);
        };
        std::vector<std::string> got;
        uint64_t slowest = 0;

        run_with_pump(local_rx, &got, [&] {
                for (int i = 0; i < 300; i++) {
                        const std::string target = (i % 2) ? path : local_path;
                        sd_bus_message *m = NULL;
                        const char *iface = "org.ipcmux.Subchannel1", *member;
                        std::string p = target;
                        int which = rnd() % 10;
                        int r = 0;

                        switch (which) {
                        case 0: member = "Send"; break;
                        case 1: member = "SendPacked"; break;
                        case 2: member = "StageFds"; break;
                        case 3: member = "Release"; break;
                        case 4: member = "Sending"; break;
                        case 5: member = "Claim"; break;
                        case 6: member = "Decline"; break;
                        case 7: member = "WantCredit"; break;
                        case 8: iface = "org.ipcmux.Peer1"; p = "/org/ipcmux";
                                member = (rnd() % 2) ? "Closed" : "Credit"; break;
                        default: iface = "org.ipcmux.Peer1"; p = "/org/ipcmux";
                                member = (rnd() % 2) ? "Ack" : "Connect"; break;
                        }
                        if (which == 0) {
                                RawFrame f;
                                f.payload = "stranger";
                                f.senders.push_back({rnd_name(), target, rnd()});
                                ASSERT_OK(raw_build_send(stranger, me.c_str(), p.c_str(), rnd(), {f}, {}, &m));
                        } else {
                                ASSERT_OK(sd_bus_message_new_method_call(stranger, &m, me.c_str(), p.c_str(), iface,
                                                                         member));
                                if (which == 1) {
                                        uint8_t junk[24];
                                        for (auto &b : junk)
                                                b = (uint8_t) rnd();
                                        r = sd_bus_message_append_array(m, 'y', junk, rnd() % sizeof(junk));
                                } else if (which == 2)
                                        r = sd_bus_message_append(m, "ah", 0);
                                else if (which == 3)
                                        r = sd_bus_message_append(m, "u", rnd() % 4);
                                else if (which == 4)
                                        r = sd_bus_message_append(m, "ts", (uint64_t) rnd(), rnd_name().c_str());
                                else if (which == 5 || which == 6)
                                        r = sd_bus_message_append(m, "st", rnd_name().c_str(), (uint64_t) rnd());
                                else if (which == 8 && strcmp(member, "Closed") == 0)
                                        r = sd_bus_message_append(m, "o", rnd_path(target).c_str());
                                else if (which == 8)
                                        r = sd_bus_message_append(m, "ott", rnd_path(target).c_str(),
                                                                  (uint64_t) rnd(), (uint64_t) rnd());
                                else if (strcmp(member, "Ack") == 0)
                                        r = sd_bus_message_append(m, "tt", (uint64_t) rnd(), (uint64_t) rnd());
                                else if (strcmp(member, "Connect") == 0)
                                        r = sd_bus_message_append(m, "s", "no-such-listener");
                                ASSERT_OK(r);
                        }
                        uint64_t t0 = test_now_usec();
                        CallResult res = raw_call(stranger, m);
                        slowest = std::max(slowest, test_now_usec() - t0);
                        EXPECT_NE(res.error, "org.freedesktop.DBus.Error.NoReply") << member;
                        EXPECT_NE(res.error, "org.freedesktop.DBus.Error.Timeout") << member;
                }
        });
        EXPECT_LT(slowest, 2000000u) << "every call must be answered promptly";
        EXPECT_TRUE(got.empty()) << "a stranger delivered something";

        /* Nothing closed, no phantom holder: both subchannels work as before. */
        ASSERT_OK(ipcmux_sender_send_bytes(local_tx, "still here", 10));
        ipcmux_message *m = NULL;
        ASSERT_OK(recv_bounded(local_rx, &m));
        EXPECT_EQ(msg_str(m), "still here");
        ipcmux_message_unref(m);
        send_good("raw still holds");
        ASSERT_OK(recv_bounded(rx, &m));
        EXPECT_EQ(msg_str(m), "raw still holds");
        ipcmux_message_unref(m);
        char **holders = NULL;
        run_with_pump(local_rx, nullptr, [&] {
                sd_bus_error e = SD_BUS_ERROR_NULL;
                EXPECT_OK(sd_bus_get_property_strv(raw, me.c_str(), path.c_str(), "org.ipcmux.Subchannel1",
                                                   "Holders", &e, &holders));
                sd_bus_error_free(&e);
        });
        ASSERT_NE(holders, nullptr);
        EXPECT_NE(holders[0], nullptr);
        if (holders[0]) {
                EXPECT_EQ(holders[1], nullptr) << "a phantom holder appeared: " << holders[1];
        }
        for (char **h = holders; h && *h; h++)
                free(*h);
        free(holders);
        /* The local subchannel never had a remote holder. */
        ipcmux_sender_unref(local_tx);
        EXPECT_EQ(recv_bounded(local_rx, &m), -EPIPE);
        ipcmux_receiver_unref(local_rx);
        sd_bus_flush_close_unref(stranger);
}
