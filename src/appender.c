/* Append-only files, for journals: opened with O_NOFOLLOW, so that a link
 * planted where the journal goes (a shared folder) is refused rather than
 * written through (on Windows: a reparse point is refused), and written
 * with one write on an append-only descriptor, so each line lands whole at
 * the end. sync() puts the line on the disk before the next request goes
 * out. */
#include <errno.h>
#include <string.h>

#include "imgedit.h"
#include "platform.h"

#define APPENDER "imgedit.appender"

typedef struct appender {
  int fd;
} appender;

static appender *check(lua_State *L) {
  appender *a = (appender *)luaL_checkudata(L, 1, APPENDER);
  if (a->fd < 0)
    luaL_argerror(L, 1, "closed file");
  return a;
}

/* append(path) -> appender | nil, message, "io" */
static int l_append(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  appender *a = (appender *)ie_newuserdata(L, sizeof *a);
  a->fd = -1;
  luaL_setmetatable(L, APPENDER);
  int fd = ie_os_open_append(path);
  if (fd < 0)
    return ie_fail(L, "io", "%s: %s", path,
                   errno == ELOOP ? "is a link (a journal is never written through one)" : ie_os_strerror(errno));
  ie_stat st;
  if (ie_os_fstat(fd, &st) != 0 || st.kind != IE_KIND_REG) {
    ie_os_close(fd);
    return ie_fail(L, "io", "%s: not a regular file", path);
  }
  a->fd = fd;
  return 1;
}

/* write(s, ...) -> true | nil, message, "io": the strings as one write. */
static int l_write(lua_State *L) {
  appender *a = check(L);
  int n = lua_gettop(L);
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  for (int i = 2; i <= n; i++) {
    lua_pushvalue(L, i);
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
  size_t len;
  const char *p = lua_tolstring(L, -1, &len);
  while (len > 0) {
    ie_ssize w = ie_os_write(a->fd, p, len);
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0)
      return ie_fail(L, "io", "cannot write: %s", ie_os_strerror(errno));
    p += w, len -= (size_t)w;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* sync() -> true | nil, message, "io" */
static int l_sync(lua_State *L) {
  appender *a = check(L);
  if (ie_os_sync(a->fd) != 0)
    return ie_fail(L, "io", "cannot sync: %s", ie_os_strerror(errno));
  lua_pushboolean(L, 1);
  return 1;
}

/* close(): idempotent, also __gc and __close. */
static int l_close(lua_State *L) {
  appender *a = (appender *)luaL_checkudata(L, 1, APPENDER);
  if (a->fd >= 0)
    ie_os_close(a->fd);
  a->fd = -1;
  return 0;
}

void ie_open_appender(lua_State *L) {
  static const luaL_Reg methods[] = {{"write", l_write}, {"sync", l_sync}, {NULL, NULL}};
  ie_new_class(L, APPENDER, methods, l_close, "close", NULL);
  lua_pushcfunction(L, l_append);
  lua_setfield(L, -2, "append");
}
