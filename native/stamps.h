/* stamps.h - CLOCK_MONOTONIC stamps on the wake-up path, for the breakdown bench only
 * (benchmarks/wake_breakdown.py; docs/PERFORMANCE.md "Wake-ups beside the futex floor").
 *
 * Compiled in only with -DCM_WAKE_STAMPS, a second copy of cometmp._cffi that the bench
 * builds itself (native/build_ffi.py make_builder(stamps=True)), as the failpoint build is
 * made (tests/failpoints.py). The default build has none: CM_STAMP(i) is nothing.
 * The bench reads the per-process array `cm_wake_stamps` (declared in that build's cdef
 * only) after each append / each wake-up. */
#ifndef CM_STAMPS_H
#define CM_STAMPS_H
#ifdef CM_WAKE_STAMPS
#include <stdint.h>
#include <time.h>
enum { CM_ST_APPEND_IN, CM_ST_PUBLISH_IN, CM_ST_PUBLISHED, CM_ST_WOKE_SENT,
       CM_ST_FUTEX_RET, CM_ST_N = 8 };
extern int64_t cm_wake_stamps[CM_ST_N];
static inline void cm_stamp(int i) {
    struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t);
    cm_wake_stamps[i] = (int64_t)t.tv_sec * 1000000000ll + t.tv_nsec;
}
#define CM_STAMP(i) cm_stamp(i)
#else
#define CM_STAMP(i) ((void)0)
#endif
#endif
