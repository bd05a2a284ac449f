/* A test-only Lua module, imgedit_test.sse, kept out of the production
 * imgedit.core: parse(chunks [, max]) -> events, ok feeds the chunks to the
 * SSE parser in order, so the specs can check that every split of a stream
 * gives the same events. Built by `make testhooks`, never installed. */
#include <string.h>

#include "../../src/imgedit.h"

typedef struct box {
  sse parser;
  sse_queue q;
} box;

static int box_gc(lua_State *L) {
  box *b = (box *)lua_touserdata(L, 1);
  sse_free(&b->parser);
  sse_queue_free(&b->q);
  return 0;
}

static int l_parse(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_Integer max = luaL_optinteger(L, 2, 1 << 20);
  /* The parser's memory belongs to a userdata, so a Lua error cannot leak it. */
  box *b = (box *)ie_newuserdata(L, sizeof *b);
  memset(b, 0, sizeof *b);
  lua_newtable(L);
  lua_pushcfunction(L, box_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  sse_init(&b->parser, (size_t)max);
  sse_queue_init(&b->q, (size_t)-1);
  int ok = 1;
  lua_Integer n = ie_len(L, 1);
  for (lua_Integer i = 1; i <= n && ok; i++) {
    ie_rawgeti(L, 1, i);
    size_t len;
    const char *chunk = luaL_checklstring(L, -1, &len);
    ok = sse_feed(&b->parser, chunk, len, sse_queue_push, &b->q) == 0 && !b->q.failed;
    lua_pop(L, 1);
  }
  ie_push_events(L, &b->q);
  lua_pushboolean(L, ok);
  return 2;
}

IE_API int luaopen_imgedit_test_sse(lua_State *L);

int luaopen_imgedit_test_sse(lua_State *L) {
  lua_newtable(L);
  lua_pushcfunction(L, l_parse);
  lua_setfield(L, -2, "parse");
  return 1;
}
