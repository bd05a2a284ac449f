/* A test-only Lua module, imgedit_test.proc, kept out of the production
 * imgedit.core: fork() as a daemon or a prefork server calls it (without
 * exec), for the specs of what a forked child inherits. Lua 5.4 has no
 * binding in Debian (lua-posix stops at 5.3). Built by `make testhooks`,
 * never installed. */
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "../../src/imgedit.h"

/* fork() -> pid in the parent, 0 in the child */
static int l_fork(lua_State *L) {
  pid_t pid = fork();
  if (pid < 0)
    return luaL_error(L, "fork failed");
  lua_pushinteger(L, (lua_Integer)pid);
  return 1;
}

/* wait(pid) -> the child's exit code, or 128 + the signal that ended it */
static int l_wait(lua_State *L) {
  pid_t pid = (pid_t)luaL_checkinteger(L, 1);
  int st = 0;
  if (waitpid(pid, &st, 0) != pid)
    return luaL_error(L, "waitpid failed");
  lua_pushinteger(L, WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st));
  return 1;
}

/* unsetenv(name): the programs this process starts do not get it (a
 * ThreadSanitizer runtime preloaded here would crash a child shell). */
static int l_unsetenv(lua_State *L) {
  unsetenv(luaL_checkstring(L, 1));
  return 0;
}

static int l_getpid(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)getpid());
  return 1;
}

IE_API int luaopen_imgedit_test_proc(lua_State *L);
int luaopen_imgedit_test_proc(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"fork", l_fork}, {"wait", l_wait}, {"getpid", l_getpid}, {"unsetenv", l_unsetenv}, {NULL, NULL}};
  lua_newtable(L);
  luaL_setfuncs(L, fns, 0);
  return 1;
}
