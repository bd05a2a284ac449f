/* imgedit.emulator.core: the emulator's handle in the caller's state. It
 * starts and stops the listeners and calls into the service with strings;
 * the JSON, the options and the object users see are Lua's
 * (imgedit/emulator/init.lua). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <lualib.h>

#include "emulator.h"

#define EMU_MT "imgedit.emulator.core"

typedef struct handle {
  emu *E;
} handle;

static void emu_free(emu *E) {
  if (!E)
    return;
  emu_shutdown(E);
  if (E->S)
    lua_close(E->S);
  free(E->sink_body);
  pthread_mutex_destroy(&E->lock);
  pthread_mutex_destroy(&E->wait_m);
  pthread_cond_destroy(&E->wake);
  free(E);
}

/* stop(), __gc and __close: idempotent. */
static int h_stop(lua_State *L) {
  handle *h = (handle *)luaL_checkudata(L, 1, EMU_MT);
  emu_free(h->E);
  h->E = NULL;
  return 0;
}

static emu *check_emu(lua_State *L) {
  handle *h = (handle *)luaL_checkudata(L, 1, EMU_MT);
  if (!h->E)
    luaL_error(L, "attempt to use a stopped emulator");
  return h->E;
}

/* h:call(fn [, arg]) -> the service's string result; its error raises. */
static int h_call(lua_State *L) {
  emu *E = check_emu(L);
  const char *fn = luaL_checkstring(L, 2);
  const char *arg = luaL_optstring(L, 3, NULL);
  size_t n;
  int failed;
  char *s = emu_call(E, fn, arg, &n, &failed);
  if (!s)
    return luaL_error(L, "out of memory");
  lua_pushlstring(L, s, n);
  free(s);
  return failed ? lua_error(L) : 1;
}

/* h:ports() -> api port, cdn port */
static int h_ports(lua_State *L) {
  emu *E = check_emu(L);
  lua_pushinteger(L, E->api_port);
  lua_pushinteger(L, E->cdn_port);
  return 2;
}

/* h:in_flight() -> requests being answered now, the most at once so far */
static int h_in_flight(lua_State *L) {
  emu *E = check_emu(L);
  pthread_mutex_lock(&E->wait_m);
  int now = E->in_flight, most = E->max_in_flight;
  pthread_mutex_unlock(&E->wait_m);
  lua_pushinteger(L, now);
  lua_pushinteger(L, most);
  return 2;
}

/* h:reset_peak(): the most at once starts again from now. */
static int h_reset_peak(lua_State *L) {
  emu *E = check_emu(L);
  pthread_mutex_lock(&E->wait_m);
  E->max_in_flight = E->in_flight;
  pthread_mutex_unlock(&E->wait_m);
  return 0;
}

static int h_stopped(lua_State *L) {
  handle *h = (handle *)luaL_checkudata(L, 1, EMU_MT);
  lua_pushboolean(L, h->E == NULL);
  return 1;
}

/* The fixed answer of sink mode, made once by the service. */
static int take_sink(emu *E) {
  int failed;
  E->sink_body = emu_call(E, "sink_body", NULL, &E->sink_len, &failed);
  if (!E->sink_body || failed)
    return -1;
  E->sink = 1;
  return 0;
}

/* start(config_json, port, cdn_port, sink) -> handle | nil, message */
static int l_start(lua_State *L) {
  const char *config = luaL_checkstring(L, 1);
  lua_Integer port = luaL_checkinteger(L, 2), cdn_port = luaL_checkinteger(L, 3);
  int sink = lua_toboolean(L, 4);
  luaL_argcheck(L, port >= 0 && port < 65536, 2, "port out of range");
  luaL_argcheck(L, cdn_port >= 0 && cdn_port < 65536, 3, "port out of range");
  handle *h = (handle *)ie_newuserdata(L, sizeof *h);
  h->E = NULL;
  luaL_setmetatable(L, EMU_MT);
  emu *E = calloc(1, sizeof *E);
  if (!E)
    return luaL_error(L, "out of memory");
  pthread_mutex_init(&E->lock, NULL);
  pthread_mutex_init(&E->wait_m, NULL);
  pthread_cond_init(&E->wake, NULL);
  h->E = E; /* from here on, __gc frees it */
  char err[512];
  E->S = emu_state_new(L, config, err, sizeof err);
  if (!E->S || (sink && take_sink(E) != 0)) {
    if (E->S)
      snprintf(err, sizeof err, "emulator: cannot make the sink answer");
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  if (emu_listen(E, (unsigned)port, (unsigned)cdn_port) != 0) {
    int e = errno;
    emu_free(E);
    h->E = NULL;
    lua_pushnil(L);
    lua_pushfstring(L, "cannot listen on 127.0.0.1: %s", strerror(e));
    return 2;
  }
  return 1;
}

IE_API int luaopen_imgedit_emulator_core(lua_State *L);

int luaopen_imgedit_emulator_core(lua_State *L) {
  ie_checkversion(L);
  static const luaL_Reg methods[] = {{"call", h_call},
                                     {"ports", h_ports},
                                     {"in_flight", h_in_flight},
                                     {"reset_peak", h_reset_peak},
                                     {"stopped", h_stopped},
                                     {"stop", h_stop},
                                     {NULL, NULL}};
  ie_new_class(L, EMU_MT, methods, h_stop, NULL, NULL);
  lua_newtable(L);
  lua_pushcfunction(L, l_start);
  lua_setfield(L, -2, "start");
  emu_open_render(L);
  return 1;
}
