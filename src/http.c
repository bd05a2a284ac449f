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
 * still points to it. */
#include <signal.h>
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
#define XFER_MT "imgedit.transfer"

typedef struct {
  multi *m; /* NULL once closed */
} multi_box;

typedef struct {
  transfer *t; /* NULL once closed */
} xfer_box;

/* ---- lifetimes (shared with the threads) ---- */

static void hub_unref(multi *m) {
  pthread_mutex_lock(&m->mu);
  int last = --m->refs == 0;
  pthread_mutex_unlock(&m->mu);
  /* In a forked child an inherited multi stays, listed by procs.c: libcurl
   * there still points into it, and it is never called again. */
  if (!last || m->forked)
    return;
  pthread_mutex_destroy(&m->mu);
  pthread_cond_destroy(&m->cv);
  pthread_cond_destroy(&m->dcv);
  pthread_cond_destroy(&m->pcv);
  free(m);
}

int ie_drop_locked(transfer *t) { return --t->refs == 0; }

int ie_unhold_locked(multi *m, transfer *t) {
  if (!t->held)
    return 0;
  t->held = 0;
  if (t->all_prev)
    t->all_prev->all_next = t->all_next;
  else
    m->all = t->all_next;
  if (t->all_next)
    t->all_next->all_prev = t->all_prev;
  t->all_next = t->all_prev = NULL;
  m->count--;
  return ie_drop_locked(t);
}

void ie_changed_locked(multi *m) {
  m->gen++;
  pthread_cond_broadcast(&m->cv);
}

void ie_settle_locked(multi *m, transfer *t) {
  if (t->events.n > 0) { /* transfer_events hands it over with its last event */
    t->where = W_DRAIN;
    ie_changed_locked(m);
  } else {
    ie_hand_over_locked(m, t);
  }
}

void ie_hand_over_locked(multi *m, transfer *t) {
  t->where = W_FIN;
  t->qnext = NULL;
  if (m->fin_tail)
    m->fin_tail->qnext = t;
  else
    m->fin_head = t;
  m->fin_tail = t;
  ie_changed_locked(m);
}

void ie_transfer_free(transfer *t) {
  multi *m = t->hub;
  if (!t->inherited_e) { /* else libcurl's multi in a forked child still has it */
    if (t->e)
      curl_easy_cleanup(t->e);
    curl_mime_free(t->mime);
    curl_slist_free_all(t->headers);
  }
  free(t->body);
  if (t->sse_on)
    sse_free(&t->parser);
  sse_queue_free(&t->parsed);
  sse_queue_free(&t->events);
  ie_decoded_free(t->decoded);
  free(t);
  hub_unref(m);
}

/* Start fn on a thread of its own with every signal blocked: SIGINT and
 * SIGTERM stay the caller's thread's to read. */
static int thread_start(pthread_t *th, void *(*fn)(void *), void *arg) {
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int rc = pthread_create(th, NULL, fn, arg);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  return rc == 0;
}

/* ---- transfers, seen from the caller's thread ---- */

/* Unlink t from a singly linked queue through qnext. */
static void unqueue(transfer **head, transfer **tail, transfer *t) {
  transfer *prev = NULL;
  for (transfer *p = *head; p; prev = p, p = p->qnext)
    if (p == t) {
      if (prev)
        prev->qnext = t->qnext;
      else
        *head = t->qnext;
      if (tail && *tail == t)
        *tail = prev;
      break;
    }
  t->qnext = NULL;
}

/* Caller's thread. Stop t wherever it is; it ends as canceled for the
 * caller at once. A running transfer is the network thread's to take out
 * of libcurl: this asks and waits for its acknowledgement (one turn of its
 * loop, which never blocks), after which t's answer and counters are the
 * caller's to read: what went out tells whether the service may bill it.
 * Every unhold here is never the last: the Lua object holds one. */
static void cancel(transfer *t) {
  if (t->done)
    return;
  t->done = 1, t->canceled = 1;
  multi *m = t->hub;
  pthread_mutex_lock(&m->mu);
  t->cancel_req = 1;
  switch (t->where) {
  case W_ADD:
    unqueue(&m->add_head, NULL, t);
    t->where = W_NONE;
    ie_unhold_locked(m, t);
    break;
  case W_RUN:
    if (m->net_running) {
      m->cancels++;
      pthread_mutex_unlock(&m->mu);
      curl_multi_wakeup(m->m);
      pthread_mutex_lock(&m->mu);
      while (t->where == W_RUN && m->net_running)
        pthread_cond_wait(&m->cv, &m->mu);
    }
    if (t->where == W_RUN) { /* no network thread: it broke, or this is a forked child */
      if (!m->forked) {
        pthread_mutex_unlock(&m->mu); /* libcurl may call back, and they lock */
        ie_remove_handle(m, t);
        pthread_mutex_lock(&m->mu);
      }
      t->where = W_NONE;
      ie_unhold_locked(m, t);
    }
    break;
  case W_FIN:
    unqueue(&m->fin_head, &m->fin_tail, t);
    t->where = W_NONE;
    ie_unhold_locked(m, t);
    break;
  case W_DRAIN:
    t->where = W_NONE;
    ie_unhold_locked(m, t);
    break;
  default: /* W_DEC: let go when its decodes end; W_NONE: nothing held */ break;
  }
  pthread_mutex_unlock(&m->mu);
}

static int transfer_close(lua_State *L) {
  xfer_box *b = (xfer_box *)luaL_checkudata(L, 1, XFER_MT);
  transfer *t = b->t;
  if (!t)
    return 0;
  b->t = NULL;
  cancel(t);
  pthread_mutex_lock(&t->hub->mu);
  int last = ie_drop_locked(t);
  pthread_mutex_unlock(&t->hub->mu);
  if (last)
    ie_transfer_free(t);
  return 0;
}

static transfer *check_open_transfer(lua_State *L) {
  xfer_box *b = (xfer_box *)luaL_checkudata(L, 1, XFER_MT);
  if (!b->t)
    luaL_error(L, "attempt to use a closed transfer");
  return b->t;
}

/* ---- the multi ---- */

void ie_multi_stop_threads(multi *m) {
  pthread_mutex_lock(&m->mu);
  m->quit = m->dquit = 1;
  pthread_cond_broadcast(&m->dcv);
  pthread_mutex_unlock(&m->mu);
  if (m->net_started) {
    curl_multi_wakeup(m->m);
    pthread_join(m->net_thread, NULL);
    m->net_started = 0;
  }
  if (m->dec_started) {
    pthread_join(m->dec_thread, NULL);
    m->dec_started = 0;
  }
}

/* Caller's thread. In a forked child an inherited multi has no threads
 * and its libcurl handles are never touched: its transfers only end. */
static int multi_close(lua_State *L) {
  multi_box *b = (multi_box *)luaL_checkudata(L, 1, MULTI_MT);
  multi *m = b->m;
  if (!m)
    return 0;
  b->m = NULL;
  ie_multi_stop_threads(m);
  int forked = m->forked;
  if (!forked)
    ie_procs_remove(m);
  /* The threads are gone: what they held is this thread's to end. */
  transfer *gone = NULL, *running = NULL;
  pthread_mutex_lock(&m->mu);
  for (transfer *t = m->all; t; t = t->all_next)
    if (t->where == W_RUN && !forked)
      t->qnext = running, running = t; /* in no queue while running */
  pthread_mutex_unlock(&m->mu);
  /* Out of libcurl without the lock: its callbacks may run and take it. */
  for (transfer *t = running, *next; t; t = next) {
    next = t->qnext, t->qnext = NULL;
    ie_remove_handle(m, t);
  }
  pthread_mutex_lock(&m->mu);
  while (m->job_head) { /* decodes never run: their pictures stay empty */
    ie_job *j = m->job_head;
    m->job_head = j->next;
    if (ie_dec_end_locked(m, j))
      j->t->qnext = gone, gone = j->t;
    free(j);
  }
  m->job_tail = NULL;
  while (m->all) { /* what was still running ends as canceled */
    transfer *t = m->all;
    if (t->where != W_FIN && !t->done) /* a finished one keeps its result */
      t->canceled = 1;
    t->done = 1;
    t->where = W_NONE, t->qnext = NULL;
    if (ie_unhold_locked(m, t))
      t->qnext = gone, gone = t;
  }
  m->add_head = m->fin_head = m->fin_tail = NULL;
  pthread_mutex_unlock(&m->mu);
  while (gone) {
    transfer *t = gone;
    gone = t->qnext;
    ie_transfer_free(t);
  }
  if (forked) {
    hub_unref(m);
    return 0;
  }
  if (m->m)
    curl_multi_cleanup(m->m);
  m->m = NULL;
  if (m->share)
    curl_share_cleanup(m->share);
  m->share = NULL;
  free(m->net.ca_file), free(m->net.ca_path), free(m->net.proxy);
  memset(&m->net, 0, sizeof m->net);
  hub_unref(m);
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
  xfer_box *b = (xfer_box *)ie_newuserdata1(L, sizeof *b);
  b->t = NULL;
  luaL_setmetatable(L, XFER_MT);
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
  if (t->decode && !m->dec_started) {
    if (!thread_start(&m->dec_thread, ie_dec_main, m))
      return luaL_error(L, "cannot start the decoder thread");
    m->dec_started = 1;
  }
  if (!m->net_started) {
    pthread_mutex_lock(&m->mu);
    m->net_running = 1;
    pthread_mutex_unlock(&m->mu);
    if (!thread_start(&m->net_thread, ie_net_main, m)) {
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

/* The lock, for the caller's thread: perform(0) and what follows it in
 * the same poll only try it, since the network thread may hold it while
 * the system has put it aside for a while (two cores, many threads); what
 * they would have taken waits for the next call. 0 when not taken. */
static int lock_caller(multi *m) {
  if (m->trying)
    return pthread_mutex_trylock(&m->mu) == 0;
  pthread_mutex_lock(&m->mu);
  return 1;
}

/* The bytes of pictures a handover copies into Lua. */
#define cost_of ie_decoded_cost

/* In a forked child: every transfer inherited from the parent ends now,
 * unfinished (t->forked); nothing of it is ever sent from here. Under the
 * lock; they go to the finished list. */
static void orphan_all_locked(multi *m) {
  m->add_head = NULL;
  for (transfer *t = m->all; t; t = t->all_next) {
    if (t->forked)
      continue;
    t->forked = 1;
    if (t->where != W_FIN)
      ie_hand_over_locked(m, t);
  }
}

/* Whether what costs `cost` may still be handed over in this perform. */
static int affordable(multi *m, size_t cost) {
  if (cost && m->spent && m->spent + cost > m->budget)
    return 0;
  m->spent += cost;
  return 1;
}

/* Wait until the threads hand something over, or timeout seconds pass. */
static void wait_locked(multi *m, double timeout) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  double s = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9 + timeout;
  ts.tv_sec = (time_t)s;
  ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
  while (!m->fin_head && m->gen == m->seen && !m->broken)
    if (pthread_cond_timedwait(&m->cv, &m->mu, &ts) != 0)
      break;
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
  if (!lock_caller(m)) {               /* busy: nothing handed over this time */
    lua_pushinteger(L, m->last_count); /* as of the last look */
    lua_pushnumber(L, ie_now());
    lua_pushinteger(L, 0);
    return 3;
  }
  if (m->forked)
    orphan_all_locked(m);
  if (timeout > 0)
    wait_locked(m, timeout);
  m->seen = m->gen;
  m->budget = timeout > 0 ? (size_t)-1 : POLL_BUDGET, m->spent = 0;
  CURLMcode broken = m->broken;
  transfer *fin = NULL, **tail = &fin, *keep = m->fin_head;
  m->fin_head = m->fin_tail = NULL;
  int finished = 0;
  while (keep) {
    transfer *t = keep;
    keep = t->qnext, t->qnext = NULL;
    if (!affordable(m, cost_of(t->decoded))) { /* the next perform's */
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

/* ---- transfer methods ---- */

static int transfer_done(lua_State *L) {
  transfer *t = check_open_transfer(L);
  lua_pushboolean(L, t->done);
  return 1;
}

/* The pictures of d as a list of {bytes=, open=, close=, pixels=, width=,
 * height=} or {error=, reason=}, at the table on top. */
static void push_pictures(lua_State *L, const ie_decoded *d) {
  if (!d || !d->done)
    return;
  lua_createtable(L, d->n, 0);
  for (int i = 0; i < d->n; i++) {
    const ie_picture *pic = &d->pic[i];
    lua_createtable(L, 0, 6);
    if (pic->bytes) {
      lua_pushlstring(L, (const char *)pic->bytes, pic->nbytes);
      lua_setfield(L, -2, "bytes");
    }
    if (pic->open) {
      lua_pushinteger(L, (lua_Integer)pic->open);
      lua_setfield(L, -2, "open");
      lua_pushinteger(L, (lua_Integer)pic->close);
      lua_setfield(L, -2, "close");
    }
    if (pic->px.p) {
      lua_pushlstring(L, (const char *)pic->px.p, (size_t)pic->px.w * (size_t)pic->px.h * 4);
      lua_setfield(L, -2, "pixels");
      lua_pushinteger(L, pic->px.w);
      lua_setfield(L, -2, "width");
      lua_pushinteger(L, pic->px.h);
      lua_setfield(L, -2, "height");
    } else {
      lua_pushstring(L, pic->px.reason ? pic->px.reason : "corrupt");
      lua_setfield(L, -2, "reason");
      lua_pushstring(L, pic->px.why[0] ? pic->px.why : "cannot decode the picture");
      lua_setfield(L, -2, "error");
    }
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, "pictures");
}

static void push_result(lua_State *L, const transfer *t) {
  ie_transfer_push_result(L, t);
  push_pictures(L, t->decoded);
  if (t->last_byte > 0) {
    lua_pushnumber(L, t->last_byte);
    lua_setfield(L, -2, "last_byte");
  }
}

/* transfer:result() -> nil while running; else a table describing the answer. */
static int transfer_result(lua_State *L) {
  transfer *t = check_open_transfer(L);
  if (t->done)
    push_result(L, t);
  else
    lua_pushnil(L);
  return 1;
}

/* transfer:take() -> the result table, and the transfer is closed: what a
 * finished transfer is for, in one call. */
static int transfer_take(lua_State *L) {
  transfer *t = check_open_transfer(L);
  luaL_argcheck(L, t->done, 1, "the transfer has not finished");
  push_result(L, t);
  lua_pushcfunction(L, transfer_close);
  lua_pushvalue(L, 1);
  lua_call(L, 1, 0);
  return 1;
}

/* transfer:progress() -> ul_now, ul_total, dl_now, dl_total, answering:
 * the network thread's latest figures. */
static int transfer_progress(lua_State *L) {
  transfer *t = check_open_transfer(L);
  ie_snap s;
  if (t->done) { /* the network thread let go of it: its own figures */
    s.ul_now = t->ul_now, s.ul_total = t->ul_total, s.dl_now = t->dl_now, s.dl_total = t->dl_total;
    s.answering = 1;
  } else if (lock_caller(t->hub)) {
    s = t->seen = t->snap;
    pthread_mutex_unlock(&t->hub->mu);
  } else {
    s = t->seen; /* the lock is busy: the figures of the last look */
  }
  lua_pushinteger(L, (lua_Integer)s.ul_now);
  lua_pushinteger(L, (lua_Integer)s.ul_total);
  lua_pushinteger(L, (lua_Integer)s.dl_now);
  lua_pushinteger(L, (lua_Integer)s.dl_total);
  lua_pushboolean(L, s.answering);
  return 5;
}

/* Events taken from a transfer's queue, held by a userdata while Lua
 * copies them, so that an error on the way cannot leak them. */
typedef struct {
  sse_queue q;
} event_box;

static int event_box_gc(lua_State *L) {
  event_box *b = (event_box *)lua_touserdata(L, 1);
  sse_queue_free(&b->q);
  return 0;
}

/* transfer:events() -> the server-sent events that arrived since the last
 * call, as {event=, data=[, pictures=]} tables, oldest first. An event
 * whose pictures are still being decoded waits, and the ones after it; so
 * does one over what the last perform(0) may still hand over. */
static int transfer_events(lua_State *L) {
  transfer *t = check_open_transfer(L);
  event_box *b = (event_box *)ie_newuserdata1(L, sizeof *b);
  sse_queue_init(&b->q, (size_t)-1);
  b->q.free_extra = ie_decoded_free;
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, event_box_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  int ready = 1;
  sse_queue *q = &t->events;
  if (!lock_caller(t->hub)) { /* busy: the events wait for the next call */
    lua_newtable(L);
    return 1;
  }
  size_t k = 0;
  while (k < q->n && (!q->ev[k].extra || ((ie_decoded *)q->ev[k].extra)->done) &&
         affordable(t->hub, cost_of((ie_decoded *)q->ev[k].extra)))
    k++;
  if (k > 0 && sse_queue_reserve(&b->q, k)) {
    size_t bytes = 0, px = 0;
    for (size_t i = 0; i < k; i++)
      bytes += q->ev[i].dlen, px += cost_of((ie_decoded *)q->ev[i].extra);
    memcpy(b->q.ev, q->ev, k * sizeof *q->ev);
    memmove(q->ev, q->ev + k, (q->n - k) * sizeof *q->ev);
    b->q.n = k, q->n -= k, q->bytes -= bytes;
    t->held_px -= px < t->held_px ? px : t->held_px;
  } else if (k > 0) {
    ready = 0;
  }
  if (t->where == W_DRAIN && q->n == 0) /* its last event is out: finished */
    ie_hand_over_locked(t->hub, t);
  pthread_mutex_unlock(&t->hub->mu);
  if (!ready)
    return luaL_error(L, "out of memory");
  ie_push_events(L, &b->q);
  for (size_t i = 0; i < b->q.n; i++) {
    if (!b->q.ev[i].extra)
      continue;
    ie_rawgeti(L, -1, (lua_Integer)i + 1);
    push_pictures(L, (const ie_decoded *)b->q.ev[i].extra);
    lua_pop(L, 1);
  }
  sse_queue_clear(&b->q); /* only after Lua has its copies */
  return 1;
}

/* transfer:cancel(): abort at once and free the connection. Harmless on a
 * closed transfer, like close: a client's __gc may run after its transfers'. */
static int transfer_cancel(lua_State *L) {
  xfer_box *b = (xfer_box *)luaL_checkudata(L, 1, XFER_MT);
  if (b->t)
    cancel(b->t);
  return 0;
}

static int transfer_tostring(lua_State *L) {
  xfer_box *b = (xfer_box *)luaL_checkudata(L, 1, XFER_MT);
  lua_pushfstring(L, "imgedit.transfer (%s)", !b->t ? "closed" : b->t->done ? "done" : "running");
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
  pthread_condattr_t ca;
  pthread_condattr_init(&ca);
  pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
  pthread_mutex_init(&m->mu, NULL);
  pthread_cond_init(&m->cv, &ca);
  pthread_cond_init(&m->dcv, NULL);
  pthread_cond_init(&m->pcv, NULL);
  pthread_condattr_destroy(&ca);
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
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  lua_pushnumber(L, (double)ts.tv_sec + (double)ts.tv_nsec / 1e9);
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
  static const luaL_Reg multi_methods[] = {{"start", multi_start}, {"perform", multi_perform}, {NULL, NULL}};
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
      {"multi", l_multi}, {"curl_version", l_curl_version}, {"now", l_now}, {"thread_cpu", l_thread_cpu}, {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
}
