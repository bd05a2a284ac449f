/* A transfer as a Lua object, on the caller's thread: done, result, take,
 * progress, events (a stream's, handed over from the transfer's queue with
 * their decoded pictures), cancel, close. What it reads was written by the
 * network thread before it let go of the transfer, or is read under the
 * multi's lock (hub.c). */
#include <stdlib.h>
#include <string.h>

#include "http.h"

int ie_transfer_close(lua_State *L) {
  ie_xfer_box *b = (ie_xfer_box *)luaL_checkudata(L, 1, IE_XFER_MT);
  transfer *t = b->t;
  if (!t)
    return 0;
  b->t = NULL;
  ie_transfer_cancel(t);
  pthread_mutex_lock(&t->hub->mu);
  int last = ie_drop_locked(t);
  pthread_mutex_unlock(&t->hub->mu);
  if (last)
    ie_transfer_free(t);
  return 0;
}

static transfer *check_open_transfer(lua_State *L) {
  ie_xfer_box *b = (ie_xfer_box *)luaL_checkudata(L, 1, IE_XFER_MT);
  if (!b->t)
    luaL_error(L, "attempt to use a closed transfer");
  return b->t;
}

static int transfer_done(lua_State *L) {
  transfer *t = check_open_transfer(L);
  lua_pushboolean(L, t->done);
  return 1;
}

/* The pictures of d as a list of {bytes=, open=, close=, buffer=, width=,
 * height=} or {error=, reason=}, at the table on top. The pixels go to
 * Lua as a buffer that takes them over: no copy on the caller's thread. */
static void push_pictures(lua_State *L, ie_decoded *d) {
  if (!d || !d->done)
    return;
  lua_createtable(L, d->n, 0);
  for (int i = 0; i < d->n; i++) {
    ie_picture *pic = &d->pic[i];
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
      ie_buffer_push(L, &pic->px);
      lua_setfield(L, -2, "buffer");
      lua_pushinteger(L, pic->px.w);
      lua_setfield(L, -2, "width");
      lua_pushinteger(L, pic->px.h);
      lua_setfield(L, -2, "height");
    } else if (pic->px.w > 0 && !pic->px.reason) { /* handed over already, in an earlier result() */
      lua_pushliteral(L, "taken");
      lua_setfield(L, -2, "reason");
      lua_pushliteral(L, "the pixels were handed over already");
      lua_setfield(L, -2, "error");
    } else {
      lua_pushstring(L, pic->px.reason ? pic->px.reason : "corrupt");
      lua_setfield(L, -2, "reason");
      lua_pushstring(L, pic->px.why[0] ? pic->px.why : "cannot decode the picture");
      lua_setfield(L, -2, "error");
    }
    if (pic->ip) { /* the figures, or the composite with its pixels as a buffer */
      ie_push_inpaint(L, pic->ip, 1);
      lua_setfield(L, -2, "inpaint");
      ie_inpaint_out_free(pic->ip);
      free(pic->ip), pic->ip = NULL;
    }
    lua_rawseti(L, -2, i + 1);
  }
  lua_setfield(L, -2, "pictures");
}

static void push_result(lua_State *L, transfer *t) {
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
  lua_pushcfunction(L, ie_transfer_close);
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
  } else if (ie_lock_caller(t->hub)) {
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
  if (!ie_lock_caller(t->hub)) { /* busy: the events wait for the next call */
    lua_newtable(L);
    return 1;
  }
  size_t k = 0;
  while (k < q->n && (!q->ev[k].extra || ((ie_decoded *)q->ev[k].extra)->done) &&
         ie_affordable(t->hub, ie_decoded_cost((ie_decoded *)q->ev[k].extra)))
    k++;
  if (k > 0 && sse_queue_reserve(&b->q, k)) {
    size_t bytes = 0, px = 0;
    for (size_t i = 0; i < k; i++)
      bytes += q->ev[i].dlen, px += ie_decoded_cost((ie_decoded *)q->ev[i].extra);
    memcpy(b->q.ev, q->ev, k * sizeof *q->ev);
    memmove(q->ev, q->ev + k, (q->n - k) * sizeof *q->ev);
    b->q.n = k, q->n -= k, q->bytes -= bytes;
    t->held_px -= px < t->held_px ? px : t->held_px;
  } else if (k > 0) {
    ready = 0;
  }
  if (t->where == W_DRAIN && q->n == 0) /* its last event is out: finished */
    ie_hand_over_locked(t->hub, t);
  else if (k < q->n && (!q->ev[k].extra || ((ie_decoded *)q->ev[k].extra)->done))
    ie_wake_locked(t->hub); /* ready, over this perform's budget: the loop comes back */
  pthread_mutex_unlock(&t->hub->mu);
  if (!ready)
    return luaL_error(L, "out of memory");
  ie_push_events(L, &b->q);
  for (size_t i = 0; i < b->q.n; i++) {
    if (!b->q.ev[i].extra)
      continue;
    ie_rawgeti(L, -1, (lua_Integer)i + 1);
    push_pictures(L, (ie_decoded *)b->q.ev[i].extra);
    lua_pop(L, 1);
  }
  sse_queue_clear(&b->q); /* only after Lua has its copies */
  return 1;
}

/* transfer:cancel(): abort at once and free the connection. Harmless on a
 * closed transfer, like close: a client's __gc may run after its transfers'. */
static int transfer_cancel(lua_State *L) {
  ie_xfer_box *b = (ie_xfer_box *)luaL_checkudata(L, 1, IE_XFER_MT);
  if (b->t)
    ie_transfer_cancel(b->t);
  return 0;
}

static int transfer_tostring(lua_State *L) {
  ie_xfer_box *b = (ie_xfer_box *)luaL_checkudata(L, 1, IE_XFER_MT);
  lua_pushfstring(L, "imgedit.transfer (%s)", !b->t ? "closed" : b->t->done ? "done" : "running");
  return 1;
}

void ie_open_transfers(lua_State *L) {
  static const luaL_Reg xfer_methods[] = {{"done", transfer_done},
                                          {"result", transfer_result},
                                          {"take", transfer_take},
                                          {"progress", transfer_progress},
                                          {"events", transfer_events},
                                          {"cancel", transfer_cancel},
                                          {NULL, NULL}};
  ie_new_class(L, IE_XFER_MT, xfer_methods, ie_transfer_close, "close", transfer_tostring);
}
