/* The decoder threads of a multi: pictures of answers decoded to RGBA as
 * soon as their bytes are complete, off the caller's thread, so that a frame
 * loop's poll only hands them over; for an edit with a mask, the drift and
 * spill or the preserve composite made there too. A small pool (2 to
 * IE_MAX_DECODERS, as the cores allow) takes jobs from one queue, so that
 * pictures finishing together are decoded side by side. A job is a JSON text (each "b64_json"
 * value in it: a stream event's data or an answer's body) or raw bytes (a
 * downloaded picture). It holds a ref on its transfer, which owns the text.
 * Plain C: no Lua state is ever touched here. */
#include <stdlib.h>
#include <string.h>

#include "http.h"

void ie_inpaint_req_free(ie_inpaint_req *r) {
  if (!r)
    return;
  free(r->base), free(r->mask);
  free(r);
}

void ie_decoded_free(void *p) {
  ie_decoded *d = (ie_decoded *)p;
  if (!d)
    return;
  for (int i = 0; i < d->n; i++) {
    free(d->pic[i].bytes);
    if (d->pic[i].px.p && d->pic[i].px.release)
      d->pic[i].px.release(d->pic[i].px.p);
    if (d->pic[i].ip)
      ie_inpaint_out_free(d->pic[i].ip);
    free(d->pic[i].ip);
  }
  free(d);
}

size_t ie_decoded_cost(const ie_decoded *d) {
  size_t n = 0;
  for (int i = 0; d && i < d->n; i++) {
    const ie_picture *pic = &d->pic[i];
    n += pic->nbytes + (pic->px.p ? (size_t)pic->px.w * (size_t)pic->px.h * 4 : 0);
    if (pic->ip)
      n += pic->ip->nbytes + (pic->ip->rgba ? (size_t)pic->ip->width * (size_t)pic->ip->height * 4 : 0);
  }
  return n;
}

static void fail(ie_picture *pic, const char *reason, const char *why) {
  pic->px.reason = reason;
  snprintf(pic->px.why, sizeof pic->px.why, "%s", why);
}

/* One base64 value, or data: URL: un-escaped when an encoder wrote "\/"
 * for "/" (the only escape base64 and a data: URL's head need), decoded,
 * then its pixels. */
static void decode_value(const ie_b64_value *v, const ie_limits *lim, ie_picture *pic) {
  char *plain = NULL;
  const char *p = v->p;
  size_t len = v->len;
  if (v->escaped) {
    plain = malloc(len ? len : 1);
    if (!plain) {
      fail(pic, "memory", "out of memory");
      return;
    }
    size_t k = 0;
    for (size_t i = 0; i < len; i++) {
      if (p[i] == '\\') {
        if (i + 1 >= len || p[i + 1] != '/') {
          free(plain);
          fail(pic, "escape", "the base64 value holds an escape other than \\/");
          return;
        }
        i++;
      }
      plain[k++] = p[i];
    }
    p = plain, len = k;
  }
  char why[96];
  if (!ie_b64_payload(&p, &len)) {
    free(plain);
    fail(pic, "dataurl", "the data URL is not a base64 image");
    return;
  }
  pic->bytes = malloc(len / 4 * 3 + 1);
  if (!pic->bytes)
    fail(pic, "memory", "out of memory");
  else if (!ie_b64_decode(p, len, pic->bytes, &pic->nbytes, why, sizeof why))
    fail(pic, "base64", why), free(pic->bytes), pic->bytes = NULL;
  else
    ie_decode_raw(pic->bytes, pic->nbytes, lim, &pic->px);
  free(plain);
}

/* An edit with a mask: the answer's drift and spill, or the composite,
 * over the pixels just decoded. A failure leaves pic->ip NULL: the caller's
 * thread then does it, and says why it failed. The pixels go when the
 * caller did not ask for them. */
static void inpaint(const ie_inpaint_req *req, const unsigned char *bytes, size_t n, ie_picture *pic,
                    int drop_pixels) {
  if (req && pic->px.p) {
    ie_inpaint_in in = req->in;
    in.answer = bytes, in.an = n;
    in.answer_px = pic->px.p, in.answer_w = pic->px.w, in.answer_h = pic->px.h;
    ie_inpaint_out *o = (ie_inpaint_out *)malloc(sizeof *o);
    if (o && ie_inpaint(&in, o))
      pic->ip = o;
    else
      free(o);
  }
  if (drop_pixels && pic->px.p) {
    if (pic->px.release)
      pic->px.release(pic->px.p);
    pic->px.p = NULL, pic->px.w = pic->px.h = 0;
    fail(pic, "unasked", "the pixels were not asked for (decode = \"rgba\")");
  }
}

static void run(const ie_job *j, const ie_limits *lim, const ie_inpaint_req *req, int drop_pixels) {
  ie_decoded *d = j->out;
  if (!j->json) {
    d->n = 1;
    ie_decode_raw((const unsigned char *)j->src, j->n, lim, &d->pic[0].px);
    inpaint(req, (const unsigned char *)j->src, j->n, &d->pic[0], drop_pixels);
    return;
  }
  ie_b64_value v;
  size_t from = 0;
  while (d->n < IE_MAX_PICTURES && ie_b64_find(j->src, j->n, from, &v)) {
    ie_picture *pic = &d->pic[d->n++];
    pic->open = v.open + 1, pic->close = v.close + 1;
    decode_value(&v, lim, pic);
    if (pic->bytes)
      inpaint(req, pic->bytes, pic->nbytes, pic, drop_pixels);
    from = v.close + 1;
  }
}

/* The pictures of a stream's events that wait for the caller are bounded
 * like the events' data, by max_response_bytes: past it, a picture is
 * handed over without its pixels (px.reason "memory"; img:rgba() decodes
 * it where the caller wants), never dropped, and the paid stream goes on. */
static void bound_locked(transfer *t, ie_decoded *d) {
  for (int i = 0; i < d->n; i++) {
    ie_picture *pic = &d->pic[i];
    size_t px = pic->px.p ? (size_t)pic->px.w * (size_t)pic->px.h * 4 : 0;
    if (px && t->held_px + pic->nbytes + px > t->events.max) {
      if (pic->px.release)
        pic->px.release(pic->px.p);
      pic->px.p = NULL;
      fail(pic, "memory", "the pictures of the stream's events waiting to be taken would pass max_response_bytes");
      px = 0;
    }
    t->held_px += pic->nbytes + px;
  }
}

int ie_dec_submit_locked(multi *m, transfer *t, const char *src, size_t n, int json, int final, ie_decoded **out) {
  ie_job *j = malloc(sizeof *j);
  ie_decoded *d = calloc(1, sizeof *d);
  if (!j || !d || !m->dec_started) {
    free(j), free(d);
    return 0;
  }
  j->next = NULL, j->t = t, j->src = src, j->n = n, j->json = json, j->out = d;
  j->inpaint = final && t->inpaint;
  *out = d;
  t->refs++, t->pending++;
  if (m->job_tail)
    m->job_tail->next = j;
  else
    m->job_head = j;
  m->job_tail = j;
  pthread_cond_signal(&m->dcv);
  return 1;
}

/* A job is over (decoded, skipped or dropped): its picture is ready, and
 * a transfer that waited for its last one is handed over. Under the lock;
 * returns whether that was t's last ref. */
int ie_dec_end_locked(multi *m, ie_job *j) {
  transfer *t = j->t;
  j->out->done = 1;
  t->pending--;
  /* An event's pictures wait in the queue: they count, in the events'
   * order whatever order the decoders finished in, so that the first
   * pictures are the ones kept whole. */
  for (size_t i = 0; j->out != t->decoded && i < t->events.n; i++) {
    ie_decoded *d = (ie_decoded *)t->events.ev[i].extra;
    if (!d || d->bounded)
      continue;
    if (!d->done)
      break;
    bound_locked(t, d);
    d->bounded = 1;
  }
  if (t->where == W_DEC && t->pending == 0 && t->cancel_req) {
    t->where = W_NONE;
    ie_unhold_locked(m, t); /* never the last: the job holds one */
  } else if (t->where == W_DEC && t->pending == 0)
    ie_settle_locked(m, t);
  else
    ie_changed_locked(m), ie_wake_locked(m); /* an event's pictures are ready */
  return ie_drop_locked(t);
}

void *ie_dec_main(void *arg) {
  multi *m = (multi *)arg;
  pthread_mutex_lock(&m->mu);
  for (;;) {
    while (!m->dquit && !m->job_head)
      pthread_cond_wait(&m->dcv, &m->mu);
    if (m->dquit)
      break;
    ie_job *j = m->job_head;
    m->job_head = j->next;
    if (!m->job_head)
      m->job_tail = NULL;
    int skip = j->t->cancel_req;
    ie_limits lim = j->t->limits;
    /* set before the transfer was handed over, never changed after */
    const ie_inpaint_req *req = j->inpaint ? j->t->inpaint : NULL;
    int drop = j->t->drop_pixels;
    pthread_mutex_unlock(&m->mu);
    if (!skip)
      run(j, &lim, req, drop);
    pthread_mutex_lock(&m->mu);
    if (ie_dec_end_locked(m, j)) {
      pthread_mutex_unlock(&m->mu);
      ie_transfer_free(j->t);
      pthread_mutex_lock(&m->mu);
    }
    free(j);
  }
  pthread_mutex_unlock(&m->mu);
  return NULL;
}

int ie_dec_start(multi *m) {
  int want = ie_os_cpu_count();
  want = want < 2 ? 2 : want > IE_MAX_DECODERS ? IE_MAX_DECODERS : want;
  while (m->dec_started < want && ie_thread_start(&m->dec_thread[m->dec_started], ie_dec_main, m))
    m->dec_started++;
  return m->dec_started > 0;
}
