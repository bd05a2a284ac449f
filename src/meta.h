/* What meta.c (PNG, JPEG, the Lua calls) and meta_webp.c share: byte
 * order helpers and the WebP calls. */
#ifndef IMGEDIT_META_H
#define IMGEDIT_META_H

#include <stdint.h>
#include <string.h>

#include "imgedit.h"

static inline uint32_t be32(const unsigned char *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static inline uint32_t le32(const unsigned char *p) {
  return (uint32_t)p[3] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[1] << 8 | p[0];
}
static inline void put_be32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)(v >> 24), p[1] = (unsigned char)(v >> 16), p[2] = (unsigned char)(v >> 8);
  p[3] = (unsigned char)v;
}
static inline void put_le32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)v, p[1] = (unsigned char)(v >> 8), p[2] = (unsigned char)(v >> 16);
  p[3] = (unsigned char)(v >> 24);
}

/* Whether an XMP packet is the one to strip: it carries the marker. */
static inline int ie_xmp_carries(const unsigned char *x, size_t xn, const char *mark, size_t mn) {
  return mn > 0 && ie_memmem(x, xn, mark, mn) != NULL;
}

/* Each pushes its result (or fails through ie_fail), as meta.c's own. */
IE_LOCAL int ie_webp_embed(lua_State *L, const unsigned char *s, size_t n, const char *x, size_t xn);
IE_LOCAL int ie_webp_read(lua_State *L, const unsigned char *s, size_t n);
IE_LOCAL int ie_webp_strip(lua_State *L, const unsigned char *s, size_t n, const char *m, size_t mn);

#endif
