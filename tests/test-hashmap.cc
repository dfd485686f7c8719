/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests of plugin/hashmap.{c,h}: the basic contract, the two stock
 * HashOps, 100k entries checked against std::unordered_map under random
 * insert/remove orders, iteration, and — with HashOps whose hashes we pick so
 * that entries land in chosen buckets — collisions, wrap-around clusters and
 * backward-shift deletion, checked against the linear-probing invariant.
 */

#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

extern "C" {
#include "hashmap.h"
}

namespace {

using Id64 = std::array<uint8_t, 8>;

/* ---- introspection of the table (the struct is public) ------------------ */

/*
 * The bucket hashmap.c derives from a raw hash (mirror of its fix_hash(); the
 * invariant check below only relies on the stored HashEntry.hash).
 */
constexpr uint64_t kMul = 0xff51afd7ed558ccdull;

uint64_t mix(uint64_t x) {
        x ^= x >> 33;
        x *= kMul;
        x ^= x >> 33;
        return x ? x : 1;
}

/* Inverse of mix() for non-zero results: the raw hash that yields @stored. */
uint64_t unmix(uint64_t stored) {
        uint64_t inv = kMul;    /* Newton: each step doubles the correct low bits */

        for (int i = 0; i < 6; i++)
                inv *= 2 - kMul * inv;
        uint64_t x = stored ^ (stored >> 33);
        x *= inv;
        return x ^ (x >> 33);
}

/*
 * Linear-probing invariant: every entry is reachable from its home bucket
 * without crossing an empty slot, n_entries matches the occupied slots, and
 * the load factor stays at most 1/2.
 */
::testing::AssertionResult TableConsistent(const HashMap *h) {
        size_t occupied = 0;

        if (h->n_buckets == 0)
                return h->n_entries == 0 ? ::testing::AssertionSuccess()
                                         : ::testing::AssertionFailure() << "entries without buckets";
        if ((h->n_buckets & (h->n_buckets - 1)) != 0)
                return ::testing::AssertionFailure() << "n_buckets " << h->n_buckets << " not a power of two";

        size_t mask = h->n_buckets - 1;
        for (size_t i = 0; i < h->n_buckets; i++) {
                const HashEntry *e = &h->entries[i];

                if (e->hash == 0)
                        continue;
                occupied++;
                for (size_t j = e->hash & mask; j != i; j = (j + 1) & mask)
                        if (h->entries[j].hash == 0)
                                return ::testing::AssertionFailure()
                                       << "entry in slot " << i << " (home " << (e->hash & mask)
                                       << ") unreachable: slot " << j << " empty";
        }
        if (occupied != h->n_entries)
                return ::testing::AssertionFailure()
                       << occupied << " occupied slots but n_entries " << h->n_entries;
        if (h->n_entries * 2 > h->n_buckets)
                return ::testing::AssertionFailure()
                       << "load factor above 1/2: " << h->n_entries << "/" << h->n_buckets;
        return ::testing::AssertionSuccess();
}

/* Values seen by a full iteration, with multiplicity. */
std::map<void *, int> IterateAll(const HashMap *h) {
        std::map<void *, int> seen;
        void *v = nullptr;

        for (size_t i = 0; hashmap_iterate(h, &i, &v);)
                seen[v]++;
        return seen;
}

/* ---- HashOps with chosen hashes ----------------------------------------- */

struct CtlKey {
        uint64_t raw_hash;      /* what ops->hash returns */
        int id;                 /* identity for equal() */
};

uint64_t ctl_hash(const void *k) {
        return static_cast<const CtlKey *>(k)->raw_hash;
}

bool ctl_equal(const void *a, const void *b) {
        return static_cast<const CtlKey *>(a)->id == static_cast<const CtlKey *>(b)->id;
}

const HashOps ctl_ops = { ctl_hash, ctl_equal };

/* A key whose entry has home bucket @bucket in a table of @n_buckets. */
CtlKey KeyWithHome(int id, size_t bucket, size_t n_buckets, uint64_t salt) {
        uint64_t stored = (salt * n_buckets) | bucket;

        if (stored == 0 || stored == 1)         /* 0 is reserved, 1 has two pre-images */
                stored += n_buckets;
        return CtlKey { unmix(stored), id };
}

void *V(uintptr_t x) {
        return reinterpret_cast<void *>(x);
}

/* ---- basic contract ----------------------------------------------------- */

TEST(HashMap, MixMirrorMatchesImplementation) {
        /* If fix_hash() changes, the bucket-placement tests below lose their
         * meaning; catch that here rather than silently testing nothing. */
        for (uint64_t s : { 2ull, 3ull, 15ull, 16ull, 0x123456789abcdefull, ~0ull }) {
                EXPECT_EQ(mix(unmix(s)), s);

                HashMap h;
                CtlKey k { unmix(s), 1 };

                hashmap_init(&h, &ctl_ops);
                ASSERT_EQ(hashmap_put(&h, &k, V(1)), 0);
                size_t found = 0;
                for (size_t i = 0; i < h.n_buckets; i++)
                        if (h.entries[i].hash != 0) {
                                EXPECT_EQ(h.entries[i].hash, s);
                                found++;
                        }
                EXPECT_EQ(found, 1u);
                hashmap_deinit(&h);
        }
}

TEST(HashMap, EmptyMap) {
        HashMap h;
        void *v = V(1);
        size_t state = 0;

        hashmap_init(&h, &hash_ops_string);
        EXPECT_EQ(hashmap_size(&h), 0u);
        EXPECT_EQ(h.n_buckets, 0u);     /* nothing allocated until the first put */
        EXPECT_EQ(hashmap_get(&h, "x"), nullptr);
        EXPECT_EQ(hashmap_remove(&h, "x"), nullptr);
        EXPECT_FALSE(hashmap_iterate(&h, &state, &v));
        EXPECT_TRUE(TableConsistent(&h));
        hashmap_deinit(&h);
        hashmap_deinit(&h);     /* idempotent */
}

TEST(HashMap, PutGetRemoveString) {
        HashMap h;
        char a[] = "alpha", b[] = "beta", c[] = "gamma";
        char a2[] = "alpha";    /* equal content, different pointer */

        hashmap_init(&h, &hash_ops_string);
        ASSERT_EQ(hashmap_put(&h, a, V(1)), 0);
        ASSERT_EQ(hashmap_put(&h, b, V(2)), 0);
        ASSERT_EQ(hashmap_put(&h, c, V(3)), 0);
        EXPECT_EQ(hashmap_size(&h), 3u);

        EXPECT_EQ(hashmap_get(&h, "alpha"), V(1));
        EXPECT_EQ(hashmap_get(&h, a2), V(1));
        EXPECT_EQ(hashmap_get(&h, "beta"), V(2));
        EXPECT_EQ(hashmap_get(&h, "gamma"), V(3));
        EXPECT_EQ(hashmap_get(&h, "delta"), nullptr);
        EXPECT_EQ(hashmap_get(&h, ""), nullptr);
        EXPECT_EQ(hashmap_get(&h, "alph"), nullptr);

        /* -EEXIST leaves the entry and the size alone, whichever pointer. */
        EXPECT_EQ(hashmap_put(&h, a2, V(9)), -EEXIST);
        EXPECT_EQ(hashmap_put(&h, a, V(9)), -EEXIST);
        EXPECT_EQ(hashmap_get(&h, "alpha"), V(1));
        EXPECT_EQ(hashmap_size(&h), 3u);

        EXPECT_EQ(hashmap_remove(&h, a2), V(1));
        EXPECT_EQ(hashmap_size(&h), 2u);
        EXPECT_EQ(hashmap_get(&h, "alpha"), nullptr);
        EXPECT_EQ(hashmap_remove(&h, "alpha"), nullptr);
        EXPECT_EQ(hashmap_size(&h), 2u);
        EXPECT_EQ(hashmap_get(&h, "beta"), V(2));
        EXPECT_EQ(hashmap_get(&h, "gamma"), V(3));

        /* Re-insert after removal, with a new value. */
        EXPECT_EQ(hashmap_put(&h, a2, V(4)), 0);
        EXPECT_EQ(hashmap_get(&h, "alpha"), V(4));
        EXPECT_EQ(hashmap_size(&h), 3u);

        /* The empty string is a key like any other. */
        char empty[] = "";
        EXPECT_EQ(hashmap_put(&h, empty, V(5)), 0);
        EXPECT_EQ(hashmap_get(&h, ""), V(5));
        EXPECT_EQ(hashmap_remove(&h, ""), V(5));

        EXPECT_TRUE(TableConsistent(&h));
        hashmap_deinit(&h);
        EXPECT_EQ(hashmap_size(&h), 0u);
        EXPECT_EQ(hashmap_get(&h, "beta"), nullptr);

        /* Usable again after deinit. */
        EXPECT_EQ(hashmap_put(&h, b, V(6)), 0);
        EXPECT_EQ(hashmap_get(&h, "beta"), V(6));
        hashmap_deinit(&h);
}

TEST(HashMap, PutGetRemoveId64) {
        HashMap h;
        Id64 k1{}, k2{}, k3{};

        for (int i = 0; i < 8; i++) {
                k1[i] = static_cast<uint8_t>(i);
                k2[i] = static_cast<uint8_t>(0xf0 | i);
                k3[i] = static_cast<uint8_t>(i);
        }
        k3[7] ^= 0x80;          /* differs from k1 only in the top bit */

        hashmap_init(&h, &hash_ops_id64);
        ASSERT_EQ(hashmap_put(&h, k1.data(), V(1)), 0);
        ASSERT_EQ(hashmap_put(&h, k2.data(), V(2)), 0);
        ASSERT_EQ(hashmap_put(&h, k3.data(), V(3)), 0);

        Id64 copy = k1;
        EXPECT_EQ(hashmap_get(&h, copy.data()), V(1));
        EXPECT_EQ(hashmap_get(&h, k2.data()), V(2));
        EXPECT_EQ(hashmap_get(&h, k3.data()), V(3));
        EXPECT_EQ(hashmap_put(&h, copy.data(), V(7)), -EEXIST);

        copy[4] ^= 1;
        EXPECT_EQ(hashmap_get(&h, copy.data()), nullptr);
        EXPECT_EQ(hashmap_remove(&h, copy.data()), nullptr);

        EXPECT_EQ(hashmap_remove(&h, k1.data()), V(1));
        EXPECT_EQ(hashmap_get(&h, k1.data()), nullptr);
        EXPECT_EQ(hashmap_get(&h, k3.data()), V(3));
        EXPECT_EQ(hashmap_size(&h), 2u);
        EXPECT_TRUE(TableConsistent(&h));
        hashmap_deinit(&h);
}

TEST(HashMap, HashBytesIsFnv1a64) {
        EXPECT_EQ(hash_bytes("", 0), 0xcbf29ce484222325ull);
        EXPECT_EQ(hash_bytes("a", 1), 0xaf63dc4c8601ec8cull);
        EXPECT_EQ(hash_bytes("foobar", 6), 0x85944171f73967e8ull);
        EXPECT_EQ(hash_ops_string.hash("foobar"), 0x85944171f73967e8ull);
        EXPECT_TRUE(hash_ops_string.equal("x", "x"));
        EXPECT_FALSE(hash_ops_string.equal("x", "xy"));
}

/* Duplicate put exactly when the table is due to grow. */
TEST(HashMap, DuplicateAtResizeBoundary) {
        HashMap h;
        std::vector<std::string> keys;

        for (int i = 0; i < 64; i++)
                keys.push_back("key-" + std::to_string(i));

        hashmap_init(&h, &hash_ops_string);
        for (size_t n = 0; n < keys.size(); n++) {
                ASSERT_EQ(hashmap_put(&h, keys[n].c_str(), V(n + 1)), 0);
                /* Every key so far is still a duplicate, whether or not the
                 * next put would have grown the table. */
                for (size_t i = 0; i <= n; i++) {
                        ASSERT_EQ(hashmap_put(&h, keys[i].c_str(), V(999)), -EEXIST) << i;
                        ASSERT_EQ(hashmap_get(&h, keys[i].c_str()), V(i + 1)) << i;
                }
                ASSERT_EQ(hashmap_size(&h), n + 1);
                ASSERT_TRUE(TableConsistent(&h));
        }
        hashmap_deinit(&h);
}

/* ---- iteration ---------------------------------------------------------- */

TEST(HashMap, IterationVisitsEachExactlyOnce) {
        HashMap h;
        std::vector<Id64> keys(5000);
        std::mt19937_64 rng(42);

        hashmap_init(&h, &hash_ops_id64);
        for (size_t i = 0; i < keys.size(); i++) {
                for (auto &byte : keys[i])
                        byte = static_cast<uint8_t>(rng());
                ASSERT_EQ(hashmap_put(&h, keys[i].data(), V(i + 1)), 0);
        }

        auto seen = IterateAll(&h);
        ASSERT_EQ(seen.size(), keys.size());
        for (size_t i = 0; i < keys.size(); i++)
                EXPECT_EQ(seen[V(i + 1)], 1) << i;

        /* Remove every third, iterate again. */
        for (size_t i = 0; i < keys.size(); i += 3)
                ASSERT_EQ(hashmap_remove(&h, keys[i].data()), V(i + 1));
        seen = IterateAll(&h);
        EXPECT_EQ(seen.size(), hashmap_size(&h));
        for (size_t i = 0; i < keys.size(); i++)
                EXPECT_EQ(seen.count(V(i + 1)), i % 3 == 0 ? 0u : 1u) << i;
        for (auto &kv : seen)
                EXPECT_EQ(kv.second, 1);

        /* State past the end stays finished. */
        size_t state = h.n_buckets;
        void *v = nullptr;
        EXPECT_FALSE(hashmap_iterate(&h, &state, &v));
        EXPECT_FALSE(hashmap_iterate(&h, &state, &v));

        /* Remove everything: iteration is empty but the table keeps its size. */
        for (size_t i = 0; i < keys.size(); i++) {
                if (i % 3 != 0) {
                        ASSERT_EQ(hashmap_remove(&h, keys[i].data()), V(i + 1));
                }
        }
        EXPECT_EQ(hashmap_size(&h), 0u);
        EXPECT_TRUE(IterateAll(&h).empty());
        EXPECT_TRUE(TableConsistent(&h));
        hashmap_deinit(&h);
}

/* ---- collisions and clusters -------------------------------------------- */

/* Every key has the same hash: all lookups go through equal(). */
TEST(HashMap, AllKeysSameHash) {
        HashMap h;
        std::vector<CtlKey> keys;

        for (int i = 0; i < 500; i++)
                keys.push_back(CtlKey { 0 /* fix_hash maps 0 to 1 */, i });

        hashmap_init(&h, &ctl_ops);
        for (auto &k : keys)
                ASSERT_EQ(hashmap_put(&h, &k, V(k.id + 1)), 0);
        for (auto &k : keys) {
                CtlKey probe { 0, k.id };
                ASSERT_EQ(hashmap_get(&h, &probe), V(k.id + 1));
                ASSERT_EQ(hashmap_put(&h, &probe, V(1)), -EEXIST);
        }
        CtlKey absent { 0, 100000 };
        EXPECT_EQ(hashmap_get(&h, &absent), nullptr);
        ASSERT_TRUE(TableConsistent(&h));

        /* Remove from the middle of the single cluster, in a mixed order. */
        for (size_t i = 0; i < keys.size(); i += 2)
                ASSERT_EQ(hashmap_remove(&h, &keys[i]), V(keys[i].id + 1));
        ASSERT_TRUE(TableConsistent(&h));
        for (size_t i = 0; i < keys.size(); i++)
                ASSERT_EQ(hashmap_get(&h, &keys[i]), i % 2 ? V(keys[i].id + 1) : nullptr) << i;
        hashmap_deinit(&h);
}

/*
 * A cluster that wraps from the last bucket to the first, then deletions
 * that must shift entries back across the wrap — and must not move an entry
 * in front of its home bucket.
 */
TEST(HashMap, WrapAroundBackwardShift) {
        HashMap h;
        const size_t N = 16;    /* first allocation; 8 entries fit without growing */

        /* homes: 15, 15, 15, 0, 1, 14 -> slots 15, 0, 1, 2, 3, 14 */
        CtlKey k[] = {
                KeyWithHome(0, 15, N, 1), KeyWithHome(1, 15, N, 2), KeyWithHome(2, 15, N, 3),
                KeyWithHome(3, 0, N, 4),  KeyWithHome(4, 1, N, 5),  KeyWithHome(5, 14, N, 6),
        };

        hashmap_init(&h, &ctl_ops);
        for (auto &key : k)
                ASSERT_EQ(hashmap_put(&h, &key, V(key.id + 1)), 0);
        ASSERT_EQ(h.n_buckets, N);
        auto slot_of = [&](int id) -> int {
                for (size_t i = 0; i < h.n_buckets; i++)
                        if (h.entries[i].hash != 0 && static_cast<const CtlKey *>(h.entries[i].key)->id == id)
                                return static_cast<int>(i);
                return -1;
        };
        EXPECT_EQ(slot_of(0), 15);
        EXPECT_EQ(slot_of(1), 0);
        EXPECT_EQ(slot_of(2), 1);
        EXPECT_EQ(slot_of(3), 2);
        EXPECT_EQ(slot_of(4), 3);
        EXPECT_EQ(slot_of(5), 14);

        /* Removing the entry in slot 15 shifts 1->15, 2->0, 3->1, 4->2. */
        ASSERT_EQ(hashmap_remove(&h, &k[0]), V(1));
        ASSERT_TRUE(TableConsistent(&h));
        EXPECT_EQ(slot_of(1), 15);
        EXPECT_EQ(slot_of(2), 0);
        EXPECT_EQ(slot_of(3), 1);
        EXPECT_EQ(slot_of(4), 2);
        EXPECT_EQ(slot_of(5), 14);
        for (int i = 1; i < 6; i++)
                EXPECT_EQ(hashmap_get(&h, &k[i]), V(i + 1)) << i;

        /* Removing slot 14 (home 14) must not pull in anything with home 15
         * or later in front of its home. */
        ASSERT_EQ(hashmap_remove(&h, &k[5]), V(6));
        ASSERT_TRUE(TableConsistent(&h));
        EXPECT_EQ(slot_of(1), 15);
        EXPECT_EQ(h.entries[14].hash, 0u);
        for (int i = 1; i < 5; i++)
                EXPECT_EQ(hashmap_get(&h, &k[i]), V(i + 1)) << i;
        hashmap_deinit(&h);
}

/*
 * Random put/remove/get on a small table with hashes confined to a few home
 * buckets (long, wrapping clusters), checked against a model and the probing
 * invariant after every operation.
 */
TEST(HashMap, ClusteredRandomOps) {
        std::mt19937_64 rng(7);

        for (int round = 0; round < 300; round++) {
                HashMap h;
                std::vector<CtlKey> keys;
                std::unordered_map<int, uintptr_t> model;
                const size_t n_keys = 24;
                /* Homes in a narrow band near the end: clusters wrap around. */
                const size_t band = 1 + rng() % 4;

                for (size_t i = 0; i < n_keys; i++) {
                        /* The hash picks a bucket modulo every table size up
                         * to 64, so the band survives growth. */
                        size_t home = 63 - rng() % band;
                        keys.push_back(KeyWithHome(static_cast<int>(i), home, 64, rng() | 1));
                }

                hashmap_init(&h, &ctl_ops);
                for (int op = 0; op < 400; op++) {
                        CtlKey &k = keys[rng() % n_keys];
                        uintptr_t val = static_cast<uintptr_t>(op) + 1;
                        bool present = model.count(k.id) > 0;

                        switch (rng() % 3) {
                        case 0:
                                if (model.size() >= 16 && !present)
                                        break;  /* stay in small tables */
                                ASSERT_EQ(hashmap_put(&h, &k, V(val)), present ? -EEXIST : 0);
                                if (!present)
                                        model[k.id] = val;
                                break;
                        case 1:
                                ASSERT_EQ(hashmap_remove(&h, &k), present ? V(model[k.id]) : nullptr);
                                model.erase(k.id);
                                break;
                        default:
                                ASSERT_EQ(hashmap_get(&h, &k), present ? V(model[k.id]) : nullptr);
                        }
                        ASSERT_TRUE(TableConsistent(&h)) << "round " << round << " op " << op;
                        ASSERT_EQ(hashmap_size(&h), model.size());
                }
                for (auto &k : keys)
                        ASSERT_EQ(hashmap_get(&h, &k), model.count(k.id) ? V(model[k.id]) : nullptr);
                hashmap_deinit(&h);
        }
}

/* ---- scale, against a model --------------------------------------------- */

template <typename Key>
void RunModelTest(const HashOps *ops, std::vector<Key> &keys, std::mt19937_64 &rng,
                  const void *(*ptr)(const Key &), std::string (*name)(const Key &)) {
        HashMap h;
        std::unordered_map<std::string, uintptr_t> model;
        std::vector<size_t> order(keys.size());

        hashmap_init(&h, ops);

        /* Insert all in random order. */
        for (size_t i = 0; i < order.size(); i++)
                order[i] = i;
        std::shuffle(order.begin(), order.end(), rng);
        for (size_t i : order) {
                ASSERT_EQ(hashmap_put(&h, ptr(keys[i]), V(i + 1)), 0) << i;
                model[name(keys[i])] = i + 1;
        }
        ASSERT_EQ(hashmap_size(&h), keys.size());
        ASSERT_TRUE(TableConsistent(&h));
        for (size_t i = 0; i < keys.size(); i++)
                ASSERT_EQ(hashmap_get(&h, ptr(keys[i])), V(i + 1)) << i;

        /* Iteration sees every value once. */
        {
                auto seen = IterateAll(&h);
                ASSERT_EQ(seen.size(), keys.size());
                for (auto &kv : seen)
                        ASSERT_EQ(kv.second, 1);
        }

        /* Remove in an independent random order, with lookups, duplicate
         * puts and re-insertions interleaved; full check at checkpoints. */
        std::shuffle(order.begin(), order.end(), rng);
        size_t step = 0;
        for (size_t i : order) {
                const std::string n = name(keys[i]);

                ASSERT_EQ(hashmap_remove(&h, ptr(keys[i])), V(model[n])) << i;
                model.erase(n);
                ASSERT_EQ(hashmap_get(&h, ptr(keys[i])), nullptr) << i;
                ASSERT_EQ(hashmap_remove(&h, ptr(keys[i])), nullptr) << i;

                size_t other = rng() % keys.size();
                const std::string on = name(keys[other]);
                auto it = model.find(on);
                ASSERT_EQ(hashmap_get(&h, ptr(keys[other])), it == model.end() ? nullptr : V(it->second)) << other;

                /* Every 7th step re-insert the key just removed, with a new
                 * value; these are what is left at the end. */
                if (step % 7 == 0) {
                        uintptr_t val = keys.size() + step + 1;
                        ASSERT_EQ(hashmap_put(&h, ptr(keys[i]), V(val)), 0);
                        ASSERT_EQ(hashmap_put(&h, ptr(keys[i]), V(1)), -EEXIST);
                        model[n] = val;
                }
                ASSERT_EQ(hashmap_size(&h), model.size());

                if (++step % 20000 == 0) {
                        ASSERT_TRUE(TableConsistent(&h)) << "step " << step;
                        for (size_t j = 0; j < keys.size(); j++) {
                                auto jt = model.find(name(keys[j]));
                                ASSERT_EQ(hashmap_get(&h, ptr(keys[j])), jt == model.end() ? nullptr : V(jt->second)) << j;
                        }
                        auto seen = IterateAll(&h);
                        ASSERT_EQ(seen.size(), model.size());
                }
        }

        /* What is left: exactly the re-inserted keys. */
        ASSERT_TRUE(TableConsistent(&h));
        {
                auto seen = IterateAll(&h);
                ASSERT_EQ(seen.size(), model.size());
                for (auto &kv : model)
                        ASSERT_EQ(seen[V(kv.second)], 1) << kv.first;
        }
        for (size_t i = 0; i < keys.size(); i++) {
                auto it = model.find(name(keys[i]));
                if (it != model.end()) {
                        ASSERT_EQ(hashmap_remove(&h, ptr(keys[i])), V(it->second));
                }
        }
        ASSERT_EQ(hashmap_size(&h), 0u);
        ASSERT_TRUE(IterateAll(&h).empty());
        hashmap_deinit(&h);
}

const void *id_ptr(const Id64 &k) {
        return k.data();
}

std::string id_name(const Id64 &k) {
        return std::string(reinterpret_cast<const char *>(k.data()), k.size());
}

const void *str_ptr(const std::string &k) {
        return k.c_str();
}

std::string str_name(const std::string &k) {
        return k;
}

TEST(HashMap, Model100kId64) {
        std::mt19937_64 rng(0x1d64);
        std::vector<Id64> keys(100000);
        std::unordered_map<std::string, int> unique;

        for (auto &k : keys) {
                do {
                        for (auto &byte : k)
                                byte = static_cast<uint8_t>(rng());
                } while (!unique.emplace(id_name(k), 1).second);
        }
        RunModelTest<Id64>(&hash_ops_id64, keys, rng, id_ptr, id_name);
}

TEST(HashMap, Model100kString) {
        std::mt19937_64 rng(0x5791);
        std::vector<std::string> keys;

        /* Bus-name-like keys: short, similar, sequential. */
        keys.reserve(100000);
        for (int i = 0; i < 100000; i++)
                keys.push_back(":1." + std::to_string(i));
        RunModelTest<std::string>(&hash_ops_string, keys, rng, str_ptr, str_name);
}

} /* namespace */
