/* walker.c - the one implementation of "the next valid record" (FORMAT.md §2.4).
 *
 * Who may call: anyone holding a mapping of a segment; stateless apart from the
 * cm_walk the caller owns (not shared between threads). Every reader of records
 * walks through here: recovery (shard.c), the batch reader (reader.c, through the
 * api.c table), point reads and scans (cometmp/segment.py -> shard.py), the
 * consumer cursor (consumer.py) and verify. The independent copy of the rule
 * lives only in the tests (tests/oracle.py), which check the two agree.
 *
 * A walk starts at (off, seq) - normally (64, 0) - and yields, in file order:
 *
 *   CM_WALK_RECORD  a frame passing V1-V5 with the expected sequence; the walk
 *                   advances by its frame bytes and by one sequence;
 *   CM_WALK_DAMAGE  an invalid stretch, as a cm_damage finding (cause, offset,
 *                   first sequence, entries lost, how it ends);
 *   CM_WALK_DONE    nothing more: `stop` reached, the end of data, or a walk
 *                   ended by damage.
 *
 * The rule. A frame failing V2-V5 is invalid. An end of data (V1) is the end of
 * the walk, except below `published`: every sequence below it was published (the
 * stream's committed count, or the successor segment's base for a sealed segment),
 * so zeros or a cut file there are damage too (I2). At damage the walk
 * resynchronises (cm_resync): the first later offset holding a frame with
 * seq >= the expected one, only known flags, a length that fits, a non-zero
 * timestamp, valid under V1-V5 with its own sequence.
 *
 * Where the search starts (resync_from). In a v2 segment a candidate is valid
 * only if it was written as that entry of this stream (I17), so a frame inside
 * a payload (a log of logs) or copied from elsewhere never passes and the
 * search starts at the next byte. A v1 frame is bound to nothing: a valid frame
 * embedded in a damaged record's payload would pass, so when the damaged frame
 * is still parseable - its length fits, and either its sequence is the
 * expected one or right after its extent lies the expected next record or the
 * end of data - the search starts after that extent: no candidate lying
 * inside a frame that still encloses it is taken (FORMAT.md §2.4). (A flipped
 * length bit can still misplace the extent in v1; v2 needs no extent.)
 *
 *   found, seq' < stop   CM_DAMAGE_RESYNC: corruption; entries [seq, seq') lost,
 *                        the walk continues at the found frame
 *   otherwise, seq < published
 *                        CM_DAMAGE_LIMIT: the published entries
 *                        [seq, min(stop, published)) are lost; the walk ends
 *   otherwise            CM_DAMAGE_TORN: a torn tail (nothing published lost);
 *                        the walk ends at the damage
 */
#include <stdint.h>
#include <stddef.h>
#include "cometmp.h"
#include "internal.h"

/* After a frame that failed validation, find the next offset at or after
 * `from` holding a valid frame whose sequence is at least min_seq; -1 when none. */
int64_t cm_resync(const cm_walk *w, uint64_t from, uint32_t min_seq) {
    const uint8_t *map = w->map;
    uint64_t size = w->size;
    for (uint64_t off = from; off + CM_REC_HEADER_BYTES <= size; off++) {
        const uint8_t *p = map + off;
        uint32_t sf = get32(p + CM_REC_OFF_SEQFLAGS);
        uint32_t seq = sf & CM_REC_SEQ_MASK;
        if (seq < min_seq || ((sf & CM_REC_FLAGS_MASK) & ~CM_REC_FLAG_ZSTD))
            continue;
        uint32_t len = get32(p + CM_REC_OFF_LEN);
        if ((uint64_t)len > size - off - CM_REC_HEADER_BYTES)
            continue;
        if (get64(p + CM_REC_OFF_TS) == 0)
            continue;
        if (cm_frame_check_key(map, size, &w->key, off, seq, NULL) == CM_REC_VALID)
            return (int64_t)off;
    }
    return -1;
}

/* Where resynchronisation after the invalid frame at w->off starts (the rule
 * in the comment at the top). rc: what cm_frame_check said about that frame. */
static uint64_t resync_from(const cm_walk *w, int rc) {
    uint64_t off = w->off;
    if (w->key.version != CM_SEG_VERSION_V1 || rc == CM_REC_END ||
        off + CM_REC_HEADER_BYTES > w->size)
        return off + 1;
    const uint8_t *p = w->map + off;
    uint32_t len = get32(p + CM_REC_OFF_LEN);
    uint32_t sf = get32(p + CM_REC_OFF_SEQFLAGS);
    if ((uint64_t)len > w->size - off - CM_REC_HEADER_BYTES)
        return off + 1;                          /* not parseable: no extent to trust */
    uint64_t end = off + CM_REC_HEADER_BYTES + len;
    if ((sf & CM_REC_SEQ_MASK) == w->seq)
        return end;                              /* its extent encloses any candidate before end */
    int next = cm_frame_check_key(w->map, w->size, &w->key, end, w->seq + 1, NULL);
    return next == CM_REC_VALID || next == CM_REC_END ? end : off + 1;
}

void cm_walk_init(cm_walk *w, const uint8_t *map, uint64_t size, uint64_t base, uint64_t off,
                  uint32_t seq, uint32_t stop, uint32_t published) {
    w->map = map;
    cm_segment_key(map, size, base, &w->key);   /* once per walk: the frames' binding (I17) */
    w->size = size;
    w->off = off;
    w->seq = seq;
    w->stop = stop;
    w->published = published;
    w->done = map == NULL;
}

int cm_walk_next(cm_walk *w, cm_record *rec, cm_damage *dmg) {
    if (w->done || w->seq >= w->stop) {
        w->done = 1;
        return CM_WALK_DONE;
    }
    int rc = cm_frame_check_key(w->map, w->size, &w->key, w->off, w->seq, rec);
    if (rc == CM_REC_VALID) {
        w->off += rec->frame_bytes;
        w->seq++;
        return CM_WALK_RECORD;
    }
    if (rc == CM_REC_END && w->seq >= w->published) {
        w->done = 1;                     /* the end of data */
        return CM_WALK_DONE;
    }
    dmg->offset = w->off;
    dmg->first_seq = w->seq;
    dmg->cause = rc == CM_REC_END ? CM_DAMAGE_END : -rc;
    dmg->frame_len = 0;
    dmg->frame_seqflags = 0;
    if (w->off + CM_REC_HEADER_BYTES <= w->size) {
        dmg->frame_len = get32(w->map + w->off + CM_REC_OFF_LEN);
        dmg->frame_seqflags = get32(w->map + w->off + CM_REC_OFF_SEQFLAGS);
    }
    int64_t nx = cm_resync(w, resync_from(w, rc), w->seq);
    uint32_t found = 0;
    if (nx >= 0)
        found = get32(w->map + nx + CM_REC_OFF_SEQFLAGS) & CM_REC_SEQ_MASK;
    if (nx >= 0 && found < w->stop) {
        dmg->end = CM_DAMAGE_RESYNC;
        dmg->resume = (uint64_t)nx;
        dmg->lost = found - w->seq;      /* 0 only if the same sequence resurfaced */
        w->off = (uint64_t)nx;
        w->seq = found;
        return CM_WALK_DAMAGE;
    }
    w->done = 1;
    dmg->resume = w->off;
    if (w->seq < w->published) {
        uint32_t end = w->published < w->stop ? w->published : w->stop;
        dmg->end = CM_DAMAGE_LIMIT;
        dmg->lost = end - w->seq;
        w->seq = end;
    } else {
        dmg->end = CM_DAMAGE_TORN;
        dmg->lost = 0;
    }
    return CM_WALK_DAMAGE;
}

int cm_walk_seek(cm_walk *w, uint32_t target, cm_record *rec, cm_damage *dmg) {
    for (;;) {
        int rc = cm_walk_next(w, rec, dmg);
        if (rc != CM_WALK_RECORD || rec->seq >= target)
            return rc;
    }
}

int cm_walk_count(cm_walk *w, cm_record *last, uint64_t *records, uint64_t *lost) {
    cm_record r;
    cm_damage d;
    for (;;) {
        int rc = cm_walk_next(w, &r, &d);
        if (rc == CM_WALK_RECORD) {
            (*records)++;
            if (last) *last = r;
        } else if (rc == CM_WALK_DAMAGE) {
            *lost += d.lost;
        } else {
            return CM_OK;
        }
    }
}
