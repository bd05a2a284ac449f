/* Waiting for a file to be saved, for `imgedit run --watch`: inotify on the
 * folders that hold the files (editors often save by writing a new file and
 * renaming it over the old one, which a watch on the file itself would
 * miss). Each call makes its own inotify instance and closes it, so there
 * is no handle to manage and nothing global. Windows has the same with
 * ReadDirectoryChangesW. Elsewhere the wait is a plain sleep, and the
 * caller compares the files' times after each (watch.lua). */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "imgedit.h"
#include "platform.h"

#ifdef _WIN32
#include <windows.h>
#endif

/* Everything that can raise comes before any handle exists. */
static void check_paths(lua_State *L, int n) {
  for (int i = 1; i <= n; i++) {
    lua_rawgeti(L, 1, i);
    if (lua_type(L, -1) != LUA_TSTRING)
      luaL_argerror(L, 1, "a list of paths expected");
    lua_pop(L, 1);
  }
}

#ifdef IE_LINUX
#include <poll.h>
#include <sys/inotify.h>
#include <unistd.h>

/* The folder part of path ("." for a bare name), written to out. */
static void dir_of(const char *path, char *out, size_t cap) {
  const char *slash = strrchr(path, '/');
  if (!slash) {
    snprintf(out, cap, ".");
  } else if (slash == path) {
    snprintf(out, cap, "/");
  } else {
    size_t n = (size_t)(slash - path);
    snprintf(out, cap, "%.*s", (int)(n < cap ? n : cap - 1), path);
  }
}

static const char *base_of(const char *path) {
  const char *slash = strrchr(path, '/');
  return slash ? slash + 1 : path;
}

/* wait_change({path, ...}, timeout_s) -> path | false (timeout) | nil, message, "unsupported"
 * The first listed file that was written, created or renamed into place. */
static int l_wait_change(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_Number timeout = luaL_checknumber(L, 2);
  int n = (int)ie_len(L, 1);
  /* Everything that can raise comes before the descriptor exists. */
  check_paths(L, n);
  int *wd = (int *)ie_newuserdata(L, sizeof(int) * (size_t)(n > 0 ? n : 1));
  int fd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
  if (fd < 0)
    return ie_fail(L, "unsupported", "inotify: %s", strerror(errno));
  /* One watch per folder; inotify gives the same descriptor for a folder twice. */
  for (int i = 1; i <= n; i++) {
    lua_rawgeti(L, 1, i);
    const char *p = lua_tostring(L, -1);
    char dir[PATH_MAX];
    dir_of(p, dir, sizeof dir);
    wd[i - 1] = inotify_add_watch(fd, dir, IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_ATTRIB);
    lua_pop(L, 1);
  }
  struct pollfd pfd = {fd, POLLIN, 0};
  int ms = timeout <= 0 ? 0 : timeout > 86400 ? 86400000 : (int)(timeout * 1000);
  int r = poll(&pfd, 1, ms);
  if (r <= 0) {
    close(fd);
    lua_pushboolean(L, 0);
    return 1;
  }
  /* Aligned for struct inotify_event, as inotify(7) shows. */
  char buf[4096] __attribute__((aligned(__alignof__(struct inotify_event))));
  ssize_t got = read(fd, buf, sizeof buf);
  close(fd);
  for (char *q = buf; got > 0 && q < buf + got;) {
    const struct inotify_event *ev = (const struct inotify_event *)q;
    if (ev->len > 0) {
      for (int i = 1; i <= n; i++) {
        if (wd[i - 1] != ev->wd)
          continue;
        lua_rawgeti(L, 1, i);
        if (strcmp(base_of(lua_tostring(L, -1)), ev->name) == 0)
          return 1;
        lua_pop(L, 1);
      }
    }
    q += sizeof(struct inotify_event) + ev->len;
  }
  lua_pushboolean(L, 0); /* something else in those folders changed */
  return 1;
}
#elif defined(_WIN32)
/* Windows: ReadDirectoryChangesW on each folder, overlapped, so that one
 * wait covers them all; the handles live only for the call. */
#define MAX_DIRS 32

typedef struct {
  HANDLE dir, ev;
  OVERLAPPED ov;
  DWORD buf[2048]; /* DWORD-aligned, as FILE_NOTIFY_INFORMATION must be */
  char *name;      /* the folder, UTF-8 */
} dwatch;

static int is_sep(char c) { return c == '/' || c == '\\'; }

/* The folder part of path, malloc'd ("." for a bare name). */
static char *folder_of(const char *path) {
  const char *end = NULL;
  for (const char *p = path; *p; p++)
    if (is_sep(*p))
      end = p;
  size_t n = !end                                                 ? 1
             : end == path || (end == path + 2 && path[1] == ':') ? (size_t)(end - path) + 1
                                                                  : (size_t)(end - path);
  char *d = (char *)malloc(n + 1);
  if (d) {
    memcpy(d, end ? path : ".", n);
    d[n] = 0;
  }
  return d;
}

static const char *base_of(const char *path) {
  const char *b = path;
  for (const char *p = path; *p; p++)
    if (is_sep(*p))
      b = p + 1;
  return b;
}

static void close_all(dwatch *w, int n) {
  for (int i = 0; i < n; i++) {
    if (w[i].dir != INVALID_HANDLE_VALUE) {
      CancelIoEx(w[i].dir, &w[i].ov);
      DWORD got;
      GetOverlappedResult(w[i].dir, &w[i].ov, &got, TRUE); /* the buffer is ours again */
      CloseHandle(w[i].dir);
    }
    if (w[i].ev)
      CloseHandle(w[i].ev);
    free(w[i].name);
  }
  free(w);
}

/* The first listed file in folder k named by its notification buffer. */
static int find_hit(lua_State *L, int n, const dwatch *d) {
  const unsigned char *p = (const unsigned char *)d->buf;
  for (;;) {
    const FILE_NOTIFY_INFORMATION *fi = (const FILE_NOTIFY_INFORMATION *)p;
    wchar_t name[MAX_PATH + 1];
    size_t len = fi->FileNameLength / sizeof(wchar_t);
    if (len > MAX_PATH)
      len = MAX_PATH;
    memcpy(name, fi->FileName, len * sizeof(wchar_t));
    name[len] = 0;
    char *u = ie_os_narrow(name);
    for (int i = 1; u && i <= n; i++) {
      lua_rawgeti(L, 1, i);
      const char *path = lua_tostring(L, -1);
      char *f = folder_of(path);
      int same = f && strcmp(f, d->name) == 0 && _stricmp(base_of(path), u) == 0;
      free(f);
      if (same) {
        free(u);
        return 1; /* the path stays on the stack */
      }
      lua_pop(L, 1);
    }
    free(u);
    if (fi->NextEntryOffset == 0)
      return 0;
    p += fi->NextEntryOffset;
  }
}

static int l_wait_change(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_Number timeout = luaL_checknumber(L, 2);
  int n = (int)ie_len(L, 1);
  check_paths(L, n);
  dwatch *w = (dwatch *)calloc(MAX_DIRS, sizeof *w);
  if (!w)
    return luaL_error(L, "out of memory");
  int nd = 0;
  for (int i = 1; i <= n && nd < MAX_DIRS; i++) {
    lua_rawgeti(L, 1, i);
    char *f = folder_of(lua_tostring(L, -1));
    lua_pop(L, 1);
    int seen = !f;
    for (int k = 0; !seen && k < nd; k++)
      seen = strcmp(w[k].name, f) == 0;
    if (seen) {
      free(f);
      continue;
    }
    dwatch *d = &w[nd++];
    d->name = f;
    wchar_t *wf = ie_os_wide(f);
    d->dir = wf ? CreateFileW(wf, FILE_LIST_DIRECTORY, FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, NULL,
                              OPEN_EXISTING, FILE_FLAG_BACKUP_SEMANTICS | FILE_FLAG_OVERLAPPED, NULL)
                : INVALID_HANDLE_VALUE;
    free(wf);
    d->ev = CreateEventW(NULL, TRUE, FALSE, NULL);
    d->ov.hEvent = d->ev;
    if (d->dir == INVALID_HANDLE_VALUE || !d->ev ||
        !ReadDirectoryChangesW(d->dir, d->buf, sizeof d->buf, FALSE,
                               FILE_NOTIFY_CHANGE_FILE_NAME | FILE_NOTIFY_CHANGE_LAST_WRITE | FILE_NOTIFY_CHANGE_SIZE,
                               NULL, &d->ov, NULL)) {
      close_all(w, nd);
      return ie_fail(L, "io", "cannot watch %s (error %lu)", f, (unsigned long)GetLastError());
    }
  }
  HANDLE evs[MAX_DIRS];
  for (int k = 0; k < nd; k++)
    evs[k] = w[k].ev;
  DWORD ms = timeout <= 0 ? 0 : timeout > 86400 ? 86400000 : (DWORD)(timeout * 1000);
  DWORD r = nd ? WaitForMultipleObjects((DWORD)nd, evs, FALSE, ms) : (Sleep(ms), WAIT_TIMEOUT);
  int hit = 0;
  if (r < WAIT_OBJECT_0 + (DWORD)nd) {
    dwatch *d = &w[r - WAIT_OBJECT_0];
    DWORD got = 0;
    if (GetOverlappedResult(d->dir, &d->ov, &got, FALSE) && got > 0)
      hit = find_hit(L, n, d);
  }
  close_all(w, nd);
  if (!hit)
    lua_pushboolean(L, 0); /* a timeout, or something else in those folders */
  return 1;
}
#else
/* No inotify: wait out the timeout and say nothing changed; the caller
 * compares the files' times after each wait (watch.lua). */
static int l_wait_change(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  check_paths(L, (int)ie_len(L, 1));
  lua_Number timeout = luaL_checknumber(L, 2);
  double s = timeout <= 0 ? 0 : timeout > 86400 ? 86400 : timeout;
  struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
  lua_pushboolean(L, 0);
  return 1;
}
#endif

void ie_open_watch(lua_State *L) {
  lua_pushcfunction(L, l_wait_change);
  lua_setfield(L, -2, "wait_change");
}
