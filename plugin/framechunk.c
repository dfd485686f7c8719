/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Chunks for small queued frames (see framechunk.h). */

#include <stdlib.h>

#include "framechunk.h"
#include "macro.h"

struct FrameChunk {
        ChunkPool *pool;        /* while it is the pool's current chunk */
        unsigned live;          /* allocations not yet freed */
        size_t used, size;
        _Alignas(16) uint8_t data[];
};

void *chunk_alloc(ChunkPool *pool, size_t size, FrameChunk **ret) {
        FrameChunk *ch = pool->current;
        void *p;

        size = (size + 7) & ~(size_t) 7;
        if (ch && ch->used + size > ch->size) {
                /* Full and still in use (an unused current chunk is freed):
                 * frames are piling up, the next chunk is bigger. */
                ch->pool = NULL;
                pool->current = ch = NULL;
                pool->next_size = MIN(pool->next_size * 2, (size_t) FRAME_CHUNK_MAX);
        }
        if (!ch) {
                size_t n = MAX(MAX(pool->next_size, (size_t) FRAME_CHUNK_MIN), size);

                ch = malloc(offsetof(FrameChunk, data) + n);
                if (!ch)
                        return NULL;
                *ch = (FrameChunk) { .pool = pool, .size = n };
                pool->current = ch;
                pool->next_size = n;
        }
        p = ch->data + ch->used;
        ch->used += size;
        ch->live++;
        *ret = ch;
        return p;
}

void chunk_free(FrameChunk *ch) {
        if (--ch->live > 0)
                return;
        if (ch->pool) {
                /* The queue drained: start small again next time. */
                ch->pool->current = NULL;
                ch->pool->next_size = FRAME_CHUNK_MIN;
        }
        free(ch);
}

void chunk_pool_done(ChunkPool *pool) {
        if (pool->current)
                pool->current->pool = NULL;
        pool->current = NULL;
}
