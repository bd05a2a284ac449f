/* imgedit.core: the C half of imgedit. Lua's require "imgedit" wraps it. */
#include <stdarg.h>
#include <stdio.h>

#include "imgedit.h"

int ie_fail(lua_State *L, const char *reason, const char *fmt, ...) {
  /* vsnprintf, not lua_pushvfstring: messages use C's full format set. */
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  lua_pushnil(L);
  lua_pushstring(L, msg);
  lua_pushstring(L, reason);
  return 3;
}

IE_API int luaopen_imgedit_core(lua_State *L);

int luaopen_imgedit_core(lua_State *L) {
  ie_checkversion(L);
  lua_newtable(L);
  lua_pushcfunction(L, ie_lua_inspect);
  lua_setfield(L, -2, "inspect");
  ie_open_codec(L);
  ie_open_fileio(L);
  ie_open_appender(L);
  ie_open_meta(L);
  ie_open_watch(L);
  ie_open_signal(L);
  ie_open_pixels(L);
  ie_open_buffer(L);
  ie_open_mask(L);
  ie_open_composite(L);
  ie_open_http(L);
  lua_pushliteral(L, IMGEDIT_VERSION);
  lua_setfield(L, -2, "version");
  return 1;
}
