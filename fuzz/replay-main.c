/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Plain replay driver for the fuzz targets: runs LLVMFuzzerTestOneInput()
 * over every file named on the command line, and over every regular file of
 * every directory named (sorted, not recursive).  Needs no libFuzzer, so the
 * corpora run as ordinary tests with any compiler (tests/meson.build, suite
 * fuzz-replay).  Exits non-zero if no input was found, so an empty or
 * misplaced corpus does not pass silently; a failing input aborts (the
 * target's checks, or the sanitizers).
 */

#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv) __attribute__((weak));

static int run_file(const char *path) {
        FILE *f = fopen(path, "rbe");
        uint8_t *buf = NULL;
        long n;

        if (!f) {
                fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
                return -1;
        }
        if (fseek(f, 0, SEEK_END) < 0 || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) < 0) {
                fprintf(stderr, "replay: %s: cannot size\n", path);
                fclose(f);
                return -1;
        }
        /* An exact-size heap copy, so ASan sees reads past the input. */
        buf = malloc(n > 0 ? (size_t) n : 1);
        if (!buf || fread(buf, 1, (size_t) n, f) != (size_t) n) {
                fprintf(stderr, "replay: %s: cannot read\n", path);
                free(buf);
                fclose(f);
                return -1;
        }
        fclose(f);
        LLVMFuzzerTestOneInput(buf, (size_t) n);
        free(buf);
        return 0;
}

static int by_name(const struct dirent **a, const struct dirent **b) {
        return strcmp((*a)->d_name, (*b)->d_name);
}

int main(int argc, char **argv) {
        unsigned n_inputs = 0, n_errors = 0;

        if (LLVMFuzzerInitialize)
                LLVMFuzzerInitialize(&argc, &argv);
        if (argc < 2) {
                fprintf(stderr, "usage: %s CORPUS_DIR|FILE...\n", argv[0]);
                return 2;
        }
        for (int i = 1; i < argc; i++) {
                struct stat st;

                if (stat(argv[i], &st) < 0) {
                        fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
                        n_errors++;
                        continue;
                }
                if (!S_ISDIR(st.st_mode)) {
                        if (run_file(argv[i]) < 0)
                                n_errors++;
                        else
                                n_inputs++;
                        continue;
                }

                struct dirent **list = NULL;
                int k = scandir(argv[i], &list, NULL, by_name);
                if (k < 0) {
                        fprintf(stderr, "replay: %s: %s\n", argv[i], strerror(errno));
                        n_errors++;
                        continue;
                }
                for (int j = 0; j < k; j++) {
                        char path[4096];
                        struct stat fst;

                        snprintf(path, sizeof(path), "%s/%s", argv[i], list[j]->d_name);
                        if (list[j]->d_name[0] != '.' && stat(path, &fst) == 0 && S_ISREG(fst.st_mode)) {
                                if (run_file(path) < 0)
                                        n_errors++;
                                else
                                        n_inputs++;
                        }
                        free(list[j]);
                }
                free(list);
        }
        printf("replay: %u inputs, %u errors\n", n_inputs, n_errors);
        return n_errors > 0 || n_inputs == 0 ? 1 : 0;
}
