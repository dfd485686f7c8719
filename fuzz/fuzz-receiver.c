/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Stateful fuzzing of the receiver's bookkeeping of who may still send
 * (plugin/lifecycle.c), which every Send/StageFds/Release/Sending/Claim/
 * Decline call and every NameOwnerChanged of a peer drives.  (Fuzzing the
 * receiver object itself would need a bus daemon per run: a channel needs a
 * unique name, so it cannot sit on a socketpair.)
 *
 * The input is a sequence of operations with names from a small pool
 * (NULL = this process, and four peers) and tokens from a small range, so
 * that collisions, self-transfers and orphans are frequent.  A reference
 * model, written from the contract in lifecycle.h, runs alongside; after
 * every operation the return code and every observable (is_connected,
 * may_send and holds of every name, counters, orphans, foreach_peer,
 * get_holders) must agree, which also checks that a failed call changed
 * nothing.  lifecycle_free() at the end must release everything (LSan).
 *
 * Operation encoding: one opcode byte, then its argument bytes (running out
 * of input yields zeros).
 */

#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lifecycle.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                             \
        do {                                                                                    \
                if (!(cond)) {                                                                  \
                        fprintf(stderr, "fuzz-receiver: check failed at %s:%d (op %u): %s\n",   \
                                __FILE__, __LINE__, op_no, #cond);                              \
                        abort();                                                                \
                }                                                                               \
        } while (0)

static unsigned op_no;

#define N_NAMES 5       /* index 0 = NULL (this process) */
#define MAX_ENTRIES 256
#define MAX_OPS 400

/* Sorted (strcmp) after NULL, as lifecycle_get_holders() returns them. */
static const char *const names[N_NAMES] = { NULL, ":1.1", ":1.2", ":1.20", ":1.3" };

typedef struct In {
        const uint8_t *p;
        size_t n;
} In;

static uint8_t u8(In *in) {
        if (in->n == 0)
                return 0;
        in->n--;
        return *in->p++;
}

/* ---- the model ------------------------------------------------------------ */

typedef struct MEntry {
        int from, to;           /* name indices, 0 = this process */
        uint64_t token;
        bool orphan;
        uint64_t gen;
} MEntry;

typedef struct Model {
        unsigned local;
        unsigned holds[N_NAMES];        /* [0] unused */
        MEntry e[MAX_ENTRIES];
        unsigned n;
} Model;

static unsigned model_remote(const Model *m) {
        unsigned s = 0;
        for (int i = 1; i < N_NAMES; i++)
                s += m->holds[i];
        return s;
}

static int model_find(const Model *m, int from, uint64_t token) {
        for (unsigned i = 0; i < m->n; i++)
                if (m->e[i].from == from && m->e[i].token == token)
                        return (int) i;
        return -1;
}

static void model_remove(Model *m, unsigned i) {
        m->e[i] = m->e[--m->n];
}

static bool model_to_any(const Model *m, int to) {
        for (unsigned i = 0; i < m->n; i++)
                if (m->e[i].to == to)
                        return true;
        return false;
}

static bool model_orphans_to(const Model *m, int to) {
        for (unsigned i = 0; i < m->n; i++)
                if (m->e[i].to == to && m->e[i].orphan)
                        return true;
        return false;
}

/* ---- comparison ------------------------------------------------------------ */

typedef struct Seen {
        unsigned count[N_NAMES];
        unsigned unknown;
} Seen;

static void on_peer(const char *peer, void *userdata) {
        Seen *s = userdata;

        for (int i = 1; i < N_NAMES; i++)
                if (peer && strcmp(peer, names[i]) == 0) {
                        s->count[i]++;
                        return;
                }
        s->unknown++;
}

static void compare(const Lifecycle *l, const Model *m) {
        Seen seen = {};
        char **holders = NULL;
        unsigned k = 0;

        CHECK(lifecycle_get_local_holds(l) == m->local);
        CHECK(lifecycle_get_remote_holds(l) == model_remote(m));
        CHECK(lifecycle_get_in_flight(l) == m->n);
        CHECK(lifecycle_is_connected(l) == (m->local > 0 || model_remote(m) > 0 || m->n > 0));
        CHECK(lifecycle_may_send(l, NULL) == (m->local > 0 || model_to_any(m, 0)));
        CHECK(lifecycle_has_orphans_to(l, NULL) == model_orphans_to(m, 0));
        for (int i = 1; i < N_NAMES; i++) {
                CHECK(lifecycle_get_holds(l, names[i]) == m->holds[i]);
                CHECK(lifecycle_may_send(l, names[i]) == (m->holds[i] > 0 || model_to_any(m, i)));
                CHECK(lifecycle_has_orphans_to(l, names[i]) == model_orphans_to(m, i));
        }
        CHECK(lifecycle_get_holds(l, ":9.9") == 0);
        CHECK(!lifecycle_may_send(l, ":9.9"));

        /* foreach_peer: each peer that holds or has a copy coming, once. */
        lifecycle_foreach_peer(l, on_peer, &seen);
        CHECK(seen.unknown == 0);
        for (int i = 1; i < N_NAMES; i++)
                CHECK(seen.count[i] == ((m->holds[i] > 0 || model_to_any(m, i)) ? 1u : 0u));

        /* get_holders: sorted, exactly the peers with holds. */
        CHECK(lifecycle_get_holders(l, &holders) == 0);
        for (int i = 1; i < N_NAMES; i++)   /* names[] is sorted */
                if (m->holds[i] > 0) {
                        CHECK(holders[k] && strcmp(holders[k], names[i]) == 0);
                        k++;
                }
        CHECK(holders[k] == NULL);
        lifecycle_strv_free(holders);
}

/* ---- the operations -------------------------------------------------------- */

static uint64_t token_of(In *in) {
        uint8_t b = u8(in);
        return b < 0xf0 ? b % 4 : UINT64_MAX - (b & 3);
}

static unsigned count_of(In *in) {
        uint8_t b = u8(in);

        if (b >= 0xf8)
                return UINT_MAX - (b & 3);      /* near overflow */
        return b % 4;                           /* 0 is invalid */
}

static void step(Lifecycle *l, Model *m, In *in, uint64_t *gen) {
        uint8_t op = u8(in) % 11;
        int r;

        switch (op) {
        case 0: /* hold_local */
                if (m->local < 1000) {
                        lifecycle_hold_local(l);
                        m->local++;
                }
                break;

        case 1: /* release_local */
                r = lifecycle_release_local(l);
                CHECK(r == (m->local > 0 ? 0 : -EINVAL));
                if (r == 0)
                        m->local--;
                break;

        case 2: { /* hold */
                int p = u8(in) % N_NAMES;
                unsigned n = count_of(in);

                r = lifecycle_hold(l, names[p], n);
                if (p == 0 || n == 0)
                        CHECK(r == -EINVAL);
                else if (n > UINT_MAX - model_remote(m))
                        CHECK(r == -EOVERFLOW);
                else {
                        CHECK(r == 0);
                        m->holds[p] += n;
                }
                break;
        }

        case 3: { /* release */
                int p = u8(in) % N_NAMES;
                unsigned n = count_of(in);

                r = lifecycle_release(l, names[p], n);
                if (p == 0 || n == 0)
                        CHECK(r < 0);
                else if (m->holds[p] < n)
                        CHECK(r == -EACCES);
                else {
                        CHECK(r == 0);
                        m->holds[p] -= n;
                }
                break;
        }

        case 4: { /* sending(from, token, to) */
                int from = u8(in) % N_NAMES, to = u8(in) % N_NAMES;
                uint64_t token = token_of(in);

                r = lifecycle_sending(l, names[from], token, names[to]);
                if (from == 0 && to == 0)
                        CHECK(r == -EINVAL);
                else if (from == 0 ? m->local == 0 : m->holds[from] == 0)
                        CHECK(r == -EACCES);
                else if (model_find(m, from, token) >= 0)
                        CHECK(r == -EEXIST);
                else {
                        CHECK(r == 0);
                        CHECK(m->n < MAX_ENTRIES);
                        m->e[m->n++] = (MEntry) { .from = from, .to = to, .token = token };
                }
                if (m->n == MAX_ENTRIES) {
                        /* Keep the model bounded (a real receiver is too). */
                        lifecycle_clear(l);
                        m->n = 0;
                }
                break;
        }

        case 5:   /* claim(by, from, token) */
        case 6: { /* decline(by, from, token) */
                int by = u8(in) % N_NAMES, from = u8(in) % N_NAMES;
                uint64_t token = token_of(in);
                int i = model_find(m, from, token);
                bool origin = op == 6 && by == from;

                r = op == 5 ? lifecycle_claim(l, names[by], names[from], token)
                            : lifecycle_decline(l, names[by], names[from], token);
                if (i < 0)
                        CHECK(r == -ENOENT);
                else if (!origin && m->e[i].to != by)
                        CHECK(r == -EACCES);
                else if (op == 5 && by != 0 && model_remote(m) == UINT_MAX)
                        CHECK(r == -EOVERFLOW);
                else {
                        CHECK(r == 0);
                        if (op == 5) {
                                if (by == 0)
                                        m->local++;
                                else
                                        m->holds[by]++;
                        }
                        model_remove(m, (unsigned) i);
                }
                break;
        }

        case 7: { /* peer_gone(peer, gen) */
                int p = u8(in) % N_NAMES;
                uint64_t g = ++*gen;

                lifecycle_peer_gone(l, names[p], g);
                if (p == 0)
                        break;  /* this process cannot vanish: no-op */
                m->holds[p] = 0;
                for (unsigned i = 0; i < m->n;)
                        if (m->e[i].to == p)
                                model_remove(m, i);
                        else
                                i++;
                for (unsigned i = 0; i < m->n; i++)
                        if (m->e[i].from == p && !m->e[i].orphan) {
                                m->e[i].orphan = true;
                                m->e[i].gen = g;
                        }
                break;
        }

        case 8: { /* drop_orphans(to, max_gen) */
                int to = u8(in) % N_NAMES;
                uint64_t max_gen = *gen >= 3 ? *gen - u8(in) % 3 : *gen;

                lifecycle_drop_orphans(l, names[to], max_gen);
                for (unsigned i = 0; i < m->n;)
                        if (m->e[i].to == to && m->e[i].orphan && m->e[i].gen <= max_gen)
                                model_remove(m, i);
                        else
                                i++;
                break;
        }

        case 9: /* clear */
                lifecycle_clear(l);
                m->n = 0;
                break;

        default: { /* getters only, on a name outside the pool */
                char **h = NULL;
                CHECK(lifecycle_get_holders(l, &h) == 0);
                lifecycle_strv_free(h);
                break;
        }
        }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        In in = { data, size };
        Lifecycle *l = NULL;
        Model m = {};
        uint64_t gen = 0;

        op_no = 0;
        CHECK(lifecycle_new(&l) == 0);
        compare(l, &m);
        while (in.n > 0 && op_no < MAX_OPS) {
                op_no++;
                step(l, &m, &in, &gen);
                compare(l, &m);
        }
        lifecycle_free(l);
        return 0;
}
