/* The hub of a multi, shared by its three threads: reference counts, the
 * queues a transfer moves through and the moves themselves (the table is
 * in http.h), cancel and its acknowledgement, the end of a multi, and the
 * caller's side of the lock (trying it in poll(0), waiting on it in
 * poll(t), the per-poll budget). Plain C: the Lua objects are http.c's. */
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http.h"

/* ---- lifetimes ---- */

void ie_hub_unref(multi *m) {
  pthread_mutex_lock(&m->mu);
  int last = --m->refs == 0;
  pthread_mutex_unlock(&m->mu);
  /* In a forked child an inherited multi stays, listed by procs.c: libcurl
   * there still points into it, and it is never called again. */
  if (!last || m->forked)
    return;
  pthread_mutex_destroy(&m->mu);
  pthread_cond_destroy(&m->cv);
  pthread_cond_destroy(&m->dcv);
  pthread_cond_destroy(&m->pcv);
  free(m);
}

int ie_drop_locked(transfer *t) { return --t->refs == 0; }

int ie_unhold_locked(multi *m, transfer *t) {
  if (!t->held)
    return 0;
  t->held = 0;
  if (t->all_prev)
    t->all_prev->all_next = t->all_next;
  else
    m->all = t->all_next;
  if (t->all_next)
    t->all_next->all_prev = t->all_prev;
  t->all_next = t->all_prev = NULL;
  m->count--;
  return ie_drop_locked(t);
}

void ie_changed_locked(multi *m) {
  m->gen++;
  pthread_cond_broadcast(&m->cv);
}

/* Something waits for perform to hand it over (an answer, an event, an
 * event's pictures): the caller's loop, waiting on the wake-up descriptor,
 * is told, once until perform clears it. Progress alone does not wake it:
 * a loop that reports progress looks on the client's timeout(). */
void ie_wake_locked(multi *m) {
  if (m->wake_on && !m->wake_set) {
    ie_os_wake_set(&m->wake);
    m->wake_set = 1;
  }
}

void ie_settle_locked(multi *m, transfer *t) {
  if (t->events.n > 0) { /* transfer_events hands it over with its last event */
    t->where = W_DRAIN;
    ie_changed_locked(m);
    ie_wake_locked(m); /* its events may have waited for their pictures */
  } else {
    ie_hand_over_locked(m, t);
  }
}

void ie_hand_over_locked(multi *m, transfer *t) {
  t->where = W_FIN;
  t->qnext = NULL;
  if (m->fin_tail)
    m->fin_tail->qnext = t;
  else
    m->fin_head = t;
  m->fin_tail = t;
  ie_changed_locked(m);
  ie_wake_locked(m);
}

void ie_transfer_free(transfer *t) {
  multi *m = t->hub;
  if (!t->inherited_e) { /* else libcurl's multi in a forked child still has it */
    if (t->e)
      curl_easy_cleanup(t->e);
    curl_mime_free(t->mime);
    curl_slist_free_all(t->headers);
  }
  free(t->body);
  ie_inpaint_req_free(t->inpaint);
  if (t->sse_on)
    sse_free(&t->parser);
  sse_queue_free(&t->parsed);
  sse_queue_free(&t->events);
  ie_decoded_free(t->decoded);
  free(t);
  ie_hub_unref(m);
}

/* Start fn on a thread of its own with every signal blocked: SIGINT and
 * SIGTERM stay the caller's thread's to read. */
int ie_thread_start(pthread_t *th, void *(*fn)(void *), void *arg) {
#ifdef _WIN32 /* no signals to steer: Ctrl-C comes to a handler of its own */
  return pthread_create(th, NULL, fn, arg) == 0;
#else
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int rc = pthread_create(th, NULL, fn, arg);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  return rc == 0;
#endif
}

/* ---- transfers, seen from the caller's thread ---- */

/* Unlink t from a singly linked queue through qnext. */
static void unqueue(transfer **head, transfer **tail, transfer *t) {
  transfer *prev = NULL;
  for (transfer *p = *head; p; prev = p, p = p->qnext)
    if (p == t) {
      if (prev)
        prev->qnext = t->qnext;
      else
        *head = t->qnext;
      if (tail && *tail == t)
        *tail = prev;
      break;
    }
  t->qnext = NULL;
}

/* Caller's thread. Stop t wherever it is; it ends as canceled for the
 * caller at once. A running transfer is the network thread's to take out
 * of libcurl: this asks and waits for its acknowledgement (one turn of its
 * loop, which never blocks), after which t's answer and counters are the
 * caller's to read: what went out tells whether the service may bill it.
 * Every unhold here is never the last: the Lua object holds one. */
void ie_transfer_cancel(transfer *t) {
  if (t->done)
    return;
  t->done = 1, t->canceled = 1;
  multi *m = t->hub;
  pthread_mutex_lock(&m->mu);
  t->cancel_req = 1;
  switch (t->where) {
  case W_ADD:
    unqueue(&m->add_head, NULL, t);
    t->where = W_NONE;
    ie_unhold_locked(m, t);
    break;
  case W_RUN:
    if (m->net_running) {
      m->cancels++;
      pthread_mutex_unlock(&m->mu);
      curl_multi_wakeup(m->m);
      pthread_mutex_lock(&m->mu);
      while (t->where == W_RUN && m->net_running)
        pthread_cond_wait(&m->cv, &m->mu);
    }
    if (t->where == W_RUN) { /* no network thread: it broke, or this is a forked child */
      if (!m->forked) {
        pthread_mutex_unlock(&m->mu); /* libcurl may call back, and they lock */
        ie_remove_handle(m, t);
        pthread_mutex_lock(&m->mu);
      }
      t->where = W_NONE;
      ie_unhold_locked(m, t);
    }
    break;
  case W_FIN:
    unqueue(&m->fin_head, &m->fin_tail, t);
    t->where = W_NONE;
    ie_unhold_locked(m, t);
    break;
  case W_DRAIN:
    t->where = W_NONE;
    ie_unhold_locked(m, t);
    break;
  default: /* W_DEC: let go when its decodes end; W_NONE: nothing held */ break;
  }
  pthread_mutex_unlock(&m->mu);
}

void ie_multi_stop_threads(multi *m) {
  pthread_mutex_lock(&m->mu);
  m->quit = m->dquit = 1;
  pthread_cond_broadcast(&m->dcv);
  pthread_mutex_unlock(&m->mu);
  if (m->net_started) {
    curl_multi_wakeup(m->m);
    pthread_join(m->net_thread, NULL);
    m->net_started = 0;
  }
  for (int i = 0; i < m->dec_started; i++)
    pthread_join(m->dec_thread[i], NULL);
  m->dec_started = 0;
}

/* Caller's thread, once the threads are stopped: every transfer the multi
 * holds ends (as canceled unless it had finished), libcurl's handles are
 * cleaned up, and the multi lets go of itself. In a forked child an
 * inherited multi has no threads and its libcurl handles are never
 * touched: its transfers only end. */
void ie_multi_end(multi *m) {
  ie_multi_stop_threads(m);
  int forked = m->forked;
  if (!forked)
    ie_procs_remove(m);
  /* The threads are gone: what they held is this thread's to end. */
  transfer *gone = NULL, *running = NULL;
  pthread_mutex_lock(&m->mu);
  for (transfer *t = m->all; t; t = t->all_next)
    if (t->where == W_RUN && !forked)
      t->qnext = running, running = t; /* in no queue while running */
  pthread_mutex_unlock(&m->mu);
  /* Out of libcurl without the lock: its callbacks may run and take it. */
  for (transfer *t = running, *next; t; t = next) {
    next = t->qnext, t->qnext = NULL;
    ie_remove_handle(m, t);
  }
  pthread_mutex_lock(&m->mu);
  while (m->job_head) { /* decodes never run: their pictures stay empty */
    ie_job *j = m->job_head;
    m->job_head = j->next;
    if (ie_dec_end_locked(m, j))
      j->t->qnext = gone, gone = j->t;
    free(j);
  }
  m->job_tail = NULL;
  while (m->all) { /* what was still running ends as canceled */
    transfer *t = m->all;
    if (t->where != W_FIN && !t->done) /* a finished one keeps its result */
      t->canceled = 1;
    t->done = 1;
    t->where = W_NONE, t->qnext = NULL;
    if (ie_unhold_locked(m, t))
      t->qnext = gone, gone = t;
  }
  m->add_head = m->fin_head = m->fin_tail = NULL;
  if (m->wake_on) /* in a forked child, its own copy */
    ie_os_wake_close(&m->wake);
  m->wake_on = m->wake_set = 0;
  pthread_mutex_unlock(&m->mu);
  while (gone) {
    transfer *t = gone;
    gone = t->qnext;
    ie_transfer_free(t);
  }
  if (forked) {
    ie_hub_unref(m);
    return;
  }
  if (m->m)
    curl_multi_cleanup(m->m);
  m->m = NULL;
  if (m->share)
    curl_share_cleanup(m->share);
  m->share = NULL;
  free(m->net.ca_file), free(m->net.ca_path), free(m->net.proxy);
  memset(&m->net, 0, sizeof m->net);
  ie_hub_unref(m);
}

/* The lock, for the caller's thread: perform(0) and what follows it in
 * the same poll only try it, since the network thread may hold it while
 * the system has put it aside for a while (two cores, many threads); what
 * they would have taken waits for the next call. 0 when not taken. After
 * BUSY_TRIES tries in a row that found it busy, the next one waits: an
 * event loop woken by the descriptor calls again at once, and would spin
 * until the lock came free. */
#define BUSY_TRIES 3
int ie_lock_caller(multi *m) {
  if (m->trying && m->busy < BUSY_TRIES) {
    if (pthread_mutex_trylock(&m->mu) != 0) {
      m->busy++;
      return 0;
    }
  } else {
    pthread_mutex_lock(&m->mu);
  }
  m->busy = 0;
  return 1;
}

/* In a forked child: every transfer inherited from the parent ends now,
 * unfinished (t->forked); nothing of it is ever sent from here. Under the
 * lock; they go to the finished list. */
void ie_orphan_all_locked(multi *m) {
  m->add_head = NULL;
  for (transfer *t = m->all; t; t = t->all_next) {
    if (t->forked)
      continue;
    t->forked = 1;
    if (t->where != W_FIN)
      ie_hand_over_locked(m, t);
  }
}

/* Whether what costs `cost` may still be handed over in this perform. */
int ie_affordable(multi *m, size_t cost) {
  if (cost && m->spent && m->spent + cost > m->budget)
    return 0;
  m->spent += cost;
  return 1;
}

/* Wait until the threads hand something over, or timeout seconds pass. */
void ie_wait_locked(multi *m, double timeout) {
  struct timespec ts;
  ie_os_deadline(&ts, timeout);
  while (!m->fin_head && m->gen == m->seen && !m->broken)
    if (pthread_cond_timedwait(&m->cv, &m->mu, &ts) != 0)
      break;
}
