/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Test shim (see util-bus.h): private dbus-daemon, raw sd-bus clients, fd
 * counting, child processes.  Plain C, no ipcmux internals.
 *
 * Every fd created here is O_CLOEXEC.  Children are forked from possibly
 * multi-threaded test processes, so between fork() and exec() the child only
 * makes async-signal-safe calls; everything it needs (argv, paths) is built
 * before fork().  Exec failures come back over a CLOEXEC pipe, so a missing
 * binary is an -errno from the spawn call rather than a child exiting 127.
 */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "util-bus.h"

#ifndef TEST_DATA_DIR
#error "TEST_DATA_DIR must be defined (see tests/meson.build)"
#endif

#define UNPRIVILEGED_ID "65534"
#define BUS_ADDRESS_TIMEOUT_MS (30 * 1000)
#define BUS_KILL_TIMEOUT_MS (5 * 1000)
#define CAPTURE_TIMEOUT_MS (120 * 1000)

struct TestBus {
        pid_t pid;
        char *address;
};

static int negative_errno(void) {
        return errno > 0 ? -errno : -EIO;
}

static void close_fd(int *fd) {
        if (*fd >= 0) {
                int saved = errno;
                (void) close(*fd);
                errno = saved;
                *fd = -1;
        }
}

uint64_t test_now_usec(void) {
        struct timespec ts;

        (void) clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000ULL + (uint64_t) ts.tv_nsec / 1000ULL;
}

/* Deadlines are absolute monotonic µs; UINT64_MAX = none (timeout_ms < 0). */
static uint64_t deadline_after(int timeout_ms) {
        if (timeout_ms < 0)
                return UINT64_MAX;
        return test_now_usec() + (uint64_t) timeout_ms * 1000ULL;
}

/* Milliseconds left until @deadline, for poll(): -1 = forever, 0 once passed. */
static int ms_left(uint64_t deadline) {
        uint64_t now = test_now_usec(), ms;

        if (deadline == UINT64_MAX)
                return -1;
        if (now >= deadline)
                return 0;
        ms = (deadline - now + 999) / 1000;
        return ms > INT_MAX ? INT_MAX : (int) ms;
}

/* poll() one fd until an event or the deadline; 0 = ready, -ETIMEDOUT, -errno. */
static int wait_fd(int fd, short events, uint64_t deadline) {
        for (;;) {
                struct pollfd p = { .fd = fd, .events = events };
                int r = poll(&p, 1, ms_left(deadline));

                if (r < 0) {
                        if (errno == EINTR)
                                continue;
                        return negative_errno();
                }
                if (r == 0)
                        return -ETIMEDOUT;
                if (p.revents & POLLNVAL)
                        return -EBADF;
                return 0;
        }
}

/* ---- fd counting ------------------------------------------------------- */

static int count_fds_in(const char *dir_path) {
        DIR *d;
        struct dirent *de;
        int n = 0;

        d = opendir(dir_path);
        if (!d)
                return negative_errno();
        errno = 0;
        while ((de = readdir(d))) {
                if (de->d_name[0] == '.')
                        continue;
                n++;
        }
        if (errno != 0) {
                int r = negative_errno();
                closedir(d);
                return r;
        }
        closedir(d);
        return n;
}

int test_count_fds(void) {
        int n = count_fds_in("/proc/self/fd");

        /* Don't count the directory fd opendir() itself used. */
        return n < 0 ? n : n - 1;
}

int test_count_fds_of(pid_t pid) {
        char path[64];

        if (pid <= 0)
                return -EINVAL;
        snprintf(path, sizeof(path), "/proc/%d/fd", (int) pid);
        return count_fds_in(path);
}

/* ---- waiting and reading ----------------------------------------------- */

static int pidfd_open_compat(pid_t pid) {
#ifdef SYS_pidfd_open
        return (int) syscall(SYS_pidfd_open, pid, 0);
#else
        (void) pid;
        errno = ENOSYS;
        return -1;
#endif
}

int test_wait(pid_t pid, int timeout_ms, int *ret_status) {
        uint64_t deadline = deadline_after(timeout_ms);
        int status = 0, pidfd, r;
        pid_t w;

        if (pid <= 0)
                return -EINVAL;

        /* Without a pidfd (kernel < 5.3, EMFILE under a low RLIMIT_NOFILE)
         * fall back to bounded polling of waitpid(). */
        pidfd = pidfd_open_compat(pid);

        for (;;) {
                w = waitpid(pid, &status, WNOHANG);
                if (w < 0) {
                        if (errno == EINTR)
                                continue;
                        r = negative_errno();
                        break;
                }
                if (w == pid) {
                        if (ret_status)
                                *ret_status = status;
                        r = 0;
                        break;
                }
                if (pidfd >= 0) {
                        /* The pidfd becomes readable when the process exits. */
                        r = wait_fd(pidfd, POLLIN, deadline);
                        if (r < 0)
                                break;
                } else {
                        /* Fallback only: polling with a failure bound, not a
                         * synchronisation sleep. */
                        struct timespec ts = { .tv_nsec = 1000 * 1000 };

                        if (ms_left(deadline) == 0) {
                                r = -ETIMEDOUT;
                                break;
                        }
                        (void) nanosleep(&ts, NULL);
                }
        }

        close_fd(&pidfd);
        return r;
}

int test_read_line(int fd, char *buf, size_t size, int timeout_ms) {
        uint64_t deadline = deadline_after(timeout_ms);
        size_t n = 0;
        int r = 0;

        if (fd < 0 || !buf || size == 0)
                return -EINVAL;

        /* One byte at a time: never consume past the '\n', so the caller can
         * keep reading the following lines from the same fd. */
        for (;;) {
                ssize_t k;
                char c;

                r = wait_fd(fd, POLLIN, deadline);
                if (r < 0)
                        break;
                k = read(fd, &c, 1);
                if (k < 0) {
                        if (errno == EINTR || errno == EAGAIN)
                                continue;
                        r = negative_errno();
                        break;
                }
                if (k == 0) {
                        r = -EPIPE;     /* EOF before a complete line */
                        break;
                }
                if (c == '\n')
                        break;
                if (n + 1 >= size) {
                        r = -ENOBUFS;
                        break;
                }
                buf[n++] = c;
        }

        buf[n] = '\0';
        return r;
}

/* ---- spawning ---------------------------------------------------------- */

/* Child side, async-signal-safe only. */
static void child_reset_signals(void) {
        struct sigaction sa = { .sa_handler = SIG_DFL };
        sigset_t ss;

        /* The test may ignore SIGPIPE or block signals; exec keeps both. */
        for (int sig = 1; sig < _NSIG; sig++) {
                if (sig == SIGKILL || sig == SIGSTOP)
                        continue;
                (void) sigaction(sig, &sa, NULL);
        }
        sigemptyset(&ss);
        (void) sigprocmask(SIG_SETMASK, &ss, NULL);
}

static _Noreturn void child_fail(int err_fd) {
        int e = errno > 0 ? errno : EIO;
        ssize_t k;

        do
                k = write(err_fd, &e, sizeof(e));
        while (k < 0 && errno == EINTR);
        _exit(127);
}

/* Place @fd at @target without CLOEXEC (dup2 clears it; same fd: clear it). */
static int child_install_fd(int fd, int target) {
        if (fd == target)
                return fcntl(fd, F_SETFD, 0);
        return dup2(fd, target) < 0 ? -1 : 0;
}

/* Move @fd to a number >= @min (CLOEXEC), so later dup2()s can't clobber it. */
static int child_lift_fd(int fd, int min) {
        return fd >= min ? fd : fcntl(fd, F_DUPFD_CLOEXEC, min);
}

static void child_close_from(int first) {
#ifdef SYS_close_range
        if (syscall(SYS_close_range, (unsigned) first, ~0U, 0) == 0)
                return;
#endif
        struct rlimit rl;
        int max = 65536;

        if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < (rlim_t) max)
                max = (int) rl.rlim_cur;
        for (int fd = first; fd < max; fd++)
                (void) close(fd);
}

/* Common prologue for every child: die with the parent, sane signals. */
static int child_setup(pid_t parent) {
        child_reset_signals();
        if (prctl(PR_SET_PDEATHSIG, SIGKILL) < 0)
                return -1;
        /* The parent may have died before prctl(): then we're reparented. */
        if (getppid() != parent) {
                errno = ESRCH;
                return -1;
        }
        return 0;
}

/*
 * Wait for the child's exec: EOF on @err_fd means exec succeeded; an int
 * means it failed with that errno (the child is then reaped here).
 */
static int parent_wait_exec(pid_t pid, int err_fd) {
        int e = 0;
        ssize_t k;

        do
                k = read(err_fd, &e, sizeof(e));
        while (k < 0 && errno == EINTR);
        if (k == 0)
                return 0;

        (void) waitpid(pid, NULL, 0);
        if (k < 0)
                return negative_errno();
        return -(e > 0 ? e : EIO);
}

typedef struct SpawnParams {
        const char *path;               /* execvp() file */
        char *const *argv;
        unsigned nofile;                /* RLIMIT_NOFILE for the child, 0 = unchanged */
        char *const *nofile_argv;       /* exec'd instead if setrlimit() fails (valgrind) */
        bool capture_stdout;
} SpawnParams;

static int spawn_full(const SpawnParams *p, int *ret_stdout_fd, pid_t *ret_pid) {
        int null_fd = -1, out[2] = { -1, -1 }, err[2] = { -1, -1 }, r;
        pid_t parent = getpid(), pid;

        null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (null_fd < 0)
                return negative_errno();
        if (p->capture_stdout && pipe2(out, O_CLOEXEC) < 0) {
                r = negative_errno();
                goto finish;
        }
        if (pipe2(err, O_CLOEXEC) < 0) {
                r = negative_errno();
                goto finish;
        }

        pid = fork();
        if (pid < 0) {
                r = negative_errno();
                goto finish;
        }
        if (pid == 0) {
                int e = child_lift_fd(err[1], 3);
                int n = child_lift_fd(null_fd, 3);
                int o = p->capture_stdout ? child_lift_fd(out[1], 3) : -1;

                if (e < 0 || n < 0 || (p->capture_stdout && o < 0))
                        _exit(127);     /* can't even report */
                if (child_setup(parent) < 0)
                        child_fail(e);
                if (child_install_fd(n, STDIN_FILENO) < 0)
                        child_fail(e);
                if (o >= 0 && child_install_fd(o, STDOUT_FILENO) < 0)
                        child_fail(e);
                if (p->nofile > 0) {
                        struct rlimit rl = { .rlim_cur = p->nofile, .rlim_max = p->nofile };

                        if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
                                /* valgrind refuses to lower its own hard limit;
                                 * let prlimit(1) do it after we leave valgrind. */
                                if (!p->nofile_argv)
                                        child_fail(e);
                                execvp(p->nofile_argv[0], p->nofile_argv);
                                child_fail(e);
                        }
                }
                execvp(p->path, p->argv);
                child_fail(e);
        }

        close_fd(&err[1]);
        close_fd(&out[1]);
        r = parent_wait_exec(pid, err[0]);
        if (r < 0)
                goto finish;

        if (ret_stdout_fd) {
                *ret_stdout_fd = out[0];
                out[0] = -1;
        }
        if (ret_pid)
                *ret_pid = pid;
        r = 0;

finish:
        close_fd(&null_fd);
        close_fd(&out[0]);
        close_fd(&out[1]);
        close_fd(&err[0]);
        close_fd(&err[1]);
        return r;
}

int test_spawn(char *const argv[], int *ret_stdout_fd, pid_t *ret_pid) {
        SpawnParams p = {
                .path = argv ? argv[0] : NULL,
                .argv = argv,
                .capture_stdout = ret_stdout_fd != NULL,
        };

        if (!argv || !argv[0])
                return -EINVAL;
        return spawn_full(&p, ret_stdout_fd, ret_pid);
}

int test_spawn_unprivileged(char *const argv[], unsigned nofile, int *ret_stdout_fd, pid_t *ret_pid) {
        /* setpriv changes credentials, which clears PDEATHSIG; --pdeathsig
         * sets it again afterwards, right before the final exec. */
        static const char *const prefix[] = {
                "setpriv",
                "--reuid=" UNPRIVILEGED_ID,
                "--regid=" UNPRIVILEGED_ID,
                "--clear-groups",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--pdeathsig=SIGKILL",
                "--",
        };
        const size_t n_prefix = sizeof(prefix) / sizeof(prefix[0]);
        char nofile_arg[64], **full, **with_prlimit;
        size_t n = 0, k = 0;
        int r;

        if (!argv || !argv[0])
                return -EINVAL;
        if (geteuid() != 0)
                return -EPERM;  /* setpriv could not switch uid: let the test skip */
        while (argv[n])
                n++;
        snprintf(nofile_arg, sizeof(nofile_arg), "--nofile=%u:%u", nofile, nofile);

        /* setpriv … -- argv, and setpriv … -- prlimit --nofile=N:N -- argv */
        full = calloc(n_prefix + n + 1, sizeof(char *));
        with_prlimit = calloc(n_prefix + 3 + n + 1, sizeof(char *));
        if (!full || !with_prlimit) {
                free(full);
                free(with_prlimit);
                return -ENOMEM;
        }
        for (size_t i = 0; i < n_prefix; i++)
                full[i] = with_prlimit[k++] = (char *) prefix[i];
        with_prlimit[k++] = (char *) "prlimit";
        with_prlimit[k++] = nofile_arg;
        with_prlimit[k++] = (char *) "--";
        for (size_t i = 0; i < n; i++)
                full[n_prefix + i] = with_prlimit[k++] = argv[i];

        SpawnParams p = {
                .path = "setpriv",
                .argv = full,
                .nofile = nofile,
                .nofile_argv = with_prlimit,
                .capture_stdout = ret_stdout_fd != NULL,
        };
        r = spawn_full(&p, ret_stdout_fd, ret_pid);
        free(full);
        free(with_prlimit);
        return r;
}

int test_run_capture(char *const argv[], char **ret_output) {
        uint64_t deadline = deadline_after(CAPTURE_TIMEOUT_MS);
        char *buf = NULL;
        size_t len = 0, cap = 0;
        int fd = -1, status = 0, r;
        pid_t pid;

        r = test_spawn(argv, &fd, &pid);
        if (r < 0)
                return r;

        for (;;) {
                ssize_t k;

                if (cap - len < 4096) {
                        size_t ncap = cap ? cap * 2 : 8192;
                        char *nbuf = realloc(buf, ncap);

                        if (!nbuf) {
                                r = -ENOMEM;
                                break;
                        }
                        buf = nbuf;
                        cap = ncap;
                }
                r = wait_fd(fd, POLLIN, deadline);
                if (r < 0)
                        break;
                k = read(fd, buf + len, cap - len - 1);
                if (k < 0) {
                        if (errno == EINTR || errno == EAGAIN)
                                continue;
                        r = negative_errno();
                        break;
                }
                if (k == 0)
                        break;
                len += (size_t) k;
        }
        close_fd(&fd);

        if (r < 0) {
                (void) kill(pid, SIGKILL);
                (void) waitpid(pid, NULL, 0);
                free(buf);
                return r;
        }

        r = test_wait(pid, ms_left(deadline), &status);
        if (r < 0) {
                (void) kill(pid, SIGKILL);
                (void) waitpid(pid, NULL, 0);
                free(buf);
                return r;
        }

        buf[len] = '\0';
        if (ret_output)
                *ret_output = buf;
        else
                free(buf);

        if (WIFEXITED(status))
                return WEXITSTATUS(status);
        if (WIFSIGNALED(status))
                return 128 + WTERMSIG(status);
        return -EIO;
}

/* ---- helper paths ------------------------------------------------------ */

typedef struct HelperPath {
        struct HelperPath *next;
        char path[];
} HelperPath;

/* Interned, never freed (reachable from a global, so not a leak for LSan). */
static HelperPath *helper_paths;
static pthread_mutex_t helper_paths_lock = PTHREAD_MUTEX_INITIALIZER;

const char *test_helper_path(const char *name) {
        char dir[PATH_MAX], want[PATH_MAX];
        const char *env = getenv("IPCMUX_TEST_BUILDDIR");
        const char *result = NULL;
        HelperPath *h;
        size_t len;

        if (!name)
                return NULL;

        if (env && *env)
                snprintf(dir, sizeof(dir), "%s", env);
        else {
                /* Helpers are built beside the test binaries. */
                ssize_t k = readlink("/proc/self/exe", dir, sizeof(dir) - 1);
                char *slash;

                if (k < 0)
                        return NULL;
                dir[k] = '\0';
                slash = strrchr(dir, '/');
                if (slash)
                        *slash = '\0';
        }
        if ((size_t) snprintf(want, sizeof(want), "%s/%s", dir, name) >= sizeof(want))
                return NULL;

        pthread_mutex_lock(&helper_paths_lock);
        for (h = helper_paths; h; h = h->next)
                if (strcmp(h->path, want) == 0) {
                        result = h->path;
                        break;
                }
        if (!result) {
                len = strlen(want) + 1;
                h = malloc(sizeof(HelperPath) + len);
                if (h) {
                        memcpy(h->path, want, len);
                        h->next = helper_paths;
                        helper_paths = h;
                        result = h->path;
                }
        }
        pthread_mutex_unlock(&helper_paths_lock);
        return result;
}

/* ---- private bus ------------------------------------------------------- */

int test_bus_spawn(const char *config, TestBus **ret) {
        const char *dir = getenv("IPCMUX_TEST_DATA");
        char conf_path[PATH_MAX], conf_arg[PATH_MAX + 32], line[1024];
        int addr[2] = { -1, -1 }, err[2] = { -1, -1 }, null_fd = -1, r;
        pid_t parent = getpid(), pid = -1;
        TestBus *b = NULL;

        if (!ret)
                return -EINVAL;
        if (!dir || !*dir)
                dir = TEST_DATA_DIR;
        if (!config)
                config = "bus.conf";
        if ((size_t) snprintf(conf_path, sizeof(conf_path), "%s/%s", dir, config) >= sizeof(conf_path))
                return -ENAMETOOLONG;
        if (access(conf_path, R_OK) < 0)
                return negative_errno();
        snprintf(conf_arg, sizeof(conf_arg), "--config-file=%s", conf_path);

        /* In the child the address pipe is fd 3, the exec-error pipe fd 4;
         * all other fds >= 5 are closed so the daemon pins nothing of ours. */
        char *const argv[] = {
                (char *) "dbus-daemon",
                conf_arg,
                (char *) "--nofork",
                (char *) "--nopidfile",
                (char *) "--print-address=3",
                NULL,
        };

        null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (null_fd < 0)
                return negative_errno();
        if (pipe2(addr, O_CLOEXEC) < 0 || pipe2(err, O_CLOEXEC) < 0) {
                r = negative_errno();
                goto fail;
        }

        pid = fork();
        if (pid < 0) {
                r = negative_errno();
                goto fail;
        }
        if (pid == 0) {
                int a = child_lift_fd(addr[1], 5);
                int e = child_lift_fd(err[1], 5);
                int n = child_lift_fd(null_fd, 5);

                if (a < 0 || e < 0 || n < 0)
                        _exit(127);
                if (dup3(e, 4, O_CLOEXEC) < 0)
                        _exit(127);
                e = 4;
                if (child_setup(parent) < 0)
                        child_fail(e);
                if (child_install_fd(n, STDIN_FILENO) < 0)
                        child_fail(e);
                if (child_install_fd(a, 3) < 0)
                        child_fail(e);
                child_close_from(5);
                execvp(argv[0], argv);
                child_fail(e);
        }

        close_fd(&addr[1]);
        close_fd(&err[1]);
        close_fd(&null_fd);

        r = parent_wait_exec(pid, err[0]);
        if (r < 0) {
                pid = -1;       /* reaped */
                goto fail;      /* -ENOENT: no dbus-daemon */
        }

        r = test_read_line(addr[0], line, sizeof(line), BUS_ADDRESS_TIMEOUT_MS);
        if (r < 0) {
                /* EOF: the daemon refused the config (its stderr says why). */
                if (r == -EPIPE)
                        r = -EIO;
                goto fail;
        }
        if (line[0] == '\0') {
                r = -EIO;
                goto fail;
        }

        b = calloc(1, sizeof(*b));
        if (!b) {
                r = -ENOMEM;
                goto fail;
        }
        b->address = strdup(line);
        if (!b->address) {
                r = -ENOMEM;
                goto fail;
        }
        b->pid = pid;

        close_fd(&addr[0]);
        close_fd(&err[0]);
        *ret = b;
        return 0;

fail:
        if (pid > 0) {
                (void) kill(pid, SIGKILL);
                (void) waitpid(pid, NULL, 0);
        }
        if (b)
                free(b->address);
        free(b);
        close_fd(&null_fd);
        close_fd(&addr[0]);
        close_fd(&addr[1]);
        close_fd(&err[0]);
        close_fd(&err[1]);
        return r;
}

void test_bus_kill(TestBus *b) {
        if (!b)
                return;

        if (b->pid > 0) {
                if (kill(b->pid, SIGTERM) == 0 &&
                    test_wait(b->pid, BUS_KILL_TIMEOUT_MS, NULL) == -ETIMEDOUT) {
                        (void) kill(b->pid, SIGKILL);
                        (void) test_wait(b->pid, BUS_KILL_TIMEOUT_MS, NULL);
                }
                /* Reap in any case (e.g. kill() failed on an exited zombie). */
                (void) waitpid(b->pid, NULL, WNOHANG);
        }
        free(b->address);
        free(b);
}

const char *test_bus_address(const TestBus *b) {
        return b ? b->address : NULL;
}

pid_t test_bus_pid(const TestBus *b) {
        return b ? b->pid : -1;
}

int test_bus_export(const TestBus *b) {
        if (!b || !b->address)
                return -EINVAL;
        if (setenv("DBUS_SESSION_BUS_ADDRESS", b->address, 1) < 0)
                return negative_errno();
        return 0;
}

int test_bus_connect(const TestBus *b, sd_bus **ret) {
        sd_bus *bus = NULL;
        const char *unique;
        int r;

        if (!b || !b->address || !ret)
                return -EINVAL;

        r = sd_bus_new(&bus);
        if (r < 0)
                return r;
        r = sd_bus_set_address(bus, b->address);
        if (r < 0)
                goto fail;
        r = sd_bus_set_bus_client(bus, 1);
        if (r < 0)
                goto fail;
        r = sd_bus_negotiate_fds(bus, 1);
        if (r < 0)
                goto fail;
        r = sd_bus_start(bus);
        if (r < 0)
                goto fail;
        /* Blocks until the Hello reply has arrived. */
        r = sd_bus_get_unique_name(bus, &unique);
        if (r < 0)
                goto fail;

        *ret = bus;
        return 0;

fail:
        sd_bus_unref(bus);
        return r;
}
