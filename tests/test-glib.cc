/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * libipcmux-glib (ipcmux-glib.h): the GSource that drives a connection from
 * a GMainContext, its single driver slot, and the GVariant helpers.
 *
 * Every test uses a private GMainContext (never the global default one):
 * the thread that iterates it runs the receive handlers.  Remote messages
 * come from the helper binary (tests/helper-client.c "send") or from a
 * second connection of this process.
 */

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <functional>
#include <memory>
#include <mutex>
#include <set>
#include <thread>

#include <ipcmux/ipcmux-glib.h>

#include "test-util.h"

namespace {

/* GVariants are no ipcmux handles: a holder of their own. */
struct VariantUnref {
        void operator()(GVariant *p) const { g_variant_unref(p); }
};
using Variant = std::unique_ptr<GVariant, VariantUnref>;

/* A Rec::then that quits @loop from inside the EOF call: the tests run the
 * loop until their receiver disconnects. */
std::function<void(ipcmux_receiver *, ipcmux_message *, int)> quit_on_eof(GMainLoop *loop) {
        return [loop](ipcmux_receiver *, ipcmux_message *m, int error) {
                if (!m && error == -EPIPE)
                        g_main_loop_quit(loop);
        };
}

/* GLib opens one eventfd for the process the first time a thread pushes a
 * thread-default context, and keeps it: open it before counting fds. */
void warm_up_glib() {
        static std::once_flag once;
        std::call_once(once, []() {
                GMainContext *c = g_main_context_new();
                std::thread t([c]() {
                        g_main_context_push_thread_default(c);
                        g_main_context_pop_thread_default(c);
                });
                t.join();
                g_main_context_unref(c);
        });
}

class GlibTest : public BusTest {
protected:
        GMainContext *ctx = nullptr;
        GMainLoop *loop = nullptr;
        bool timed_out = false;
        Server srv;
        std::string name;
        pid_t child = -1;

        void SetUp() override {
                BusTest::SetUp();
                if (HasFatalFailure())
                        return;
                /* The connection's loop fd lives as long as it: no leak. */
                ASSERT_GE(ipcmux_channel_get_fd(warm), 0);
                warm_up_glib();
                fds_before = test_count_fds();
                ctx = g_main_context_new();
                loop = g_main_loop_new(ctx, FALSE);
        }
        void TearDown() override {
                if (child > 0) {
                        kill(child, SIGKILL);
                        test_wait(child, 10000, NULL);
                }
                srv.reset();
                /* Iterate away what is pending (destroyed sources finalize). */
                while (ctx && g_main_context_iteration(ctx, FALSE))
                        ;
                if (loop)
                        g_main_loop_unref(loop);
                if (ctx)
                        g_main_context_unref(ctx);
                BusTest::TearDown();
        }

        /* Run the loop until quit, with a failure bound. */
        void run(guint bound_ms = 20000) {
                GSource *guard = g_timeout_source_new(bound_ms);
                g_source_set_callback(guard, [](gpointer self) -> gboolean {
                        GlibTest *t = (GlibTest *) self;
                        t->timed_out = true;
                        g_main_loop_quit(t->loop);
                        return G_SOURCE_REMOVE;
                }, this, NULL);
                g_source_attach(guard, ctx);
                g_main_loop_run(loop);
                g_source_destroy(guard);
                g_source_unref(guard);
        }

        /* A new attached source (the context holds it; returned borrowed). */
        GSource *attach_source() {
                GSource *src = ipcmux_glib_source_new(warm);
                EXPECT_NE(src, nullptr) << "ipcmux_glib_source_new: " << strerror(errno);
                if (!src)
                        return nullptr;
                g_source_attach(src, ctx);
                g_source_unref(src);
                return src;
        }

        void start_sender_helper(int count) {
                char *n = NULL;
                ASSERT_OK(ipcmux_server_new_for_channel(warm, out(srv), &n));
                name = n;
                free(n);
                std::string helper = test_helper_path("helper-client");
                std::string cnt = std::to_string(count);
                char *argv[] = {(char *) helper.c_str(), (char *) "send", (char *) name.c_str(),
                                (char *) cnt.c_str(), nullptr};
                ASSERT_OK(test_spawn(argv, NULL, &child));
        }
        int wait_child() {
                int status = -1;
                EXPECT_GE(test_wait(child, 30000, &status), 0);
                child = -1;
                return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        }
};

} /* namespace */

/* ---- the GSource -------------------------------------------------------- */

TEST_F(GlibTest, HandlerReceivesFromHelperProcess) {
        Receiver rx;
        Message first;
        Rec rec;

        GSource *src = attach_source();
        ASSERT_NE(src, nullptr);
        ASSERT_NO_FATAL_FAILURE(start_sender_helper(200));
        /* A blocking call beside the attached source. */
        ASSERT_OK(ipcmux_server_accept_timeout(srv.get(), 20000000, out(rx), out(first)));
        EXPECT_EQ(msg_str(first.get()), "first");
        rec.then = quit_on_eof(loop);
        ASSERT_OK(ipcmux_receiver_set_handler(rx.get(), rec_handler, &rec));
        run();
        EXPECT_FALSE(timed_out);
        EXPECT_EQ(rec.get_log(), with_eof(numbered("msg-", 200)));
        EXPECT_EQ(rec.threads, std::set<std::thread::id>{std::this_thread::get_id()});
        expect_clean(rec);
        EXPECT_EQ(wait_child(), 0);
        g_source_destroy(src);
}

TEST_F(GlibTest, HandlerRunsOnTheThreadIteratingTheContext) {
        Sub s;
        Rec rec;
        std::thread::id loop_thread;

        GSource *src = attach_source();
        ASSERT_NE(src, nullptr);
        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
        rec.then = quit_on_eof(loop);
        ASSERT_OK(ipcmux_receiver_set_handler(s.rx.get(), rec_handler, &rec));
        std::thread t([&]() {
                loop_thread = std::this_thread::get_id();
                g_main_context_push_thread_default(ctx);
                run();
                g_main_context_pop_thread_default(ctx);
        });
        /* Local sends from this thread must wake the loop in the other. */
        uint64_t t0 = test_now_usec();
        for (int i = 0; i < 300; i++) {
                std::string p = "g-" + std::to_string(i);
                ASSERT_OK(ipcmux_sender_send_bytes(s.tx.get(), p.data(), p.size()));
                if (i % 100 == 0)
                        usleep(10000);
        }
        s.tx.reset();
        t.join();
        EXPECT_FALSE(timed_out) << "lost wake-up: the loop never saw the EOF";
        EXPECT_LT(test_now_usec() - t0, 5000000u);
        EXPECT_EQ(rec.get_log(), with_eof(numbered("g-", 300)));
        EXPECT_EQ(rec.threads, std::set<std::thread::id>{loop_thread});
        expect_clean(rec);
        g_source_destroy(src);
}

TEST_F(GlibTest, SecondSourceIsBusy) {
        GSource *src = ipcmux_glib_source_new(warm);
        ASSERT_NE(src, nullptr);
        /* Comes back unattached. */
        EXPECT_EQ(g_source_get_context(src), nullptr);

        errno = 0;
        EXPECT_EQ(ipcmux_glib_source_new(warm), nullptr);
        EXPECT_EQ(errno, EBUSY);
        /* The same slot the other drivers use. */
        EXPECT_EQ(ipcmux_channel_attach_loop(warm), -EBUSY);
        sd_event *e = nullptr;
        ASSERT_OK(sd_event_new(&e));
        EXPECT_EQ(ipcmux_channel_attach_event(warm, e, 0), -EBUSY);

        /* ...and the other way round. */
        g_source_unref(src);    /* never attached: finalized here */
        ASSERT_OK(ipcmux_channel_attach_event(warm, e, 0));
        errno = 0;
        EXPECT_EQ(ipcmux_glib_source_new(warm), nullptr);
        EXPECT_EQ(errno, EBUSY);
        ASSERT_OK(ipcmux_channel_detach_event(warm));
        sd_event_unref(e);

        errno = 0;
        EXPECT_EQ(ipcmux_glib_source_new(nullptr), nullptr);
        EXPECT_EQ(errno, EINVAL);
}

TEST_F(GlibTest, DestroyingTheSourceFreesTheSlot) {
        /* The usual GLib pattern: the context holds the only reference. */
        GSource *src = attach_source();
        ASSERT_NE(src, nullptr);
        g_source_destroy(src);
        GSource *again = ipcmux_glib_source_new(warm);
        ASSERT_NE(again, nullptr) << "slot still taken after g_source_destroy: " << strerror(errno);
        g_source_attach(again, ctx);

        /* The new source drives: a handler sees a local message. */
        Sub s;
        Rec rec;
        rec.then = quit_on_eof(loop);
        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
        ASSERT_OK(ipcmux_receiver_set_handler(s.rx.get(), rec_handler, &rec));
        ASSERT_OK(ipcmux_sender_send_bytes(s.tx.get(), "x", 1));
        s.tx.reset();
        run();
        EXPECT_FALSE(timed_out);
        EXPECT_EQ(rec.get_log(), (std::vector<std::string>{"x", kEof}));
        expect_clean(rec);

        g_source_destroy(again);
        g_source_unref(again);
        GSource *third = ipcmux_glib_source_new(warm);
        ASSERT_NE(third, nullptr);
        g_source_unref(third);
}

TEST_F(GlibTest, DestroyWhileStillReferencedFreesTheSlot) {
        /* ipcmux-glib.h: "Destroying the source frees the slot" -- also while
         * the application still holds a reference (as it does inside a
         * dispatch, or with g_source_destroy() then g_source_unref()). */
        GSource *src = ipcmux_glib_source_new(warm);
        ASSERT_NE(src, nullptr);
        g_source_attach(src, ctx);
        g_source_destroy(src);
        GSource *again = ipcmux_glib_source_new(warm);
        EXPECT_NE(again, nullptr) << "slot still taken after g_source_destroy(): " << strerror(errno);
        if (again)
                g_source_unref(again);
        g_source_unref(src);
}

TEST_F(GlibTest, SourceOfDroppedChannelKeepsConnection) {
        /* The source holds its own channel reference. */
        ipcmux_channel *ch = nullptr;
        ASSERT_OK(ipcmux_channel_new(&ch));
        GSource *src = ipcmux_glib_source_new(ch);
        ASSERT_NE(src, nullptr);
        g_source_attach(src, ctx);
        ipcmux_channel_unref(ch);

        Sub s;
        Rec rec;
        rec.then = quit_on_eof(loop);
        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
        ASSERT_OK(ipcmux_receiver_set_handler(s.rx.get(), rec_handler, &rec));
        ASSERT_OK(ipcmux_sender_send_bytes(s.tx.get(), "k", 1));
        s.tx.reset();
        run();
        EXPECT_FALSE(timed_out);
        EXPECT_EQ(rec.get_log(), (std::vector<std::string>{"k", kEof}));
        g_source_destroy(src);
        g_source_unref(src);
}

TEST_F(GlibTest, BlockedRecvBesideLoopThread) {
        /* ipcmux.h: blocking calls keep working beside an attached loop.
         * The GLib loop runs in one thread, this thread blocks in recv,
         * a third sends: a lost wake-up shows as a recv that sleeps to its
         * 1.5 s bound and then finds the message anyway. */
        const int N = 60;
        std::vector<Sub> subs(N);
        for (auto &s : subs)
                ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
        GSource *src = attach_source();
        ASSERT_NE(src, nullptr);
        std::thread loop_thread([&]() {
                g_main_context_push_thread_default(ctx);
                run(60000);
                g_main_context_pop_thread_default(ctx);
        });
        int slow = 0, wrong = 0;
        for (int i = 0; i < N && slow < 2; i++) {
                ipcmux_sender *tx = subs[i].tx.get();
                std::thread t([tx]() {
                        usleep(2000);
                        (void) ipcmux_sender_send_bytes(tx, "x", 1);
                });
                Message m;
                uint64_t t0 = test_now_usec();
                int r = recv_bounded(subs[i].rx.get(), out(m), 1500000);
                if (test_now_usec() - t0 > 1000000)
                        slow++;
                wrong += r < 0;
                t.join();
        }
        g_main_loop_quit(loop);
        loop_thread.join();
        EXPECT_EQ(slow, 0) << "recvs slept > 1 s although woken (lost wake-up)";
        EXPECT_EQ(wrong, 0);
        g_source_destroy(src);
}

/* ---- GVariant helpers ------------------------------------------------------ */

namespace {

GVariant *sample_value() {
        GVariantBuilder b;
        g_variant_builder_init(&b, G_VARIANT_TYPE("a{sv}"));
        g_variant_builder_add(&b, "{sv}", "answer", g_variant_new_int32(42));
        g_variant_builder_add(&b, "{sv}", "name", g_variant_new_string("ipcmux"));
        static const char *const list[] = {"a", "b"};
        g_variant_builder_add(&b, "{sv}", "list", g_variant_new_strv(list, 2));
        return g_variant_ref_sink(g_variant_new("(sia{sv})", "hello", -7, &b));
}

} /* namespace */

TEST_F(GlibTest, VariantRoundTripLocal) {
        Sub s;
        Message m;

        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
        Variant v(sample_value());
        ASSERT_OK(ipcmux_glib_send_variant(s.tx.get(), v.get()));
        ASSERT_OK(recv_bounded(s.rx.get(), out(m)));
        Variant got(ipcmux_glib_message_get_variant(m.get(), G_VARIANT_TYPE("(sia{sv})")));
        ASSERT_NE(got, nullptr) << strerror(errno);
        EXPECT_TRUE(g_variant_equal(got.get(), v.get()));
        EXPECT_FALSE(g_variant_is_floating(got.get()));
        const char *str = nullptr;
        gint32 i = 0;
        g_variant_get_child(got.get(), 0, "&s", &str);
        g_variant_get_child(got.get(), 1, "i", &i);
        EXPECT_STREQ(str, "hello");
        EXPECT_EQ(i, -7);
        /* The value outlives the message. */
        m.reset();
        EXPECT_TRUE(g_variant_equal(got.get(), v.get()));
}

TEST_F(GlibTest, VariantRoundTripOverTheBus) {
        /* A second connection of this process sends; bytes really travel. */
        Channel far;
        Sender tx;
        Receiver rx;
        Message m;

        ASSERT_NO_FATAL_FAILURE(new_far_channel(&far));
        ASSERT_NO_FATAL_FAILURE(bridge(warm, far.get(), &tx, &rx));

        Variant v(sample_value());
        ASSERT_OK(ipcmux_glib_send_variant(tx.get(), v.get()));
        /* Empty arrays serialise to zero bytes. */
        Variant empty(g_variant_ref_sink(g_variant_new_strv(nullptr, 0)));
        ASSERT_OK(ipcmux_glib_send_variant(tx.get(), empty.get()));
        /* Larger than the inline limit: travels in a memfd. */
        std::string big(3 << 20, 'z');
        Variant large(g_variant_ref_sink(g_variant_new_fixed_array(G_VARIANT_TYPE_BYTE, big.data(), big.size(), 1)));
        ASSERT_OK(ipcmux_glib_send_variant(tx.get(), large.get()));

        ASSERT_OK(recv_bounded(rx.get(), out(m)));
        EXPECT_STREQ(ipcmux_message_get_sender(m.get()), ipcmux_channel_get_unique_name(far.get()));
        Variant got(ipcmux_glib_message_get_variant(m.get(), G_VARIANT_TYPE("(sia{sv})")));
        ASSERT_NE(got, nullptr) << strerror(errno);
        EXPECT_TRUE(g_variant_equal(got.get(), v.get()));

        ASSERT_OK(recv_bounded(rx.get(), out(m)));
        Variant got_empty(ipcmux_glib_message_get_variant(m.get(), G_VARIANT_TYPE_STRING_ARRAY));
        ASSERT_NE(got_empty, nullptr) << strerror(errno);
        EXPECT_EQ(g_variant_n_children(got_empty.get()), 0u);

        ASSERT_OK(recv_bounded(rx.get(), out(m)));
        Variant got_large(ipcmux_glib_message_get_variant(m.get(), G_VARIANT_TYPE_BYTESTRING));
        ASSERT_NE(got_large, nullptr) << strerror(errno);
        gsize n_large = 0;
        const void *bytes = g_variant_get_fixed_array(got_large.get(), &n_large, 1);
        ASSERT_EQ(n_large, big.size());
        EXPECT_EQ(memcmp(bytes, big.data(), n_large), 0);

        tx.reset();
        rx.reset();
        far.reset();
}

TEST_F(GlibTest, VariantTypeMismatchIsEbadmsg) {
        Sub s;
        Message m;

        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
        Variant v(sample_value());
        ASSERT_OK(ipcmux_glib_send_variant(s.tx.get(), v.get()));
        ASSERT_OK(recv_bounded(s.rx.get(), out(m)));
        for (const char *t : {"(si)", "(sia{ss})", "s", "v", "(sia{sv}s)"}) {
                errno = 0;
                GVariant *got = ipcmux_glib_message_get_variant(m.get(), G_VARIANT_TYPE(t));
                EXPECT_EQ(got, nullptr) << t;
                EXPECT_EQ(errno, EBADMSG) << t;
                if (got)
                        g_variant_unref(got);
        }
        /* Still readable with the right type. */
        Variant ok(ipcmux_glib_message_get_variant(m.get(), G_VARIANT_TYPE("(sia{sv})")));
        EXPECT_NE(ok, nullptr);
        errno = 0;
        EXPECT_EQ(ipcmux_glib_message_get_variant(nullptr, G_VARIANT_TYPE("s")), nullptr);
        EXPECT_EQ(errno, EINVAL);
}

TEST_F(GlibTest, VariantGarbagePayloadIsEbadmsg) {
        /* Payloads that are no "type NUL bytes" value at all. */
        Sub s;

        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
        const std::string garbage[] = {
                std::string(),                                  /* empty */
                std::string("\xff\xfe\xfd\x01", 4),             /* no NUL */
                std::string("(sia{sv})"),                       /* type only, no NUL */
                std::string("not a type\0xx", 13),              /* invalid type string */
                std::string("(sia{sv}\0abc", 12),               /* truncated type string */
                std::string("\0\x01\x02", 3),                   /* empty type string */
        };
        for (const auto &g : garbage)
                ASSERT_OK(ipcmux_sender_send_bytes(s.tx.get(), g.data(), g.size()));
        for (const auto &g : garbage) {
                Message m;
                ASSERT_OK(recv_bounded(s.rx.get(), out(m)));
                errno = 0;
                GVariant *got = ipcmux_glib_message_get_variant(m.get(), G_VARIANT_TYPE("(sia{sv})"));
                EXPECT_EQ(got, nullptr) << "payload of " << g.size() << " bytes";
                EXPECT_EQ(errno, EBADMSG) << "payload of " << g.size() << " bytes";
                if (got)
                        g_variant_unref(got);
        }
}

TEST_F(GlibTest, VariantGarbageBodyIsEbadmsg) {
        /* The right type string, then bytes that are not a serialised value
         * of that type (a sender of ipcmux_glib_send_variant() always sends
         * the normal form): "does not hold a value of @type". */
        Sub s;
        Message m;

        ASSERT_NO_FATAL_FAILURE(new_sub(warm, &s));
        std::string p("(sia{sv})", 9);
        p.push_back('\0');
        p.append("\x01\x02\x03\xff\xff\xff\xff\x7f\x09", 9);
        ASSERT_OK(ipcmux_sender_send_bytes(s.tx.get(), p.data(), p.size()));
        ASSERT_OK(recv_bounded(s.rx.get(), out(m)));
        errno = 0;
        GVariant *got = ipcmux_glib_message_get_variant(m.get(), G_VARIANT_TYPE("(sia{sv})"));
        if (got) {
                /* Whatever comes back must at least be safe to read. */
                gchar *text = g_variant_print(got, TRUE);
                g_free(text);
                g_variant_unref(got);
        }
        EXPECT_EQ(got, nullptr) << "a body that is not a (sia{sv}) was accepted";
        EXPECT_EQ(errno, EBADMSG);
}
