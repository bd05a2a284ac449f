/* The operating system, behind one small layer: files by UTF-8 path, the
 * clocks, sockets and the condition-variable clock. plat_posix.c has the
 * POSIX paths (with Linux's own calls where they exist, unless IE_PORTABLE
 * asks for the plain POSIX ones, the path macOS and the BSDs take);
 * plat_win.c has Windows' (wide-character paths, MoveFileExW, _commit).
 * Descriptors are the C runtime's int on both. */
#ifndef IMGEDIT_PLATFORM_H
#define IMGEDIT_PLATFORM_H

#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include <curl/curl.h>
#include <pthread.h>

#include "compat.h"

#if defined(__linux__) && !defined(IE_PORTABLE) && !defined(_WIN32)
#define IE_LINUX 1
#endif

/* OpenSSL: for hashing where Windows' CNG is not, and for the caller's CAs
 * and TLS verdicts where libcurl's backend is OpenSSL. */
#if !defined(_WIN32) && !defined(IE_NO_OPENSSL)
#define IE_OPENSSL 1
#endif

#ifdef _WIN32
typedef long long ie_ssize;
#else
#include <sys/types.h>
typedef ssize_t ie_ssize;
#endif

/* Whether \ separates folders too (and C: starts a path). */
#ifdef _WIN32
#define IE_BACKSLASH_SEP 1
#else
#define IE_BACKSLASH_SEP 0
#endif

enum { IE_KIND_OTHER, IE_KIND_REG, IE_KIND_DIR, IE_KIND_LINK };

typedef struct ie_stat {
  int kind;
  uint64_t dev, ino; /* the file's identity, however its path is spelt */
  int64_t size;
  int64_t mtime_s, ctime_s; /* ctime: the last change of the file or its metadata */
  long mtime_ns, ctime_ns;
} ie_stat;

/* Files. Each returns 0 or a descriptor, and -1 with errno set. Every
 * descriptor is kept from child processes (close-on-exec, not inherited). */
IE_LOCAL int ie_os_open_read(const char *path);   /* non-blocking: a FIFO must not block us */
IE_LOCAL int ie_os_open_append(const char *path); /* never through a link: ELOOP */
IE_LOCAL int ie_os_temp_beside(char *tmpl);       /* tmpl ends in XXXXXX, filled in */
IE_LOCAL int ie_os_fstat(int fd, ie_stat *st);
IE_LOCAL int ie_os_stat(const char *path, int nofollow, ie_stat *st);
IE_LOCAL ie_ssize ie_os_read(int fd, void *buf, size_t n);
IE_LOCAL ie_ssize ie_os_pread(int fd, void *buf, size_t n, uint64_t off);
IE_LOCAL ie_ssize ie_os_write(int fd, const void *buf, size_t n);
IE_LOCAL int ie_os_close(int fd);
IE_LOCAL int ie_os_sync(int fd);                              /* the data on the disk, a power cut included */
IE_LOCAL int ie_os_default_mode(int fd);                      /* ordinary permissions, as open() would give */
IE_LOCAL int ie_os_replace(const char *from, const char *to); /* atomic, over an existing file */
IE_LOCAL int ie_os_unlink(const char *path);
IE_LOCAL int ie_os_mkdir(const char *path);
IE_LOCAL char *ie_os_realpath(const char *path); /* malloc'd, or NULL with errno */
IE_LOCAL int ie_os_isatty(int fd);
#ifdef _WIN32
/* UTF-8 to UTF-16 and back, malloc'd; NULL with errno. */
IE_LOCAL wchar_t *ie_os_wide(const char *s);
IE_LOCAL char *ie_os_narrow(const wchar_t *w);
/* The process's arguments in UTF-8 (main's are in the ANSI code page). */
IE_LOCAL char **ie_os_argv(int *n);
IE_LOCAL void ie_os_argv_free(char **v);
#endif
IE_LOCAL const char *ie_os_strerror(int e);

/* Folders: ie_os_dir_next gives each entry but . and .., then 0. */
typedef struct ie_dir ie_dir;
IE_LOCAL ie_dir *ie_os_dir_open(const char *path);
IE_LOCAL int ie_os_dir_next(ie_dir *d, const char **name, int *is_dir, int *is_link);
IE_LOCAL void ie_os_dir_close(ie_dir *d);

/* Clocks, in seconds. */
IE_LOCAL double ie_os_monotonic(void);
IE_LOCAL double ie_os_realtime(void);
IE_LOCAL double ie_os_thread_cpu(void);
IE_LOCAL int ie_os_cpu_count(void); /* the cores this process may use; 1 when unknown */

/* A condition variable for timed waits, and the deadline for one timeout
 * seconds from now on its clock (monotonic where it can be). */
IE_LOCAL void ie_os_cond_init_timed(pthread_cond_t *cv);
IE_LOCAL void ie_os_deadline(struct timespec *ts, double timeout);

/* Sockets. */
IE_LOCAL curl_socket_t ie_os_socket(int family, int type, int protocol);
IE_LOCAL int ie_os_closesocket(curl_socket_t fd);
IE_LOCAL int ie_os_local_port(curl_socket_t fd);
/* Whether the peer closed the connection (FIN or reset). idle_h1: an
 * HTTP/1 connection back from the pool, where anything the server sent
 * unasked is its goodbye (a TLS close_notify, a 408): the portable check
 * cannot see a FIN behind such bytes, but a server that spoke unasked has
 * closed. */
IE_LOCAL int ie_os_peer_closed(curl_socket_t fd, int idle_h1);
IE_LOCAL int ie_os_readable(curl_socket_t fd); /* bytes wait to be read */

/* A wake-up descriptor for the caller's event loop: readable from set
 * until clear. An eventfd on Linux, a pipe on other POSIX systems, a
 * loopback socket pair on Windows (what its loops can wait on). Both ends
 * are non-blocking and kept from child processes. */
typedef struct ie_os_wake {
  curl_socket_t r, w;
} ie_os_wake;
IE_LOCAL int ie_os_wake_open(ie_os_wake *k); /* 0, or -1 with errno */
IE_LOCAL void ie_os_wake_set(const ie_os_wake *k);
IE_LOCAL void ie_os_wake_clear(const ie_os_wake *k);
IE_LOCAL void ie_os_wake_close(ie_os_wake *k);

/* SHA-256 (OpenSSL's libcrypto, or Windows' CNG). */
typedef struct ie_sha256 ie_sha256;
IE_LOCAL ie_sha256 *ie_sha256_new(void);
IE_LOCAL int ie_sha256_update(ie_sha256 *h, const void *p, size_t n);
IE_LOCAL int ie_sha256_final(ie_sha256 *h, unsigned char out[32]); /* then it starts again */
IE_LOCAL void ie_sha256_free(ie_sha256 *h);

#endif
