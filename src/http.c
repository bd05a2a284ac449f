/* HTTP transfers on libcurl's multi interface, as Lua objects.
 *
 * A Multi owns one CURLM (and so one connection pool); a Transfer is one
 * request on it, built and recorded by transfer.c. Lua reads the results
 * after Multi:perform() returns. */
#include <stdlib.h>
#include <string.h>

#include "http.h"

#define MULTI_MT "imgedit.multi"
#define XFER_MT "imgedit.transfer"

/* ---- lifetime ---- */

static void unlink_transfer(transfer *t) {
  multi *m = t->owner;
  if (!m)
    return;
  curl_multi_remove_handle(m->m, t->e);
  if (t->prev)
    t->prev->next = t->next;
  else
    m->head = t->next;
  if (t->next)
    t->next->prev = t->prev;
  t->next = t->prev = NULL;
  t->owner = NULL;
  m->count--;
  /* Out of the multi, out of its share: the multi may close first. */
  curl_easy_setopt(t->e, CURLOPT_SHARE, NULL);
}

static void transfer_release(transfer *t) {
  unlink_transfer(t);
  if (t->e)
    curl_easy_cleanup(t->e);
  curl_mime_free(t->mime);
  curl_slist_free_all(t->headers);
  free(t->body);
  if (t->sse_on) {
    sse_free(&t->parser);
    sse_queue_free(&t->events);
  }
  t->sse_on = 0;
  t->e = NULL, t->mime = NULL, t->headers = NULL, t->body = NULL;
  t->len = t->cap = 0;
}

static int transfer_close(lua_State *L) {
  transfer *t = (transfer *)luaL_checkudata(L, 1, XFER_MT);
  transfer_release(t);
  t->closed = 1;
  return 0;
}

static transfer *check_open_transfer(lua_State *L) {
  transfer *t = (transfer *)luaL_checkudata(L, 1, XFER_MT);
  if (t->closed)
    luaL_error(L, "attempt to use a closed transfer");
  return t;
}

static int multi_close(lua_State *L) {
  multi *m = (multi *)luaL_checkudata(L, 1, MULTI_MT);
  while (m->head) { /* what was still running ends as canceled */
    transfer *t = m->head;
    if (!t->done)
      t->canceled = 1, t->done = 1, t->code = CURLE_ABORTED_BY_CALLBACK;
    unlink_transfer(t);
  }
  if (m->m)
    curl_multi_cleanup(m->m);
  m->m = NULL;
  if (m->share)
    curl_share_cleanup(m->share);
  m->share = NULL;
  free(m->net.ca_file), free(m->net.ca_path), free(m->net.proxy);
  memset(&m->net, 0, sizeof m->net);
  return 0;
}

static multi *check_open_multi(lua_State *L) {
  multi *m = (multi *)luaL_checkudata(L, 1, MULTI_MT);
  if (!m->m)
    luaL_error(L, "attempt to use a closed multi handle");
  return m;
}

/* multi:start(spec) -> transfer. The transfer starts on the next perform(). */
static int multi_start(lua_State *L) {
  multi *m = check_open_multi(L);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  /* Create safely: an empty, finalisable object first, then the resources. */
  transfer *t = (transfer *)ie_newuserdata1(L, sizeof *t);
  memset(t, 0, sizeof *t);
  luaL_setmetatable(L, XFER_MT);
  lua_newtable(L); /* anchors: the multi, and strings sent from memory */
  lua_pushvalue(L, 1);
  lua_setfield(L, -2, "multi");
  ie_setuservalue(L, -2);
  ie_transfer_setup(L, 2, 3, t, m);
  CURLMcode mc = curl_multi_add_handle(m->m, t->e);
  if (mc != CURLM_OK)
    return luaL_error(L, "curl_multi_add_handle: %s", curl_multi_strerror(mc));
  t->owner = m;
  t->next = m->head;
  if (m->head)
    m->head->prev = t;
  m->head = t;
  m->count++;
  /* perform() marks finished transfers: find the object from the pointer */
  ie_getuservalue(L, 1);
  lua_pushlightuserdata(L, t);
  lua_pushvalue(L, 3);
  lua_rawset(L, -3);
  lua_settop(L, 3);
  return 1;
}

/* Record finished transfers; when the table at `set` is given, mark each
 * one's object there (found through the multi's weak map at `map`). Returns
 * how many finished. */
static int collect(lua_State *L, multi *m, int map, int set) {
  CURLMsg *msg;
  int left, n = 0;
  while ((msg = curl_multi_info_read(m->m, &left))) {
    if (msg->msg != CURLMSG_DONE)
      continue;
    transfer *t = NULL;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&t);
    if (!t)
      continue;
    t->code = msg->data.result;
    t->done = 1;
    curl_easy_getinfo(t->e, CURLINFO_RESPONSE_CODE, &t->status);
    /* The last attempt's own count, as well as the progress callback's. */
    curl_off_t up = 0, total = -1;
    if (curl_easy_getinfo(t->e, CURLINFO_SIZE_UPLOAD_T, &up) == CURLE_OK &&
        curl_easy_getinfo(t->e, CURLINFO_CONTENT_LENGTH_UPLOAD_T, &total) == CURLE_OK && total > 0 &&
        up >= total)
      t->sent_all = 1;
    unlink_transfer(t); /* the connection goes back to the multi's pool */
    n++;
    if (!set)
      continue;
    lua_pushlightuserdata(L, t);
    lua_rawget(L, map);
    if (lua_isnil(L, -1)) {
      lua_pop(L, 1); /* collected already: nobody waits for it */
    } else {
      lua_pushboolean(L, 1);
      lua_rawset(L, set);
    }
  }
  return n;
}

/* multi:perform(timeout_s [, finished]) -> running, now, count: how many
 * transfers are still running, the monotonic time after the call, and how
 * many finished in it; each finished transfer's object is marked true in
 * the table `finished` when one is given. One call per frame, and no
 * garbage: the caller keeps one set. Waits up to timeout_s for activity
 * unless something already finished; with nothing in flight it simply
 * sleeps, which is what a caller waiting to retry wants. */
static int multi_perform(lua_State *L) {
  multi *m = check_open_multi(L);
  lua_Number timeout = luaL_optnumber(L, 2, 0);
  int set = lua_isnoneornil(L, 3) ? 0 : 3;
  if (set)
    luaL_checktype(L, 3, LUA_TTABLE);
  lua_settop(L, 3);
  ie_getuservalue(L, 1); /* 4: the weak map from pointers to objects */
  int running = 0;
  CURLMcode mc = curl_multi_perform(m->m, &running);
  int finished = mc == CURLM_OK ? collect(L, m, 4, set) : 0;
  if (mc == CURLM_OK && timeout > 0 && finished == 0) {
    mc = curl_multi_poll(m->m, NULL, 0, (int)(timeout * 1000), NULL);
    if (mc == CURLM_OK)
      mc = curl_multi_perform(m->m, &running);
    if (mc == CURLM_OK)
      finished += collect(L, m, 4, set);
  }
  if (mc != CURLM_OK) /* out of memory or a broken handle: not a transfer's failure */
    return luaL_error(L, "curl multi: %s", curl_multi_strerror(mc));
  lua_pushinteger(L, m->count);
  lua_pushnumber(L, ie_now());
  lua_pushinteger(L, finished);
  return 3;
}

/* ---- transfer methods ---- */

static int transfer_done(lua_State *L) {
  transfer *t = check_open_transfer(L);
  lua_pushboolean(L, t->done);
  return 1;
}

/* transfer:result() -> nil while running; else a table describing the answer. */
static int transfer_result(lua_State *L) {
  transfer *t = check_open_transfer(L);
  if (t->done)
    ie_transfer_push_result(L, t);
  else
    lua_pushnil(L);
  return 1;
}

/* transfer:take() -> the result table, and the transfer is closed: what a
 * finished transfer is for, in one call. */
static int transfer_take(lua_State *L) {
  transfer *t = check_open_transfer(L);
  luaL_argcheck(L, t->done, 1, "the transfer has not finished");
  transfer_result(L);
  transfer_release(t);
  t->closed = 1;
  return 1;
}

/* transfer:progress() -> ul_now, ul_total, dl_now, dl_total, answering */
static int transfer_progress(lua_State *L) {
  transfer *t = check_open_transfer(L);
  /* Fresh from the handle: libcurl calls the progress callback as rarely as
   * once a second while nothing moves, and a small upload on a warm
   * connection is over before it does. */
  curl_off_t v;
  if (!t->done && t->e) {
    if (curl_easy_getinfo(t->e, CURLINFO_SIZE_UPLOAD_T, &v) == CURLE_OK && v > t->ul_now)
      t->ul_now = v;
    if (curl_easy_getinfo(t->e, CURLINFO_CONTENT_LENGTH_UPLOAD_T, &v) == CURLE_OK && v > t->ul_total)
      t->ul_total = v;
    if (curl_easy_getinfo(t->e, CURLINFO_SIZE_DOWNLOAD_T, &v) == CURLE_OK && v > t->dl_now)
      t->dl_now = v;
    if (t->ul_total > 0 && t->ul_now >= t->ul_total)
      t->sent_all = 1;
  }
  lua_pushinteger(L, (lua_Integer)t->ul_now);
  lua_pushinteger(L, (lua_Integer)t->ul_total);
  lua_pushinteger(L, (lua_Integer)t->dl_now);
  lua_pushinteger(L, (lua_Integer)t->dl_total);
  lua_pushboolean(L, t->answering || t->done);
  return 5;
}

/* transfer:events() -> the server-sent events that arrived since the last
 * call, as {event=, data=} tables, oldest first. */
static int transfer_events(lua_State *L) {
  transfer *t = check_open_transfer(L);
  ie_push_events(L, &t->events);
  sse_queue_clear(&t->events); /* only after Lua has its copies */
  return 1;
}

/* transfer:cancel(): abort at once and free the connection. Harmless on a
 * closed transfer, like close: a client's __gc may run after its transfers'. */
static int transfer_cancel(lua_State *L) {
  transfer *t = (transfer *)luaL_checkudata(L, 1, XFER_MT);
  if (!t->closed && !t->done) {
    t->canceled = 1;
    t->done = 1;
    t->code = CURLE_ABORTED_BY_CALLBACK;
    unlink_transfer(t);
  }
  return 0;
}

static int transfer_tostring(lua_State *L) {
  transfer *t = (transfer *)luaL_checkudata(L, 1, XFER_MT);
  lua_pushfstring(L, "imgedit.transfer (%s)",
                  t->closed ? "closed" : t->done ? "done" : "running");
  return 1;
}

static int multi_tostring(lua_State *L) {
  multi *m = (multi *)luaL_checkudata(L, 1, MULTI_MT);
  if (m->m)
    lua_pushfstring(L, "imgedit.multi (%d running)", m->count);
  else
    lua_pushliteral(L, "imgedit.multi (closed)");
  return 1;
}

/* A copy of the optional string field k of the options at 1, or NULL. */
static char *opt_copy(lua_State *L, const char *k) {
  const char *v = lua_istable(L, 1) ? ie_opt_lstring(L, 1, k, NULL) : NULL;
  if (!v)
    return NULL;
  char *c = strdup(v);
  if (!c)
    luaL_error(L, "out of memory");
  return c;
}

/* multi([{ca_file=, ca_path=, proxy=}]) -> a multi handle: one connection
 * pool, one TLS session cache, one set of network settings. */
static int l_multi(lua_State *L) {
  if (!lua_isnoneornil(L, 1))
    luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  multi *m = (multi *)ie_newuserdata1(L, sizeof *m);
  memset(m, 0, sizeof *m);
  luaL_setmetatable(L, MULTI_MT);
  lua_newtable(L); /* pointer -> transfer, weak: it never keeps one alive */
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "v");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  ie_setuservalue(L, -2);
  m->m = curl_multi_init();
  if (!m->m)
    return luaL_error(L, "curl_multi_init failed");
  m->net.ca_file = opt_copy(L, "ca_file");
  m->net.ca_path = opt_copy(L, "ca_path");
  m->net.proxy = opt_copy(L, "proxy");
  /* New connections to a host resume its TLS session: a shorter handshake. */
  m->share = curl_share_init();
  if (m->share) {
    curl_share_setopt(m->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
    curl_share_setopt(m->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
  }
  return 1;
}

static int l_now(lua_State *L) {
  lua_pushnumber(L, ie_now());
  return 1;
}

static int l_curl_version(lua_State *L) {
  const curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
  lua_pushstring(L, v->version);
  return 1;
}

void ie_open_http(lua_State *L) {
  /* Once per Lua state (libcurl counts its inits), remembered in the
   * registry rather than a C global. Not thread-safe in older libcurl: load
   * imgedit.core in one thread before others do. */
  lua_getfield(L, LUA_REGISTRYINDEX, "imgedit.curl_ready");
  int ready = lua_toboolean(L, -1);
  lua_pop(L, 1);
  if (!ready) {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
      luaL_error(L, "curl_global_init failed");
    lua_pushboolean(L, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, "imgedit.curl_ready");
  }
  static const luaL_Reg multi_methods[] = {
      {"start", multi_start}, {"perform", multi_perform}, {NULL, NULL}};
  static const luaL_Reg xfer_methods[] = {{"done", transfer_done},
                                          {"result", transfer_result},
                                          {"take", transfer_take},
                                          {"progress", transfer_progress},
                                          {"events", transfer_events},
                                          {"cancel", transfer_cancel},
                                          {NULL, NULL}};
  ie_new_class(L, MULTI_MT, multi_methods, multi_close, "close", multi_tostring);
  ie_new_class(L, XFER_MT, xfer_methods, transfer_close, "close", transfer_tostring);
  static const luaL_Reg fns[] = {
      {"multi", l_multi}, {"curl_version", l_curl_version}, {"now", l_now}, {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
}
