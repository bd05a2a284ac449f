/* libFuzzer targets that go through the Lua layer, where that is where the
 * code lives: base64 and data URLs, the JSON answer handling, mask
 * decoding, and lineage written into and stripped from files. One harness, built once per target with -DTARGET_CODE naming the
 * Lua function to call with the input. A Lua error is fine (the code under
 * test returns nil, err); anything that escapes a pcall is a finding. */
#include <stdio.h>
#include <stdlib.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

int luaopen_imgedit_core(lua_State *L);
int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size);

static const char *const CODE[] = {
    /* 0: base64 and data URLs */
    "local core = require 'imgedit.core'\n"
    "return function(s)\n"
    "  local b = core.b64decode(s)\n"
    "  if b then assert(core.b64decode(core.b64encode(b)) == b) end\n"
    "  local d, mime = core.dataurl_decode(s)\n"
    "  if d then assert(type(mime) == 'string') end\n"
    "end\n",
    /* 1: reading a JSON answer of a 200 */
    "local answer = require 'imgedit.answer'\n"
    "return function(s)\n"
    "  local res = { ok = true, status = 200, body = s, content_type = 'application/json' }\n"
    "  local img, err, url = answer.read(res, { model = 'gpt-image-2' }, 1e6, 'sk-secret-key')\n"
    "  assert(img or err or url)\n"
    "  if err then assert(err.kind == 'protocol' and type(err.message) == 'string') end\n"
    "  if err then assert(not tostring(err):find('sk-secret-key', 1, true)) end\n"
    "end\n",
    /* 2: mask decoding: pixels, alpha from grey, coverage */
    "local core = require 'imgedit.core'\n"
    "return function(s)\n"
    "  local px, w, h = core.decode(s, 4000000)\n"
    "  if not px then return end\n"
    "  local m = core.mask_from_gray(px, w, h, { feather = 2 })\n"
    "  local clear, solid, total = core.mask_stats(m)\n"
    "  assert(total == w * h and clear + solid <= total)\n"
    "end\n",
    /* 3: lineage in and out of PNG, JPEG and WebP files */
    "local core = require 'imgedit.core'\n"
    "local lineage = require 'imgedit.lineage'\n"
    "local packet = lineage.packet(lineage.record { prompt = 'p', request_id = 'req_1' })\n"
    "return function(s)\n"
    "  local plain = lineage.strip(s)\n"
    "  assert(type(plain) == 'string' and lineage.strip(plain) == plain)\n"
    "  local with = core.xmp_embed(s, packet)\n"
    "  if with then assert(lineage.strip(lineage.strip(with)) == lineage.strip(with)) end\n"
    "end\n",
};

static lua_State *L;

static void setup(void) {
  L = luaL_newstate();
  luaL_openlibs(L);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_imgedit_core);
  lua_setfield(L, -2, "imgedit.core");
  lua_pop(L, 1);
  lua_getglobal(L, "package");
  lua_pushliteral(L, "lua/?.lua;lua/?/init.lua;/usr/share/lua/5.4/?.lua");
  lua_setfield(L, -2, "path");
  lua_pop(L, 1);
  if (luaL_dostring(L, CODE[TARGET_CODE]) != LUA_OK) {
    fprintf(stderr, "harness: %s\n", lua_tostring(L, -1));
    abort();
  }
  lua_setfield(L, LUA_REGISTRYINDEX, "fuzz.fn");
}

int LLVMFuzzerTestOneInput(const unsigned char *data, size_t size) {
  if (!L)
    setup();
  lua_getfield(L, LUA_REGISTRYINDEX, "fuzz.fn");
  lua_pushlstring(L, (const char *)data, size);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    /* Only a failed assert in the harness is a finding: the code under test
     * reports bad input by returning nil, err, never by raising. */
    fprintf(stderr, "finding: %s\n", lua_tostring(L, -1));
    abort();
  }
  lua_gc(L, LUA_GCSTEP, 0);
  return 0;
}
