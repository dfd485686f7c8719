/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Fuzz the decoding of peer-controlled Send and SendPacked calls:
 * wire_read_send(), wire_read_packed() and wire_validate() (plugin/wire.c).
 *
 * The input is a program, not a message: its bytes steer a structured
 * sequence of sd-bus appends that builds a method call on an unstarted
 * socketpair bus (as tests/test-wire.cc does), which is then sealed and
 * rewound so it reads like a received one.  That way the fuzzer spends its
 * time in our decoder and validator rather than in sd-bus's marshalling
 * checks.  Four shapes, chosen by the first byte:
 *
 *   SHAPE_RAW     a well-typed Send "ta(uaya(ut)aua(sot))ah" built with
 *                 plain sd-bus appends (any flags, indices, sizes, names);
 *   SHAPE_ENCODER the same, but built with the library's own encoder
 *                 (wire_open_frames / wire_append_frame / wire_close_frames);
 *   SHAPE_GARBAGE a body of randomly typed items, sometimes starting like a
 *                 Send: decoding must fail cleanly (or succeed, then validate);
 *   SHAPE_PACKED  the rest of the input as the byte array of a SendPacked
 *                 call (u64 first_seq, then u32 length + bytes per message).
 *
 * For the well-typed shapes the harness keeps its own model of what it
 * appended and checks: decoding succeeds exactly when no frame exceeds
 * WIRE_MAX_ATTACHMENTS; every decoded field equals the model; decoding the
 * same message twice into the reused WireCall gives the same result; and
 * wire_validate() agrees with an independent reference implementation of
 * the rules in PROTOCOL.md ("fd indices ... every index used at most once",
 * unknown flag bits refused, SPILLED needs region 0 and no inline bytes,
 * sender owners are unique names).  SendPacked arrays are checked against a
 * reference parser ("the records must cover the array exactly").  Any
 * disagreement aborts.
 *
 * Input layout (after the shape byte): little helpers below take bytes from
 * the front; running out of input yields zeros, so every input is valid.
 */

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "wire.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CHECK(cond)                                                                     \
        do {                                                                            \
                if (!(cond)) {                                                          \
                        fprintf(stderr, "fuzz-wire: check failed at %s:%d: %s\n",       \
                                __FILE__, __LINE__, #cond);                             \
                        abort();                                                        \
                }                                                                       \
        } while (0)

enum { SHAPE_RAW, SHAPE_ENCODER, SHAPE_GARBAGE, SHAPE_PACKED, _SHAPE_MAX };

#define MAX_FRAMES 8u
#define MAX_SMALL 24u           /* regions/fds/senders per frame, normally */
#define MAX_CALL_FDS 40u

typedef struct In {
        const uint8_t *p;
        size_t n;
} In;

static uint8_t u8(In *in) {
        if (in->n == 0)
                return 0;
        in->n--;
        return *in->p++;
}

static uint32_t u32(In *in) {
        uint32_t v = 0;
        for (unsigned i = 0; i < 4; i++)
                v |= (uint32_t) u8(in) << (8 * i);
        return v;
}

static uint64_t u64(In *in) {
        return (uint64_t) u32(in) | (uint64_t) u32(in) << 32;
}

/* A small index, mostly in the interesting range around the fd count. */
static uint32_t index_of(In *in) {
        uint8_t b = u8(in);

        if (b < 0xf0)
                return b % 48;
        if (b < 0xfc)
                return u32(in);
        return UINT32_MAX - (b & 3);
}

/* A count: small, or (@limit, rarely) right at the attachment limit.  Only
 * the fd index array gets the big counts: it is appended in one piece, so
 * such inputs stay fast. */
static unsigned count_of(In *in, unsigned small, bool limit) {
        uint8_t b = u8(in);

        if (limit && b == 0xff)
                return WIRE_MAX_ATTACHMENTS - 2 + (u8(in) % 4);  /* 65534..65537 */
        return b % (small + 1);
}

static uint64_t size_of(In *in) {
        uint8_t b = u8(in);

        switch (b & 3) {
        case 0:
                return b >> 2;
        case 1:
                return 4096u * (b >> 2);
        case 2:
                return u64(in);
        default:
                return UINT64_MAX - (b >> 2);
        }
}

static const char *const owners[] = {
        ":1.1", ":1.42", ":", ":x", "org.example.Name", "", "1.1", "::1.1", ":1.7\xc3\xa9",
};

static const char *const paths[] = {
        "/", "/a", "/org/ipcmux/0123456789abcdef0123456789abcdef/fedcba9876543210fedcba9876543210",
        "/org/ipcmux", "/_/__/x9",
};

/* ---- the model ----------------------------------------------------------- */

typedef struct MFrame {
        uint32_t flags;
        size_t payload_size;
        const uint8_t *payload;
        unsigned n_regions, n_fds, n_senders;
        uint32_t *region_idx;
        uint64_t *region_size;
        uint32_t *fd_idx;
        WireSenderRef *senders;
} MFrame;

typedef struct Model {
        uint64_t first_seq;
        MFrame frames[MAX_FRAMES];
        unsigned n_frames;
        unsigned n_call_fds;
        size_t n_staged;
} Model;

static void model_free(Model *m) {
        for (unsigned i = 0; i < m->n_frames; i++) {
                free(m->frames[i].region_idx);
                free(m->frames[i].region_size);
                free(m->frames[i].fd_idx);
                free(m->frames[i].senders);
        }
}

static bool model_read_fails(const Model *m) {
        for (unsigned i = 0; i < m->n_frames; i++) {
                const MFrame *f = &m->frames[i];
                if (f->n_regions > WIRE_MAX_ATTACHMENTS || f->n_fds > WIRE_MAX_ATTACHMENTS ||
                    f->n_senders > WIRE_MAX_ATTACHMENTS)
                        return true;
        }
        return false;
}

/* The rules, written from PROTOCOL.md, independent of wire.c. */
static int model_validate(const Model *m) {
        size_t total = m->n_staged + m->n_call_fds;
        uint8_t *used = calloc(total + 1, 1);
        int r = 0;

        CHECK(used);
        for (unsigned i = 0; i < m->n_frames && r == 0; i++) {
                const MFrame *f = &m->frames[i];

                if (f->flags & ~(uint32_t) _WIRE_FRAME_KNOWN)
                        r = -EBADMSG;
                else if ((f->flags & WIRE_FRAME_SPILLED) && (f->n_regions == 0 || f->payload_size > 0))
                        r = -EBADMSG;
                for (unsigned j = 0; j < f->n_regions + f->n_fds && r == 0; j++) {
                        uint32_t idx = j < f->n_regions ? f->region_idx[j] : f->fd_idx[j - f->n_regions];
                        if (idx >= total || used[idx])
                                r = -EBADMSG;
                        else
                                used[idx] = 1;
                }
                for (unsigned j = 0; j < f->n_senders && r == 0; j++)
                        if (f->senders[j].owner[0] != ':')
                                r = -EBADMSG;
        }
        free(used);
        return r;
}

static void model_compare(const Model *m, const WireCall *w) {
        CHECK(w->first_seq == m->first_seq);
        CHECK(w->n_frames == m->n_frames);
        CHECK(w->n_call_fds == m->n_call_fds);
        for (unsigned i = 0; i < m->n_frames; i++) {
                const MFrame *f = &m->frames[i];
                const WireFrame *g = &w->frames[i];

                CHECK(g->flags == f->flags);
                CHECK(g->payload_size == f->payload_size);
                CHECK(f->payload_size == 0 || memcmp(g->payload, f->payload, f->payload_size) == 0);
                CHECK(g->n_regions == f->n_regions && g->n_fds == f->n_fds && g->n_senders == f->n_senders);
                CHECK(g->regions_at + g->n_regions <= w->n_regions);
                CHECK(g->fds_at + g->n_fds <= w->n_fd_refs);
                CHECK(g->senders_at + g->n_senders <= w->n_senders);
                for (unsigned j = 0; j < f->n_regions; j++) {
                        CHECK(w->regions[g->regions_at + j].fd_index == f->region_idx[j]);
                        CHECK(w->regions[g->regions_at + j].size == f->region_size[j]);
                }
                for (unsigned j = 0; j < f->n_fds; j++)
                        CHECK(w->fds[g->fds_at + j] == f->fd_idx[j]);
                for (unsigned j = 0; j < f->n_senders; j++) {
                        const WireSenderRef *a = &w->senders[g->senders_at + j], *b = &f->senders[j];
                        CHECK(strcmp(a->owner, b->owner) == 0);
                        CHECK(strcmp(a->path, b->path) == 0);
                        CHECK(a->token == b->token);
                }
        }
        for (unsigned i = 0; i < m->n_call_fds; i++)
                CHECK(w->call_fds[i] >= 0);
}

/* Two decodings of the same message must be identical (buffers are reused). */
typedef struct Snapshot {
        uint64_t first_seq;
        size_t n_frames, n_regions, n_fd_refs, n_senders, n_call_fds;
        uint64_t digest;
} Snapshot;

static uint64_t mix(uint64_t h, uint64_t v) {
        return (h ^ v) * UINT64_C(0x100000001b3);
}

static Snapshot snapshot(const WireCall *w) {
        Snapshot s = {
                .first_seq = w->first_seq,
                .n_frames = w->n_frames,
                .n_regions = w->n_regions,
                .n_fd_refs = w->n_fd_refs,
                .n_senders = w->n_senders,
                .n_call_fds = w->n_call_fds,
                .digest = UINT64_C(0xcbf29ce484222325),
        };
        for (size_t i = 0; i < w->n_frames; i++) {
                const WireFrame *f = &w->frames[i];
                s.digest = mix(s.digest, f->flags);
                s.digest = mix(s.digest, f->payload_size);
                for (size_t k = 0; k < f->payload_size; k++)
                        s.digest = mix(s.digest, ((const uint8_t *) f->payload)[k]);
                s.digest = mix(s.digest, (uint64_t) f->n_regions << 40 | (uint64_t) f->n_fds << 20 | f->n_senders);
                s.digest = mix(s.digest, (uint64_t) f->regions_at << 40 | (uint64_t) f->fds_at << 20 | f->senders_at);
        }
        for (size_t i = 0; i < w->n_regions; i++)
                s.digest = mix(mix(s.digest, w->regions[i].fd_index), w->regions[i].size);
        for (size_t i = 0; i < w->n_fd_refs; i++)
                s.digest = mix(s.digest, w->fds[i]);
        for (size_t i = 0; i < w->n_senders; i++) {
                for (const char *c = w->senders[i].owner; *c; c++)
                        s.digest = mix(s.digest, (uint8_t) *c);
                for (const char *c = w->senders[i].path; *c; c++)
                        s.digest = mix(s.digest, (uint8_t) *c);
                s.digest = mix(s.digest, w->senders[i].token);
        }
        return s;
}

/* ---- building ------------------------------------------------------------- */

static sd_bus *bus;
static int null_fd = -1;
static WireCall scratch;        /* reused between inputs, as conn->scratch is */

static void cleanup(void) {
        wire_call_done(&scratch);
        bus = sd_bus_unref(bus);
        if (null_fd >= 0)
                close(null_fd);
}

static void setup(void) {
        int pair[2];

        if (bus)
                return;
        CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) == 0);
        CHECK(sd_bus_new(&bus) >= 0);
        CHECK(sd_bus_set_fd(bus, pair[0], pair[0]) >= 0);
        CHECK(sd_bus_negotiate_fds(bus, 1) >= 0);
        CHECK(sd_bus_start(bus) >= 0);
        close(pair[1]);
        null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
        CHECK(null_fd >= 0);
        atexit(cleanup);
}

/* Decode the model's frames from the input. */
static void model_build(Model *m, In *in) {
        m->first_seq = u64(in);
        m->n_frames = u8(in) % (MAX_FRAMES + 1);
        for (unsigned i = 0; i < m->n_frames; i++) {
                MFrame *f = &m->frames[i];
                uint8_t fl = u8(in);
                size_t avail;

                /* Mostly the known bits and their neighbours. */
                f->flags = fl < 0xf0 ? fl % 8 : u32(in);
                f->payload_size = u8(in) % 64;
                avail = in->n;
                if (f->payload_size > avail)
                        f->payload_size = avail;
                f->payload = in->p;
                in->p += f->payload_size;
                in->n -= f->payload_size;

                f->n_regions = count_of(in, MAX_SMALL, false);
                f->region_idx = calloc(f->n_regions + 1, sizeof(uint32_t));
                f->region_size = calloc(f->n_regions + 1, sizeof(uint64_t));
                CHECK(f->region_idx && f->region_size);
                for (unsigned j = 0; j < f->n_regions; j++) {
                        f->region_idx[j] = index_of(in);
                        f->region_size[j] = size_of(in);
                }
                f->n_fds = count_of(in, MAX_SMALL, true);
                f->fd_idx = calloc(f->n_fds + 1, sizeof(uint32_t));
                CHECK(f->fd_idx);
                for (unsigned j = 0; j < f->n_fds; j++)
                        f->fd_idx[j] = index_of(in);
                f->n_senders = u8(in) % 4;
                f->senders = calloc(f->n_senders + 1, sizeof(WireSenderRef));
                CHECK(f->senders);
                for (unsigned j = 0; j < f->n_senders; j++) {
                        f->senders[j].owner = owners[u8(in) % (sizeof(owners) / sizeof(owners[0]))];
                        f->senders[j].path = paths[u8(in) % (sizeof(paths) / sizeof(paths[0]))];
                        f->senders[j].token = u64(in);
                }
        }
        m->n_call_fds = u8(in) % (MAX_CALL_FDS + 1);
        m->n_staged = u8(in) % 64;
}

static int append_raw(sd_bus_message *msg, const Model *m) {
        int r;

        r = sd_bus_message_append_basic(msg, 't', &m->first_seq);
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(msg, 'a', IPCMUX_FRAME_SIGNATURE);
        if (r < 0)
                return r;
        for (unsigned i = 0; i < m->n_frames; i++) {
                const MFrame *f = &m->frames[i];

                r = sd_bus_message_open_container(msg, 'r', "uaya(ut)aua(sot)");
                if (r < 0)
                        return r;
                r = sd_bus_message_append_basic(msg, 'u', &f->flags);
                if (r < 0)
                        return r;
                r = sd_bus_message_append_array(msg, 'y', f->payload, f->payload_size);
                if (r < 0)
                        return r;
                r = sd_bus_message_open_container(msg, 'a', "(ut)");
                if (r < 0)
                        return r;
                for (unsigned j = 0; j < f->n_regions; j++) {
                        r = sd_bus_message_append(msg, "(ut)", f->region_idx[j], f->region_size[j]);
                        if (r < 0)
                                return r;
                }
                r = sd_bus_message_close_container(msg);
                if (r < 0)
                        return r;
                r = sd_bus_message_append_array(msg, 'u', f->fd_idx, f->n_fds * sizeof(uint32_t));
                if (r < 0)
                        return r;
                r = sd_bus_message_open_container(msg, 'a', "(sot)");
                if (r < 0)
                        return r;
                for (unsigned j = 0; j < f->n_senders; j++) {
                        r = sd_bus_message_append(msg, "(sot)", f->senders[j].owner, f->senders[j].path,
                                                  f->senders[j].token);
                        if (r < 0)
                                return r;
                }
                r = sd_bus_message_close_container(msg);
                if (r < 0)
                        return r;
                r = sd_bus_message_close_container(msg);
                if (r < 0)
                        return r;
        }
        r = sd_bus_message_close_container(msg);
        if (r < 0)
                return r;
        r = sd_bus_message_open_container(msg, 'a', "h");
        if (r < 0)
                return r;
        for (unsigned i = 0; i < m->n_call_fds; i++) {
                r = sd_bus_message_append_basic(msg, 'h', &null_fd);
                if (r < 0)
                        return r;
        }
        return sd_bus_message_close_container(msg);
}

static int append_encoder(sd_bus_message *msg, const Model *m) {
        int fds[MAX_CALL_FDS];
        int r;

        r = wire_open_frames(msg, m->first_seq);
        if (r < 0)
                return r;
        for (unsigned i = 0; i < m->n_frames; i++) {
                const MFrame *f = &m->frames[i];

                r = wire_append_frame(msg, f->flags, f->payload, f->payload_size, f->n_regions, f->region_idx,
                                      f->region_size, f->n_fds, f->fd_idx, f->n_senders, f->senders);
                if (r < 0)
                        return r;
        }
        for (unsigned i = 0; i < m->n_call_fds; i++)
                fds[i] = null_fd;
        return wire_close_frames(msg, fds, m->n_call_fds);
}

/* Randomly typed items; "send-like" prefixes make it past the first reads. */
static int append_garbage(sd_bus_message *msg, In *in) {
        unsigned n = u8(in) % 8;
        int r = 0;

        if (u8(in) & 1) {
                uint64_t seq = u64(in);
                r = sd_bus_message_append_basic(msg, 't', &seq);
        }
        for (unsigned i = 0; i < n && r >= 0; i++) {
                uint8_t op = u8(in);
                uint32_t u = u32(in);
                uint64_t t = u64(in);

                switch (op % 12) {
                case 0:
                        r = sd_bus_message_append_basic(msg, 'u', &u);
                        break;
                case 1:
                        r = sd_bus_message_append_basic(msg, 't', &t);
                        break;
                case 2:
                        r = sd_bus_message_append(msg, "s", owners[u % (sizeof(owners) / sizeof(owners[0]))]);
                        break;
                case 3:
                        r = sd_bus_message_append(msg, "o", paths[u % (sizeof(paths) / sizeof(paths[0]))]);
                        break;
                case 4:
                        r = sd_bus_message_append_array(msg, 'y', in->p, in->n < 16 ? in->n : 16);
                        break;
                case 5:
                        r = sd_bus_message_append(msg, "a(ut)", 2, u, t, u + 1, t + 1);
                        break;
                case 6:
                        /* A frame array whose elements have the wrong inner type. */
                        r = sd_bus_message_append(msg, "a(uayau)", 1, u, 0, 0);
                        break;
                case 7:
                        r = sd_bus_message_open_container(msg, 'a', IPCMUX_FRAME_SIGNATURE);
                        if (r >= 0 && (u & 1))
                                r = sd_bus_message_append(msg, "(uaya(ut)aua(sot))", u, 0, 0, 0, 0);
                        if (r >= 0)
                                r = sd_bus_message_close_container(msg);
                        break;
                case 8:
                        r = sd_bus_message_append(msg, "ah", 1, null_fd);
                        break;
                case 9:
                        r = sd_bus_message_append(msg, "h", null_fd);
                        break;
                case 10:
                        r = sd_bus_message_append(msg, "b", (int) (u & 1));
                        break;
                default:
                        r = sd_bus_message_append(msg, "v", "u", u);
                        break;
                }
        }
        return r;
}

static sd_bus_message *new_call(void) {
        sd_bus_message *msg = NULL;

        CHECK(sd_bus_message_new_method_call(bus, &msg, NULL, "/org/ipcmux/a/b", IPCMUX_INTERFACE_SUBCHANNEL,
                                             "Send") >= 0);
        return msg;
}

static bool seal(sd_bus_message *msg) {
        /* Appends may have failed half way; only a complete message is read. */
        if (sd_bus_message_seal(msg, 1, 0) < 0)
                return false;
        CHECK(sd_bus_message_rewind(msg, 1) >= 0);
        return true;
}

/* SendPacked: the reference parser, then the library's, on the same bytes. */
static void fuzz_packed(In *in) {
        sd_bus_message *msg = NULL;
        const uint8_t *p = in->p;
        size_t n = in->n, off = 8, frames = 0;
        bool ok = n >= 8;
        int r;

        while (ok && off < n) {
                uint32_t len;
                if (n - off < 4) {
                        ok = false;
                        break;
                }
                len = (uint32_t) p[off] | (uint32_t) p[off + 1] << 8 | (uint32_t) p[off + 2] << 16 |
                      (uint32_t) p[off + 3] << 24;
                off += 4;
                if (len > n - off) {
                        ok = false;
                        break;
                }
                off += len;
                frames++;
        }

        CHECK(sd_bus_message_new_method_call(bus, &msg, NULL, "/org/ipcmux/a/b", IPCMUX_INTERFACE_SUBCHANNEL,
                                             "SendPacked") >= 0);
        CHECK(sd_bus_message_append_array(msg, 'y', p, n) >= 0);
        CHECK(seal(msg));
        r = wire_read_packed(msg, &scratch);
        CHECK((r >= 0) == ok);
        if (ok) {
                uint64_t seq = 0;
                for (unsigned i = 0; i < 8; i++)
                        seq |= (uint64_t) p[i] << (8 * i);
                CHECK(scratch.first_seq == seq);
                CHECK(scratch.n_frames == frames);
                /* Nothing left over from earlier (attachment-carrying) calls. */
                CHECK(scratch.n_regions == 0 && scratch.n_fd_refs == 0 && scratch.n_senders == 0 &&
                      scratch.n_call_fds == 0);
                off = 8;
                for (size_t i = 0; i < frames; i++) {
                        const WireFrame *f = &scratch.frames[i];
                        size_t len = (size_t) p[off] | (size_t) p[off + 1] << 8 | (size_t) p[off + 2] << 16 |
                                     (size_t) p[off + 3] << 24;
                        off += 4;
                        CHECK(f->flags == 0 && f->n_regions == 0 && f->n_fds == 0 && f->n_senders == 0);
                        CHECK(f->payload_size == len);
                        CHECK(len == 0 || memcmp(f->payload, p + off, len) == 0);
                        off += len;
                }
                CHECK(wire_validate(&scratch, 0) == 0);
                CHECK(wire_validate(&scratch, 5) == 0);
        }
        sd_bus_message_unref(msg);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        In in = { data, size };
        uint8_t shape;
        sd_bus_message *msg;
        Model m = {};
        int r;

        setup();
        shape = u8(&in) % _SHAPE_MAX;
        if (shape == SHAPE_PACKED) {
                fuzz_packed(&in);
                return 0;
        }
        msg = new_call();

        if (shape == SHAPE_GARBAGE) {
                if (append_garbage(msg, &in) >= 0 && seal(msg)) {
                        r = wire_read_send(msg, &scratch);
                        if (r >= 0) {
                                /* It really was a Send: validation must not crash either. */
                                r = wire_validate(&scratch, u8(&in) % 64);
                                CHECK(r == 0 || r == -EBADMSG);
                        }
                }
                sd_bus_message_unref(msg);
                return 0;
        }

        model_build(&m, &in);
        r = shape == SHAPE_RAW ? append_raw(msg, &m) : append_encoder(msg, &m);
        if (r < 0 || !seal(msg)) {
                /* sd-bus refused to build it (e.g. invalid UTF-8 in a name). */
                sd_bus_message_unref(msg);
                model_free(&m);
                return 0;
        }

        r = wire_read_send(msg, &scratch);
        if (model_read_fails(&m))
                CHECK(r < 0);
        else {
                Snapshot a, b;
                int v;

                CHECK(r >= 0);
                model_compare(&m, &scratch);
                a = snapshot(&scratch);
                v = wire_validate(&scratch, m.n_staged);
                CHECK(v == model_validate(&m));

                /* Again into the same (now dirty) buffers. */
                CHECK(sd_bus_message_rewind(msg, 1) >= 0);
                CHECK(wire_read_send(msg, &scratch) >= 0);
                b = snapshot(&scratch);
                CHECK(memcmp(&a, &b, sizeof(a)) == 0);
                CHECK(wire_validate(&scratch, m.n_staged) == v);
                if (v == 0)
                        CHECK(wire_total_fds(&scratch, m.n_staged) == m.n_staged + m.n_call_fds);
        }
        sd_bus_message_unref(msg);
        model_free(&m);
        return 0;
}
