/* The operating system on POSIX: Linux, macOS, the BSDs. Linux's own calls
 * (close-on-exec at creation, fdatasync, POLLRDHUP, the umask from /proc)
 * are used where they exist; IE_PORTABLE builds the plain POSIX path beside
 * each on Linux too, so the path macOS takes is the one tested here. */
#ifndef _WIN32
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "platform.h"

#ifdef IE_LINUX
#include <sys/eventfd.h>
#endif

#ifndef O_CLOEXEC
#define O_CLOEXEC 0
#endif

#ifndef IE_LINUX
/* Where flags cannot be given at creation: set right after. Another
 * thread's fork in between would inherit it; no Linux-free POSIX call
 * closes that window, and the caller's children rarely race our opens. */
static int set_cloexec(int fd) {
  if (fd >= 0) {
    int fl = fcntl(fd, F_GETFD);
    if (fl >= 0)
      fcntl(fd, F_SETFD, fl | FD_CLOEXEC);
  }
  return fd;
}
#endif

int ie_os_open_read(const char *path) { return open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); }

int ie_os_open_append(const char *path) {
  return open(path, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0666);
}

int ie_os_temp_beside(char *tmpl) {
#ifdef IE_LINUX
  return mkostemp(tmpl, O_CLOEXEC);
#else
  /* mkstemp makes mode 0600; an exclusive open with 0666 gets the umask's
   * mode from the kernel, with no umask to read. The name need not be
   * secret: O_EXCL refuses what another planted there. */
  static const char digits[] = "abcdefghijklmnopqrstuvwxyz0123456789";
  size_t n = strlen(tmpl);
  if (n < 6 || strcmp(tmpl + n - 6, "XXXXXX") != 0) {
    errno = EINVAL;
    return -1;
  }
  uint64_t x = (uint64_t)getpid() ^ (uint64_t)(ie_os_realtime() * 1e9) ^ (uint64_t)(uintptr_t)tmpl;
  for (int tries = 0; tries < 100; tries++) {
    for (size_t i = n - 6; i < n; i++) {
      x = x * 6364136223846793005ULL + 1442695040888963407ULL;
      tmpl[i] = digits[(x >> 33) % (sizeof digits - 1)];
    }
    int fd = open(tmpl, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0 || errno != EEXIST)
      return set_cloexec(fd);
  }
  errno = EEXIST;
  return -1;
#endif
}

static void fill(const struct stat *s, ie_stat *st) {
  st->kind = S_ISREG(s->st_mode)   ? IE_KIND_REG
             : S_ISDIR(s->st_mode) ? IE_KIND_DIR
             : S_ISLNK(s->st_mode) ? IE_KIND_LINK
                                   : IE_KIND_OTHER;
  st->dev = (uint64_t)s->st_dev, st->ino = (uint64_t)s->st_ino, st->size = (int64_t)s->st_size;
#ifdef __APPLE__
  st->mtime_s = (int64_t)s->st_mtimespec.tv_sec, st->mtime_ns = s->st_mtimespec.tv_nsec;
  st->ctime_s = (int64_t)s->st_ctimespec.tv_sec, st->ctime_ns = s->st_ctimespec.tv_nsec;
#else
  st->mtime_s = (int64_t)s->st_mtim.tv_sec, st->mtime_ns = s->st_mtim.tv_nsec;
  st->ctime_s = (int64_t)s->st_ctim.tv_sec, st->ctime_ns = s->st_ctim.tv_nsec;
#endif
}

int ie_os_fstat(int fd, ie_stat *st) {
  struct stat s;
  if (fstat(fd, &s) != 0)
    return -1;
  fill(&s, st);
  return 0;
}

int ie_os_stat(const char *path, int nofollow, ie_stat *st) {
  struct stat s;
  if ((nofollow ? lstat(path, &s) : stat(path, &s)) != 0)
    return -1;
  fill(&s, st);
  return 0;
}

ie_ssize ie_os_read(int fd, void *buf, size_t n) { return read(fd, buf, n); }
ie_ssize ie_os_pread(int fd, void *buf, size_t n, uint64_t off) { return pread(fd, buf, n, (off_t)off); }
ie_ssize ie_os_write(int fd, const void *buf, size_t n) { return write(fd, buf, n); }
int ie_os_close(int fd) { return close(fd); }

int ie_os_sync(int fd) {
#if defined(IE_LINUX)
  return fdatasync(fd);
#elif defined(__APPLE__) && defined(F_FULLFSYNC)
  /* fsync on macOS leaves the data in the drive's cache. */
  return fcntl(fd, F_FULLFSYNC) == 0 ? 0 : fsync(fd);
#else
  return fsync(fd);
#endif
}

#ifdef IE_LINUX
/* The process's umask, read without changing it: umask(0) then umask(old)
 * would race with other threads creating files (the emulator's). Linux
 * shows it in /proc/self/status since 4.7; else the usual 022. */
static mode_t current_umask(void) {
  mode_t um = 022;
  FILE *f = fopen("/proc/self/status", "re");
  if (!f)
    return um;
  char line[128];
  unsigned v;
  while (fgets(line, sizeof line, f))
    if (sscanf(line, "Umask: %o", &v) == 1) {
      um = (mode_t)v;
      break;
    }
  fclose(f);
  return um;
}

/* mkostemp made it 0600. */
int ie_os_default_mode(int fd) { return fchmod(fd, 0666 & ~current_umask()); }
#else
int ie_os_default_mode(int fd) { /* made with the umask's mode */
  (void)fd;
  return 0;
}
#endif
int ie_os_replace(const char *from, const char *to) { return rename(from, to); }
int ie_os_unlink(const char *path) { return unlink(path); }
int ie_os_mkdir(const char *path) { return mkdir(path, 0777); }
char *ie_os_realpath(const char *path) { return realpath(path, NULL); }
int ie_os_isatty(int fd) { return isatty(fd); }
const char *ie_os_strerror(int e) { return strerror(e); }

struct ie_dir {
  DIR *d;
};

ie_dir *ie_os_dir_open(const char *path) {
  DIR *d = opendir(path);
  if (!d)
    return NULL;
  ie_dir *w = (ie_dir *)malloc(sizeof *w);
  if (!w) {
    closedir(d);
    errno = ENOMEM;
    return NULL;
  }
  w->d = d;
  return w;
}

int ie_os_dir_next(ie_dir *w, const char **name, int *is_dir, int *is_link) {
  struct dirent *e;
  while ((e = readdir(w->d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
      continue;
    struct stat st;
    *is_dir = e->d_type == DT_DIR, *is_link = e->d_type == DT_LNK;
    if (e->d_type == DT_UNKNOWN) /* some file systems say nothing */
      *is_link = fstatat(dirfd(w->d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode);
    if (e->d_type == DT_UNKNOWN || *is_link)
      *is_dir = fstatat(dirfd(w->d), e->d_name, &st, 0) == 0 && S_ISDIR(st.st_mode);
    *name = e->d_name;
    return 1;
  }
  return 0;
}

void ie_os_dir_close(ie_dir *w) {
  if (w) {
    closedir(w->d);
    free(w);
  }
}

static double seconds(clockid_t c) {
  struct timespec ts;
  clock_gettime(c, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double ie_os_monotonic(void) { return seconds(CLOCK_MONOTONIC); }
double ie_os_realtime(void) { return seconds(CLOCK_REALTIME); }
double ie_os_thread_cpu(void) { return seconds(CLOCK_THREAD_CPUTIME_ID); }

/* pthread_condattr_setclock is POSIX but not on macOS: there the waits
 * follow the wall clock (a clock change moves a deadline, nothing more). */
#ifdef IE_LINUX
#define COND_CLOCK CLOCK_MONOTONIC
#else
#define COND_CLOCK CLOCK_REALTIME
#endif

void ie_os_cond_init_timed(pthread_cond_t *cv) {
#ifdef IE_LINUX
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, COND_CLOCK);
  pthread_cond_init(cv, &ca);
  pthread_condattr_destroy(&ca);
#else
  pthread_cond_init(cv, NULL);
#endif
}

void ie_os_deadline(struct timespec *ts, double timeout) {
  double s = seconds(COND_CLOCK) + timeout;
  ts->tv_sec = (time_t)s;
  ts->tv_nsec = (long)((s - (double)ts->tv_sec) * 1e9);
  if (ts->tv_nsec >= 1000000000L)
    ts->tv_sec++, ts->tv_nsec -= 1000000000L;
}

curl_socket_t ie_os_socket(int family, int type, int protocol) {
#ifdef IE_LINUX
  return socket(family, type | SOCK_CLOEXEC, protocol);
#else
  return set_cloexec(socket(family, type, protocol));
#endif
}

int ie_os_closesocket(curl_socket_t fd) { return close(fd); }

int ie_os_local_port(curl_socket_t fd) {
  struct sockaddr_storage ss;
  socklen_t n = sizeof ss;
  if (getsockname(fd, (struct sockaddr *)&ss, &n) != 0)
    return -1;
  if (ss.ss_family == AF_INET)
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
  if (ss.ss_family == AF_INET6)
    return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
  return -1;
}

int ie_os_peer_closed(curl_socket_t fd, int idle_h1) {
#ifdef IE_LINUX
  (void)idle_h1; /* POLLRDHUP sees the FIN whatever waits before it */
  struct pollfd p = {fd, POLLRDHUP, 0};
  return poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
#else
  /* Portable: readable, and a peek finds the end of the stream (or an
   * error), or the bytes an idle HTTP/1 server sends only to say goodbye. */
  struct pollfd p = {fd, POLLIN, 0};
  if (poll(&p, 1, 0) != 1)
    return 0;
  if ((p.revents & (POLLHUP | POLLERR)) || idle_h1)
    return 1;
  char c;
  ssize_t r = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  return r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
#endif
}

int ie_os_readable(curl_socket_t fd) {
  struct pollfd p = {fd, POLLIN, 0};
  return poll(&p, 1, 0) == 1 && (p.revents & POLLIN) != 0;
}
#endif

#ifdef IE_LINUX
int ie_os_wake_open(ie_os_wake *k) {
  k->r = k->w = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  return k->r < 0 ? -1 : 0;
}

void ie_os_wake_set(const ie_os_wake *k) {
  uint64_t one = 1;
  (void)!write(k->w, &one, sizeof one); /* EAGAIN: it is set already */
}

void ie_os_wake_clear(const ie_os_wake *k) {
  uint64_t n;
  (void)!read(k->r, &n, sizeof n);
}

void ie_os_wake_close(ie_os_wake *k) {
  if (k->r >= 0)
    close(k->r);
  k->r = k->w = -1;
}
#else
int ie_os_wake_open(ie_os_wake *k) {
  int p[2];
  if (pipe(p) != 0)
    return -1;
  for (int i = 0; i < 2; i++) {
    fcntl(p[i], F_SETFD, FD_CLOEXEC);
    fcntl(p[i], F_SETFL, fcntl(p[i], F_GETFL) | O_NONBLOCK);
  }
  k->r = p[0], k->w = p[1];
  return 0;
}

void ie_os_wake_set(const ie_os_wake *k) {
  char c = 1;
  (void)!write(k->w, &c, 1); /* a full pipe is a set one */
}

void ie_os_wake_clear(const ie_os_wake *k) {
  char buf[64];
  while (read(k->r, buf, sizeof buf) > 0) {
  }
}

void ie_os_wake_close(ie_os_wake *k) {
  if (k->r >= 0)
    close(k->r), close(k->w);
  k->r = k->w = -1;
}
#endif

int ie_os_cpu_count(void) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  return n > 0 ? (int)n : 1;
}
