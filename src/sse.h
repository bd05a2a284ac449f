/* An incremental parser for server-sent events (the WHATWG event-stream
 * format): fed any chunks, it emits each complete event. Plain C with no Lua,
 * so the fuzzer can drive it directly. */
#ifndef IMGEDIT_SSE_H
#define IMGEDIT_SSE_H

#include <stddef.h>

typedef void (*sse_emit)(void *ud, const char *event, size_t elen, const char *data, size_t dlen);

typedef struct sse {
  char *line, *data;
  size_t llen, lcap, dlen, dcap, max;
  char event[128];
  size_t elen;
  int cr;     /* the last byte was a CR: a following LF ends nothing new */
  int failed; /* over the size limit or out of memory: stays failed */
} sse;

/* Events waiting for their reader, oldest first: an sse_emit target. */
typedef struct sse_event {
  char *name, *data;
  size_t nlen, dlen;
  void *extra; /* the reader's: freed with free_extra */
} sse_event;

typedef struct sse_queue {
  sse_event *ev;
  size_t n, cap, bytes, max; /* max bounds the data bytes waiting at once */
  int failed;                /* over max or out of memory: stays failed */
  void (*free_extra)(void *);
} sse_queue;

void sse_queue_init(sse_queue *q, size_t max);
/* An sse_emit: ud is the queue. */
void sse_queue_push(void *ud, const char *event, size_t elen, const char *data, size_t dlen);
/* Room for n events in all: 1, or 0 when memory ran out. */
int sse_queue_reserve(sse_queue *q, size_t n);
/* Moves every event of src to the end of dst (src is left empty); dst
 * fails when that takes it over its max, or when src had failed. */
void sse_queue_move(sse_queue *dst, sse_queue *src);
/* Forget the events taken (the queue stays usable); free releases it all. */
void sse_queue_clear(sse_queue *q);
void sse_queue_free(sse_queue *q);

/* max bounds one line and one event's data, in bytes. */
void sse_init(sse *s, size_t max);
/* Returns 0, or -1 once the stream is over the limit or memory ran out. */
int sse_feed(sse *s, const char *p, size_t n, sse_emit emit, void *ud);
void sse_free(sse *s);
/* Whether part of an event has arrived and its end not yet. */
int sse_mid_event(const sse *s);

#endif
