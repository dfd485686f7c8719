/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * FrameChunk: where an endpoint's small queued frames live.
 *
 * A subchannel nobody reads piles up frames by the hundred thousand beside
 * a busy one, and a malloc and a free per frame cost ~300 instructions, as
 * much as the rest of such a send.  Frames are carved in order from the
 * pool's current chunk and counted; a chunk is freed with its last frame
 * once it is no longer current, and the current one too when its last frame
 * goes (so an endpoint with nothing queued holds no chunk).  Frames leave
 * a queue in order, so chunks empty one after the other.  Chunk sizes start
 * at FRAME_CHUNK_MIN and double while frames keep piling up, to
 * FRAME_CHUNK_MAX.  Not thread-safe (the conn lock covers it).
 */

#include <stddef.h>
#include <stdint.h>

#define FRAME_CHUNK_MIN 1024u
#define FRAME_CHUNK_MAX (64u << 10)

typedef struct FrameChunk FrameChunk;

typedef struct ChunkPool {
        FrameChunk *current;
        size_t next_size;
} ChunkPool;

/* @size bytes (8-byte aligned) from @pool; the chunk it is in goes to @ret. */
void *chunk_alloc(ChunkPool *pool, size_t size, FrameChunk **ret);
/* One allocation from @chunk is no longer used. */
void chunk_free(FrameChunk *chunk);
/* The pool goes away: its current chunk lives on until its frames go. */
void chunk_pool_done(ChunkPool *pool);
