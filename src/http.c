/* HTTP transfers on libcurl's multi interface.
 *
 * A Multi owns one CURLM (and so one connection pool); a Transfer is one
 * request on it. Every libcurl callback here is plain C that only records
 * bytes and counters: no Lua function is ever called from inside libcurl, so
 * no Lua error can longjmp through it. Lua reads the results after
 * Multi:perform() returns. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <curl/curl.h>

#include "imgedit.h"
#include "sse.h"

#define MULTI_MT "imgedit.multi"
#define XFER_MT "imgedit.transfer"
#define MAX_HEADER_BYTES (64 * 1024)

typedef struct transfer transfer;

typedef struct multi {
  CURLM *m;
  transfer *head; /* transfers currently added to m */
  int count;
} multi;

/* An in-memory file part: points into a Lua string that the transfer anchors. */
typedef struct memsrc {
  const char *p;
  size_t len, pos;
} memsrc;

struct transfer {
  CURL *e;
  curl_mime *mime;
  struct curl_slist *headers;
  multi *owner;
  transfer *next, *prev;
  char *body;
  size_t len, cap, max;
  size_t header_bytes;
  int done, too_large, header_flood, canceled, closed, idle, answering;
  /* A billable request: libcurl may not send it again once the whole body
   * went out (see on_prereq). */
  int billable, sends, resend_blocked, has_body;
  int sent_all; /* the whole body went out at least once: sticky across re-sends */
  double idle_limit, last_move; /* seconds; no bytes moving while sending or receiving */
  CURLcode code;
  long status;
  curl_off_t ul_now, ul_total, dl_now, dl_total;
  char ctype[128], retry_after[64], retry_after_ms[32], request_id[128], should_retry[8];
  char errbuf[CURL_ERROR_SIZE];
  /* Streaming answers: decided by the answer's content type. */
  int stream_wanted, mode_decided, sse_on;
  sse parser;
  sse_queue events;
};

/* ---- libcurl callbacks: C only ---- */

static size_t on_body(char *p, size_t sz, size_t n, void *ud) {
  transfer *t = (transfer *)ud;
  size_t len = sz * n;
  if (t->stream_wanted && !t->mode_decided) {
    /* A stream only if the service answers with one (an error is JSON). */
    t->mode_decided = 1;
    t->sse_on = strncasecmp(t->ctype, "text/event-stream", 17) == 0;
    if (t->sse_on) {
      sse_init(&t->parser, t->max);
      sse_queue_init(&t->events, t->max);
    }
  }
  if (t->sse_on) {
    if (sse_feed(&t->parser, p, len, sse_queue_push, &t->events) != 0 || t->events.failed) {
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

static size_t on_header(char *p, size_t sz, size_t n, void *ud) {
  transfer *t = (transfer *)ud;
  size_t len = sz * n, v;
  t->header_bytes += len;
  if (t->header_bytes > MAX_HEADER_BYTES) {
    t->header_flood = 1;
    return 0;
  }
  if (len > 5 && strncmp(p, "HTTP/", 5) == 0) {
    t->answering = 1;
    /* A new response (after a redirect or 100-continue): forget the old headers. */
    t->ctype[0] = t->retry_after[0] = t->retry_after_ms[0] = t->request_id[0] = t->should_retry[0] = '\0';
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

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Records byte counts, and enforces the idle limit: while the request is
 * being sent or the answer received, bytes must keep moving. The wait for
 * the model in between (everything sent, no answer yet) may be long and is
 * governed by the whole-attempt timeout alone. */
static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow) {
  transfer *t = (transfer *)ud;
  double now = now_s();
  if (dlnow != t->dl_now || ulnow != t->ul_now || t->last_move == 0)
    t->last_move = now;
  t->dl_total = dltotal, t->dl_now = dlnow, t->ul_total = ultotal, t->ul_now = ulnow;
  if (ultotal > 0 && ulnow >= ultotal)
    t->sent_all = 1;
  int sending = ultotal > 0 && ulnow < ultotal && !t->answering;
  if (t->idle_limit > 0 && (sending || t->answering) && now - t->last_move > t->idle_limit) {
    t->idle = 1;
    return 1;
  }
  return t->canceled; /* non-zero aborts the transfer */
}

/* libcurl sends a request again by itself when a reused connection dies
 * before any answer: up to five more times, once per pooled connection. The
 * service bills a request it received even if the answer never arrives, so a
 * billable request goes out once per transfer; the caller's retry policy, in
 * Lua, decides about another attempt and makes it visible. This runs before
 * each send, on a new or a reused connection alike. */
static int on_prereq(void *ud, char *ip, char *local_ip, int port, int local_port) {
  transfer *t = (transfer *)ud;
  (void)ip, (void)local_ip, (void)port, (void)local_port;
  t->sends++;
  if (t->sends > 1 && t->billable) {
    t->resend_blocked = 1;
    return CURL_PREREQFUNC_ABORT;
  }
  return CURL_PREREQFUNC_OK;
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
  return 0;
}

static multi *check_open_multi(lua_State *L) {
  multi *m = (multi *)luaL_checkudata(L, 1, MULTI_MT);
  if (!m->m)
    luaL_error(L, "attempt to use a closed multi handle");
  return m;
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
static void add_parts(lua_State *L, int spec, transfer *t) {
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
    else if (rc == CURLE_OK && path)
      rc = curl_mime_filedata(part, path); /* streamed from disk at send time */
    else if (rc == CURLE_OK && data) {
      memsrc *ms = malloc(sizeof *ms);
      if (!ms)
        rc = CURLE_OUT_OF_MEMORY;
      else {
        ms->p = data, ms->len = dlen, ms->pos = 0;
        rc = curl_mime_data_cb(part, (curl_off_t)dlen, mem_read, mem_seek, free, ms);
        if (rc != CURLE_OK)
          free(ms);
        /* Anchor the string for as long as the transfer lives. */
        ie_getuservalue(L, 3);
        lua_getfield(L, p, "data");
        lua_rawseti(L, -2, (lua_Integer)ie_len(L, -2) + 1);
        lua_pop(L, 1);
      }
    }
    if (rc == CURLE_OK && (path || data))
      rc = curl_mime_filename(part, filename);
    if (rc == CURLE_OK && type)
      rc = curl_mime_type(part, type);
    if (rc != CURLE_OK)
      luaL_error(L, "cannot build part %d: %s", (int)i, curl_easy_strerror(rc));
    lua_settop(L, parts);
  }
  lua_pop(L, 1);
  curl_easy_setopt(t->e, CURLOPT_MIMEPOST, t->mime);
}

/* multi:start(spec) -> transfer. The transfer starts on the next perform(). */
static int multi_start(lua_State *L) {
  multi *m = check_open_multi(L);
  luaL_checktype(L, 2, LUA_TTABLE);
  /* Create safely: an empty, finalisable object first, then the resources. */
  transfer *t = (transfer *)ie_newuserdata1(L, sizeof *t);
  memset(t, 0, sizeof *t);
  luaL_setmetatable(L, XFER_MT);
  lua_newtable(L); /* anchors: the multi, and strings sent from memory */
  lua_pushvalue(L, 1);
  lua_setfield(L, -2, "multi");
  ie_setuservalue(L, -2);
  int spec = 2; /* stack: multi, spec, transfer */
  t->e = curl_easy_init();
  if (!t->e)
    return luaL_error(L, "curl_easy_init failed");
  size_t n;
  const char *url = ie_opt_lstring(L, spec, "url", &n);
  luaL_argcheck(L, url != NULL, 2, "spec.url required");
  t->max = (size_t)ie_opt_number(L, spec, "max_response_bytes", 64.0 * 1024 * 1024);
  t->idle_limit = ie_opt_number(L, spec, "idle_timeout", 0);
  t->stream_wanted = ie_opt_bool(L, spec, "stream");
  t->billable = ie_opt_bool(L, spec, "billable");
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
  curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                   (long)(ie_opt_number(L, spec, "connect_timeout", 15) * 1000));
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
    add_parts(L, spec, t);
  }
  t->has_body = body != NULL || t->mime != NULL;
  CURLMcode mc = curl_multi_add_handle(m->m, e);
  if (mc != CURLM_OK)
    return luaL_error(L, "curl_multi_add_handle: %s", curl_multi_strerror(mc));
  t->owner = m;
  t->next = m->head;
  if (m->head)
    m->head->prev = t;
  m->head = t;
  m->count++;
  lua_settop(L, 3);
  return 1;
}

/* Record finished transfers; returns how many finished. */
static int collect(multi *m) {
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
  }
  return n;
}

/* multi:perform(timeout_s) -> number of transfers still running. Waits up to
 * timeout_s for activity unless something already finished; with nothing in
 * flight it simply sleeps, which is what a caller waiting to retry wants. */
static int multi_perform(lua_State *L) {
  multi *m = check_open_multi(L);
  lua_Number timeout = luaL_optnumber(L, 2, 0);
  int running = 0;
  CURLMcode mc = curl_multi_perform(m->m, &running);
  int finished = mc == CURLM_OK ? collect(m) : 0;
  if (mc == CURLM_OK && timeout > 0 && finished == 0) {
    mc = curl_multi_poll(m->m, NULL, 0, (int)(timeout * 1000), NULL);
    if (mc == CURLM_OK)
      mc = curl_multi_perform(m->m, &running);
    if (mc == CURLM_OK)
      collect(m);
  }
  if (mc != CURLM_OK) /* out of memory or a broken handle: not a transfer's failure */
    return luaL_error(L, "curl multi: %s", curl_multi_strerror(mc));
  lua_pushinteger(L, m->count);
  return 1;
}

/* ---- transfer methods ---- */

static int transfer_done(lua_State *L) {
  transfer *t = check_open_transfer(L);
  lua_pushboolean(L, t->done);
  return 1;
}

static void set_str(lua_State *L, const char *k, const char *v) {
  if (v && *v) {
    lua_pushstring(L, v);
    lua_setfield(L, -2, k);
  }
}

static const char *reason_of(const transfer *t) {
  if (t->canceled)
    return "canceled";
  if (t->too_large || t->code == CURLE_FILESIZE_EXCEEDED)
    return "too_large";
  if (t->header_flood)
    return "headers";
  if (t->idle)
    return "idle";
  if (t->resend_blocked)
    return "lost";
  switch (t->code) {
  case CURLE_OK: return NULL;
  case CURLE_OPERATION_TIMEDOUT: return "timeout";
  case CURLE_READ_ERROR: return "read";
  case CURLE_PARTIAL_FILE: return "partial";
  case CURLE_UNSUPPORTED_PROTOCOL: return "protocol";
  case CURLE_TOO_MANY_REDIRECTS: return "redirects";
  case CURLE_PEER_FAILED_VERIFICATION:
  case CURLE_SSL_CONNECT_ERROR:
  case CURLE_SSL_CERTPROBLEM: return "tls";
  default: return "network";
  }
}

/* transfer:result() -> nil while running; else a table describing the answer. */
static int transfer_result(lua_State *L) {
  transfer *t = check_open_transfer(L);
  if (!t->done) {
    lua_pushnil(L);
    return 1;
  }
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
  }
  lua_pushinteger(L, t->status);
  lua_setfield(L, -2, "status");
  set_str(L, "content_type", t->ctype);
  set_str(L, "retry_after", t->retry_after);
  set_str(L, "retry_after_ms", t->retry_after_ms);
  set_str(L, "request_id", t->request_id);
  set_str(L, "should_retry", t->should_retry);
  lua_pushlstring(L, t->body ? t->body : "", t->len);
  lua_setfield(L, -2, "body");
  lua_pushboolean(L, t->sent_all || !t->has_body);
  lua_setfield(L, -2, "sent_all");
  lua_pushinteger(L, (lua_Integer)t->ul_now);
  lua_setfield(L, -2, "bytes_up");
  lua_pushboolean(L, t->answering);
  lua_setfield(L, -2, "answered");
  /* A stream that was cut before its first byte is still a stream. */
  lua_pushboolean(L, t->sse_on || (t->stream_wanted && strncasecmp(t->ctype, "text/event-stream", 17) == 0));
  lua_setfield(L, -2, "stream");
  lua_pushinteger(L, (lua_Integer)t->dl_now);
  lua_setfield(L, -2, "bytes_down");
  char *eff = NULL;
  if (t->e && curl_easy_getinfo(t->e, CURLINFO_EFFECTIVE_URL, &eff) == CURLE_OK && eff)
    set_str(L, "url", eff);
  return 1;
}

/* transfer:progress() -> ul_now, ul_total, dl_now, dl_total, answering */
static int transfer_progress(lua_State *L) {
  transfer *t = check_open_transfer(L);
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

static int l_multi(lua_State *L) {
  multi *m = (multi *)ie_newuserdata(L, sizeof *m);
  memset(m, 0, sizeof *m);
  luaL_setmetatable(L, MULTI_MT);
  m->m = curl_multi_init();
  if (!m->m)
    return luaL_error(L, "curl_multi_init failed");
  return 1;
}

static int l_now(lua_State *L) {
  lua_pushnumber(L, now_s());
  return 1;
}

static int l_curl_version(lua_State *L) {
  const curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
  lua_pushstring(L, v->version);
  return 1;
}

static void new_class(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction close,
                      lua_CFunction tostring) {
  luaL_newmetatable(L, name);
  lua_newtable(L);
  luaL_setfuncs(L, methods, 0);
  lua_pushcfunction(L, close);
  lua_setfield(L, -2, "close");
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, close);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, close);
  lua_setfield(L, -2, "__close");
  lua_pushcfunction(L, tostring);
  lua_setfield(L, -2, "__tostring");
  lua_pop(L, 1);
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
                                          {"progress", transfer_progress},
                                          {"events", transfer_events},
                                          {"cancel", transfer_cancel},
                                          {NULL, NULL}};
  new_class(L, MULTI_MT, multi_methods, multi_close, multi_tostring);
  new_class(L, XFER_MT, xfer_methods, transfer_close, transfer_tostring);
  static const luaL_Reg fns[] = {
      {"multi", l_multi}, {"curl_version", l_curl_version}, {"now", l_now}, {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
}
