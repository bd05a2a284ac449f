/* Files: atomic writes (temp file in the same folder, fsync, rename) so that a
 * reader never sees half an image, and an old file survives a failed write. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "imgedit.h"
#include "platform.h"

#include <lualib.h> /* LUA_FILEHANDLE in 5.1 */

static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ie_ssize w = ie_os_write(fd, p, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0)
      return -1;
    p += w, n -= (size_t)w;
  }
  return 0;
}

/* A new temp file beside `path` (path.tmp-XXXXXX), or -1 with errno set.
 * Its name lives in a userdata left on the stack, so an error cannot leak it. */
static int temp_beside(lua_State *L, const char *path, size_t plen, char **tmpl) {
  *tmpl = (char *)ie_newuserdata(L, plen + sizeof ".tmp-XXXXXX");
  memcpy(*tmpl, path, plen);
  memcpy(*tmpl + plen, ".tmp-XXXXXX", sizeof ".tmp-XXXXXX");
  return ie_os_temp_beside(*tmpl);
}

/* write_atomic(path, bytes) -> true | nil, message, "io" */
static int l_write_atomic(lua_State *L) {
  size_t plen, n;
  const char *path = luaL_checklstring(L, 1, &plen);
  const char *data = luaL_checklstring(L, 2, &n);
  char *tmpl;
  int fd = temp_beside(L, path, plen, &tmpl);
  if (fd < 0)
    return ie_fail(L, "io", "cannot create a file next to the target: %s", ie_os_strerror(errno));
  int err = 0;
  if (write_all(fd, data, n) != 0 || ie_os_sync(fd) != 0)
    err = errno;
  /* Ordinary file permissions, as a plain open() would give. */
  if (!err && ie_os_default_mode(fd) != 0)
    err = errno;
  if (ie_os_close(fd) != 0 && !err)
    err = errno;
  if (!err && ie_os_replace(tmpl, path) != 0)
    err = errno;
  if (err) {
    ie_os_unlink(tmpl);
    return ie_fail(L, "io", "cannot write: %s", ie_os_strerror(err));
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* read_file(path [, max]) -> bytes | nil, message, "io" | "too_large" */
static int l_read_file(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  lua_Integer max = luaL_optinteger(L, 2, (lua_Integer)1 << 40);
  ie_stat st;
  if (ie_os_stat(path, 0, &st) != 0)
    return ie_fail(L, "io", "cannot open: %s", ie_os_strerror(errno));
  if (st.kind != IE_KIND_REG)
    return ie_fail(L, "io", st.kind == IE_KIND_DIR ? "is a directory" : "not a regular file");
  if (st.size > max)
    return ie_fail(L, "too_large", "file is %lld bytes, more than %lld", (long long)st.size, (long long)max);
  /* Allocate before opening: a memory error raised here cannot leak the fd. */
  ie_buf b;
  size_t want = (size_t)st.size;
  char *p = ie_buf_init(L, &b, want);
  int fd = ie_os_open_read(path);
  if (fd < 0)
    return ie_fail(L, "io", "cannot open: %s", ie_os_strerror(errno));
  size_t got = 0;
  while (got < want) {
    ie_ssize r = ie_os_read(fd, p + got, want - got);
    if (r < 0 && (errno == EINTR || errno == EAGAIN))
      continue;
    if (r < 0) {
      int e = errno;
      ie_os_close(fd);
      return ie_fail(L, "io", "cannot read: %s", ie_os_strerror(e));
    }
    if (r == 0)
      break;
    got += (size_t)r;
  }
  ie_os_close(fd);
  ie_buf_push(L, &b, got);
  return 1;
}

/* mkdir_p(path) -> true | nil, message, "io": create a folder and its parents. */
static int l_mkdir_p(lua_State *L) {
  size_t n;
  const char *path = luaL_checklstring(L, 1, &n);
  char *p = (char *)ie_newuserdata(L, n + 1); /* collected, never leaked */
  memcpy(p, path, n + 1);
  for (size_t i = 1; i <= n; i++) {
    if (p[i] != '/' && p[i] != '\0' && !(IE_BACKSLASH_SEP && p[i] == '\\'))
      continue;
    if (IE_BACKSLASH_SEP && i == 2 && p[1] == ':') /* C:\ is there */
      continue;
    char c = p[i];
    p[i] = '\0';
    ie_stat st;
    if (ie_os_mkdir(p) != 0 && errno != EEXIST && !(IE_BACKSLASH_SEP && errno == EACCES))
      return ie_fail(L, "io", "cannot create %s: %s", p, ie_os_strerror(errno));
    if (ie_os_stat(p, 0, &st) != 0 || st.kind != IE_KIND_DIR)
      return ie_fail(L, "io", "%s exists and is not a folder", p);
    p[i] = c;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* can_write(path) -> true | nil, message, "io": would write_atomic(path)
 * work? Asked before a paid request, so that its answer has a home: the
 * target is not a folder, and a temp file can be made beside it (the same
 * name pattern, so long names, permissions, read-only and pseudo file
 * systems all answer now). The probe is removed at once. */
static int l_can_write(lua_State *L) {
  size_t plen;
  const char *path = luaL_checklstring(L, 1, &plen);
  ie_stat st;
  if (ie_os_stat(path, 0, &st) == 0 && st.kind == IE_KIND_DIR)
    return ie_fail(L, "io", "it is a folder; name the file to write");
  char *tmpl;
  int fd = temp_beside(L, path, plen, &tmpl);
  if (fd < 0) {
    int e = errno;
    if (e == ENOENT)
      return ie_fail(L, "io", "its folder does not exist");
    if (e == ENOTDIR)
      return ie_fail(L, "io", "a part of its path is not a folder");
    return ie_fail(L, "io", "cannot create a file in its folder: %s", ie_os_strerror(e));
  }
  ie_os_close(fd);
  ie_os_unlink(tmpl);
  lua_pushboolean(L, 1);
  return 1;
}

/* listdir(path) -> { {name=, dir=bool, link=bool}, ... } in no order,
 * without . and .. | nil, message, "io": what the contact sheet and the
 * watcher walk. dir follows a link; link says it was one, so that a walk
 * can refuse to follow it (a link to . or to / never ends). */
static int dir_gc(lua_State *L) {
  ie_dir **box = (ie_dir **)lua_touserdata(L, 1);
  ie_os_dir_close(*box);
  *box = NULL;
  return 0;
}

static int l_listdir(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  ie_dir *d = ie_os_dir_open(path);
  if (!d)
    return ie_fail(L, "io", "%s: %s", path, ie_os_strerror(errno));
  /* The folder is closed by a userdata's __gc should a push raise. */
  ie_dir **box = (ie_dir **)ie_newuserdata(L, sizeof *box);
  *box = d;
  lua_newtable(L);
  lua_pushcfunction(L, dir_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_newtable(L);
  lua_Integer n = 0;
  const char *name;
  int is_dir, is_link;
  while (ie_os_dir_next(d, &name, &is_dir, &is_link)) {
    lua_createtable(L, 0, 3);
    lua_pushboolean(L, is_link);
    lua_setfield(L, -2, "link");
    lua_pushstring(L, name);
    lua_setfield(L, -2, "name");
    lua_pushboolean(L, is_dir);
    lua_setfield(L, -2, "dir");
    ie_rawseti(L, -2, ++n);
  }
  ie_os_dir_close(d);
  *box = NULL;
  return 1;
}

/* stat(path [, nofollow]) -> {size=, mtime=, dir=, link=, id=} | nil,
 * message, "io". mtime has nanoseconds as a fraction: two saves within a
 * second still differ. id is "device:inode", the file's identity however
 * its path is spelt; with nofollow a link is described, not its target. */
static int l_stat(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int nofollow = lua_toboolean(L, 2);
  ie_stat st;
  if (ie_os_stat(path, nofollow, &st) != 0)
    return ie_fail(L, "io", "%s: %s", path, ie_os_strerror(errno));
  lua_createtable(L, 0, 5);
  lua_pushboolean(L, st.kind == IE_KIND_LINK);
  lua_setfield(L, -2, "link");
  char id[48];
  snprintf(id, sizeof id, "%llu:%llu", (unsigned long long)st.dev, (unsigned long long)st.ino);
  lua_pushstring(L, id);
  lua_setfield(L, -2, "id");
  lua_pushnumber(L, (lua_Number)st.size);
  lua_setfield(L, -2, "size");
  lua_pushnumber(L, (lua_Number)st.mtime_s + (lua_Number)st.mtime_ns / 1e9);
  lua_setfield(L, -2, "mtime");
  lua_pushboolean(L, st.kind == IE_KIND_DIR);
  lua_setfield(L, -2, "dir");
  return 1;
}

/* realpath(path) -> the absolute path, links and . and .. resolved
 * | nil, message, "io": how two relative paths are compared. */
static int l_realpath(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  char *r = ie_os_realpath(path);
  if (!r)
    return ie_fail(L, "io", "%s: %s", path, ie_os_strerror(errno));
  lua_pushstring(L, r);
  free(r);
  return 1;
}

/* isatty(fd) -> boolean: is this descriptor (0, 1, 2) a terminal? */
static int l_isatty(lua_State *L) {
  lua_Integer fd = luaL_checkinteger(L, 1);
  lua_pushboolean(L, fd >= 0 && fd <= 2 && ie_os_isatty((int)fd));
  return 1;
}

/* sync(file) -> true | nil, message, "io": what was written to a Lua file
 * handle is on the disk, a power cut included (fflush, then fdatasync).
 * The handle's userdata starts with its FILE* in every Lua (5.1's FILE**,
 * 5.2+'s luaL_Stream). */
static int l_sync(lua_State *L) {
  FILE *f = *(FILE **)luaL_checkudata(L, 1, LUA_FILEHANDLE);
  if (!f)
    return luaL_argerror(L, 1, "closed file");
  if (fflush(f) != 0 || ie_os_sync(fileno(f)) != 0)
    return ie_fail(L, "io", "cannot sync: %s", ie_os_strerror(errno));
  lua_pushboolean(L, 1);
  return 1;
}

/* argv() -> the process's arguments in UTF-8 | nil where Lua's own are
 * already (everywhere but Windows, whose main() gets the ANSI code page's). */
static int l_argv(lua_State *L) {
#ifdef _WIN32
  int n = 0;
  char **v = ie_os_argv(&n);
  if (!v)
    return 0;
  lua_createtable(L, n, 0);
  for (int i = 0; i < n; i++) {
    lua_pushstring(L, v[i]);
    ie_rawseti(L, -2, i + 1);
  }
  ie_os_argv_free(v);
  return 1;
#else
  (void)L;
  return 0;
#endif
}

void ie_open_fileio(lua_State *L) {
  static const luaL_Reg fns[] = {{"write_atomic", l_write_atomic},
                                 {"read_file", l_read_file},
                                 {"mkdir_p", l_mkdir_p},
                                 {"isatty", l_isatty},
                                 {"can_write", l_can_write},
                                 {"listdir", l_listdir},
                                 {"stat", l_stat},
                                 {"realpath", l_realpath},
                                 {"sync", l_sync},
                                 {"argv", l_argv},
                                 {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
}
