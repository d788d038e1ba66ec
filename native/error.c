/* error.c - per-thread error detail and the fork generation counter.
 *
 * C functions return a negative CM_E_* code and leave a message naming the
 * path/offset involved here; cometmp/_ffi.py turns both into one exception.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <pthread.h>
#include "cometmp.h"
#include "internal.h"

static __thread char last_msg[512];
static __thread int last_errno_v;
static volatile uint64_t fork_gen = 1;

int cm_fail(int code, int err, const char *fmt, ...) {
    if (code == CM_E_IO && (err == ENOSPC || err == EDQUOT))
        code = CM_E_NOSPACE;   /* issue 9 item 6: a full disk is DiskFull wherever it is met */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(last_msg, sizeof last_msg, fmt, ap);
    va_end(ap);
    last_errno_v = err;
    if (err) {
        size_t n = strlen(last_msg);
        snprintf(last_msg + n, sizeof last_msg - n, ": %s", strerror(err));
    }
    return code;
}

const char *cm_last_error(void) { return last_msg; }
int cm_last_errno(void) { return last_errno_v; }

/* I10: a handle records the generation it was opened in; pthread_atfork
 * bumps it in every child, however the fork happened (os.fork, uWSGI's C
 * fork, multiprocessing), so a child never writes through a parent handle. */
static void on_fork_child(void) { fork_gen++; }

__attribute__((constructor))
static void error_init(void) { pthread_atfork(NULL, NULL, on_fork_child); }

uint64_t cm_fork_generation(void) { return fork_gen; }
