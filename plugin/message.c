/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* ipcmux_message (see message.h). */

#include <fcntl.h>

#include "conn.h"
#include "endpoint.h"
#include "macro.h"
#include "message.h"
#include "shmem.h"

static const uint8_t empty_payload[1];

int message_new(ipcmux_message **ret) {
        ipcmux_message *m;

        m = calloc(1, sizeof(*m));
        if (!m)
                return -ENOMEM;
        m->n_ref = 1;
        list_init(&m->qlink);
        *ret = m;
        return 0;
}

_public_ int ipcmux_message_new(ipcmux_message **ret) {
        assert_return(ret, -EINVAL);
        return message_new(ret);
}

_public_ ipcmux_message *ipcmux_message_ref(ipcmux_message *m) {
        if (m)
                __atomic_add_fetch(&m->n_ref, 1, __ATOMIC_RELAXED);
        return m;
}

/* Drop the borrowed bus message (each of its references is also one on the
 * sd_bus, whose counter is not atomic): only under the connection's lock. */
static void message_drop_borrowed_bus(ipcmux_message *m) {
        Conn *c = m->borrowed_conn;

        if (!m->borrowed_bus)
                return;
        if (!conn_forked(c)) {
                conn_lock(c);
                m->borrowed_bus = sd_bus_message_unref(m->borrowed_bus);
                conn_unlock(c);
        }
        m->borrowed_bus = NULL;
        m->borrowed_conn = conn_unref(c);
}

int message_set_sender(ipcmux_message *m, const char *sender) {
        size_t n = strlen(sender);

        if (n < sizeof(m->sender_buf)) {
                memcpy(m->sender_buf, sender, n + 1);
                m->sender = m->sender_buf;
                return 0;
        }
        m->sender = strdup(sender);
        return m->sender ? 0 : -ENOMEM;
}

_public_ const char *ipcmux_message_get_sender(ipcmux_message *m) {
        return m ? m->sender : NULL;
}

static void message_free(ipcmux_message *m) {
        if (m->sender != m->sender_buf)
                free(m->sender);
        if (!m->borrowed_bus && !m->borrowed_region)
                free(m->data);
        message_drop_borrowed_bus(m);
        ipcmux_shmem_unref(m->borrowed_region);
        for (size_t i = 0; i < m->n_shmems; i++)
                ipcmux_shmem_unref(m->shmems[i]);
        free(m->shmems);
        for (size_t i = 0; i < m->n_fds; i++)
                safe_close(m->fds[i]);
        free(m->fds);
        for (size_t i = 0; i < m->n_senders; i++)
                ipcmux_sender_unref(m->senders[i]);
        free(m->senders);
        free(m);
}

_public_ ipcmux_message *ipcmux_message_unref(ipcmux_message *m) {
        if (m && __atomic_sub_fetch(&m->n_ref, 1, __ATOMIC_ACQ_REL) == 0)
                message_free(m);
        return NULL;
}

/* Make the payload an owned, growable buffer (copy-on-append for received messages). */
static int message_own_payload(ipcmux_message *m, size_t need) {
        if (m->borrowed_bus || m->borrowed_region) {
                uint8_t *p = malloc(MAX(need, (size_t) 64));
                if (!p)
                        return -ENOMEM;
                if (m->size > 0)
                        memcpy(p, m->data, m->size);
                m->data = p;
                m->allocated = MAX(need, (size_t) 64);
                message_drop_borrowed_bus(m);
                m->borrowed_region = ipcmux_shmem_unref(m->borrowed_region);
                return 0;
        }
        if (need <= m->allocated)
                return 0;
        if (!greedy_realloc((void **) &m->data, &m->allocated, need, 1))
                return -ENOMEM;
        return 0;
}

_public_ int ipcmux_message_append(ipcmux_message *m, const void *data, size_t size) {
        int r;

        assert_return(m, -EINVAL);
        assert_return(data || size == 0, -EINVAL);
        assert_return(size <= SIZE_MAX - m->size, -EINVAL);

        if (size == 0)
                return 0;
        r = message_own_payload(m, m->size + size);
        if (r < 0)
                return r;
        memcpy(m->data + m->size, data, size);
        m->size += size;
        return 0;
}

_public_ const void *ipcmux_message_get_data(ipcmux_message *m, size_t *ret_size) {
        if (!m) {
                if (ret_size)
                        *ret_size = 0;
                return NULL;
        }
        if (ret_size)
                *ret_size = m->size;
        return m->size > 0 ? m->data : empty_payload;
}

/* ---- attachments --------------------------------------------------------- */

int message_push_fd(ipcmux_message *m, int fd) {
        if (m->n_fds >= INT32_MAX || !GREEDY_REALLOC(m->fds, m->allocated_fds, m->n_fds + 1))
                return -ENOMEM;
        m->fds[m->n_fds] = fd;
        return (int) m->n_fds++;
}

int message_push_shmem(ipcmux_message *m, ipcmux_shmem *s) {
        if (m->n_shmems >= INT32_MAX || !GREEDY_REALLOC(m->shmems, m->allocated_shmems, m->n_shmems + 1))
                return -ENOMEM;
        m->shmems[m->n_shmems] = ipcmux_shmem_ref(s);
        return (int) m->n_shmems++;
}

int message_push_sender(ipcmux_message *m, ipcmux_sender *s) {
        if (m->n_senders >= INT32_MAX || !GREEDY_REALLOC(m->senders, m->allocated_senders, m->n_senders + 1))
                return -ENOMEM;
        m->senders[m->n_senders] = s;
        return (int) m->n_senders++;
}

_public_ int ipcmux_message_attach_shmem(ipcmux_message *m, ipcmux_shmem *s) {
        assert_return(m, -EINVAL);
        assert_return(s, -EINVAL);
        return message_push_shmem(m, s);
}

_public_ int ipcmux_message_take_shmem(ipcmux_message *m, unsigned index, ipcmux_shmem **ret) {
        assert_return(m, -EINVAL);
        assert_return(ret, -EINVAL);
        assert_return(index < m->n_shmems, -EINVAL);

        if (!m->shmems[index])
                return -ENXIO;
        *ret = TAKE_PTR(m->shmems[index]);
        return 0;
}

_public_ unsigned ipcmux_message_get_n_shmem(ipcmux_message *m) {
        return m ? (unsigned) m->n_shmems : 0;
}

_public_ int ipcmux_message_attach_fd(ipcmux_message *m, int fd) {
        int copy, r;

        assert_return(m, -EINVAL);
        assert_return(fd >= 0, -EBADF);

        copy = fcntl(fd, F_DUPFD_CLOEXEC, 3);
        if (copy < 0)
                return negative_errno();
        r = message_push_fd(m, copy);
        if (r < 0)
                safe_close(copy);
        return r;
}

_public_ int ipcmux_message_take_fd(ipcmux_message *m, unsigned index, int *ret_fd) {
        assert_return(m, -EINVAL);
        assert_return(ret_fd, -EINVAL);
        assert_return(index < m->n_fds, -EINVAL);

        if (m->fds[index] < 0)
                return -ENXIO;
        *ret_fd = TAKE_FD(m->fds[index]);
        return 0;
}

_public_ unsigned ipcmux_message_get_n_fds(ipcmux_message *m) {
        return m ? (unsigned) m->n_fds : 0;
}

_public_ int ipcmux_message_attach_sender(ipcmux_message *m, ipcmux_sender *s) {
        int r;

        assert_return(m, -EINVAL);
        assert_return(s, -EINVAL);

        r = message_push_sender(m, ipcmux_sender_ref(s));
        if (r < 0)
                ipcmux_sender_unref(s);
        return r;
}

_public_ int ipcmux_message_take_sender(ipcmux_message *m, unsigned index, ipcmux_sender **ret) {
        assert_return(m, -EINVAL);
        assert_return(ret, -EINVAL);
        assert_return(index < m->n_senders, -EINVAL);

        if (!m->senders[index])
                return -ENXIO;
        *ret = TAKE_PTR(m->senders[index]);
        return 0;
}

_public_ unsigned ipcmux_message_get_n_senders(ipcmux_message *m) {
        return m ? (unsigned) m->n_senders : 0;
}
