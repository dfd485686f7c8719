/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * HashMap implementation (see hashmap.h).  Keys of the tables here are either
 * random 64-bit ids (hashing = reading them) or short bus names (FNV-1a).
 */

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "hashmap.h"

uint64_t hash_bytes(const void *p, size_t n) {
        const unsigned char *b = p;
        uint64_t h = 0xcbf29ce484222325ull;

        for (size_t i = 0; i < n; i++) {
                h ^= b[i];
                h *= 0x100000001b3ull;
        }
        return h;
}

static uint64_t string_hash(const void *key) {
        return hash_bytes(key, strlen(key));
}

static bool string_equal(const void *a, const void *b) {
        return strcmp(a, b) == 0;
}

static uint64_t id64_hash(const void *key) {
        uint64_t v;

        memcpy(&v, key, sizeof(v));
        return v;
}

static bool id64_equal(const void *a, const void *b) {
        return memcmp(a, b, 8) == 0;
}

const HashOps hash_ops_string = { .hash = string_hash, .equal = string_equal };
const HashOps hash_ops_id64 = { .hash = id64_hash, .equal = id64_equal };

void hashmap_init(HashMap *h, const HashOps *ops) {
        *h = (HashMap) HASHMAP_INIT(ops);
}

void hashmap_deinit(HashMap *h) {
        free(h->entries);
        h->entries = NULL;
        h->n_buckets = h->n_entries = 0;
}

static uint64_t fix_hash(uint64_t x) {
        /* Mix (ids are random, names are not) and reserve 0 for "empty". */
        x ^= x >> 33;
        x *= 0xff51afd7ed558ccdull;
        x ^= x >> 33;
        return x ? x : 1;
}

static HashEntry *find_slot(const HashMap *h, const void *key, uint64_t hash) {
        size_t mask = h->n_buckets - 1;

        for (size_t i = hash & mask;; i = (i + 1) & mask) {
                HashEntry *e = &h->entries[i];

                if (e->hash == 0)
                        return e;
                if (e->hash == hash && h->ops->equal(e->key, key))
                        return e;
        }
}

static int resize(HashMap *h, size_t n_buckets) {
        HashEntry *old = h->entries;
        size_t old_n = h->n_buckets;

        h->entries = calloc(n_buckets, sizeof(HashEntry));
        if (!h->entries) {
                h->entries = old;
                return -ENOMEM;
        }
        h->n_buckets = n_buckets;
        for (size_t i = 0; i < old_n; i++)
                if (old[i].hash != 0)
                        *find_slot(h, old[i].key, old[i].hash) = old[i];
        free(old);
        return 0;
}

int hashmap_put(HashMap *h, const void *key, void *value) {
        uint64_t hash = fix_hash(h->ops->hash(key));
        HashEntry *e;

        /* Keep the load factor at most 1/2 so probe chains stay short. */
        if ((h->n_entries + 1) * 2 > h->n_buckets) {
                int r = resize(h, h->n_buckets ? h->n_buckets * 2 : 16);
                if (r < 0)
                        return r;
        }
        e = find_slot(h, key, hash);
        if (e->hash != 0)
                return -EEXIST;
        *e = (HashEntry) { .hash = hash, .key = key, .value = value };
        h->n_entries++;
        return 0;
}

void *hashmap_get(const HashMap *h, const void *key) {
        HashEntry *e;

        if (h->n_entries == 0)
                return NULL;
        e = find_slot(h, key, fix_hash(h->ops->hash(key)));
        return e->hash != 0 ? e->value : NULL;
}

void *hashmap_remove(HashMap *h, const void *key) {
        size_t mask, i, j;
        HashEntry *e;
        void *value;

        if (h->n_entries == 0)
                return NULL;
        e = find_slot(h, key, fix_hash(h->ops->hash(key)));
        if (e->hash == 0)
                return NULL;
        value = e->value;
        mask = h->n_buckets - 1;
        i = (size_t) (e - h->entries);
        /* Backward-shift deletion: no tombstones, probe chains stay valid. */
        for (j = (i + 1) & mask; h->entries[j].hash != 0; j = (j + 1) & mask) {
                size_t home = h->entries[j].hash & mask;

                if (((j - home) & mask) >= ((j - i) & mask)) {
                        h->entries[i] = h->entries[j];
                        i = j;
                }
        }
        h->entries[i] = (HashEntry) {};
        h->n_entries--;
        return value;
}

bool hashmap_iterate(const HashMap *h, size_t *state, void **ret_value) {
        for (; *state < h->n_buckets; (*state)++)
                if (h->entries[*state].hash != 0) {
                        *ret_value = h->entries[(*state)++].value;
                        return true;
                }
        return false;
}
