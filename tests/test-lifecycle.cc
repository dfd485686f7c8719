/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests of the lifecycle bookkeeping (plugin/lifecycle.c): every
 * function and error path (each failure must leave every getter unchanged),
 * the reference's sub_sender_state_machine_* tests ported to this model,
 * forged operations by peers, orphans and barrier generations, allocation
 * failure injection, a scale test and a randomized comparison against a
 * small std::map reference model.
 */

#include <gtest/gtest.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <ostream>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

extern "C" {
#include "lifecycle.h"
}

/* ---------------------------------------------------------------------------
 * Allocation failure injection: replaces malloc/calloc/realloc (glibc allows
 * interposition; its strdup goes through our malloc too).  Sanitizers bring
 * their own allocator, so the injection tests are skipped there.
 */

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define LC_SANITIZER_ALLOCATOR 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) || __has_feature(memory_sanitizer)
#define LC_SANITIZER_ALLOCATOR 1
#endif
#endif

#if !defined(LC_SANITIZER_ALLOCATOR) && defined(__GLIBC__)
#define LC_FAULT_INJECTION 1

extern "C" {
void *__libc_malloc(size_t n);
void *__libc_calloc(size_t n, size_t sz);
void *__libc_realloc(void *p, size_t n);
void __libc_free(void *p);
}

static long fail_countdown = -1;       /* -1: off; otherwise fail the allocation after this many */
static bool fail_triggered = false;

static bool alloc_should_fail(void) {
        if (fail_countdown < 0)
                return false;
        if (fail_countdown-- == 0) {
                fail_triggered = true;
                return true;
        }
        return false;
}

extern "C" void *malloc(size_t n) noexcept {
        return alloc_should_fail() ? nullptr : __libc_malloc(n);
}
extern "C" void *calloc(size_t n, size_t sz) noexcept {
        return alloc_should_fail() ? nullptr : __libc_calloc(n, sz);
}
extern "C" void *realloc(void *p, size_t n) noexcept {
        return alloc_should_fail() ? nullptr : __libc_realloc(p, n);
}
extern "C" void free(void *p) noexcept {
        __libc_free(p);
}

static void fail_arm(long nth) {
        fail_triggered = false;
        fail_countdown = nth;
}
static bool fail_disarm(void) {
        fail_countdown = -1;
        return fail_triggered;
}
#endif

/* ---------------------------------------------------------------------------
 * Helpers
 */

namespace {

struct LifecycleDeleter {
        void operator()(Lifecycle *l) const { lifecycle_free(l); }
};
using LifecyclePtr = std::unique_ptr<Lifecycle, LifecycleDeleter>;

LifecyclePtr make(void) {
        Lifecycle *l = nullptr;
        EXPECT_EQ(lifecycle_new(&l), 0);
        EXPECT_NE(l, nullptr);
        return LifecyclePtr(l);
}

const char *const X = ":1.10";
const char *const Y = ":1.11";
const char *const Z = ":1.12";
const char *const W = ":1.13";
const char *const UNKNOWN = ":1.99";

/* Names a snapshot looks at; nullptr = this process. */
const std::vector<const char *> probe_names = { nullptr, X, Y, Z, W, UNKNOWN, "" };

std::vector<std::string> holders_of(const Lifecycle *l) {
        char **v = nullptr;
        std::vector<std::string> out;

        EXPECT_EQ(lifecycle_get_holders(l, &v), 0);
        if (!v)
                return out;
        for (char **s = v; *s; s++)
                out.emplace_back(*s);
        lifecycle_strv_free(v);
        return out;
}

void collect_peer(const char *peer, void *userdata) {
        static_cast<std::vector<std::string> *>(userdata)->emplace_back(peer);
}

/* In call order; duplicates kept so tests can check "once each". */
std::vector<std::string> peers_of(const Lifecycle *l) {
        std::vector<std::string> out;

        lifecycle_foreach_peer(l, collect_peer, &out);
        return out;
}

std::vector<std::string> sorted(std::vector<std::string> v) {
        std::sort(v.begin(), v.end());
        return v;
}

struct Snap {
        bool connected;
        unsigned local, remote, in_flight;
        std::vector<std::string> holders, peers;
        std::vector<std::tuple<unsigned, bool, bool>> per_name; /* holds, may_send, has_orphans_to */

        bool operator==(const Snap &o) const {
                return std::tie(connected, local, remote, in_flight, holders, peers, per_name) ==
                       std::tie(o.connected, o.local, o.remote, o.in_flight, o.holders, o.peers, o.per_name);
        }
};

std::ostream &operator<<(std::ostream &os, const Snap &s) {
        os << "{connected=" << s.connected << " local=" << s.local << " remote=" << s.remote
           << " in_flight=" << s.in_flight << " holders=[";
        for (auto &h : s.holders)
                os << h << " ";
        os << "] peers=[";
        for (auto &p : s.peers)
                os << p << " ";
        os << "] per_name=[";
        for (size_t i = 0; i < s.per_name.size(); i++)
                os << (probe_names[i] ? probe_names[i] : "(self)") << ":" << std::get<0>(s.per_name[i]) << "/"
                   << std::get<1>(s.per_name[i]) << "/" << std::get<2>(s.per_name[i]) << " ";
        return os << "]}";
}

Snap snap(const Lifecycle *l) {
        Snap s;

        s.connected = lifecycle_is_connected(l);
        s.local = lifecycle_get_local_holds(l);
        s.remote = lifecycle_get_remote_holds(l);
        s.in_flight = lifecycle_get_in_flight(l);
        s.holders = holders_of(l);
        s.peers = sorted(peers_of(l));
        for (const char *n : probe_names)
                s.per_name.emplace_back(lifecycle_get_holds(l, n), lifecycle_may_send(l, n),
                                        lifecycle_has_orphans_to(l, n));
        return s;
}

/* Runs @op, expects @err, and checks that nothing observable changed. */
#define EXPECT_FAILS_UNCHANGED(l, err, op)                      \
        do {                                                    \
                Snap _before = snap(l);                         \
                EXPECT_EQ((op), (err)) << #op;                  \
                EXPECT_EQ(snap(l), _before) << #op;             \
        } while (0)

/* A fairly busy object: local holds, remote holders, entries in every direction, orphans. */
LifecyclePtr make_busy(void) {
        LifecyclePtr l = make();

        lifecycle_hold_local(l.get());
        lifecycle_hold_local(l.get());
        EXPECT_EQ(lifecycle_hold(l.get(), X, 2), 0);
        EXPECT_EQ(lifecycle_hold(l.get(), Y, 1), 0);
        EXPECT_EQ(lifecycle_hold(l.get(), W, 1), 0);
        EXPECT_EQ(lifecycle_sending(l.get(), nullptr, 1, Z), 0);
        EXPECT_EQ(lifecycle_sending(l.get(), X, 1, nullptr), 0);
        EXPECT_EQ(lifecycle_sending(l.get(), X, 2, Y), 0);
        EXPECT_EQ(lifecycle_sending(l.get(), W, 7, Z), 0);
        lifecycle_peer_gone(l.get(), W, 3);     /* (W,7)->Z orphan of gen 3 */
        return l;
}

} /* namespace */

/* ---------------------------------------------------------------------------
 * Basics, every function
 */

TEST(Lifecycle, NewFree) {
        Lifecycle *l = nullptr;

        EXPECT_EQ(lifecycle_new(nullptr), -EINVAL);
        ASSERT_EQ(lifecycle_new(&l), 0);
        ASSERT_NE(l, nullptr);
        EXPECT_FALSE(lifecycle_is_connected(l));
        EXPECT_EQ(lifecycle_get_local_holds(l), 0u);
        EXPECT_EQ(lifecycle_get_remote_holds(l), 0u);
        EXPECT_EQ(lifecycle_get_in_flight(l), 0u);
        EXPECT_TRUE(holders_of(l).empty());
        EXPECT_TRUE(peers_of(l).empty());
        for (const char *n : probe_names) {
                EXPECT_EQ(lifecycle_get_holds(l, n), 0u);
                EXPECT_FALSE(lifecycle_may_send(l, n));
                EXPECT_FALSE(lifecycle_has_orphans_to(l, n));
        }
        EXPECT_EQ(lifecycle_free(l), nullptr);
        EXPECT_EQ(lifecycle_free(nullptr), nullptr);
}

TEST(Lifecycle, FreeWithEverything) {
        /* ASan/LSan runs check that nothing leaks. */
        LifecyclePtr l = make_busy();
        EXPECT_TRUE(lifecycle_is_connected(l.get()));
        EXPECT_EQ(lifecycle_free(l.release()), nullptr);
}

TEST(Lifecycle, LocalHolds) {
        LifecyclePtr l = make();

        EXPECT_FAILS_UNCHANGED(l.get(), -EINVAL, lifecycle_release_local(l.get()));
        lifecycle_hold_local(l.get());
        EXPECT_TRUE(lifecycle_is_connected(l.get()));
        EXPECT_TRUE(lifecycle_may_send(l.get(), nullptr));
        EXPECT_EQ(lifecycle_get_holds(l.get(), nullptr), 1u);
        lifecycle_hold_local(l.get());
        EXPECT_EQ(lifecycle_get_local_holds(l.get()), 2u);
        EXPECT_EQ(lifecycle_get_remote_holds(l.get()), 0u);
        EXPECT_TRUE(holders_of(l.get()).empty());       /* remote holders only */
        EXPECT_TRUE(peers_of(l.get()).empty());
        EXPECT_EQ(lifecycle_release_local(l.get()), 0);
        EXPECT_TRUE(lifecycle_is_connected(l.get()));
        EXPECT_EQ(lifecycle_release_local(l.get()), 0);
        EXPECT_FALSE(lifecycle_is_connected(l.get()));
        EXPECT_FALSE(lifecycle_may_send(l.get(), nullptr));
        EXPECT_FAILS_UNCHANGED(l.get(), -EINVAL, lifecycle_release_local(l.get()));
}

TEST(Lifecycle, RemoteHolds) {
        LifecyclePtr l = make();

        EXPECT_FAILS_UNCHANGED(l.get(), -EINVAL, lifecycle_hold(l.get(), nullptr, 1));
        EXPECT_FAILS_UNCHANGED(l.get(), -EINVAL, lifecycle_hold(l.get(), X, 0));
        EXPECT_EQ(lifecycle_hold(l.get(), X, 3), 0);
        EXPECT_EQ(lifecycle_hold(l.get(), Y, 1), 0);
        EXPECT_EQ(lifecycle_hold(l.get(), X, 1), 0);
        EXPECT_TRUE(lifecycle_is_connected(l.get()));
        EXPECT_EQ(lifecycle_get_holds(l.get(), X), 4u);
        EXPECT_EQ(lifecycle_get_holds(l.get(), Y), 1u);
        EXPECT_EQ(lifecycle_get_holds(l.get(), Z), 0u);
        EXPECT_EQ(lifecycle_get_holds(l.get(), nullptr), 0u);
        EXPECT_EQ(lifecycle_get_remote_holds(l.get()), 5u);
        EXPECT_EQ(lifecycle_get_local_holds(l.get()), 0u);
        EXPECT_TRUE(lifecycle_may_send(l.get(), X));
        EXPECT_TRUE(lifecycle_may_send(l.get(), Y));
        EXPECT_FALSE(lifecycle_may_send(l.get(), Z));
        EXPECT_FALSE(lifecycle_may_send(l.get(), nullptr));
        EXPECT_EQ(holders_of(l.get()), (std::vector<std::string>{ X, Y }));
        EXPECT_EQ(sorted(peers_of(l.get())), (std::vector<std::string>{ X, Y }));

        EXPECT_FAILS_UNCHANGED(l.get(), -EINVAL, lifecycle_release(l.get(), nullptr, 1));
        EXPECT_FAILS_UNCHANGED(l.get(), -EINVAL, lifecycle_release(l.get(), X, 0));
        EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, lifecycle_release(l.get(), X, 5));
        EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, lifecycle_release(l.get(), Z, 1));
        EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, lifecycle_release(l.get(), UNKNOWN, 1));

        EXPECT_EQ(lifecycle_release(l.get(), X, 3), 0);
        EXPECT_EQ(lifecycle_get_holds(l.get(), X), 1u);
        EXPECT_EQ(lifecycle_release(l.get(), X, 1), 0);
        EXPECT_EQ(lifecycle_get_holds(l.get(), X), 0u);
        EXPECT_FALSE(lifecycle_may_send(l.get(), X));
        EXPECT_EQ(holders_of(l.get()), (std::vector<std::string>{ Y }));
        EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, lifecycle_release(l.get(), X, 1));
        EXPECT_TRUE(lifecycle_is_connected(l.get()));
        EXPECT_EQ(lifecycle_release(l.get(), Y, 1), 0);
        EXPECT_FALSE(lifecycle_is_connected(l.get()));
        EXPECT_TRUE(holders_of(l.get()).empty());
        EXPECT_TRUE(peers_of(l.get()).empty());
}

TEST(Lifecycle, NamesAreCopied) {
        LifecyclePtr l = make();
        char name[] = ":1.42";
        char dest[] = ":1.43";

        ASSERT_EQ(lifecycle_hold(l.get(), name, 1), 0);
        ASSERT_EQ(lifecycle_sending(l.get(), name, 9, dest), 0);
        name[3] = '7';  /* ":1.72" */
        dest[3] = '7';  /* ":1.73" */
        EXPECT_EQ(lifecycle_get_holds(l.get(), ":1.42"), 1u);
        EXPECT_EQ(lifecycle_get_holds(l.get(), name), 0u);
        EXPECT_TRUE(lifecycle_may_send(l.get(), ":1.43"));
        EXPECT_FALSE(lifecycle_may_send(l.get(), dest));
        EXPECT_EQ(holders_of(l.get()), (std::vector<std::string>{ ":1.42" }));
        EXPECT_EQ(sorted(peers_of(l.get())), (std::vector<std::string>{ ":1.42", ":1.43" }));
        EXPECT_EQ(lifecycle_claim(l.get(), ":1.43", ":1.42", 9), 0);
}

TEST(Lifecycle, HoldOverflow) {
        LifecyclePtr l = make();

        ASSERT_EQ(lifecycle_hold(l.get(), X, UINT_MAX - 1), 0);
        EXPECT_FAILS_UNCHANGED(l.get(), -EOVERFLOW, lifecycle_hold(l.get(), X, 2));
        EXPECT_FAILS_UNCHANGED(l.get(), -EOVERFLOW, lifecycle_hold(l.get(), Y, 2));     /* the sum would wrap */
        EXPECT_FAILS_UNCHANGED(l.get(), -EOVERFLOW, lifecycle_hold(l.get(), Y, UINT_MAX));
        ASSERT_EQ(lifecycle_hold(l.get(), Y, 1), 0);
        EXPECT_EQ(lifecycle_get_remote_holds(l.get()), UINT_MAX);

        /* A claim would add one more remote hold. */
        ASSERT_EQ(lifecycle_sending(l.get(), X, 1, Z), 0);
        EXPECT_FAILS_UNCHANGED(l.get(), -EOVERFLOW, lifecycle_claim(l.get(), Z, X, 1));
        EXPECT_EQ(lifecycle_decline(l.get(), Z, X, 1), 0);      /* decline needs no hold */
        EXPECT_EQ(lifecycle_release(l.get(), X, UINT_MAX - 1), 0);
        EXPECT_EQ(lifecycle_get_remote_holds(l.get()), 1u);
}

TEST(Lifecycle, SendingErrors) {
        LifecyclePtr l = make();

        /* Nobody holds anything. */
        EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, lifecycle_sending(l.get(), nullptr, 1, X));
        EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, lifecycle_sending(l.get(), X, 1, nullptr));
        EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, lifecycle_sending(l.get(), X, 1, Y));
        EXPECT_FAILS_UNCHANGED(l.get(), -EINVAL, lifecycle_sending(l.get(), nullptr, 1, nullptr));

        lifecycle_hold_local(l.get());
        ASSERT_EQ(lifecycle_hold(l.get(), X, 1), 0);
        EXPECT_FAILS_UNCHANGED(l.get(), -EINVAL, lifecycle_sending(l.get(), nullptr, 1, nullptr));
        EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, lifecycle_sending(l.get(), Y, 1, X));
        ASSERT_EQ(lifecycle_sending(l.get(), nullptr, 1, X), 0);
        ASSERT_EQ(lifecycle_sending(l.get(), X, 1, nullptr), 0);        /* same token, other source: fine */
        EXPECT_FAILS_UNCHANGED(l.get(), -EEXIST, lifecycle_sending(l.get(), nullptr, 1, Y));
        EXPECT_FAILS_UNCHANGED(l.get(), -EEXIST, lifecycle_sending(l.get(), nullptr, 1, X));
        EXPECT_FAILS_UNCHANGED(l.get(), -EEXIST, lifecycle_sending(l.get(), X, 1, Y));
        EXPECT_FAILS_UNCHANGED(l.get(), -EEXIST, lifecycle_sending(l.get(), X, 1, nullptr));
        EXPECT_EQ(lifecycle_get_in_flight(l.get()), 2u);

        /* -EINVAL wins over -EACCES, -EACCES over -EEXIST. */
        ASSERT_EQ(lifecycle_release_local(l.get()), 0);
        EXPECT_FAILS_UNCHANGED(l.get(), -EINVAL, lifecycle_sending(l.get(), nullptr, 1, nullptr));
        EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, lifecycle_sending(l.get(), nullptr, 1, X));
}

TEST(Lifecycle, SendingDirections) {
        LifecyclePtr l = make();

        lifecycle_hold_local(l.get());
        ASSERT_EQ(lifecycle_hold(l.get(), X, 1), 0);

        /* local -> peer */
        ASSERT_EQ(lifecycle_sending(l.get(), nullptr, 10, Y), 0);
        EXPECT_TRUE(lifecycle_may_send(l.get(), Y));
        EXPECT_EQ(lifecycle_get_holds(l.get(), Y), 0u);
        EXPECT_EQ(holders_of(l.get()), (std::vector<std::string>{ X }));
        EXPECT_EQ(sorted(peers_of(l.get())), (std::vector<std::string>{ X, Y }));
        /* peer -> local */
        ASSERT_EQ(lifecycle_sending(l.get(), X, 10, nullptr), 0);
        /* peer -> other peer */
        ASSERT_EQ(lifecycle_sending(l.get(), X, 11, Z), 0);
        /* peer -> itself (e.g. through another of its own subchannels) */
        ASSERT_EQ(lifecycle_sending(l.get(), X, 12, X), 0);
        EXPECT_EQ(lifecycle_get_in_flight(l.get()), 4u);
        EXPECT_EQ(sorted(peers_of(l.get())), (std::vector<std::string>{ X, Y, Z }));    /* not duplicated */

        /* The source may drop its holds while its copies are in flight. */
        ASSERT_EQ(lifecycle_release(l.get(), X, 1), 0);
        ASSERT_EQ(lifecycle_release_local(l.get()), 0);
        EXPECT_TRUE(lifecycle_is_connected(l.get()));
        EXPECT_TRUE(lifecycle_may_send(l.get(), X));    /* (X,12) is addressed to X */
        EXPECT_TRUE(lifecycle_may_send(l.get(), nullptr));
        EXPECT_TRUE(holders_of(l.get()).empty());
        EXPECT_EQ(sorted(peers_of(l.get())), (std::vector<std::string>{ X, Y, Z }));
        /* ...but then cannot send more. */
        EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, lifecycle_sending(l.get(), X, 13, Y));
        EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, lifecycle_sending(l.get(), nullptr, 13, Y));

        EXPECT_EQ(lifecycle_claim(l.get(), Y, nullptr, 10), 0);
        EXPECT_EQ(lifecycle_claim(l.get(), nullptr, X, 10), 0);
        EXPECT_EQ(lifecycle_claim(l.get(), Z, X, 11), 0);
        EXPECT_EQ(lifecycle_claim(l.get(), X, X, 12), 0);
        EXPECT_EQ(lifecycle_get_in_flight(l.get()), 0u);
        EXPECT_EQ(lifecycle_get_local_holds(l.get()), 1u);
        EXPECT_EQ(holders_of(l.get()), (std::vector<std::string>{ X, Y, Z }));
        EXPECT_EQ(lifecycle_get_remote_holds(l.get()), 3u);
}

TEST(Lifecycle, ClaimAndDecline) {
        LifecyclePtr l = make();

        lifecycle_hold_local(l.get());
        ASSERT_EQ(lifecycle_hold(l.get(), X, 1), 0);
        ASSERT_EQ(lifecycle_sending(l.get(), nullptr, 1, X), 0);
        ASSERT_EQ(lifecycle_sending(l.get(), X, 1, nullptr), 0);
        ASSERT_EQ(lifecycle_sending(l.get(), X, 2, Y), 0);

        for (auto fn : { lifecycle_claim, lifecycle_decline }) {
                /* No such entry. */
                EXPECT_FAILS_UNCHANGED(l.get(), -ENOENT, fn(l.get(), X, nullptr, 2));
                EXPECT_FAILS_UNCHANGED(l.get(), -ENOENT, fn(l.get(), Y, X, 3));
                EXPECT_FAILS_UNCHANGED(l.get(), -ENOENT, fn(l.get(), Y, UNKNOWN, 2));
                EXPECT_FAILS_UNCHANGED(l.get(), -ENOENT, fn(l.get(), nullptr, Y, 1));
                /* Addressed to somebody else. */
                EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, fn(l.get(), Y, nullptr, 1));
                EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, fn(l.get(), Z, X, 1));
                EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, fn(l.get(), nullptr, X, 2));
                EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, fn(l.get(), "", X, 2));
        }
        /* The origin cannot claim its own copies (decline = withdraw: see
         * LifecycleForged.OriginWithdrawsOnlyItsOwnCopy). */
        EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, lifecycle_claim(l.get(), nullptr, nullptr, 1));
        EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, lifecycle_claim(l.get(), X, X, 1));
        EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, lifecycle_claim(l.get(), X, X, 2));

        EXPECT_EQ(lifecycle_claim(l.get(), X, nullptr, 1), 0);
        EXPECT_EQ(lifecycle_get_holds(l.get(), X), 2u);
        EXPECT_FAILS_UNCHANGED(l.get(), -ENOENT, lifecycle_claim(l.get(), X, nullptr, 1));
        EXPECT_FAILS_UNCHANGED(l.get(), -ENOENT, lifecycle_decline(l.get(), X, nullptr, 1));

        EXPECT_EQ(lifecycle_claim(l.get(), nullptr, X, 1), 0);
        EXPECT_EQ(lifecycle_get_local_holds(l.get()), 2u);

        EXPECT_EQ(lifecycle_decline(l.get(), Y, X, 2), 0);
        EXPECT_EQ(lifecycle_get_holds(l.get(), Y), 0u);
        EXPECT_FALSE(lifecycle_may_send(l.get(), Y));
        EXPECT_EQ(lifecycle_get_in_flight(l.get()), 0u);
        EXPECT_EQ(sorted(peers_of(l.get())), (std::vector<std::string>{ X }));

        /* A token can be reused once resolved. */
        EXPECT_EQ(lifecycle_sending(l.get(), X, 2, Y), 0);
        EXPECT_EQ(lifecycle_claim(l.get(), Y, X, 2), 0);
        EXPECT_EQ(lifecycle_get_holds(l.get(), Y), 1u);
}

TEST(Lifecycle, PeerGone) {
        LifecyclePtr l = make();

        /* Unknown peers and this process: no-op. */
        Snap before = snap(l.get());
        lifecycle_peer_gone(l.get(), UNKNOWN, 1);
        lifecycle_peer_gone(l.get(), nullptr, 1);
        EXPECT_EQ(snap(l.get()), before);

        lifecycle_hold_local(l.get());
        ASSERT_EQ(lifecycle_hold(l.get(), X, 3), 0);
        ASSERT_EQ(lifecycle_hold(l.get(), Y, 1), 0);
        ASSERT_EQ(lifecycle_sending(l.get(), nullptr, 1, X), 0);       /* to X: goes */
        ASSERT_EQ(lifecycle_sending(l.get(), Y, 1, X), 0);             /* to X: goes */
        ASSERT_EQ(lifecycle_sending(l.get(), X, 1, Y), 0);             /* from X: orphan */
        ASSERT_EQ(lifecycle_sending(l.get(), X, 2, nullptr), 0);       /* from X: orphan */
        ASSERT_EQ(lifecycle_sending(l.get(), X, 3, X), 0);             /* to X: goes */
        ASSERT_EQ(lifecycle_sending(l.get(), nullptr, 2, Z), 0);       /* unrelated */

        before = snap(l.get());
        lifecycle_peer_gone(l.get(), UNKNOWN, 1);
        lifecycle_peer_gone(l.get(), W, 1);
        lifecycle_peer_gone(l.get(), nullptr, 1);
        EXPECT_EQ(snap(l.get()), before);

        lifecycle_peer_gone(l.get(), X, 5);
        EXPECT_EQ(lifecycle_get_holds(l.get(), X), 0u);
        EXPECT_EQ(lifecycle_get_remote_holds(l.get()), 1u);
        EXPECT_FALSE(lifecycle_may_send(l.get(), X));
        EXPECT_EQ(lifecycle_get_in_flight(l.get()), 3u);
        EXPECT_TRUE(lifecycle_has_orphans_to(l.get(), Y));
        EXPECT_TRUE(lifecycle_has_orphans_to(l.get(), nullptr));
        EXPECT_FALSE(lifecycle_has_orphans_to(l.get(), Z));
        EXPECT_FALSE(lifecycle_has_orphans_to(l.get(), X));
        EXPECT_EQ(holders_of(l.get()), (std::vector<std::string>{ Y }));
        EXPECT_EQ(sorted(peers_of(l.get())), (std::vector<std::string>{ Y, Z }));

        /* Gone twice: nothing more to do. */
        before = snap(l.get());
        lifecycle_peer_gone(l.get(), X, 6);
        EXPECT_EQ(snap(l.get()), before);

        /* Orphans are still claimable/declinable normally. */
        EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, lifecycle_claim(l.get(), Z, X, 1));
        EXPECT_EQ(lifecycle_claim(l.get(), Y, X, 1), 0);
        EXPECT_EQ(lifecycle_get_holds(l.get(), Y), 2u);
        EXPECT_FALSE(lifecycle_has_orphans_to(l.get(), Y));
        EXPECT_EQ(lifecycle_decline(l.get(), nullptr, X, 2), 0);
        EXPECT_FALSE(lifecycle_has_orphans_to(l.get(), nullptr));
        EXPECT_EQ(lifecycle_get_in_flight(l.get()), 1u);
        EXPECT_FALSE(lifecycle_may_send(l.get(), X));
        EXPECT_EQ(lifecycle_get_holds(l.get(), X), 0u);
}

TEST(Lifecycle, DropOrphans) {
        LifecyclePtr l = make();

        ASSERT_EQ(lifecycle_hold(l.get(), X, 1), 0);
        ASSERT_EQ(lifecycle_hold(l.get(), Y, 1), 0);
        ASSERT_EQ(lifecycle_sending(l.get(), X, 1, Z), 0);
        ASSERT_EQ(lifecycle_sending(l.get(), X, 2, nullptr), 0);
        ASSERT_EQ(lifecycle_sending(l.get(), Y, 1, Z), 0);      /* not an orphan */

        /* Nothing orphaned yet: no-op. */
        Snap before = snap(l.get());
        lifecycle_drop_orphans(l.get(), Z, UINT64_MAX);
        lifecycle_drop_orphans(l.get(), nullptr, UINT64_MAX);
        lifecycle_drop_orphans(l.get(), UNKNOWN, UINT64_MAX);
        EXPECT_EQ(snap(l.get()), before);

        lifecycle_peer_gone(l.get(), X, 4);
        EXPECT_TRUE(lifecycle_is_connected(l.get()));
        EXPECT_TRUE(lifecycle_has_orphans_to(l.get(), Z));
        EXPECT_TRUE(lifecycle_has_orphans_to(l.get(), nullptr));

        /* Older barrier, other destination: no-op. */
        before = snap(l.get());
        lifecycle_drop_orphans(l.get(), Z, 3);
        lifecycle_drop_orphans(l.get(), nullptr, 0);
        lifecycle_drop_orphans(l.get(), Y, 10);
        lifecycle_drop_orphans(l.get(), X, 10);
        EXPECT_EQ(snap(l.get()), before);

        lifecycle_drop_orphans(l.get(), Z, 4);
        EXPECT_FALSE(lifecycle_has_orphans_to(l.get(), Z));
        EXPECT_TRUE(lifecycle_may_send(l.get(), Z));    /* (Y,1) still in flight to Z */
        EXPECT_EQ(lifecycle_get_in_flight(l.get()), 2u);
        EXPECT_FAILS_UNCHANGED(l.get(), -ENOENT, lifecycle_claim(l.get(), Z, X, 1));

        lifecycle_drop_orphans(l.get(), nullptr, UINT64_MAX);
        EXPECT_FALSE(lifecycle_has_orphans_to(l.get(), nullptr));
        EXPECT_FALSE(lifecycle_may_send(l.get(), nullptr));
        EXPECT_EQ(lifecycle_get_in_flight(l.get()), 1u);
        EXPECT_EQ(lifecycle_claim(l.get(), Z, Y, 1), 0);
        EXPECT_EQ(holders_of(l.get()), (std::vector<std::string>{ Y, Z }));
}

TEST(Lifecycle, Clear) {
        LifecyclePtr l = make_busy();

        lifecycle_clear(l.get());
        EXPECT_EQ(lifecycle_get_in_flight(l.get()), 0u);
        EXPECT_EQ(lifecycle_get_local_holds(l.get()), 2u);
        EXPECT_EQ(lifecycle_get_remote_holds(l.get()), 3u);
        EXPECT_EQ(holders_of(l.get()), (std::vector<std::string>{ X, Y }));
        EXPECT_EQ(sorted(peers_of(l.get())), (std::vector<std::string>{ X, Y }));
        EXPECT_FALSE(lifecycle_may_send(l.get(), Z));
        for (const char *n : probe_names)
                EXPECT_FALSE(lifecycle_has_orphans_to(l.get(), n));
        EXPECT_TRUE(lifecycle_is_connected(l.get()));

        /* Idempotent. */
        Snap before = snap(l.get());
        lifecycle_clear(l.get());
        EXPECT_EQ(snap(l.get()), before);

        /* Holds only go through release. */
        EXPECT_EQ(lifecycle_release(l.get(), X, 2), 0);
        EXPECT_EQ(lifecycle_release(l.get(), Y, 1), 0);
        EXPECT_EQ(lifecycle_release_local(l.get()), 0);
        EXPECT_EQ(lifecycle_release_local(l.get()), 0);
        EXPECT_FALSE(lifecycle_is_connected(l.get()));

        /* In flight only: clear disconnects. */
        lifecycle_hold_local(l.get());
        ASSERT_EQ(lifecycle_sending(l.get(), nullptr, 1, X), 0);
        ASSERT_EQ(lifecycle_release_local(l.get()), 0);
        EXPECT_TRUE(lifecycle_is_connected(l.get()));
        lifecycle_clear(l.get());
        EXPECT_FALSE(lifecycle_is_connected(l.get()));
        EXPECT_TRUE(peers_of(l.get()).empty());
}

TEST(Lifecycle, ForeachPeerOnceEach) {
        LifecyclePtr l = make();

        lifecycle_hold_local(l.get());
        ASSERT_EQ(lifecycle_hold(l.get(), X, 2), 0);
        ASSERT_EQ(lifecycle_sending(l.get(), nullptr, 1, X), 0);
        ASSERT_EQ(lifecycle_sending(l.get(), nullptr, 2, X), 0);
        ASSERT_EQ(lifecycle_sending(l.get(), X, 1, X), 0);
        ASSERT_EQ(lifecycle_sending(l.get(), X, 2, Y), 0);
        ASSERT_EQ(lifecycle_sending(l.get(), X, 3, Y), 0);
        ASSERT_EQ(lifecycle_sending(l.get(), X, 4, nullptr), 0);
        ASSERT_EQ(lifecycle_hold(l.get(), W, 1), 0);
        ASSERT_EQ(lifecycle_sending(l.get(), W, 1, Y), 0);
        ASSERT_EQ(lifecycle_release(l.get(), W, 1), 0);         /* W: source only, not listed */

        std::vector<std::string> p = peers_of(l.get());
        EXPECT_EQ(p.size(), 2u);
        EXPECT_EQ(sorted(p), (std::vector<std::string>{ X, Y }));
        EXPECT_EQ(holders_of(l.get()), (std::vector<std::string>{ X }));
        EXPECT_FALSE(lifecycle_may_send(l.get(), W));

        /* A holder that is also a destination stays listed after releasing. */
        ASSERT_EQ(lifecycle_release(l.get(), X, 2), 0);
        EXPECT_EQ(sorted(peers_of(l.get())), (std::vector<std::string>{ X, Y }));
        EXPECT_TRUE(holders_of(l.get()).empty());
}

TEST(Lifecycle, HoldersSorted) {
        LifecyclePtr l = make();
        std::vector<std::string> names;

        for (int i = 50; i > 0; i--) {
                std::string n = ":1." + std::to_string(i * 7919 % 1000);
                ASSERT_EQ(lifecycle_hold(l.get(), n.c_str(), 1), 0);
                names.push_back(n);
        }
        EXPECT_EQ(holders_of(l.get()), sorted(names));
        EXPECT_EQ(lifecycle_get_holders(l.get(), nullptr), -EINVAL);
        lifecycle_strv_free(nullptr);
}

/* ---------------------------------------------------------------------------
 * The reference's sub_sender_state_machine_* tests, in this model: the
 * initial source is the local hold of the process that created the channel,
 * "via" is the destination, a failing probe is the destination's death.
 */

TEST(LifecycleReference, DisconnectUnknownSource) {
        LifecyclePtr l = make();

        lifecycle_hold_local(l.get());
        EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, lifecycle_release(l.get(), UNKNOWN, 1));
        Snap before = snap(l.get());
        lifecycle_peer_gone(l.get(), UNKNOWN, 1);
        EXPECT_EQ(snap(l.get()), before);
        EXPECT_TRUE(lifecycle_is_connected(l.get()));
        EXPECT_EQ(lifecycle_release_local(l.get()), 0);
        EXPECT_FALSE(lifecycle_is_connected(l.get()));
        EXPECT_FALSE(lifecycle_may_send(l.get(), nullptr));
}

TEST(LifecycleReference, DisconnectReceivedFirst) {
        LifecyclePtr l = make();

        lifecycle_hold_local(l.get());                          /* x */
        ASSERT_EQ(lifecycle_sending(l.get(), nullptr, 1, Y), 0);
        ASSERT_EQ(lifecycle_claim(l.get(), Y, nullptr, 1), 0);  /* received at y */
        EXPECT_EQ(lifecycle_release(l.get(), Y, 1), 0);         /* disconnect y */
        EXPECT_TRUE(lifecycle_is_connected(l.get()));
        EXPECT_EQ(lifecycle_release_local(l.get()), 0);         /* disconnect x */
        EXPECT_FALSE(lifecycle_is_connected(l.get()));
}

TEST(LifecycleReference, DisconnectOriginalFirst) {
        LifecyclePtr l = make();

        lifecycle_hold_local(l.get());
        ASSERT_EQ(lifecycle_sending(l.get(), nullptr, 1, Y), 0);
        ASSERT_EQ(lifecycle_claim(l.get(), Y, nullptr, 1), 0);
        EXPECT_EQ(lifecycle_release_local(l.get()), 0);
        EXPECT_TRUE(lifecycle_is_connected(l.get()));
        EXPECT_TRUE(lifecycle_may_send(l.get(), Y));
        EXPECT_EQ(lifecycle_release(l.get(), Y, 1), 0);
        EXPECT_FALSE(lifecycle_is_connected(l.get()));
}

TEST(LifecycleReference, InFlightKeepsAliveAfterOriginReleased) {
        LifecyclePtr l = make();

        lifecycle_hold_local(l.get());
        ASSERT_EQ(lifecycle_sending(l.get(), nullptr, 1, Y), 0);
        EXPECT_EQ(lifecycle_release_local(l.get()), 0);
        EXPECT_TRUE(lifecycle_is_connected(l.get()));
        EXPECT_TRUE(lifecycle_may_send(l.get(), Y));
        EXPECT_EQ(sorted(peers_of(l.get())), (std::vector<std::string>{ Y }));
}

TEST(LifecycleReference, MultipleTransmission) {
        LifecyclePtr l = make();

        lifecycle_hold_local(l.get());
        ASSERT_EQ(lifecycle_sending(l.get(), nullptr, 1, Y), 0);
        ASSERT_EQ(lifecycle_sending(l.get(), nullptr, 2, Y), 0);
        EXPECT_EQ(lifecycle_release_local(l.get()), 0);
        ASSERT_EQ(lifecycle_claim(l.get(), Y, nullptr, 1), 0);
        EXPECT_EQ(lifecycle_release(l.get(), Y, 1), 0);
        EXPECT_TRUE(lifecycle_is_connected(l.get()));
        EXPECT_EQ(lifecycle_get_in_flight(l.get()), 1u);
        EXPECT_TRUE(lifecycle_may_send(l.get(), Y));
        ASSERT_EQ(lifecycle_claim(l.get(), Y, nullptr, 2), 0);
        EXPECT_EQ(lifecycle_release(l.get(), Y, 1), 0);
        EXPECT_FALSE(lifecycle_is_connected(l.get()));
}

TEST(LifecycleReference, InFlightCrash) {
        LifecyclePtr l = make();

        lifecycle_hold_local(l.get());
        ASSERT_EQ(lifecycle_sending(l.get(), nullptr, 1, Y), 0);
        EXPECT_EQ(lifecycle_release_local(l.get()), 0);
        EXPECT_TRUE(lifecycle_is_connected(l.get()));
        lifecycle_peer_gone(l.get(), Y, 1);
        EXPECT_FALSE(lifecycle_is_connected(l.get()));
        EXPECT_EQ(lifecycle_get_in_flight(l.get()), 0u);
        EXPECT_TRUE(peers_of(l.get()).empty());
        EXPECT_FAILS_UNCHANGED(l.get(), -ENOENT, lifecycle_claim(l.get(), Y, nullptr, 1));
}

TEST(LifecycleReference, TwoInFlightCrash) {
        LifecyclePtr l = make();

        lifecycle_hold_local(l.get());
        ASSERT_EQ(lifecycle_sending(l.get(), nullptr, 1, Y), 0);
        ASSERT_EQ(lifecycle_sending(l.get(), nullptr, 2, Y), 0);
        EXPECT_EQ(lifecycle_release_local(l.get()), 0);
        lifecycle_peer_gone(l.get(), Y, 1);             /* one event removes both */
        EXPECT_EQ(lifecycle_get_in_flight(l.get()), 0u);
        EXPECT_FALSE(lifecycle_is_connected(l.get()));
}

TEST(LifecycleReference, InFlightCrashEventually) {
        LifecyclePtr l = make();

        lifecycle_hold_local(l.get());
        ASSERT_EQ(lifecycle_sending(l.get(), nullptr, 1, Y), 0);
        EXPECT_EQ(lifecycle_release_local(l.get()), 0);
        lifecycle_peer_gone(l.get(), Z, 1);             /* somebody else: y still alive */
        lifecycle_drop_orphans(l.get(), Y, UINT64_MAX); /* y answered a barrier: not an orphan */
        EXPECT_TRUE(lifecycle_is_connected(l.get()));
        lifecycle_peer_gone(l.get(), Y, 2);
        EXPECT_FALSE(lifecycle_is_connected(l.get()));
}

TEST(LifecycleReference, ReceiveFailed) {
        LifecyclePtr l = make();

        lifecycle_hold_local(l.get());
        ASSERT_EQ(lifecycle_sending(l.get(), nullptr, 1, Y), 0);
        EXPECT_EQ(lifecycle_release_local(l.get()), 0);
        EXPECT_EQ(lifecycle_decline(l.get(), Y, nullptr, 1), 0);
        EXPECT_FALSE(lifecycle_is_connected(l.get()));
        EXPECT_FALSE(lifecycle_may_send(l.get(), Y));
}

TEST(LifecycleReference, NoProbeAfterReceived) {
        /* remove_probe_on_disconnect: once received, y's later death only
         * takes y's hold; nothing about the old transfer is left. */
        LifecyclePtr l = make();

        lifecycle_hold_local(l.get());
        ASSERT_EQ(lifecycle_sending(l.get(), nullptr, 1, Y), 0);
        ASSERT_EQ(lifecycle_claim(l.get(), Y, nullptr, 1), 0);
        EXPECT_EQ(lifecycle_get_in_flight(l.get()), 0u);
        lifecycle_peer_gone(l.get(), Y, 1);
        EXPECT_EQ(lifecycle_get_holds(l.get(), Y), 0u);
        EXPECT_TRUE(lifecycle_is_connected(l.get()));   /* x still there */
        EXPECT_FAILS_UNCHANGED(l.get(), -ENOENT, lifecycle_decline(l.get(), Y, nullptr, 1));
}

/* ---------------------------------------------------------------------------
 * Orphans and barrier generations
 */

TEST(LifecycleOrphans, ClaimedAfterDeath) {
        LifecyclePtr l = make();

        ASSERT_EQ(lifecycle_hold(l.get(), Y, 1), 0);
        ASSERT_EQ(lifecycle_sending(l.get(), Y, 5, Z), 0);
        lifecycle_peer_gone(l.get(), Y, 1);
        EXPECT_TRUE(lifecycle_is_connected(l.get()));
        EXPECT_TRUE(lifecycle_has_orphans_to(l.get(), Z));
        EXPECT_TRUE(lifecycle_may_send(l.get(), Z));
        /* The carrying message arrives before the barrier's answer. */
        EXPECT_EQ(lifecycle_claim(l.get(), Z, Y, 5), 0);
        EXPECT_FALSE(lifecycle_has_orphans_to(l.get(), Z));
        lifecycle_drop_orphans(l.get(), Z, 1);
        EXPECT_EQ(lifecycle_get_holds(l.get(), Z), 1u);
        EXPECT_TRUE(lifecycle_is_connected(l.get()));
}

TEST(LifecycleOrphans, DroppedByBarrier) {
        LifecyclePtr l = make();

        ASSERT_EQ(lifecycle_hold(l.get(), Y, 1), 0);
        ASSERT_EQ(lifecycle_sending(l.get(), Y, 5, Z), 0);
        lifecycle_peer_gone(l.get(), Y, 1);
        lifecycle_drop_orphans(l.get(), Z, 1);
        EXPECT_FALSE(lifecycle_is_connected(l.get()));
        EXPECT_FALSE(lifecycle_may_send(l.get(), Z));
        EXPECT_TRUE(peers_of(l.get()).empty());
        EXPECT_FAILS_UNCHANGED(l.get(), -ENOENT, lifecycle_claim(l.get(), Z, Y, 5));
}

TEST(LifecycleOrphans, ToThisProcess) {
        LifecyclePtr l = make();

        ASSERT_EQ(lifecycle_hold(l.get(), Y, 1), 0);
        ASSERT_EQ(lifecycle_sending(l.get(), Y, 5, nullptr), 0);
        ASSERT_EQ(lifecycle_sending(l.get(), Y, 6, nullptr), 0);
        lifecycle_peer_gone(l.get(), Y, 7);
        EXPECT_TRUE(lifecycle_has_orphans_to(l.get(), nullptr));
        EXPECT_TRUE(lifecycle_may_send(l.get(), nullptr));
        EXPECT_EQ(lifecycle_claim(l.get(), nullptr, Y, 5), 0);
        EXPECT_TRUE(lifecycle_has_orphans_to(l.get(), nullptr));
        lifecycle_drop_orphans(l.get(), nullptr, 6);
        EXPECT_TRUE(lifecycle_has_orphans_to(l.get(), nullptr));
        lifecycle_drop_orphans(l.get(), nullptr, 7);
        EXPECT_FALSE(lifecycle_has_orphans_to(l.get(), nullptr));
        EXPECT_EQ(lifecycle_get_in_flight(l.get()), 0u);
        EXPECT_EQ(lifecycle_get_local_holds(l.get()), 1u);
        EXPECT_TRUE(lifecycle_is_connected(l.get()));
}

TEST(LifecycleOrphans, LaterDeathAfterBarrierSent) {
        /* y dies (gen 1) and a barrier for gen 1 goes to z; then w dies
         * (gen 2).  z's answer to barrier 1 must only drop y's orphans:
         * w's carrying message may still be queued behind it. */
        LifecyclePtr l = make();

        ASSERT_EQ(lifecycle_hold(l.get(), Y, 1), 0);
        ASSERT_EQ(lifecycle_hold(l.get(), W, 1), 0);
        ASSERT_EQ(lifecycle_sending(l.get(), Y, 1, Z), 0);
        ASSERT_EQ(lifecycle_sending(l.get(), W, 1, Z), 0);
        lifecycle_peer_gone(l.get(), Y, 1);
        lifecycle_peer_gone(l.get(), W, 2);
        EXPECT_EQ(lifecycle_get_in_flight(l.get()), 2u);

        lifecycle_drop_orphans(l.get(), Z, 1);
        EXPECT_EQ(lifecycle_get_in_flight(l.get()), 1u);
        EXPECT_TRUE(lifecycle_has_orphans_to(l.get(), Z));
        EXPECT_FAILS_UNCHANGED(l.get(), -ENOENT, lifecycle_claim(l.get(), Z, Y, 1));
        EXPECT_TRUE(lifecycle_is_connected(l.get()));

        lifecycle_drop_orphans(l.get(), Z, 2);
        EXPECT_FALSE(lifecycle_is_connected(l.get()));
}

TEST(LifecycleOrphans, FirstGenerationSticks) {
        /* A second "gone" (later generation) must not re-tag an orphan. */
        LifecyclePtr l = make();

        ASSERT_EQ(lifecycle_hold(l.get(), Y, 1), 0);
        ASSERT_EQ(lifecycle_sending(l.get(), Y, 1, Z), 0);
        lifecycle_peer_gone(l.get(), Y, 3);
        lifecycle_peer_gone(l.get(), Y, 9);
        lifecycle_drop_orphans(l.get(), Z, 3);
        EXPECT_EQ(lifecycle_get_in_flight(l.get()), 0u);
        EXPECT_FALSE(lifecycle_is_connected(l.get()));
}

TEST(LifecycleOrphans, DestinationDiesToo) {
        LifecyclePtr l = make();

        ASSERT_EQ(lifecycle_hold(l.get(), Y, 1), 0);
        ASSERT_EQ(lifecycle_sending(l.get(), Y, 1, Z), 0);
        ASSERT_EQ(lifecycle_sending(l.get(), Y, 2, Y), 0);      /* to itself: goes, not orphaned */
        lifecycle_peer_gone(l.get(), Y, 1);
        EXPECT_EQ(lifecycle_get_in_flight(l.get()), 1u);
        EXPECT_FALSE(lifecycle_has_orphans_to(l.get(), Y));
        lifecycle_peer_gone(l.get(), Z, 2);
        EXPECT_EQ(lifecycle_get_in_flight(l.get()), 0u);
        EXPECT_FALSE(lifecycle_has_orphans_to(l.get(), Z));
        EXPECT_FALSE(lifecycle_is_connected(l.get()));
        EXPECT_TRUE(peers_of(l.get()).empty());
}

/* ---------------------------------------------------------------------------
 * Forged operations: a peer can only act on what is its own.
 */

TEST(LifecycleForged, ReleaseOthersHolds) {
        LifecyclePtr l = make();

        ASSERT_EQ(lifecycle_hold(l.get(), Y, 2), 0);
        /* X sends "Release" for Y's senders: it is charged to X, which holds nothing. */
        EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, lifecycle_release(l.get(), X, 1));
        ASSERT_EQ(lifecycle_hold(l.get(), X, 1), 0);
        EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, lifecycle_release(l.get(), X, 2));
        EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, lifecycle_release(l.get(), X, 3));
        EXPECT_EQ(lifecycle_get_holds(l.get(), Y), 2u);
}

TEST(LifecycleForged, OriginWithdrawsOnlyItsOwnCopy) {
        LifecyclePtr l = make();

        ASSERT_EQ(lifecycle_hold(l.get(), X, 1), 0);
        ASSERT_EQ(lifecycle_sending(l.get(), X, 1, Y), 0);
        ASSERT_EQ(lifecycle_sending(l.get(), X, 2, Y), 0);
        /* A third party can neither withdraw nor claim it. */
        EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, lifecycle_decline(l.get(), Z, X, 1));
        /* The origin withdraws copy 1 (its carrier never left): no hold is gained. */
        EXPECT_EQ(lifecycle_decline(l.get(), X, X, 1), 0);
        EXPECT_EQ(lifecycle_get_in_flight(l.get()), 1u);
        EXPECT_EQ(lifecycle_get_holds(l.get(), X), 1u);
        EXPECT_EQ(lifecycle_get_holds(l.get(), Y), 0u);
        /* The origin cannot claim its own copy. */
        EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, lifecycle_claim(l.get(), X, X, 2));
        /* This process withdraws a local copy the same way. */
        lifecycle_hold_local(l.get());
        ASSERT_EQ(lifecycle_sending(l.get(), nullptr, 3, Y), 0);
        EXPECT_EQ(lifecycle_decline(l.get(), nullptr, nullptr, 3), 0);
        EXPECT_EQ(lifecycle_get_in_flight(l.get()), 1u);
}

TEST(LifecycleForged, ClaimByWrongPeer) {
        LifecyclePtr l = make();

        lifecycle_hold_local(l.get());
        ASSERT_EQ(lifecycle_sending(l.get(), nullptr, 1, Y), 0);
        EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, lifecycle_claim(l.get(), X, nullptr, 1));
        EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, lifecycle_decline(l.get(), X, nullptr, 1));
        EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, lifecycle_claim(l.get(), nullptr, nullptr, 1));
        EXPECT_EQ(lifecycle_get_holds(l.get(), X), 0u);
        EXPECT_TRUE(lifecycle_may_send(l.get(), Y));
}

TEST(LifecycleForged, SendingFromNonHolder) {
        LifecyclePtr l = make();

        lifecycle_hold_local(l.get());
        ASSERT_EQ(lifecycle_hold(l.get(), Y, 1), 0);
        EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, lifecycle_sending(l.get(), X, 1, Z));
        EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, lifecycle_sending(l.get(), X, 1, nullptr));
        EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, lifecycle_sending(l.get(), X, 1, X));
        /* A mere destination is no holder. */
        ASSERT_EQ(lifecycle_sending(l.get(), nullptr, 1, X), 0);
        EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, lifecycle_sending(l.get(), X, 1, Z));
}

TEST(LifecycleForged, DuplicateToken) {
        LifecyclePtr l = make();

        ASSERT_EQ(lifecycle_hold(l.get(), X, 1), 0);
        ASSERT_EQ(lifecycle_sending(l.get(), X, 42, Y), 0);
        EXPECT_FAILS_UNCHANGED(l.get(), -EEXIST, lifecycle_sending(l.get(), X, 42, Y));
        EXPECT_FAILS_UNCHANGED(l.get(), -EEXIST, lifecycle_sending(l.get(), X, 42, Z));
        EXPECT_FAILS_UNCHANGED(l.get(), -EEXIST, lifecycle_sending(l.get(), X, 42, nullptr));
}

TEST(LifecycleForged, ErrorsOnBusyObjectChangeNothing) {
        LifecyclePtr l = make_busy();

        EXPECT_FAILS_UNCHANGED(l.get(), -EINVAL, lifecycle_hold(l.get(), nullptr, 1));
        EXPECT_FAILS_UNCHANGED(l.get(), -EINVAL, lifecycle_hold(l.get(), Z, 0));
        EXPECT_FAILS_UNCHANGED(l.get(), -EOVERFLOW, lifecycle_hold(l.get(), Z, UINT_MAX));
        EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, lifecycle_release(l.get(), Z, 1));
        EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, lifecycle_release(l.get(), W, 1));
        EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, lifecycle_release(l.get(), X, 3));
        EXPECT_FAILS_UNCHANGED(l.get(), -EINVAL, lifecycle_sending(l.get(), nullptr, 9, nullptr));
        EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, lifecycle_sending(l.get(), Z, 9, X));
        EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, lifecycle_sending(l.get(), W, 9, X));  /* gone */
        EXPECT_FAILS_UNCHANGED(l.get(), -EEXIST, lifecycle_sending(l.get(), X, 2, UNKNOWN));
        EXPECT_FAILS_UNCHANGED(l.get(), -EEXIST, lifecycle_sending(l.get(), nullptr, 1, UNKNOWN));
        EXPECT_FAILS_UNCHANGED(l.get(), -ENOENT, lifecycle_claim(l.get(), Z, W, 8));
        EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, lifecycle_claim(l.get(), X, W, 7));
        EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, lifecycle_decline(l.get(), nullptr, W, 7));
        EXPECT_FAILS_UNCHANGED(l.get(), -EACCES, lifecycle_claim(l.get(), W, X, 1));
        EXPECT_FAILS_UNCHANGED(l.get(), -ENOENT, lifecycle_decline(l.get(), nullptr, UNKNOWN, 1));
}

/* ---------------------------------------------------------------------------
 * Allocation failures: -ENOMEM and nothing changed, for every allocation.
 */

#ifdef LC_FAULT_INJECTION
namespace {

/* Runs @op with the k-th allocation failing, k = 0, 1, ... until it succeeds. */
template <typename Op>
void expect_enomem_safe(Lifecycle *l, Op op, unsigned min_allocs) {
        for (long k = 0;; k++) {
                ASSERT_LT(k, 100) << "runaway allocation count";
                Snap before = snap(l);
                fail_arm(k);
                int r = op();
                bool triggered = fail_disarm();
                if (triggered) {
                        EXPECT_EQ(r, -ENOMEM) << "allocation " << k;
                        EXPECT_EQ(snap(l), before) << "allocation " << k;
                        if (r == 0)
                                return;
                        continue;
                }
                EXPECT_EQ(r, 0);
                EXPECT_GE((unsigned long) k, (unsigned long) min_allocs);
                return;
        }
}

} /* namespace */

TEST(LifecycleNoMem, New) {
        for (long k = 0;; k++) {
                Lifecycle *l = nullptr;
                ASSERT_LT(k, 100);
                fail_arm(k);
                int r = lifecycle_new(&l);
                bool triggered = fail_disarm();
                if (triggered) {
                        EXPECT_EQ(r, -ENOMEM);
                        EXPECT_EQ(l, nullptr);
                        continue;
                }
                ASSERT_EQ(r, 0);
                lifecycle_free(l);
                EXPECT_GE(k, 1);
                break;
        }
}

TEST(LifecycleNoMem, Hold) {
        LifecyclePtr l = make_busy();

        /* Unknown peer: record and name copy (and maybe map growth). */
        expect_enomem_safe(l.get(), [&] { return lifecycle_hold(l.get(), UNKNOWN, 2); }, 2);
        EXPECT_EQ(lifecycle_get_holds(l.get(), UNKNOWN), 2u);
        /* Known peers (a holder, a mere destination): no allocation at all. */
        expect_enomem_safe(l.get(), [&] { return lifecycle_hold(l.get(), UNKNOWN, 1); }, 0);
        expect_enomem_safe(l.get(), [&] { return lifecycle_hold(l.get(), Z, 1); }, 0);
        EXPECT_EQ(lifecycle_get_holds(l.get(), Z), 1u);
}

TEST(LifecycleNoMem, HoldGrowingTheMap) {
        LifecyclePtr l = make();

        for (int i = 0; i < 40; i++) {
                std::string n = ":1." + std::to_string(i);
                expect_enomem_safe(l.get(), [&] { return lifecycle_hold(l.get(), n.c_str(), 1); }, 2);
        }
        EXPECT_EQ(holders_of(l.get()).size(), 40u);
}

TEST(LifecycleNoMem, Sending) {
        LifecyclePtr l = make_busy();

        /* New destination: entry, peer record, its name, maybe map growth. */
        expect_enomem_safe(l.get(), [&] { return lifecycle_sending(l.get(), nullptr, 50, UNKNOWN); }, 3);
        /* Known destination / this process. */
        expect_enomem_safe(l.get(), [&] { return lifecycle_sending(l.get(), X, 50, Y); }, 1);
        expect_enomem_safe(l.get(), [&] { return lifecycle_sending(l.get(), X, 51, nullptr); }, 1);
        for (uint64_t t = 100; t < 140; t++) {
                std::string n = ":2." + std::to_string(t);
                expect_enomem_safe(l.get(), [&] { return lifecycle_sending(l.get(), nullptr, t, n.c_str()); }, 3);
                expect_enomem_safe(l.get(), [&] { return lifecycle_sending(l.get(), X, t, n.c_str()); }, 1);
        }
}

TEST(LifecycleNoMem, NoAllocationsElsewhere) {
        LifecyclePtr l = make_busy();

        expect_enomem_safe(l.get(), [&] { return lifecycle_release(l.get(), X, 1); }, 0);
        expect_enomem_safe(l.get(), [&] { return lifecycle_claim(l.get(), Y, X, 2); }, 0);
        expect_enomem_safe(l.get(), [&] { return lifecycle_decline(l.get(), nullptr, X, 1); }, 0);
        expect_enomem_safe(l.get(), [&] { return lifecycle_release_local(l.get()); }, 0);
        expect_enomem_safe(l.get(), [&] { lifecycle_peer_gone(l.get(), Z, 9); return 0; }, 0);
        expect_enomem_safe(l.get(), [&] { lifecycle_drop_orphans(l.get(), Z, 9); return 0; }, 0);
        expect_enomem_safe(l.get(), [&] { lifecycle_clear(l.get()); return 0; }, 0);
}

TEST(LifecycleNoMem, GetHolders) {
        LifecyclePtr l = make_busy();

        for (long k = 0;; k++) {
                char **v = reinterpret_cast<char **>(0x1);
                ASSERT_LT(k, 100);
                Snap before = snap(l.get());
                fail_arm(k);
                int r = lifecycle_get_holders(l.get(), &v);
                bool triggered = fail_disarm();
                EXPECT_EQ(snap(l.get()), before);
                if (triggered) {
                        EXPECT_EQ(r, -ENOMEM);
                        EXPECT_EQ(v, reinterpret_cast<char **>(0x1));   /* untouched */
                        continue;
                }
                ASSERT_EQ(r, 0);
                EXPECT_EQ(k, 3);        /* the array, then copies of X and Y (W is gone) */
                lifecycle_strv_free(v);
                break;
        }
}
#endif

#ifndef LC_FAULT_INJECTION
TEST(LifecycleNoMem, Skipped) {
        GTEST_SKIP() << "allocation failure injection needs glibc's allocator (not under sanitizers)";
}
#endif

/* ---------------------------------------------------------------------------
 * Scale: operations must not be linear in the number of entries.
 */

TEST(LifecycleScale, ManyInFlight) {
        LifecyclePtr l = make();
        const unsigned N = 100000, PEERS = 16;
        std::vector<std::string> names;

        for (unsigned i = 0; i < PEERS; i++) {
                names.push_back(":1." + std::to_string(1000 + i));
                ASSERT_EQ(lifecycle_hold(l.get(), names[i].c_str(), 1), 0);
        }
        lifecycle_hold_local(l.get());
        for (unsigned i = 0; i < N; i++) {
                const char *from = i % 3 == 0 ? nullptr : names[i % PEERS].c_str();
                const char *to = names[(i / 7) % PEERS].c_str();
                ASSERT_EQ(lifecycle_sending(l.get(), from, i, to), 0);
        }
        EXPECT_EQ(lifecycle_get_in_flight(l.get()), N);
        for (unsigned i = 0; i < N; i++) {
                const char *from = i % 3 == 0 ? nullptr : names[i % PEERS].c_str();
                ASSERT_EQ(lifecycle_sending(l.get(), from, i, names[0].c_str()), -EEXIST);
        }
        /* Resolve half, peer by peer death for a quarter, the rest via orphans. */
        for (unsigned i = 0; i < N; i += 2) {
                const char *from = i % 3 == 0 ? nullptr : names[i % PEERS].c_str();
                const char *to = names[(i / 7) % PEERS].c_str();
                ASSERT_EQ(i % 4 == 0 ? lifecycle_claim(l.get(), to, from, i) : lifecycle_decline(l.get(), to, from, i), 0);
        }
        EXPECT_EQ(lifecycle_get_in_flight(l.get()), N / 2);
        for (unsigned p = 0; p < PEERS / 2; p++)
                lifecycle_peer_gone(l.get(), names[p].c_str(), p + 1);
        for (unsigned p = PEERS / 2; p < PEERS; p++)
                lifecycle_drop_orphans(l.get(), names[p].c_str(), UINT64_MAX);
        /* What is left: odd tokens from the local process or a surviving peer to a surviving peer. */
        unsigned expect = 0;
        for (unsigned i = 1; i < N; i += 2) {
                unsigned src = i % PEERS, dst = (i / 7) % PEERS;
                if (dst >= PEERS / 2 && (i % 3 == 0 || src >= PEERS / 2))
                        expect++;
        }
        EXPECT_EQ(lifecycle_get_in_flight(l.get()), expect);
        lifecycle_clear(l.get());
        EXPECT_EQ(lifecycle_get_in_flight(l.get()), 0u);
}

#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33)) && !defined(LC_SANITIZER_ALLOCATOR)
#include <malloc.h>

/* Records of peers nothing refers to any more are freed, not kept around. */
TEST(LifecycleScale, NoRecordsLeftBehind) {
        LifecyclePtr l = make();
        auto churn = [&](unsigned base) {
                for (unsigned i = 0; i < 10000; i++) {
                        std::string a = ":1." + std::to_string(base + i), b = ":2." + std::to_string(base + i);
                        ASSERT_EQ(lifecycle_hold(l.get(), a.c_str(), 1), 0);
                        ASSERT_EQ(lifecycle_sending(l.get(), a.c_str(), i, b.c_str()), 0);
                        ASSERT_EQ(lifecycle_release(l.get(), a.c_str(), 1), 0);
                        switch (i % 4) {
                        case 0: ASSERT_EQ(lifecycle_decline(l.get(), b.c_str(), a.c_str(), i), 0); break;
                        case 1: lifecycle_peer_gone(l.get(), b.c_str(), i); break;
                        case 2: lifecycle_peer_gone(l.get(), a.c_str(), i);
                                lifecycle_drop_orphans(l.get(), b.c_str(), i); break;
                        case 3: ASSERT_EQ(lifecycle_claim(l.get(), b.c_str(), a.c_str(), i), 0);
                                ASSERT_EQ(lifecycle_release(l.get(), b.c_str(), 1), 0); break;
                        }
                }
        };

        churn(0);       /* warm up: tables reach their (small) peak */
        size_t before = mallinfo2().uordblks;
        churn(100000);
        size_t after = mallinfo2().uordblks;
        EXPECT_FALSE(lifecycle_is_connected(l.get()));
        EXPECT_LT(after, before + 64 * 1024) << "grew by " << after - before << " bytes";
}
#else
TEST(LifecycleScale, NoRecordsLeftBehind) {
        GTEST_SKIP() << "needs glibc >= 2.33 mallinfo2() and glibc's allocator";
}
#endif

/* ---------------------------------------------------------------------------
 * Randomized comparison with a reference model.
 */

namespace {

using Name = std::optional<std::string>;

struct Model {
        struct Entry {
                Name to;
                bool orphan = false;
                uint64_t gen = 0;
        };

        unsigned local = 0;
        std::map<std::string, unsigned> holds;                  /* > 0 only */
        std::map<std::pair<Name, uint64_t>, Entry> in_flight;

        uint64_t remote(void) const {
                uint64_t s = 0;
                for (auto &[_, h] : holds)
                        s += h;
                return s;
        }
        unsigned holds_of(const Name &n) const {
                if (!n)
                        return local;
                auto it = holds.find(*n);
                return it == holds.end() ? 0 : it->second;
        }

        void hold_local(void) { local++; }
        int release_local(void) {
                if (local == 0)
                        return -EINVAL;
                local--;
                return 0;
        }
        int hold(const Name &p, unsigned n) {
                if (!p || n == 0)
                        return -EINVAL;
                if (remote() + n > UINT_MAX)
                        return -EOVERFLOW;
                holds[*p] += n;
                return 0;
        }
        int release(const Name &p, unsigned n) {
                if (!p || n == 0)
                        return -EINVAL;
                if (holds_of(p) < n)
                        return -EACCES;
                if ((holds[*p] -= n) == 0)
                        holds.erase(*p);
                return 0;
        }
        int sending(const Name &from, uint64_t token, const Name &to) {
                if (!from && !to)
                        return -EINVAL;
                if (holds_of(from) == 0)
                        return -EACCES;
                if (in_flight.count({ from, token }))
                        return -EEXIST;
                in_flight[{ from, token }] = Entry{ to };
                return 0;
        }
        int resolve(const Name &by, const Name &from, uint64_t token, bool claim) {
                auto it = in_flight.find({ from, token });
                if (it == in_flight.end())
                        return -ENOENT;
                /* The destination resolves; the origin may also withdraw (decline). */
                if (it->second.to != by && (claim || by != from))
                        return -EACCES;
                if (claim) {
                        if (by) {
                                if (remote() == UINT_MAX)
                                        return -EOVERFLOW;
                                holds[*by]++;
                        } else
                                local++;
                }
                in_flight.erase(it);
                return 0;
        }
        void peer_gone(const Name &p, uint64_t gen) {
                if (!p)
                        return;
                holds.erase(*p);
                for (auto it = in_flight.begin(); it != in_flight.end();) {
                        if (it->second.to == p) {
                                it = in_flight.erase(it);
                                continue;
                        }
                        if (it->first.first == p && !it->second.orphan) {
                                it->second.orphan = true;
                                it->second.gen = gen;
                        }
                        ++it;
                }
        }
        void drop_orphans(const Name &to, uint64_t max_gen) {
                for (auto it = in_flight.begin(); it != in_flight.end();)
                        if (it->second.to == to && it->second.orphan && it->second.gen <= max_gen)
                                it = in_flight.erase(it);
                        else
                                ++it;
        }
        void clear(void) { in_flight.clear(); }

        bool connected(void) const { return local > 0 || !holds.empty() || !in_flight.empty(); }
        bool may_send(const Name &n) const {
                if (holds_of(n) > 0)
                        return true;
                for (auto &[_, e] : in_flight)
                        if (e.to == n)
                                return true;
                return false;
        }
        bool has_orphans_to(const Name &n) const {
                for (auto &[_, e] : in_flight)
                        if (e.to == n && e.orphan)
                                return true;
                return false;
        }
        std::vector<std::string> holders(void) const {
                std::vector<std::string> v;
                for (auto &[n, _] : holds)
                        v.push_back(n);
                return v;
        }
        std::vector<std::string> peers(void) const {
                std::set<std::string> s;
                for (auto &[n, _] : holds)
                        s.insert(n);
                for (auto &[_, e] : in_flight)
                        if (e.to)
                                s.insert(*e.to);
                return { s.begin(), s.end() };
        }
};

const char *c_name(const Name &n) {
        return n ? n->c_str() : nullptr;
}

void check_against_model(const Lifecycle *l, const Model &m, const std::vector<Name> &pool, uint64_t step) {
        ASSERT_EQ(lifecycle_is_connected(l), m.connected()) << "step " << step;
        ASSERT_EQ(lifecycle_get_local_holds(l), m.local) << "step " << step;
        ASSERT_EQ((uint64_t) lifecycle_get_remote_holds(l), m.remote()) << "step " << step;
        ASSERT_EQ(lifecycle_get_in_flight(l), m.in_flight.size()) << "step " << step;
        for (const Name &n : pool) {
                ASSERT_EQ(lifecycle_get_holds(l, c_name(n)), m.holds_of(n)) << "step " << step << " " << c_name(n);
                ASSERT_EQ(lifecycle_may_send(l, c_name(n)), m.may_send(n)) << "step " << step << " " << c_name(n);
                ASSERT_EQ(lifecycle_has_orphans_to(l, c_name(n)), m.has_orphans_to(n)) << "step " << step;
        }
        ASSERT_EQ(holders_of(l), m.holders()) << "step " << step;
        std::vector<std::string> p = peers_of(l);
        ASSERT_EQ(std::set<std::string>(p.begin(), p.end()).size(), p.size()) << "step " << step << ": duplicate peer";
        ASSERT_EQ(sorted(p), m.peers()) << "step " << step;
}

} /* namespace */

TEST(LifecycleModel, Random100k) {
        /* IPCMUX_LIFECYCLE_SEED=<n> reruns with another sequence. */
        const char *env = getenv("IPCMUX_LIFECYCLE_SEED");
        const uint64_t seed = env ? strtoull(env, nullptr, 0) : 0x1f2e3d4c5b6a7988ull;
        std::mt19937_64 rng(seed);
        const std::vector<Name> pool = { std::nullopt, ":1.1", ":1.2", ":1.3", ":1.4", ":1.5" };
        const unsigned big = UINT_MAX / 3;       /* three of these sum to exactly UINT_MAX */
        const std::vector<unsigned> amounts = { 0, 1, 1, 1, 2, 3, big, UINT_MAX };
        LifecyclePtr l = make();
        Model m;
        uint64_t gen = 0;
        std::map<int, unsigned> outcomes;       /* errno -> count, to see the paths were taken */
        uint64_t orphans_resolved = 0, orphans_dropped = 0, max_in_flight = 0;

        auto pick = [&](auto &v) -> decltype(v[0]) & { return v[rng() % v.size()]; };

        for (uint64_t step = 0; step < 100000; step++) {
                unsigned op = rng() % 100;
                int r = 0, e = 0;
                bool has_result = true;

                if (op < 10) {
                        lifecycle_hold_local(l.get());
                        m.hold_local();
                        has_result = false;
                } else if (op < 18) {
                        r = lifecycle_release_local(l.get());
                        e = m.release_local();
                } else if (op < 28) {
                        const Name &p = pick(pool);
                        unsigned n = pick(amounts);
                        r = lifecycle_hold(l.get(), c_name(p), n);
                        e = m.hold(p, n);
                } else if (op < 38) {
                        const Name &p = pick(pool);
                        unsigned n = rng() % 4 == 0 ? pick(amounts) : m.holds_of(p) > 0 ? 1 : pick(amounts);
                        r = lifecycle_release(l.get(), c_name(p), n);
                        e = m.release(p, n);
                } else if (op < 60) {
                        const Name &from = pick(pool), &to = pick(pool);
                        uint64_t token = rng() % 8;
                        r = lifecycle_sending(l.get(), c_name(from), token, c_name(to));
                        e = m.sending(from, token, to);
                } else if (op < 82) {
                        /* Mostly existing entries, by their destination or somebody else. */
                        Name by, from;
                        uint64_t token;
                        if (!m.in_flight.empty() && rng() % 4 != 0) {
                                auto it = m.in_flight.begin();
                                std::advance(it, rng() % m.in_flight.size());
                                from = it->first.first;
                                token = it->first.second;
                                by = rng() % 4 != 0 ? it->second.to : pick(pool);
                        } else {
                                by = pick(pool);
                                from = pick(pool);
                                token = rng() % 8;
                        }
                        bool claim = rng() % 3 != 0;
                        auto mit = m.in_flight.find({ from, token });
                        bool orphan = mit != m.in_flight.end() && mit->second.orphan;
                        r = claim ? lifecycle_claim(l.get(), c_name(by), c_name(from), token)
                                  : lifecycle_decline(l.get(), c_name(by), c_name(from), token);
                        e = m.resolve(by, from, token, claim);
                        if (orphan && e == 0)
                                orphans_resolved++;
                } else if (op < 90) {
                        const Name &p = pick(pool);
                        uint64_t g = rng() % 8 == 0 ? rng() % (gen + 1) : ++gen;
                        lifecycle_peer_gone(l.get(), c_name(p), g);
                        m.peer_gone(p, g);
                        has_result = false;
                } else if (op < 99) {
                        const Name &p = pick(pool);
                        uint64_t g = rng() % 16 == 0 ? UINT64_MAX : rng() % (gen + 2);
                        size_t n = m.in_flight.size();
                        lifecycle_drop_orphans(l.get(), c_name(p), g);
                        m.drop_orphans(p, g);
                        orphans_dropped += n - m.in_flight.size();
                        has_result = false;
                } else if (rng() % 10 == 0) {
                        lifecycle_clear(l.get());
                        m.clear();
                        has_result = false;
                }

                if (has_result) {
                        ASSERT_EQ(r, e) << "step " << step << " op " << op << " seed " << seed;
                        outcomes[r]++;
                }
                max_in_flight = std::max<uint64_t>(max_in_flight, m.in_flight.size());
                check_against_model(l.get(), m, pool, step);
                if (HasFatalFailure())
                        return;
        }

        /* Every outcome was exercised. */
        for (int err : { 0, -EINVAL, -EACCES, -EEXIST, -ENOENT, -EOVERFLOW })
                EXPECT_GT(outcomes[err], 0u) << "errno " << err << " never seen";
        EXPECT_GT(orphans_resolved, 0u);
        EXPECT_GT(orphans_dropped, 0u);
        EXPECT_GE(max_in_flight, 10u);
        RecordProperty("orphans_resolved", std::to_string(orphans_resolved));
        RecordProperty("orphans_dropped", std::to_string(orphans_dropped));
        RecordProperty("max_in_flight", std::to_string(max_in_flight));
}
