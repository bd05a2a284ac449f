/* What libcurl hands a transfer while it runs, on the network thread:
 * the answer's bytes (a body, or a stream's events to the caller's queue),
 * its headers, the progress and the idle rule, the guard against libcurl's
 * own re-send, and the bytes of file and memory parts as they are sent.
 *
 * Every callback here is plain C that only records: no Lua function is ever
 * called from inside libcurl, so no Lua error can longjmp through it. Each
 * runs on the network thread; what the caller reads is copied under the
 * multi's lock. */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http.h"
#include "platform.h"

/* Events parsed here go to the caller's queue in one move under the lock,
 * with a decode job for each that carries a picture when pictures are to
 * be decoded. Returns whether the queue went over its bound (the data of
 * the events waiting; their decoded pictures are bounded by decoder.c). */
static int hand_events(transfer *t) {
  if (t->parsed.n == 0 && !t->parsed.failed)
    return t->events.failed; /* only this thread writes it: no lock for a chunk with no whole event */
  multi *m = t->hub;
  pthread_mutex_lock(&m->mu);
  size_t first = t->events.n;
  sse_queue_move(&t->events, &t->parsed);
  for (size_t i = first; t->decode && i < t->events.n; i++) {
    sse_event *e = &t->events.ev[i];
    if (ie_memmem(e->data, e->dlen, "\"b64_json\"", 10)) /* a partial is never composited */
      ie_dec_submit_locked(m, t, e->data, e->dlen, 1, !ie_memmem(e->data, e->dlen, "\"partial_image_index\"", 21),
                           (ie_decoded **)&e->extra);
  }
  int failed = t->events.failed;
  ie_changed_locked(m);
  ie_wake_locked(m);
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
const char *const ie_ratelimit_headers[9] = {
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
      if (header_is(p, len, ie_ratelimit_headers[i], &v)) {
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

/* Any thread. */
double ie_now(void) { return ie_os_monotonic(); }

/* Whether bytes of the answer wait on e's connection, unread: on a busy
 * machine the network thread may not have run for longer than idle_timeout,
 * and an answer sitting in the socket is not a stalled one. */
static int bytes_waiting(CURL *e) {
  curl_socket_t fd = CURL_SOCKET_BAD;
  if (curl_easy_getinfo(e, CURLINFO_ACTIVESOCKET, &fd) != CURLE_OK || fd == CURL_SOCKET_BAD)
    return 0;
  return ie_os_readable(fd);
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
  t->sent_on_h2 = ie_net_on_h2(t->e);
  t->sent_to_closed = ie_net_peer_closed(t->hub, local_port, t->sent_on_h2);
  return CURL_PREREQFUNC_OK;
}

/* A file part, streamed from disk at send time. Opened here rather than by
 * libcurl (curl_mime_filedata), so that it is close-on-exec: a program the
 * caller spawns meanwhile must not hold the caller's files. pread keeps the
 * rewind libcurl may ask for trivial.
 *
 * The bytes sent must be the bytes the caller checked: the file's stamp (or,
 * for a file changed just before its check, the SHA-256 of the bytes
 * checked) is compared when the part is opened and again before its last
 * chunk goes out. A file changed in between stops the upload there, so the
 * service never gets a whole request, and the transfer says which part. */
typedef struct filesrc {
  int fd;
  curl_off_t size, pos;
  transfer *t;
  int index;
  char stamp[IE_STAMP_LEN]; /* as checked; "" for none */
  ie_sha256 *md;            /* with want: the bytes read so far */
  unsigned char want[32];
} filesrc;

/* Network thread: whether the file still is what was checked, all of it read. */
static int file_same(filesrc *f) {
  if (f->md) {
    unsigned char got[32];
    return ie_sha256_final(f->md, got) && memcmp(got, f->want, sizeof got) == 0;
  }
  if (f->stamp[0]) {
    ie_stat st;
    char now[IE_STAMP_LEN];
    if (ie_os_fstat(f->fd, &st) != 0)
      return 0;
    ie_file_stamp(&st, now, sizeof now);
    return strcmp(now, f->stamp) == 0;
  }
  return 1;
}

static size_t file_read(char *buf, size_t sz, size_t n, void *arg) {
  filesrc *f = (filesrc *)arg;
  size_t k = sz * n;
  if ((curl_off_t)k > f->size - f->pos)
    k = (size_t)(f->size - f->pos);
  if (k == 0)
    return 0;
  ie_ssize got = ie_os_pread(f->fd, buf, k, (uint64_t)f->pos);
  if (got <= 0) { /* shrunk or unreadable since it was opened */
    f->t->changed = f->index;
    return CURL_READFUNC_ABORT;
  }
  if (f->md && !ie_sha256_update(f->md, buf, (size_t)got)) {
    f->t->changed = f->index;
    return CURL_READFUNC_ABORT;
  }
  /* The last chunk waits in buf, not yet sent: the check goes before it. */
  if (f->pos + got == f->size && !file_same(f)) {
    f->t->changed = f->index;
    return CURL_READFUNC_ABORT;
  }
  f->pos += got;
  return (size_t)got;
}

static int file_seek(void *arg, curl_off_t off, int origin) {
  filesrc *f = (filesrc *)arg;
  if (origin != SEEK_SET || off < 0 || off > f->size)
    return CURL_SEEKFUNC_CANTSEEK;
  if (f->md) { /* the digest covers the bytes from the start, in order */
    unsigned char drop[32];
    if (off != 0 || !ie_sha256_final(f->md, drop)) /* final starts it again */
      return CURL_SEEKFUNC_CANTSEEK;
  }
  f->pos = off;
  return CURL_SEEKFUNC_OK;
}

static void file_free(void *arg) {
  filesrc *f = (filesrc *)arg;
  ie_os_close(f->fd);
  ie_sha256_free(f->md);
  free(f);
}

/* Caller's thread, while building: the file at path as part `index` of t;
 * CURLE_READ_ERROR when it cannot be opened, or is not the file checked
 * (gone, unreadable or changed since). Its reads run on the network thread. */
CURLcode ie_part_file(curl_mimepart *part, const char *path, const ie_file_check *check, transfer *t, int index) {
  int fd = ie_os_open_read(path);
  ie_stat st;
  if (fd < 0)
    return CURLE_READ_ERROR;
  char stamp[IE_STAMP_LEN] = "";
  int ok = ie_os_fstat(fd, &st) == 0 && st.kind == IE_KIND_REG && (check->size < 0 || st.size == check->size);
  if (ok)
    ie_file_stamp(&st, stamp, sizeof stamp);
  if (!ok || (check->stamp && strcmp(stamp, check->stamp) != 0)) {
    ie_os_close(fd);
    return CURLE_READ_ERROR;
  }
  filesrc *f = calloc(1, sizeof *f);
  if (!f) {
    ie_os_close(fd);
    return CURLE_OUT_OF_MEMORY;
  }
  f->fd = fd, f->size = (curl_off_t)st.size, f->pos = 0, f->t = t, f->index = index;
  if (check->stamp)
    memcpy(f->stamp, stamp, sizeof stamp);
  if (check->sha256) {
    memcpy(f->want, check->sha256, sizeof f->want);
    f->md = ie_sha256_new();
    if (!f->md) {
      file_free(f);
      return CURLE_OUT_OF_MEMORY;
    }
  }
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

/* Caller's thread, while building: a part whose bytes come from a Lua
 * string the transfer anchors. Its reads run on the network thread. */
CURLcode ie_part_memory(curl_mimepart *part, const char *data, size_t len) {
  memsrc *ms = malloc(sizeof *ms);
  if (!ms)
    return CURLE_OUT_OF_MEMORY;
  ms->p = data, ms->len = len, ms->pos = 0;
  CURLcode rc = curl_mime_data_cb(part, (curl_off_t)len, mem_read, mem_seek, free, ms);
  if (rc != CURLE_OK)
    free(ms);
  return rc;
}

/* Caller's thread, while building e: the callbacks above, with t. */
void ie_transfer_callbacks(CURL *e, transfer *t) {
  curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
  curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, on_header);
  curl_easy_setopt(e, CURLOPT_HEADERDATA, t);
  curl_easy_setopt(e, CURLOPT_XFERINFOFUNCTION, on_progress);
  curl_easy_setopt(e, CURLOPT_XFERINFODATA, t);
  curl_easy_setopt(e, CURLOPT_NOPROGRESS, 0L);
  curl_easy_setopt(e, CURLOPT_PREREQFUNCTION, on_prereq);
  curl_easy_setopt(e, CURLOPT_PREREQDATA, t);
}
