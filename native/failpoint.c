/* failpoint.c - the test build's failpoints (failpoint.h). Two stubs in the
 * default build. Thread safe; parses COMETMP_FAILPOINT at every evaluation so a
 * test can change it between steps (os.environ -> putenv). */
#ifdef CM_FAILPOINTS
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <unistd.h>
#include <fcntl.h>
#include <time.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <stdint.h>
#include <stddef.h>
#include "cometmp.h"
#include "failpoint.h"

#define MAX_POINTS 128

static pthread_mutex_t fp_lock = PTHREAD_MUTEX_INITIALIZER;
static char fp_spec[1024];               /* the value the counters belong to */
static struct { char name[64]; unsigned long hits; } fp_hits[MAX_POINTS];
static int fp_n;

static int errno_named(const char *s) {
    if (!strcmp(s, "ENOSPC")) return ENOSPC;
    if (!strcmp(s, "EDQUOT")) return EDQUOT;
    if (!strcmp(s, "EIO")) return EIO;
    if (!strcmp(s, "ENOMEM")) return ENOMEM;
    int v = atoi(s);
    return v > 0 ? v : EIO;
}

/* "PAUSE": the evaluating thread alone stops at the point (the rest of the process runs
 * on, and can fork) until the file $COMETMP_FAILPOINT_RESUME exists; it first creates
 * that name + ".paused", so a test waits for a condition, never for a time. Without the
 * variable there is nothing to wait for and the step goes on. */
static void pause_here(void) {
    const char *resume = getenv("COMETMP_FAILPOINT_RESUME");
    if (!resume || !*resume) return;
    char path[4096], paused[4096 + 8];
    if (snprintf(path, sizeof path, "%s", resume) >= (int)sizeof path) return;  /* never there */
    snprintf(paused, sizeof paused, "%s.paused", path);
    int fd = open(paused, O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0) close(fd);
    struct timespec ms = {0, 1000000};
    while (access(path, F_OK) != 0)
        nanosleep(&ms, NULL);
}

int cm_failpoint(const char *name) {
    const char *env = getenv("COMETMP_FAILPOINT");
    if (!env || !*env) return 0;
    pthread_mutex_lock(&fp_lock);
    if (strncmp(env, fp_spec, sizeof fp_spec) != 0) {   /* a new spec: counters restart */
        snprintf(fp_spec, sizeof fp_spec, "%s", env);
        fp_n = 0;
    }
    unsigned long hits = 0;
    int i;
    for (i = 0; i < fp_n && strcmp(fp_hits[i].name, name) != 0; i++) {}
    if (i == fp_n && fp_n < MAX_POINTS) {
        snprintf(fp_hits[i].name, sizeof fp_hits[i].name, "%s", name);
        fp_hits[i].hits = 0;
        fp_n++;
    }
    if (i < fp_n) hits = ++fp_hits[i].hits;
    int err = 0;
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", fp_spec);
    char *save = NULL;
    for (char *tok = strtok_r(buf, ",", &save); tok && hits; tok = strtok_r(NULL, ",", &save)) {
        char *f[4] = {0};
        int nf = 0;
        char *save2 = NULL;
        for (char *p = strtok_r(tok, ":", &save2); p && nf < 4; p = strtok_r(NULL, ":", &save2))
            f[nf++] = p;
        if (nf < 2 || strcmp(f[0], name) != 0) continue;
        unsigned long k = strtoul(f[1], NULL, 10);
        unsigned long n = nf > 3 ? strtoul(f[3], NULL, 10) : 1;
        if (hits >= k && hits < k + n) err = nf > 2 ? errno_named(f[2]) : EIO;
        if (hits >= k && hits < k + n && nf > 2 && !strcmp(f[2], "KILL"))
            err = -1;
        if (hits >= k && hits < k + n && nf > 2 && !strcmp(f[2], "STOP"))
            err = -2;
        if (hits >= k && hits < k + n && nf > 2 && !strcmp(f[2], "PAUSE"))
            err = -3;
    }
    pthread_mutex_unlock(&fp_lock);
    if (err == -3) {                          /* "name:k:PAUSE": only this thread waits */
        pause_here();
        return 0;
    }
    if (err == -1) kill(getpid(), SIGKILL);   /* "name:k:KILL": a real kill -9 right here */
    if (err == -2) {                          /* "name:k:STOP": frozen right here, alive, */
        raise(SIGSTOP);                       /* until the test sends SIGCONT; then the   */
        return 0;                             /* step goes on as if nothing had happened  */
    }
    return err;
}
int cm_failpoint_errno(const char *name) {
    int e = cm_failpoint(name);
    if (e) errno = e;
    return e;
}

/* A fork while another thread evaluates a point (one a PAUSE is meant for runs beside
 * forks) would leave the child's fp_lock held: take it across the fork. */
static void fp_before_fork(void) { pthread_mutex_lock(&fp_lock); }
static void fp_after_fork(void) { pthread_mutex_unlock(&fp_lock); }
__attribute__((constructor))
static void fp_init(void) { pthread_atfork(fp_before_fork, fp_after_fork, fp_after_fork); }

int cm_failpoints_compiled(void) { return 1; }
int cm_failpoint_eval(const char *name) { return cm_failpoint(name); }
#else
#include <stdint.h>
#include <stddef.h>
#include "cometmp.h"
/* the default build: Python's cometmp/failpoint.py sees 0 and never asks again */
int cm_failpoints_compiled(void) { return 0; }
int cm_failpoint_eval(const char *name) { (void)name; return 0; }
#endif
