/* Metadata in WebP files (meta.c does PNG and JPEG, and the Lua calls):
 * an XMP chunk, announced by the VP8X header, which a simple file (one VP8
 * or VP8L chunk) gains when a packet goes in and loses again when the
 * packet comes out and the header says no more than its chunk does. */
#include <string.h>

#include "imgedit.h"
#include "meta.h"

static void add_chunk(luaL_Buffer *b, const char *fourcc, const void *data, size_t len) {
  unsigned char head[8];
  memcpy(head, fourcc, 4);
  put_le32(head + 4, (uint32_t)len);
  luaL_addlstring(b, (const char *)head, 8);
  luaL_addlstring(b, (const char *)data, len);
  if (len & 1)
    luaL_addchar(b, '\0');
}

int ie_webp_embed(lua_State *L, const unsigned char *s, size_t n, const char *x, size_t xn) {
  if (n < 20 || memcmp(s, "RIFF", 4) != 0 || memcmp(s + 8, "WEBP", 4) != 0)
    return ie_fail(L, "format", "not a RIFF WebP file");
  size_t end = (size_t)le32(s + 4) + 8;
  if (end > n)
    end = n;
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  luaL_addlstring(&b, (const char *)s, 12); /* RIFF size (patched below) WEBP */
  size_t off = 12;
  if (memcmp(s + 12, "VP8X", 4) != 0) {
    /* A simple file: the extended header must come first to announce XMP. */
    ie_src src = {s, -1, n};
    ie_info info;
    char why[128];
    if (ie_inspect(&src, &info, why, sizeof why) != IE_OK || info.width == 0 || info.height == 0)
      return ie_fail(L, "format", "the WebP's size cannot be read");
    unsigned char x8[10] = {0};
    x8[0] = (unsigned char)(0x04 | (info.has_alpha ? 0x10 : 0));
    uint32_t w = info.width - 1, h = info.height - 1;
    x8[4] = (unsigned char)w, x8[5] = (unsigned char)(w >> 8), x8[6] = (unsigned char)(w >> 16);
    x8[7] = (unsigned char)h, x8[8] = (unsigned char)(h >> 8), x8[9] = (unsigned char)(h >> 16);
    add_chunk(&b, "VP8X", x8, 10);
  }
  while (off + 8 <= end) {
    size_t len = le32(s + off + 4), padded = len + (len & 1);
    if (len > end - off - 8)
      return ie_fail(L, "format", "a WebP chunk runs past the end of the file");
    if (padded > end - off - 8)
      padded = len;
    if (memcmp(s + off, "VP8X", 4) == 0 && len >= 10) {
      unsigned char x8[10];
      memcpy(x8, s + off + 8, 10);
      x8[0] |= 0x04; /* XMP present */
      add_chunk(&b, "VP8X", x8, 10);
      if (len > 10)
        luaL_addlstring(&b, (const char *)s + off + 18, padded - 10);
    } else if (memcmp(s + off, "XMP ", 4) != 0) {
      luaL_addlstring(&b, (const char *)s + off, padded + 8);
    }
    off += padded + 8;
  }
  add_chunk(&b, "XMP ", x, xn); /* XMP comes last, after the image data */
  luaL_pushresult(&b);
  /* The RIFF size: everything after its own eight bytes. */
  size_t total;
  const char *out = lua_tolstring(L, -1, &total);
  unsigned char sz[4];
  put_le32(sz, (uint32_t)(total - 8));
  lua_pushlstring(L, out, 4);
  lua_pushlstring(L, (const char *)sz, 4);
  lua_pushlstring(L, out + 8, total - 8);
  lua_concat(L, 3);
  lua_remove(L, -2);
  return 1;
}

int ie_webp_read(lua_State *L, const unsigned char *s, size_t n) {
  size_t off = 12;
  while (off + 8 <= n) {
    size_t len = le32(s + off + 4);
    if (len > n - off - 8)
      break;
    if (memcmp(s + off, "XMP ", 4) == 0) {
      lua_pushlstring(L, (const char *)s + off + 8, len);
      return 1;
    }
    off += len + (len & 1) + 8;
  }
  lua_pushnil(L);
  return 1;
}

/* Pushes the RIFF file whose chunks are body (its size patched in). */
static void webp_push(lua_State *L, const char *body, size_t len) {
  unsigned char head[12];
  memcpy(head, "RIFF", 4);
  put_le32(head + 4, (uint32_t)(len + 4));
  memcpy(head + 8, "WEBP", 4);
  lua_pushlstring(L, (const char *)head, 12);
  lua_pushlstring(L, body, len);
  lua_concat(L, 2);
}

/* Embedding turns a simple file (one VP8 or VP8L chunk) into an extended
 * one; stripping turns back an extended file that says no more than its
 * one chunk does. That makes strip(embed(x)) equal strip(x) for every x,
 * and x itself for what encoders write (the simple form, unless there is
 * more to say). */
int ie_webp_strip(lua_State *L, const unsigned char *s, size_t n, const char *m, size_t mn) {
  if (n < 30 || memcmp(s + 12, "VP8X", 4) != 0 || le32(s + 16) < 10) {
    lua_pushvalue(L, 1);
    return 1;
  }
  size_t end = (size_t)le32(s + 4) + 8;
  if (end > n)
    end = n;
  luaL_Buffer b;
  luaL_buffinit(L, &b);
  size_t off = 12, chunks = 0, image = 0, image_len = 0;
  int cut = 0;
  unsigned char x8[10];
  while (off + 8 <= end) {
    size_t len = le32(s + off + 4), padded = len + (len & 1);
    if (len > end - off - 8)
      break;
    if (padded > end - off - 8)
      padded = len;
    if (memcmp(s + off, "XMP ", 4) == 0 && ie_xmp_carries(s + off + 8, len, m, mn)) {
      cut = 1;
    } else if (off == 12) {
      memcpy(x8, s + off + 8, 10);
      x8[0] &= (unsigned char)~0x04; /* no XMP now */
    } else {
      chunks++;
      if (memcmp(s + off, "VP8 ", 4) == 0 || memcmp(s + off, "VP8L", 4) == 0)
        image = off, image_len = padded + 8;
      luaL_addlstring(&b, (const char *)s + off, padded + 8);
    }
    off += padded + 8;
  }
  luaL_pushresult(&b); /* the chunks after VP8X */
  if (!cut) {
    lua_pushvalue(L, 1);
    return 1;
  }
  if (chunks == 1 && image && le32(s + 16) == 10) {
    webp_push(L, (const char *)s + image, image_len);
    size_t sn;
    const char *sf = lua_tolstring(L, -1, &sn);
    ie_src src = {(const unsigned char *)sf, -1, sn};
    ie_info info;
    char why[128];
    uint32_t w = (uint32_t)x8[4] | (uint32_t)x8[5] << 8 | (uint32_t)x8[6] << 16;
    uint32_t h = (uint32_t)x8[7] | (uint32_t)x8[8] << 8 | (uint32_t)x8[9] << 16;
    if (ie_inspect(&src, &info, why, sizeof why) == IE_OK && info.width == w + 1 && info.height == h + 1 &&
        x8[0] == (info.has_alpha ? 0x10 : 0) && !x8[1] && !x8[2] && !x8[3])
      return 1;
    lua_pop(L, 1);
  }
  /* the VP8X chunk as it was, but for its XMP flag */
  size_t vlen = le32(s + 16);
  vlen = vlen + (vlen & 1) > n - 20 ? vlen : vlen + (vlen & 1);
  lua_pushlstring(L, (const char *)s + 12, 8);
  lua_pushlstring(L, (const char *)x8, 10);
  lua_pushlstring(L, (const char *)s + 30, vlen - 10);
  lua_pushvalue(L, -4);
  lua_concat(L, 4);
  size_t total;
  const char *body = lua_tolstring(L, -1, &total);
  webp_push(L, body, total);
  return 1;
}
