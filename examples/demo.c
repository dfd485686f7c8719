/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The point of ipcmux in one run: two processes, 1,000 subchannels, one bus
 * connection each.
 *
 *   parent                                   child (this program, re-exec'd)
 *   ipcmux_server_new() ---- name on argv --> ipcmux_sender_connect(name)
 *                                             1,000 x ipcmux_channel_sub_channel()
 *          <---- one message carrying 1,000 senders + a 1 MiB region
 *   1,000 x send "hello #i" through the received senders  ---->
 *                                             recv on each of the 1,000 receivers
 *
 * Both print how many fds they hold: the same with 1,000 subchannels as
 * with one.  Needs a session bus (run-demo.sh starts a private one).
 */

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <ipcmux/ipcmux.h>

#define N_SUB 1000

static int count_fds(void) {
        DIR *d = opendir("/proc/self/fd");
        struct dirent *e;
        int n = -1;     /* the directory's own fd */

        if (!d)
                return -1;
        while ((e = readdir(d)))
                if (e->d_name[0] != '.')
                        n++;
        closedir(d);
        return n;
}

static int fail(const char *what, int r) {
        fprintf(stderr, "demo: %s: %s\n", what, strerror(-r));
        return EXIT_FAILURE;
}

static int child(const char *name) {
        __attribute__((cleanup(ipcmux_channel_unrefp))) ipcmux_channel *ch = NULL;
        __attribute__((cleanup(ipcmux_sender_unrefp))) ipcmux_sender *to_parent = NULL;
        __attribute__((cleanup(ipcmux_message_unrefp))) ipcmux_message *m = NULL;
        __attribute__((cleanup(ipcmux_shmem_unrefp))) ipcmux_shmem *region = NULL;
        static ipcmux_receiver *rx[N_SUB];
        int r, fds_one = -1;

        if ((r = ipcmux_channel_new(&ch)) < 0 || (r = ipcmux_sender_connect(name, &to_parent)) < 0)
                return fail("connect", r);
        if ((r = ipcmux_message_new(&m)) < 0 || (r = ipcmux_message_append(m, "first", 5)) < 0)
                return fail("message", r);
        for (int i = 0; i < N_SUB; i++) {
                ipcmux_sender *tx;

                if ((r = ipcmux_channel_sub_channel(ch, &tx, &rx[i])) < 0)
                        return fail("sub_channel", r);
                r = ipcmux_message_attach_sender(m, tx);     /* the message takes its own copy */
                ipcmux_sender_unref(tx);
                if (r < 0)
                        return fail("attach_sender", r);
                if (i == 0)
                        fds_one = count_fds();
        }
        if ((r = ipcmux_shmem_new_from_byte(0x5a, 1 << 20, &region)) < 0 ||
            (r = ipcmux_message_attach_shmem(m, region)) < 0)
                return fail("region", r);
        if ((r = ipcmux_sender_send(to_parent, m)) < 0)
                return fail("send", r);
        printf("child:  sent 1 message carrying %d senders and a 1 MiB region\n", N_SUB);

        for (int i = 0; i < N_SUB; i++) {
                ipcmux_message *got;
                char want[32];
                size_t n;

                if ((r = ipcmux_receiver_recv(rx[i], &got)) < 0)
                        return fail("recv", r);
                snprintf(want, sizeof(want), "hello #%d", i);
                const char *p = ipcmux_message_get_data(got, &n);
                if (n != strlen(want) || memcmp(p, want, n) != 0)
                        return fail("wrong payload", -EBADMSG);
                ipcmux_message_unref(got);
        }
        printf("child:  received on all %d subchannels; open fds with 1 subchannel: %d, with %d: %d\n",
               N_SUB, fds_one, N_SUB, count_fds());
        for (int i = 0; i < N_SUB; i++)
                ipcmux_receiver_unref(rx[i]);
        return EXIT_SUCCESS;
}

int main(int argc, char **argv) {
        __attribute__((cleanup(ipcmux_server_unrefp))) ipcmux_server *srv = NULL;
        __attribute__((cleanup(ipcmux_receiver_unrefp))) ipcmux_receiver *rx = NULL;
        __attribute__((cleanup(ipcmux_message_unrefp))) ipcmux_message *first = NULL;
        __attribute__((cleanup(ipcmux_shmem_unrefp))) ipcmux_shmem *region = NULL;
        char *name = NULL;
        int r, status, fds_before;
        pid_t pid;

        if (argc > 2 && strcmp(argv[1], "--child") == 0)
                return child(argv[2]);

        if ((r = ipcmux_server_new(&srv, &name)) < 0)
                return fail("server_new (is a session bus running?)", r);
        fds_before = count_fds();
        printf("parent: one-shot server %s\n", name);
        pid = fork();
        if (pid == 0) {
                execl("/proc/self/exe", argv[0], "--child", name, (char *) NULL);
                _exit(127);
        }
        free(name);

        if ((r = ipcmux_server_accept(srv, &rx, &first)) < 0)
                return fail("accept", r);
        printf("parent: accepted; the first message carries %u senders and %u region(s)\n",
               ipcmux_message_get_n_senders(first), ipcmux_message_get_n_shmem(first));
        if ((r = ipcmux_message_take_shmem(first, 0, &region)) < 0)
                return fail("take_shmem", r);
        const unsigned char *bytes = ipcmux_shmem_get_data(region);
        printf("parent: region of %zu bytes, first byte 0x%02x (mapped read-only, no copy)\n",
               ipcmux_shmem_get_size(region), bytes[0]);

        for (unsigned i = 0; i < ipcmux_message_get_n_senders(first); i++) {
                ipcmux_sender *s;
                char buf[32];
                int n = snprintf(buf, sizeof(buf), "hello #%u", i);

                if ((r = ipcmux_message_take_sender(first, i, &s)) < 0)
                        return fail("take_sender", r);
                r = ipcmux_sender_send_bytes(s, buf, (size_t) n);
                ipcmux_sender_unref(s);
                if (r < 0)
                        return fail("send", r);
        }
        printf("parent: sent one message on each of the %d subchannels; open fds: %d before, %d now\n",
               N_SUB, fds_before, count_fds());

        if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
                return fail("child", -ECHILD);
        ipcmux_message *m;
        r = ipcmux_receiver_recv(rx, &m);
        printf("parent: child exited; its subchannel reports %s\n",
               r == -EPIPE ? "disconnected (EPIPE), as it should" : strerror(-r));
        return r == -EPIPE ? EXIT_SUCCESS : EXIT_FAILURE;
}
