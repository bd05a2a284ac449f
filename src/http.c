/* HTTP transfers on libcurl's multi interface, as Lua objects.
 *
 * A Multi owns one CURLM (and so one connection pool) driven by a network
 * thread of its own (worker.c), and a decoder thread (decoder.c) started
 * by the first transfer that wants its pictures decoded. A Transfer is one
 * request on it, built by transfer.c on the caller's thread and handed
 * over. perform() only takes what the threads handed back: it never waits
 * for the network unless asked to, and never pushes a byte.
 *
 * The C structs live on the heap, apart from their Lua objects: a transfer
 * may be held at once by its Lua object, by its multi and by decode jobs,
 * and is freed by whichever lets go last (refs, under the multi's lock).
 * The multi's struct likewise outlives its Lua object while a transfer
 * still points to it. Those lifetimes, the queues and the moves between
 * them are hub.c's; this file is the Lua side, on the caller's thread. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http.h"

/* What one perform(0) hands over at most, in bytes of pictures (pixels
 * and encoded bytes): at least one picture, then no more once this is
 * reached, so that pictures arriving together spread over frames. A
 * 1024x1024 picture's pixels are 4 MiB, and making a Lua string of them
 * costs milliseconds. */
#define POLL_BUDGET ((size_t)4 << 20)

#define MULTI_MT "imgedit.multi"

typedef struct {
  multi *m; /* NULL once closed */
} multi_box;

/* ---- the multi ---- */

/* multi:close(): the threads stopped and joined, every transfer ended. */
static int multi_close(lua_State *L) {
  multi_box *b = (multi_box *)luaL_checkudata(L, 1, MULTI_MT);
  multi *m = b->m;
  if (!m)
    return 0;
  b->m = NULL;
  ie_multi_end(m);
  return 0;
}

static multi *check_open_multi(lua_State *L) {
  multi_box *b = (multi_box *)luaL_checkudata(L, 1, MULTI_MT);
  if (!b->m)
    luaL_error(L, "attempt to use a closed multi handle");
  return b->m;
}

/* multi:start(spec) -> transfer, handed to the network thread at once;
 * or nil, message, "read", index when file part `index` cannot be opened
 * (a file that went away after it was checked: a run-time failure). */
static int multi_start(lua_State *L) {
  multi *m = check_open_multi(L);
  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  if (m->forked || m->quit) {
    lua_pushnil(L);
    lua_pushstring(L, m->forked ? "the client was made by the parent process of this fork: make a new one here"
                                : "the client's threads were stopped at exit");
    lua_pushliteral(L, "forked");
    return 3;
  }
  /* Create safely: an empty, finalisable object first, then the resources. */
  ie_xfer_box *b = (ie_xfer_box *)ie_newuserdata1(L, sizeof *b);
  b->t = NULL;
  luaL_setmetatable(L, IE_XFER_MT);
  lua_newtable(L); /* anchors: the multi, and strings sent from memory */
  lua_pushvalue(L, 1);
  lua_setfield(L, -2, "multi");
  ie_setuservalue(L, -2);
  transfer *t = (transfer *)calloc(1, sizeof *t);
  if (!t)
    return luaL_error(L, "out of memory");
  t->hub = m, t->refs = 1;
  pthread_mutex_lock(&m->mu);
  m->refs++;
  pthread_mutex_unlock(&m->mu);
  b->t = t;
  ie_transfer_setup(L, 2, 3, t, m);
  if (t->unreadable) { /* the object frees t */
    lua_pushnil(L);
    lua_pushfstring(L, "part %d: %s", t->unreadable, curl_easy_strerror(CURLE_READ_ERROR));
    lua_pushliteral(L, "read");
    lua_pushinteger(L, t->unreadable);
    return 4;
  }
  if (t->decode && !m->dec_started && !ie_dec_start(m))
    return luaL_error(L, "cannot start the decoder thread");
  if (!m->net_started) {
    pthread_mutex_lock(&m->mu);
    m->net_running = 1;
    pthread_mutex_unlock(&m->mu);
    if (!ie_thread_start(&m->net_thread, ie_net_main, m)) {
      m->net_running = 0;
      return luaL_error(L, "cannot start the network thread");
    }
    m->net_started = 1;
  }
  pthread_mutex_lock(&m->mu);
  t->where = W_ADD, t->held = 1, t->refs++;
  t->all_next = m->all;
  if (m->all)
    m->all->all_prev = t;
  m->all = t;
  m->count++;
  t->qnext = m->add_head, m->add_head = t;
  pthread_mutex_unlock(&m->mu);
  curl_multi_wakeup(m->m);
  /* perform() marks finished transfers: find the object from the pointer */
  ie_getuservalue(L, 1);
  lua_pushlightuserdata(L, t);
  lua_pushvalue(L, 3);
  lua_rawset(L, -3);
  lua_settop(L, 3);
  return 1;
}

/* multi:perform(timeout_s [, finished]) -> running, now, count: how many
 * transfers are still running, the monotonic time after the call, and how
 * many finished; each finished transfer's object is marked true in the
 * table `finished` when one is given. One call per frame, and no garbage:
 * the caller keeps one set. With timeout_s 0 it only takes what the
 * threads handed over: bounded work, whatever is in flight. Otherwise it
 * waits up to timeout_s for something to happen (an answer, an event,
 * progress) unless something already finished; with nothing in flight it
 * simply sleeps, which is what a caller waiting to retry wants. */
static int multi_perform(lua_State *L) {
  multi *m = check_open_multi(L);
  lua_Number timeout = luaL_optnumber(L, 2, 0);
  int set = lua_isnoneornil(L, 3) ? 0 : 3;
  if (set)
    luaL_checktype(L, 3, LUA_TTABLE);
  lua_settop(L, 3);
  ie_getuservalue(L, 1); /* 4: the weak map from pointers to objects */
  m->trying = timeout <= 0;
  if (!ie_lock_caller(m)) {            /* busy: nothing handed over this time */
    lua_pushinteger(L, m->last_count); /* as of the last look */
    lua_pushnumber(L, ie_now());
    lua_pushinteger(L, 0);
    return 3;
  }
  if (m->forked)
    ie_orphan_all_locked(m);
  if (timeout > 0)
    ie_wait_locked(m, timeout);
  m->seen = m->gen;
  if (m->wake_set) { /* taken now; set again below if some must wait */
    ie_os_wake_clear(&m->wake);
    m->wake_set = 0;
  }
  m->budget = timeout > 0 ? (size_t)-1 : POLL_BUDGET, m->spent = 0;
  CURLMcode broken = m->broken;
  transfer *fin = NULL, **tail = &fin, *keep = m->fin_head;
  m->fin_head = m->fin_tail = NULL;
  int finished = 0;
  while (keep) {
    transfer *t = keep;
    keep = t->qnext, t->qnext = NULL;
    if (!ie_affordable(m, ie_decoded_cost(t->decoded))) { /* the next perform's */
      if (m->fin_tail)
        m->fin_tail->qnext = t;
      else
        m->fin_head = t;
      m->fin_tail = t;
      continue;
    }
    t->where = W_NONE, t->done = 1;
    ie_unhold_locked(m, t); /* never the last: its Lua object holds one */
    *tail = t, tail = &t->qnext;
    finished++;
  }
  if (m->fin_head) /* over this perform's budget: the loop must come back */
    ie_wake_locked(m);
  int count = m->last_count = m->count;
  pthread_mutex_unlock(&m->mu);
  if (broken) /* out of memory or a broken handle: not a transfer's failure */
    return luaL_error(L, "curl multi: %s", curl_multi_strerror(broken));
  while (set && fin) {
    transfer *t = fin;
    fin = t->qnext, t->qnext = NULL;
    lua_pushlightuserdata(L, t);
    lua_rawget(L, 4);
    if (lua_isnil(L, -1)) {
      lua_pop(L, 1); /* collected already: nobody waits for it */
    } else {
      lua_pushboolean(L, 1);
      lua_rawset(L, set);
    }
  }
  lua_pushinteger(L, count);
  lua_pushnumber(L, ie_now());
  lua_pushinteger(L, finished);
  return 3;
}

/* multi:fd() -> a descriptor that is readable whenever perform has
 * something to hand over (made on the first call, closed with the multi);
 * or nil, message. perform reads it: the caller's loop only waits on it. */
static int multi_fd(lua_State *L) {
  multi *m = check_open_multi(L);
  pthread_mutex_lock(&m->mu);
  int ok = m->wake_on || ie_os_wake_open(&m->wake) == 0;
  int e = errno;
  if (ok && !m->wake_on) {
    m->wake_on = 1;
    if (m->fin_head || m->broken) /* what waited before it was asked for */
      ie_wake_locked(m);
  }
  pthread_mutex_unlock(&m->mu);
  if (!ok) {
    lua_pushnil(L);
    lua_pushfstring(L, "cannot make the wake-up descriptor: %s", ie_os_strerror(e));
    return 2;
  }
  lua_pushinteger(L, (lua_Integer)m->wake.r);
  return 1;
}

static int multi_tostring(lua_State *L) {
  multi_box *b = (multi_box *)luaL_checkudata(L, 1, MULTI_MT);
  if (b->m) {
    pthread_mutex_lock(&b->m->mu);
    int n = b->m->count;
    pthread_mutex_unlock(&b->m->mu);
    lua_pushfstring(L, "imgedit.multi (%d running)", n);
  } else {
    lua_pushliteral(L, "imgedit.multi (closed)");
  }
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
 * pool, one TLS session cache, one set of network settings. Its threads
 * start with its first transfer. */
static int l_multi(lua_State *L) {
  if (!lua_isnoneornil(L, 1))
    luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  multi_box *b = (multi_box *)ie_newuserdata1(L, sizeof *b);
  b->m = NULL;
  luaL_setmetatable(L, MULTI_MT);
  lua_newtable(L); /* pointer -> transfer, weak: it never keeps one alive */
  lua_createtable(L, 0, 1);
  lua_pushliteral(L, "v");
  lua_setfield(L, -2, "__mode");
  lua_setmetatable(L, -2);
  ie_setuservalue(L, -2);
  multi *m = (multi *)calloc(1, sizeof *m);
  if (!m)
    return luaL_error(L, "out of memory");
  pthread_mutex_init(&m->mu, NULL);
  ie_os_cond_init_timed(&m->cv);
  pthread_cond_init(&m->dcv, NULL);
  pthread_cond_init(&m->pcv, NULL);
  m->refs = 1;
  b->m = m; /* from here on, the object's __gc frees it */
  ie_procs_add(m);
  /* libcurl's wake-up socket pair gets close-on-exec: children spawned
   * by the program must not hold it. */
  unsigned char fds[IE_FD_SCAN / 8];
  ie_fds_open(fds);
  m->m = curl_multi_init();
  if (!m->m)
    return luaL_error(L, "curl_multi_init failed");
  ie_fds_cloexec_new(fds);
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

/* thread_cpu() -> CPU seconds the calling thread has used: what a call
 * costs that thread, whatever else the machine runs meanwhile. */
static int l_thread_cpu(lua_State *L) {
  lua_pushnumber(L, ie_os_thread_cpu());
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
      {"start", multi_start}, {"perform", multi_perform}, {"fd", multi_fd}, {NULL, NULL}};
  ie_new_class(L, MULTI_MT, multi_methods, multi_close, "close", multi_tostring);
  ie_open_transfers(L);
  static const luaL_Reg fns[] = {
      {"multi", l_multi}, {"curl_version", l_curl_version}, {"now", l_now}, {"thread_cpu", l_thread_cpu}, {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
}
