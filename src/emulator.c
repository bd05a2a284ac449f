/* imgedit.emulator: a local stand-in for the image service.
 *
 * libmicrohttpd serves two listeners on 127.0.0.1 (the API and a "CDN" for
 * url answers), one thread per connection so that a slow answer never holds
 * up another. The service's rules live in Lua (imgedit/emulator/service.lua)
 * inside a private lua_State that this file creates: MHD threads call into it
 * one at a time under a mutex, and never touch the caller's state. Delays are
 * slept outside the mutex. The caller's state talks to the private one only
 * through JSON strings, so no Lua value crosses between states. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lualib.h>
#include <microhttpd.h>

#include "imgedit.h"

#define EMU_MT "imgedit.emulator"
#define MAX_BODY ((size_t)256 * 1024 * 1024)

typedef struct emu {
  struct MHD_Daemon *api, *cdn;
  pthread_mutex_t lock;   /* guards S */
  pthread_mutex_t wait_m; /* with wake: interruptible delays */
  pthread_cond_t wake;
  int stopping;
  int in_flight, max_in_flight; /* guarded by wait_m */
  int sink;                     /* benchmarks: discard uploads, answer at once */
  char *sink_body;
  size_t sink_len;
  lua_State *S;
  unsigned api_port, cdn_port;
} emu;

typedef struct part {
  char *name, *filename, *ctype, *data;
  size_t len, cap;
} part;

typedef struct req_ctx {
  struct MHD_PostProcessor *pp;
  part *parts;
  size_t nparts, capparts;
  char *body;
  size_t blen, bcap, total;
  int too_big, oom, malformed;
  long drop_after; /* close the connection once this much upload arrived */
  int counted;     /* still counted as in flight */
  emu *E;          /* for the in-flight count when the request completes */
} req_ctx;

typedef struct handle {
  emu *E;
} handle;

/* ---- buffers ---- */

static int append(char **buf, size_t *len, size_t *cap, const char *p, size_t n) {
  if (*len + n > *cap) {
    size_t nc = *cap ? *cap : 4096;
    while (nc < *len + n)
      nc *= 2;
    char *nb = realloc(*buf, nc);
    if (!nb)
      return -1;
    *buf = nb, *cap = nc;
  }
  if (n)
    memcpy(*buf + *len, p, n);
  *len += n;
  return 0;
}

static char *dupstr(const char *s) { return s ? strdup(s) : NULL; }

/* A request stops counting as in flight once its answer is queued: the
 * client can have it from then on, and may already send the next one. */
static void uncount(req_ctx *c) {
  if (!c->counted)
    return;
  c->counted = 0;
  pthread_mutex_lock(&c->E->wait_m);
  c->E->in_flight--;
  pthread_mutex_unlock(&c->E->wait_m);
}

static void free_ctx(req_ctx *c) {
  if (!c)
    return;
  if (c->pp)
    MHD_destroy_post_processor(c->pp);
  for (size_t i = 0; i < c->nparts; i++) {
    free(c->parts[i].name), free(c->parts[i].filename);
    free(c->parts[i].ctype), free(c->parts[i].data);
  }
  free(c->parts);
  free(c->body);
  free(c);
}

static enum MHD_Result on_part(void *cls, enum MHD_ValueKind kind, const char *key,
                               const char *filename, const char *content_type,
                               const char *transfer_encoding, const char *data, uint64_t off,
                               size_t size) {
  req_ctx *c = (req_ctx *)cls;
  (void)kind, (void)transfer_encoding;
  if (off == 0) { /* a new part begins */
    if (c->nparts == c->capparts) {
      size_t nc = c->capparts ? c->capparts * 2 : 8;
      part *np = realloc(c->parts, nc * sizeof *np);
      if (!np)
        return c->oom = 1, MHD_NO;
      c->parts = np, c->capparts = nc;
    }
    part *p = &c->parts[c->nparts++];
    memset(p, 0, sizeof *p);
    p->name = dupstr(key), p->filename = dupstr(filename), p->ctype = dupstr(content_type);
  }
  if (c->nparts == 0)
    return MHD_NO;
  part *p = &c->parts[c->nparts - 1];
  if (append(&p->data, &p->len, &p->cap, data, size) != 0)
    return c->oom = 1, MHD_NO;
  return MHD_YES;
}

/* ---- calling the service in the private state ---- */

/* Push the request as a table onto S. */
static void push_request(lua_State *S, struct MHD_Connection *con, const char *listener,
                         const char *url, const char *method, req_ctx *c) {
  lua_createtable(S, 0, 10);
  lua_pushstring(S, listener), lua_setfield(S, -2, "listener");
  lua_pushstring(S, url), lua_setfield(S, -2, "path");
  lua_pushstring(S, method), lua_setfield(S, -2, "method");
  const char *h = MHD_lookup_connection_value(con, MHD_HEADER_KIND, "Authorization");
  if (h)
    lua_pushstring(S, h), lua_setfield(S, -2, "authorization");
  h = MHD_lookup_connection_value(con, MHD_HEADER_KIND, "Content-Type");
  if (h)
    lua_pushstring(S, h), lua_setfield(S, -2, "content_type");
  /* The client's port tells which connection carried the request, so tests
   * can see keep-alive at work. */
  const union MHD_ConnectionInfo *ci = MHD_get_connection_info(con, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
  if (ci && ci->client_addr && ci->client_addr->sa_family == AF_INET)
    lua_pushinteger(S, ntohs(((const struct sockaddr_in *)ci->client_addr)->sin_port)),
        lua_setfield(S, -2, "client_port");
  h = MHD_lookup_connection_value(con, MHD_HEADER_KIND, "User-Agent");
  if (h)
    lua_pushstring(S, h), lua_setfield(S, -2, "user_agent");
  lua_pushboolean(S, c->too_big), lua_setfield(S, -2, "too_big");
  lua_pushboolean(S, c->malformed || c->oom), lua_setfield(S, -2, "malformed");
  lua_pushinteger(S, (lua_Integer)c->total), lua_setfield(S, -2, "body_size");
  lua_pushlstring(S, c->body ? c->body : "", c->blen), lua_setfield(S, -2, "body");
  lua_createtable(S, (int)c->nparts, 0);
  for (size_t i = 0; i < c->nparts; i++) {
    part *p = &c->parts[i];
    lua_createtable(S, 0, 4);
    if (p->name)
      lua_pushstring(S, p->name), lua_setfield(S, -2, "name");
    if (p->filename)
      lua_pushstring(S, p->filename), lua_setfield(S, -2, "filename");
    if (p->ctype)
      lua_pushstring(S, p->ctype), lua_setfield(S, -2, "type");
    lua_pushlstring(S, p->data ? p->data : "", p->len), lua_setfield(S, -2, "data");
    lua_rawseti(S, -2, (lua_Integer)i + 1);
  }
  lua_setfield(S, -2, "parts");
}

typedef struct answer {
  unsigned status;
  char *body;
  size_t len;
  double delay;
  int drop;           /* close the connection without answering */
  int reset;          /* ... with a TCP reset rather than a close */
  long truncate;      /* send this many body bytes, then cut the connection */
  long stall_at;      /* after this many body bytes ... */
  double stall;       /* ... pause this long (a trickling answer) */
  char *headers;      /* "name\0value\0name\0value\0\0" */
  size_t hlen, hcap;
  char **events;      /* a streamed answer: these, one after another ... */
  size_t *event_len, nevents;
  double event_delay; /* ... each after this pause */
  long cut_after;     /* drop the connection after this many events */
} answer;

static void free_answer(answer *a) {
  free(a->body);
  free(a->headers);
  for (size_t i = 0; i < a->nevents; i++)
    free(a->events[i]);
  free(a->events);
  free(a->event_len);
}

static int run_service(lua_State *S) {
  /* S: service, fn_name, request -> call service[fn_name](request) */
  lua_getfield(S, 1, lua_tostring(S, 2));
  lua_pushvalue(S, 3);
  lua_call(S, 1, 1);
  return 1;
}

static void take_answer(lua_State *S, answer *a) {
  lua_getfield(S, -1, "status");
  a->status = (unsigned)luaL_optinteger(S, -1, 500);
  lua_getfield(S, -2, "delay");
  a->delay = luaL_optnumber(S, -1, 0);
  lua_getfield(S, -3, "drop");
  a->drop = lua_toboolean(S, -1);
  lua_getfield(S, -4, "reset");
  a->reset = lua_toboolean(S, -1);
  lua_pop(S, 1);
  lua_getfield(S, -4, "truncate");
  a->truncate = (long)luaL_optinteger(S, -1, -1);
  lua_getfield(S, -5, "body");
  size_t n = 0;
  const char *b = lua_tolstring(S, -1, &n);
  if (b && (a->body = malloc(n ? n : 1)) != NULL) {
    memcpy(a->body, b, n);
    a->len = n;
  }
  lua_getfield(S, -6, "stall_at");
  a->stall_at = (long)luaL_optinteger(S, -1, -1);
  lua_getfield(S, -7, "stall");
  a->stall = luaL_optnumber(S, -1, 0);
  lua_pop(S, 7);
  lua_getfield(S, -1, "events");
  if (lua_istable(S, -1)) {
    size_t count = (size_t)ie_len(S, -1);
    a->events = calloc(count ? count : 1, sizeof *a->events);
    a->event_len = calloc(count ? count : 1, sizeof *a->event_len);
    for (size_t i = 0; a->events && a->event_len && i < count; i++) {
      lua_rawgeti(S, -1, (lua_Integer)i + 1);
      size_t len = 0;
      const char *ev = lua_tolstring(S, -1, &len);
      if (ev && (a->events[i] = malloc(len ? len : 1)) != NULL) {
        memcpy(a->events[i], ev, len);
        a->event_len[i] = len;
        a->nevents = i + 1;
      }
      lua_pop(S, 1);
    }
  }
  lua_pop(S, 1);
  lua_getfield(S, -1, "event_delay");
  a->event_delay = luaL_optnumber(S, -1, 0);
  lua_getfield(S, -2, "cut_after");
  a->cut_after = (long)luaL_optinteger(S, -1, -1);
  lua_pop(S, 2);
  lua_getfield(S, -1, "headers");
  if (lua_istable(S, -1)) {
    lua_pushnil(S);
    while (lua_next(S, -2)) {
      /* lua_tostring on a number key would change it under lua_next */
      const char *k = lua_type(S, -2) == LUA_TSTRING ? lua_tostring(S, -2) : NULL;
      const char *v = lua_tostring(S, -1);
      if (k && v) {
        append(&a->headers, &a->hlen, &a->hcap, k, strlen(k) + 1);
        append(&a->headers, &a->hlen, &a->hcap, v, strlen(v) + 1);
      }
      lua_pop(S, 1);
    }
  }
  lua_pop(S, 1);
  append(&a->headers, &a->hlen, &a->hcap, "", 1);
}

static int take_answer_l(lua_State *S) {
  answer *a = (answer *)lua_touserdata(S, 1);
  lua_settop(S, 2);
  take_answer(S, a);
  return 0;
}

/* Push run_service, the service table and a function name onto S. */
static void push_call(lua_State *S, const char *fn) {
  lua_pushcfunction(S, run_service);
  lua_getfield(S, LUA_REGISTRYINDEX, "imgedit.emulator.service");
  lua_pushstring(S, fn);
}

/* Ask the service; on a Lua error, answer 500 with the message. */
static void ask_service(emu *E, const char *fn, struct MHD_Connection *con, const char *listener,
                        const char *url, const char *method, req_ctx *c, answer *a) {
  pthread_mutex_lock(&E->lock);
  lua_State *S = E->S;
  int top = lua_gettop(S);
  push_call(S, fn);
  push_request(S, con, listener, url, method, c);
  int ok = lua_pcall(S, 3, 1, 0) == LUA_OK && lua_istable(S, -1);
  if (ok) {
    /* Reading the answer can raise too (a field of the wrong type): protected. */
    lua_pushcfunction(S, take_answer_l);
    lua_pushlightuserdata(S, a);
    lua_pushvalue(S, -3);
    ok = lua_pcall(S, 2, 0, 0) == LUA_OK;
  }
  if (!ok) {
    /* The service failed: it still encodes the 500 itself (cjson escapes
     * the message properly); a constant body if even that fails. */
    int err = lua_gettop(S);
    push_call(S, "failure_json");
    lua_pushvalue(S, err);
    size_t n = 0;
    const char *body = lua_pcall(S, 3, 1, 0) == LUA_OK ? lua_tolstring(S, -1, &n) : NULL;
    if (!body) {
      body = "{\"error\":{\"message\":\"emulator failure\",\"type\":\"server_error\"}}";
      n = strlen(body);
    }
    free_answer(a);
    memset(a, 0, sizeof *a);
    a->status = 500;
    a->truncate = a->stall_at = a->cut_after = -1; /* a whole answer, not a cut one */
    if ((a->body = malloc(n ? n : 1)) != NULL) {
      memcpy(a->body, body, n);
      a->len = n;
    }
    append(&a->headers, &a->hlen, &a->hcap, "Content-Type\0application/json\0", 30);
    append(&a->headers, &a->hlen, &a->hcap, "", 1);
  }
  lua_settop(S, top);
  pthread_mutex_unlock(&E->lock);
}

/* Sleep, but wake at once when the emulator stops. */
static void emu_sleep(emu *E, double s) {
  if (s <= 0)
    return;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  ts.tv_sec += (time_t)s;
  ts.tv_nsec += (long)((s - (double)(time_t)s) * 1e9);
  if (ts.tv_nsec >= 1000000000L)
    ts.tv_sec++, ts.tv_nsec -= 1000000000L;
  pthread_mutex_lock(&E->wait_m);
  while (!E->stopping)
    if (pthread_cond_timedwait(&E->wake, &E->wait_m, &ts) == ETIMEDOUT)
      break;
  pthread_mutex_unlock(&E->wait_m);
}

/* A body sent by a callback, for answers that misbehave on purpose: cut
 * short (truncate) or pausing part way (stall). */
typedef struct slow_src {
  emu *E;
  char *body;
  size_t len, limit, stall_at;
  double stall;
  int stalled;
} slow_src;


static ssize_t slow_read(void *cls, uint64_t pos, char *buf, size_t max) {
  slow_src *t = (slow_src *)cls;
  if (pos >= t->limit)
    return MHD_CONTENT_READER_END_WITH_ERROR;
  if (!t->stalled && pos >= t->stall_at) {
    t->stalled = 1;
    emu_sleep(t->E, t->stall);
  }
  size_t n = t->limit - (size_t)pos;
  if (!t->stalled && t->stall_at - (size_t)pos < n)
    n = t->stall_at - (size_t)pos;
  if (n > max)
    n = max;
  memcpy(buf, t->body + pos, n);
  return (ssize_t)n;
}

static void slow_free(void *cls) {
  slow_src *t = (slow_src *)cls;
  free(t->body);
  free(t);
}

/* A streamed answer: events sent one by one, with a pause before each. */
typedef struct stream_src {
  emu *E;
  char **events;
  size_t *len, n, i, off;
  double delay;
  long cut;
} stream_src;

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
  stream_src *t = (stream_src *)cls;
  (void)pos;
  if (t->off == 0) {
    if (t->cut >= 0 && (long)t->i >= t->cut)
      return MHD_CONTENT_READER_END_WITH_ERROR;
    if (t->i >= t->n)
      return MHD_CONTENT_READER_END_OF_STREAM;
    emu_sleep(t->E, t->delay);
  }
  size_t n = t->len[t->i] - t->off;
  if (n > max)
    n = max;
  memcpy(buf, t->events[t->i] + t->off, n);
  t->off += n;
  if (t->off == t->len[t->i])
    t->i++, t->off = 0;
  return (ssize_t)n;
}

static void stream_free(void *cls) {
  stream_src *t = (stream_src *)cls;
  for (size_t i = 0; i < t->n; i++)
    free(t->events[i]);
  free(t->events);
  free(t->len);
  free(t);
}

static enum MHD_Result send_answer(emu *E, struct MHD_Connection *con, answer *a) {
  struct MHD_Response *r;
  if (a->events) {
    stream_src *t = calloc(1, sizeof *t);
    if (!t)
      return MHD_NO;
    t->E = E, t->events = a->events, t->len = a->event_len, t->n = a->nevents;
    t->delay = a->event_delay, t->cut = a->cut_after;
    a->events = NULL, a->event_len = NULL, a->nevents = 0; /* the stream owns them now */
    r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 64 * 1024, stream_read, t, stream_free);
    if (!r) {
      stream_free(t);
      return MHD_NO;
    }
  } else if ((a->truncate >= 0 && (size_t)a->truncate < a->len) || (a->stall_at >= 0 && a->stall > 0)) {
    int cut = a->truncate >= 0 && (size_t)a->truncate < a->len;
    int stall = a->stall_at >= 0 && a->stall > 0;
    slow_src *t = calloc(1, sizeof *t);
    if (!t)
      return MHD_NO;
    t->E = E, t->body = a->body, t->len = a->len;
    t->limit = cut ? (size_t)a->truncate : a->len;
    t->stall_at = stall ? (size_t)a->stall_at : (size_t)-1;
    t->stall = a->stall;
    a->body = NULL;
    r = MHD_create_response_from_callback(t->len, 64 * 1024, slow_read, t, slow_free);
    if (!r) {
      slow_free(t);
      return MHD_NO;
    }
  } else {
    r = MHD_create_response_from_buffer(a->len, a->body ? a->body : (void *)"", MHD_RESPMEM_MUST_COPY);
  }
  if (!r)
    return MHD_NO;
  for (const char *h = a->headers; h && *h;) {
    const char *v = h + strlen(h) + 1;
    MHD_add_response_header(r, h, v);
    h = v + strlen(v) + 1;
  }
  enum MHD_Result ok = MHD_queue_response(con, a->status, r);
  MHD_destroy_response(r);
  return ok;
}

/* A load balancer that gives up on a request resets the connection: linger
 * zero makes MHD's close send RST instead of FIN. */
static void reset_on_close(struct MHD_Connection *con) {
  const union MHD_ConnectionInfo *ci = MHD_get_connection_info(con, MHD_CONNECTION_INFO_CONNECTION_FD);
  if (!ci)
    return;
  struct linger lg = {1, 0};
  setsockopt(ci->connect_fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *con, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_size, void **con_cls,
                                  const char *listener) {
  emu *E = (emu *)cls;
  (void)version;
  req_ctx *c = (req_ctx *)*con_cls;
  if (!c) {
    c = calloc(1, sizeof *c);
    if (!c)
      return MHD_NO;
    *con_cls = c;
    c->E = E;
    c->counted = 1;
    pthread_mutex_lock(&E->wait_m);
    if (++E->in_flight > E->max_in_flight)
      E->max_in_flight = E->in_flight;
    pthread_mutex_unlock(&E->wait_m);
    c->drop_after = -1;
    if (E->sink)
      return MHD_YES;
    if (strcmp(listener, "api") == 0) {
      /* Faults that strike before the body is read: ask the service now. */
      answer early;
      memset(&early, 0, sizeof early);
      ask_service(E, "early", con, listener, url, method, c, &early);
      int drop_now = early.drop;
      c->drop_after = early.truncate; /* reused: upload bytes before the drop */
      free_answer(&early);
      if (drop_now)
        return MHD_NO;
    }
    const char *ct = MHD_lookup_connection_value(con, MHD_HEADER_KIND, "Content-Type");
    if (ct && strncasecmp(ct, "multipart/form-data", 19) == 0)
      c->pp = MHD_create_post_processor(con, 64 * 1024, on_part, c);
    return MHD_YES;
  }
  if (E->sink) { /* count and forget: the client is what is measured */
    c->total += *upload_size;
    if (*upload_size > 0) {
      *upload_size = 0;
      return MHD_YES;
    }
    struct MHD_Response *r =
        MHD_create_response_from_buffer(E->sink_len, E->sink_body, MHD_RESPMEM_PERSISTENT);
    if (!r)
      return MHD_NO;
    MHD_add_response_header(r, "Content-Type", "application/json");
    uncount(c);
    enum MHD_Result ok = MHD_queue_response(con, 200, r);
    MHD_destroy_response(r);
    return ok;
  }
  if (*upload_size > 0) {
    if (c->drop_after >= 0 && c->total + *upload_size >= (size_t)c->drop_after)
      return MHD_NO; /* a reset in the middle of the upload */
    c->total += *upload_size;
    if (c->total > MAX_BODY)
      c->too_big = 1;
    if (!c->too_big && !c->oom) {
      if (c->pp) {
        if (MHD_post_process(c->pp, upload_data, *upload_size) != MHD_YES)
          c->malformed = 1;
      } else if (append(&c->body, &c->blen, &c->bcap, upload_data, *upload_size) != 0) {
        c->oom = 1;
      }
    }
    *upload_size = 0;
    return MHD_YES;
  }
  answer a;
  memset(&a, 0, sizeof a);
  ask_service(E, "handle", con, listener, url, method, c, &a);
  emu_sleep(E, a.delay);
  if (!a.events) /* a stream is in flight until its last event is sent */
    uncount(c);
  if (a.drop && a.reset)
    reset_on_close(con);
  enum MHD_Result ok = a.drop ? MHD_NO : send_answer(E, con, &a);
  free_answer(&a);
  return ok;
}

static enum MHD_Result on_api(void *cls, struct MHD_Connection *con, const char *url,
                              const char *method, const char *version, const char *upload_data,
                              size_t *upload_size, void **con_cls) {
  return on_request(cls, con, url, method, version, upload_data, upload_size, con_cls, "api");
}

static enum MHD_Result on_cdn(void *cls, struct MHD_Connection *con, const char *url,
                              const char *method, const char *version, const char *upload_data,
                              size_t *upload_size, void **con_cls) {
  return on_request(cls, con, url, method, version, upload_data, upload_size, con_cls, "cdn");
}

static void on_completed(void *cls, struct MHD_Connection *con, void **con_cls,
                         enum MHD_RequestTerminationCode toe) {
  (void)cls, (void)con, (void)toe;
  req_ctx *c = (req_ctx *)*con_cls;
  if (c)
    uncount(c);
  free_ctx(c);
  *con_cls = NULL;
}

static struct MHD_Daemon *listen_on(emu *E, unsigned port, MHD_AccessHandlerCallback cb,
                                    unsigned *bound) {
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK); /* never reachable from outside */
  struct MHD_Daemon *d = MHD_start_daemon(
      MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD, (uint16_t)port, NULL, NULL,
      cb, E, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa, MHD_OPTION_NOTIFY_COMPLETED,
      on_completed, E, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120,
      /* room for the header floods that tests ask for */
      MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(1024 * 1024), MHD_OPTION_END);
  if (d) {
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    *bound = info ? info->port : port;
  }
  return d;
}

/* ---- the Lua object in the caller's state ---- */

static void emu_free(emu *E) {
  if (!E)
    return;
  pthread_mutex_lock(&E->wait_m);
  E->stopping = 1;
  pthread_cond_broadcast(&E->wake);
  pthread_mutex_unlock(&E->wait_m);
  if (E->api)
    MHD_stop_daemon(E->api);
  if (E->cdn)
    MHD_stop_daemon(E->cdn);
  if (E->S)
    lua_close(E->S);
  free(E->sink_body);
  pthread_mutex_destroy(&E->lock);
  pthread_mutex_destroy(&E->wait_m);
  pthread_cond_destroy(&E->wake);
  free(E);
}

static int emu_stop(lua_State *L) {
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

/* Call service[fn](json_arg) in the private state; return its string result. */
static int call_json(lua_State *L, emu *E, const char *fn, const char *arg) {
  pthread_mutex_lock(&E->lock);
  lua_State *S = E->S;
  int top = lua_gettop(S);
  push_call(S, fn);
  lua_pushstring(S, arg ? arg : "null");
  int rc = lua_pcall(S, 3, 1, 0);
  size_t n = 0;
  const char *s = lua_tolstring(S, -1, &n);
  /* Copy out before unlocking; the caller's state may raise afterwards. */
  char *copy = malloc(n + 1);
  if (copy && s)
    memcpy(copy, s, n);
  lua_settop(S, top);
  pthread_mutex_unlock(&E->lock);
  if (!copy)
    return luaL_error(L, "out of memory");
  lua_pushlstring(L, s ? copy : "", s ? n : 0);
  free(copy);
  if (rc != LUA_OK)
    return lua_error(L);
  return 1;
}

/* Encode/decode with the caller's cjson, found through upvalue 1. */
static void json_call(lua_State *L, const char *fn, int arg) {
  lua_getfield(L, lua_upvalueindex(1), fn);
  lua_pushvalue(L, arg);
  lua_call(L, 1, 1);
}

static int emu_requests(lua_State *L) {
  emu *E = check_emu(L);
  call_json(L, E, "requests_json", NULL);
  json_call(L, "decode", lua_gettop(L));
  return 1;
}

/* emu:stats() -> {requests=, in_flight=, max_in_flight=} */
static int emu_stats(lua_State *L) {
  emu *E = check_emu(L);
  call_json(L, E, "stats_json", NULL);
  json_call(L, "decode", lua_gettop(L));
  pthread_mutex_lock(&E->wait_m);
  int now = E->in_flight, most = E->max_in_flight;
  pthread_mutex_unlock(&E->wait_m);
  lua_pushinteger(L, now);
  lua_setfield(L, -2, "in_flight");
  lua_pushinteger(L, most);
  lua_setfield(L, -2, "max_in_flight");
  return 1;
}

/* emu:clear(): forget the request log, pending faults and the in-flight peak. */
static int emu_clear(lua_State *L) {
  emu *E = check_emu(L);
  call_json(L, E, "clear", NULL);
  pthread_mutex_lock(&E->wait_m);
  E->max_in_flight = E->in_flight;
  pthread_mutex_unlock(&E->wait_m);
  return 0;
}

/* emu:configure{latency=} changes settings while running. */
static int emu_configure(lua_State *L) {
  emu *E = check_emu(L);
  luaL_checktype(L, 2, LUA_TTABLE);
  json_call(L, "encode", 2);
  call_json(L, E, "configure_json", lua_tostring(L, -1));
  return 0;
}

/* emu:inject{...} or emu:inject({...}, {...}): faults for the next requests, in order. */
static int emu_inject(lua_State *L) {
  emu *E = check_emu(L);
  int n = lua_gettop(L);
  for (int i = 2; i <= n; i++) {
    luaL_checktype(L, i, LUA_TTABLE);
    json_call(L, "encode", i);
    call_json(L, E, "inject_json", lua_tostring(L, -1));
    lua_pop(L, 2);
  }
  return 0;
}

static int emu_index(lua_State *L) {
  handle *h = (handle *)luaL_checkudata(L, 1, EMU_MT);
  const char *k = luaL_checkstring(L, 2);
  if (h->E && strcmp(k, "url") == 0)
    lua_pushfstring(L, "http://127.0.0.1:%d/v1", (int)h->E->api_port);
  else if (h->E && strcmp(k, "cdn_url") == 0)
    lua_pushfstring(L, "http://127.0.0.1:%d", (int)h->E->cdn_port);
  else if (h->E && strcmp(k, "port") == 0)
    lua_pushinteger(L, h->E->api_port);
  else if (h->E && strcmp(k, "key") == 0)
    call_json(L, h->E, "key", NULL);
  else {
    luaL_getmetatable(L, EMU_MT);
    lua_getfield(L, -1, "methods");
    lua_getfield(L, -1, k);
  }
  return 1;
}

static int emu_tostring(lua_State *L) {
  handle *h = (handle *)luaL_checkudata(L, 1, EMU_MT);
  if (h->E)
    lua_pushfstring(L, "imgedit.emulator (http://127.0.0.1:%d/v1)", (int)h->E->api_port);
  else
    lua_pushliteral(L, "imgedit.emulator (stopped)");
  return 1;
}

/* The private state: standard libraries, the caller's module paths, the service. */
static lua_State *new_private_state(lua_State *L, const char *config, char *err, size_t errlen) {
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
  lua_pushliteral(S, "imgedit.emulator.service");
  if (lua_pcall(S, 1, 1, 0) != LUA_OK) {
    snprintf(err, errlen, "cannot load the emulator service: %s", lua_tostring(S, -1));
    lua_close(S);
    return NULL;
  }
  lua_setfield(S, LUA_REGISTRYINDEX, "imgedit.emulator.service");
  push_call(S, "configure_json");
  lua_pushstring(S, config);
  if (lua_pcall(S, 3, 0, 0) != LUA_OK) {
    snprintf(err, errlen, "emulator configuration: %s", lua_tostring(S, -1));
    lua_close(S);
    return NULL;
  }
  return S;
}

static void configure_urls(emu *E) {
  char buf[256];
  snprintf(buf, sizeof buf, "{\"api_url\":\"http://127.0.0.1:%u/v1\",\"cdn_url\":\"http://127.0.0.1:%u\"}",
           E->api_port, E->cdn_port);
  pthread_mutex_lock(&E->lock);
  push_call(E->S, "configure_json");
  lua_pushstring(E->S, buf);
  lua_pcall(E->S, 3, 0, 0);
  lua_settop(E->S, 0);
  pthread_mutex_unlock(&E->lock);
}

/* start{port=0, cdn_port=0, latency=0, key=...} -> emulator */
static int l_start(lua_State *L) {
  if (lua_isnoneornil(L, 1))
    lua_newtable(L);
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  lua_getfield(L, 1, "port");
  lua_Integer port = luaL_optinteger(L, -1, 0);
  lua_getfield(L, 1, "cdn_port");
  lua_Integer cdn_port = luaL_optinteger(L, -1, 0);
  lua_pop(L, 2);
  luaL_argcheck(L, port >= 0 && port < 65536 && cdn_port >= 0 && cdn_port < 65536, 1,
                "port out of range");
  json_call(L, "encode", 1); /* the options, for the service */
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
  E->S = new_private_state(L, lua_tostring(L, 2), err, sizeof err);
  if (!E->S) {
    lua_pushnil(L);
    lua_pushstring(L, err);
    return 2;
  }
  lua_getfield(L, 1, "sink");
  if (lua_toboolean(L, -1)) {
    /* A fixed answer, made once by the service, copied out of its state. */
    call_json(L, E, "sink_body", NULL);
    size_t n;
    const char *b = lua_tolstring(L, -1, &n);
    E->sink_body = malloc(n ? n : 1);
    if (!E->sink_body)
      return luaL_error(L, "out of memory");
    memcpy(E->sink_body, b, n);
    E->sink_len = n;
    E->sink = 1;
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  E->api = listen_on(E, (unsigned)port, on_api, &E->api_port);
  E->cdn = E->api ? listen_on(E, (unsigned)cdn_port, on_cdn, &E->cdn_port) : NULL;
  if (!E->api || !E->cdn) {
    int e = errno;
    emu_free(E);
    h->E = NULL;
    lua_pushnil(L);
    lua_pushfstring(L, "cannot listen on 127.0.0.1: %s", strerror(e));
    return 2;
  }
  configure_urls(E);
  return 1;
}

IE_API int luaopen_imgedit_emulator(lua_State *L);

int luaopen_imgedit_emulator(lua_State *L) {
  ie_checkversion(L);
  lua_getglobal(L, "require");
  lua_pushliteral(L, "cjson");
  lua_call(L, 1, 1); /* upvalue of the methods that pass tables across states */
  int cjson = lua_gettop(L);
  if (luaL_newmetatable(L, EMU_MT)) {
    static const luaL_Reg methods[] = {{"requests", emu_requests}, {"stats", emu_stats},
                                       {"inject", emu_inject},     {"clear", emu_clear},
                                       {"configure", emu_configure},
                                       {"stop", emu_stop},         {NULL, NULL}};
    lua_newtable(L);
    lua_pushvalue(L, cjson);
    luaL_setfuncs(L, methods, 1);
    lua_setfield(L, -2, "methods");
    lua_pushcfunction(L, emu_index);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, emu_stop);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, emu_stop);
    lua_setfield(L, -2, "__close");
    lua_pushcfunction(L, emu_tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
  lua_newtable(L);
  lua_pushvalue(L, cjson);
  lua_pushcclosure(L, l_start, 1);
  lua_setfield(L, -2, "start");
  emu_open_render(L);
  return 1;
}
