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
 * Pool: see "Sender-side pool" below.
 *
 * Never prints, never aborts on peer input.
 */

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
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

/* Takes ownership of @fd and @send_fd in all cases; @data may be NULL (size 0). */
static int shmem_alloc(int fd, int send_fd, uint64_t size, void *data, bool writable, ipcmux_shmem **ret) {
        ipcmux_shmem *s;

        s = malloc(sizeof(*s));
        if (!s) {
                if (data)
                        (void) munmap(data, (size_t) size);
                safe_close(send_fd);
                safe_close(fd);
                return -ENOMEM;
        }

        *s = (ipcmux_shmem) {
                .n_ref = 1,
                .fd = fd,
                .send_fd = send_fd,
                .poolable = send_fd >= 0,
                .size = size,
                .data = data,
                .writable = writable,
        };
        *ret = s;
        return 0;
}

/*
 * ---- Sender-side pool ------------------------------------------------------
 *
 * A fresh region costs page allocation: the kernel zeroes every page of a new
 * memfd, and freeing them costs again (~1.2 GiB/s here for the whole fresh
 * path, against ~7 GiB/s for rewriting already-allocated pages).  So regions
 * of POOL_MIN..POOL_MAX_ENTRY bytes go back to a small bounded pool when
 * their last reference (in this process) goes, and a later shmem_new() of
 * the same size takes one back instead of creating a memfd.
 *
 * The hard part is knowing that no other process can still see the memfd:
 * a receiver may hold a region for as long as it likes, and must never see
 * the bytes of a later, different region (a region is shared memory between
 * the processes that hold IT; a recycled memfd is a different region).  So:
 *
 *  - A poolable region is never sent as its memfd's own (read-write) open
 *    file description.  At creation we open a second, read-only description
 *    of the same memfd (/proc/self/fd/N, O_RDONLY: the trick Wayland
 *    compositors use for read-only keymaps) and send only that one
 *    (shmem_get_fd()).  Receivers share that description: their fds, dups and
 *    mappings all hold it, as does a broker or a socket while the fd is in
 *    flight.
 *  - When the region is freed here, our copy of that description is closed
 *    and a NEW read-only description (never sent) is opened for the pool
 *    entry.
 *  - To take an entry, fcntl(F_SETLEASE, F_WRLCK) on that new description:
 *    the kernel grants a write lease only if the inode has no other readable
 *    or writable open file description than the caller's (i_readcount,
 *    i_writecount; memfd_create()'s own description counts in neither).  So
 *    the lease succeeds iff the description we sent is gone everywhere: no
 *    fd, no mapping (a mapping holds its file), nothing in flight.  The lease
 *    is released at once.  An entry that is still held is skipped, and stays.
 *  - A peer could keep an O_PATH handle (invisible to the lease) and later
 *    reopen /proc/self/fd/N: the memfd's mode is 0000 except for the two
 *    syscalls around our own reopen, so only a process with CAP_DAC_OVERRIDE
 *    (which can read our memory anyway) could.  A peer that opens the memfd
 *    while we hold the lease (again only such a process) breaks it, which
 *    sends us SIGIO for a lease we drop immediately anyway.
 *  - A region whose fd was handed out (ipcmux_shmem_get_fd()) is never pooled:
 *    the application may have passed its read-write description anywhere.
 *  - The pool belongs to the process that filled it: after fork() the child
 *    neither takes nor returns entries (getpid() check, no lock taken).
 *
 * Bounds: POOL_MAX_ENTRIES entries and IPCMUX_SHMEM_POOL bytes (default
 * POOL_DEFAULT_BYTES; 0 disables the pool) of idle regions, oldest evicted
 * first.  Regions of a poolable size cost two fds while alive (the memfd and
 * the description that is sent; also with the pool disabled, so that
 * receivers see one kind of fd), and a parked entry two.  A region taken
 * from the pool by ipcmux_shmem_new() is zeroed (memset), as a fresh one
 * would be; ipcmux_shmem_new_from_bytes() overwrites it instead.
 *
 * The bus tests count fds exactly, per test, so they run with
 * IPCMUX_SHMEM_POOL=0 (tests/meson.build); test-shmem tests the pool, and
 * the test 'regions-pool' tests it across processes on the bus.
 */
#define POOL_MIN (64u << 10)
#define POOL_MAX_ENTRY (16u << 20)
#define POOL_MAX_ENTRIES 16
#define POOL_DEFAULT_BYTES (64u << 20)

typedef struct PoolEntry {
        int fd;                 /* the memfd (memfd_create()'s description, never sent) */
        int ro_fd;              /* a read-only description, never sent yet */
        uint64_t size;
        void *data;             /* our read-write mapping */
} PoolEntry;

static pthread_once_t pool_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t pool_lock = PTHREAD_MUTEX_INITIALIZER;
static PoolEntry pool[POOL_MAX_ENTRIES];        /* [0, pool_n): oldest first; pool_lock */
static unsigned pool_n;
static uint64_t pool_bytes;
static uint64_t pool_limit;    /* set once (pool_init), or by tests */
#define POOL_LIMIT() __atomic_load_n(&pool_limit, __ATOMIC_RELAXED)
static pid_t pool_pid;

static void pool_init(void) {
        const char *e = secure_getenv("IPCMUX_SHMEM_POOL");
        char *end;

        pool_limit = POOL_DEFAULT_BYTES;
        if (e && *e) {
                unsigned long long v;

                errno = 0;
                v = strtoull(e, &end, 10);
                if (errno == 0 && *end == '\0')
                        pool_limit = v;
        }
        pool_pid = getpid();
}

/* Regions of this size are sent as a read-only description of their own
 * (even with the pool disabled: one code path for receivers). */
static bool pool_size(uint64_t size) {
        (void) pthread_once(&pool_once, pool_init);
        return size >= POOL_MIN && size <= POOL_MAX_ENTRY && getpid() == pool_pid;
}

static void pool_entry_free(PoolEntry *e) {
        if (e->data)
                (void) munmap(e->data, (size_t) e->size);
        safe_close(e->ro_fd);
        safe_close(e->fd);
}

/* A new read-only open file description of our memfd @fd (mode 0000 again
 * when we return). */
static int reopen_read_only(int fd) {
        char path[sizeof("/proc/self/fd/") + 12];
        int ro;

        if (fchmod(fd, 0400) < 0)
                return negative_errno();
        snprintf(path, sizeof(path), "/proc/self/fd/%i", fd);
        ro = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
        if (ro < 0)
                ro = negative_errno();
        if (fchmod(fd, 0) < 0) {
                safe_close(ro);
                return negative_errno();
        }
        return ro;
}

/* Is @ro_fd the only open file description of its memfd (but memfd_create()'s)? */
static bool pool_entry_idle(int ro_fd) {
        if (fcntl(ro_fd, F_SETLEASE, F_WRLCK) < 0)
                return false;
        (void) fcntl(ro_fd, F_SETLEASE, F_UNLCK);
        return true;
}

/* Take an idle entry of exactly @size bytes, oldest first. */
static bool pool_take(uint64_t size, PoolEntry *ret) {
        bool found = false;

        pthread_mutex_lock(&pool_lock);
        for (unsigned i = 0; i < pool_n; i++) {
                if (pool[i].size != size || !pool_entry_idle(pool[i].ro_fd))
                        continue;
                *ret = pool[i];
                memmove(&pool[i], &pool[i + 1], (pool_n - i - 1) * sizeof(PoolEntry));
                pool_n--;
                pool_bytes -= size;
                found = true;
                break;
        }
        pthread_mutex_unlock(&pool_lock);
        return found;
}

/* Park the region's memfd and mapping; false: not pooled (free it as usual). */
static bool pool_put(ipcmux_shmem *s) {
        PoolEntry evicted[POOL_MAX_ENTRIES];
        unsigned n_evicted = 0;
        int ro;

        if (!s->poolable || s->size > POOL_LIMIT() || __atomic_load_n(&s->exposed, __ATOMIC_ACQUIRE) ||
            getpid() != pool_pid)
                return false;

        /* The description we sent: ours goes now, peers' copies whenever they
         * drop them.  The entry gets a new one, never sent. */
        s->send_fd = safe_close(s->send_fd);
        ro = reopen_read_only(s->fd);
        if (ro < 0)
                return false;

        pthread_mutex_lock(&pool_lock);
        while (pool_n > 0 && (pool_n == POOL_MAX_ENTRIES || pool_bytes + s->size > POOL_LIMIT())) {
                evicted[n_evicted++] = pool[0];
                pool_bytes -= pool[0].size;
                memmove(&pool[0], &pool[1], (pool_n - 1) * sizeof(PoolEntry));
                pool_n--;
        }
        pool[pool_n++] = (PoolEntry) {
                .fd = s->fd,
                .ro_fd = ro,
                .size = s->size,
                .data = s->data,
        };
        pool_bytes += s->size;
        pthread_mutex_unlock(&pool_lock);

        for (unsigned i = 0; i < n_evicted; i++)
                pool_entry_free(&evicted[i]);
        return true;
}

/*
 * ---- Receiver-side mapping cache ----------------------------------------------
 *
 * A region that comes back (a sender's own pool of regions it rewrites, or
 * the same region sent again) would be mapped and unmapped per message:
 * ~1 ms per 16 MiB here, as much as reading it.  So the mappings of the last
 * RXCACHE_MAX_ENTRIES received regions of POOL_MIN..POOL_MAX_ENTRY bytes
 * (RXCACHE_MAX_BYTES in all) stay mapped, without their fds, after their last
 * reference goes; an import of the same memfd (same st_dev/st_ino, which no
 * other file can have while our mapping keeps the inode alive) takes the
 * mapping over after the usual checks.  The bytes seen are the memfd's pages
 * either way.  It holds no fd, and it delays the end of a sender's memfd only
 * for as long as the entry is cached: a sender's pool (above) skips such a
 * memfd until then, which is why the pool keeps more regions (64 MiB) than
 * the cache (32 MiB).  Off with the pool (IPCMUX_SHMEM_POOL=0).
 */
#define RXCACHE_MAX_ENTRIES 4
#define RXCACHE_MAX_BYTES (32u << 20)

typedef struct RxCacheEntry {
        uint64_t dev, ino, size;
        void *data;
} RxCacheEntry;

static RxCacheEntry rxcache[RXCACHE_MAX_ENTRIES];      /* [0, rxcache_n): oldest first; pool_lock */
static unsigned rxcache_n;
static uint64_t rxcache_bytes;

static bool rxcache_size(uint64_t size) {
        (void) pthread_once(&pool_once, pool_init);
        return size >= POOL_MIN && size <= POOL_MAX_ENTRY && POOL_LIMIT() > 0 && getpid() == pool_pid;
}

static void *rxcache_take(uint64_t dev, uint64_t ino, uint64_t size) {
        void *data = NULL;

        pthread_mutex_lock(&pool_lock);
        for (unsigned i = 0; i < rxcache_n; i++) {
                if (rxcache[i].dev != dev || rxcache[i].ino != ino || rxcache[i].size != size)
                        continue;
                data = rxcache[i].data;
                rxcache_bytes -= size;
                memmove(&rxcache[i], &rxcache[i + 1], (rxcache_n - i - 1) * sizeof(RxCacheEntry));
                rxcache_n--;
                break;
        }
        pthread_mutex_unlock(&pool_lock);
        return data;
}

/* Keep the mapping of a received region; false: not cached (unmap as usual). */
static bool rxcache_put(ipcmux_shmem *s) {
        RxCacheEntry evicted[RXCACHE_MAX_ENTRIES];
        unsigned n_evicted = 0;
        bool cached = false;

        if (s->writable || !s->data || !rxcache_size(s->size))
                return false;

        pthread_mutex_lock(&pool_lock);
        if (POOL_LIMIT() > 0) {
                while (rxcache_n > 0 &&
                       (rxcache_n == RXCACHE_MAX_ENTRIES || rxcache_bytes + s->size > RXCACHE_MAX_BYTES)) {
                        evicted[n_evicted++] = rxcache[0];
                        rxcache_bytes -= rxcache[0].size;
                        memmove(&rxcache[0], &rxcache[1], (rxcache_n - 1) * sizeof(RxCacheEntry));
                        rxcache_n--;
                }
                rxcache[rxcache_n++] = (RxCacheEntry) {
                        .dev = s->dev,
                        .ino = s->ino,
                        .size = s->size,
                        .data = s->data,
                };
                rxcache_bytes += s->size;
                cached = true;
        }
        pthread_mutex_unlock(&pool_lock);

        for (unsigned i = 0; i < n_evicted; i++)
                (void) munmap(evicted[i].data, (size_t) evicted[i].size);
        return cached;
}

void shmem_rxcache_flush(void) {
        RxCacheEntry cached[RXCACHE_MAX_ENTRIES];
        unsigned n;

        (void) pthread_once(&pool_once, pool_init);
        if (getpid() != pool_pid)
                return;
        pthread_mutex_lock(&pool_lock);
        n = rxcache_n;
        memcpy(cached, rxcache, n * sizeof(RxCacheEntry));
        rxcache_n = 0;
        rxcache_bytes = 0;
        pthread_mutex_unlock(&pool_lock);
        for (unsigned i = 0; i < n; i++)
                (void) munmap(cached[i].data, (size_t) cached[i].size);
}

unsigned shmem_rxcache_count(void) {
        unsigned n;

        (void) pthread_once(&pool_once, pool_init);
        pthread_mutex_lock(&pool_lock);
        n = rxcache_n;
        pthread_mutex_unlock(&pool_lock);
        return n;
}

void shmem_pool_set_limit(uint64_t bytes) {
        (void) pthread_once(&pool_once, pool_init);
        __atomic_store_n(&pool_limit, bytes, __ATOMIC_RELAXED);
        shmem_pool_flush();
}

void shmem_pool_flush(void) {
        PoolEntry all[POOL_MAX_ENTRIES];
        RxCacheEntry cached[RXCACHE_MAX_ENTRIES];
        unsigned n, n_cached;

        (void) pthread_once(&pool_once, pool_init);
        if (getpid() != pool_pid)
                return;

        pthread_mutex_lock(&pool_lock);
        n = pool_n;
        memcpy(all, pool, n * sizeof(PoolEntry));
        pool_n = 0;
        pool_bytes = 0;
        n_cached = rxcache_n;
        memcpy(cached, rxcache, n_cached * sizeof(RxCacheEntry));
        rxcache_n = 0;
        rxcache_bytes = 0;
        pthread_mutex_unlock(&pool_lock);
        for (unsigned i = 0; i < n; i++)
                pool_entry_free(&all[i]);
        for (unsigned i = 0; i < n_cached; i++)
                (void) munmap(cached[i].data, (size_t) cached[i].size);
}

unsigned shmem_pool_count(void) {
        unsigned n;

        (void) pthread_once(&pool_once, pool_init);
        pthread_mutex_lock(&pool_lock);
        n = pool_n;
        pthread_mutex_unlock(&pool_lock);
        return n;
}

/* Writable region of @size bytes; zero-filled iff @zero (else the bytes are
 * unspecified: the caller overwrites all of them). */
static int shmem_new_full(uint64_t size, bool zero, ipcmux_shmem **ret) {
        _cleanup_close_ int fd = -1, ro = -1;
        bool poolable;
        void *p = NULL;

        assert_return(ret, -EINVAL);
        if (size > INT64_MAX || size > SIZE_MAX)
                return -EFBIG;

        poolable = pool_size(size);
        if (poolable && size <= POOL_LIMIT()) {
                PoolEntry e;

                if (pool_take(size, &e)) {
                        if (zero)
                                memset(e.data, 0, (size_t) size);
                        return shmem_alloc(e.fd, e.ro_fd, size, e.data, true, ret);
                }
        }

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

        /* Poolable: the description peers get (see the pool).  Without it
         * (no /proc, out of fds) the region is simply not poolable. */
        if (poolable) {
                ro = reopen_read_only(fd);
                if (ro < 0)
                        ro = -1;
        }

        return shmem_alloc(TAKE_FD(fd), TAKE_FD(ro), size, p, true, ret);
}

int shmem_new(uint64_t size, ipcmux_shmem **ret) {
        return shmem_new_full(size, true, ret);
}

int shmem_new_uninit(uint64_t size, ipcmux_shmem **ret) {
        return shmem_new_full(size, false, ret);
}

int shmem_new_from_peer_fd(int fd, uint64_t size, uint64_t max_size, ipcmux_shmem **ret) {
        _cleanup_close_ int copy = -1;
        struct stat st;
        void *p = NULL;
        int seals, r;

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

        /* The same memfd again (checked above like any other): its mapping. */
        if (rxcache_size(size))
                p = rxcache_take((uint64_t) st.st_dev, (uint64_t) st.st_ino, size);

        if (size > 0 && !p) {
                /* Never PROT_WRITE, never PROT_EXEC. */
                p = mmap(NULL, (size_t) size, PROT_READ, MAP_SHARED | populate_flag(size), copy, 0);
                if (p == MAP_FAILED)
                        return negative_errno();
        }

        r = shmem_alloc(TAKE_FD(copy), -1, size, p, false, ret);
        if (r < 0)
                return r;
        (*ret)->dev = (uint64_t) st.st_dev;
        (*ret)->ino = (uint64_t) st.st_ino;
        return 0;
}

int shmem_new_view(ipcmux_shmem *s, ipcmux_shmem **ret) {
        ipcmux_shmem *v;

        if (!s->writable) {
                *ret = ipcmux_shmem_ref(s);
                return 0;
        }
        v = malloc(sizeof(*v));
        if (!v)
                return -ENOMEM;
        *v = (ipcmux_shmem) {
                .n_ref = 1,
                .fd = s->fd,
                .send_fd = s->send_fd,
                .size = s->size,
                .data = s->data,
                .parent = ipcmux_shmem_ref(s),
        };
        *ret = v;
        return 0;
}

static ipcmux_shmem *shmem_free(ipcmux_shmem *s) {
        if (s->parent) {
                ipcmux_shmem_unref(s->parent);
                free(s);
                return NULL;
        }
        if (pool_put(s)) {
                free(s);
                return NULL;
        }
        safe_close(s->send_fd);
        if (s->data && !rxcache_put(s))
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

        if ((uint64_t) size > INT64_MAX)
                return -EFBIG;
        /* Every byte is overwritten: a region from the pool needs no zeroing. */
        r = shmem_new_full((uint64_t) size, false, &s);
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

        if ((uint64_t) size > INT64_MAX)
                return -EFBIG;
        r = shmem_new_full((uint64_t) size, byte == 0, &s);
        if (r < 0)
                return r;

        /* A fresh (or zeroed pooled) memfd is zero-filled: don't touch
         * (allocate) the pages for 0. */
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

        if (s->parent)
                return ipcmux_shmem_get_fd(s->parent);  /* its memfd: exposed */
        /* The application may pass this (read-write) description anywhere:
         * the memfd can no longer be proven unused, so it is never pooled. */
        if (s->poolable)
                __atomic_store_n(&s->exposed, true, __ATOMIC_RELEASE);
        return s->fd;
}
