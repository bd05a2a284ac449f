/* One small compatibility layer: the C files are written against Lua 5.4,
 * and this header maps the few calls that differ onto Lua 5.3, 5.2, 5.1 and
 * LuaJIT 2.1. No per-version copies of code elsewhere. */
#ifndef IMGEDIT_COMPAT_H
#define IMGEDIT_COMPAT_H

#include <lauxlib.h>
#include <lua.h>

#ifndef LUA_OK
#define LUA_OK 0
#endif

/* What a module exports (luaopen_*) and what stays inside it. */
#if defined(_WIN32)
#define IE_API __declspec(dllexport)
#define IE_LOCAL
#elif defined(__GNUC__)
#define IE_API __attribute__((visibility("default")))
#define IE_LOCAL __attribute__((visibility("hidden")))
#else
#define IE_API
#define IE_LOCAL
#endif

#if LUA_VERSION_NUM >= 504
#define ie_newuserdata(L, n) lua_newuserdatauv((L), (n), 0)
#define ie_newuserdata1(L, n) lua_newuserdatauv((L), (n), 1)
#define ie_getuservalue(L, i) lua_getiuservalue((L), (i), 1)
#define ie_setuservalue(L, i) lua_setiuservalue((L), (i), 1)
#elif LUA_VERSION_NUM >= 502
#define ie_newuserdata(L, n) lua_newuserdata((L), (n))
#define ie_newuserdata1(L, n) lua_newuserdata((L), (n))
#define ie_getuservalue(L, i) lua_getuservalue((L), (i))
#define ie_setuservalue(L, i) lua_setuservalue((L), (i))
#else /* 5.1 and LuaJIT: the userdata's environment table holds the value */
#define ie_newuserdata(L, n) lua_newuserdata((L), (n))
#define ie_newuserdata1(L, n) lua_newuserdata((L), (n))
#define ie_getuservalue(L, i) lua_getfenv((L), (i))
#define ie_setuservalue(L, i) lua_setfenv((L), (i))
#endif

#if LUA_VERSION_NUM >= 502
#define ie_len(L, i) ((lua_Integer)luaL_len((L), (i)))
#define ie_checkversion(L) luaL_checkversion(L)
#else
#define ie_len(L, i) ((lua_Integer)lua_objlen((L), (i)))
#define ie_checkversion(L) ((void)(L))
#endif

/* Table access by integer index, without metamethods (our own tables). */
#define ie_rawgeti(L, i, n) lua_rawgeti((L), (i), (int)(n))
#define ie_rawseti(L, i, n) lua_rawseti((L), (i), (int)(n))

#if LUA_VERSION_NUM == 501
/* Lua 5.1 lacks these 5.2 helpers. LuaJIT 2.1 has them, but a module
 * for the 5.1 ABI must not call them: one build loads in both lua5.1 and
 * LuaJIT (LuaRocks' 5.1 tree serves both), so ours are used on either. */
static inline void ie_setfuncs(lua_State *L, const luaL_Reg *l, int nup) {
  for (; l->name; l++) {
    for (int i = 0; i < nup; i++)
      lua_pushvalue(L, -nup);
    lua_pushcclosure(L, l->func, nup);
    lua_setfield(L, -(nup + 2), l->name);
  }
  lua_pop(L, nup);
}
static inline void ie_setmetatable(lua_State *L, const char *tname) {
  luaL_getmetatable(L, tname);
  lua_setmetatable(L, -2);
}
static inline void *ie_testudata(lua_State *L, int i, const char *tname) {
  void *p = lua_touserdata(L, i);
  if (!p || !lua_getmetatable(L, i))
    return NULL;
  luaL_getmetatable(L, tname);
  int same = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  return same ? p : NULL;
}
#undef luaL_setfuncs
#undef luaL_setmetatable
#undef luaL_testudata
#define luaL_setfuncs(L, l, n) ie_setfuncs((L), (l), (n))
#define luaL_setmetatable(L, t) ie_setmetatable((L), (t))
#define luaL_testudata(L, i, t) ie_testudata((L), (i), (t))
#endif

/* A buffer of a size known in advance that becomes a Lua string: luaL_Buffer
 * where it can (5.2+), a userdata on the stack in 5.1. Either way the memory
 * belongs to Lua, so an error raised while it is filled cannot leak it. */
#if LUA_VERSION_NUM >= 502
typedef luaL_Buffer ie_buf;
#define ie_buf_init(L, b, n) luaL_buffinitsize((L), (b), (n))
#define ie_buf_push(L, b, n) luaL_pushresultsize((b), (n))
#else
typedef struct ie_buf {
  char *p;
} ie_buf;
static inline char *ie_buf_init(lua_State *L, ie_buf *b, size_t n) {
  b->p = (char *)lua_newuserdata(L, n ? n : 1);
  return b->p;
}
static inline void ie_buf_push(lua_State *L, ie_buf *b, size_t n) {
  lua_pushlstring(L, b->p, n);
  lua_remove(L, -2);
}
#endif

#endif
