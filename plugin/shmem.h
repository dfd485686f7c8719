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
};

/* Writable, zero-filled region of @size bytes (the public *_new_from_* build on it). */
int shmem_new(uint64_t size, ipcmux_shmem **ret);

/*
 * Import an fd received from a peer.  @fd is borrowed (dup'ed on success).
 * Checks: F_GET_SEALS works (a memfd/shmem file; else -EBADF), seals include
 * F_SEAL_SHRINK|F_SEAL_GROW (else -EPERM), S_ISREG and st_size == @size
 * (else -EBADMSG), @size <= @max_size (else -EFBIG).  Maps read-only.
 */
int shmem_new_from_peer_fd(int fd, uint64_t size, uint64_t max_size, ipcmux_shmem **ret);

static inline int shmem_get_fd(const ipcmux_shmem *s) {
        return s->fd;
}
