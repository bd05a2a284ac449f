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

/* max bounds one line and one event's data, in bytes. */
void sse_init(sse *s, size_t max);
/* Returns 0, or -1 once the stream is over the limit or memory ran out. */
int sse_feed(sse *s, const char *p, size_t n, sse_emit emit, void *ud);
void sse_free(sse *s);

#endif
