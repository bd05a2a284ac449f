/* Internal interface of imgedit.emulator.core, shared by its three parts:
 *   server.c  libmicrohttpd listeners, multipart bodies, answers that misbehave
 *   bridge.c  the private lua_State that runs the service (service.lua)
 *   render.c  the service's picture, composed from its inputs
 * and module.c, the Lua object in the caller's state. The JSON and the
 * object's fields live in Lua (imgedit/emulator/init.lua). */
#ifndef IMGEDIT_EMULATOR_H
#define IMGEDIT_EMULATOR_H

#include <pthread.h>

#include "../imgedit.h"

typedef struct emu {
  struct MHD_Daemon *api, *cdn;
  pthread_mutex_t lock;   /* guards S */
  pthread_mutex_t wait_m; /* with wake: interruptible delays */
  pthread_cond_t wake;
  int stopping;
  int in_flight, max_in_flight; /* guarded by wait_m */
  int sink;                     /* benchmarks: discard uploads, answer at once */
  char *sink_body;
  size_t sink_len;
  lua_State *S;
  unsigned api_port, cdn_port;
} emu;

/* One part of a multipart body, as received. */
typedef struct emu_part {
  char *name, *filename, *ctype, *data;
  size_t len, cap;
} emu_part;

/* A request as the service sees it: what server.c read off the connection. */
typedef struct emu_request {
  const char *listener, *path, *method;
  const char *authorization, *content_type, *user_agent; /* NULL when absent */
  const char *api_key, *api_version;                     /* Azure's key header and ?api-version= */
  int client_port;                                       /* 0 when unknown */
  const emu_part *parts;
  size_t nparts;
  const char *body;
  size_t blen, total;
  const char *query; /* the query string's arguments, decoded: "name\0value\0...\0" (NULL: none) */
  size_t qlen;
  int too_big, malformed;
} emu_request;

/* The service's answer, copied out of the private state. */
typedef struct emu_answer {
  unsigned status;
  char *body;
  size_t len;
  double delay;
  int drop;      /* close the connection without answering */
  int reset;     /* ... with a TCP reset rather than a close */
  long truncate; /* send this many body bytes, then cut the connection */
  long stall_at; /* after this many body bytes ... */
  double stall;  /* ... pause this long (a trickling answer) */
  char *headers; /* "name\0value\0name\0value\0\0" */
  size_t hlen, hcap;
  char **events; /* a streamed answer: these, one after another ... */
  size_t *event_len, nevents;
  double event_delay; /* ... each after this pause */
  long cut_after;     /* drop the connection after this many events */
  double hang_end;    /* after the last event, hold the stream open this long */
  char entry[32];     /* "epoch:id" of the request in the log, told when delivered */
} emu_answer;

/* server.c */
IE_LOCAL int emu_listen(emu *E, unsigned api_port, unsigned cdn_port);
IE_LOCAL void emu_shutdown(emu *E);
IE_LOCAL int emu_append(char **buf, size_t *len, size_t *cap, const char *p, size_t n);

/* bridge.c */
IE_LOCAL lua_State *emu_state_new(lua_State *L, const char *config, char *err, size_t errlen);
IE_LOCAL void emu_ask(emu *E, const char *fn, const emu_request *r, emu_answer *a);
IE_LOCAL char *emu_call(emu *E, const char *fn, const char *arg, size_t *len, int *failed);
IE_LOCAL void emu_free_answer(emu_answer *a);

/* render.c */
IE_LOCAL void emu_open_render(lua_State *L);

#endif
