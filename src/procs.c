/* The process around the library: what the C library's exit and a fork do
 * to the threads of live multis, and the descriptors children inherit.
 *
 * The one mutable global of the core is here, on purpose: exit() and
 * fork() are process-wide, so the live multis are listed process-wide (a
 * list under its own lock), for two hooks registered once:
 *  - atexit: os.exit() does not close the Lua state, so no __gc joins the
 *    threads, and exit's handlers (OpenSSL's among them, registered by
 *    curl_global_init before ours, so run after) would free what a running
 *    network thread uses. The hook stops and joins every live multi's
 *    threads first.
 *  - pthread_atfork: a child gets only the forking thread. Before the fork
 *    each network thread is parked outside libcurl with its multi's lock
 *    held, so the child inherits libcurl's state and ours whole; in the
 *    child every inherited multi is marked forked (its transfers end there
 *    at once, never sent from the child) and its connections' descriptors
 *    are closed, so the parent's connections are the parent's alone.
 *    libcurl is never called again on an inherited handle in the child: its
 *    TLS shutdown would write into the parent's connection. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* dladdr: glibc hides it; macOS and the BSDs have it too */
#endif
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "http.h"

#ifndef _WIN32
#include <dirent.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

static pthread_once_t once = PTHREAD_ONCE_INIT;
static pthread_mutex_t procs_mu = PTHREAD_MUTEX_INITIALIZER;
static multi *procs_head; /* under procs_mu; forked leftovers stay listed */

static void at_exit(void) {
  pthread_mutex_lock(&procs_mu);
  for (multi *m = procs_head; m; m = m->proc_next)
    if (!m->forked)
      ie_multi_stop_threads(m);
  pthread_mutex_unlock(&procs_mu);
}

/* Before fork(), on the forking thread: every network thread parked
 * outside libcurl, every multi's lock held. */
static void before_fork(void) {
  pthread_mutex_lock(&procs_mu);
  for (multi *m = procs_head; m; m = m->proc_next) {
    if (m->forked)
      continue;
    pthread_mutex_lock(&m->mu);
    if (!m->net_running)
      continue;
    m->park = 1;
    curl_multi_wakeup(m->m);
    while (!m->parked && m->net_running)
      pthread_cond_wait(&m->cv, &m->mu);
  }
}

static void after_fork_parent(void) {
  for (multi *m = procs_head; m; m = m->proc_next) {
    if (m->forked)
      continue;
    m->park = 0;
    pthread_cond_broadcast(&m->pcv);
    pthread_mutex_unlock(&m->mu);
  }
  pthread_mutex_unlock(&procs_mu);
}

/* In the child: no thread but this one. The locks and conditions are made
 * anew (waiters of the parent's threads are in them). */
static void after_fork_child(void) {
  for (multi *m = procs_head; m; m = m->proc_next) {
    if (m->forked)
      continue;
    m->forked = 1;
    m->park = m->parked = 0;
    m->net_started = m->dec_started = m->net_running = 0;
    pthread_mutex_init(&m->mu, NULL);
    ie_os_cond_init_timed(&m->cv);
    pthread_cond_init(&m->dcv, NULL);
    pthread_cond_init(&m->pcv, NULL);
    for (int i = 0; i < m->nsocks; i++)
      close(m->socks[i]);
    m->nsocks = 0;
    for (transfer *t = m->all; t; t = t->all_next)
      if (t->where == W_RUN)
        t->inherited_e = 1;
  }
  pthread_mutex_init(&procs_mu, NULL);
}

static void hooks(void) {
  /* The hooks are the process's, not a Lua state's: this module stays
   * loaded when a state that loaded it closes, so that no hook is left
   * pointing into unmapped code (sanitizer runtimes keep their own list of
   * exit handlers, which a dlclose does not empty). */
  Dl_info self;
  if (dladdr(&once, &self) && self.dli_fname) /* any object of this module */
    dlopen(self.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_NODELETE);
  atexit(at_exit);
  pthread_atfork(before_fork, after_fork_parent, after_fork_child);
}

void ie_procs_add(multi *m) {
  pthread_once(&once, hooks);
  pthread_mutex_lock(&procs_mu);
  m->proc_next = procs_head;
  procs_head = m;
  pthread_mutex_unlock(&procs_mu);
}

void ie_procs_remove(multi *m) {
  pthread_mutex_lock(&procs_mu);
  for (multi **p = &procs_head; *p; p = &(*p)->proc_next)
    if (*p == m) {
      *p = m->proc_next;
      break;
    }
  pthread_mutex_unlock(&procs_mu);
}

/* ---- close-on-exec ---- */

/* The descriptors open now, as a bitmap of the first IE_FD_SCAN. */
void ie_fds_open(unsigned char *bits) {
  memset(bits, 0, IE_FD_SCAN / 8);
#ifdef IE_LINUX
  DIR *d = opendir("/proc/self/fd");
#else
  DIR *d = NULL;
#endif
  if (!d) { /* no /proc: ask each */
    for (int fd = 0; fd < IE_FD_SCAN; fd++)
      if (fcntl(fd, F_GETFD) >= 0)
        bits[fd / 8] |= (unsigned char)(1u << (fd % 8));
    return;
  }
  struct dirent *e;
  int own = dirfd(d); /* the listing's own descriptor, closed below */
  while ((e = readdir(d)))
    if (e->d_name[0] >= '0' && e->d_name[0] <= '9') {
      int fd = atoi(e->d_name);
      if (fd < IE_FD_SCAN && fd != own)
        bits[fd / 8] |= (unsigned char)(1u << (fd % 8));
    }
  closedir(d);
}

/* Sockets opened since `before` was taken get close-on-exec: libcurl's
 * wake-up socket pair, which libcurl 7.88 opens without it. A socket some
 * other thread opened meanwhile gets it too; only sockets, never files. */
void ie_fds_cloexec_new(const unsigned char *before) {
  unsigned char now[IE_FD_SCAN / 8];
  ie_fds_open(now);
  for (int fd = 0; fd < IE_FD_SCAN; fd++) {
    unsigned char bit = (unsigned char)(1u << (fd % 8));
    if (!(now[fd / 8] & bit) || (before[fd / 8] & bit))
      continue;
    struct stat st;
    int fl = fcntl(fd, F_GETFD);
    if (fl >= 0 && !(fl & FD_CLOEXEC) && fstat(fd, &st) == 0 && S_ISSOCK(st.st_mode))
      fcntl(fd, F_SETFD, fl | FD_CLOEXEC);
  }
}
#else
/* Windows: no fork, and no exit hook. ExitProcess ends the other threads
 * before this module hears of the exit, maybe inside a lock: joining them
 * then would hang, and there is nothing of theirs left to protect (libcurl
 * holds no exit handler there). Sockets are opened not inheritable. */
void ie_procs_add(multi *m) { (void)m; }
void ie_procs_remove(multi *m) { (void)m; }
void ie_fds_open(unsigned char *bits) { memset(bits, 0, IE_FD_SCAN / 8); }
void ie_fds_cloexec_new(const unsigned char *before) { (void)before; }
#endif
