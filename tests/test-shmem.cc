/* SPDX-License-Identifier: LGPL-2.1-or-later */

/*
 * Shared-memory regions without a bus: the reference's SharedMemory
 * scenarios (from_bytes, from_byte, empty, large, deref, deref_mut, take,
 * ==) plus the receive-side checks of reliability.md B1/B2/B4/B6 against
 * shmem_new_from_peer_fd(), 64-bit sizes, and fd/mapping leaks.
 */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include <ipcmux/ipcmux.h>
extern "C" {
#include "shmem.h"
}

#ifndef _cleanup_
#  define _cleanup_(f) __attribute__((cleanup(f)))
#endif

#ifndef F_SEAL_FUTURE_WRITE
#  define F_SEAL_FUTURE_WRITE 0x0010
#endif

namespace {

constexpr uint64_t KiB = 1024;
constexpr uint64_t MiB = 1024 * KiB;
constexpr uint64_t GiB = 1024 * MiB;

unsigned count_fds() {
        DIR *d = opendir("/proc/self/fd");
        unsigned n = 0;

        if (!d)
                return 0;
        while (struct dirent *de = readdir(d))
                if (de->d_name[0] != '.')
                        n++;
        closedir(d);
        return n - 1; /* the DIR's own fd */
}

std::string read_maps() {
        std::string s;
        char buf[4096];
        FILE *f = fopen("/proc/self/maps", "re");
        size_t n;

        if (!f)
                return s;
        while ((n = fread(buf, 1, sizeof(buf), f)) > 0)
                s.append(buf, n);
        fclose(f);
        return s;
}

/* Number of mappings whose line mentions @needle. */
unsigned count_maps(const char *needle) {
        std::string maps = read_maps();
        unsigned n = 0;

        for (size_t pos = 0; (pos = maps.find(needle, pos)) != std::string::npos; pos++)
                n++;
        return n;
}

/* Permission string ("r--s") of the mapping that starts at @addr, or "". */
std::string maps_perms(const void *addr) {
        char prefix[64];
        std::string maps = read_maps();

        snprintf(prefix, sizeof(prefix), "%lx-", (unsigned long) (uintptr_t) addr);
        size_t pos = 0;
        while (pos < maps.size()) {
                size_t eol = maps.find('\n', pos);
                std::string line = maps.substr(pos, eol == std::string::npos ? std::string::npos : eol - pos);
                if (line.compare(0, strlen(prefix), prefix) == 0) {
                        size_t sp = line.find(' ');
                        return sp == std::string::npos ? "" : line.substr(sp + 1, 4);
                }
                if (eol == std::string::npos)
                        break;
                pos = eol + 1;
        }
        return "";
}

/* A memfd of @size bytes with @seals added; -1 on failure (errno set). */
int make_memfd(const char *name, unsigned flags, uint64_t size, int seals) {
        int fd = memfd_create(name, flags);
        if (fd < 0)
                return -1;
        if (ftruncate(fd, (off_t) size) < 0 || (seals && fcntl(fd, F_ADD_SEALS, seals) < 0)) {
                int saved = errno;
                close(fd);
                errno = saved;
                return -1;
        }
        return fd;
}

int make_sealed_memfd(const char *name, uint64_t size) {
        return make_memfd(name, MFD_CLOEXEC | MFD_ALLOW_SEALING, size, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
}

std::string bytes_of(ipcmux_shmem *s) {
        return std::string(static_cast<const char *>(ipcmux_shmem_get_data(s)), ipcmux_shmem_get_size(s));
}

} // namespace

/* ---- the reference's SharedMemory scenarios ------------------------------ */

TEST(Shmem, FromBytes) {
        _cleanup_(ipcmux_shmem_unrefp) ipcmux_shmem *s = NULL;
        static const char hello[] = "hello world";

        int r = ipcmux_shmem_new_from_bytes(hello, strlen(hello), &s);
        ASSERT_GE(r, 0) << strerror(-r);
        ASSERT_NE(s, nullptr);
        EXPECT_EQ(ipcmux_shmem_get_size(s), strlen(hello));
        EXPECT_EQ(bytes_of(s), "hello world");
        EXPECT_NE(ipcmux_shmem_get_mutable_data(s), nullptr);
        EXPECT_EQ(ipcmux_shmem_get_mutable_data(s), ipcmux_shmem_get_data(s));
        EXPECT_GE(ipcmux_shmem_get_fd(s), 0);
        EXPECT_EQ(ipcmux_shmem_get_fd(s), shmem_get_fd(s));
        /* The source buffer is copied, not referenced. */
        EXPECT_NE(ipcmux_shmem_get_data(s), (const void *) hello);
}

TEST(Shmem, FromByte) {
        _cleanup_(ipcmux_shmem_unrefp) ipcmux_shmem *s = NULL;

        int r = ipcmux_shmem_new_from_byte(0xAB, 1024, &s);
        ASSERT_GE(r, 0) << strerror(-r);
        ASSERT_EQ(ipcmux_shmem_get_size(s), 1024u);
        const uint8_t *p = static_cast<const uint8_t *>(ipcmux_shmem_get_data(s));
        for (size_t i = 0; i < 1024; i++)
                ASSERT_EQ(p[i], 0xAB) << "at " << i;
}

TEST(Shmem, FromByteZero) {
        _cleanup_(ipcmux_shmem_unrefp) ipcmux_shmem *s = NULL;

        int r = ipcmux_shmem_new_from_byte(0, 3 * 4096 + 7, &s);
        ASSERT_GE(r, 0) << strerror(-r);
        ASSERT_EQ(ipcmux_shmem_get_size(s), 3u * 4096 + 7);
        const uint8_t *p = static_cast<const uint8_t *>(ipcmux_shmem_get_data(s));
        for (size_t i = 0; i < ipcmux_shmem_get_size(s); i++)
                ASSERT_EQ(p[i], 0) << "at " << i;
}

TEST(Shmem, NewIsZeroFilled) {
        _cleanup_(ipcmux_shmem_unrefp) ipcmux_shmem *s = NULL;

        int r = ipcmux_shmem_new(8192, &s);
        ASSERT_GE(r, 0) << strerror(-r);
        ASSERT_EQ(ipcmux_shmem_get_size(s), 8192u);
        const uint8_t *p = static_cast<const uint8_t *>(ipcmux_shmem_get_data(s));
        for (size_t i = 0; i < 8192; i++)
                ASSERT_EQ(p[i], 0) << "at " << i;
}

TEST(Shmem, Empty) {
        for (const void *src : {(const void *) NULL, (const void *) ""}) {
                ipcmux_shmem *s = NULL;

                int r = ipcmux_shmem_new_from_bytes(src, 0, &s);
                ASSERT_GE(r, 0) << strerror(-r);
                EXPECT_EQ(ipcmux_shmem_get_size(s), 0u);
                EXPECT_NE(ipcmux_shmem_get_data(s), nullptr);
                EXPECT_NE(ipcmux_shmem_get_mutable_data(s), nullptr);
                /* As in the reference, a 0-byte region still has an fd. */
                int fd = ipcmux_shmem_get_fd(s);
                ASSERT_GE(fd, 0);
                struct stat st;
                ASSERT_EQ(fstat(fd, &st), 0);
                EXPECT_EQ(st.st_size, 0);
                ipcmux_shmem_unref(s);
        }

        ipcmux_shmem *s = NULL;
        int r = ipcmux_shmem_new(0, &s);
        ASSERT_GE(r, 0) << strerror(-r);
        EXPECT_NE(ipcmux_shmem_get_data(s), nullptr);
        ipcmux_shmem_unref(s);

        r = ipcmux_shmem_new_from_byte(0xAB, 0, &s);
        ASSERT_GE(r, 0) << strerror(-r);
        EXPECT_NE(ipcmux_shmem_get_data(s), nullptr);
        EXPECT_EQ(ipcmux_shmem_get_size(s), 0u);
        ipcmux_shmem_unref(s);
}

TEST(Shmem, Large) {
        _cleanup_(ipcmux_shmem_unrefp) ipcmux_shmem *s = NULL;
        std::vector<uint8_t> big(4 * MiB, 0x42);

        int r = ipcmux_shmem_new_from_bytes(big.data(), big.size(), &s);
        ASSERT_GE(r, 0) << strerror(-r);
        ASSERT_EQ(ipcmux_shmem_get_size(s), 4 * MiB);
        EXPECT_EQ(memcmp(ipcmux_shmem_get_data(s), big.data(), big.size()), 0);
}

TEST(Shmem, Deref) {
        _cleanup_(ipcmux_shmem_unrefp) ipcmux_shmem *s = NULL;

        int r = ipcmux_shmem_new_from_bytes("abcdef", 6, &s);
        ASSERT_GE(r, 0) << strerror(-r);
        ASSERT_EQ(ipcmux_shmem_get_size(s), 6u);
        const char *p = static_cast<const char *>(ipcmux_shmem_get_data(s));
        EXPECT_EQ(p[0], 'a');
        EXPECT_EQ(p[5], 'f');
        EXPECT_EQ(std::string(p + 1, 3), "bcd");
}

TEST(Shmem, DerefMut) {
        _cleanup_(ipcmux_shmem_unrefp) ipcmux_shmem *s = NULL;

        int r = ipcmux_shmem_new_from_bytes("hello", 5, &s);
        ASSERT_GE(r, 0) << strerror(-r);
        char *p = static_cast<char *>(ipcmux_shmem_get_mutable_data(s));
        ASSERT_NE(p, nullptr);
        p[0] = 'H';
        p[4] = 'O';
        EXPECT_EQ(bytes_of(s), "HellO");

        /* It is shared memory: the write is in the memfd itself. */
        char buf[5];
        ASSERT_EQ(pread(ipcmux_shmem_get_fd(s), buf, sizeof(buf), 0), 5);
        EXPECT_EQ(std::string(buf, 5), "HellO");
}

TEST(Shmem, Take) {
        ipcmux_shmem *s = NULL;
        void *data = NULL;
        size_t size = 12345;

        int r = ipcmux_shmem_new_from_bytes("take me", 7, &s);
        ASSERT_GE(r, 0) << strerror(-r);
        r = ipcmux_shmem_take(s, &data, &size);
        ASSERT_GE(r, 0) << strerror(-r);
        /* s is gone (ASan's leak check verifies the reference was consumed). */
        ASSERT_NE(data, nullptr);
        EXPECT_EQ(size, 7u);
        EXPECT_EQ(std::string(static_cast<char *>(data), size), "take me");
        free(data);
}

TEST(Shmem, TakeWithOtherReference) {
        ipcmux_shmem *s = NULL;
        void *data = NULL;
        size_t size = 0;

        int r = ipcmux_shmem_new_from_bytes("shared", 6, &s);
        ASSERT_GE(r, 0) << strerror(-r);
        ipcmux_shmem_ref(s);
        r = ipcmux_shmem_take(s, &data, &size);
        ASSERT_GE(r, 0) << strerror(-r);
        /* Only one reference was consumed; the copy is independent. */
        EXPECT_EQ(__atomic_load_n(&s->n_ref, __ATOMIC_RELAXED), 1u);
        static_cast<char *>(data)[0] = 'S';
        EXPECT_EQ(bytes_of(s), "shared");
        EXPECT_EQ(std::string(static_cast<char *>(data), size), "Shared");
        free(data);
        ipcmux_shmem_unref(s);
}

TEST(Shmem, TakeEmpty) {
        ipcmux_shmem *s = NULL;
        void *data = NULL;
        size_t size = 12345;

        int r = ipcmux_shmem_new_from_bytes(NULL, 0, &s);
        ASSERT_GE(r, 0) << strerror(-r);
        r = ipcmux_shmem_take(s, &data, &size);
        ASSERT_GE(r, 0) << strerror(-r);
        EXPECT_NE(data, nullptr);
        EXPECT_EQ(size, 0u);
        free(data);
}

TEST(Shmem, TakeNullSize) {
        ipcmux_shmem *s = NULL;
        void *data = NULL;

        int r = ipcmux_shmem_new_from_bytes("xy", 2, &s);
        ASSERT_GE(r, 0) << strerror(-r);
        r = ipcmux_shmem_take(s, &data, NULL);
        ASSERT_GE(r, 0) << strerror(-r);
        EXPECT_EQ(memcmp(data, "xy", 2), 0);
        free(data);
}

TEST(Shmem, TakeInvalidKeepsReference) {
        ipcmux_shmem *s = NULL;
        size_t size = 99;

        EXPECT_EQ(ipcmux_shmem_take(NULL, NULL, NULL), -EINVAL);

        int r = ipcmux_shmem_new_from_bytes("keep", 4, &s);
        ASSERT_GE(r, 0) << strerror(-r);
        /* Failure consumes nothing and leaves the out-params alone. */
        EXPECT_EQ(ipcmux_shmem_take(s, NULL, &size), -EINVAL);
        EXPECT_EQ(size, 99u);
        EXPECT_EQ(__atomic_load_n(&s->n_ref, __ATOMIC_RELAXED), 1u);
        EXPECT_EQ(bytes_of(s), "keep");
        ipcmux_shmem_unref(s);
}

TEST(Shmem, Equal) {
        _cleanup_(ipcmux_shmem_unrefp) ipcmux_shmem *a = NULL;
        _cleanup_(ipcmux_shmem_unrefp) ipcmux_shmem *b = NULL;
        _cleanup_(ipcmux_shmem_unrefp) ipcmux_shmem *c = NULL;
        _cleanup_(ipcmux_shmem_unrefp) ipcmux_shmem *d = NULL;
        _cleanup_(ipcmux_shmem_unrefp) ipcmux_shmem *e1 = NULL;
        _cleanup_(ipcmux_shmem_unrefp) ipcmux_shmem *e2 = NULL;

        ASSERT_GE(ipcmux_shmem_new_from_bytes("hello world", 11, &a), 0);
        ASSERT_GE(ipcmux_shmem_new_from_bytes("hello world", 11, &b), 0);
        ASSERT_GE(ipcmux_shmem_new_from_bytes("hello World", 11, &c), 0);
        ASSERT_GE(ipcmux_shmem_new_from_bytes("hello worl", 10, &d), 0);
        ASSERT_GE(ipcmux_shmem_new_from_bytes(NULL, 0, &e1), 0);
        ASSERT_GE(ipcmux_shmem_new_from_bytes("", 0, &e2), 0);

        EXPECT_EQ(ipcmux_shmem_equal(a, a), 1);
        EXPECT_EQ(ipcmux_shmem_equal(a, b), 1);
        EXPECT_EQ(ipcmux_shmem_equal(b, a), 1);
        EXPECT_EQ(ipcmux_shmem_equal(a, c), 0);
        EXPECT_EQ(ipcmux_shmem_equal(a, d), 0);
        EXPECT_EQ(ipcmux_shmem_equal(d, a), 0);
        EXPECT_EQ(ipcmux_shmem_equal(e1, e2), 1);
        EXPECT_EQ(ipcmux_shmem_equal(e1, a), 0);
        EXPECT_EQ(ipcmux_shmem_equal(NULL, a), -EINVAL);
        EXPECT_EQ(ipcmux_shmem_equal(a, NULL), -EINVAL);
        EXPECT_EQ(ipcmux_shmem_equal(NULL, NULL), -EINVAL);

        /* A write through one region changes equality (no copy-on-write). */
        static_cast<char *>(ipcmux_shmem_get_mutable_data(b))[0] = 'j';
        EXPECT_EQ(ipcmux_shmem_equal(a, b), 0);
}

TEST(Shmem, RefUnref) {
        ipcmux_shmem *s = NULL;

        int r = ipcmux_shmem_new_from_bytes("ref", 3, &s);
        ASSERT_GE(r, 0) << strerror(-r);
        EXPECT_EQ(s->n_ref, 1u);
        EXPECT_EQ(ipcmux_shmem_ref(s), s);
        EXPECT_EQ(s->n_ref, 2u);
        EXPECT_EQ(ipcmux_shmem_ref(s), s);
        EXPECT_EQ(s->n_ref, 3u);
        EXPECT_EQ(ipcmux_shmem_unref(s), nullptr);
        EXPECT_EQ(s->n_ref, 2u);
        EXPECT_EQ(ipcmux_shmem_unref(s), nullptr);
        EXPECT_EQ(s->n_ref, 1u);
        EXPECT_EQ(bytes_of(s), "ref");
        EXPECT_EQ(ipcmux_shmem_unref(s), nullptr);

        EXPECT_EQ(ipcmux_shmem_unref(NULL), nullptr);
        EXPECT_EQ(ipcmux_shmem_ref(NULL), nullptr);
}

TEST(Shmem, InvalidArguments) {
        ipcmux_shmem *s = NULL;

        EXPECT_EQ(ipcmux_shmem_new(1, NULL), -EINVAL);
        EXPECT_EQ(ipcmux_shmem_new_from_bytes("x", 1, NULL), -EINVAL);
        EXPECT_EQ(ipcmux_shmem_new_from_bytes(NULL, 1, &s), -EINVAL);
        EXPECT_EQ(s, nullptr);
        EXPECT_EQ(ipcmux_shmem_new_from_byte(1, 1, NULL), -EINVAL);
        EXPECT_EQ(shmem_new(1, NULL), -EINVAL);
        EXPECT_EQ(shmem_new_from_peer_fd(0, 0, 0, NULL), -EINVAL);

        EXPECT_EQ(ipcmux_shmem_get_data(NULL), nullptr);
        EXPECT_EQ(ipcmux_shmem_get_size(NULL), 0u);
        EXPECT_EQ(ipcmux_shmem_get_mutable_data(NULL), nullptr);
        EXPECT_EQ(ipcmux_shmem_get_fd(NULL), -EINVAL);
}

TEST(Shmem, TooBig) {
        ipcmux_shmem *s = NULL;

        EXPECT_EQ(ipcmux_shmem_new(SIZE_MAX, &s), -EFBIG);
        EXPECT_EQ(ipcmux_shmem_new((size_t) INT64_MAX + 1, &s), -EFBIG);
        EXPECT_EQ(ipcmux_shmem_new_from_byte(1, SIZE_MAX, &s), -EFBIG);
        EXPECT_EQ(shmem_new(UINT64_MAX, &s), -EFBIG);
        EXPECT_EQ(shmem_new((uint64_t) INT64_MAX + 1, &s), -EFBIG);
        EXPECT_EQ(s, nullptr);
}

TEST(Shmem, CleanupHelper) {
        unsigned before = count_fds();
        {
                _cleanup_(ipcmux_shmem_unrefp) ipcmux_shmem *s = NULL;
                ASSERT_GE(ipcmux_shmem_new(100, &s), 0);
                EXPECT_EQ(count_fds(), before + 1);
        }
        EXPECT_EQ(count_fds(), before);
}

/* ---- seals on created regions -------------------------------------------- */

TEST(Shmem, CreatedRegionIsSealed) {
        for (size_t size : {(size_t) 0, (size_t) 1, (size_t) 4096, (size_t) 5000}) {
                _cleanup_(ipcmux_shmem_unrefp) ipcmux_shmem *s = NULL;

                int r = ipcmux_shmem_new(size, &s);
                ASSERT_GE(r, 0) << strerror(-r);
                int fd = ipcmux_shmem_get_fd(s);

                int seals = fcntl(fd, F_GET_SEALS);
                ASSERT_GE(seals, 0) << strerror(errno);
                int want = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL;
                EXPECT_EQ(seals & want, want) << "seals=" << seals;
                /* Mutable shared buffer: no write seals. */
                EXPECT_EQ(seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE), 0);

                int fl = fcntl(fd, F_GETFD);
                ASSERT_GE(fl, 0);
                EXPECT_TRUE(fl & FD_CLOEXEC);

                struct stat st;
                ASSERT_EQ(fstat(fd, &st), 0);
                EXPECT_TRUE(S_ISREG(st.st_mode));
                EXPECT_EQ((uint64_t) st.st_size, (uint64_t) size);
                EXPECT_EQ(st.st_mode & 0111, 0u) << "region must not be executable";

                /* Nobody can resize it or add seals any more. */
                EXPECT_EQ(ftruncate(fd, (off_t) size + 4096), -1);
                EXPECT_EQ(errno, EPERM);
                if (size > 0) {
                        EXPECT_EQ(ftruncate(fd, 0), -1);
                        EXPECT_EQ(errno, EPERM);
                }
                EXPECT_EQ(fcntl(fd, F_ADD_SEALS, F_SEAL_WRITE), -1);
                EXPECT_EQ(errno, EPERM);
                EXPECT_EQ(fallocate(fd, 0, 0, (off_t) size + 4096), -1);

                ASSERT_EQ(fstat(fd, &st), 0);
                EXPECT_EQ((uint64_t) st.st_size, (uint64_t) size);
                EXPECT_EQ(ipcmux_shmem_get_size(s), size);
        }
}

TEST(Shmem, CreatedMappingIsSharedReadWrite) {
        _cleanup_(ipcmux_shmem_unrefp) ipcmux_shmem *s = NULL;

        ASSERT_GE(ipcmux_shmem_new(4096, &s), 0);
        EXPECT_EQ(maps_perms(ipcmux_shmem_get_data(s)), "rw-s");
}

/* ---- import of a peer's fd (reliability.md B1, B2, B4, B6) -------------- */

TEST(ShmemPeer, ValidRegion) {
        static const char msg[] = "from a peer";
        _cleanup_(ipcmux_shmem_unrefp) ipcmux_shmem *s = NULL;

        int fd = make_sealed_memfd("ipcmux-test-valid", sizeof(msg));
        ASSERT_GE(fd, 0) << strerror(errno);
        ASSERT_EQ(pwrite(fd, msg, sizeof(msg), 0), (ssize_t) sizeof(msg));

        unsigned before = count_fds();
        int r = shmem_new_from_peer_fd(fd, sizeof(msg), 1 * MiB, &s);
        ASSERT_GE(r, 0) << strerror(-r);
        EXPECT_EQ(count_fds(), before + 1);   /* dup'ed, not taken */

        EXPECT_EQ(ipcmux_shmem_get_size(s), sizeof(msg));
        EXPECT_EQ(memcmp(ipcmux_shmem_get_data(s), msg, sizeof(msg)), 0);
        EXPECT_EQ(ipcmux_shmem_get_mutable_data(s), nullptr);
        EXPECT_FALSE(s->writable);
        EXPECT_NE(ipcmux_shmem_get_fd(s), fd);
        EXPECT_GE(ipcmux_shmem_get_fd(s), 3);
        int fl = fcntl(ipcmux_shmem_get_fd(s), F_GETFD);
        EXPECT_TRUE(fl >= 0 && (fl & FD_CLOEXEC));

        /* Mapped read-only, shared. */
        EXPECT_EQ(maps_perms(ipcmux_shmem_get_data(s)), "r--s");

        /* The peer's fd is independent of ours. */
        ASSERT_EQ(close(fd), 0);
        EXPECT_EQ(memcmp(ipcmux_shmem_get_data(s), msg, sizeof(msg)), 0);
        struct stat st;
        ASSERT_EQ(fstat(ipcmux_shmem_get_fd(s), &st), 0);
        EXPECT_EQ((uint64_t) st.st_size, sizeof(msg));
}

TEST(ShmemPeer, ExactQuotaIsAccepted) {
        _cleanup_(ipcmux_shmem_unrefp) ipcmux_shmem *s = NULL;

        int fd = make_sealed_memfd("ipcmux-test-quota", 8192);
        ASSERT_GE(fd, 0) << strerror(errno);
        int r = shmem_new_from_peer_fd(fd, 8192, 8192, &s);
        EXPECT_GE(r, 0) << strerror(-r);
        close(fd);
}

TEST(ShmemPeerDeathTest, WriteToImportedRegionFaults) {
        GTEST_FLAG_SET(death_test_style, "threadsafe");
        _cleanup_(ipcmux_shmem_unrefp) ipcmux_shmem *s = NULL;

        int fd = make_sealed_memfd("ipcmux-test-ro", 4096);
        ASSERT_GE(fd, 0) << strerror(errno);
        int r = shmem_new_from_peer_fd(fd, 4096, 4096, &s);
        ASSERT_GE(r, 0) << strerror(-r);
        close(fd);

        volatile uint8_t *p = static_cast<volatile uint8_t *>(const_cast<void *>(ipcmux_shmem_get_data(s)));
        EXPECT_DEATH({ p[0] = 1; }, "");
        EXPECT_EQ(p[0], 0);
}

TEST(ShmemPeer, ImportOwnRegionSharesMemory) {
        _cleanup_(ipcmux_shmem_unrefp) ipcmux_shmem *w = NULL;
        _cleanup_(ipcmux_shmem_unrefp) ipcmux_shmem *ro = NULL;

        ASSERT_GE(ipcmux_shmem_new_from_bytes("before", 6, &w), 0);
        int r = shmem_new_from_peer_fd(ipcmux_shmem_get_fd(w), 6, 6, &ro);
        ASSERT_GE(r, 0) << strerror(-r);
        EXPECT_EQ(ipcmux_shmem_equal(w, ro), 1);
        EXPECT_EQ(ipcmux_shmem_get_mutable_data(ro), nullptr);

        /* Writes after "sending" are visible to the receiver. */
        memcpy(ipcmux_shmem_get_mutable_data(w), "AFTER!", 6);
        EXPECT_EQ(bytes_of(ro), "AFTER!");
}

TEST(ShmemPeer, EmptyRegion) {
        _cleanup_(ipcmux_shmem_unrefp) ipcmux_shmem *s = NULL;

        int fd = make_sealed_memfd("ipcmux-test-empty", 0);
        ASSERT_GE(fd, 0) << strerror(errno);
        int r = shmem_new_from_peer_fd(fd, 0, 0, &s);
        ASSERT_GE(r, 0) << strerror(-r);
        close(fd);
        EXPECT_EQ(ipcmux_shmem_get_size(s), 0u);
        EXPECT_NE(ipcmux_shmem_get_data(s), nullptr);
        EXPECT_EQ(ipcmux_shmem_get_mutable_data(s), nullptr);

        void *data = NULL;
        size_t size = 1;
        ipcmux_shmem *t = s;
        s = NULL;
        ASSERT_GE(ipcmux_shmem_take(t, &data, &size), 0);
        EXPECT_NE(data, nullptr);
        EXPECT_EQ(size, 0u);
        free(data);
}

TEST(ShmemPeer, WriteSealedRegionIsAccepted) {
        _cleanup_(ipcmux_shmem_unrefp) ipcmux_shmem *s = NULL;

        int fd = make_memfd("ipcmux-test-immutable", MFD_CLOEXEC | MFD_ALLOW_SEALING, 4096, 0);
        ASSERT_GE(fd, 0) << strerror(errno);
        ASSERT_EQ(pwrite(fd, "blob", 4, 0), 4);
        ASSERT_EQ(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL), 0);
        int r = shmem_new_from_peer_fd(fd, 4096, 4096, &s);
        ASSERT_GE(r, 0) << strerror(-r);
        close(fd);
        EXPECT_EQ(memcmp(ipcmux_shmem_get_data(s), "blob", 4), 0);
}

TEST(ShmemPeer, NotAMemfd) {
        unsigned before = count_fds();
        ipcmux_shmem *s = NULL;
        int p[2];

        /* A pipe: F_GET_SEALS fails. */
        ASSERT_EQ(pipe2(p, O_CLOEXEC), 0);
        EXPECT_EQ(shmem_new_from_peer_fd(p[0], 0, 1 * MiB, &s), -EBADF);
        EXPECT_EQ(shmem_new_from_peer_fd(p[1], 4096, 1 * MiB, &s), -EBADF);
        close(p[0]);
        close(p[1]);

        /* A socket. */
        int sv[2];
        ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
        EXPECT_EQ(shmem_new_from_peer_fd(sv[0], 0, 1 * MiB, &s), -EBADF);
        close(sv[0]);
        close(sv[1]);

        /* A character device. */
        int fd = open("/dev/zero", O_RDONLY | O_CLOEXEC);
        ASSERT_GE(fd, 0);
        EXPECT_EQ(shmem_new_from_peer_fd(fd, 4096, 1 * MiB, &s), -EBADF);
        close(fd);

        /* A directory and an O_PATH fd. */
        fd = open("/proc", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        ASSERT_GE(fd, 0);
        EXPECT_EQ(shmem_new_from_peer_fd(fd, 0, 1 * MiB, &s), -EBADF);
        close(fd);
        fd = open("/proc/self/exe", O_PATH | O_CLOEXEC);
        ASSERT_GE(fd, 0);
        EXPECT_EQ(shmem_new_from_peer_fd(fd, 0, 1 * MiB, &s), -EBADF);
        close(fd);

        /* An invalid fd number. */
        EXPECT_EQ(shmem_new_from_peer_fd(-1, 0, 1 * MiB, &s), -EBADF);
        EXPECT_EQ(shmem_new_from_peer_fd(100000, 0, 1 * MiB, &s), -EBADF);

        /* A regular file: not shmem (-EBADF), or a tmpfs file whose only seal
         * is F_SEAL_SEAL (-EPERM).  Never accepted. */
        char path[] = "/tmp/ipcmux-test-shmem-XXXXXX";
        fd = mkostemp(path, O_CLOEXEC);
        ASSERT_GE(fd, 0);
        unlink(path);
        ASSERT_EQ(ftruncate(fd, 4096), 0);
        int r = shmem_new_from_peer_fd(fd, 4096, 1 * MiB, &s);
        EXPECT_TRUE(r == -EBADF || r == -EPERM) << strerror(-r);
        close(fd);

        EXPECT_EQ(s, nullptr);
        EXPECT_EQ(count_fds(), before);
}

TEST(ShmemPeer, UnsealedMemfd) {
        ipcmux_shmem *s = NULL;
        unsigned before = count_fds();

        /* Sealable but never sealed: could be shrunk under our mapping. */
        int fd = make_memfd("ipcmux-test-unsealed", MFD_CLOEXEC | MFD_ALLOW_SEALING, 4096, 0);
        ASSERT_GE(fd, 0) << strerror(errno);
        EXPECT_EQ(shmem_new_from_peer_fd(fd, 4096, 1 * MiB, &s), -EPERM);
        close(fd);

        /* Half sealed. */
        fd = make_memfd("ipcmux-test-shrink", MFD_CLOEXEC | MFD_ALLOW_SEALING, 4096, F_SEAL_SHRINK | F_SEAL_SEAL);
        ASSERT_GE(fd, 0) << strerror(errno);
        EXPECT_EQ(shmem_new_from_peer_fd(fd, 4096, 1 * MiB, &s), -EPERM);
        close(fd);
        fd = make_memfd("ipcmux-test-grow", MFD_CLOEXEC | MFD_ALLOW_SEALING, 4096, F_SEAL_GROW);
        ASSERT_GE(fd, 0) << strerror(errno);
        EXPECT_EQ(shmem_new_from_peer_fd(fd, 4096, 1 * MiB, &s), -EPERM);
        close(fd);

        EXPECT_EQ(s, nullptr);
        EXPECT_EQ(count_fds(), before);
        EXPECT_EQ(count_maps("ipcmux-test-"), 0u);
}

TEST(ShmemPeer, MemfdWithoutAllowSealing) {
        ipcmux_shmem *s = NULL;

        int fd = make_memfd("ipcmux-test-nosealing", MFD_CLOEXEC, 4096, 0);
        ASSERT_GE(fd, 0) << strerror(errno);
        int seals = fcntl(fd, F_GET_SEALS);
        ASSERT_GE(seals, 0);
        EXPECT_EQ(seals & F_SEAL_SEAL, F_SEAL_SEAL);
        EXPECT_EQ(shmem_new_from_peer_fd(fd, 4096, 1 * MiB, &s), -EPERM);
        close(fd);
        EXPECT_EQ(s, nullptr);
}

TEST(ShmemPeer, WrongSize) {
        ipcmux_shmem *s = NULL;
        unsigned before = count_fds();

        int fd = make_sealed_memfd("ipcmux-test-size", 4096);
        ASSERT_GE(fd, 0) << strerror(errno);
        /* Announced bigger than the file: would SIGBUS past EOF. */
        EXPECT_EQ(shmem_new_from_peer_fd(fd, 8192, 1 * MiB, &s), -EBADMSG);
        EXPECT_EQ(shmem_new_from_peer_fd(fd, 4097, 1 * MiB, &s), -EBADMSG);
        /* Announced smaller: the size is exact, not a lower bound. */
        EXPECT_EQ(shmem_new_from_peer_fd(fd, 4095, 1 * MiB, &s), -EBADMSG);
        EXPECT_EQ(shmem_new_from_peer_fd(fd, 0, 1 * MiB, &s), -EBADMSG);
        /* 64-bit announced sizes that alias 4096 when truncated to 32 bits. */
        EXPECT_EQ(shmem_new_from_peer_fd(fd, (1ULL << 32) + 4096, UINT64_MAX, &s), -EBADMSG);
        EXPECT_EQ(shmem_new_from_peer_fd(fd, UINT64_MAX, UINT64_MAX, &s), -EBADMSG);
        close(fd);

        EXPECT_EQ(s, nullptr);
        EXPECT_EQ(count_fds(), before);
        EXPECT_EQ(count_maps("ipcmux-test-size"), 0u);
}

TEST(ShmemPeer, AboveQuotaIsNotMapped) {
        ipcmux_shmem *s = NULL;
        unsigned before = count_fds();

        /* Sparse 64 GiB: costs nothing until somebody touches it. */
        int fd = make_sealed_memfd("ipcmux-test-huge", 64 * GiB);
        ASSERT_GE(fd, 0) << strerror(errno);
        EXPECT_EQ(shmem_new_from_peer_fd(fd, 64 * GiB, 1 * GiB, &s), -EFBIG);
        EXPECT_EQ(count_maps("ipcmux-test-huge"), 0u);
        EXPECT_EQ(count_fds(), before + 1);
        close(fd);

        fd = make_sealed_memfd("ipcmux-test-quota1", 4097);
        ASSERT_GE(fd, 0) << strerror(errno);
        EXPECT_EQ(shmem_new_from_peer_fd(fd, 4097, 4096, &s), -EFBIG);
        EXPECT_EQ(shmem_new_from_peer_fd(fd, 4097, 0, &s), -EFBIG);
        close(fd);

        EXPECT_EQ(s, nullptr);
        EXPECT_EQ(count_fds(), before);
        EXPECT_EQ(count_maps("ipcmux-test-"), 0u);
}

TEST(ShmemPeer, MmapFailureLeaksNothing) {
        ipcmux_shmem *s = NULL;

        int fd = make_sealed_memfd("ipcmux-test-wronly", 4096);
        ASSERT_GE(fd, 0) << strerror(errno);
        char path[64];
        snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
        int wfd = open(path, O_WRONLY | O_CLOEXEC);
        ASSERT_GE(wfd, 0) << strerror(errno);
        close(fd);

        /* Passes every check, but a write-only fd cannot be mapped PROT_READ. */
        unsigned before = count_fds();
        int r = shmem_new_from_peer_fd(wfd, 4096, 4096, &s);
        EXPECT_EQ(r, -EACCES) << strerror(-r);
        EXPECT_EQ(s, nullptr);
        EXPECT_EQ(count_fds(), before);
        EXPECT_EQ(count_maps("ipcmux-test-wronly"), 0u);
        close(wfd);
}

/* Catches 32-bit truncation of sizes and offsets anywhere on the path. */
TEST(ShmemPeer, Above4GiB) {
        const uint64_t size = 4 * GiB + 4 * KiB;
        _cleanup_(ipcmux_shmem_unrefp) ipcmux_shmem *s = NULL;
        std::vector<uint8_t> tail(4 * KiB), head(4 * KiB, 0x11);

        for (size_t i = 0; i < tail.size(); i++)
                tail[i] = (uint8_t) (i * 7 + 3);

        int fd = make_memfd("ipcmux-test-4g", MFD_CLOEXEC | MFD_ALLOW_SEALING, size, 0);
        ASSERT_GE(fd, 0) << strerror(errno);
        ASSERT_EQ(pwrite(fd, head.data(), head.size(), 0), (ssize_t) head.size());
        ASSERT_EQ(pwrite(fd, tail.data(), tail.size(), (off_t) (4 * GiB)), (ssize_t) tail.size());
        ASSERT_EQ(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL), 0);

        EXPECT_EQ(shmem_new_from_peer_fd(fd, size, 4 * GiB, &s), -EFBIG);
        int r = shmem_new_from_peer_fd(fd, size, size, &s);
        ASSERT_GE(r, 0) << strerror(-r);
        close(fd);

        ASSERT_EQ((uint64_t) ipcmux_shmem_get_size(s), size);
        const uint8_t *p = static_cast<const uint8_t *>(ipcmux_shmem_get_data(s));
        EXPECT_EQ(memcmp(p + 4 * GiB, tail.data(), tail.size()), 0);
        EXPECT_EQ(memcmp(p, head.data(), head.size()), 0);
        EXPECT_EQ(p[2 * GiB], 0); /* a hole reads as zero */
}

TEST(Shmem, CreateAbove4GiB) {
        const uint64_t size = 4 * GiB + 4 * KiB;
        _cleanup_(ipcmux_shmem_unrefp) ipcmux_shmem *s = NULL;

        int r = ipcmux_shmem_new((size_t) size, &s);
        ASSERT_GE(r, 0) << strerror(-r);
        ASSERT_EQ((uint64_t) ipcmux_shmem_get_size(s), size);

        struct stat st;
        ASSERT_EQ(fstat(ipcmux_shmem_get_fd(s), &st), 0);
        EXPECT_EQ((uint64_t) st.st_size, size);

        uint8_t *p = static_cast<uint8_t *>(ipcmux_shmem_get_mutable_data(s));
        ASSERT_NE(p, nullptr);
        p[size - 1] = 0x5A;
        p[4 * GiB] = 0xA5;
        uint8_t b[2] = {};
        ASSERT_EQ(pread(ipcmux_shmem_get_fd(s), &b[0], 1, (off_t) (size - 1)), 1);
        ASSERT_EQ(pread(ipcmux_shmem_get_fd(s), &b[1], 1, (off_t) (4 * GiB)), 1);
        EXPECT_EQ(b[0], 0x5A);
        EXPECT_EQ(b[1], 0xA5);
        EXPECT_EQ(pread(ipcmux_shmem_get_fd(s), &b[0], 1, 0), 1);
        EXPECT_EQ(b[0], 0);
}

/* ---- leaks ---------------------------------------------------------------- */

TEST(Shmem, NoFdOrMappingLeak) {
        unsigned fds_before = count_fds();
        unsigned maps_before = count_maps("memfd:ipcmux-shmem");

        for (unsigned i = 0; i < 1000; i++) {
                ipcmux_shmem *w = NULL, *ro = NULL, *bad = NULL;
                uint8_t buf[64];
                size_t size = i % 3 == 0 ? 0 : (i % 3 == 1 ? 64 : 8192);

                memset(buf, (int) i, sizeof(buf));
                int r = size == 64 ? ipcmux_shmem_new_from_bytes(buf, size, &w)
                                   : ipcmux_shmem_new_from_byte((uint8_t) i, size, &w);
                ASSERT_GE(r, 0) << strerror(-r);

                r = shmem_new_from_peer_fd(ipcmux_shmem_get_fd(w), size, 1 * MiB, &ro);
                ASSERT_GE(r, 0) << strerror(-r);
                ASSERT_EQ(ipcmux_shmem_equal(w, ro), 1);

                /* Failure paths must not leak either. */
                ASSERT_EQ(shmem_new_from_peer_fd(ipcmux_shmem_get_fd(w), size + 1, 1 * MiB, &bad), -EBADMSG);
                if (size > 0) {
                        ASSERT_EQ(shmem_new_from_peer_fd(ipcmux_shmem_get_fd(w), size, size - 1, &bad), -EFBIG);
                }

                ipcmux_shmem_ref(ro);
                ipcmux_shmem_unref(ro);
                if (i % 2) {
                        void *data = NULL;
                        ASSERT_GE(ipcmux_shmem_take(ro, &data, NULL), 0);
                        free(data);
                } else
                        ipcmux_shmem_unref(ro);
                ipcmux_shmem_unref(w);
        }

        EXPECT_EQ(count_fds(), fds_before);
        EXPECT_EQ(count_maps("memfd:ipcmux-shmem"), maps_before);
}

/* ---- the sender-side pool (plugin/shmem.c) -------------------------------- */

namespace {

/* Turns the pool on for one test (the test environment turns it off) and
 * leaves it empty and off again. */
struct PoolOn {
        PoolOn() { shmem_pool_set_limit(32 * MiB); }
        ~PoolOn() { shmem_pool_set_limit(0); }
};

}

/* A region nobody else holds comes back: same memfd, same mapping, zeroed. */
TEST(ShmemPool, ReusedWhenNobodyHoldsIt) {
        PoolOn on;
        unsigned fds_before = count_fds();
        ipcmux_shmem *s = NULL;
        struct stat st1, st2;

        ASSERT_GE(ipcmux_shmem_new_from_byte(0xab, 1 * MiB, &s), 0);
        EXPECT_NE(shmem_get_fd(s), s->fd) << "sent as a description of its own";
        EXPECT_EQ(fcntl(shmem_get_fd(s), F_GETFL) & O_ACCMODE, O_RDONLY);
        ASSERT_EQ(fstat(s->fd, &st1), 0);
        EXPECT_EQ(st1.st_mode & 07777, 0u) << "nobody may reopen it by path";
        const void *p1 = ipcmux_shmem_get_data(s);
        ipcmux_shmem_unref(s);
        EXPECT_EQ(shmem_pool_count(), 1u);

        ASSERT_GE(ipcmux_shmem_new(1 * MiB, &s), 0);
        EXPECT_EQ(shmem_pool_count(), 0u);
        ASSERT_EQ(fstat(s->fd, &st2), 0);
        EXPECT_EQ(st1.st_ino, st2.st_ino);
        EXPECT_EQ(ipcmux_shmem_get_data(s), p1);
        const uint8_t *d = (const uint8_t *) ipcmux_shmem_get_data(s);
        EXPECT_EQ(d[0], 0);
        EXPECT_EQ(d[1 * MiB - 1], 0);
        int seals = fcntl(shmem_get_fd(s), F_GET_SEALS);
        EXPECT_EQ(seals & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL), F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
        ipcmux_shmem_unref(s);

        /* Another size never takes it. */
        ASSERT_GE(ipcmux_shmem_new(2 * MiB, &s), 0);
        EXPECT_EQ(shmem_pool_count(), 1u);
        ipcmux_shmem_unref(s);
        EXPECT_EQ(shmem_pool_count(), 2u);
        shmem_pool_flush();
        EXPECT_EQ(count_fds(), fds_before);
        EXPECT_EQ(count_maps("memfd:ipcmux-shmem"), 0u);
}

/* While anybody holds what was sent (an fd, a dup, a mapping, as a receiver
 * or a message in flight does), the memfd is never handed out again: the
 * holder must never see the bytes of a later region. */
TEST(ShmemPool, NeverReusedWhileHeld) {
        PoolOn on;
        ipcmux_shmem *s = NULL, *t = NULL, *rx = NULL;
        struct stat st1, st2;

        for (int how = 0; how < 3; how++) {
                ASSERT_GE(ipcmux_shmem_new_from_byte('a', 256 * KiB, &s), 0);
                ASSERT_EQ(fstat(s->fd, &st1), 0);
                int held = -1;
                if (how == 0)   /* an fd of what was sent, as in a socket or a broker */
                        held = fcntl(shmem_get_fd(s), F_DUPFD_CLOEXEC, 3);
                else            /* a receiver's region: fd + read-only mapping */
                        ASSERT_GE(shmem_new_from_peer_fd(shmem_get_fd(s), 256 * KiB, 1 * GiB, &rx), 0);
                if (how == 2) { /* ... and only its mapping left */
                        close(rx->fd);
                        rx->fd = -1;
                }
                ipcmux_shmem_unref(s);
                ASSERT_EQ(shmem_pool_count(), 1u);

                ASSERT_GE(ipcmux_shmem_new_from_byte('b', 256 * KiB, &t), 0);
                ASSERT_EQ(fstat(t->fd, &st2), 0);
                EXPECT_NE(st1.st_ino, st2.st_ino) << "handed out while held (case " << how << ")";
                EXPECT_EQ(shmem_pool_count(), 1u);
                if (rx) {
                        EXPECT_EQ(((const uint8_t *) ipcmux_shmem_get_data(rx))[0], 'a');
                }
                ipcmux_shmem_unref(t);

                /* Once released, it is reusable: but a received region's
                 * mapping stays cached after its last unref, and holds it. */
                if (held >= 0)
                        close(held);
                rx = ipcmux_shmem_unref(rx);
                if (how > 0) {
                        EXPECT_EQ(shmem_rxcache_count(), 1u);
                        ASSERT_GE(ipcmux_shmem_new(256 * KiB, &t), 0);
                        ASSERT_EQ(fstat(t->fd, &st2), 0);
                        EXPECT_NE(st1.st_ino, st2.st_ino) << "reused under a cached mapping (case " << how << ")";
                        ipcmux_shmem_unref(t);
                        shmem_rxcache_flush();
                }
                ASSERT_GE(ipcmux_shmem_new(256 * KiB, &t), 0);
                ASSERT_EQ(fstat(t->fd, &st2), 0);
                EXPECT_EQ(st1.st_ino, st2.st_ino) << "case " << how;
                ipcmux_shmem_unref(t);
                shmem_pool_flush();
        }
}

/* ipcmux_shmem_get_fd() hands out the read-write description: never pooled.
 * Neither are small regions, nor regions above the bounds. */
TEST(ShmemPool, NotPooled) {
        PoolOn on;
        ipcmux_shmem *s = NULL;

        ASSERT_GE(ipcmux_shmem_new(1 * MiB, &s), 0);
        EXPECT_GE(ipcmux_shmem_get_fd(s), 0);
        ipcmux_shmem_unref(s);
        EXPECT_EQ(shmem_pool_count(), 0u);

        ASSERT_GE(ipcmux_shmem_new(4 * KiB, &s), 0);
        EXPECT_EQ(shmem_get_fd(s), s->fd);
        ipcmux_shmem_unref(s);
        ASSERT_GE(ipcmux_shmem_new(64 * MiB, &s), 0);
        EXPECT_EQ(shmem_get_fd(s), s->fd);
        ipcmux_shmem_unref(s);
        EXPECT_EQ(shmem_pool_count(), 0u);
}

/* Bounded: at most 32 MiB (here) of parked regions, oldest evicted. */
TEST(ShmemPool, Bounded) {
        PoolOn on;
        unsigned fds_before = count_fds();
        std::vector<ipcmux_shmem *> v;

        for (int i = 0; i < 40; i++) {
                ipcmux_shmem *s = NULL;
                ASSERT_GE(ipcmux_shmem_new(1 * MiB, &s), 0);
                v.push_back(s);
        }
        for (ipcmux_shmem *s : v)
                ipcmux_shmem_unref(s);
        EXPECT_LE(shmem_pool_count(), 16u);
        EXPECT_LE(count_fds(), fds_before + 2 * 16);
        v.clear();
        for (int i = 0; i < 3; i++) {
                ipcmux_shmem *s = NULL;
                ASSERT_GE(ipcmux_shmem_new(16 * MiB, &s), 0);
                v.push_back(s);
        }
        for (ipcmux_shmem *s : v)
                ipcmux_shmem_unref(s);
        EXPECT_LE(shmem_pool_count(), 2u) << "32 MiB: two 16 MiB regions";
        shmem_pool_flush();
        EXPECT_EQ(count_fds(), fds_before);
}

/* A forked child neither takes from nor returns to its parent's pool. */
TEST(ShmemPool, ForkedChildKeepsOff) {
        PoolOn on;
        ipcmux_shmem *s = NULL;

        ASSERT_GE(ipcmux_shmem_new(1 * MiB, &s), 0);
        ipcmux_shmem *parked = NULL;
        ASSERT_GE(ipcmux_shmem_new(1 * MiB, &parked), 0);
        ipcmux_shmem_unref(parked);
        ASSERT_EQ(shmem_pool_count(), 1u);
        pid_t pid = fork();
        ASSERT_GE(pid, 0);
        if (pid == 0) {
                ipcmux_shmem *t = NULL;
                int ok = ipcmux_shmem_new(1 * MiB, &t) >= 0 && shmem_pool_count() == 1 && shmem_get_fd(t) == t->fd;
                ipcmux_shmem_unref(t);
                ipcmux_shmem_unref(s);
                ok = ok && shmem_pool_count() == 1;
                _exit(ok ? 0 : 1);
        }
        int status = 0;
        ASSERT_EQ(waitpid(pid, &status, 0), pid);
        EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        ipcmux_shmem_unref(s);
        EXPECT_EQ(shmem_pool_count(), 2u);
}

/* The receiver's mapping cache: the same memfd again reuses the mapping,
 * after the same checks; it holds no fd; bounded. */
TEST(ShmemPool, ReceiverMappingCache) {
        PoolOn on;
        unsigned fds_before = count_fds();
        ipcmux_shmem *w = NULL, *w2 = NULL, *r1 = NULL, *r2 = NULL;

        ASSERT_GE(ipcmux_shmem_new_from_byte('x', 1 * MiB, &w), 0);
        ASSERT_GE(ipcmux_shmem_new_from_byte('y', 1 * MiB, &w2), 0);
        ASSERT_GE(shmem_new_from_peer_fd(shmem_get_fd(w), 1 * MiB, 1 * GiB, &r1), 0);
        const void *p1 = ipcmux_shmem_get_data(r1);
        ipcmux_shmem_unref(r1);
        EXPECT_EQ(shmem_rxcache_count(), 1u);
        EXPECT_EQ(count_fds(), fds_before + 4) << "the cache holds no fd";

        /* Checks first, whatever is cached. */
        EXPECT_EQ(shmem_new_from_peer_fd(shmem_get_fd(w), 1 * MiB + 1, 1 * GiB, &r1), -EBADMSG);
        EXPECT_EQ(shmem_new_from_peer_fd(shmem_get_fd(w), 1 * MiB, 1 * KiB, &r1), -EFBIG);
        /* Another memfd does not get it. */
        ASSERT_GE(shmem_new_from_peer_fd(shmem_get_fd(w2), 1 * MiB, 1 * GiB, &r2), 0);
        EXPECT_NE(ipcmux_shmem_get_data(r2), p1);
        EXPECT_EQ(((const uint8_t *) ipcmux_shmem_get_data(r2))[0], 'y');
        EXPECT_EQ(shmem_rxcache_count(), 1u);
        /* The same one does, and sees the current bytes. */
        memset(ipcmux_shmem_get_mutable_data(w), 'z', 1 * MiB);
        ASSERT_GE(shmem_new_from_peer_fd(shmem_get_fd(w), 1 * MiB, 1 * GiB, &r1), 0);
        EXPECT_EQ(ipcmux_shmem_get_data(r1), p1);
        EXPECT_EQ(((const uint8_t *) ipcmux_shmem_get_data(r1))[1 * MiB - 1], 'z');
        EXPECT_EQ(shmem_rxcache_count(), 0u);
        EXPECT_EQ(ipcmux_shmem_get_mutable_data(r1), nullptr);
        ipcmux_shmem_unref(r1);
        ipcmux_shmem_unref(r2);
        EXPECT_EQ(shmem_rxcache_count(), 2u);

        /* Bounded: 4 entries. */
        std::vector<ipcmux_shmem *> ws, rs;
        for (int i = 0; i < 6; i++) {
                ipcmux_shmem *a = NULL, *b = NULL;
                ASSERT_GE(ipcmux_shmem_new(1 * MiB, &a), 0);
                ASSERT_GE(shmem_new_from_peer_fd(shmem_get_fd(a), 1 * MiB, 1 * GiB, &b), 0);
                ws.push_back(a);
                rs.push_back(b);
        }
        for (ipcmux_shmem *b : rs)
                ipcmux_shmem_unref(b);
        EXPECT_EQ(shmem_rxcache_count(), 4u);
        for (ipcmux_shmem *a : ws)
                ipcmux_shmem_unref(a);
        ipcmux_shmem_unref(w);
        ipcmux_shmem_unref(w2);
        shmem_pool_flush();
        EXPECT_EQ(shmem_rxcache_count(), 0u);
        EXPECT_EQ(count_fds(), fds_before);
        EXPECT_EQ(count_maps("memfd:ipcmux-shmem"), 0u);
}

/* Threads creating, "receiving" and dropping poolable regions at once: every
 * region holds its own bytes (run under TSan/ASan too). */
TEST(ShmemPool, Threads) {
        PoolOn on;
        unsigned fds_before = count_fds();
        std::vector<std::thread> ts;
        std::atomic<int> bad{0};

        for (int t = 0; t < 4; t++)
                ts.emplace_back([t, &bad] {
                        for (int i = 0; i < 200; i++) {
                                ipcmux_shmem *s = NULL, *r = NULL;
                                uint8_t b = (uint8_t) (t * 50 + i);
                                if (ipcmux_shmem_new_from_byte(b, 128 * KiB, &s) < 0 ||
                                    shmem_new_from_peer_fd(shmem_get_fd(s), 128 * KiB, 1 * GiB, &r) < 0) {
                                        bad++;
                                        break;
                                }
                                const uint8_t *d = (const uint8_t *) ipcmux_shmem_get_data(r);
                                if (d[0] != b || d[128 * KiB - 1] != b)
                                        bad++;
                                ipcmux_shmem_unref(s);
                                ipcmux_shmem_unref(r);
                        }
                });
        for (auto &th : ts)
                th.join();
        EXPECT_EQ(bad.load(), 0);
        shmem_pool_flush();
        EXPECT_EQ(count_fds(), fds_before);
}
