/* Ctrl-C as data, for `imgedit batch`: a first Ctrl-C stops launching and
 * lets the jobs in flight finish (their pictures are paid for), a second
 * cancels them. Lua cannot catch SIGINT itself (the standalone interpreter
 * turns it into an error raised wherever Lua happens to be), so SIGINT and
 * SIGTERM are blocked and read from a signalfd. The state lives in the
 * object, not in a global: no handler, nothing shared between Lua states.
 *
 * Blocking is per thread, and threads inherit the mask of the thread that
 * makes them: the caller opens this before it starts other threads (the
 * emulator's, curl's resolver) so that none of them takes the signal. */
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "imgedit.h"

#define INTERRUPTS "imgedit.interrupts"

#ifdef __linux__
#include <sys/signalfd.h>

typedef struct {
  int fd;
  sigset_t old; /* the mask before, restored by close */
} interrupts;

/* Read what arrived (non-blocking); the number of signals. */
static int drain(interrupts *s) {
  struct signalfd_siginfo si;
  int n = 0;
  while (s->fd >= 0 && read(s->fd, &si, sizeof si) == (ssize_t)sizeof si)
    n++;
  return n;
}

/* interrupts() -> object | nil, message, "unsupported" */
static int l_interrupts(lua_State *L) {
  interrupts *s = (interrupts *)ie_newuserdata(L, sizeof *s);
  s->fd = -1;
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  if (pthread_sigmask(SIG_BLOCK, &set, &s->old) != 0)
    return ie_fail(L, "unsupported", "cannot block SIGINT: %s", strerror(errno));
  s->fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
  if (s->fd < 0) {
    int e = errno;
    pthread_sigmask(SIG_SETMASK, &s->old, NULL);
    return ie_fail(L, "unsupported", "signalfd: %s", strerror(e));
  }
  luaL_setmetatable(L, INTERRUPTS);
  return 1;
}

/* take() -> how many SIGINT/SIGTERM arrived since the last call */
static int l_take(lua_State *L) {
  interrupts *s = (interrupts *)luaL_checkudata(L, 1, INTERRUPTS);
  lua_pushinteger(L, drain(s));
  return 1;
}

/* close(): the signals act as before again. Those that arrived and were not
 * taken are dropped first, so that unblocking does not deliver them. */
static int l_close(lua_State *L) {
  interrupts *s = (interrupts *)luaL_checkudata(L, 1, INTERRUPTS);
  if (s->fd < 0)
    return 0;
  drain(s);
  close(s->fd);
  s->fd = -1;
  pthread_sigmask(SIG_SETMASK, &s->old, NULL);
  return 0;
}
#else
static int l_interrupts(lua_State *L) { return ie_fail(L, "unsupported", "no signalfd on this system"); }
static int l_take(lua_State *L) {
  lua_pushinteger(L, 0);
  return 1;
}
static int l_close(lua_State *L) {
  (void)L;
  return 0;
}
#endif

void ie_open_signal(lua_State *L) {
  static const luaL_Reg methods[] = {{"take", l_take}, {NULL, NULL}};
  ie_new_class(L, INTERRUPTS, methods, l_close, "close", NULL);
  lua_pushcfunction(L, l_interrupts);
  lua_setfield(L, -2, "interrupts");
}
