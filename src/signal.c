/* Ctrl-C as data, for `imgedit batch`: a first Ctrl-C stops launching and
 * lets the jobs in flight finish (their pictures are paid for), a second
 * cancels them. Lua cannot catch SIGINT itself (the standalone interpreter
 * turns it into an error raised wherever Lua happens to be), so SIGINT and
 * SIGTERM are blocked and read: from a signalfd on Linux, as pending
 * signals elsewhere on POSIX (Windows: a console control handler). The
 * state lives in the object, not in a global: no handler, nothing shared
 * between Lua states.
 *
 * Blocking is per thread, and threads inherit the mask of the thread that
 * makes them: the caller opens this before it starts other threads (the
 * emulator's, curl's resolver) so that none of them takes the signal. */
#include <errno.h>
#include <signal.h>
#include <string.h>

#include "imgedit.h"
#include "platform.h"

#define INTERRUPTS "imgedit.interrupts"

#ifndef _WIN32
#include <unistd.h>
#ifdef IE_LINUX
#include <sys/signalfd.h>
#endif

typedef struct {
  int fd; /* the signalfd (Linux); -1 elsewhere */
  int open;
  sigset_t set, old; /* what is read, and the mask before, restored by close */
} interrupts;

/* Read what arrived (non-blocking); the number of signals. Elsewhere than
 * Linux the blocked signals wait pending, and sigwait takes each one that
 * sigpending shows, never waiting. */
static int drain(interrupts *s) {
  int n = 0;
  if (!s->open)
    return 0;
#ifdef IE_LINUX
  struct signalfd_siginfo si;
  while (read(s->fd, &si, sizeof si) == (ssize_t)sizeof si)
    n++;
#else
  for (;;) {
    sigset_t pending;
    if (sigpending(&pending) != 0)
      break;
    int sig = sigismember(&pending, SIGINT) ? SIGINT : sigismember(&pending, SIGTERM) ? SIGTERM : 0;
    if (!sig)
      break;
    sigset_t one;
    sigemptyset(&one);
    sigaddset(&one, sig);
    if (sigwait(&one, &sig) != 0)
      break;
    n++;
  }
#endif
  return n;
}

/* interrupts() -> object | nil, message, "unsupported" */
static int l_interrupts(lua_State *L) {
  interrupts *s = (interrupts *)ie_newuserdata(L, sizeof *s);
  s->fd = -1, s->open = 0;
  sigemptyset(&s->set);
  sigaddset(&s->set, SIGINT);
  sigaddset(&s->set, SIGTERM);
  if (pthread_sigmask(SIG_BLOCK, &s->set, &s->old) != 0)
    return ie_fail(L, "unsupported", "cannot block SIGINT: %s", strerror(errno));
#ifdef IE_LINUX
  s->fd = signalfd(-1, &s->set, SFD_NONBLOCK | SFD_CLOEXEC);
  if (s->fd < 0) {
    int e = errno;
    pthread_sigmask(SIG_SETMASK, &s->old, NULL);
    return ie_fail(L, "unsupported", "signalfd: %s", strerror(e));
  }
#endif
  s->open = 1;
  luaL_setmetatable(L, INTERRUPTS);
  return 1;
}

/* close(): the signals act as before again. Those that arrived and were not
 * taken are dropped first, so that unblocking does not deliver them. */
static int l_close(lua_State *L) {
  interrupts *s = (interrupts *)luaL_checkudata(L, 1, INTERRUPTS);
  if (!s->open)
    return 0;
  drain(s);
  if (s->fd >= 0)
    close(s->fd);
  s->fd = -1, s->open = 0;
  pthread_sigmask(SIG_SETMASK, &s->old, NULL);
  return 0;
}
#else
#include <windows.h>

/* Windows calls a console control handler on a thread of its own and
 * gives it no context: the count is the process's, the one place here
 * where a global is the only way. Returning TRUE keeps the process alive. */
static volatile LONG ctrl_count;

static BOOL WINAPI on_ctrl(DWORD type) {
  if (type != CTRL_C_EVENT && type != CTRL_BREAK_EVENT)
    return FALSE;
  InterlockedIncrement(&ctrl_count);
  return TRUE;
}

typedef struct {
  int open;
} interrupts;

static int drain(interrupts *s) { return s->open ? (int)InterlockedExchange(&ctrl_count, 0) : 0; }

static int l_interrupts(lua_State *L) {
  interrupts *s = (interrupts *)ie_newuserdata(L, sizeof *s);
  s->open = 0;
  InterlockedExchange(&ctrl_count, 0);
  if (!SetConsoleCtrlHandler(on_ctrl, TRUE))
    return ie_fail(L, "unsupported", "SetConsoleCtrlHandler failed (error %lu)", (unsigned long)GetLastError());
  s->open = 1;
  luaL_setmetatable(L, INTERRUPTS);
  return 1;
}

static int l_close(lua_State *L) {
  interrupts *s = (interrupts *)luaL_checkudata(L, 1, INTERRUPTS);
  if (!s->open)
    return 0;
  SetConsoleCtrlHandler(on_ctrl, FALSE);
  drain(s);
  s->open = 0;
  return 0;
}
#endif

/* take() -> how many Ctrl-Cs (SIGINT/SIGTERM) arrived since the last call */
static int l_take(lua_State *L) {
  interrupts *s = (interrupts *)luaL_checkudata(L, 1, INTERRUPTS);
  lua_pushinteger(L, drain(s));
  return 1;
}

void ie_open_signal(lua_State *L) {
  static const luaL_Reg methods[] = {{"take", l_take}, {NULL, NULL}};
  ie_new_class(L, INTERRUPTS, methods, l_close, "close", NULL);
  lua_pushcfunction(L, l_interrupts);
  lua_setfield(L, -2, "interrupts");
}
