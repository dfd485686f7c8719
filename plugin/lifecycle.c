/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Lifecycle bookkeeping of one subchannel (see lifecycle.h).
 *
 * Layout:
 *   - one Peer record per remote bus name that is known here, in the `peers`
 *     map (key: the record's own copy of the name) and in `peer_list` (for
 *     iteration that may free records).  A record lives while the peer holds
 *     senders or is the source or the destination of an in-flight entry; the
 *     name string is shared by all entries that refer to the peer;
 *   - one Entry per copy in flight, in the `in_flight` map keyed by
 *     (from record, token) — record pointers are unique per name, so pointer
 *     identity is name identity — and linked into the list of its
 *     destination (a Peer's `to_list`, or `local_to` for this process) and,
 *     for remote sources, into the source Peer's `from_list`.  peer_gone()
 *     and drop_orphans() therefore touch only the entries concerned.
 *
 * Counters (remote hold sum, per-destination orphan counts) make every
 * getter O(1) except the ones returning lists of peers.
 *
 * Every mutating function first checks everything that can fail, allocates
 * what it needs, and only then changes state, so an error leaves the object
 * exactly as it was.
 */

#include <assert.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "hashmap.h"
#include "lifecycle.h"
#include "list.h"
#include "macro.h"

typedef struct Peer {
        char *name;             /* owned; also the key in Lifecycle.peers */
        unsigned holds;
        unsigned n_orphans_to;  /* orphans among to_list */
        List to_list;           /* Entry.to_link: copies in flight to this peer */
        List from_list;         /* Entry.from_link: copies in flight from this peer */
        List peer_link;         /* in Lifecycle.peer_list */
} Peer;

typedef struct EntryKey {
        const Peer *from;       /* NULL: this process */
        uint64_t token;
} EntryKey;

typedef struct Entry {
        EntryKey key;           /* key in Lifecycle.in_flight */
        Peer *to;               /* NULL: this process */
        bool orphan;
        uint64_t gen;           /* valid if orphan */
        List to_link;
        List from_link;         /* unlinked (self-pointing) if key.from == NULL */
} Entry;

struct Lifecycle {
        unsigned local_holds;
        unsigned remote_holds;          /* sum of Peer.holds */
        HashMap peers;                  /* name -> Peer */
        List peer_list;                 /* Peer.peer_link */
        HashMap in_flight;              /* EntryKey -> Entry */
        List local_to;                  /* Entry.to_link: copies in flight to this process */
        unsigned n_orphans_to_local;
};

static uint64_t entry_key_hash(const void *p) {
        const EntryKey *k = p;
        uint64_t buf[2] = { (uint64_t) (uintptr_t) k->from, k->token };

        return hash_bytes(buf, sizeof(buf));
}

static bool entry_key_equal(const void *a, const void *b) {
        const EntryKey *x = a, *y = b;

        return x->from == y->from && x->token == y->token;
}

static const HashOps hash_ops_entry_key = { .hash = entry_key_hash, .equal = entry_key_equal };

int lifecycle_new(Lifecycle **ret) {
        Lifecycle *l;

        assert_return(ret, -EINVAL);

        l = calloc(1, sizeof(*l));
        if (!l)
                return -ENOMEM;
        hashmap_init(&l->peers, &hash_ops_string);
        hashmap_init(&l->in_flight, &hash_ops_entry_key);
        list_init(&l->peer_list);
        list_init(&l->local_to);
        *ret = l;
        return 0;
}

static Peer *peer_find(const Lifecycle *l, const char *name) {
        assert(name);
        return hashmap_get(&l->peers, name);
}

/* Allocates and registers a record for @name (which must be unknown). */
static int peer_add(Lifecycle *l, const char *name, Peer **ret) {
        Peer *p;
        int r;

        assert(name);
        assert(!peer_find(l, name));

        p = calloc(1, sizeof(*p));
        if (!p)
                return -ENOMEM;
        p->name = strdup(name);
        if (!p->name) {
                free(p);
                return -ENOMEM;
        }
        r = hashmap_put(&l->peers, p->name, p);
        if (r < 0) {
                free(p->name);
                free(p);
                return r;
        }
        list_init(&p->to_list);
        list_init(&p->from_list);
        list_append(&l->peer_list, &p->peer_link);
        *ret = p;
        return 0;
}

static void peer_free_unlinked(Peer *p) {
        free(p->name);
        free(p);
}

/* Unregisters and frees @p if nothing refers to it any more. */
static void peer_gc(Lifecycle *l, Peer *p) {
        if (!p)
                return;
        if (p->holds > 0 || !list_is_empty(&p->to_list) || !list_is_empty(&p->from_list))
                return;
        assert(p->n_orphans_to == 0);
        assert(hashmap_get(&l->peers, p->name) == p);
        (void) hashmap_remove(&l->peers, p->name);
        list_unlink(&p->peer_link);
        peer_free_unlinked(p);
}

static Entry *entry_find(const Lifecycle *l, const Peer *from, uint64_t token) {
        EntryKey k = { .from = from, .token = token };

        return hashmap_get(&l->in_flight, &k);
}

/* Unlinks, unregisters and frees @e; does NOT collect its peers (the caller does). */
static void entry_remove(Lifecycle *l, Entry *e) {
        void *v;

        if (e->orphan) {
                if (e->to) {
                        assert(e->to->n_orphans_to > 0);
                        e->to->n_orphans_to--;
                } else {
                        assert(l->n_orphans_to_local > 0);
                        l->n_orphans_to_local--;
                }
        }
        list_unlink(&e->to_link);
        list_unlink(&e->from_link);
        v = hashmap_remove(&l->in_flight, &e->key);
        assert(v == e);
        (void) v;
        free(e);
}

static void entry_orphan(Lifecycle *l, Entry *e, uint64_t gen) {
        if (e->orphan)
                return;
        e->orphan = true;
        e->gen = gen;
        if (e->to)
                e->to->n_orphans_to++;
        else
                l->n_orphans_to_local++;
}

/* Removes every entry of the destination list @head (all of them, or orphans with gen <= max_gen). */
static void entries_drop_to(Lifecycle *l, List *head, bool orphans_only, uint64_t max_gen, Peer *keep) {
        Entry *e, *n;

        list_for_each_entry_safe(e, n, head, to_link) {
                Peer *from = (Peer *) e->key.from;

                if (orphans_only && !(e->orphan && e->gen <= max_gen))
                        continue;
                entry_remove(l, e);
                /* The source record may now be unused; never free the record
                 * whose list we walk (@keep, collected by the caller). */
                if (from != keep)
                        peer_gc(l, from);
        }
}

void lifecycle_clear(Lifecycle *l) {
        Peer *p, *n;

        assert(l);

        /* Entries first (records stay: their lists are being walked), then
         * the records nothing refers to any more. */
        entries_drop_to(l, &l->local_to, false, 0, NULL);
        list_for_each_entry(p, &l->peer_list, peer_link) {
                Entry *e, *en;

                list_for_each_entry_safe(e, en, &p->to_list, to_link)
                        entry_remove(l, e);
        }
        assert(hashmap_size(&l->in_flight) == 0);
        assert(l->n_orphans_to_local == 0);

        list_for_each_entry_safe(p, n, &l->peer_list, peer_link)
                peer_gc(l, p);
}

Lifecycle *lifecycle_free(Lifecycle *l) {
        Peer *p, *n;

        if (!l)
                return NULL;

        lifecycle_clear(l);
        list_for_each_entry_safe(p, n, &l->peer_list, peer_link) {
                assert(p->holds > 0);
                list_unlink(&p->peer_link);
                peer_free_unlinked(p);
        }
        hashmap_deinit(&l->peers);
        hashmap_deinit(&l->in_flight);
        free(l);
        return NULL;
}

void lifecycle_hold_local(Lifecycle *l) {
        assert(l);
        /* Counts live objects of this process: cannot reach UINT_MAX. */
        assert(l->local_holds < UINT_MAX);
        l->local_holds++;
}

int lifecycle_release_local(Lifecycle *l) {
        assert(l);

        if (l->local_holds == 0)
                return -EINVAL;
        l->local_holds--;
        return 0;
}

int lifecycle_hold(Lifecycle *l, const char *peer, unsigned n) {
        Peer *p;
        int r;

        assert(l);

        if (!peer || n == 0)
                return -EINVAL;
        /* Peer.holds <= remote_holds, so this bounds both. */
        if (n > UINT_MAX - l->remote_holds)
                return -EOVERFLOW;

        p = peer_find(l, peer);
        if (!p) {
                r = peer_add(l, peer, &p);
                if (r < 0)
                        return r;
        }
        p->holds += n;
        l->remote_holds += n;
        return 0;
}

int lifecycle_release(Lifecycle *l, const char *peer, unsigned n) {
        Peer *p;

        assert(l);

        if (!peer || n == 0)
                return -EINVAL;
        p = peer_find(l, peer);
        if (!p || p->holds < n)
                return -EACCES;

        p->holds -= n;
        assert(l->remote_holds >= n);
        l->remote_holds -= n;
        peer_gc(l, p);
        return 0;
}

int lifecycle_sending(Lifecycle *l, const char *from, uint64_t token, const char *to) {
        Peer *pf = NULL, *pt = NULL, *new_peer = NULL;
        Entry *e;
        int r;

        assert(l);

        if (!from && !to)
                return -EINVAL;

        if (from) {
                pf = peer_find(l, from);
                if (!pf || pf->holds == 0)
                        return -EACCES;
        } else if (l->local_holds == 0)
                return -EACCES;

        if (entry_find(l, pf, token))
                return -EEXIST;
        if (hashmap_size(&l->in_flight) >= UINT_MAX)    /* lifecycle_get_in_flight() must not wrap */
                return -EOVERFLOW;

        e = calloc(1, sizeof(*e));
        if (!e)
                return -ENOMEM;

        if (to) {
                pt = peer_find(l, to);
                if (!pt) {
                        r = peer_add(l, to, &new_peer);
                        if (r < 0) {
                                free(e);
                                return r;
                        }
                        pt = new_peer;
                }
        }

        *e = (Entry) {
                .key = { .from = pf, .token = token },
                .to = pt,
        };
        list_init(&e->to_link);
        list_init(&e->from_link);
        r = hashmap_put(&l->in_flight, &e->key, e);
        if (r < 0) {
                free(e);
                peer_gc(l, new_peer);   /* unused: frees it again */
                return r;
        }

        list_append(pt ? &pt->to_list : &l->local_to, &e->to_link);
        if (pf)
                list_append(&pf->from_list, &e->from_link);
        return 0;
}

/* Looks up (@from, @token) and checks that it is addressed to @by. */
static int entry_find_for(const Lifecycle *l, const char *by, const char *from, uint64_t token, Entry **ret) {
        const Peer *pf = NULL;
        Entry *e;

        if (from) {
                pf = peer_find(l, from);
                if (!pf)
                        return -ENOENT;
        }
        e = entry_find(l, pf, token);
        if (!e)
                return -ENOENT;

        if (by ? !e->to || strcmp(e->to->name, by) != 0 : e->to != NULL)
                return -EACCES;

        *ret = e;
        return 0;
}

static void entry_resolve(Lifecycle *l, Entry *e) {
        Peer *from = (Peer *) e->key.from, *to = e->to;

        entry_remove(l, e);
        peer_gc(l, from);
        if (to != from)
                peer_gc(l, to);
}

int lifecycle_claim(Lifecycle *l, const char *by, const char *from, uint64_t token) {
        Entry *e;
        int r;

        assert(l);

        r = entry_find_for(l, by, from, token, &e);
        if (r < 0)
                return r;

        if (by) {
                if (l->remote_holds == UINT_MAX)
                        return -EOVERFLOW;
                e->to->holds++;
                l->remote_holds++;
        } else {
                if (l->local_holds == UINT_MAX)
                        return -EOVERFLOW;
                l->local_holds++;
        }

        entry_resolve(l, e);
        return 0;
}

int lifecycle_decline(Lifecycle *l, const char *by, const char *from, uint64_t token) {
        Entry *e;
        int r;

        assert(l);

        /* The origin may withdraw its own copy (its carrier never left);
         * the bus stamps @by, so nobody can withdraw another's copy. */
        if ((by == NULL) == (from == NULL) && (!by || strcmp(by, from) == 0)) {
                const Peer *pf = from ? peer_find(l, from) : NULL;

                if (from && !pf)
                        return -ENOENT;
                e = entry_find(l, pf, token);
                if (!e)
                        return -ENOENT;
                entry_resolve(l, e);
                return 0;
        }

        r = entry_find_for(l, by, from, token, &e);
        if (r < 0)
                return r;

        entry_resolve(l, e);
        return 0;
}

void lifecycle_peer_gone(Lifecycle *l, const char *peer, uint64_t gen) {
        Entry *e;
        Peer *p;

        assert(l);

        if (!peer)      /* this process cannot vanish from under itself */
                return;
        p = peer_find(l, peer);
        if (!p)
                return;

        assert(l->remote_holds >= p->holds);
        l->remote_holds -= p->holds;
        p->holds = 0;

        entries_drop_to(l, &p->to_list, false, 0, p);
        assert(p->n_orphans_to == 0);

        list_for_each_entry(e, &p->from_list, from_link)
                entry_orphan(l, e, gen);

        peer_gc(l, p);
}

void lifecycle_drop_orphans(Lifecycle *l, const char *to, uint64_t max_gen) {
        Peer *p;

        assert(l);

        if (!to) {
                if (l->n_orphans_to_local > 0)
                        entries_drop_to(l, &l->local_to, true, max_gen, NULL);
                return;
        }

        p = peer_find(l, to);
        if (!p || p->n_orphans_to == 0)
                return;
        entries_drop_to(l, &p->to_list, true, max_gen, p);
        peer_gc(l, p);
}

bool lifecycle_is_connected(const Lifecycle *l) {
        assert(l);
        return l->local_holds > 0 || l->remote_holds > 0 || hashmap_size(&l->in_flight) > 0;
}

bool lifecycle_may_send(const Lifecycle *l, const char *peer) {
        const Peer *p;

        assert(l);

        if (!peer)
                return l->local_holds > 0 || !list_is_empty((List *) &l->local_to);
        p = peer_find(l, peer);
        return p && (p->holds > 0 || !list_is_empty((List *) &p->to_list));
}

unsigned lifecycle_get_holds(const Lifecycle *l, const char *peer) {
        const Peer *p;

        assert(l);

        if (!peer)
                return l->local_holds;
        p = peer_find(l, peer);
        return p ? p->holds : 0;
}

unsigned lifecycle_get_local_holds(const Lifecycle *l) {
        assert(l);
        return l->local_holds;
}

unsigned lifecycle_get_remote_holds(const Lifecycle *l) {
        assert(l);
        return l->remote_holds;
}

unsigned lifecycle_get_in_flight(const Lifecycle *l) {
        assert(l);
        return (unsigned) hashmap_size(&l->in_flight);
}

bool lifecycle_has_orphans_to(const Lifecycle *l, const char *to) {
        const Peer *p;

        assert(l);

        if (!to)
                return l->n_orphans_to_local > 0;
        p = peer_find(l, to);
        return p && p->n_orphans_to > 0;
}

void lifecycle_foreach_peer(const Lifecycle *l, void (*cb)(const char *peer, void *userdata), void *userdata) {
        Peer *p;

        assert(l);
        assert(cb);

        list_for_each_entry(p, (List *) &l->peer_list, peer_link)
                if (p->holds > 0 || !list_is_empty(&p->to_list))
                        cb(p->name, userdata);
}

static int strcmp_ptr(const void *a, const void *b) {
        return strcmp(*(char *const *) a, *(char *const *) b);
}

int lifecycle_get_holders(const Lifecycle *l, char ***ret) {
        size_t n = 0, i = 0;
        char **v;
        Peer *p;

        assert(l);
        assert_return(ret, -EINVAL);

        list_for_each_entry(p, (List *) &l->peer_list, peer_link)
                if (p->holds > 0)
                        n++;

        v = calloc(n + 1, sizeof(char *));
        if (!v)
                return -ENOMEM;
        list_for_each_entry(p, (List *) &l->peer_list, peer_link) {
                if (p->holds == 0)
                        continue;
                v[i] = strdup(p->name);
                if (!v[i]) {
                        lifecycle_strv_free(v);
                        return -ENOMEM;
                }
                i++;
        }
        assert(i == n);
        qsort(v, n, sizeof(char *), strcmp_ptr);
        *ret = v;
        return 0;
}

void lifecycle_strv_free(char **l) {
        if (!l)
                return;
        for (char **s = l; *s; s++)
                free(*s);
        free(l);
}
