/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * HashMap: open-addressing hash table (linear probing, backward-shift
 * deletion) mapping a borrowed key pointer to a value pointer.  The key must
 * stay valid while the entry exists (it normally lives inside the value).
 * Lookups are O(1); the table never shrinks below its peak, which is fine
 * for the object tables it backs.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct HashOps {
        uint64_t (*hash)(const void *key);
        bool (*equal)(const void *a, const void *b);
} HashOps;

typedef struct HashEntry {
        uint64_t hash;          /* 0 = empty slot (hashes are forced non-zero) */
        const void *key;
        void *value;
} HashEntry;

typedef struct HashMap {
        const HashOps *ops;
        HashEntry *entries;
        size_t n_buckets;       /* power of two, or 0 */
        size_t n_entries;
} HashMap;

#define HASHMAP_INIT(_ops) { .ops = (_ops) }

extern const HashOps hash_ops_string;   /* key: const char * */
extern const HashOps hash_ops_id64;     /* key: 8 bytes (already random) */

void hashmap_init(HashMap *h, const HashOps *ops);
void hashmap_deinit(HashMap *h);
/* 0 on success, -EEXIST if the key is present, -ENOMEM. */
int hashmap_put(HashMap *h, const void *key, void *value);
void *hashmap_get(const HashMap *h, const void *key);
/* Removes and returns the value, or NULL. */
void *hashmap_remove(HashMap *h, const void *key);
static inline size_t hashmap_size(const HashMap *h) {
        return h->n_entries;
}

/* Iteration: for (size_t i = 0; hashmap_iterate(h, &i, &v); ) — do not modify meanwhile. */
bool hashmap_iterate(const HashMap *h, size_t *state, void **ret_value);

uint64_t hash_bytes(const void *p, size_t n);
