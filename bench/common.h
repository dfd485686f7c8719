/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Shared helpers for bench-raw and bench-ipcmux (timing, checksums, results).
 * Copied from shared/bench-baselines/common.h; keep the RESULT format: run.sh
 * and shared/bench-baselines/run-baselines.sh (EXTRA=...) both parse it. */
#pragma once

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MIB (1024.0 * 1024.0)

static inline double now_s(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}

static inline uint64_t now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000000ull + (uint64_t) ts.tv_nsec;
}

_Noreturn static inline void die(const char *fmt, ...) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(stderr, "bench: ");
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
        exit(2);
}

/* Parse "64", "4K", "1M", "256M", "1G" (binary units). */
static inline size_t parse_size(const char *s) {
        char *end = NULL;
        unsigned long long v = strtoull(s, &end, 10);
        if (end == s)
                die("bad size '%s'", s);
        switch (*end) {
        case 'k': case 'K': v <<= 10; break;
        case 'm': case 'M': v <<= 20; break;
        case 'g': case 'G': v <<= 30; break;
        case '\0': break;
        default: die("bad size suffix in '%s'", s);
        }
        return (size_t) v;
}

/* Read-every-byte checksum: sum of 64-bit words plus tail bytes. Memory-bound
 * and vectorisable, so it measures "the receiver touched all bytes". */
__attribute__((noinline, unused)) static uint64_t checksum(const void *p, size_t n) {
        const unsigned char *b = p;
        uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
        size_t i = 0;
        for (; i + 32 <= n; i += 32) {
                uint64_t w[4];
                memcpy(w, b + i, 32);
                s0 += w[0]; s1 += w[1]; s2 += w[2]; s3 += w[3];
        }
        for (; i < n; i++)
                s0 += b[i];
        return s0 + s1 + s2 + s3;
}

static inline void fill_pattern(void *p, size_t n, uint64_t seed) {
        uint64_t *w = p;
        size_t i;
        for (i = 0; i < n / 8; i++)
                w[i] = (seed + i) * 0x9E3779B97F4A7C15ull;
        for (i = (n / 8) * 8; i < n; i++)
                ((unsigned char *) p)[i] = (unsigned char) (seed + i);
}

__attribute__((unused)) static int cmp_u64(const void *a, const void *b) {
        uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
        return x < y ? -1 : x > y;
}

/* Latency summary from an array of nanosecond samples (sorted in place). */
static inline void lat_summary(uint64_t *ns, size_t n, double *p50_us, double *p99_us, double *mean_us) {
        double sum = 0;
        if (n == 0) {
                *p50_us = *p99_us = *mean_us = 0;
                return;
        }
        qsort(ns, n, sizeof(*ns), cmp_u64);
        for (size_t i = 0; i < n; i++)
                sum += (double) ns[i];
        *p50_us = (double) ns[n / 2] / 1e3;
        *p99_us = (double) ns[(size_t) ((double) (n - 1) * 0.99)] / 1e3;
        *mean_us = sum / (double) n / 1e3;
}

/* One machine-readable result line, parsed by run-baselines.sh:
 *   RESULT <name> msgs=<n> secs=<s> msg_s=<x> mib_s=<y> p50_us=<a> p99_us=<b> mean_us=<c>
 * Fields that do not apply are printed as "-". */
static inline void print_result_extra(const char *name, uint64_t msgs, double secs, size_t payload,
                                      const double *p50_us, const double *p99_us, const double *mean_us,
                                      const char *extra) {
        double rate = secs > 0 ? (double) msgs / secs : 0;
        printf("RESULT %s msgs=%" PRIu64 " secs=%.4f msg_s=%.1f", name, msgs, secs, rate);
        if (payload > 0)
                printf(" mib_s=%.1f", rate * (double) payload / MIB);
        else
                printf(" mib_s=-");
        if (p50_us)
                printf(" p50_us=%.2f p99_us=%.2f mean_us=%.2f", *p50_us, *p99_us, *mean_us);
        else
                printf(" p50_us=- p99_us=- mean_us=-");
        if (extra && *extra)
                printf(" %s", extra);
        printf("\n");
        fflush(stdout);
}

/* Extra "key=value ..." fields go after the standard ones (run.sh keeps them). */
static inline void print_result(const char *name, uint64_t msgs, double secs, size_t payload,
                                const double *p50_us, const double *p99_us, const double *mean_us) {
        print_result_extra(name, msgs, secs, payload, p50_us, p99_us, mean_us, NULL);
}
