/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Test shim (plain C, no ipcmux internals): a private dbus-daemon per test
 * binary, raw sd-bus clients, fd counting and child processes.  Nothing here
 * sleeps to synchronise: the daemon address is read from a pipe, children
 * report over pipes, waits have generous failure bounds only.
 */

#include <stdint.h>
#include <sys/types.h>
#include <systemd/sd-bus.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct TestBus TestBus;

/*
 * Start `dbus-daemon --config-file=<IPCMUX_TEST_DATA or TEST_DATA_DIR>/<config>
 * --nofork --print-address=<pipe>` (config NULL = "bus.conf"), with
 * PR_SET_PDEATHSIG so it never outlives the test.  Blocks until the address
 * is read.  Returns 0 or -errno (-ENOENT: no dbus-daemon in $PATH or no such
 * config; -EIO: the daemon exited without printing an address, its stderr
 * says why).  PDEATHSIG follows the *thread* that forks: spawn from the
 * test's main thread or one that outlives the bus.
 */
int test_bus_spawn(const char *config, TestBus **ret);
/* Stops the daemon (SIGTERM, then SIGKILL after 5 s) and frees. NULL ok. */
void test_bus_kill(TestBus *b);
const char *test_bus_address(const TestBus *b);
pid_t test_bus_pid(const TestBus *b);
/* Export the address as DBUS_SESSION_BUS_ADDRESS (for ipcmux_channel_new and children). */
int test_bus_export(const TestBus *b);
/* A raw sd-bus client on the private bus, started, unique name acquired. */
int test_bus_connect(const TestBus *b, sd_bus **ret);

/* Number of open fds of this process (/proc/self/fd), or -errno. */
int test_count_fds(void);
/* Number of open fds of another process, or -errno. */
int test_count_fds_of(pid_t pid);

/*
 * fork+exec @argv (argv[0] a path) with stdin from /dev/null.  If
 * @ret_stdout_fd is non-NULL the child's stdout is a pipe whose read end is
 * returned there (O_CLOEXEC).  The child gets PR_SET_PDEATHSIG=SIGKILL,
 * default signal dispositions and an empty signal mask; stderr and any
 * non-CLOEXEC fd of the caller are inherited (the way to hand a child an
 * extra pipe).  Exec failure is returned as -errno (no child left behind).
 */
int test_spawn(char *const argv[], int *ret_stdout_fd, pid_t *ret_pid);
/*
 * As test_spawn(), but the child runs as uid/gid 65534 with no capabilities
 * (via setpriv) and RLIMIT_NOFILE = @nofile (0 = unchanged): root hides fd
 * limit bugs.  The binary, its directory chain and any shared library it
 * loads from the build tree must be readable/searchable by uid 65534 (a
 * checkout under a 0700 directory such as /root or `mktemp -d` is not);
 * setpriv then reports "failed to execute" and exits 126/127.  Needs root:
 * returns -EPERM otherwise (tests should GTEST_SKIP() on that).
 */
int test_spawn_unprivileged(char *const argv[], unsigned nofile, int *ret_stdout_fd, pid_t *ret_pid);
/*
 * Wait for @pid up to @timeout_ms (< 0: no bound); returns 0 and the raw wait
 * status, or -ETIMEDOUT (child left running) / -errno.  @ret_status may be NULL.
 */
int test_wait(pid_t pid, int timeout_ms, int *ret_status);
/*
 * Read one '\n'-terminated line (without '\n') from @fd into @buf, up to
 * @timeout_ms.  Reads byte-wise, so nothing past the '\n' is consumed.
 * Returns 0, -ETIMEDOUT, -EPIPE (EOF before '\n'), -ENOBUFS (line does not
 * fit), -errno; @buf always NUL-terminated (partial line on error).
 */
int test_read_line(int fd, char *buf, size_t size, int timeout_ms);
/*
 * Run a command to completion (bound: 120 s), capturing stdout (malloc'd,
 * NUL-terminated; @ret_output may be NULL). Returns the exit status, 128+signal
 * if killed, or -errno (-ENOENT: no such binary).
 */
int test_run_capture(char *const argv[], char **ret_output);

/* Absolute path of a helper binary built beside the tests ($IPCMUX_TEST_BUILDDIR/name). */
const char *test_helper_path(const char *name);

uint64_t test_now_usec(void);

#ifdef __cplusplus
}
#endif
