/* fs.c - opening names inside a data directory: never through a symbolic link.
 *
 * I30: nothing below a data directory is opened, created or truncated through
 * a symbolic link. Every file the core opens (segments, indexes, state pages,
 * the offsets file, their temp files) is opened relative to the fd of the
 * directory that holds it, with O_NOFOLLOW; stream directories and their
 * parent (`streams/`) are opened with O_DIRECTORY|O_NOFOLLOW. A planted link
 * fails the call with ELOOP and a message naming the path ("is a symbolic
 * link"); its target is never opened. rename/unlink never follow a link.
 * I31: whatever the umask, a file created here is mode 0600 and a directory
 * 0700 (fchmod after creation). cometmp/paths.py holds the same two rules for
 * the Python side (open_nofollow, mkdir_private).
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <limits.h>
#include <sys/stat.h>
#include "cometmp.h"
#include "internal.h"
#include "failpoint.h"

/* I32: root writes into a data directory of another user (a root master before its
 * workers drop to that user): what it creates is given to the owner of the directory
 * it is created in, so the owner's processes can go on using it. 0 or -1 (errno). */
static int adopt(int dirfd, int fd) {
    struct stat ds;
    if (geteuid() != 0) return 0;
    if (fstat(dirfd, &ds) != 0) return -1;
    if (ds.st_uid == 0 && ds.st_gid == 0) return 0;
    return fchown(fd, ds.st_uid, ds.st_gid);
}

int cm_fs_openat(int dirfd, const char *name, int flags, mode_t mode) {
    /* I30: the last component is never followed */
    int fd = openat(dirfd, name, flags | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd >= 0 && (flags & O_CREAT) && (fchmod(fd, mode) != 0 || adopt(dirfd, fd) != 0)) {
        int e = errno;          /* I31: the umask does not widen or narrow it */
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

int cm_fs_fail(int err, int dirfd, const char *dir, const char *name, const char *verb) {
    struct stat sb;
    if ((err == ELOOP || err == ENOTDIR || err == EEXIST) && dirfd >= 0 && name &&
        fstatat(dirfd, name, &sb, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(sb.st_mode))
        return cm_fail(CM_E_IO, ELOOP, "%s/%s is a symbolic link; cometmp never follows a "
                       "link inside a data directory (I30), so it was not %s", dir, name,
                       strcmp(verb, "create") == 0 ? "created" : "opened");
    /* E1: cm_fail makes ENOSPC/EDQUOT CM_E_NOSPACE */
    return cm_fail(err == ENOENT ? CM_E_NOTFOUND : CM_E_IO, err, "%s %s/%s", verb, dir, name);
}

/* Open `name` below dirfd as a directory without following a link, creating it
 * (0700, I31) first when `create`. Returns the fd or a negative CM_E_*. */
static int open_subdir(int dirfd, const char *parent, const char *name, int create) {
    if (create && (CM_FAILPOINT_ERRNO("open.mkdir") ? -1 : mkdirat(dirfd, name, 0700)) == 0) {
        int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
        if (fd >= 0 && fchmod(fd, 0700) == 0 && adopt(dirfd, fd) == 0) return fd;   /* I31, I32 */
        int e = errno;
        if (fd >= 0) close(fd);
        return cm_fs_fail(e, dirfd, parent, name, "open");
    } else if (create && errno != EEXIST) {
        return cm_fs_fail(errno, dirfd, parent, name, "create");
    }
    int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0) return cm_fs_fail(errno, dirfd, parent, name, "open");
    return fd;
}

int cm_fs_open_dir(const char *dir, int inside, int create) {
    /* The last `inside` components of dir are inside the data directory and
       are never followed (I30); the path above them is the caller's own and
       may pass through links. */
    char buf[PATH_MAX];
    if (snprintf(buf, sizeof buf, "%s", dir) >= (int)sizeof buf || inside < 1 || inside > 8)
        return cm_fail(CM_E_ARG, 0, "path too long: %s", dir);
    size_t n = strlen(buf);
    while (n > 1 && buf[n - 1] == '/') buf[--n] = 0;
    char *comp[8];
    const char *top = NULL;
    for (int i = inside - 1; i >= 0; i--) {
        char *slash = strrchr(buf, '/');
        if (!slash && i == 0) { comp[0] = buf; top = "."; break; }  /* relative: from cwd */
        if (!slash || slash[1] == 0)
            return cm_fail(CM_E_ARG, 0, "%s: not a path inside a data directory", dir);
        if (slash == buf && i > 0)
            return cm_fail(CM_E_ARG, 0, "%s: not a path inside a data directory", dir);
        comp[i] = slash + 1;
        *slash = 0;     /* the components after it stay intact */
        if (slash == buf) top = "/";
    }
    if (!top) top = buf;
    int fd = open(top, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return cm_fail(errno == ENOENT ? CM_E_NOTFOUND : CM_E_IO, errno, "open %s", top);
    char parent[PATH_MAX];
    snprintf(parent, sizeof parent, "%s", top);
    for (int i = 0; i < inside; i++) {
        int next = open_subdir(fd, parent, comp[i], create);
        close(fd);
        if (next < 0) return next;
        fd = next;
        size_t pl = strlen(parent);
        snprintf(parent + pl, sizeof parent - pl, "/%s", comp[i]);
    }
    return fd;
}

/* An unnamed file in `dirfd` (O_TMPFILE), mode 0600 and adopted like any file
 * created here (I31, I32): it has no name to follow or to leave behind; a crash
 * frees it. -1 with errno when the filesystem has no O_TMPFILE. */
int cm_fs_tmpfile(int dirfd) {
    int fd = openat(dirfd, ".", O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd >= 0 && (fchmod(fd, 0600) != 0 || adopt(dirfd, fd) != 0)) {
        int e = errno;
        close(fd);
        errno = e;
        return -1;
    }
    return fd;
}

/* Give the unnamed file `fd` (cm_fs_tmpfile) the name `name` in `dirfd`. Never
 * replaces a file: EEXIST when the name is taken. Through /proc/self/fd, which
 * needs no privilege (AT_EMPTY_PATH would). 0 or -1 (errno). */
int cm_fs_link_tmpfile(int fd, int dirfd, const char *name) {
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    return linkat(AT_FDCWD, path, dirfd, name, AT_SYMLINK_FOLLOW);
}
