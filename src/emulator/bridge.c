/* The bridge to the emulator's private lua_State, where the service's rules
 * run (imgedit/emulator/service.lua). Listener threads call into it one at a
 * time under E->lock and never touch the caller's state; what crosses is
 * plain C data (a request in, an answer or a string out), so no Lua value
 * ever moves between states. */
#include <stdlib.h>
#include <string.h>

#include <lualib.h>

#include "emulator.h"

#define SERVICE_KEY "imgedit.emulator.service"

void emu_free_answer(emu_answer *a) {
  free(a->body);
  free(a->headers);
  for (size_t i = 0; i < a->nevents; i++)
    free(a->events[i]);
  free(a->events);
  free(a->event_len);
  memset(a, 0, sizeof *a);
}

/* S: service, fn_name, argument -> service[fn_name](argument) */
static int run_service(lua_State *S) {
  lua_getfield(S, 1, lua_tostring(S, 2));
  lua_pushvalue(S, 3);
  lua_call(S, 1, 1);
  return 1;
}

/* Push run_service, the service table and a function name onto S. */
static void push_call(lua_State *S, const char *fn) {
  lua_pushcfunction(S, run_service);
  lua_getfield(S, LUA_REGISTRYINDEX, SERVICE_KEY);
  lua_pushstring(S, fn);
}

static void set_string(lua_State *S, const char *k, const char *v) {
  if (v)
    lua_pushstring(S, v), lua_setfield(S, -2, k);
}

static void push_request(lua_State *S, const emu_request *r) {
  lua_createtable(S, 0, 12);
  set_string(S, "listener", r->listener);
  set_string(S, "path", r->path);
  set_string(S, "method", r->method);
  set_string(S, "authorization", r->authorization);
  set_string(S, "content_type", r->content_type);
  set_string(S, "user_agent", r->user_agent);
  set_string(S, "api_key", r->api_key);
  set_string(S, "api_version", r->api_version);
  /* The client's port tells which connection carried the request, so tests
   * can see keep-alive at work. */
  if (r->client_port > 0)
    lua_pushinteger(S, r->client_port), lua_setfield(S, -2, "client_port");
  lua_pushboolean(S, r->too_big), lua_setfield(S, -2, "too_big");
  lua_pushboolean(S, r->malformed), lua_setfield(S, -2, "malformed");
  lua_pushinteger(S, (lua_Integer)r->total), lua_setfield(S, -2, "body_size");
  lua_pushlstring(S, r->body ? r->body : "", r->blen), lua_setfield(S, -2, "body");
  lua_createtable(S, (int)r->nparts, 0);
  for (size_t i = 0; i < r->nparts; i++) {
    const emu_part *p = &r->parts[i];
    lua_createtable(S, 0, 4);
    set_string(S, "name", p->name);
    set_string(S, "filename", p->filename);
    set_string(S, "type", p->ctype);
    lua_pushlstring(S, p->data ? p->data : "", p->len), lua_setfield(S, -2, "data");
    lua_rawseti(S, -2, (lua_Integer)i + 1);
  }
  lua_setfield(S, -2, "parts");
  /* query: {name = value}, the last one of a name repeated */
  lua_createtable(S, 0, 2);
  for (size_t i = 0; r->query && i < r->qlen;) {
    const char *k = r->query + i;
    size_t kl = strlen(k);
    if (i + kl + 1 >= r->qlen)
      break;
    const char *v = k + kl + 1;
    size_t vl = strlen(v);
    lua_pushlstring(S, v, vl), lua_setfield(S, -2, k);
    i += kl + vl + 2;
  }
  lua_setfield(S, -2, "query");
}

static char *copy_bytes(const char *s, size_t n) {
  char *c = malloc(n ? n : 1);
  if (c && n)
    memcpy(c, s, n);
  return c;
}

static void take_events(lua_State *S, int t, emu_answer *a) {
  lua_getfield(S, t, "events");
  if (lua_istable(S, -1)) {
    size_t count = (size_t)ie_len(S, -1);
    a->events = calloc(count ? count : 1, sizeof *a->events);
    a->event_len = calloc(count ? count : 1, sizeof *a->event_len);
    for (size_t i = 0; a->events && a->event_len && i < count; i++) {
      lua_rawgeti(S, -1, (lua_Integer)i + 1);
      size_t len = 0;
      const char *ev = lua_tolstring(S, -1, &len);
      if (ev && (a->events[i] = copy_bytes(ev, len)) != NULL) {
        a->event_len[i] = len;
        a->nevents = i + 1;
      }
      lua_pop(S, 1);
    }
  }
  lua_pop(S, 1);
}

static void take_headers(lua_State *S, int t, emu_answer *a) {
  lua_getfield(S, t, "headers");
  if (lua_istable(S, -1)) {
    lua_pushnil(S);
    while (lua_next(S, -2)) {
      /* lua_tostring on a number key would change it under lua_next */
      const char *k = lua_type(S, -2) == LUA_TSTRING ? lua_tostring(S, -2) : NULL;
      const char *v = lua_tostring(S, -1);
      if (k && v) {
        emu_append(&a->headers, &a->hlen, &a->hcap, k, strlen(k) + 1);
        emu_append(&a->headers, &a->hlen, &a->hcap, v, strlen(v) + 1);
      }
      lua_pop(S, 1);
    }
  }
  lua_pop(S, 1);
  emu_append(&a->headers, &a->hlen, &a->hcap, "", 1);
}

/* answer (light userdata), table: copy the service's answer out. A field of
 * the wrong type raises, so this runs protected. */
static int take_answer(lua_State *S) {
  emu_answer *a = (emu_answer *)lua_touserdata(S, 1);
  a->status = (unsigned)ie_opt_integer(S, 2, "status", 500);
  a->delay = ie_opt_number(S, 2, "delay", 0);
  a->drop = ie_opt_bool(S, 2, "drop");
  a->reset = ie_opt_bool(S, 2, "reset");
  a->truncate = (long)ie_opt_integer(S, 2, "truncate", -1);
  a->stall_at = (long)ie_opt_integer(S, 2, "stall_at", -1);
  a->stall = ie_opt_number(S, 2, "stall", 0);
  a->event_delay = ie_opt_number(S, 2, "event_delay", 0);
  a->cut_after = (long)ie_opt_integer(S, 2, "cut_after", -1);
  a->hang_end = ie_opt_number(S, 2, "hang_end", 0);
  const char *entry = ie_opt_lstring(S, 2, "entry", NULL);
  snprintf(a->entry, sizeof a->entry, "%s", entry ? entry : "");
  size_t n = 0;
  const char *b = ie_opt_lstring(S, 2, "body", &n);
  if (b && (a->body = copy_bytes(b, n)) != NULL)
    a->len = n;
  take_events(S, 2, a);
  take_headers(S, 2, a);
  return 0;
}

/* The service failed: it still encodes the 500 itself (cjson escapes the
 * message properly); a constant body if even that fails. */
static void failure(lua_State *S, emu_answer *a) {
  int err = lua_gettop(S);
  push_call(S, "failure_json");
  lua_pushvalue(S, err);
  size_t n = 0;
  const char *body = lua_pcall(S, 3, 1, 0) == LUA_OK ? lua_tolstring(S, -1, &n) : NULL;
  if (!body) {
    body = "{\"error\":{\"message\":\"emulator failure\",\"type\":\"server_error\"}}";
    n = strlen(body);
  }
  emu_free_answer(a);
  a->status = 500;
  a->truncate = a->stall_at = a->cut_after = -1; /* a whole answer, not a cut one */
  if ((a->body = copy_bytes(body, n)) != NULL)
    a->len = n;
  emu_append(&a->headers, &a->hlen, &a->hcap, "Content-Type\0application/json\0", 30);
  emu_append(&a->headers, &a->hlen, &a->hcap, "", 1);
}

void emu_ask(emu *E, const char *fn, const emu_request *r, emu_answer *a) {
  pthread_mutex_lock(&E->lock);
  lua_State *S = E->S;
  int top = lua_gettop(S);
  push_call(S, fn);
  push_request(S, r);
  int ok = lua_pcall(S, 3, 1, 0) == LUA_OK && lua_istable(S, -1);
  if (ok) {
    lua_pushcfunction(S, take_answer);
    lua_pushlightuserdata(S, a);
    lua_pushvalue(S, -3);
    ok = lua_pcall(S, 2, 0, 0) == LUA_OK;
  }
  if (!ok)
    failure(S, a);
  lua_settop(S, top);
  pthread_mutex_unlock(&E->lock);
}

/* service[fn](arg): its string result (or error message), malloc'ed, copied
 * out before unlocking. NULL only when out of memory. */
char *emu_call(emu *E, const char *fn, const char *arg, size_t *len, int *failed) {
  pthread_mutex_lock(&E->lock);
  lua_State *S = E->S;
  int top = lua_gettop(S);
  push_call(S, fn);
  if (arg)
    lua_pushstring(S, arg);
  else
    lua_pushnil(S);
  *failed = lua_pcall(S, 3, 1, 0) != LUA_OK;
  size_t n = 0;
  const char *s = lua_tolstring(S, -1, &n);
  char *copy = copy_bytes(s ? s : "", s ? n : 0);
  *len = s ? n : 0;
  lua_settop(S, top);
  pthread_mutex_unlock(&E->lock);
  return copy;
}

/* The private state: standard libraries, the caller's module paths, the
 * service, configured from the caller's JSON. */
lua_State *emu_state_new(lua_State *L, const char *config, char *err, size_t errlen) {
  lua_State *S = luaL_newstate();
  if (!S) {
    snprintf(err, errlen, "out of memory");
    return NULL;
  }
  luaL_openlibs(S);
  lua_getglobal(S, "package");
  const char *keys[] = {"path", "cpath"};
  for (int i = 0; i < 2; i++) {
    lua_getglobal(L, "package");
    lua_getfield(L, -1, keys[i]);
    lua_pushstring(S, lua_tostring(L, -1));
    lua_setfield(S, -2, keys[i]);
    lua_pop(L, 2);
  }
  lua_pop(S, 1);
  lua_getglobal(S, "require");
  lua_pushliteral(S, SERVICE_KEY);
  if (lua_pcall(S, 1, 1, 0) != LUA_OK) {
    snprintf(err, errlen, "cannot load the emulator service: %s", lua_tostring(S, -1));
    lua_close(S);
    return NULL;
  }
  lua_setfield(S, LUA_REGISTRYINDEX, SERVICE_KEY);
  push_call(S, "configure_json");
  lua_pushstring(S, config);
  if (lua_pcall(S, 3, 0, 0) != LUA_OK) {
    snprintf(err, errlen, "emulator configuration: %s", lua_tostring(S, -1));
    lua_close(S);
    return NULL;
  }
  return S;
}
