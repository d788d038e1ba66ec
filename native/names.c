/* names.c - the one rule for stream, family-prefix and consumer-group names (E3).
 *
 * FORMAT.md §1 (streams and prefixes) and §7 (groups). cometmp/paths.py and
 * cometmp/offsets.py validate through these functions and only turn the rule
 * number into a message; the offsets file refuses a name that breaks them
 * (CM_E_ARG), so C and Python cannot disagree.
 *
 *   stream / prefix: 1..CM_NAME_MAX_BYTES bytes of ASCII letters, digits and
 *                    _ . : - ; the first a letter, digit or _ ; no "..".
 *                    (So no path separator, NUL, newline or other byte.)
 *   group:           1..CM_OFS_NAME_MAX bytes of UTF-8, no NUL, no newline.
 */
#include <stdint.h>
#include <stddef.h>
#include <string.h>
#include "cometmp.h"
#include "format.h"

static int name_char(unsigned char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '.' || c == ':' || c == '-';
}

int cm_stream_name_check(const char *name, size_t len) {
    if (len == 0) return CM_NAME_EMPTY;
    if (memchr(name, '\0', len)) return CM_NAME_NUL;
    if (memchr(name, '/', len) || memchr(name, '\\', len)) return CM_NAME_SEPARATOR;
    for (size_t i = 0; i + 1 < len; i++)
        if (name[i] == '.' && name[i + 1] == '.') return CM_NAME_DOTDOT;
    if (len > CM_NAME_MAX_BYTES) return CM_NAME_TOO_LONG;
    unsigned char c0 = (unsigned char)name[0];
    if (c0 == '.' || c0 == ':' || c0 == '-') return CM_NAME_CHARS;
    for (size_t i = 0; i < len; i++)
        if (!name_char((unsigned char)name[i])) return CM_NAME_CHARS;
    return CM_OK;
}

int cm_group_name_check(const char *name, size_t len) {
    if (len == 0) return CM_NAME_EMPTY;
    if (len > CM_OFS_NAME_MAX) return CM_NAME_TOO_LONG;
    if (memchr(name, '\0', len)) return CM_NAME_NUL;
    if (memchr(name, '\n', len)) return CM_NAME_CHARS;
    return CM_OK;
}
