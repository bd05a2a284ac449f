/* The operating system on Windows. Paths arrive as UTF-8 (what Lua
 * strings hold) and go to the wide-character calls, so a name in any
 * script works whatever the ANSI code page. Descriptors are the C
 * runtime's, opened not inheritable; an atomic replace is MoveFileExW. */
#ifdef _WIN32
/* In this order: winsock2.h before windows.h, which the others need. */
/* clang-format off */
#include <winsock2.h>
#include <ws2tcpip.h>
#include <windows.h>
#include <bcrypt.h>
#include <shellapi.h>
/* clang-format on */

#include <direct.h>
#include <errno.h>
#include <fcntl.h>
#include <io.h>
#include <share.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "platform.h"

#define wide ie_os_wide
#define narrow ie_os_narrow

/* UTF-8 to UTF-16, malloc'd; NULL with errno for a name that is not UTF-8. */
wchar_t *ie_os_wide(const char *s) {
  int n = MultiByteToWideChar(CP_UTF8, MB_ERR_INVALID_CHARS, s, -1, NULL, 0);
  if (n <= 0) {
    errno = EINVAL;
    return NULL;
  }
  wchar_t *w = (wchar_t *)malloc(sizeof(wchar_t) * (size_t)n);
  if (!w) {
    errno = ENOMEM;
    return NULL;
  }
  MultiByteToWideChar(CP_UTF8, 0, s, -1, w, n);
  return w;
}

char *ie_os_narrow(const wchar_t *w) {
  int n = WideCharToMultiByte(CP_UTF8, 0, w, -1, NULL, 0, NULL, NULL);
  char *s = n > 0 ? (char *)malloc((size_t)n) : NULL;
  if (!s) {
    errno = ENOMEM;
    return NULL;
  }
  WideCharToMultiByte(CP_UTF8, 0, w, -1, s, n, NULL, NULL);
  return s;
}

/* errno for the last Win32 error, for the calls that set no errno. */
static int win_errno(void) {
  switch (GetLastError()) {
  case ERROR_FILE_NOT_FOUND:
  case ERROR_PATH_NOT_FOUND: return ENOENT;
  case ERROR_ACCESS_DENIED:
  case ERROR_SHARING_VIOLATION:
  case ERROR_LOCK_VIOLATION: return EACCES;
  case ERROR_FILE_EXISTS:
  case ERROR_ALREADY_EXISTS: return EEXIST;
  case ERROR_NOT_ENOUGH_MEMORY:
  case ERROR_OUTOFMEMORY: return ENOMEM;
  case ERROR_DIRECTORY: return ENOTDIR;
  case ERROR_DISK_FULL: return ENOSPC;
  default: return EIO;
  }
}

/* A handle opened with FILE_SHARE_DELETE, so that a file we read can still
 * be replaced by an atomic save (as on POSIX), wrapped as a descriptor. */
static int open_handle(const char *path, DWORD access, DWORD disposition, DWORD flags, int oflags) {
  wchar_t *w = wide(path);
  if (!w)
    return -1;
  HANDLE h = CreateFileW(w, access, FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, NULL, disposition,
                         FILE_ATTRIBUTE_NORMAL | flags, NULL);
  free(w);
  if (h == INVALID_HANDLE_VALUE) {
    errno = win_errno();
    return -1;
  }
  int fd = _open_osfhandle((intptr_t)h, oflags);
  if (fd < 0)
    CloseHandle(h);
  return fd;
}

int ie_os_open_read(const char *path) {
  /* FILE_FLAG_BACKUP_SEMANTICS lets a folder open, so fstat can say "is a
   * directory" as on POSIX. */
  return open_handle(path, GENERIC_READ, OPEN_EXISTING, FILE_FLAG_BACKUP_SEMANTICS, _O_RDONLY | _O_BINARY);
}

int ie_os_open_append(const char *path) {
  /* A reparse point (a symbolic link or junction) is opened as itself and
   * refused, never written through. */
  int fd = open_handle(path, FILE_APPEND_DATA | SYNCHRONIZE, OPEN_ALWAYS, FILE_FLAG_OPEN_REPARSE_POINT,
                       _O_WRONLY | _O_APPEND | _O_BINARY);
  if (fd < 0)
    return -1;
  BY_HANDLE_FILE_INFORMATION fi;
  if (GetFileInformationByHandle((HANDLE)_get_osfhandle(fd), &fi) &&
      (fi.dwFileAttributes & FILE_ATTRIBUTE_REPARSE_POINT)) {
    _close(fd);
    errno = ELOOP;
    return -1;
  }
  return fd;
}

int ie_os_temp_beside(char *tmpl) {
  size_t n = strlen(tmpl);
  if (n < 6 || strcmp(tmpl + n - 6, "XXXXXX") != 0) {
    errno = EINVAL;
    return -1;
  }
  static const char digits[] = "abcdefghijklmnopqrstuvwxyz0123456789";
  for (int tries = 0; tries < 100; tries++) {
    unsigned char r[6];
    if (!BCRYPT_SUCCESS(BCryptGenRandom(NULL, r, sizeof r, BCRYPT_USE_SYSTEM_PREFERRED_RNG))) {
      errno = EIO;
      return -1;
    }
    for (int i = 0; i < 6; i++)
      tmpl[n - 6 + i] = digits[r[i] % (sizeof digits - 1)];
    int fd = open_handle(tmpl, GENERIC_READ | GENERIC_WRITE, CREATE_NEW, 0, _O_RDWR | _O_BINARY);
    if (fd >= 0 || errno != EEXIST)
      return fd;
  }
  errno = EEXIST;
  return -1;
}

static int64_t filetime_ns100(FILETIME t) { return (int64_t)(((uint64_t)t.dwHighDateTime << 32) | t.dwLowDateTime); }

/* From FILETIME (100 ns since 1601) to seconds and nanoseconds since 1970. */
static void unix_time(FILETIME t, int64_t *s, long *ns) {
  int64_t v = filetime_ns100(t) - 116444736000000000LL;
  *s = v / 10000000;
  *ns = (long)(v % 10000000) * 100;
}

static int fill_handle(HANDLE h, ie_stat *st) {
  BY_HANDLE_FILE_INFORMATION fi;
  if (!GetFileInformationByHandle(h, &fi)) {
    errno = win_errno();
    return -1;
  }
  memset(st, 0, sizeof *st);
  DWORD type = GetFileType(h);
  if (fi.dwFileAttributes & FILE_ATTRIBUTE_REPARSE_POINT)
    st->kind = IE_KIND_LINK;
  else if (fi.dwFileAttributes & FILE_ATTRIBUTE_DIRECTORY)
    st->kind = IE_KIND_DIR;
  else
    st->kind = type == FILE_TYPE_DISK ? IE_KIND_REG : IE_KIND_OTHER;
  st->dev = fi.dwVolumeSerialNumber;
  st->ino = ((uint64_t)fi.nFileIndexHigh << 32) | fi.nFileIndexLow;
  st->size = (int64_t)(((uint64_t)fi.nFileSizeHigh << 32) | fi.nFileSizeLow);
  unix_time(fi.ftLastWriteTime, &st->mtime_s, &st->mtime_ns);
  /* Windows keeps no inode-change time here: the last write stands in. */
  unix_time(fi.ftLastWriteTime, &st->ctime_s, &st->ctime_ns);
  return 0;
}

int ie_os_fstat(int fd, ie_stat *st) {
  HANDLE h = (HANDLE)_get_osfhandle(fd);
  if (h == INVALID_HANDLE_VALUE) {
    errno = EBADF;
    return -1;
  }
  return fill_handle(h, st);
}

int ie_os_stat(const char *path, int nofollow, ie_stat *st) {
  wchar_t *w = wide(path);
  if (!w)
    return -1;
  HANDLE h =
      CreateFileW(w, FILE_READ_ATTRIBUTES, FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, NULL, OPEN_EXISTING,
                  FILE_FLAG_BACKUP_SEMANTICS | (nofollow ? FILE_FLAG_OPEN_REPARSE_POINT : 0), NULL);
  free(w);
  if (h == INVALID_HANDLE_VALUE) {
    errno = win_errno();
    return -1;
  }
  int rc = fill_handle(h, st);
  CloseHandle(h);
  return rc;
}

ie_ssize ie_os_read(int fd, void *buf, size_t n) { return _read(fd, buf, n > 0x40000000 ? 0x40000000 : (unsigned)n); }

ie_ssize ie_os_pread(int fd, void *buf, size_t n, uint64_t off) {
  HANDLE h = (HANDLE)_get_osfhandle(fd);
  OVERLAPPED ov;
  memset(&ov, 0, sizeof ov);
  ov.Offset = (DWORD)off, ov.OffsetHigh = (DWORD)(off >> 32);
  DWORD got = 0;
  if (!ReadFile(h, buf, n > 0x40000000 ? 0x40000000 : (DWORD)n, &got, &ov)) {
    if (GetLastError() == ERROR_HANDLE_EOF)
      return 0;
    errno = win_errno();
    return -1;
  }
  return (ie_ssize)got;
}

ie_ssize ie_os_write(int fd, const void *buf, size_t n) {
  return _write(fd, buf, n > 0x40000000 ? 0x40000000 : (unsigned)n);
}

int ie_os_close(int fd) { return _close(fd); }
int ie_os_sync(int fd) { return _commit(fd); }
int ie_os_default_mode(int fd) {
  (void)fd;
  return 0;
}

int ie_os_replace(const char *from, const char *to) {
  wchar_t *wf = wide(from), *wt = wf ? wide(to) : NULL;
  int ok = wf && wt && MoveFileExW(wf, wt, MOVEFILE_REPLACE_EXISTING | MOVEFILE_WRITE_THROUGH);
  if (wf && wt && !ok)
    errno = win_errno();
  free(wf), free(wt);
  return ok ? 0 : -1;
}

int ie_os_unlink(const char *path) {
  wchar_t *w = wide(path);
  int rc = w ? _wunlink(w) : -1;
  free(w);
  return rc;
}

int ie_os_mkdir(const char *path) {
  wchar_t *w = wide(path);
  int rc = w ? _wmkdir(w) : -1;
  free(w);
  return rc;
}

char *ie_os_realpath(const char *path) {
  wchar_t *w = wide(path);
  if (!w)
    return NULL;
  HANDLE h = CreateFileW(w, 0, FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, NULL, OPEN_EXISTING,
                         FILE_FLAG_BACKUP_SEMANTICS, NULL);
  free(w);
  if (h == INVALID_HANDLE_VALUE) {
    errno = win_errno();
    return NULL;
  }
  wchar_t buf[32768];
  DWORD n = GetFinalPathNameByHandleW(h, buf, 32768, FILE_NAME_NORMALIZED);
  CloseHandle(h);
  if (n == 0 || n >= 32768) {
    errno = ENAMETOOLONG;
    return NULL;
  }
  /* \\?\C:\x is C:\x to everyone else. */
  const wchar_t *p = buf;
  if (wcsncmp(p, L"\\\\?\\UNC\\", 8) == 0) {
    p += 6;
    buf[6] = L'\\';
  } else if (wcsncmp(p, L"\\\\?\\", 4) == 0) {
    p += 4;
  }
  return narrow(p);
}

int ie_os_isatty(int fd) { return _isatty(fd); }

char **ie_os_argv(int *n) {
  /* main() got its arguments in the ANSI code page, where a name outside
   * it is lost; the wide command line still has them whole. */
  int wn = 0;
  wchar_t **w = CommandLineToArgvW(GetCommandLineW(), &wn);
  char **v = w ? (char **)calloc((size_t)wn + 1, sizeof *v) : NULL;
  for (int i = 0; v && i < wn; i++)
    if (!(v[i] = narrow(w[i]))) {
      ie_os_argv_free(v);
      v = NULL;
    }
  LocalFree(w);
  *n = v ? wn : 0;
  return v;
}

void ie_os_argv_free(char **v) {
  for (int i = 0; v && v[i]; i++)
    free(v[i]);
  free(v);
}
const char *ie_os_strerror(int e) { return strerror(e); }

struct ie_dir {
  HANDLE h;
  int first;
  WIN32_FIND_DATAW fd;
  char *name;
};

ie_dir *ie_os_dir_open(const char *path) {
  size_t n = strlen(path);
  char *pat = (char *)malloc(n + 3);
  if (!pat) {
    errno = ENOMEM;
    return NULL;
  }
  memcpy(pat, path, n);
  memcpy(pat + n, n && (path[n - 1] == '/' || path[n - 1] == '\\') ? "*" : "\\*", 3);
  wchar_t *w = wide(pat);
  free(pat);
  ie_dir *d = w ? (ie_dir *)calloc(1, sizeof *d) : NULL;
  if (!d) {
    free(w);
    return NULL;
  }
  d->h = FindFirstFileW(w, &d->fd);
  free(w);
  if (d->h == INVALID_HANDLE_VALUE) {
    errno = win_errno();
    free(d);
    return NULL;
  }
  d->first = 1;
  return d;
}

int ie_os_dir_next(ie_dir *d, const char **name, int *is_dir, int *is_link) {
  for (;;) {
    if (!d->first && !FindNextFileW(d->h, &d->fd))
      return 0;
    d->first = 0;
    if (wcscmp(d->fd.cFileName, L".") == 0 || wcscmp(d->fd.cFileName, L"..") == 0)
      continue;
    free(d->name);
    d->name = narrow(d->fd.cFileName);
    if (!d->name)
      return 0;
    *name = d->name;
    *is_dir = (d->fd.dwFileAttributes & FILE_ATTRIBUTE_DIRECTORY) != 0;
    *is_link = (d->fd.dwFileAttributes & FILE_ATTRIBUTE_REPARSE_POINT) != 0;
    return 1;
  }
}

void ie_os_dir_close(ie_dir *d) {
  if (d) {
    FindClose(d->h);
    free(d->name);
    free(d);
  }
}

double ie_os_monotonic(void) {
  LARGE_INTEGER f, c;
  QueryPerformanceFrequency(&f);
  QueryPerformanceCounter(&c);
  return (double)c.QuadPart / (double)f.QuadPart;
}

double ie_os_realtime(void) {
  FILETIME t;
  GetSystemTimePreciseAsFileTime(&t);
  return (double)(filetime_ns100(t) - 116444736000000000LL) / 1e7;
}

double ie_os_thread_cpu(void) {
  FILETIME c, e, k, u;
  if (!GetThreadTimes(GetCurrentThread(), &c, &e, &k, &u))
    return 0;
  return (double)(filetime_ns100(k) + filetime_ns100(u)) / 1e7;
}

/* winpthreads' timed waits take the wall clock. */
void ie_os_cond_init_timed(pthread_cond_t *cv) { pthread_cond_init(cv, NULL); }

void ie_os_deadline(struct timespec *ts, double timeout) {
  double s = ie_os_realtime() + timeout;
  ts->tv_sec = (time_t)s;
  ts->tv_nsec = (long)((s - (double)ts->tv_sec) * 1e9);
  if (ts->tv_nsec >= 1000000000L)
    ts->tv_sec++, ts->tv_nsec -= 1000000000L;
}

curl_socket_t ie_os_socket(int family, int type, int protocol) {
  /* Not inherited by a child the caller spawns. */
  return WSASocketW(family, type, protocol, NULL, 0, WSA_FLAG_OVERLAPPED | WSA_FLAG_NO_HANDLE_INHERIT);
}

int ie_os_closesocket(curl_socket_t fd) { return closesocket(fd); }

int ie_os_local_port(curl_socket_t fd) {
  struct sockaddr_storage ss;
  int n = sizeof ss;
  if (getsockname(fd, (struct sockaddr *)&ss, &n) != 0)
    return -1;
  if (ss.ss_family == AF_INET)
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
  if (ss.ss_family == AF_INET6)
    return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
  return -1;
}

int ie_os_peer_closed(curl_socket_t fd, int idle_h1) {
  WSAPOLLFD p = {fd, POLLRDNORM, 0};
  if (WSAPoll(&p, 1, 0) != 1)
    return 0;
  if ((p.revents & (POLLHUP | POLLERR)) || idle_h1)
    return 1;
  char c;
  u_long avail = 0;
  if (ioctlsocket(fd, FIONREAD, &avail) != 0 || avail > 0)
    return 0;
  int r = recv(fd, &c, 1, MSG_PEEK);
  return r == 0 || (r < 0 && WSAGetLastError() != WSAEWOULDBLOCK);
}

int ie_os_readable(curl_socket_t fd) {
  WSAPOLLFD p = {fd, POLLRDNORM, 0};
  return WSAPoll(&p, 1, 0) == 1 && (p.revents & POLLRDNORM) != 0;
}
/* Windows has no pipe its loops can wait on: two loopback TCP sockets. */
int ie_os_wake_open(ie_os_wake *k) {
  struct sockaddr_in a;
  int n = sizeof a;
  k->r = k->w = INVALID_SOCKET;
  curl_socket_t l = ie_os_socket(AF_INET, SOCK_STREAM, IPPROTO_TCP);
  if (l == INVALID_SOCKET)
    return -1;
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET, a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(l, (struct sockaddr *)&a, sizeof a) == 0 && listen(l, 1) == 0 &&
      getsockname(l, (struct sockaddr *)&a, &n) == 0 &&
      (k->w = ie_os_socket(AF_INET, SOCK_STREAM, IPPROTO_TCP)) != INVALID_SOCKET &&
      connect(k->w, (struct sockaddr *)&a, sizeof a) == 0)
    k->r = accept(l, NULL, NULL);
  closesocket(l);
  if (k->r == INVALID_SOCKET) {
    if (k->w != INVALID_SOCKET)
      closesocket(k->w);
    k->w = INVALID_SOCKET;
    errno = EIO;
    return -1;
  }
  SetHandleInformation((HANDLE)k->r, HANDLE_FLAG_INHERIT, 0);
  u_long on = 1;
  ioctlsocket(k->r, FIONBIO, &on);
  ioctlsocket(k->w, FIONBIO, &on);
  BOOL nodelay = TRUE;
  setsockopt(k->w, IPPROTO_TCP, TCP_NODELAY, (const char *)&nodelay, sizeof nodelay);
  return 0;
}

void ie_os_wake_set(const ie_os_wake *k) {
  char c = 1;
  send(k->w, &c, 1, 0); /* WSAEWOULDBLOCK: it is set already */
}

void ie_os_wake_clear(const ie_os_wake *k) {
  char buf[64];
  while (recv(k->r, buf, sizeof buf, 0) > 0) {
  }
}

void ie_os_wake_close(ie_os_wake *k) {
  if (k->r != INVALID_SOCKET)
    closesocket(k->r), closesocket(k->w);
  k->r = k->w = INVALID_SOCKET;
}
int ie_os_cpu_count(void) {
  SYSTEM_INFO si;
  GetSystemInfo(&si);
  return si.dwNumberOfProcessors > 0 ? (int)si.dwNumberOfProcessors : 1;
}
#endif
