/* Server-sent events, incrementally: lines end in CRLF, LF or CR (also when
 * a CRLF is split across chunks); "field: value" lines build an event, a
 * blank line dispatches it, ":" starts a comment, several data lines join
 * with "\n". Line and event sizes are bounded. */
#include <stdlib.h>
#include <string.h>

#include "sse.h"

void sse_init(sse *s, size_t max) {
  memset(s, 0, sizeof *s);
  s->max = max;
}

void sse_free(sse *s) {
  free(s->line);
  free(s->data);
  s->line = s->data = NULL;
  s->llen = s->lcap = s->dlen = s->dcap = 0;
}

static int grow(char **buf, size_t *cap, size_t need, size_t max) {
  if (need <= *cap)
    return 0;
  if (need > max)
    return -1;
  size_t nc = *cap ? *cap : 256;
  while (nc < need)
    nc *= 2;
  if (nc > max)
    nc = max;
  char *nb = realloc(*buf, nc);
  if (!nb)
    return -1;
  *buf = nb, *cap = nc;
  return 0;
}

static int line_done(sse *s, sse_emit emit, void *ud) {
  const char *l = s->line ? s->line : "";
  size_t n = s->llen;
  s->llen = 0;
  if (n == 0) { /* blank line: dispatch */
    if (s->dlen > 0) {
      size_t dl = s->dlen - 1; /* drop the last "\n" */
      emit(ud, s->elen ? s->event : "message", s->elen ? s->elen : 7, s->data, dl);
    }
    s->dlen = 0;
    s->elen = 0;
    return 0;
  }
  if (l[0] == ':')
    return 0; /* comment */
  const char *colon = memchr(l, ':', n);
  size_t flen = colon ? (size_t)(colon - l) : n;
  const char *v = colon ? colon + 1 : l + n;
  size_t vlen = colon ? n - flen - 1 : 0;
  if (vlen > 0 && v[0] == ' ')
    v++, vlen--;
  if (flen == 4 && memcmp(l, "data", 4) == 0) {
    if (grow(&s->data, &s->dcap, s->dlen + vlen + 1, s->max) != 0)
      return -1;
    memcpy(s->data + s->dlen, v, vlen);
    s->dlen += vlen;
    s->data[s->dlen++] = '\n';
  } else if (flen == 5 && memcmp(l, "event", 5) == 0) {
    if (vlen >= sizeof s->event)
      vlen = sizeof s->event - 1; /* longer names are not ours anyway */
    memcpy(s->event, v, vlen);
    s->event[vlen] = '\0';
    s->elen = vlen;
  } /* id, retry and unknown fields are ignored */
  return 0;
}

int sse_feed(sse *s, const char *p, size_t n, sse_emit emit, void *ud) {
  if (s->failed)
    return -1;
  for (size_t i = 0; i < n; i++) {
    char c = p[i];
    if (c == '\n' && s->cr) { /* the LF of a CRLF */
      s->cr = 0;
      continue;
    }
    s->cr = c == '\r';
    if (c == '\r' || c == '\n') {
      if (line_done(s, emit, ud) != 0)
        return s->failed = 1, -1;
      continue;
    }
    /* Copy the run up to the next line end in one go. */
    size_t j = i;
    while (j < n && p[j] != '\r' && p[j] != '\n')
      j++;
    if (grow(&s->line, &s->lcap, s->llen + (j - i), s->max) != 0)
      return s->failed = 1, -1;
    memcpy(s->line + s->llen, p + i, j - i);
    s->llen += j - i;
    i = j - 1;
  }
  return 0;
}

/* ---- the queue of parsed events ---- */

int sse_queue_reserve(sse_queue *q, size_t n) {
  if (n <= q->cap)
    return 1;
  size_t nc = q->cap ? q->cap : 8;
  while (nc < n)
    nc *= 2;
  sse_event *ne = realloc(q->ev, nc * sizeof *ne);
  if (!ne)
    return 0;
  q->ev = ne, q->cap = nc;
  return 1;
}

void sse_queue_init(sse_queue *q, size_t max) {
  memset(q, 0, sizeof *q);
  q->max = max;
}

void sse_queue_push(void *ud, const char *name, size_t nlen, const char *data, size_t dlen) {
  sse_queue *q = (sse_queue *)ud;
  if (q->failed)
    return;
  if (q->bytes + dlen > q->max) { /* the reader is not draining: too much at once */
    q->failed = 1;
    return;
  }
  if (!sse_queue_reserve(q, q->n + 1)) {
    q->failed = 1;
    return;
  }
  sse_event *e = &q->ev[q->n];
  e->name = malloc(nlen + 1);
  e->data = malloc(dlen + 1);
  if (!e->name || !e->data) {
    free(e->name), free(e->data);
    q->failed = 1;
    return;
  }
  memcpy(e->name, name, nlen), e->name[nlen] = '\0', e->nlen = nlen;
  memcpy(e->data, data, dlen), e->data[dlen] = '\0', e->dlen = dlen;
  e->extra = NULL;
  q->n++;
  q->bytes += dlen;
}

void sse_queue_move(sse_queue *dst, sse_queue *src) {
  if (src->failed || src->bytes + dst->bytes > dst->max || !sse_queue_reserve(dst, dst->n + src->n))
    dst->failed = 1;
  if (!dst->failed) {
    memcpy(dst->ev + dst->n, src->ev, src->n * sizeof *src->ev);
    dst->n += src->n, dst->bytes += src->bytes;
    src->n = 0, src->bytes = 0;
  }
  sse_queue_clear(src);
}

void sse_queue_clear(sse_queue *q) {
  for (size_t i = 0; i < q->n; i++) {
    free(q->ev[i].name), free(q->ev[i].data);
    if (q->ev[i].extra && q->free_extra)
      q->free_extra(q->ev[i].extra);
  }
  q->n = 0;
  q->bytes = 0;
}

void sse_queue_free(sse_queue *q) {
  sse_queue_clear(q);
  free(q->ev);
  q->ev = NULL;
  q->cap = 0;
}

int sse_mid_event(const sse *s) { return s->llen > 0 || s->dlen > 0 || s->elen > 0; }
