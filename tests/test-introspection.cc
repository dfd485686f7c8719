/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The XML in introspection/ is the contract: what a live object returns from
 * Introspect must describe exactly the same interface (same members, args,
 * properties and annotations; comments and attribute order aside).  Also
 * what people see with busctl: tree, introspect, get-property.
 */

#include <algorithm>
#include <fstream>
#include <sstream>

#include "bus-fixture.h"
#include "raw-peer.h"

/* Canonical list of the elements inside <interface name=@iface>: one string
 * per element, attributes sorted, comments dropped. */
static std::vector<std::string> canonical_interface(const std::string &xml, const std::string &iface) {
        std::vector<std::string> out;
        size_t i = 0;
        int depth = -1;         /* >= 0 while inside the interface */

        while ((i = xml.find('<', i)) != std::string::npos) {
                if (xml.compare(i, 4, "<!--") == 0) {
                        i = xml.find("-->", i);
                        if (i == std::string::npos)
                                break;
                        continue;
                }
                size_t end = xml.find('>', i);
                if (end == std::string::npos)
                        break;
                std::string tag = xml.substr(i + 1, end - i - 1);
                i = end + 1;
                if (tag.empty() || tag[0] == '?' || tag[0] == '!')
                        continue;
                bool closing = tag[0] == '/';
                bool selfclosing = tag.back() == '/';
                if (selfclosing)
                        tag.pop_back();
                std::istringstream ss(closing ? tag.substr(1) : tag);
                std::string name;
                ss >> name;
                std::vector<std::string> attrs;
                std::string rest;
                std::getline(ss, rest);
                /* attributes: key="value" pairs */
                size_t p = 0;
                while ((p = rest.find('=', p)) != std::string::npos) {
                        size_t ks = rest.find_last_of(" \t\n", p);
                        std::string key = rest.substr(ks == std::string::npos ? 0 : ks + 1,
                                                      p - (ks == std::string::npos ? 0 : ks + 1));
                        size_t q1 = rest.find('"', p), q2 = rest.find('"', q1 + 1);
                        attrs.push_back(key + "=" + rest.substr(q1 + 1, q2 - q1 - 1));
                        p = q2 + 1;
                }
                std::sort(attrs.begin(), attrs.end());

                if (depth < 0) {
                        if (!closing && name == "interface" &&
                            std::find(attrs.begin(), attrs.end(), "name=" + iface) != attrs.end())
                                depth = 0;
                        continue;
                }
                if (closing) {
                        if (depth == 0)
                                break;
                        depth--;
                        out.push_back("/" + name);
                        continue;
                }
                std::string s = name;
                for (auto &a : attrs)
                        s += " " + a;
                out.push_back(s);
                if (!selfclosing)
                        depth++;
                else
                        out.push_back("/" + name);
        }
        return out;
}

static std::string read_file(const std::string &path) {
        std::ifstream f(path);
        std::stringstream ss;
        ss << f.rdbuf();
        return ss.str();
}

static std::string introspection_dir() {
        const char *d = getenv("IPCMUX_INTROSPECTION_DIR");
        return d ? d : "introspection";
}

class Introspection : public BusTest {
protected:
        sd_bus *raw = nullptr;
        ipcmux_sender *tx = nullptr;
        ipcmux_receiver *rx = nullptr;
        /* Polled to keep the connection dispatched; nobody sends to it. */
        ipcmux_sender *pump_tx = nullptr;
        ipcmux_receiver *pump = nullptr;

        void SetUp() override {
                BusTest::SetUp();
                ASSERT_OK(test_bus_connect(PrivateBus::bus, &raw));
                ASSERT_OK(ipcmux_channel_sub_channel(warm, &tx, &rx));
                ASSERT_OK(ipcmux_channel_sub_channel(warm, &pump_tx, &pump));
        }
        void TearDown() override {
                pump_tx = ipcmux_sender_unref(pump_tx);
                pump = ipcmux_receiver_unref(pump);
                tx = ipcmux_sender_unref(tx);
                rx = ipcmux_receiver_unref(rx);
                raw = sd_bus_flush_close_unref(raw);
                BusTest::TearDown();
        }

        std::string introspect(const std::string &path) {
                std::string xml;
                run_with_pump(pump, nullptr, [&] {
                        sd_bus_error e = SD_BUS_ERROR_NULL;
                        sd_bus_message *reply = NULL;
                        int r = sd_bus_call_method(raw, ipcmux_channel_get_unique_name(warm), path.c_str(),
                                                   "org.freedesktop.DBus.Introspectable", "Introspect", &e,
                                                   &reply, NULL);
                        EXPECT_GE(r, 0) << (e.message ? e.message : "");
                        const char *s = NULL;
                        if (r >= 0 && sd_bus_message_read(reply, "s", &s) >= 0)
                                xml = s;
                        sd_bus_message_unref(reply);
                        sd_bus_error_free(&e);
                });
                return xml;
        }

        std::string busctl(std::vector<std::string> args) {
                std::vector<std::string> full = {"busctl", std::string("--address=") + test_bus_address(PrivateBus::bus),
                                                 "--no-pager"};
                full.insert(full.end(), args.begin(), args.end());
                std::vector<char *> argv;
                for (auto &a : full)
                        argv.push_back((char *) a.c_str());
                argv.push_back(nullptr);
                std::string out;
                run_with_pump(pump, nullptr, [&] {
                        char *o = NULL;
                        int r = test_run_capture(argv.data(), &o);
                        EXPECT_EQ(r, 0) << "busctl failed";
                        if (o)
                                out = o;
                        free(o);
                });
                return out;
        }
};

TEST_F(Introspection, SubchannelMatchesXml) {
        std::string live = introspect(ipcmux_receiver_get_path(rx));
        std::string file = read_file(introspection_dir() + "/org.ipcmux.Subchannel1.xml");
        auto a = canonical_interface(live, "org.ipcmux.Subchannel1");
        auto b = canonical_interface(file, "org.ipcmux.Subchannel1");
        ASSERT_FALSE(b.empty()) << "cannot read the XML file";
        EXPECT_EQ(a, b) << "live:\n" << live;
}

TEST_F(Introspection, PeerMatchesXml) {
        std::string live = introspect("/org/ipcmux");
        std::string file = read_file(introspection_dir() + "/org.ipcmux.Peer1.xml");
        auto a = canonical_interface(live, "org.ipcmux.Peer1");
        auto b = canonical_interface(file, "org.ipcmux.Peer1");
        ASSERT_FALSE(b.empty());
        EXPECT_EQ(a, b) << "live:\n" << live;
}

TEST_F(Introspection, BarePrefixIsNotASubchannel) {
        std::string live = introspect(ipcmux_channel_get_prefix(warm));
        EXPECT_EQ(live.find("org.ipcmux.Subchannel1"), std::string::npos) << live;
        /* ...but lists the receiver as a child node. */
        std::string p = ipcmux_receiver_get_path(rx);
        EXPECT_NE(live.find(p.substr(p.rfind('/') + 1)), std::string::npos) << live;
}

TEST_F(Introspection, BusctlTreeShowsSubchannels) {
        ipcmux_sender *tx2 = NULL;
        ipcmux_receiver *rx2 = NULL;
        ASSERT_OK(ipcmux_channel_sub_channel(warm, &tx2, &rx2));
        std::string tree = busctl({"tree", ipcmux_channel_get_unique_name(warm)});
        EXPECT_NE(tree.find(ipcmux_receiver_get_path(rx)), std::string::npos) << tree;
        EXPECT_NE(tree.find(ipcmux_receiver_get_path(rx2)), std::string::npos) << tree;
        ipcmux_sender_unref(tx2);
        ipcmux_receiver_unref(rx2);
}

TEST_F(Introspection, BusctlGetProperty) {
        ASSERT_OK(ipcmux_sender_send_bytes(tx, "abc", 3));
        ASSERT_OK(ipcmux_sender_send_bytes(tx, "de", 2));
        std::string out = busctl({"get-property", ipcmux_channel_get_unique_name(warm),
                                  ipcmux_receiver_get_path(rx), "org.ipcmux.Subchannel1", "QueuedMessages",
                                  "QueuedBytes", "LocalSenders"});
        EXPECT_EQ(out, "u 2\nt 5\nb true\n");
        std::string intro = busctl({"introspect", ipcmux_channel_get_unique_name(warm), ipcmux_receiver_get_path(rx)});
        EXPECT_NE(intro.find(".Send"), std::string::npos) << intro;
        EXPECT_NE(intro.find(".QueuedMessages"), std::string::npos) << intro;
}
