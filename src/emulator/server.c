/* The emulator's HTTP side: libmicrohttpd serves two listeners on 127.0.0.1
 * (the API and a "CDN" for url answers), one thread per connection so that a
 * slow answer never holds up another. Each request is read whole (multipart
 * parts kept apart), handed to the service through bridge.c, and answered as
 * the service says: at once, after a delay, cut short, trickling, as a stream
 * of events, or not at all. Delays are slept outside the service's lock and
 * end at once when the emulator stops. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include <microhttpd.h>

#include "../platform.h"
#include "emulator.h"

#define MAX_BODY ((size_t)256 * 1024 * 1024)

typedef struct req_ctx {
  struct MHD_PostProcessor *pp;
  emu_part *parts;
  size_t nparts, capparts;
  char *body;
  size_t blen, bcap, total;
  char *query; /* the query's arguments, "name\0value\0...", read when the request is whole */
  size_t qlen, qcap;
  int too_big, oom, malformed;
  long drop_after; /* close the connection once this much upload arrived */
  long pause_at;   /* stop reading the upload once this much arrived ... */
  double pause;    /* ... for this long (a slow reader: the client's sends wait) */
  int counted;     /* still counted as in flight */
  char entry[32];  /* the log's name of the request, to tell that its answer was delivered */
  emu *E;          /* for the in-flight count when the request completes */
} req_ctx;

/* ---- buffers ---- */

int emu_append(char **buf, size_t *len, size_t *cap, const char *p, size_t n) {
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
  free(c->query);
  free(c);
}

static enum MHD_Result on_part(void *cls, enum MHD_ValueKind kind, const char *key, const char *filename,
                               const char *content_type, const char *transfer_encoding, const char *data, uint64_t off,
                               size_t size) {
  req_ctx *c = (req_ctx *)cls;
  (void)kind, (void)transfer_encoding;
  if (off == 0) { /* a new part begins */
    if (c->nparts == c->capparts) {
      size_t nc = c->capparts ? c->capparts * 2 : 8;
      emu_part *np = realloc(c->parts, nc * sizeof *np);
      if (!np)
        return c->oom = 1, MHD_NO;
      c->parts = np, c->capparts = nc;
    }
    emu_part *p = &c->parts[c->nparts++];
    memset(p, 0, sizeof *p);
    p->name = dupstr(key), p->filename = dupstr(filename), p->ctype = dupstr(content_type);
  }
  if (c->nparts == 0)
    return MHD_NO;
  emu_part *p = &c->parts[c->nparts - 1];
  if (emu_append(&p->data, &p->len, &p->cap, data, size) != 0)
    return c->oom = 1, MHD_NO;
  return MHD_YES;
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
  double delay, hang_end;
  long cut;
  char entry[32];
} stream_src;

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
  stream_src *t = (stream_src *)cls;
  (void)pos;
  if (t->off == 0) {
    if (t->cut >= 0 && (long)t->i >= t->cut)
      return MHD_CONTENT_READER_END_WITH_ERROR;
    if (t->i >= t->n) {
      if (t->hang_end > 0) { /* the stream stays open after its last event */
        size_t n;
        int failed;
        if (t->entry[0]) /* its every event went out: delivered, whatever follows */
          free(emu_call(t->E, "delivered", t->entry, &n, &failed));
        t->entry[0] = '\0';
        emu_sleep(t->E, t->hang_end);
        return MHD_CONTENT_READER_END_WITH_ERROR;
      }
      return MHD_CONTENT_READER_END_OF_STREAM;
    }
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

static enum MHD_Result send_answer(emu *E, struct MHD_Connection *con, emu_answer *a) {
  struct MHD_Response *r;
  if (a->events) {
    stream_src *t = calloc(1, sizeof *t);
    if (!t)
      return MHD_NO;
    t->E = E, t->events = a->events, t->len = a->event_len, t->n = a->nevents;
    t->delay = a->event_delay, t->cut = a->cut_after, t->hang_end = a->hang_end;
    memcpy(t->entry, a->entry, sizeof t->entry);
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

/* One argument of the query string (MHD has decoded it) into c->query. */
static enum MHD_Result on_arg(void *cls, enum MHD_ValueKind kind, const char *key, const char *value) {
  req_ctx *c = (req_ctx *)cls;
  (void)kind;
  if (!key)
    return MHD_YES;
  if (!value)
    value = "";
  if (emu_append(&c->query, &c->qlen, &c->qcap, key, strlen(key) + 1) != 0 ||
      emu_append(&c->query, &c->qlen, &c->qcap, value, strlen(value) + 1) != 0)
    return c->oom = 1, MHD_NO;
  return MHD_YES;
}

/* What the service sees of a request: read off the connection and ctx. */
static void describe(struct MHD_Connection *con, const char *listener, const char *url, const char *method,
                     const req_ctx *c, emu_request *r) {
  memset(r, 0, sizeof *r);
  r->listener = listener, r->path = url, r->method = method;
  r->authorization = MHD_lookup_connection_value(con, MHD_HEADER_KIND, "Authorization");
  r->content_type = MHD_lookup_connection_value(con, MHD_HEADER_KIND, "Content-Type");
  r->user_agent = MHD_lookup_connection_value(con, MHD_HEADER_KIND, "User-Agent");
  r->api_key = MHD_lookup_connection_value(con, MHD_HEADER_KIND, "api-key");
  r->api_version = MHD_lookup_connection_value(con, MHD_GET_ARGUMENT_KIND, "api-version");
  const union MHD_ConnectionInfo *ci = MHD_get_connection_info(con, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
  if (ci && ci->client_addr && ci->client_addr->sa_family == AF_INET)
    r->client_port = ntohs(((const struct sockaddr_in *)ci->client_addr)->sin_port);
  r->parts = c->parts, r->nparts = c->nparts;
  r->body = c->body, r->blen = c->blen, r->total = c->total;
  r->query = c->query, r->qlen = c->qlen;
  r->too_big = c->too_big, r->malformed = c->malformed || c->oom;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *con, const char *url, const char *method,
                                  const char *version, const char *upload_data, size_t *upload_size, void **con_cls,
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
    c->drop_after = c->pause_at = -1;
    if (E->sink)
      return MHD_YES;
    if (strcmp(listener, "api") == 0) {
      /* Faults that strike before the body is read: ask the service now. */
      emu_request r;
      describe(con, listener, url, method, c, &r);
      emu_answer early;
      memset(&early, 0, sizeof early);
      emu_ask(E, "early", &r, &early);
      int drop_now = early.drop;
      c->drop_after = early.truncate;                       /* reused: upload bytes before the drop */
      c->pause_at = early.stall_at, c->pause = early.stall; /* reused: a pause in reading it */
      emu_free_answer(&early);
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
    struct MHD_Response *r = MHD_create_response_from_buffer(E->sink_len, E->sink_body, MHD_RESPMEM_PERSISTENT);
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
    if (c->pause_at >= 0 && c->total + *upload_size >= (size_t)c->pause_at) {
      c->pause_at = -1; /* this connection's own thread: only its upload waits */
      emu_sleep(E, c->pause);
    }
    c->total += *upload_size;
    if (c->total > MAX_BODY)
      c->too_big = 1;
    if (!c->too_big && !c->oom) {
      if (c->pp) {
        if (MHD_post_process(c->pp, upload_data, *upload_size) != MHD_YES)
          c->malformed = 1;
      } else if (emu_append(&c->body, &c->blen, &c->bcap, upload_data, *upload_size) != 0) {
        c->oom = 1;
      }
    }
    *upload_size = 0;
    return MHD_YES;
  }
  /* GET /v1/files?purpose=batch, /v1/batches?limit=2&after=...: the
   * service reads the query's arguments (the path comes without it) */
  if (!c->query)
    MHD_get_connection_values(con, MHD_GET_ARGUMENT_KIND, on_arg, c);
  emu_request r;
  describe(con, listener, url, method, c, &r);
  emu_answer a;
  memset(&a, 0, sizeof a);
  emu_ask(E, "handle", &r, &a);
  emu_sleep(E, a.delay);
  memcpy(c->entry, a.entry, sizeof c->entry);
  if (!a.events) /* a stream is in flight until its last event is sent */
    uncount(c);
  if (a.drop && a.reset)
    reset_on_close(con);
  enum MHD_Result ok = a.drop ? MHD_NO : send_answer(E, con, &a);
  emu_free_answer(&a);
  return ok;
}

static enum MHD_Result on_api(void *cls, struct MHD_Connection *con, const char *url, const char *method,
                              const char *version, const char *upload_data, size_t *upload_size, void **con_cls) {
  return on_request(cls, con, url, method, version, upload_data, upload_size, con_cls, "api");
}

static enum MHD_Result on_cdn(void *cls, struct MHD_Connection *con, const char *url, const char *method,
                              const char *version, const char *upload_data, size_t *upload_size, void **con_cls) {
  return on_request(cls, con, url, method, version, upload_data, upload_size, con_cls, "cdn");
}

/* Whether the client had closed its end before the answer's last bytes
 * were written: the kernel takes them all the same (a write after the
 * peer's FIN succeeds), but nobody reads them. */
static int peer_gone(struct MHD_Connection *con) {
  const union MHD_ConnectionInfo *ci = MHD_get_connection_info(con, MHD_CONNECTION_INFO_CONNECTION_FD);
  if (!ci)
    return 0;
  return ie_os_peer_closed(ci->connect_fd, 0);
}

static void on_completed(void *cls, struct MHD_Connection *con, void **con_cls, enum MHD_RequestTerminationCode toe) {
  (void)cls, (void)con;
  req_ctx *c = (req_ctx *)*con_cls;
  if (c && c->entry[0] && toe == MHD_REQUEST_TERMINATED_COMPLETED_OK && !peer_gone(con)) {
    /* every byte of the answer went out to a client still there: the log
     * says it was delivered */
    size_t n;
    int failed;
    free(emu_call(c->E, "delivered", c->entry, &n, &failed));
  }
  if (c)
    uncount(c);
  free_ctx(c);
  *con_cls = NULL;
}

static struct MHD_Daemon *listen_on(emu *E, unsigned port, MHD_AccessHandlerCallback cb, unsigned *bound) {
  struct sockaddr_in sa;
  memset(&sa, 0, sizeof sa);
  sa.sin_family = AF_INET;
  sa.sin_port = htons((uint16_t)port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK); /* never reachable from outside */
  struct MHD_Daemon *d =
      MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD, (uint16_t)port, NULL, NULL, cb,
                       E, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa, MHD_OPTION_NOTIFY_COMPLETED, on_completed, E,
                       MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)120,
                       /* room for the header floods that tests ask for */
                       MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)(1024 * 1024), MHD_OPTION_END);
  if (d) {
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    *bound = info ? info->port : port;
  }
  return d;
}

int emu_listen(emu *E, unsigned api_port, unsigned cdn_port) {
  E->api = listen_on(E, api_port, on_api, &E->api_port);
  E->cdn = E->api ? listen_on(E, cdn_port, on_cdn, &E->cdn_port) : NULL;
  return E->api && E->cdn ? 0 : -1;
}

/* Wake every sleeping answer, then stop the listeners (which joins their
 * threads): after this no thread touches E. */
void emu_shutdown(emu *E) {
  pthread_mutex_lock(&E->wait_m);
  E->stopping = 1;
  pthread_cond_broadcast(&E->wake);
  pthread_mutex_unlock(&E->wait_m);
  if (E->api)
    MHD_stop_daemon(E->api);
  if (E->cdn)
    MHD_stop_daemon(E->cdn);
  E->api = E->cdn = NULL;
}
