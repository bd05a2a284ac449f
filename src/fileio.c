/* Files: atomic writes (temp file in the same folder, fsync, rename) so that a
 * reader never sees half an image, and an old file survives a failed write. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "imgedit.h"

#include <lualib.h> /* LUA_FILEHANDLE in 5.1 */

static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0)
      return -1;
    p += w, n -= (size_t)w;
  }
  return 0;
}

/* The process's umask, read without changing it: umask(0) then umask(old)
 * would race with other threads creating files (the emulator's). Linux
 * shows it in /proc/self/status since 4.7; elsewhere the usual 022. */
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

/* A new temp file beside `path` (path.tmp-XXXXXX), or -1 with errno set.
 * Its name lives in a userdata left on the stack, so an error cannot leak it. */
static int temp_beside(lua_State *L, const char *path, size_t plen, char **tmpl) {
  *tmpl = (char *)ie_newuserdata(L, plen + sizeof ".tmp-XXXXXX");
  memcpy(*tmpl, path, plen);
  memcpy(*tmpl + plen, ".tmp-XXXXXX", sizeof ".tmp-XXXXXX");
  return mkostemp(*tmpl, O_CLOEXEC);
}

/* write_atomic(path, bytes) -> true | nil, message, "io" */
static int l_write_atomic(lua_State *L) {
  size_t plen, n;
  const char *path = luaL_checklstring(L, 1, &plen);
  const char *data = luaL_checklstring(L, 2, &n);
  char *tmpl;
  int fd = temp_beside(L, path, plen, &tmpl);
  if (fd < 0)
    return ie_fail(L, "io", "cannot create a file next to the target: %s", strerror(errno));
  int err = 0;
  if (write_all(fd, data, n) != 0 || fsync(fd) != 0)
    err = errno;
  /* Ordinary file permissions, as a plain open() would give. */
  if (!err && fchmod(fd, 0666 & ~current_umask()) != 0)
    err = errno;
  if (close(fd) != 0 && !err)
    err = errno;
  if (!err && rename(tmpl, path) != 0)
    err = errno;
  if (err) {
    unlink(tmpl);
    return ie_fail(L, "io", "cannot write: %s", strerror(err));
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* read_file(path [, max]) -> bytes | nil, message, "io" | "too_large" */
static int l_read_file(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  lua_Integer max = luaL_optinteger(L, 2, (lua_Integer)1 << 40);
  struct stat st;
  if (stat(path, &st) != 0)
    return ie_fail(L, "io", "cannot open: %s", strerror(errno));
  if (!S_ISREG(st.st_mode))
    return ie_fail(L, "io", S_ISDIR(st.st_mode) ? "is a directory" : "not a regular file");
  if (st.st_size > max)
    return ie_fail(L, "too_large", "file is %lld bytes, more than %lld", (long long)st.st_size, (long long)max);
  /* Allocate before opening: a memory error raised here cannot leak the fd. */
  ie_buf b;
  size_t want = (size_t)st.st_size;
  char *p = ie_buf_init(L, &b, want);
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0)
    return ie_fail(L, "io", "cannot open: %s", strerror(errno));
  size_t got = 0;
  while (got < want) {
    ssize_t r = read(fd, p + got, want - got);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0) {
      int e = errno;
      close(fd);
      return ie_fail(L, "io", "cannot read: %s", strerror(e));
    }
    if (r == 0)
      break;
    got += (size_t)r;
  }
  close(fd);
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
    if (p[i] != '/' && p[i] != '\0')
      continue;
    char c = p[i];
    p[i] = '\0';
    struct stat st;
    if (mkdir(p, 0777) != 0 && errno != EEXIST)
      return ie_fail(L, "io", "cannot create %s: %s", p, strerror(errno));
    if (stat(p, &st) != 0 || !S_ISDIR(st.st_mode))
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
  struct stat st;
  if (stat(path, &st) == 0 && S_ISDIR(st.st_mode))
    return ie_fail(L, "io", "it is a folder; name the file to write");
  char *tmpl;
  int fd = temp_beside(L, path, plen, &tmpl);
  if (fd < 0) {
    int e = errno;
    if (e == ENOENT)
      return ie_fail(L, "io", "its folder does not exist");
    if (e == ENOTDIR)
      return ie_fail(L, "io", "a part of its path is not a folder");
    return ie_fail(L, "io", "cannot create a file in its folder: %s", strerror(e));
  }
  close(fd);
  unlink(tmpl);
  lua_pushboolean(L, 1);
  return 1;
}

/* listdir(path) -> { {name=, dir=bool, link=bool}, ... } in no order,
 * without . and .. | nil, message, "io": what the contact sheet and the
 * watcher walk. dir follows a link; link says it was one, so that a walk
 * can refuse to follow it (a link to . or to / never ends). */
static int l_listdir(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  DIR *d = opendir(path);
  if (!d)
    return ie_fail(L, "io", "%s: %s", path, strerror(errno));
  lua_newtable(L);
  lua_Integer n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
      continue;
    int is_dir = e->d_type == DT_DIR, is_link = e->d_type == DT_LNK;
    struct stat st;
    if (e->d_type == DT_UNKNOWN) /* some file systems say nothing */
      is_link = fstatat(dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode);
    if (e->d_type == DT_UNKNOWN || is_link)
      is_dir = fstatat(dirfd(d), e->d_name, &st, 0) == 0 && S_ISDIR(st.st_mode);
    lua_createtable(L, 0, 3);
    lua_pushboolean(L, is_link);
    lua_setfield(L, -2, "link");
    lua_pushstring(L, e->d_name);
    lua_setfield(L, -2, "name");
    lua_pushboolean(L, is_dir);
    lua_setfield(L, -2, "dir");
    ie_rawseti(L, -2, ++n);
  }
  closedir(d);
  return 1;
}

/* stat(path [, nofollow]) -> {size=, mtime=, dir=, link=, id=} | nil,
 * message, "io". mtime has nanoseconds as a fraction: two saves within a
 * second still differ. id is "device:inode", the file's identity however
 * its path is spelt; with nofollow a link is described, not its target. */
static int l_stat(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int nofollow = lua_toboolean(L, 2);
  struct stat st;
  if ((nofollow ? lstat(path, &st) : stat(path, &st)) != 0)
    return ie_fail(L, "io", "%s: %s", path, strerror(errno));
  lua_createtable(L, 0, 5);
  lua_pushboolean(L, S_ISLNK(st.st_mode));
  lua_setfield(L, -2, "link");
  char id[48];
  snprintf(id, sizeof id, "%llu:%llu", (unsigned long long)st.st_dev, (unsigned long long)st.st_ino);
  lua_pushstring(L, id);
  lua_setfield(L, -2, "id");
  lua_pushnumber(L, (lua_Number)st.st_size);
  lua_setfield(L, -2, "size");
  lua_pushnumber(L, (lua_Number)st.st_mtim.tv_sec + (lua_Number)st.st_mtim.tv_nsec / 1e9);
  lua_setfield(L, -2, "mtime");
  lua_pushboolean(L, S_ISDIR(st.st_mode));
  lua_setfield(L, -2, "dir");
  return 1;
}

/* realpath(path) -> the absolute path, links and . and .. resolved
 * | nil, message, "io": how two relative paths are compared. */
static int l_realpath(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  char *r = realpath(path, NULL);
  if (!r)
    return ie_fail(L, "io", "%s: %s", path, strerror(errno));
  lua_pushstring(L, r);
  free(r);
  return 1;
}

/* isatty(fd) -> boolean: is this descriptor (0, 1, 2) a terminal? */
static int l_isatty(lua_State *L) {
  lua_Integer fd = luaL_checkinteger(L, 1);
  lua_pushboolean(L, fd >= 0 && fd <= 2 && isatty((int)fd));
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
  if (fflush(f) != 0 || fdatasync(fileno(f)) != 0)
    return ie_fail(L, "io", "cannot sync: %s", strerror(errno));
  lua_pushboolean(L, 1);
  return 1;
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
                                 {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
}
