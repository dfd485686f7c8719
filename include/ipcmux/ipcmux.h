/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * ipcmux: many cheap one-way subchannels multiplexed over ONE D-Bus
 * connection per process (the C form of Servo's ipc-channel-mux).
 *
 * Conventions (as sd-bus): functions return int, < 0 is -errno; objects are
 * refcounted, _unref(NULL) is a no-op returning NULL; out-parameters come last
 * and are untouched on failure.  Every function may be called from any thread
 * (see "Threads" in README.md).
 *
 * Error codes used throughout:
 *   -EPIPE       disconnected: send after the receiver is gone, or recv once
 *                every sender is gone and the queue is drained
 *   -EAGAIN      nothing queued (try_recv)
 *   -ETIMEDOUT   a timeout expired
 *   -EINVAL      bad arguments
 *   -ECHILD      object used in a child process after fork()
 *   -ECONNRESET  the bus connection itself is lost
 *   -ENOMEM      out of memory
 */

#include <inttypes.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <systemd/sd-bus.h>
#include <systemd/sd-event.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct ipcmux_channel ipcmux_channel;    /* a multiplexing channel */
typedef struct ipcmux_sender ipcmux_sender;      /* a subchannel's sending end (clonable) */
typedef struct ipcmux_receiver ipcmux_receiver;  /* a subchannel's receiving end */
typedef struct ipcmux_message ipcmux_message;    /* payload bytes + attachments */
typedef struct ipcmux_shmem ipcmux_shmem;        /* a shared-memory region (sealed memfd) */
typedef struct ipcmux_server ipcmux_server;      /* one-shot bootstrap server */

/* Wait forever (for the *_timeout calls). */
#define IPCMUX_TIMEOUT_INFINITE UINT64_MAX

/* ---- channels ------------------------------------------------------------ */

/*
 * ipcmux_channel_new() - a channel on the process-wide session-bus connection
 *
 * All channels made by this call share ONE connection to
 * $DBUS_SESSION_BUS_ADDRESS, opened on first use.  Returns once that
 * connection is authenticated and holds its unique name.
 * Return: 0, -ENOMEM, or the connect error (e.g. -ENOENT, -ECONNREFUSED).
 */
int ipcmux_channel_new(ipcmux_channel **ret);

/*
 * ipcmux_channel_new_for_bus() - a channel on an application's own connection
 * @bus: a started (or starting) bus connection; ipcmux takes a reference.
 *
 * All channels on the same sd_bus share its dispatch state.  The application
 * must not call into @bus from another thread while an ipcmux call runs.
 */
int ipcmux_channel_new_for_bus(sd_bus *bus, ipcmux_channel **ret);

ipcmux_channel *ipcmux_channel_ref(ipcmux_channel *c);
ipcmux_channel *ipcmux_channel_unref(ipcmux_channel *c);

/*
 * ipcmux_channel_sub_channel() - create a subchannel
 *
 * Registers no D-Bus object and opens no fd: only memory.  Fails only with
 * -ENOMEM (and -EINVAL/-ECHILD for misuse).  Dropping the channel does not
 * disconnect subchannels already created.
 */
int ipcmux_channel_sub_channel(ipcmux_channel *c, ipcmux_sender **ret_tx, ipcmux_receiver **ret_rx);

/* The channel's object-path prefix (receivers live below it). Borrowed. */
const char *ipcmux_channel_get_prefix(ipcmux_channel *c);
/* The connection's unique bus name (":1.42"). Borrowed. */
const char *ipcmux_channel_get_unique_name(ipcmux_channel *c);
/* The underlying connection (borrowed, do not unref). */
sd_bus *ipcmux_channel_get_bus(ipcmux_channel *c);

/* ---- senders ------------------------------------------------------------- */

/* Clone: all references share one hold on the subchannel. */
ipcmux_sender *ipcmux_sender_ref(ipcmux_sender *s);
/* Dropping the last reference flushes what was sent, then releases the hold. */
ipcmux_sender *ipcmux_sender_unref(ipcmux_sender *s);

/*
 * ipcmux_sender_send() - send a message (never blocks)
 * @m: stays the caller's; its payload is copied, its regions and fds are
 *     shared (dup'ed), its attached senders are transferred as new copies.
 *
 * Return: 0, -EPIPE if the receiver is known to be gone, -ENOBUFS if a
 * bounded backlog (ipcmux_sender_set_max_queued) is full, -ECONNRESET,
 * -ENOMEM, -EMSGSIZE for an unsendable message.
 */
int ipcmux_sender_send(ipcmux_sender *s, ipcmux_message *m);
int ipcmux_sender_send_bytes(ipcmux_sender *s, const void *data, size_t size);

/*
 * Flow control.  Each subchannel has a credit window (8192 messages or
 * 8 MiB in flight from one process, regions and spilled payloads counted by
 * their size; a single larger message goes alone), under a 16 MiB cap per
 * destination process.  Beyond it sends still never block: messages wait in
 * this process, per subchannel, and leave when credit comes back and the
 * application next calls into ipcmux (or its loop runs).
 *
 * ipcmux_sender_get_queued(): what waits in this process for @s's
 * subchannel.  ipcmux_sender_set_max_queued(): bound that backlog (0 =
 * unbounded, the default); a send that would exceed it fails with -ENOBUFS
 * and nothing is queued.  Both apply to every clone of @s in this process.
 *
 * The last unref of a sender waits for its queue to leave, as long as the
 * receiving process makes progress (credits or acknowledges anything of
 * ours).  After 10 s without any, the queued messages are dropped and
 * reported: ipcmux_sender_get_lost() here, the receiver's Lost property and
 * ipcmux_receiver_get_lost() there.  Never silently.
 */
int ipcmux_sender_get_queued(ipcmux_sender *s, uint64_t *ret_msgs, uint64_t *ret_bytes);
int ipcmux_sender_set_max_queued(ipcmux_sender *s, uint64_t max_msgs, uint64_t max_bytes);
uint64_t ipcmux_sender_get_lost(ipcmux_sender *s);

/* Object path of the receiver this sender sends to. Borrowed. */
const char *ipcmux_sender_get_path(ipcmux_sender *s);
/* Unique bus name of the process that holds the receiver. Borrowed. */
const char *ipcmux_sender_get_destination(ipcmux_sender *s);

/* ---- receivers ----------------------------------------------------------- */

/* Dropping the receiver removes its object; senders get -EPIPE. Queued
 * messages are discarded (their regions, fds and senders released). */
ipcmux_receiver *ipcmux_receiver_unref(ipcmux_receiver *r);

/* Blocks, dispatching the whole connection while it waits. */
int ipcmux_receiver_recv(ipcmux_receiver *r, ipcmux_message **ret);
/* -EAGAIN if nothing is queued. */
int ipcmux_receiver_try_recv(ipcmux_receiver *r, ipcmux_message **ret);
/* @timeout_usec is relative; IPCMUX_TIMEOUT_INFINITE waits forever. -ETIMEDOUT. */
int ipcmux_receiver_try_recv_timeout(ipcmux_receiver *r, uint64_t timeout_usec, ipcmux_message **ret);
/* Its D-Bus object path. Borrowed. */
const char *ipcmux_receiver_get_path(ipcmux_receiver *r);
/* Messages known lost on the way to this receiver (sequence gaps, senders that gave up). */
uint64_t ipcmux_receiver_get_lost(ipcmux_receiver *r);

/* ---- messages ------------------------------------------------------------ */

int ipcmux_message_new(ipcmux_message **ret);
ipcmux_message *ipcmux_message_ref(ipcmux_message *m);
ipcmux_message *ipcmux_message_unref(ipcmux_message *m);
/* Appends payload bytes (any size: large payloads travel in a sealed memfd). */
int ipcmux_message_append(ipcmux_message *m, const void *data, size_t size);
/* The payload; *ret_size may be NULL. Never NULL for a valid message. */
const void *ipcmux_message_get_data(ipcmux_message *m, size_t *ret_size);

/* ---- shared-memory regions ----------------------------------------------- */

/*
 * A region is a sealed memfd: its size can never change, so mapping it can
 * never fault.  Regions created here are mapped read-write in this process;
 * regions received from a message are mapped READ-ONLY
 * (ipcmux_shmem_get_mutable_data() returns NULL for them).  Writing a region
 * after sending it is allowed and visible to every holder: that is shared
 * memory, synchronise it yourself (the reference's "only one reader/writer"
 * rule).  Sending a region costs one fd per message at the receiver.
 */
int ipcmux_shmem_new(size_t size, ipcmux_shmem **ret);                 /* zero-filled */
int ipcmux_shmem_new_from_bytes(const void *data, size_t size, ipcmux_shmem **ret);
int ipcmux_shmem_new_from_byte(uint8_t byte, size_t size, ipcmux_shmem **ret);
ipcmux_shmem *ipcmux_shmem_ref(ipcmux_shmem *s);
ipcmux_shmem *ipcmux_shmem_unref(ipcmux_shmem *s);
/* Never NULL for a valid region (size 0 gives a valid empty pointer). */
const void *ipcmux_shmem_get_data(ipcmux_shmem *s);
size_t ipcmux_shmem_get_size(ipcmux_shmem *s);
/* Writable view, or NULL for a received (read-only) region. */
void *ipcmux_shmem_get_mutable_data(ipcmux_shmem *s);
/* 1 if both regions hold the same bytes, 0 if not (the reference's ==). */
int ipcmux_shmem_equal(ipcmux_shmem *a, ipcmux_shmem *b);
/*
 * ipcmux_shmem_take() - consume one reference and return the bytes as a
 * malloc()ed buffer (free() it; a 0-byte region gives a valid pointer).
 */
int ipcmux_shmem_take(ipcmux_shmem *s, void **ret_data, size_t *ret_size);
/* The region's memfd (borrowed; dup it to keep it). */
int ipcmux_shmem_get_fd(ipcmux_shmem *s);

/*
 * Attachments.  Indices are per kind (regions, fds, senders), dense, 0-based
 * in attach order and identical at the receiver.  Attaching the same object
 * twice gives two indices.  A taken index or one out of range is an error
 * (-ENXIO, -EINVAL respectively); what is never taken is released with the
 * message.
 */
int ipcmux_message_attach_shmem(ipcmux_message *m, ipcmux_shmem *s);  /* >= 0: the index */
int ipcmux_message_take_shmem(ipcmux_message *m, unsigned index, ipcmux_shmem **ret);
unsigned ipcmux_message_get_n_shmem(ipcmux_message *m);

/* Plain fds (pipes, sockets, files) pass through unmapped. @fd is dup'ed. */
int ipcmux_message_attach_fd(ipcmux_message *m, int fd);              /* >= 0: the index */
/* The caller owns *ret_fd (O_CLOEXEC). */
int ipcmux_message_take_fd(ipcmux_message *m, unsigned index, int *ret_fd);
unsigned ipcmux_message_get_n_fds(ipcmux_message *m);

/*
 * Senders travel inside messages, to this or any other process on the bus,
 * at zero fd cost.  The message holds its own copy (a clone of @s); the
 * receiver gets a new copy that counts as a holder until released.
 * Receivers cannot be sent: a receiver IS an object on its process's
 * connection (its path names that connection), so it cannot change owner.
 */
/* Sending a message that carries a sender of ANOTHER connection of this
 * process (ipcmux_channel_new_for_bus) fails with -EXDEV. */
int ipcmux_message_attach_sender(ipcmux_message *m, ipcmux_sender *s);  /* >= 0: the index; m holds its own copy */
int ipcmux_message_take_sender(ipcmux_message *m, unsigned index, ipcmux_sender **ret);
unsigned ipcmux_message_get_n_senders(ipcmux_message *m);

/* ---- one-shot servers ---------------------------------------------------- */

/*
 * ipcmux_server_new() - bootstrap a subchannel by name
 * @ret_name: "<unique name><receiver path>#<32 hex token>"; free() it.  Any
 *            process on the same bus may pass it to ipcmux_sender_connect().
 *
 * Exactly one client can connect: the bus arbitrates, so a second client is
 * refused (-EADDRINUSE from connect) even while this process is busy.
 */
int ipcmux_server_new(ipcmux_server **ret, char **ret_name);   /* ret_name: free() it */
int ipcmux_server_new_for_channel(ipcmux_channel *c, ipcmux_server **ret, char **ret_name);
/* On an application's own connection (the system bus, say). */
int ipcmux_server_new_for_bus(sd_bus *bus, ipcmux_server **ret, char **ret_name);
/*
 * Blocks (dispatching the connection) until the client's first message;
 * returns the receiver and that message.  -EPIPE if the client vanished
 * before sending anything.  -EALREADY if already accepted.
 */
int ipcmux_server_accept(ipcmux_server *srv, ipcmux_receiver **ret_rx, ipcmux_message **ret_first);
int ipcmux_server_accept_timeout(ipcmux_server *srv, uint64_t timeout_usec,
                                 ipcmux_receiver **ret_rx, ipcmux_message **ret_first);
/* Unique name of the client that connected, or NULL. Borrowed. */
const char *ipcmux_server_get_name_owner(ipcmux_server *srv);
ipcmux_server *ipcmux_server_unref(ipcmux_server *srv);

/*
 * ipcmux_sender_connect() - client side: a sender for the server's subchannel
 * Return: 0; -EADDRINUSE if another client connected first;
 * -ECONNREFUSED if the server's process is not on the bus; -EINVAL for a
 * malformed name (or one of this very connection).
 */
int ipcmux_sender_connect(const char *name, ipcmux_sender **ret); /* from any process on the same bus */
int ipcmux_sender_connect_for_channel(ipcmux_channel *c, const char *name, ipcmux_sender **ret);
int ipcmux_sender_connect_for_bus(sd_bus *bus, const char *name, ipcmux_sender **ret);

/* ---- listeners: services with many clients -------------------------------- */

typedef struct ipcmux_listener ipcmux_listener;

/*
 * ipcmux_listener_new() - accept clients until closed (beyond the one-shot
 * server)
 * @name: the name clients connect to.  If it is a valid well-known bus name
 *        ("org.example.Echo"), ipcmux also requests it on the bus
 *        (-EEXIST if another connection owns it).
 *
 * Every client that connects gains a sender for the listener's receiver;
 * ipcmux_message_get_sender() tells which client sent a message, and
 * ipcmux_channel_get_peer_creds() its uid and pid.  Unref closes the
 * listener: clients' sends fail with -EPIPE.
 */
int ipcmux_listener_new(ipcmux_channel *c, const char *name, ipcmux_listener **ret);
/* The listener's receiver (borrowed; recv on it or set a handler). */
ipcmux_receiver *ipcmux_listener_get_receiver(ipcmux_listener *l);
/* Clients that connected so far. */
uint64_t ipcmux_listener_get_n_clients(ipcmux_listener *l);
ipcmux_listener *ipcmux_listener_unref(ipcmux_listener *l);

/*
 * ipcmux_sender_connect_service() - client of a listener
 * @service: bus name of the service (well-known or unique)
 * @name: listener name, NULL = @service
 * Return: 0; -ENOENT if the service has no such listener; a bus error
 * (e.g. -EHOSTUNREACH, -ECONNREFUSED) if the service is not there.
 */
int ipcmux_sender_connect_service(ipcmux_channel *c, const char *service, const char *name, ipcmux_sender **ret);

/* ---- handlers and event loops -------------------------------------------- */

/*
 * ipcmux_receiver_set_handler() - deliver messages to a callback (the C form
 * of the reference's router)
 *
 * The handler runs from whatever drives the connection: an attached loop
 * (sd-event, GLib, a custom loop calling ipcmux_channel_process()) or any
 * blocking ipcmux call of any thread.  It is called once per message (@m
 * borrowed for the call: ipcmux_message_ref() it to keep it; @error 0), and
 * once with @m NULL and @error -EPIPE when the subchannel is disconnected.
 * Messages queued before the handler was set are delivered to it first.
 * Calls for one receiver never overlap and keep FIFO order.
 *
 * The handler runs WITHOUT ipcmux's lock: it may send, keep @m, drop this
 * receiver (no call follows), drop senders or the channel, create
 * subchannels, set another handler, and even block in recv or accept on
 * another receiver.  While a handler is set, recv on that receiver returns
 * -EBUSY.  NULL @handler returns the receiver to recv mode.
 */
typedef void (*ipcmux_receive_handler_t)(ipcmux_receiver *r, ipcmux_message *m, int error, void *userdata);
int ipcmux_receiver_set_handler(ipcmux_receiver *r, ipcmux_receive_handler_t handler, void *userdata);

/*
 * Wait on several receivers at once (the reference's receiver sets):
 * returns 0 and the index of a receiver on which recv will not block (a
 * message is queued, or it is disconnected); -ETIMEDOUT.  All receivers must
 * be on the same connection (-EXDEV) and have no handler (-EINVAL).
 */
int ipcmux_receiver_select(ipcmux_receiver *const *rxs, size_t n, uint64_t timeout_usec, size_t *ret_index);

/*
 * One driver per connection.  The connection is process-wide (for
 * ipcmux_channel_new()), so only one event loop may drive it: attaching a
 * second returns -EBUSY.  Blocking ipcmux calls keep working beside it.
 */
int ipcmux_channel_attach_event(ipcmux_channel *c, sd_event *e, int64_t priority);  /* e NULL: default loop */
int ipcmux_channel_detach_event(ipcmux_channel *c);

/*
 * Custom loops, with sd-bus's semantics: poll ipcmux_channel_get_fd() for
 * ipcmux_channel_get_events() (call it before each poll: it also updates
 * what the fd reports), wake up at the absolute CLOCK_MONOTONIC time of
 * ipcmux_channel_get_timeout() (0: work is due now, UINT64_MAX: none), then
 * call ipcmux_channel_process() until it returns 0.  Claim the driver slot
 * with ipcmux_channel_attach_loop() first (-EBUSY if another loop has it).
 */
int ipcmux_channel_attach_loop(ipcmux_channel *c);
int ipcmux_channel_detach_loop(ipcmux_channel *c);
int ipcmux_channel_get_fd(ipcmux_channel *c);
int ipcmux_channel_get_events(ipcmux_channel *c);
int ipcmux_channel_get_timeout(ipcmux_channel *c, uint64_t *ret_usec);
int ipcmux_channel_process(ipcmux_channel *c);

/* ---- peers ----------------------------------------------------------------- */

/* Unique bus name of the process that sent @m, or NULL if it came from this process. Borrowed. */
const char *ipcmux_message_get_sender(ipcmux_message *m);
/*
 * Credentials of a peer (by unique name), from the bus (asked once per
 * peer, then cached; blocks dispatching the connection the first time).
 * Out-parameters may be NULL.  -ESRCH if the peer is gone.
 */
int ipcmux_channel_get_peer_creds(ipcmux_channel *c, const char *unique_name, uid_t *ret_uid, pid_t *ret_pid);

/* ---- log hook ------------------------------------------------------------ */

/*
 * The library never prints.  A debug hook receives what it would have said
 * (syslog levels: LOG_ERR .. LOG_DEBUG).  NULL restores silence.
 */
typedef void (*ipcmux_log_handler_t)(int level, const char *message, void *userdata);
void ipcmux_set_log_handler(ipcmux_log_handler_t handler, void *userdata);

/* ---- cleanup helpers ----------------------------------------------------- */

#define _IPCMUX_DEFINE_UNREFP(t, f)                                     \
        static __inline__ void f##p(t **p) {                           \
                if (*p)                                                \
                        f(*p);                                         \
        }                                                              \
        struct _ipcmux_trailing_semicolon_##t

_IPCMUX_DEFINE_UNREFP(ipcmux_channel, ipcmux_channel_unref);
_IPCMUX_DEFINE_UNREFP(ipcmux_sender, ipcmux_sender_unref);
_IPCMUX_DEFINE_UNREFP(ipcmux_receiver, ipcmux_receiver_unref);
_IPCMUX_DEFINE_UNREFP(ipcmux_message, ipcmux_message_unref);
_IPCMUX_DEFINE_UNREFP(ipcmux_shmem, ipcmux_shmem_unref);
_IPCMUX_DEFINE_UNREFP(ipcmux_server, ipcmux_server_unref);
_IPCMUX_DEFINE_UNREFP(ipcmux_listener, ipcmux_listener_unref);

#ifdef __cplusplus
}
#endif
