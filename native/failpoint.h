/* failpoint.h - named failpoints of the test build (CONVENTIONS 12; issue 9 item 8).
 *
 * Compiled in only when the core is built with -DCM_FAILPOINTS (the tests build
 * that second copy of cometmp._cffi themselves: tests/failpoints.py, via
 * native/build_ffi.py make_builder(failpoints=True)). The default build
 * (`pip install`) has none: CM_FAILPOINT(name) is the constant 0 and the
 * compiler removes the failure branch.
 *
 * In a failpoint build, COMETMP_FAILPOINT="name:k:ERRNO[:n]" (several separated
 * by commas) makes the n-th..(k+n-1)-th evaluation of `name` (counted from
 * the first evaluation after the variable last changed; n defaults to 1)
 * return that errno (ENOSPC, EIO, EDQUOT), and the call site fails as if the
 * step it guards had failed with it; ERRNO "KILL" instead sends the process
 * SIGKILL at that point (a kill -9 at an exact step), and "STOP" freezes it there
 * with SIGSTOP (alive, holding what it holds) until the test sends SIGCONT, after
 * which the step goes on unharmed; "PAUSE" stops only the thread that reached the
 * point, until the file $COMETMP_FAILPOINT_RESUME exists (it creates that name +
 * ".paused" when it stops), so another thread of the process can act meanwhile
 * (fork, close). Points: docs/ARCHITECTURE.md §4.2.
 *
 * CM_FAILPOINT_ERRNO(name) is the same and also sets errno, for a guard put in
 * front of a syscall that reports through errno:
 *     int fd = CM_FAILPOINT_ERRNO("open.segment") ? -1 : openat(...);
 */
#ifdef CM_FAILPOINTS
int cm_failpoint(const char *name);     /* 0, or the errno to fail with */
int cm_failpoint_errno(const char *name);
#define CM_FAILPOINT(name) cm_failpoint(name)
#define CM_FAILPOINT_ERRNO(name) cm_failpoint_errno(name)
#else
#define CM_FAILPOINT(name) 0
#define CM_FAILPOINT_ERRNO(name) 0
#endif
