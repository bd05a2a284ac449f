/* The network thread of a multi: it alone calls libcurl on the multi handle
 * and on the easy handles added to it, so the caller's poll never waits for
 * the network nor pushes a byte: it takes what this thread handed over.
 * Transfers come in through the add queue and leave through the finished
 * list (or the decoder, when their pictures are to be decoded first); a
 * cancel is a flag this thread acts on. Plain C: no Lua state here. */
#include <stdlib.h>
#include <string.h>

#include "http.h"

/* How often the progress of running transfers is read from libcurl for
 * the caller: libcurl's own callback may wait a second while nothing moves. */
#define REFRESH_S 0.01

/* The transfer ended on the network (RUN or ADD): to the decoder when its
 * pictures are wanted, else on to the caller; one the caller canceled is
 * let go, which acknowledges the cancel. Network thread, under the lock;
 * 1 when that was t's last ref (free it after unlocking). */
static int ended_locked(multi *m, transfer *t) {
  if (t->cancel_req) {
    t->where = W_NONE;
    ie_changed_locked(m); /* the canceling caller waits for this */
    return ie_unhold_locked(m, t);
  }
  int ok = t->code == CURLE_OK && !t->sse_on && t->status >= 200 && t->status <= 299;
  if (t->decode && ok && t->len > 0)
    ie_dec_submit_locked(m, t, t->body, t->len, !t->raw_picture, 1, &t->decoded);
  if (t->pending > 0)
    t->where = W_DEC;
  else
    ie_settle_locked(m, t);
  return 0;
}

static void unlink_run(multi *m, transfer *t) {
  for (transfer **p = &m->run; *p; p = &(*p)->rnext)
    if (*p == t) {
      *p = t->rnext;
      break;
    }
  t->rnext = NULL;
}

void ie_remove_handle(multi *m, transfer *t) {
  curl_multi_remove_handle(m->m, t->e);
  curl_easy_setopt(t->e, CURLOPT_SHARE, NULL);
  unlink_run(m, t);
}

static void refresh(transfer *t) {
  curl_off_t v;
  if (curl_easy_getinfo(t->e, CURLINFO_SIZE_UPLOAD_T, &v) == CURLE_OK && v > t->ul_now)
    t->ul_now = v;
  if (curl_easy_getinfo(t->e, CURLINFO_CONTENT_LENGTH_UPLOAD_T, &v) == CURLE_OK && v > t->ul_total)
    t->ul_total = v;
  if (curl_easy_getinfo(t->e, CURLINFO_SIZE_DOWNLOAD_T, &v) == CURLE_OK && v > t->dl_now)
    t->dl_now = v;
}

int ie_snap_locked(transfer *t) {
  ie_snap *s = &t->snap;
  int changed = s->ul_now != t->ul_now || s->ul_total != t->ul_total || s->dl_now != t->dl_now ||
                s->dl_total != t->dl_total || s->answering != t->answering;
  s->ul_now = t->ul_now, s->ul_total = t->ul_total, s->dl_now = t->dl_now, s->dl_total = t->dl_total;
  s->answering = t->answering;
  return changed;
}

/* Transfers the caller handed over join libcurl's multi, in their order. */
static void add_new(multi *m) {
  pthread_mutex_lock(&m->mu);
  transfer *list = NULL;
  while (m->add_head) { /* the queue is a stack: reverse it */
    transfer *t = m->add_head;
    m->add_head = t->qnext;
    t->qnext = list, list = t;
    t->where = W_RUN;
  }
  pthread_mutex_unlock(&m->mu);
  while (list) {
    transfer *t = list;
    list = t->qnext, t->qnext = NULL;
    if (m->share)
      curl_easy_setopt(t->e, CURLOPT_SHARE, m->share);
    CURLMcode mc = curl_multi_add_handle(m->m, t->e);
    if (mc == CURLM_OK) {
      t->rnext = m->run, m->run = t;
      continue;
    }
    curl_easy_setopt(t->e, CURLOPT_SHARE, NULL);
    t->code = CURLE_OUT_OF_MEMORY;
    snprintf(t->errbuf, sizeof t->errbuf, "curl_multi_add_handle: %s", curl_multi_strerror(mc));
    pthread_mutex_lock(&m->mu);
    int last = ended_locked(m, t);
    pthread_mutex_unlock(&m->mu);
    if (last)
      ie_transfer_free(t);
  }
}

/* The caller canceled some running transfers: out of libcurl, then let go. */
static void remove_canceled(multi *m) {
  transfer *gone = NULL;
  pthread_mutex_lock(&m->mu);
  for (transfer *t = m->run, *next; t; t = next) {
    next = t->rnext;
    if (!t->cancel_req)
      continue;
    pthread_mutex_unlock(&m->mu);
    ie_remove_handle(m, t);
    pthread_mutex_lock(&m->mu);
    t->where = W_NONE; /* the cancel's acknowledgement */
    ie_changed_locked(m);
    if (ie_unhold_locked(m, t))
      t->qnext = gone, gone = t;
  }
  pthread_mutex_unlock(&m->mu);
  while (gone) {
    transfer *t = gone;
    gone = t->qnext;
    ie_transfer_free(t);
  }
}

/* Transfers libcurl finished: their last counts, then on their way. */
static void collect(multi *m) {
  CURLMsg *msg;
  int left;
  while ((msg = curl_multi_info_read(m->m, &left))) {
    if (msg->msg != CURLMSG_DONE)
      continue;
    transfer *t = NULL;
    curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&t);
    if (!t)
      continue;
    t->code = msg->data.result;
    curl_easy_getinfo(t->e, CURLINFO_RESPONSE_CODE, &t->status);
    refresh(t);
    /* The last attempt's own count, as well as the progress callback's. */
    curl_off_t up = 0, total = -1;
    if (curl_easy_getinfo(t->e, CURLINFO_SIZE_UPLOAD_T, &up) == CURLE_OK &&
        curl_easy_getinfo(t->e, CURLINFO_CONTENT_LENGTH_UPLOAD_T, &total) == CURLE_OK && total > 0 && up >= total)
      t->sent_all = 1;
    ie_remove_handle(m, t); /* the connection goes back to the multi's pool */
    pthread_mutex_lock(&m->mu);
    ie_snap_locked(t);
    int last = ended_locked(m, t);
    pthread_mutex_unlock(&m->mu);
    if (last)
      ie_transfer_free(t);
  }
}

static void refresh_running(multi *m) {
  double now = ie_now();
  if (now - m->refreshed < REFRESH_S || !m->run)
    return;
  m->refreshed = now;
  for (transfer *t = m->run; t; t = t->rnext) {
    refresh(t);
    if (t->ul_total > 0 && t->ul_now >= t->ul_total)
      t->sent_all = 1;
  }
  int changed = 0;
  pthread_mutex_lock(&m->mu);
  for (transfer *t = m->run; t; t = t->rnext)
    changed |= ie_snap_locked(t);
  if (changed)
    ie_changed_locked(m);
  pthread_mutex_unlock(&m->mu);
}

/* A fork is about to happen (procs.c): wait outside libcurl until it did,
 * so that the child inherits libcurl's state and ours whole. Under the lock. */
static void park_locked(multi *m) {
  m->parked = 1;
  pthread_cond_broadcast(&m->cv);
  while (m->park)
    pthread_cond_wait(&m->pcv, &m->mu);
  m->parked = 0;
}

/* Network thread. */
void *ie_net_main(void *arg) {
  multi *m = (multi *)arg;
  for (;;) {
    pthread_mutex_lock(&m->mu);
    if (m->park)
      park_locked(m);
    int quit = m->quit, cancels = m->cancels;
    m->cancels = 0;
    pthread_mutex_unlock(&m->mu);
    if (quit)
      break;
    add_new(m);
    if (cancels)
      remove_canceled(m);
    int running = 0;
    CURLMcode mc = curl_multi_perform(m->m, &running);
    collect(m);
    refresh_running(m);
    /* Woken early by curl_multi_wakeup when the caller hands something over. */
    if (mc == CURLM_OK)
      mc = curl_multi_poll(m->m, NULL, 0, m->run ? 100 : 1000, NULL);
    if (mc != CURLM_OK) { /* out of memory or a broken handle: say so, and do not spin */
      pthread_mutex_lock(&m->mu);
      m->broken = mc;
      ie_wake_locked(m); /* perform raises it */
      pthread_mutex_unlock(&m->mu);
      break;
    }
  }
  /* Whoever waits for this thread (a cancel, a fork) stops waiting. */
  pthread_mutex_lock(&m->mu);
  m->net_running = 0;
  ie_changed_locked(m);
  pthread_mutex_unlock(&m->mu);
  return NULL;
}
