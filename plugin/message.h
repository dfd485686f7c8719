/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * ipcmux_message: payload bytes plus three kinds of attachments (regions,
 * plain fds, senders).  A received message borrows its payload from the bus
 * message (or from the spill region) instead of copying it; appending to it
 * first makes the payload its own.
 */

#include <stdint.h>
#include <systemd/sd-bus.h>

#include "ipcmux/ipcmux.h"
#include "list.h"

struct ipcmux_message {
        unsigned n_ref;                 /* atomic */
        uint8_t *data;                  /* owned buffer, or borrowed (below) */
        size_t size, allocated;
        sd_bus_message *borrowed_bus;   /* data points into this bus message */
        struct Conn *borrowed_conn;     /* its connection: sd-bus refcounts are not
                                         * atomic, so the bus message is dropped
                                         * under the connection's lock */
        ipcmux_shmem *borrowed_region;  /* or into this spilled payload region */

        ipcmux_shmem **shmems;          /* NULL entries: taken */
        size_t n_shmems, allocated_shmems;
        int *fds;                       /* -1 entries: taken */
        size_t n_fds, allocated_fds;
        ipcmux_sender **senders;        /* NULL entries: taken */
        size_t n_senders, allocated_senders;

        char *sender;                   /* unique name of the sending process, NULL: local */
        char sender_buf[24];            /* short names live here (no malloc) */
        List qlink;                     /* in a receiver queue */
        uint64_t wire_size;             /* frame cost counted for flow control */
        /* Receive-side quota accounting while queued (see receiver.c). */
        struct RxPeer *accounted_peer;
        size_t accounted_fds;
        uint64_t accounted_region_bytes;
};

int message_new(ipcmux_message **ret);
int message_set_sender(ipcmux_message *m, const char *sender);
/* Take @fd (owned) as attachment. */
int message_push_fd(ipcmux_message *m, int fd);
/* Take a reference of @s as attachment. */
int message_push_shmem(ipcmux_message *m, ipcmux_shmem *s);
/* Take @s (a reference the caller gives up) as attachment. */
int message_push_sender(ipcmux_message *m, ipcmux_sender *s);
