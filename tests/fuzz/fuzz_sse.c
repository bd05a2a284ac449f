/* libFuzzer target: the SSE parser on arbitrary bytes, fed in two chunks
 * split where the first input byte says, under a small size limit. */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "../../src/sse.h"

static size_t events, bytes;

static void count(void *ud, const char *event, size_t elen, const char *data, size_t dlen) {
  (void)ud;
  /* Touch every byte so the sanitizers see any out-of-bounds pointer. */
  for (size_t i = 0; i < elen; i++)
    bytes += (unsigned char)event[i];
  for (size_t i = 0; i < dlen; i++)
    bytes += (unsigned char)data[i];
  events++;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size == 0)
    return 0;
  size_t split = data[0] % size;
  sse s;
  sse_init(&s, 4096);
  sse_feed(&s, (const char *)data + 1, split > 0 ? split - 1 : 0, count, NULL);
  if (split > 0)
    sse_feed(&s, (const char *)data + split, size - split, count, NULL);
  sse_free(&s);
  return 0;
}
