/* One transfer: its easy handle built from a spec table (url, headers, a
 * body or multipart parts streamed from disk or memory, limits), the libcurl
 * callbacks that record its bytes and counters, and its result.
 *
 * Every callback here is plain C that only records: no Lua function is ever
 * called from inside libcurl, so no Lua error can longjmp through it. */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "http.h"

/* ---- libcurl callbacks: C only ---- */

/* Events parsed here go to the caller's queue in one move under the lock,
 * with a decode job for each that carries a picture when pictures are to
 * be decoded. Returns whether the queue is over its bound (its data and
 * the decoded pictures waiting in it), which the decoder may also find. */
static int hand_events(transfer *t) {
  multi *m = t->hub;
  pthread_mutex_lock(&m->mu);
  if (t->parsed.n == 0 && !t->parsed.failed) {
    int failed = t->events.failed;
    pthread_mutex_unlock(&m->mu);
    return failed;
  }
  size_t first = t->events.n;
  sse_queue_move(&t->events, &t->parsed);
  for (size_t i = first; t->decode && i < t->events.n; i++) {
    sse_event *e = &t->events.ev[i];
    if (memmem(e->data, e->dlen, "\"b64_json\"", 10))
      ie_dec_submit_locked(m, t, e->data, e->dlen, 1, (ie_decoded **)&e->extra);
  }
  int failed = t->events.failed;
  ie_changed_locked(m);
  pthread_mutex_unlock(&m->mu);
  return failed;
}

static size_t on_body(char *p, size_t sz, size_t n, void *ud) {
  transfer *t = (transfer *)ud;
  size_t len = sz * n;
  t->last_byte = ie_now();
  if (t->stream_wanted && !t->mode_decided) {
    /* A stream only if the service answers with one (an error is JSON). */
    t->mode_decided = 1;
    t->sse_on = strncasecmp(t->ctype, "text/event-stream", 17) == 0;
    if (t->sse_on) {
      sse_init(&t->parser, t->max);
      sse_queue_init(&t->parsed, t->max);
    }
  }
  if (t->sse_on) {
    int rc = sse_feed(&t->parser, p, len, sse_queue_push, &t->parsed);
    if (hand_events(t) || rc != 0) {
      t->too_large = 1;
      return 0;
    }
    return len;
  }
  if (t->len + len > t->max) {
    t->too_large = 1;
    return 0; /* CURLE_WRITE_ERROR */
  }
  if (t->len + len > t->cap) {
    size_t cap = t->cap ? t->cap : 16384;
    while (cap < t->len + len)
      cap *= 2;
    if (cap > t->max)
      cap = t->max;
    char *nb = realloc(t->body, cap);
    if (!nb)
      return 0;
    t->body = nb, t->cap = cap;
  }
  memcpy(t->body + t->len, p, len);
  t->len += len;
  return len;
}

static void copy_value(char *dst, size_t dstlen, const char *v, size_t n) {
  while (n > 0 && (*v == ' ' || *v == '\t'))
    v++, n--;
  while (n > 0 && (v[n - 1] == '\r' || v[n - 1] == '\n' || v[n - 1] == ' '))
    n--;
  if (n >= dstlen)
    n = dstlen - 1;
  memcpy(dst, v, n);
  dst[n] = '\0';
}

static int header_is(const char *line, size_t n, const char *name, size_t *vstart) {
  size_t k = strlen(name);
  if (n > k && strncasecmp(line, name, k) == 0 && line[k] == ':') {
    *vstart = k + 1;
    return 1;
  }
  return 0;
}

/* The rate-limit headers OpenAI documents, kept for the caller's pacing. */
static const char *const RATELIMIT[9] = {
    "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",   "x-ratelimit-remaining-tokens",   "x-ratelimit-reset-tokens",
    "x-ratelimit-limit-images",   "x-ratelimit-remaining-images",   "x-ratelimit-reset-images"};

static size_t on_header(char *p, size_t sz, size_t n, void *ud) {
  transfer *t = (transfer *)ud;
  size_t len = sz * n, v;
  t->header_bytes += len;
  if (t->header_bytes > MAX_HEADER_BYTES) {
    t->header_flood = 1;
    return 0;
  }
  t->last_move = ie_now(); /* the answer's headers are bytes moving */
  if (len > 5 && strncmp(p, "HTTP/", 5) == 0) {
    if (!t->answering) {
      t->answering = 1;
      pthread_mutex_lock(&t->hub->mu);
      ie_snap_locked(t);
      ie_changed_locked(t->hub);
      pthread_mutex_unlock(&t->hub->mu);
    }
    /* A new response (after a redirect or 100-continue): forget the old headers. */
    t->ctype[0] = t->retry_after[0] = t->retry_after_ms[0] = t->request_id[0] = t->should_retry[0] = '\0';
    memset(t->ratelimit, 0, sizeof t->ratelimit);
    return len;
  }
  if (len > 12 && strncasecmp(p, "x-ratelimit-", 12) == 0) {
    for (int i = 0; i < 9; i++) {
      if (header_is(p, len, RATELIMIT[i], &v)) {
        copy_value(t->ratelimit[i], sizeof t->ratelimit[i], p + v, len - v);
        break;
      }
    }
    return len;
  }
  if (header_is(p, len, "content-type", &v))
    copy_value(t->ctype, sizeof t->ctype, p + v, len - v);
  else if (header_is(p, len, "retry-after", &v))
    copy_value(t->retry_after, sizeof t->retry_after, p + v, len - v);
  else if (header_is(p, len, "retry-after-ms", &v))
    copy_value(t->retry_after_ms, sizeof t->retry_after_ms, p + v, len - v);
  else if (header_is(p, len, "x-request-id", &v))
    copy_value(t->request_id, sizeof t->request_id, p + v, len - v);
  else if (header_is(p, len, "x-should-retry", &v))
    copy_value(t->should_retry, sizeof t->should_retry, p + v, len - v);
  return len;
}

double ie_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Whether bytes of the answer wait on e's connection, unread: on a busy
 * machine the network thread may not have run for longer than idle_timeout,
 * and an answer sitting in the socket is not a stalled one. */
static int bytes_waiting(CURL *e) {
  curl_socket_t fd = CURL_SOCKET_BAD;
  if (curl_easy_getinfo(e, CURLINFO_ACTIVESOCKET, &fd) != CURLE_OK || fd == CURL_SOCKET_BAD)
    return 0;
  struct pollfd p = {fd, POLLIN, 0};
  return poll(&p, 1, 0) == 1 && (p.revents & POLLIN) != 0;
}

/* Records byte counts, and enforces the idle limit: while the request is
 * being sent or the answer received, bytes must keep moving. The model's
 * time is governed by the whole-attempt timeout alone, never by this: the
 * wait between the last byte sent and the answer's first body byte (some
 * gateways send the headers at once, then think), and in a stream the
 * wait between whole events (the model makes the next partial). */
static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal, curl_off_t ulnow) {
  transfer *t = (transfer *)ud;
  double now = ie_now();
  if (dlnow != t->dl_now || ulnow != t->ul_now || t->last_move == 0)
    t->last_move = now;
  if (dlnow != t->dl_now || ulnow != t->ul_now || dltotal != t->dl_total || ultotal != t->ul_total) {
    t->dl_total = dltotal, t->dl_now = dlnow, t->ul_total = ultotal, t->ul_now = ulnow;
    pthread_mutex_lock(&t->hub->mu);
    ie_snap_locked(t);
    ie_changed_locked(t->hub);
    pthread_mutex_unlock(&t->hub->mu);
  }
  if (ultotal > 0 && ulnow >= ultotal)
    t->sent_all = 1;
  int sending = ultotal > 0 && ulnow < ultotal && !t->answering;
  int receiving = t->answering && dlnow > 0 && (!t->sse_on || sse_mid_event(&t->parser));
  if (t->idle_limit > 0 && (sending || receiving) && now - t->last_move > t->idle_limit) {
    if (receiving && bytes_waiting(t->e)) { /* they came; this thread was slow to read them */
      t->last_move = now;
      return 0;
    }
    t->idle = 1;
    return 1; /* non-zero aborts the transfer */
  }
  return 0;
}

/* libcurl sends a request again by itself when a reused connection dies
 * before any answer: up to five more times, once per pooled connection. The
 * service bills a request it received even if the answer never arrives, so a
 * billable request goes out once per transfer; the caller's retry policy, in
 * Lua, decides about another attempt and makes it visible. Two resends are
 * let through, because nothing of the send before can have been acted on:
 *  - it went into a connection the server had closed while it sat idle;
 *  - it was an HTTP/2 stream the server refused (REFUSED_STREAM, or above
 *    the last stream id of a GOAWAY), which HTTP/2 promises was not
 *    processed. libcurl retries those silently (no error message), while a
 *    stream lost with its connection carries one ("Recv failure: ...").
 * This runs before each send, on a new or a reused connection alike. */
static int on_prereq(void *ud, char *ip, char *local_ip, int port, int local_port) {
  transfer *t = (transfer *)ud;
  (void)ip, (void)local_ip, (void)port;
  t->sends++;
  if (t->sends > 1 && t->billable) {
    int refused = t->sent_on_h2 && t->errbuf[0] == '\0' && !t->answering;
    if (!t->sent_to_closed && !refused) {
      t->resend_blocked = 1;
      return CURL_PREREQFUNC_ABORT;
    }
    t->sent_all = 0; /* what went before never reached the service */
    t->refused += refused;
  }
  t->sent_to_closed = ie_net_peer_closed(t->hub, local_port);
  t->sent_on_h2 = ie_net_on_h2(t->e);
  return CURL_PREREQFUNC_OK;
}

/* A file part, streamed from disk at send time. Opened here rather than by
 * libcurl (curl_mime_filedata), so that it is close-on-exec: a program the
 * caller spawns meanwhile must not hold the caller's files. pread keeps the
 * rewind libcurl may ask for trivial. */
typedef struct filesrc {
  int fd;
  curl_off_t size, pos;
} filesrc;

static size_t file_read(char *buf, size_t sz, size_t n, void *arg) {
  filesrc *f = (filesrc *)arg;
  size_t k = sz * n;
  if ((curl_off_t)k > f->size - f->pos)
    k = (size_t)(f->size - f->pos);
  if (k == 0)
    return 0;
  ssize_t got = pread(f->fd, buf, k, (off_t)f->pos);
  if (got <= 0) /* shrunk or unreadable since it was opened */
    return CURL_READFUNC_ABORT;
  f->pos += got;
  return (size_t)got;
}

static int file_seek(void *arg, curl_off_t off, int origin) {
  filesrc *f = (filesrc *)arg;
  if (origin != SEEK_SET || off < 0 || off > f->size)
    return CURL_SEEKFUNC_CANTSEEK;
  f->pos = off;
  return CURL_SEEKFUNC_OK;
}

static void file_free(void *arg) {
  filesrc *f = (filesrc *)arg;
  close(f->fd);
  free(f);
}

/* The file at path as a part's data; CURLE_READ_ERROR when it cannot be
 * opened (gone or unreadable since it was checked). */
static CURLcode file_part(curl_mimepart *part, const char *path) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  struct stat st;
  if (fd < 0)
    return CURLE_READ_ERROR;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return CURLE_READ_ERROR;
  }
  filesrc *f = malloc(sizeof *f);
  if (!f) {
    close(fd);
    return CURLE_OUT_OF_MEMORY;
  }
  f->fd = fd, f->size = (curl_off_t)st.st_size, f->pos = 0;
  CURLcode rc = curl_mime_data_cb(part, f->size, file_read, file_seek, file_free, f);
  if (rc != CURLE_OK)
    file_free(f);
  return rc;
}

static size_t mem_read(char *buf, size_t sz, size_t n, void *arg) {
  memsrc *m = (memsrc *)arg;
  size_t k = sz * n;
  if (k > m->len - m->pos)
    k = m->len - m->pos;
  memcpy(buf, m->p + m->pos, k);
  m->pos += k;
  return k;
}

static int mem_seek(void *arg, curl_off_t off, int origin) {
  memsrc *m = (memsrc *)arg;
  if (origin != SEEK_SET || off < 0 || (size_t)off > m->len)
    return CURL_SEEKFUNC_CANTSEEK;
  m->pos = (size_t)off;
  return CURL_SEEKFUNC_OK;
}

/* ---- building a request from a spec table ---- */

static void add_headers(lua_State *L, int spec, transfer *t) {
  lua_getfield(L, spec, "headers");
  if (lua_istable(L, -1)) {
    lua_Integer n = ie_len(L, -1);
    for (lua_Integer i = 1; i <= n; i++) {
      ie_rawgeti(L, -1, i);
      const char *h = luaL_checkstring(L, -1);
      if (strpbrk(h, "\r\n"))
        luaL_error(L, "header %d contains a line break", (int)i);
      struct curl_slist *nl = curl_slist_append(t->headers, h);
      if (!nl)
        luaL_error(L, "out of memory");
      t->headers = nl;
      lua_pop(L, 1);
    }
  }
  lua_pop(L, 1);
}

/* parts = { {name=, value=} | {name=, path=, filename=, type=} | {name=, data=, filename=, type=} } */
static void add_parts(lua_State *L, int spec, int self, transfer *t) {
  lua_getfield(L, spec, "parts");
  if (!lua_istable(L, -1)) {
    lua_pop(L, 1);
    return;
  }
  int parts = lua_gettop(L);
  t->mime = curl_mime_init(t->e);
  if (!t->mime)
    luaL_error(L, "out of memory");
  lua_Integer n = ie_len(L, parts);
  for (lua_Integer i = 1; i <= n; i++) {
    ie_rawgeti(L, parts, i);
    int p = lua_gettop(L);
    luaL_checktype(L, p, LUA_TTABLE);
    size_t len = 0;
    const char *name = ie_opt_lstring(L, p, "name", &len);
    const char *value = ie_opt_lstring(L, p, "value", &len);
    const char *path = ie_opt_lstring(L, p, "path", NULL);
    size_t dlen = 0;
    const char *data = ie_opt_lstring(L, p, "data", &dlen);
    const char *filename = ie_opt_lstring(L, p, "filename", NULL);
    const char *type = ie_opt_lstring(L, p, "type", NULL);
    curl_mimepart *part = curl_mime_addpart(t->mime);
    CURLcode rc = part ? curl_mime_name(part, name) : CURLE_OUT_OF_MEMORY;
    if (rc == CURLE_OK && value)
      rc = curl_mime_data(part, value, len);
    else if (rc == CURLE_OK && path) {
      rc = file_part(part, path);   /* streamed from disk at send time */
      if (rc == CURLE_READ_ERROR) { /* gone or unreadable since it was checked: the caller's to say */
        t->unreadable = (int)i;
        lua_settop(L, parts - 1);
        return;
      }
    } else if (rc == CURLE_OK && data) {
      memsrc *ms = malloc(sizeof *ms);
      if (!ms)
        rc = CURLE_OUT_OF_MEMORY;
      else {
        ms->p = data, ms->len = dlen, ms->pos = 0;
        rc = curl_mime_data_cb(part, (curl_off_t)dlen, mem_read, mem_seek, free, ms);
        if (rc != CURLE_OK)
          free(ms);
        /* Anchor the string for as long as the transfer lives. */
        ie_getuservalue(L, self);
        lua_getfield(L, p, "data");
        lua_rawseti(L, -2, (lua_Integer)ie_len(L, -2) + 1);
        lua_pop(L, 1);
      }
    }
    if (rc == CURLE_OK && (path || data)) {
      const char *base = path ? strrchr(path, '/') : NULL;
      rc = curl_mime_filename(part, filename ? filename : base ? base + 1 : path);
    }
    if (rc == CURLE_OK && type)
      rc = curl_mime_type(part, type);
    if (rc != CURLE_OK)
      luaL_error(L, "cannot build part %d: %s", (int)i, curl_easy_strerror(rc));
    lua_settop(L, parts);
  }
  lua_pop(L, 1);
  curl_easy_setopt(t->e, CURLOPT_MIMEPOST, t->mime);
}

void ie_transfer_setup(lua_State *L, int spec, int self, transfer *t, multi *m) {
  t->e = curl_easy_init();
  if (!t->e)
    luaL_error(L, "curl_easy_init failed");
  size_t n;
  const char *url = ie_opt_lstring(L, spec, "url", &n);
  luaL_argcheck(L, url != NULL, spec, "spec.url required");
  t->max = (size_t)ie_opt_number(L, spec, "max_response_bytes", 64.0 * 1024 * 1024);
  t->idle_limit = ie_opt_number(L, spec, "idle_timeout", 0);
  t->stream_wanted = ie_opt_bool(L, spec, "stream");
  t->billable = ie_opt_bool(L, spec, "billable");
  /* decode: "json" (each b64_json of the answer, or of a stream's events)
   * or "bytes" (the answer is the picture), decoded to RGBA off this thread. */
  const char *dec = ie_opt_lstring(L, spec, "decode", NULL);
  luaL_argcheck(L, !dec || !strcmp(dec, "json") || !strcmp(dec, "bytes"), spec, "spec.decode: json or bytes");
  t->decode = dec != NULL;
  t->raw_picture = dec && !strcmp(dec, "bytes");
  t->max_px = (lua_Integer)ie_opt_number(L, spec, "max_pixels", 50e6);
  sse_queue_init(&t->events, t->max);
  t->events.free_extra = ie_decoded_free;
  CURL *e = t->e;
  curl_easy_setopt(e, CURLOPT_URL, url);
  curl_easy_setopt(e, CURLOPT_PRIVATE, t);
  curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->errbuf);
  curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, ie_opt_bool(L, spec, "follow") ? 1L : 0L);
  curl_easy_setopt(e, CURLOPT_MAXREDIRS, 5L);
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, t);
  curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, on_progress);
  curl_easy_setopt(e, CURLOPT_XFERINFODATA, t);
  curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, on_prereq);
  curl_easy_setopt(e, CURLOPT_PREREQDATA, t);
  curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
  ie_net_setup(e, m);
  t->via_proxy = m->net.proxy && *m->net.proxy;
  /* Over TLS, ALPN tells at handshake whether HTTP/2 multiplexing is there,
   * so waiting for it is cheap; over plain http it would hold every new
   * transfer until the first answer arrived. */
  if (strncasecmp(url, "https:", 6) == 0)
    curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
  curl_easy_setopt(e, CURLOPT_ACCEPT_ENCODING, "");
  /* Bigger reads and sends for file parts streamed from disk: a quarter of
   * the system calls of the 64 KB default (measured in bench/). */
  curl_easy_setopt(e, CURLOPT_UPLOAD_BUFFERSIZE, 256L * 1024);
  curl_easy_setopt(e, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)t->max);
  curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, (long)(ie_opt_number(L, spec, "timeout", 600) * 1000));
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, (long)(ie_opt_number(L, spec, "connect_timeout", 15) * 1000));
  const char *ua = ie_opt_lstring(L, spec, "user_agent", NULL);
  if (ua)
    curl_easy_setopt(e, CURLOPT_USERAGENT, ua);
  add_headers(L, spec, t);
  curl_easy_setopt(e, CURLOPT_HTTPHEADER, t->headers);
  const char *body = ie_opt_lstring(L, spec, "body", &n);
  if (body) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)n);
    curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, body);
  } else {
    add_parts(L, spec, self, t);
  }
  t->has_body = body != NULL || t->mime != NULL;
}

/* ---- the result ---- */

static void set_str(lua_State *L, const char *k, const char *v) {
  if (v && *v) {
    lua_pushstring(L, v);
    lua_setfield(L, -2, k);
  }
}

/* res.ratelimit = {["limit-requests"] = "60", ...}, only when the answer had any. */
static void push_ratelimit(lua_State *L, const transfer *t) {
  int any = 0;
  for (int i = 0; i < 9; i++) {
    if (!t->ratelimit[i][0])
      continue;
    if (!any)
      lua_createtable(L, 0, 9), any = 1;
    set_str(L, RATELIMIT[i] + 12, t->ratelimit[i]);
  }
  if (any)
    lua_setfield(L, -2, "ratelimit");
}

static const char *reason_of(const transfer *t) {
  if (t->canceled)
    return "canceled";
  if (t->forked)
    return "forked";
  if (t->too_large || t->code == CURLE_FILESIZE_EXCEEDED)
    return "too_large";
  if (t->header_flood)
    return "headers";
  if (t->idle)
    return "idle";
  if (t->resend_blocked)
    return "lost";
  if (t->via_proxy && (t->code == CURLE_COULDNT_CONNECT || t->code == CURLE_COULDNT_RESOLVE_PROXY))
    return "proxy";      /* the caller's proxy could not be reached */
  long connect_code = 0; /* a proxy's answer to CONNECT */
  if (t->code != CURLE_OK && t->e && curl_easy_getinfo(t->e, CURLINFO_HTTP_CONNECTCODE, &connect_code) == CURLE_OK &&
      connect_code >= 300)
    return "proxy";
  switch (t->code) {
  case CURLE_OK: return NULL;
  case CURLE_OPERATION_TIMEDOUT: return "timeout";
  case CURLE_READ_ERROR: return "read";
  case CURLE_PARTIAL_FILE: return "partial";
  case CURLE_UNSUPPORTED_PROTOCOL: return "protocol";
  case CURLE_TOO_MANY_REDIRECTS: return "redirects";
  case CURLE_COULDNT_RESOLVE_PROXY:
  case CURLE_PROXY: return "proxy";
  case CURLE_PEER_FAILED_VERIFICATION:
  case CURLE_SSL_CONNECT_ERROR:
  case CURLE_SSL_CERTPROBLEM:
  case CURLE_SSL_CIPHER:
  case CURLE_SSL_CACERT_BADFILE:
  case CURLE_SSL_ISSUER_ERROR:
  case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
  case CURLE_SSL_INVALIDCERTSTATUS: return "tls";
  default: return "network";
  }
}

void ie_transfer_push_result(lua_State *L, const transfer *t) {
  lua_createtable(L, 0, 16);
  const char *reason = reason_of(t);
  lua_pushboolean(L, reason == NULL);
  lua_setfield(L, -2, "ok");
  if (reason) {
    lua_pushstring(L, reason);
    lua_setfield(L, -2, "reason");
    lua_pushstring(L, t->errbuf[0] ? t->errbuf : curl_easy_strerror(t->code));
    lua_setfield(L, -2, "error");
    lua_pushinteger(L, t->code);
    lua_setfield(L, -2, "curl_code");
    if (strcmp(reason, "tls") == 0)
      set_str(L, "tls", ie_net_tls_problem(t));
    long cc = 0;
    if (t->e && curl_easy_getinfo(t->e, CURLINFO_HTTP_CONNECTCODE, &cc) == CURLE_OK && cc > 0) {
      lua_pushinteger(L, cc);
      lua_setfield(L, -2, "proxy_status");
    }
  }
  lua_pushinteger(L, t->status);
  lua_setfield(L, -2, "status");
  set_str(L, "content_type", t->ctype);
  set_str(L, "retry_after", t->retry_after);
  set_str(L, "retry_after_ms", t->retry_after_ms);
  set_str(L, "request_id", t->request_id);
  set_str(L, "should_retry", t->should_retry);
  push_ratelimit(L, t);
  lua_pushlstring(L, t->body ? t->body : "", t->len);
  lua_setfield(L, -2, "body");
  lua_pushboolean(L, t->sent_all || !t->has_body);
  lua_setfield(L, -2, "sent_all");
  lua_pushinteger(L, (lua_Integer)t->ul_now);
  lua_setfield(L, -2, "bytes_up");
  lua_pushboolean(L, t->answering);
  lua_setfield(L, -2, "answered");
  lua_pushinteger(L, t->refused);
  lua_setfield(L, -2, "refused_streams");
  /* A stream that was cut before its first byte is still a stream. */
  lua_pushboolean(L, t->sse_on || (t->stream_wanted && strncasecmp(t->ctype, "text/event-stream", 17) == 0));
  lua_setfield(L, -2, "stream");
  lua_pushinteger(L, (lua_Integer)t->dl_now);
  lua_setfield(L, -2, "bytes_down");
  char *eff = NULL;
  if (t->e && curl_easy_getinfo(t->e, CURLINFO_EFFECTIVE_URL, &eff) == CURLE_OK && eff)
    set_str(L, "url", eff);
}
