/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Lifecycle: who may still send on one subchannel.  Pure bookkeeping, no
 * I/O (the receiver feeds it the bus events), so every rule is unit-tested
 * in tests/test-lifecycle.cc.  This is the reference's SubSenderStateMachine
 * (sources + in-flight multiset + probes), redone with the bus as the
 * source of truth:
 *
 *   - local holds: sender objects alive in THIS process (each clone group of
 *     an ipcmux_sender is one hold);
 *   - remote holds: per peer (bus unique name), the number of sender objects
 *     that process holds; a process can only ever release its own holds;
 *   - in flight: copies inside a message on their way from one holder to a
 *     destination, keyed by (from, token); registered BEFORE the carrying
 *     message leaves, resolved by claim (the destination now holds it), by
 *     decline (it will never be used), or by the destination's death.
 *
 * Peers are named by unique bus name (copied); NULL means this process.
 * Connected = local holds, remote holds or in-flight copies remain.
 *
 * A holder that dies may have sent a carrying message that is still on its
 * way: its in-flight entries become "orphans" tagged with a generation
 * number; once the destination has answered a barrier (Sync) sent after the
 * death, lifecycle_drop_orphans() removes what the destination did not claim.
 *
 * All functions return 0 or a negative errno and change NOTHING on error.
 */

#include <stdbool.h>
#include <stdint.h>

typedef struct Lifecycle Lifecycle;

int lifecycle_new(Lifecycle **ret);
Lifecycle *lifecycle_free(Lifecycle *l);

/* One more sender object in this process. -ENOMEM never: counter only. */
void lifecycle_hold_local(Lifecycle *l);
/* One sender object of this process gone. -EINVAL if there were none. */
int lifecycle_release_local(Lifecycle *l);

/* @peer gains @n holds (e.g. the one-shot client). -EINVAL if peer NULL or n 0. */
int lifecycle_hold(Lifecycle *l, const char *peer, unsigned n);
/* @peer drops @n holds. -EACCES if it holds fewer than @n. */
int lifecycle_release(Lifecycle *l, const char *peer, unsigned n);

/*
 * A copy is in flight from @from (NULL: this process) to @to (NULL: this
 * process).  -EACCES if @from holds nothing (no local hold for NULL, no
 * remote hold for a peer); -EEXIST if (@from, @token) is already in flight;
 * -EINVAL if from and to are both NULL (local transfers need no entry).
 */
int lifecycle_sending(Lifecycle *l, const char *from, uint64_t token, const char *to);

/*
 * @by (NULL: this process) received copy (@from, @token): the entry goes, @by
 * gains one hold.  -ENOENT if there is no such entry; -EACCES if it is
 * addressed to somebody else than @by.
 */
int lifecycle_claim(Lifecycle *l, const char *by, const char *from, uint64_t token);
/*
 * As claim, but @by will never use the copy: the entry just goes, no hold
 * is gained.  Allowed to the destination, and to the origin (@by == @from:
 * it withdraws a copy whose carrying message never left).
 */
int lifecycle_decline(Lifecycle *l, const char *by, const char *from, uint64_t token);

/*
 * @peer vanished from the bus: its holds go, entries in flight TO it go,
 * entries in flight FROM it become orphans of generation @gen (unless
 * already orphaned).  Unknown peers are fine (no-op).
 */
void lifecycle_peer_gone(Lifecycle *l, const char *peer, uint64_t gen);

/* Drop orphans addressed to @to (NULL: this process) with generation <= @max_gen. */
void lifecycle_drop_orphans(Lifecycle *l, const char *to, uint64_t max_gen);

/* Drop everything in flight (the receiver is gone, nothing can be claimed). */
void lifecycle_clear(Lifecycle *l);

bool lifecycle_is_connected(const Lifecycle *l);
/* May @peer send data: it holds a sender, or a copy is in flight to it. */
bool lifecycle_may_send(const Lifecycle *l, const char *peer);
/* Does @peer hold anything (remote holds only). */
unsigned lifecycle_get_holds(const Lifecycle *l, const char *peer);

unsigned lifecycle_get_local_holds(const Lifecycle *l);
unsigned lifecycle_get_remote_holds(const Lifecycle *l);    /* sum over peers */
unsigned lifecycle_get_in_flight(const Lifecycle *l);       /* entries, orphans included */
bool lifecycle_has_orphans_to(const Lifecycle *l, const char *to);

/*
 * Calls @cb once for every distinct remote peer that holds a sender or to
 * which a copy is in flight (the processes to tell when the receiver goes).
 * @cb must not modify @l.
 */
void lifecycle_foreach_peer(const Lifecycle *l, void (*cb)(const char *peer, void *userdata), void *userdata);
/* Distinct remote holders, as a NULL-terminated strv (free with strv_free-like loop). */
int lifecycle_get_holders(const Lifecycle *l, char ***ret);
/* Frees a strv returned by lifecycle_get_holders() (each string, then the array). NULL ok. */
void lifecycle_strv_free(char **l);
