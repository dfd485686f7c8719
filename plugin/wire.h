/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Wire: the org.ipcmux.Subchannel1.Send call, encoded and decoded.
 *
 *   Send(t first_seq, a(uaya(ut)aua(sot)) frames, ah fds)
 *   frame = (flags, payload, regions (fd index, size), fds (fd index),
 *            senders (owner, receiver path, token))
 *
 * Fd indices count the fds staged by StageFds calls of the same peer on the
 * same subchannel since its last Send, followed by the call's own fds.
 * Decoding is split from validation so the fuzzer can drive both without a
 * bus; nothing here touches fds beyond reading their numbers.
 */

#include <stdbool.h>
#include <stdint.h>
#include <systemd/sd-bus.h>

#define IPCMUX_INTERFACE_SUBCHANNEL "org.ipcmux.Subchannel1"
#define IPCMUX_INTERFACE_PEER "org.ipcmux.Peer1"
#define IPCMUX_ROOT_PATH "/org/ipcmux"
#define IPCMUX_FRAME_SIGNATURE "(uaya(ut)aua(sot))"

/* Frame flags. */
enum {
        /* The payload is not inline: it is region 0 of the frame (a sealed
         * memfd), and the user's regions follow at 1..n. */
        WIRE_FRAME_SPILLED = 1u << 0,
        _WIRE_FRAME_KNOWN = WIRE_FRAME_SPILLED,
};

/* Limits of one call (dbus-daemon: 16 fds per message; spec: 64 MiB arrays). */
#define WIRE_MAX_FDS_PER_CALL 16u
#define WIRE_MAX_INLINE_BYTES (32u << 20)
/* Attachments of one frame (decoder bound). */
#define WIRE_MAX_ATTACHMENTS 65536u
/* Fds (regions + plain fds, a spilled payload included) of one message:
 * the receiver stages at most this many ahead of a Send. */
#define WIRE_MAX_FDS_PER_MESSAGE 1024u

typedef struct WireRegion {
        uint32_t fd_index;
        uint64_t size;
} WireRegion;

typedef struct WireSenderRef {
        const char *owner;      /* unique name of the receiver's process */
        const char *path;       /* the receiver's object path */
        uint64_t token;         /* in-flight registration at the owner */
} WireSenderRef;

typedef struct WireFrame {
        uint32_t flags;
        const void *payload;    /* borrowed from the bus message */
        size_t payload_size;
        unsigned n_regions, n_fds, n_senders;
        /* Offsets into the WireCall's shared arrays. */
        unsigned regions_at, fds_at, senders_at;
} WireFrame;

/* One decoded call; the arrays are reused between calls (no steady-state malloc). */
typedef struct WireCall {
        uint64_t first_seq;
        WireFrame *frames;
        size_t n_frames, allocated_frames;
        WireRegion *regions;
        size_t n_regions, allocated_regions;
        uint32_t *fds;
        size_t n_fd_refs, allocated_fds;
        WireSenderRef *senders;
        size_t n_senders, allocated_senders;
        int *call_fds;          /* the call's own fds, borrowed from the message */
        size_t n_call_fds, allocated_call_fds;
} WireCall;

void wire_call_reset(WireCall *w);
void wire_call_done(WireCall *w);

/*
 * Read a Send call's arguments (the message must be positioned at its
 * first argument).  -EBADMSG (or another sd-bus error) for anything that does
 * not match the signature or exceeds WIRE_MAX_ATTACHMENTS.
 */
int wire_read_send(sd_bus_message *m, WireCall *w);

/*
 * SendPacked(ay packed): frames without attachments.  packed = u64
 * first_seq, then per frame a u32 length and that many payload bytes (all
 * little-endian).  Fills @w as wire_read_send() would (payloads point into
 * the message).  -EBADMSG unless the records exactly cover the array.
 */
int wire_read_packed(sd_bus_message *m, WireCall *w);
int wire_parse_packed(const void *data, size_t size, WireCall *w);

/*
 * Check the decoded call against @n_staged fds staged ahead of it: every fd
 * index in range and used at most once, flags known, a SPILLED frame has its
 * payload region and no inline bytes, object paths and bus names valid.
 * Returns 0 or -EBADMSG.
 */
int wire_validate(const WireCall *w, size_t n_staged);

/* Total fds a validated call refers to (staged + its own). */
static inline size_t wire_total_fds(const WireCall *w, size_t n_staged) {
        return n_staged + w->n_call_fds;
}

/* ---- encoding ---- */

/* Open the frames array of a new Send call (after appending first_seq). */
int wire_open_frames(sd_bus_message *m, uint64_t first_seq);
/*
 * Append one frame.  @region_fd_index/@fd_fd_index give, per attachment, the
 * index in the call's fd list; regions[i] sizes in @region_sizes.
 */
int wire_append_frame(sd_bus_message *m, uint32_t flags, const void *payload, size_t payload_size,
                      unsigned n_regions, const uint32_t *region_fd_index, const uint64_t *region_sizes,
                      unsigned n_fds, const uint32_t *fd_fd_index,
                      unsigned n_senders, const WireSenderRef *senders);
/* Close the frames array and append the call's fds. */
int wire_close_frames(sd_bus_message *m, const int *fds, unsigned n_fds);
