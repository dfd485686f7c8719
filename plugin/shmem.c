/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * Shared-memory regions: sealed memfds (see shmem.h for the design).
 *
 * Creation: memfd_create(MFD_CLOEXEC|MFD_ALLOW_SEALING|MFD_NOEXEC_SEAL),
 * retried without MFD_NOEXEC_SEAL on EINVAL (kernels < 6.3), ftruncate() to
 * the final size, then F_SEAL_SHRINK|F_SEAL_GROW|F_SEAL_SEAL at once: from
 * then on nobody (not even us) can change the size, so neither we nor any
 * receiver can ever take a SIGBUS on the mapping.  No F_SEAL_WRITE: regions
 * are mutable shared buffers (the reference's deref_mut()).
 *
 * Import: a peer's fd is untrusted.  It is checked (F_GET_SEALS, required
 * seals, regular file, exact size, caller's quota) before it is mapped, and
 * mapped PROT_READ only.  Nothing here ever parses the region's bytes.
 *
 * Never prints, never aborts on peer input.
 */

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "macro.h"
#include "shmem.h"

#ifndef MFD_CLOEXEC
#  define MFD_CLOEXEC 0x0001U
#endif
#ifndef MFD_ALLOW_SEALING
#  define MFD_ALLOW_SEALING 0x0002U
#endif
/* Linux 6.3; Debian 12's headers predate it. */
#ifndef MFD_NOEXEC_SEAL
#  define MFD_NOEXEC_SEAL 0x0008U
#endif

#ifndef F_ADD_SEALS
#  define F_ADD_SEALS (1024 + 9)
#  define F_GET_SEALS (1024 + 10)
#  define F_SEAL_SEAL 0x0001
#  define F_SEAL_SHRINK 0x0002
#  define F_SEAL_GROW 0x0004
#  define F_SEAL_WRITE 0x0008
#endif

#define SHMEM_CREATE_SEALS (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL)
#define SHMEM_REQUIRED_SEALS (F_SEAL_SHRINK | F_SEAL_GROW)

/*
 * What get_data() returns for a 0-byte region (never NULL for a valid
 * region).  get_mutable_data() of a writable 0-byte region returns a
 * separate, non-const byte so that nobody writes through a cast-away const.
 */

/* Regions up to this size are mapped with MAP_POPULATE: they are about to
 * be written (ours) or read (received), and faulting page by page cost ~18%
 * of a 1 MiB transfer.  Larger ones map lazily, so a huge or sparse region
 * costs only the pages actually touched. */
#define POPULATE_MAX (64u << 20)

static int populate_flag(uint64_t size) {
        return size <= POPULATE_MAX ? MAP_POPULATE : 0;
}

static const uint8_t shmem_empty_ro = 0;
static uint8_t shmem_empty_rw = 0;

static int memfd_new(void) {
        int fd;

        fd = memfd_create("ipcmux-shmem", MFD_CLOEXEC | MFD_ALLOW_SEALING | MFD_NOEXEC_SEAL);
        if (fd < 0 && errno == EINVAL)
                /* Kernel < 6.3 rejects the unknown flag. */
                fd = memfd_create("ipcmux-shmem", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0)
                return negative_errno();
        return fd;
}

/* Takes ownership of @fd in all cases; @data may be NULL (size 0). */
static int shmem_alloc(int fd, uint64_t size, void *data, bool writable, ipcmux_shmem **ret) {
        ipcmux_shmem *s;

        s = malloc(sizeof(*s));
        if (!s) {
                if (data)
                        (void) munmap(data, (size_t) size);
                safe_close(fd);
                return -ENOMEM;
        }

        *s = (ipcmux_shmem) {
                .n_ref = 1,
                .fd = fd,
                .size = size,
                .data = data,
                .writable = writable,
        };
        *ret = s;
        return 0;
}

int shmem_new(uint64_t size, ipcmux_shmem **ret) {
        _cleanup_close_ int fd = -1;
        void *p = NULL;

        assert_return(ret, -EINVAL);
        if (size > INT64_MAX || size > SIZE_MAX)
                return -EFBIG;

        fd = memfd_new();
        if (fd < 0)
                return fd;

        if (ftruncate(fd, (off_t) size) < 0)
                return negative_errno();

        /* Size is final: seal it before anybody can see the fd. */
        if (fcntl(fd, F_ADD_SEALS, SHMEM_CREATE_SEALS) < 0)
                return negative_errno();

        if (size > 0) {
                p = mmap(NULL, (size_t) size, PROT_READ | PROT_WRITE, MAP_SHARED | populate_flag(size), fd, 0);
                if (p == MAP_FAILED)
                        return negative_errno();
        }

        return shmem_alloc(TAKE_FD(fd), size, p, true, ret);
}

int shmem_new_from_peer_fd(int fd, uint64_t size, uint64_t max_size, ipcmux_shmem **ret) {
        _cleanup_close_ int copy = -1;
        struct stat st;
        void *p = NULL;
        int seals;

        assert_return(ret, -EINVAL);
        if (fd < 0)
                return -EBADF;

        /* Fails (EINVAL) on anything that is not shmem/memfd: pipes, sockets,
         * devices, directories, files on other file systems, O_PATH fds. */
        seals = fcntl(fd, F_GET_SEALS);
        if (seals < 0)
                return -EBADF;

        /* Without both, the peer could shrink the file under our mapping
         * (SIGBUS) or grow it past its announced size. */
        if ((seals & SHMEM_REQUIRED_SEALS) != SHMEM_REQUIRED_SEALS)
                return -EPERM;

        if (fstat(fd, &st) < 0)
                return -EBADF;
        if (!S_ISREG(st.st_mode) || st.st_size < 0 || (uint64_t) st.st_size != size)
                return -EBADMSG;

        if (size > max_size || size > SIZE_MAX)
                return -EFBIG;

        copy = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        if (copy < 0)
                return negative_errno();

        if (size > 0) {
                /* Never PROT_WRITE, never PROT_EXEC. */
                p = mmap(NULL, (size_t) size, PROT_READ, MAP_SHARED | populate_flag(size), copy, 0);
                if (p == MAP_FAILED)
                        return negative_errno();
        }

        return shmem_alloc(TAKE_FD(copy), size, p, false, ret);
}

static ipcmux_shmem *shmem_free(ipcmux_shmem *s) {
        if (s->data)
                (void) munmap(s->data, (size_t) s->size);
        safe_close(s->fd);
        free(s);
        return NULL;
}

_public_ int ipcmux_shmem_new(size_t size, ipcmux_shmem **ret) {
        assert_return(ret, -EINVAL);
        if ((uint64_t) size > INT64_MAX)
                return -EFBIG;

        return shmem_new((uint64_t) size, ret);
}

_public_ int ipcmux_shmem_new_from_bytes(const void *data, size_t size, ipcmux_shmem **ret) {
        ipcmux_shmem *s;
        int r;

        assert_return(data || size == 0, -EINVAL);
        assert_return(ret, -EINVAL);

        r = ipcmux_shmem_new(size, &s);
        if (r < 0)
                return r;

        if (size > 0)
                memcpy(s->data, data, size);

        *ret = s;
        return 0;
}

_public_ int ipcmux_shmem_new_from_byte(uint8_t byte, size_t size, ipcmux_shmem **ret) {
        ipcmux_shmem *s;
        int r;

        assert_return(ret, -EINVAL);

        r = ipcmux_shmem_new(size, &s);
        if (r < 0)
                return r;

        /* A fresh memfd is zero-filled: don't touch (allocate) the pages for 0. */
        if (size > 0 && byte != 0)
                memset(s->data, byte, size);

        *ret = s;
        return 0;
}

_public_ ipcmux_shmem *ipcmux_shmem_ref(ipcmux_shmem *s) {
        assert_return(s, NULL);

        __atomic_add_fetch(&s->n_ref, 1, __ATOMIC_RELAXED);
        return s;
}

_public_ ipcmux_shmem *ipcmux_shmem_unref(ipcmux_shmem *s) {
        if (!s)
                return NULL;

        if (__atomic_sub_fetch(&s->n_ref, 1, __ATOMIC_ACQ_REL) > 0)
                return NULL;

        return shmem_free(s);
}

_public_ const void *ipcmux_shmem_get_data(ipcmux_shmem *s) {
        assert_return(s, NULL);

        return s->data ? s->data : (const void *) &shmem_empty_ro;
}

_public_ size_t ipcmux_shmem_get_size(ipcmux_shmem *s) {
        assert_return(s, 0);

        /* Both constructors refuse sizes above SIZE_MAX. */
        return (size_t) s->size;
}

_public_ void *ipcmux_shmem_get_mutable_data(ipcmux_shmem *s) {
        assert_return(s, NULL);

        if (!s->writable)
                return NULL;
        return s->data ? s->data : (void *) &shmem_empty_rw;
}

_public_ int ipcmux_shmem_equal(ipcmux_shmem *a, ipcmux_shmem *b) {
        assert_return(a, -EINVAL);
        assert_return(b, -EINVAL);

        if (a == b)
                return 1;
        if (a->size != b->size)
                return 0;
        if (a->size == 0)
                return 1;
        return memcmp(a->data, b->data, (size_t) a->size) == 0;
}

/*
 * Ownership rule (decided here, as the header's general convention says
 * "out-parameters are untouched on failure"): the caller's reference is
 * consumed ONLY on success.  On any error (-EINVAL for a NULL @s/@ret_data,
 * -ENOMEM if the copy cannot be allocated) nothing happens: the caller still
 * owns its reference and must unref it, *ret_data and *ret_size are
 * untouched.  @ret_size may be NULL.
 *
 * The bytes are always copied (other references, in this process or in
 * peers, may still map the region), as the reference's "might clone".
 */
_public_ int ipcmux_shmem_take(ipcmux_shmem *s, void **ret_data, size_t *ret_size) {
        void *copy;
        size_t size;

        assert_return(s, -EINVAL);
        assert_return(ret_data, -EINVAL);

        size = (size_t) s->size;
        copy = malloc(MAX(size, (size_t) 1));
        if (!copy)
                return -ENOMEM;
        if (size > 0)
                memcpy(copy, s->data, size);

        ipcmux_shmem_unref(s);

        *ret_data = copy;
        if (ret_size)
                *ret_size = size;
        return 0;
}

_public_ int ipcmux_shmem_get_fd(ipcmux_shmem *s) {
        assert_return(s, -EINVAL);

        return s->fd;
}
