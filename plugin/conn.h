/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Conn: one bus connection and everything multiplexed over it.
 *
 * Threads.  sd-bus is not thread-safe, so every Conn has one mutex that
 * guards the sd_bus and all ipcmux state hanging off it (channels,
 * receivers, endpoints, peers).  Public calls take it; it is recursive per
 * thread so handlers running inside sd_bus_process() may call back in.
 *
 * I/O ownership without an I/O thread.  A thread that must wait (recv,
 * accept, flush) becomes the "poller" if nobody is: it drops the lock,
 * ppoll()s the bus fd plus an eventfd, retakes the lock and dispatches.
 * Other waiting threads sleep on a condition variable that is broadcast
 * whenever a queue changes or the poller role frees up.  So the thread that
 * wants a message usually reads it itself: no thread hop, no extra wake-up.
 *
 * Output.  ipcmux keeps its own queues and hands sd-bus a message only while
 * sd-bus's write queue is empty (sd-bus drains that queue in O(n^2) and
 * would queue without bound).  Control messages (small, ordering-critical)
 * go first, from ctrlq; then data from endpoints in round robin.
 */

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-bus.h>

#include "hashmap.h"
#include "list.h"
#include "sentlog.h"
#include "wire.h"

typedef struct Conn Conn;
typedef struct Endpoint Endpoint;
typedef struct Peer Peer;

struct Conn {
        unsigned n_ref;                 /* atomic */
        List link;                      /* in the global registry */

        pthread_mutex_t mutex;
        pthread_t owner;                /* thread holding mutex, for recursion */
        unsigned depth;
        pthread_cond_t cond;

        sd_bus *bus;
        bool is_default;                /* the process-wide session connection */
        uint64_t fork_gen;
        char *unique_name;              /* NULL on a direct (P2P) connection */
        int error;                      /* < 0: connection lost */

        bool polling;                   /* a thread sits in ppoll() without the lock */
        short polled_events;            /* ...waiting for these on the bus fd */
        uint64_t polled_until;          /* ...or until then (CLOCK_MONOTONIC µs) */
        int wake_fd;                    /* eventfd to kick the poller */
        int loop_wake_fd;               /* eventfd to kick an attached loop (in epoll_fd):
                                         * separate, so neither drains the other's wake-up */
        unsigned processing;            /* inside sd_bus_process() */
        unsigned n_waiters;
        uint64_t last_dispatch_usec;    /* last time the socket was read (now_coarse_usec) */
        const void *last_gone_call;     /* dedupe: find() may run twice per call */
        /* The call being dispatched and its sender's Peer, as the filter
         * that counts calls found it (receive_call() needs it again). */
        const sd_bus_message *dispatch_call;
        Peer *dispatch_peer;

        sd_bus_slot *root_slot;         /* org.ipcmux.Peer1 at /org/ipcmux */
        sd_bus_slot *disconnect_slot;

        List channels;
        unsigned n_channels;
        HashMap receivers;              /* id (8 bytes) -> ipcmux_receiver */
        HashMap endpoints;              /* "dest/path" -> Endpoint (remote only) */
        HashMap peers;                  /* unique name -> Peer */
        List peer_graveyard;            /* Peer.graveyard_link: gone, freed by peers_sweep() */
        HashMap listeners;              /* name -> ipcmux_listener */

        List handled;                   /* receivers with a handler */
        List handler_ready;             /* receivers with handler calls due */
        bool in_handlers;               /* one thread delivers handler calls at a time */

        /* External drivers (an event loop) see one fd: an epoll set of the
         * bus fd and loop_wake_fd, so a local send can wake them too. */
        int epoll_fd;
        uint32_t epoll_bus_events;
        bool driven;                    /* an event loop is attached (at most one) */
        struct sd_event *event;
        struct sd_event_source *event_io, *event_time;

        List ctrlq;                     /* CtrlItem: control messages, sent first */
        SentLog sent;                   /* no-reply calls the broker may still refuse */
        List ready;                     /* Endpoints with queued frames */
        uint64_t death_gen;             /* bumped per vanished peer (orphan barrier) */
        uint64_t emitted;               /* Send calls handed to sd-bus so far */
        uint64_t synced;                /* ...of which the broker has confirmed reading */
        uint64_t spill_threshold;       /* payloads above go into a memfd */
        size_t fd_budget;               /* fds queued messages of one peer may hold */

        WireCall scratch;               /* decoder buffers, reused under the lock */
};

/* Process-wide fork generation: objects made before a fork refuse with -ECHILD. */
extern uint64_t conn_fork_gen;

static inline bool conn_forked(const Conn *c) {
        return c->fork_gen != __atomic_load_n(&conn_fork_gen, __ATOMIC_RELAXED);
}

/* The process-wide session-bus connection (opened on first use). */
int conn_get_default(Conn **ret);
/* The Conn for an application's bus (one per sd_bus). */
int conn_get_for_bus(sd_bus *bus, Conn **ret);
Conn *conn_ref(Conn *c);
Conn *conn_unref(Conn *c);

void conn_lock(Conn *c);
void conn_unlock(Conn *c);
static inline void conn_unlockp(Conn **c) {
        if (*c)
                conn_unlock(*c);
}
/* Lock and check usability: -ECHILD after fork. */
int conn_enter(Conn *c);

/* Something a waiter may be waiting for happened. */
void conn_notify(Conn *c);
/* Make the poller or the attached event loop come round (handler work is due). */
void conn_wake(Conn *c);

/*
 * Wait (dispatching the connection) until @ready(@userdata) returns true or
 * the absolute CLOCK_MONOTONIC @deadline (usec, UINT64_MAX = never) passes.
 * Returns 0 when ready, -ETIMEDOUT, -ECONNRESET if the connection is lost
 * (and not ready), -EDEADLK if called where it cannot wait (inside a
 * dispatch callback while nothing is ready).  Lock held on entry and exit.
 */
int conn_wait(Conn *c, bool (*ready)(void *userdata), void *userdata, uint64_t deadline);

/* One step for an external loop: >0 if it did work (call again). */
int conn_process(Conn *c);
/* Non-blocking: process what is readable now and flush what can be written. */
int conn_dispatch_pending(Conn *c);

/* Queue a control message (takes the reference) and flush. */
int conn_send_ctrl(Conn *c, sd_bus_message *m);
/* Queue a control message (takes the reference) without flushing. */
void conn_queue_ctrl(Conn *c, sd_bus_message *m);
/* Hand queued output to sd-bus while its write queue is empty. */
int conn_flush(Conn *c);
/* Is anything of ours or sd-bus's still waiting to be written? */
bool conn_output_pending(Conn *c);

/* Build a no-reply method call to @dest (fails with -ECONNRESET if lost). */
int conn_new_call(Conn *c, const char *dest, const char *path, const char *iface,
                  const char *member, sd_bus_message **ret);

/*
 * A method call with reply, waited for while dispatching the connection
 * (never sd_bus_call(), which would stall every other user of the bus).
 * Returns the reply (method errors included) or -ETIMEDOUT/-ECONNRESET.
 */
int conn_call(Conn *c, sd_bus_message *m, uint64_t timeout_usec, sd_bus_message **ret_reply);
/* conn_call() of the bus driver's @member (org.freedesktop.DBus) with
 * @types and the arguments after it; the reply may be an error. */
int conn_call_driver(Conn *c, sd_bus_message **ret_reply, const char *member, const char *types, ...);
/* RequestName(@name, DO_NOT_QUEUE) through conn_call(); @ret_result: the
 * broker's answer (1 primary owner, 3 exists, 4 already ours). */
int conn_request_name(Conn *c, const char *name, uint32_t *ret_result);

struct ipcmux_listener *listener_find(Conn *c, const char *name);
int listener_method_connect(sd_bus_message *m, Conn *c, sd_bus_error *error);

/* Remove the sd-event sources of ipcmux_channel_attach_event(). */
void conn_detach_event(Conn *c);

/*
 * Make sure the broker has read everything handed to sd-bus so far (a
 * round trip to it: it processes our messages in order).  After this, data
 * already routed survives our process exiting.
 */
int conn_sync_bus(Conn *c, uint64_t deadline);

/* Connection lost: record it and wake everybody. */
void conn_fail(Conn *c, int error);

/* Release the lock entirely around user code or a blocking syscall. */
unsigned conn_lock_suspend(Conn *c);
void conn_lock_resume(Conn *c, unsigned depth);

size_t fd_budget(void);
uint64_t now_usec(void);
uint64_t now_coarse_usec(void);
uint64_t random_u64(void);
void random_bytes(void *p, size_t n);
