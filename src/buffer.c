/* Buffers: pixels a thread of the core made, handed to Lua without a copy.
 * The userdata owns the C memory (malloc'd by a decoder, freed by its own
 * release) until it is closed or collected. #buf is its size in bytes,
 * buf:ptr() a light pointer for LuaJIT's FFI (ffi.copy), buf:string() a
 * Lua string of it (a copy, made when asked). The memory is outside Lua's
 * count: close a buffer when done rather than wait for the collector. */
#include <stdlib.h>
#include <string.h>

#include "imgedit.h"

static ie_buffer *check_buffer(lua_State *L) { return (ie_buffer *)luaL_checkudata(L, 1, IE_BUFFER_MT); }

static ie_buffer *check_open_buffer(lua_State *L) {
  ie_buffer *b = check_buffer(L);
  if (!b->p)
    luaL_error(L, "attempt to use a closed buffer");
  return b;
}

/* close(): the memory is freed now. Idempotent; also __gc and __close. */
static int buffer_close(lua_State *L) {
  ie_buffer *b = check_buffer(L);
  if (b->p && b->release)
    b->release(b->p);
  b->p = NULL, b->len = 0;
  return 0;
}

static int buffer_len(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)check_buffer(L)->len);
  return 1;
}

static int buffer_ptr(lua_State *L) {
  lua_pushlightuserdata(L, check_open_buffer(L)->p);
  return 1;
}

static int buffer_string(lua_State *L) {
  ie_buffer *b = check_open_buffer(L);
  lua_pushlstring(L, (const char *)b->p, b->len);
  return 1;
}

static int buffer_tostring(lua_State *L) {
  ie_buffer *b = check_buffer(L);
  if (b->p)
    lua_pushfstring(L, "imgedit.buffer (%d bytes)", (int)b->len);
  else
    lua_pushliteral(L, "imgedit.buffer (closed)");
  return 1;
}

ie_buffer *ie_buffer_push(lua_State *L, ie_pixels *px) {
  ie_buffer *b = (ie_buffer *)ie_newuserdata(L, sizeof *b);
  memset(b, 0, sizeof *b);
  luaL_setmetatable(L, IE_BUFFER_MT);
  b->p = px->p, b->len = (size_t)px->w * (size_t)px->h * 4, b->release = px->release;
  px->p = NULL; /* the buffer's now */
  return b;
}

void ie_open_buffer(lua_State *L) {
  static const luaL_Reg methods[] = {{"ptr", buffer_ptr}, {"string", buffer_string}, {NULL, NULL}};
  ie_new_class(L, IE_BUFFER_MT, methods, buffer_close, "close", buffer_tostring);
  luaL_getmetatable(L, IE_BUFFER_MT);
  lua_pushcfunction(L, buffer_len);
  lua_setfield(L, -2, "__len");
  lua_pop(L, 1);
}
