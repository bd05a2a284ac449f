/* Metadata in image files: an XMP packet written into, and read back from,
 * PNG (an iTXt chunk with the keyword XML:com.adobe.xmp), JPEG (an APP1
 * segment) and WebP (an XMP chunk, with the VP8X header that announces it).
 * These are the places other tools (exiftool, image viewers) look. An
 * older packet is replaced, so writing the same packet twice gives the same
 * bytes: a picture's lineage must not change its hash from run to run.
 * xmp_strip takes a packet out again. WebP is meta_webp.c's. */
#include <string.h>

#include "imgedit.h"
#include "meta.h"

static const char PNG_SIG[8] = {(char)0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
static const char PNG_KEY[] = "XML:com.adobe.xmp";             /* the keyword, with its NUL */
static const char JPEG_XMP[] = "http://ns.adobe.com/xap/1.0/"; /* the header, with its NUL */

/* PNG's CRC-32 of the chunk type and data, bit by bit: a few hundred bytes
 * each time, so no table (and no global to build it in). */
static uint32_t crc32_update(uint32_t c, const unsigned char *p, size_t n) {
  for (size_t i = 0; i < n; i++) {
    c ^= p[i];
    for (int k = 0; k < 8; k++)
      c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
  }
  return c;
}

/* ---- PNG ---- */

static int png_is_xmp(const unsigned char *type, const unsigned char *data, uint32_t len) {
  return memcmp(type, "iTXt", 4) == 0 && len >= sizeof PNG_KEY && memcmp(data, PNG_KEY, sizeof PNG_KEY) == 0;
}

static int png_embed(lua_State *L, const unsigned char *s, size_t n, const char *x, size_t xn) {
  if (n < 33 || memcmp(s + 12, "IHDR", 4) != 0 || be32(s + 8) != 13)
    return ie_fail(L, "format", "not a PNG with its IHDR first");
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addlstring(&b, (const char *)s, 33); /* signature and IHDR */
  /* iTXt: keyword, NUL, compression flag 0, method 0, empty language and translated keyword. */
  size_t dlen = sizeof PNG_KEY + 4 + xn;
  unsigned char head[8];
  put_be32(head, (uint32_t)dlen);
  memcpy(head + 4, "iTXt", 4);
  luaL_addlstring(&b, (const char *)head, 8);
  static const unsigned char flags[4] = {0, 0, 0, 0};
  luaL_addlstring(&b, PNG_KEY, sizeof PNG_KEY);
  luaL_addlstring(&b, (const char *)flags, 4);
  luaL_addlstring(&b, x, xn);
  uint32_t c = crc32_update(0xFFFFFFFFu, head + 4, 4);
  c = crc32_update(c, (const unsigned char *)PNG_KEY, sizeof PNG_KEY);
  c = crc32_update(c, flags, 4);
  c = crc32_update(c, (const unsigned char *)x, xn) ^ 0xFFFFFFFFu;
  unsigned char crc[4];
  put_be32(crc, c);
  luaL_addlstring(&b, (const char *)crc, 4);
  size_t off = 33;
  while (off + 12 <= n) {
    uint32_t len = be32(s + off);
    if (len > n - off - 12)
      return ie_fail(L, "format", "a PNG chunk runs past the end of the file");
    if (!png_is_xmp(s + off + 4, s + off + 8, len))
      luaL_addlstring(&b, (const char *)s + off, (size_t)len + 12);
    off += (size_t)len + 12;
  }
  luaL_addlstring(&b, (const char *)s + off, n - off); /* anything after IEND, kept as it was */
  luaL_pushresult(&b);
  return 1;
}

static int png_read(lua_State *L, const unsigned char *s, size_t n) {
  size_t off = 8;
  while (off + 12 <= n) {
    uint32_t len = be32(s + off);
    if (len > n - off - 12)
      break;
    const unsigned char *d = s + off + 8;
    if (png_is_xmp(s + off + 4, d, len) && len >= sizeof PNG_KEY + 2 && d[sizeof PNG_KEY] == 0) {
      /* past the flags, the language tag and the translated keyword (each NUL-ended) */
      size_t p = sizeof PNG_KEY + 2;
      for (int z = 0; z < 2 && p < len; p++)
        if (d[p] == 0)
          z++;
      lua_pushlstring(L, (const char *)d + p, len - p);
      return 1;
    }
    if (memcmp(s + off + 4, "IDAT", 4) == 0 || memcmp(s + off + 4, "IEND", 4) == 0)
      break; /* written before the pixels, so read no further */
    off += (size_t)len + 12;
  }
  lua_pushnil(L);
  return 1;
}

/* ---- JPEG ---- */

static int jpeg_is_xmp(const unsigned char *seg, size_t len) {
  return seg[1] == 0xE1 && len >= 2 + sizeof JPEG_XMP && memcmp(seg + 4, JPEG_XMP, sizeof JPEG_XMP) == 0;
}

/* Walks the segments before the scan: calls back with each, returns the
 * offset of the first byte not walked (the SOS marker), or 0 if malformed. */
typedef int (*seg_fn)(const unsigned char *seg, size_t len, void *ud);
static size_t jpeg_walk(const unsigned char *s, size_t n, seg_fn fn, void *ud) {
  size_t off = 2;
  while (off + 4 <= n) {
    if (s[off] != 0xFF)
      return 0;
    if (s[off + 1] == 0xFF) { /* fill byte */
      off++;
      continue;
    }
    if (s[off + 1] == 0xDA || s[off + 1] == 0xD9)
      return off;
    size_t len = (size_t)s[off + 2] << 8 | s[off + 3];
    if (len < 2 || len > n - off - 2)
      return 0;
    if (fn && fn(s + off, len, ud))
      return off;
    off += len + 2;
  }
  return 0;
}

typedef struct {
  luaL_Buffer *b;
  const char *x;
  size_t xn;
  int placed;
} jpeg_out;

static void jpeg_put_xmp(jpeg_out *o) {
  size_t len = 2 + sizeof JPEG_XMP + o->xn;
  unsigned char head[4] = {0xFF, 0xE1, (unsigned char)(len >> 8), (unsigned char)len};
  luaL_addlstring(o->b, (const char *)head, 4);
  luaL_addlstring(o->b, JPEG_XMP, sizeof JPEG_XMP);
  luaL_addlstring(o->b, o->x, o->xn);
  o->placed = 1;
}

static int jpeg_copy(const unsigned char *seg, size_t len, void *ud) {
  jpeg_out *o = ud;
  int is_jfif = seg[1] == 0xE0 && len >= 7 && memcmp(seg + 4, "JFIF", 5) == 0;
  if (!o->placed && !is_jfif)
    jpeg_put_xmp(o); /* right after SOI, or after a JFIF header that must come first */
  if (!jpeg_is_xmp(seg, len))
    luaL_addlstring(o->b, (const char *)seg, len + 2);
  return 0;
}

static int jpeg_embed(lua_State *L, const unsigned char *s, size_t n, const char *x, size_t xn) {
  if (2 + sizeof JPEG_XMP + xn > 65535)
    return ie_fail(L, "too_large", "the metadata is too large for one JPEG segment");
  if (jpeg_walk(s, n, NULL, NULL) == 0)
    return ie_fail(L, "format", "the JPEG's segments are malformed");
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addlstring(&b, (const char *)s, 2);
  jpeg_out o = {&b, x, xn, 0};
  size_t sos = jpeg_walk(s, n, jpeg_copy, &o);
  if (!o.placed)
    jpeg_put_xmp(&o);
  luaL_addlstring(&b, (const char *)s + sos, n - sos);
  luaL_pushresult(&b);
  return 1;
}

typedef struct {
  const unsigned char *found;
  size_t len;
} jpeg_find;

static int jpeg_find_xmp(const unsigned char *seg, size_t len, void *ud) {
  if (!jpeg_is_xmp(seg, len))
    return 0;
  jpeg_find *f = ud;
  f->found = seg + 4 + sizeof JPEG_XMP;
  f->len = len - 2 - sizeof JPEG_XMP;
  return 1;
}

static int jpeg_read(lua_State *L, const unsigned char *s, size_t n) {
  jpeg_find f = {NULL, 0};
  jpeg_walk(s, n, jpeg_find_xmp, &f);
  if (f.found)
    lua_pushlstring(L, (const char *)f.found, f.len);
  else
    lua_pushnil(L);
  return 1;
}

/* ---- Stripping: the picture as it was before a packet was embedded ---- */

/* Each strip pushes the bytes without a marked packet, or the bytes given
 * (argument 1) when they hold none: the common case makes no copy. */
static int png_strip(lua_State *L, const unsigned char *s, size_t n, const char *m, size_t mn) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addlstring(&b, (const char *)s, 8);
  size_t off = 8;
  int cut = 0;
  while (off + 12 <= n) {
    uint32_t len = be32(s + off);
    if (len > n - off - 12)
      break;
    if (png_is_xmp(s + off + 4, s + off + 8, len) && ie_xmp_carries(s + off + 8, len, m, mn))
      cut = 1;
    else
      luaL_addlstring(&b, (const char *)s + off, (size_t)len + 12);
    off += (size_t)len + 12;
  }
  luaL_addlstring(&b, (const char *)s + off, n - off);
  luaL_pushresult(&b);
  if (!cut)
    lua_pushvalue(L, 1);
  return 1;
}

typedef struct {
  luaL_Buffer *b;
  const char *m;
  size_t mn;
  int cut;
} jpeg_cut;

static int jpeg_keep(const unsigned char *seg, size_t len, void *ud) {
  jpeg_cut *c = ud;
  if (jpeg_is_xmp(seg, len) && ie_xmp_carries(seg + 4, len - 2, c->m, c->mn))
    c->cut = 1;
  else
    luaL_addlstring(c->b, (const char *)seg, len + 2);
  return 0;
}

static int jpeg_strip(lua_State *L, const unsigned char *s, size_t n, const char *m, size_t mn) {
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addlstring(&b, (const char *)s, 2);
  jpeg_cut c = {&b, m, mn, 0};
  size_t sos = jpeg_walk(s, n, jpeg_keep, &c);
  luaL_addlstring(&b, (const char *)s + sos, n - sos);
  luaL_pushresult(&b);
  if (!c.cut || sos == 0)
    lua_pushvalue(L, 1);
  return 1;
}

/* ---- Lua ---- */

enum kind { K_PNG, K_JPEG, K_WEBP, K_NONE };

static enum kind kind_of(const unsigned char *s, size_t n) {
  if (n >= 8 && memcmp(s, PNG_SIG, 8) == 0)
    return K_PNG;
  if (n >= 3 && s[0] == 0xFF && s[1] == 0xD8 && s[2] == 0xFF)
    return K_JPEG;
  if (n >= 12 && memcmp(s, "RIFF", 4) == 0 && memcmp(s + 8, "WEBP", 4) == 0)
    return K_WEBP;
  return K_NONE;
}

/* xmp_embed(bytes, packet) -> bytes with the packet (an older one replaced)
 * | nil, message, reason */
static int l_xmp_embed(lua_State *L) {
  size_t n, xn;
  const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
  const char *x = luaL_checklstring(L, 2, &xn);
  switch (kind_of(s, n)) {
  case K_PNG: return png_embed(L, s, n, x, xn);
  case K_JPEG: return jpeg_embed(L, s, n, x, xn);
  case K_WEBP: return ie_webp_embed(L, s, n, x, xn);
  default: return ie_fail(L, "format", "metadata goes only into PNG, JPEG and WebP files");
  }
}

/* xmp_strip(bytes, marker) -> the bytes without an XMP packet that holds
 * marker: as they were before xmp_embed put it there (WebP: see
 * webp_strip). The same string when there is none, or when the file is
 * not one that xmp_embed writes. */
static int l_xmp_strip(lua_State *L) {
  size_t n, mn;
  const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
  const char *m = luaL_checklstring(L, 2, &mn);
  lua_settop(L, 2);
  switch (kind_of(s, n)) {
  case K_PNG: return png_strip(L, s, n, m, mn);
  case K_JPEG: return jpeg_strip(L, s, n, m, mn);
  case K_WEBP: return ie_webp_strip(L, s, n, m, mn);
  default: lua_pushvalue(L, 1); return 1;
  }
}

/* xmp_read(bytes) -> the XMP packet | nil */
static int l_xmp_read(lua_State *L) {
  size_t n;
  const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
  switch (kind_of(s, n)) {
  case K_PNG: return png_read(L, s, n);
  case K_JPEG: return jpeg_read(L, s, n);
  case K_WEBP: return ie_webp_read(L, s, n);
  default: lua_pushnil(L); return 1;
  }
}

void ie_open_meta(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"xmp_embed", l_xmp_embed}, {"xmp_read", l_xmp_read}, {"xmp_strip", l_xmp_strip}, {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
}
