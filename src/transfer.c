/* One transfer, on the caller's thread: its easy handle built from a spec
 * table (url, headers, a body or multipart parts streamed from disk or
 * memory, limits) before it is handed over, and its result read after it
 * came back. What libcurl hands it meanwhile, on the network thread, is
 * record.c's. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "http.h"

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

/* hex (2 * n digits) into out; 0 when it is not that. */
static int unhex(const char *hex, unsigned char *out, size_t n) {
  if (!hex || strlen(hex) != 2 * n)
    return 0;
  for (size_t i = 0; i < 2 * n; i++) {
    char c = hex[i];
    int v = c >= '0' && c <= '9'   ? c - '0'
            : c >= 'a' && c <= 'f' ? c - 'a' + 10
            : c >= 'A' && c <= 'F' ? c - 'A' + 10
                                   : -1;
    if (v < 0)
      return 0;
    out[i / 2] = (unsigned char)(i % 2 ? out[i / 2] | v : v << 4);
  }
  return 1;
}

/* parts = { {name=, value=} | {name=, path=, filename=, type=[, stamp=, sha256=, bytes=]} |
 *           {name=, data=, filename=, type=} } */
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
      /* streamed from disk at send time, and still the bytes checked */
      unsigned char sha[32];
      ie_file_check check = {ie_opt_lstring(L, p, "stamp", NULL), NULL, (curl_off_t)ie_opt_integer(L, p, "bytes", -1)};
      if (unhex(ie_opt_lstring(L, p, "sha256", NULL), sha, sizeof sha))
        check.sha256 = sha;
      rc = ie_part_file(part, path, &check, t, (int)i);
      if (rc == CURLE_READ_ERROR) { /* gone or unreadable since it was checked: the caller's to say */
        t->unreadable = (int)i;
        lua_settop(L, parts - 1);
        return;
      }
    } else if (rc == CURLE_OK && data) {
      rc = ie_part_memory(part, data, dlen);
      if (rc == CURLE_OK) {
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

/* spec.inpaint = {base=, mask=, preserve=, feather=, tolerance=, quality=,
 * keep_rgba=}: an edit with a mask, whose figures (or composite) the
 * decoder makes from image 1 and the mask as sent. Copies: the decoder may
 * run after the Lua strings are gone. */
static void setup_inpaint(lua_State *L, int spec, transfer *t) {
  lua_getfield(L, spec, "inpaint");
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return;
  }
  luaL_argcheck(L, lua_istable(L, -1) && t->decode, spec, "spec.inpaint: a table, with spec.decode");
  int o = lua_gettop(L);
  size_t bn, mn;
  const char *b = ie_opt_lstring(L, o, "base", &bn), *mk = ie_opt_lstring(L, o, "mask", &mn);
  luaL_argcheck(L, b && mk, spec, "spec.inpaint: base and mask required");
  ie_inpaint_req *r = (ie_inpaint_req *)calloc(1, sizeof *r);
  if (r)
    r->base = (unsigned char *)malloc(bn + 1), r->mask = (unsigned char *)malloc(mn + 1);
  if (!r || !r->base || !r->mask) {
    ie_inpaint_req_free(r);
    luaL_error(L, "out of memory");
    return;
  }
  t->inpaint = r; /* freed with t, whatever happens next */
  memcpy(r->base, b, bn), memcpy(r->mask, mk, mn);
  r->in.base = r->base, r->in.bn = bn, r->in.mask = r->mask, r->in.mn = mn;
  r->in.preserve = ie_opt_bool(L, o, "preserve"), r->in.keep_rgba = ie_opt_bool(L, o, "keep_rgba");
  r->in.feather = (int)ie_opt_integer(L, o, "feather", 4);
  r->in.tolerance = (int)ie_opt_integer(L, o, "tolerance", 30);
  r->in.quality = (int)ie_opt_integer(L, o, "quality", 90);
  luaL_argcheck(L, r->in.feather >= 0 && r->in.feather <= 256 && r->in.tolerance >= 0 && r->in.tolerance <= 255 &&
                       r->in.quality >= 1 && r->in.quality <= 100,
                spec, "spec.inpaint: feather, tolerance or quality out of range");
  r->in.lim = t->limits;
  lua_pop(L, 1);
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
  t->limits.pixels = (lua_Integer)ie_opt_number(L, spec, "max_pixels", IE_MAX_PIXELS);
  t->limits.bytes = (lua_Integer)ie_opt_number(L, spec, "max_decode_bytes", IE_MAX_DECODE_BYTES);
  t->drop_pixels = ie_opt_bool(L, spec, "drop_pixels");
  setup_inpaint(L, spec, t);
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
  ie_transfer_callbacks(e, t);
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
  /* method: the Files routes' DELETE; GET and POST follow from the body. */
  const char *method = ie_opt_lstring(L, spec, "method", NULL);
  luaL_argcheck(L, !method || !strcmp(method, "GET") || !strcmp(method, "POST") || !strcmp(method, "DELETE"), spec,
                "spec.method: GET, POST or DELETE");
  luaL_argcheck(L, !method || !strcmp(method, "POST") || !t->has_body, spec, "spec.method: a body needs POST");
  if (method && !strcmp(method, "DELETE"))
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, "DELETE");
  else if (method && !strcmp(method, "POST") && !t->has_body) {
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, 0L);
    curl_easy_setopt(e, CURLOPT_COPYPOSTFIELDS, "");
  }
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
    set_str(L, ie_ratelimit_headers[i] + 12, t->ratelimit[i]);
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
  if (t->changed)
    return "changed"; /* before "lost": the abort is why the body stopped */
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
    if (t->changed) {
      lua_pushinteger(L, t->changed);
      lua_setfield(L, -2, "part");
    }
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
