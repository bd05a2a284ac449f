/* Waiting for a file to be saved, for `imgedit run --watch`: inotify on the
 * folders that hold the files (editors often save by writing a new file and
 * renaming it over the old one, which a watch on the file itself would
 * miss). Each call makes its own inotify instance and closes it, so there
 * is no handle to manage and nothing global. Where inotify is missing the
 * wait is a plain sleep, and the caller compares the files' times after
 * each (watch.lua). */
#include <errno.h>
#include <limits.h>
#include <string.h>

#include "imgedit.h"
#include "platform.h"

#ifdef _WIN32
#include <windows.h>
#endif

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
  for (int i = 1; i <= n; i++) {
    lua_rawgeti(L, 1, i);
    if (lua_type(L, -1) != LUA_TSTRING)
      return luaL_argerror(L, 1, "a list of paths expected");
    lua_pop(L, 1);
  }
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
#else
/* No inotify: wait out the timeout and say nothing changed; the caller
 * compares the files' times after each wait (watch.lua). */
static int l_wait_change(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_Number timeout = luaL_checknumber(L, 2);
  double s = timeout <= 0 ? 0 : timeout > 86400 ? 86400 : timeout;
#ifdef _WIN32
  Sleep((DWORD)(s * 1000));
#else
  struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
#endif
  lua_pushboolean(L, 0);
  return 1;
}
#endif

void ie_open_watch(lua_State *L) {
  lua_pushcfunction(L, l_wait_change);
  lua_setfield(L, -2, "wait_change");
}
