/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Wire codec of the Send call (see wire.h and PROTOCOL.md).  Reading keeps
 * pointers into the bus message (payloads, names, paths) instead of copying:
 * the caller holds the message while it uses the decoded call.
 */

#include <endian.h>
#include <errno.h>
#include <string.h>

#include "macro.h"
#include "wire.h"

void wire_call_reset(WireCall *w) {
        w->first_seq = 0;
        w->n_frames = w->n_regions = w->n_fd_refs = w->n_senders = w->n_call_fds = 0;
}

void wire_call_done(WireCall *w) {
        free(w->frames);
        free(w->regions);
        free(w->fds);
        free(w->senders);
        free(w->call_fds);
        *w = (WireCall) {};
}

static int read_regions(sd_bus_message *m, WireCall *w, WireFrame *f) {
        int r;

        r = sd_bus_message_enter_container(m, 'a', "(ut)");
        if (r < 0)
                return r;
        f->regions_at = w->n_regions;
        for (;;) {
                uint32_t idx;
                uint64_t size;

                r = sd_bus_message_read(m, "(ut)", &idx, &size);
                if (r < 0)
                        return r;
                if (r == 0)
                        break;
                if (f->n_regions >= WIRE_MAX_ATTACHMENTS)
                        return -EBADMSG;
                if (!GREEDY_REALLOC(w->regions, w->allocated_regions, w->n_regions + 1))
                        return -ENOMEM;
                w->regions[w->n_regions++] = (WireRegion) { .fd_index = idx, .size = size };
                f->n_regions++;
        }
        return sd_bus_message_exit_container(m);
}

static int read_fd_refs(sd_bus_message *m, WireCall *w, WireFrame *f) {
        const void *p;
        size_t n;
        int r;

        r = sd_bus_message_read_array(m, 'u', &p, &n);
        if (r < 0)
                return r;
        n /= sizeof(uint32_t);
        if (n > WIRE_MAX_ATTACHMENTS)
                return -EBADMSG;
        if (!GREEDY_REALLOC(w->fds, w->allocated_fds, w->n_fd_refs + n))
                return -ENOMEM;
        if (n > 0)
                memcpy(w->fds + w->n_fd_refs, p, n * sizeof(uint32_t));
        f->fds_at = w->n_fd_refs;
        f->n_fds = n;
        w->n_fd_refs += n;
        return 0;
}

static int read_senders(sd_bus_message *m, WireCall *w, WireFrame *f) {
        int r;

        r = sd_bus_message_enter_container(m, 'a', "(sot)");
        if (r < 0)
                return r;
        f->senders_at = w->n_senders;
        for (;;) {
                const char *owner, *path;
                uint64_t token;

                r = sd_bus_message_read(m, "(sot)", &owner, &path, &token);
                if (r < 0)
                        return r;
                if (r == 0)
                        break;
                if (f->n_senders >= WIRE_MAX_ATTACHMENTS)
                        return -EBADMSG;
                if (!GREEDY_REALLOC(w->senders, w->allocated_senders, w->n_senders + 1))
                        return -ENOMEM;
                w->senders[w->n_senders++] = (WireSenderRef) { .owner = owner, .path = path, .token = token };
                f->n_senders++;
        }
        return sd_bus_message_exit_container(m);
}

static int read_frame(sd_bus_message *m, WireCall *w) {
        WireFrame *f;
        int r;

        r = sd_bus_message_enter_container(m, 'r', "uaya(ut)aua(sot)");
        if (r <= 0)
                return r;
        if (!GREEDY_REALLOC(w->frames, w->allocated_frames, w->n_frames + 1))
                return -ENOMEM;
        f = &w->frames[w->n_frames];
        *f = (WireFrame) {};

        r = sd_bus_message_read_basic(m, 'u', &f->flags);
        if (r < 0)
                return r;
        r = sd_bus_message_read_array(m, 'y', &f->payload, &f->payload_size);
        if (r < 0)
                return r;
        r = read_regions(m, w, f);
        if (r < 0)
                return r;
        r = read_fd_refs(m, w, f);
        if (r < 0)
                return r;
        r = read_senders(m, w, f);
        if (r < 0)
                return r;
        r = sd_bus_message_exit_container(m);
        if (r < 0)
                return r;
        w->n_frames++;
        return 1;
}

int wire_read_send(sd_bus_message *m, WireCall *w) {
        int r;

        wire_call_reset(w);

        r = sd_bus_message_read_basic(m, 't', &w->first_seq);
        if (r < 0)
                return r;
        r = sd_bus_message_enter_container(m, 'a', IPCMUX_FRAME_SIGNATURE);
        if (r < 0)
                return r;
        for (;;) {
                r = read_frame(m, w);
                if (r < 0)
                        return r;
                if (r == 0)
                        break;
        }
        r = sd_bus_message_exit_container(m);
        if (r < 0)
                return r;

        r = sd_bus_message_enter_container(m, 'a', "h");
        if (r < 0)
                return r;
        for (;;) {
                int fd;

                r = sd_bus_message_read_basic(m, 'h', &fd);
                if (r < 0)
                        return r;
                if (r == 0)
                        break;
                if (!GREEDY_REALLOC(w->call_fds, w->allocated_call_fds, w->n_call_fds + 1))
                        return -ENOMEM;
                w->call_fds[w->n_call_fds++] = fd;
        }
        return sd_bus_message_exit_container(m);
}

int wire_parse_packed(const void *data, size_t size, WireCall *w) {
        const uint8_t *p = data;
        size_t off = sizeof(uint64_t);

        if (size < sizeof(uint64_t))
                return -EBADMSG;
        memcpy(&w->first_seq, p, sizeof(uint64_t));
        w->first_seq = le64toh(w->first_seq);

        while (off < size) {
                uint32_t len;

                if (size - off < 4)
                        return -EBADMSG;
                memcpy(&len, p + off, 4);
                len = le32toh(len);
                off += 4;
                if (len > size - off)
                        return -EBADMSG;
                if (!GREEDY_REALLOC(w->frames, w->allocated_frames, w->n_frames + 1))
                        return -ENOMEM;
                w->frames[w->n_frames++] = (WireFrame) {
                        .payload = p + off,
                        .payload_size = len,
                };
                off += len;
        }
        return 0;
}

int wire_read_packed(sd_bus_message *m, WireCall *w) {
        const void *data;
        size_t size;
        int r;

        wire_call_reset(w);
        r = sd_bus_message_read_array(m, 'y', &data, &size);
        if (r < 0)
                return r;
        return wire_parse_packed(data, size, w);
}

/* Mark fd index @idx used; -EBADMSG if out of range or used before. */
static int use_fd(uint8_t *used, size_t n_total, uint32_t idx) {
        if (idx >= n_total || used[idx])
                return -EBADMSG;
        used[idx] = 1;
        return 0;
}

int wire_validate(const WireCall *w, size_t n_staged) {
        size_t n_total = n_staged + w->n_call_fds;
        _cleanup_free_ uint8_t *used = NULL;

        if (n_total > 0) {
                used = calloc(n_total, 1);
                if (!used)
                        return -ENOMEM;
        }

        for (size_t i = 0; i < w->n_frames; i++) {
                const WireFrame *f = &w->frames[i];

                if (f->flags & ~(uint32_t) _WIRE_FRAME_KNOWN)
                        return -EBADMSG;
                if (f->flags & WIRE_FRAME_SPILLED) {
                        /* The payload lives in region 0; inline bytes would be ambiguous. */
                        if (f->n_regions < 1 || f->payload_size != 0)
                                return -EBADMSG;
                }
                for (unsigned j = 0; j < f->n_regions; j++)
                        if (use_fd(used, n_total, w->regions[f->regions_at + j].fd_index) < 0)
                                return -EBADMSG;
                for (unsigned j = 0; j < f->n_fds; j++)
                        if (use_fd(used, n_total, w->fds[f->fds_at + j]) < 0)
                                return -EBADMSG;
                for (unsigned j = 0; j < f->n_senders; j++) {
                        const WireSenderRef *s = &w->senders[f->senders_at + j];

                        /* Owners are unique names (":1.42"); the bus checks
                         * syntax, we check it is not a well-known name. */
                        if (s->owner[0] != ':' || !sd_bus_object_path_is_valid(s->path))
                                return -EBADMSG;
                }
        }
        return 0;
}

int wire_open_frames(sd_bus_message *m, uint64_t first_seq) {
        int r;

        r = sd_bus_message_append_basic(m, 't', &first_seq);
        if (r < 0)
                return r;
        return sd_bus_message_open_container(m, 'a', IPCMUX_FRAME_SIGNATURE);
}

int wire_append_frame(sd_bus_message *m, uint32_t flags, const void *payload, size_t payload_size,
                      unsigned n_regions, const uint32_t *region_fd_index, const uint64_t *region_sizes,
                      unsigned n_fds, const uint32_t *fd_fd_index,
                      unsigned n_senders, const WireSenderRef *senders) {
        int r;

        r = sd_bus_message_open_container(m, 'r', "uaya(ut)aua(sot)");
        if (r < 0)
                return r;
        r = sd_bus_message_append_basic(m, 'u', &flags);
        if (r < 0)
                return r;
        r = sd_bus_message_append_array(m, 'y', payload, payload_size);
        if (r < 0)
                return r;

        r = sd_bus_message_open_container(m, 'a', "(ut)");
        if (r < 0)
                return r;
        for (unsigned i = 0; i < n_regions; i++) {
                r = sd_bus_message_append(m, "(ut)", region_fd_index[i], region_sizes[i]);
                if (r < 0)
                        return r;
        }
        r = sd_bus_message_close_container(m);
        if (r < 0)
                return r;

        r = sd_bus_message_append_array(m, 'u', fd_fd_index, n_fds * sizeof(uint32_t));
        if (r < 0)
                return r;

        r = sd_bus_message_open_container(m, 'a', "(sot)");
        if (r < 0)
                return r;
        for (unsigned i = 0; i < n_senders; i++) {
                r = sd_bus_message_append(m, "(sot)", senders[i].owner, senders[i].path, senders[i].token);
                if (r < 0)
                        return r;
        }
        r = sd_bus_message_close_container(m);
        if (r < 0)
                return r;

        return sd_bus_message_close_container(m);
}

int wire_close_frames(sd_bus_message *m, const int *fds, unsigned n_fds) {
        int r;

        r = sd_bus_message_close_container(m);
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(m, 'a', "h");
        if (r < 0)
                return r;
        for (unsigned i = 0; i < n_fds; i++) {
                r = sd_bus_message_append_basic(m, 'h', &fds[i]);
                if (r < 0)
                        return r;
        }
        return sd_bus_message_close_container(m);
}
