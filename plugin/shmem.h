/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * ipcmux_shmem: a shared-memory region = a memfd created with
 * MFD_CLOEXEC|MFD_ALLOW_SEALING (|MFD_NOEXEC_SEAL where the kernel has it),
 * sized once and sealed F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_SEAL at creation, so
 * no process can ever change its size: a mapping of a checked region can
 * never fault with SIGBUS.
 *
 * Regions made by this process are mapped MAP_SHARED read-write (writes
 * after sending are visible to the receivers: shared memory, the caller
 * synchronises).  Regions received from a peer are verified (memfd, seals,
 * exact announced size) and mapped read-only.  Size 0 is a valid region with
 * no mapping (and, as in the reference, still an fd).
 *
 * Pool (shmem.c, "Sender-side pool"): regions of 64 KiB..16 MiB (POOL_MIN..
 * POOL_MAX_ENTRY) created here are sent as a read-only open file
 * description of their memfd (@send_fd), opened for this region alone.  When
 * the last reference goes, the memfd (and our mapping) is parked in a small
 * bounded pool, and handed out again by a later shmem_new() of the same size
 * only once a write lease proves that no other open file description of the
 * memfd is left anywhere (no receiver holds an fd or a mapping of it, nothing
 * is in flight in a socket or a broker).  A region exposed through
 * ipcmux_shmem_get_fd() is never pooled.
 *
 * Receiver-side mapping cache (shmem.c): the read-only mappings of the last
 * few received regions stay mapped after their last reference goes, and a
 * region that arrives again (the same memfd, checked like any other) reuses
 * the mapping instead of mapping it anew.
 */

#include <stdbool.h>
#include <stdint.h>

#include "ipcmux/ipcmux.h"

struct ipcmux_shmem {
        unsigned n_ref;         /* atomic */
        int fd;
        uint64_t size;
        void *data;             /* NULL iff size == 0 */
        bool writable;          /* created here (RW mapping) vs received (RO) */
        bool poolable;          /* may go back to the pool when freed (see above) */
        bool exposed;           /* atomic; ipcmux_shmem_get_fd() was called: never pooled */
        int send_fd;            /* poolable: read-only description sent to peers; else -1 */
        uint64_t dev, ino;      /* received: the memfd's identity (mapping cache) */
        /* A read-only view of this writable region (what a receiver in the
         * same process gets): fd, send_fd and mapping are the parent's. */
        ipcmux_shmem *parent;
};

/* Writable, zero-filled region of @size bytes (the public *_new_from_* build on it). */
int shmem_new(uint64_t size, ipcmux_shmem **ret);
/* The same, but the bytes are unspecified (a region from the pool keeps its
 * old bytes): for callers that overwrite every byte, like the payload spill. */
int shmem_new_uninit(uint64_t size, ipcmux_shmem **ret);

/*
 * Import an fd received from a peer.  @fd is borrowed (dup'ed on success).
 * Checks: F_GET_SEALS works (a memfd/shmem file; else -EBADF), seals include
 * F_SEAL_SHRINK|F_SEAL_GROW (else -EPERM), S_ISREG and st_size == @size
 * (else -EBADMSG), @size <= @max_size (else -EFBIG).  Maps read-only.
 */
int shmem_new_from_peer_fd(int fd, uint64_t size, uint64_t max_size, ipcmux_shmem **ret);

/*
 * What a receiver in this process gets for @s: @s itself when it is already
 * read-only, else a read-only view of it (received regions are read-only,
 * wherever they come from).  No fd, no mapping: the view holds @s.
 */
int shmem_new_view(ipcmux_shmem *s, ipcmux_shmem **ret);

/* Pool internals, for tests: set the byte bound (0: off, the receiver's
 * mapping cache too; also flushes both), free every parked entry and cached
 * mapping, count parked entries / cached mappings. */
void shmem_pool_set_limit(uint64_t bytes);
void shmem_pool_flush(void);
unsigned shmem_pool_count(void);
unsigned shmem_rxcache_count(void);
void shmem_rxcache_flush(void);

/* The fd to pass to a peer: the read-only description of a poolable region,
 * else the memfd itself. */
static inline int shmem_get_fd(const ipcmux_shmem *s) {
        return s->send_fd >= 0 ? s->send_fd : s->fd;
}
