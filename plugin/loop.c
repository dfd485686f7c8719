/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Event-loop integration: the sd-bus-style quartet (fd, events, absolute
 * timeout, process) for custom loops, sd-event attachment, and the single
 * "driver" slot a connection has.
 *
 * The fd handed to loops is an epoll set holding the bus fd (with the events
 * sd-bus currently wants) and a wake eventfd of its own, so work that does not come
 * from the socket (a local send to a receiver with a handler, another
 * thread's output) wakes the loop as well.  Loops only ever poll it for
 * POLLIN.
 */

#include <poll.h>
#include <sys/epoll.h>
#include <systemd/sd-event.h>

#include "channel.h"
#include "conn.h"
#include "macro.h"
#include "receiver.h"

static int ensure_epoll(Conn *c) {
        struct epoll_event ev = { .events = EPOLLIN };
        int fd;

        if (c->epoll_fd >= 0)
                return c->epoll_fd;
        fd = epoll_create1(EPOLL_CLOEXEC);
        if (fd < 0)
                return negative_errno();
        ev.data.fd = c->loop_wake_fd;
        if (epoll_ctl(fd, EPOLL_CTL_ADD, c->loop_wake_fd, &ev) < 0)
                goto fail;
        ev.data.fd = sd_bus_get_fd(c->bus);
        if (ev.data.fd < 0 || epoll_ctl(fd, EPOLL_CTL_ADD, ev.data.fd, &ev) < 0)
                goto fail;
        c->epoll_bus_events = EPOLLIN;
        c->epoll_fd = fd;
        return fd;
fail:
        {
                int r = negative_errno();
                safe_close(fd);
                return r;
        }
}

/* Keep the bus fd's interest in step with what sd-bus wants (POLLOUT while it has output). */
static int update_events(Conn *c) {
        struct epoll_event ev = {};
        int e, r;

        r = ensure_epoll(c);
        if (r < 0)
                return r;
        e = sd_bus_get_events(c->bus);
        if (e < 0)
                return e;
        ev.events = (uint32_t) e & (EPOLLIN | EPOLLOUT);
        if (ev.events == 0)
                ev.events = EPOLLIN;
        if (ev.events != c->epoll_bus_events) {
                ev.data.fd = sd_bus_get_fd(c->bus);
                if (epoll_ctl(c->epoll_fd, EPOLL_CTL_MOD, ev.data.fd, &ev) < 0)
                        return negative_errno();
                c->epoll_bus_events = ev.events;
        }
        return 0;
}

static uint64_t next_timeout(Conn *c) {
        uint64_t t = UINT64_MAX;

        if (!list_is_empty(&c->handler_ready))
                return 0;
        if (sd_bus_get_timeout(c->bus, &t) < 0)
                return 0;
        return MIN(t, SENTLOG_NEXT_RETRY(c));
}

_public_ int ipcmux_channel_get_fd(ipcmux_channel *ch) {
        Conn *c;
        int r;

        assert_return(ch, -EINVAL);
        c = ch->conn;
        r = conn_enter(c);
        if (r < 0)
                return r;
        r = c->error < 0 ? -ECONNRESET : ensure_epoll(c);
        conn_unlock(c);
        return r;
}

_public_ int ipcmux_channel_get_events(ipcmux_channel *ch) {
        Conn *c;
        int r;

        assert_return(ch, -EINVAL);
        c = ch->conn;
        r = conn_enter(c);
        if (r < 0)
                return r;
        r = c->error < 0 ? -ECONNRESET : update_events(c);
        conn_unlock(c);
        return r < 0 ? r : POLLIN;
}

_public_ int ipcmux_channel_get_timeout(ipcmux_channel *ch, uint64_t *ret_usec) {
        Conn *c;
        int r;

        assert_return(ch, -EINVAL);
        assert_return(ret_usec, -EINVAL);
        c = ch->conn;
        r = conn_enter(c);
        if (r < 0)
                return r;
        if (c->error < 0)
                r = -ECONNRESET;
        else
                *ret_usec = next_timeout(c);
        conn_unlock(c);
        return r;
}

_public_ int ipcmux_channel_process(ipcmux_channel *ch) {
        Conn *c;
        int r;

        assert_return(ch, -EINVAL);
        c = conn_ref(ch->conn);
        r = conn_enter(c);
        if (r >= 0) {
                r = conn_process(c);
                conn_unlock(c);
        }
        conn_unref(c);
        return r;
}

_public_ int ipcmux_channel_attach_loop(ipcmux_channel *ch) {
        Conn *c;
        int r;

        assert_return(ch, -EINVAL);
        c = ch->conn;
        r = conn_enter(c);
        if (r < 0)
                return r;
        if (c->driven)
                r = -EBUSY;
        else {
                r = ensure_epoll(c);
                if (r >= 0) {
                        c->driven = true;
                        r = 0;
                }
        }
        conn_unlock(c);
        return r;
}

_public_ int ipcmux_channel_detach_loop(ipcmux_channel *ch) {
        Conn *c;
        int r;

        assert_return(ch, -EINVAL);
        c = ch->conn;
        r = conn_enter(c);
        if (r < 0)
                return r;
        if (c->event)
                r = -EBUSY;     /* attached with attach_event: use detach_event */
        else
                c->driven = false;
        conn_unlock(c);
        return r;
}

/* ---- sd-event ------------------------------------------------------------ */

/* Dispatch in bounded rounds so other event sources get their turn. */
#define EVENT_BUDGET 64

static int event_dispatch(Conn *c) {
        int r = 0;

        conn_ref(c);
        if (conn_enter(c) >= 0) {
                for (unsigned i = 0; i < EVENT_BUDGET; i++) {
                        r = conn_process(c);
                        if (r <= 0)
                                break;
                }
                conn_unlock(c);
        }
        conn_unref(c);
        /* A lost connection is reported by the calls, not by killing the loop. */
        return 0;
}

static int on_event_io(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        return event_dispatch(userdata);
}

static int on_event_time(sd_event_source *s, uint64_t usec, void *userdata) {
        return event_dispatch(userdata);
}

static int on_event_prepare(sd_event_source *s, void *userdata) {
        Conn *c = userdata;
        uint64_t until;
        int r;

        r = conn_enter(c);
        if (r < 0)
                return 0;
        if (c->error >= 0) {
                (void) update_events(c);
                until = next_timeout(c);
                if (until == UINT64_MAX)
                        (void) sd_event_source_set_enabled(c->event_time, SD_EVENT_OFF);
                else {
                        (void) sd_event_source_set_time(c->event_time, until);
                        (void) sd_event_source_set_enabled(c->event_time, SD_EVENT_ONESHOT);
                }
        }
        conn_unlock(c);
        return 0;
}

void conn_detach_event(Conn *c) {
        c->event_io = sd_event_source_disable_unref(c->event_io);
        c->event_time = sd_event_source_disable_unref(c->event_time);
        c->event = sd_event_unref(c->event);
        c->driven = false;
}

_public_ int ipcmux_channel_attach_event(ipcmux_channel *ch, sd_event *e, int64_t priority) {
        _cleanup_(sd_event_unrefp) sd_event *def = NULL;
        Conn *c;
        int r, fd;

        assert_return(ch, -EINVAL);
        c = ch->conn;
        if (!e) {
                r = sd_event_default(&def);
                if (r < 0)
                        return r;
                e = def;
        }
        r = conn_enter(c);
        if (r < 0)
                return r;
        if (c->driven) {
                r = -EBUSY;
                goto out;
        }
        fd = ensure_epoll(c);
        if (fd < 0) {
                r = fd;
                goto out;
        }
        r = sd_event_add_io(e, &c->event_io, fd, EPOLLIN, on_event_io, c);
        if (r >= 0)
                r = sd_event_source_set_prepare(c->event_io, on_event_prepare);
        if (r >= 0)
                r = sd_event_source_set_priority(c->event_io, priority);
        if (r >= 0)
                r = sd_event_add_time(e, &c->event_time, CLOCK_MONOTONIC, 0, 0, on_event_time, c);
        if (r >= 0)
                r = sd_event_source_set_priority(c->event_time, priority);
        if (r >= 0)
                r = sd_event_source_set_enabled(c->event_time, SD_EVENT_OFF);
        if (r < 0) {
                conn_detach_event(c);
                goto out;
        }
        (void) sd_event_source_set_description(c->event_io, "ipcmux-io");
        (void) sd_event_source_set_description(c->event_time, "ipcmux-timer");
        c->event = sd_event_ref(e);
        c->driven = true;
        r = 0;
out:
        conn_unlock(c);
        return r;
}

_public_ int ipcmux_channel_detach_event(ipcmux_channel *ch) {
        Conn *c;
        int r;

        assert_return(ch, -EINVAL);
        c = ch->conn;
        r = conn_enter(c);
        if (r < 0)
                return r;
        if (!c->event)
                r = -ENXIO;
        else
                conn_detach_event(c);
        conn_unlock(c);
        return r;
}
