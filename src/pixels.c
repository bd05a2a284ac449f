/* Pixels: decode PNG/JPEG (stb_image) and WebP (libwebp) to RGBA, resize
 * (stb_image_resize) and encode PNG/JPEG (stb_image_write) or WebP (libwebp).
 * Buffers that C libraries allocate are held by a "box" userdata while Lua
 * copies them, so an out-of-memory error raised by Lua cannot leak them. */
#include <stdlib.h>
#include <limits.h>
#include <string.h>

#include <stb_image.h>
#include <stb_image_resize.h>
#include <stb_image_write.h>
#include <webp/decode.h>
#include <webp/encode.h>

#include "imgedit.h"

#define BOX_MT "imgedit.box"
#define DEFAULT_MAX_PIXELS 50000000

typedef struct box {
  void *p;
  size_t len, cap;
  void (*release)(void *);
} box;

static int box_gc(lua_State *L) {
  box *b = (box *)luaL_checkudata(L, 1, BOX_MT);
  if (b->p && b->release)
    b->release(b->p);
  b->p = NULL;
  return 0;
}

static box *box_new(lua_State *L) {
  box *b = (box *)ie_newuserdata(L, sizeof *b);
  memset(b, 0, sizeof *b);
  luaL_setmetatable(L, BOX_MT);
  return b;
}

/* Replace the box at the top of the stack by a string of its bytes, and free
 * the C buffer at once rather than at the next collection. */
static void box_to_string(lua_State *L, box *b) {
  lua_pushlstring(L, (const char *)b->p, b->len);
  if (b->p && b->release)
    b->release(b->p);
  b->p = NULL;
  lua_remove(L, -2);
}

static void stbi_free_fn(void *p) { stbi_image_free(p); }
static void webp_free_fn(void *p) { WebPFree(p); }

/* decode(bytes [, max_pixels]) -> rgba, width, height | nil, message, reason */
static int l_decode(lua_State *L) {
  size_t n;
  const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
  lua_Integer max_px = luaL_optinteger(L, 2, DEFAULT_MAX_PIXELS);
  ie_src src = {s, -1, n};
  ie_info info;
  char why[160];
  int rc = ie_inspect(&src, &info, why, sizeof why);
  if (rc != IE_OK)
    return ie_fail(L, rc == IE_TRUNCATED ? "truncated" : "corrupt", "%s", why);
  if (!info.accepted)
    return ie_fail(L, "unsupported", "cannot decode %s images", info.format);
  /* Refuse decompression bombs from the header, before any allocation. */
  if ((uint64_t)info.width * info.height > (uint64_t)max_px)
    return ie_fail(L, "too_large", "%ux%u is more than %lld pixels", (unsigned)info.width,
                   (unsigned)info.height, (long long)max_px);
  box *b = box_new(L);
  int w = 0, h = 0;
  if (strcmp(info.format, "webp") == 0) {
    b->p = WebPDecodeRGBA(s, n, &w, &h);
    b->release = webp_free_fn;
  } else {
    int c;
    if (n > INT_MAX) /* stb takes an int length */
      return ie_fail(L, "too_large", "%zu bytes is more than the decoder takes", n);
    b->p = stbi_load_from_memory(s, (int)n, &w, &h, &c, 4);
    b->release = stbi_free_fn;
  }
  if (!b->p)
    return ie_fail(L, "corrupt", "cannot decode %s image%s%s", info.format,
                   strcmp(info.format, "webp") ? ": " : "",
                   strcmp(info.format, "webp") ? stbi_failure_reason() : "");
  b->len = (size_t)w * (size_t)h * 4;
  box_to_string(L, b);
  lua_pushinteger(L, w);
  lua_pushinteger(L, h);
  return 3;
}

/* Growable buffer for stb_image_write's callback: plain malloc, owned by a box. */
static void grow_write(void *ctx, void *data, int size) {
  box *b = (box *)ctx;
  if (!b->release) /* an earlier allocation failed */
    return;
  if (b->len + (size_t)size > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 65536;
    while (cap < b->len + (size_t)size)
      cap *= 2;
    void *np = realloc(b->p, cap);
    if (!np) {
      free(b->p);
      b->p = NULL, b->release = NULL;
      return;
    }
    b->p = np, b->cap = cap;
  }
  memcpy((char *)b->p + b->len, data, (size_t)size);
  b->len += (size_t)size;
}

/* encode(rgba, w, h, format [, quality [, lossless]]) -> bytes */
static int l_encode(lua_State *L) {
  int w, h;
  const char *px = ie_check_rgba(L, 1, &w, &h);
  static const char *const fmts[] = {"png", "jpeg", "webp", NULL};
  int fmt = luaL_checkoption(L, 4, "png", fmts);
  int quality = (int)luaL_optinteger(L, 5, 90);
  int lossless = lua_toboolean(L, 6);
  luaL_argcheck(L, quality >= 0 && quality <= 100, 5, "quality out of range 0-100");
  box *b = box_new(L);
  int ok;
  if (fmt == 2) {
    uint8_t *out = NULL;
    size_t len = lossless ? WebPEncodeLosslessRGBA((const uint8_t *)px, w, h, w * 4, &out)
                          : WebPEncodeRGBA((const uint8_t *)px, w, h, w * 4, (float)quality, &out);
    b->p = out, b->len = len, b->release = webp_free_fn;
    ok = len > 0;
  } else {
    b->release = free;
    if (fmt == 0)
      ok = stbi_write_png_to_func(grow_write, b, w, h, 4, px, w * 4);
    else
      ok = stbi_write_jpg_to_func(grow_write, b, w, h, 4, px, quality < 1 ? 1 : quality);
    ok = ok && b->p;
  }
  if (!ok)
    return ie_fail(L, "encode", "cannot encode %s", fmts[fmt]);
  box_to_string(L, b);
  return 1;
}

/* resize(rgba, w, h, new_w, new_h) -> rgba */
static int l_resize(lua_State *L) {
  int w, h;
  const char *px = ie_check_rgba(L, 1, &w, &h);
  lua_Integer nw = luaL_checkinteger(L, 4), nh = luaL_checkinteger(L, 5);
  luaL_argcheck(L, nw > 0 && nw <= 65535, 4, "width out of range");
  luaL_argcheck(L, nh > 0 && nh <= 65535, 5, "height out of range");
  ie_buf b;
  unsigned char *out = (unsigned char *)ie_buf_init(L, &b, (size_t)nw * (size_t)nh * 4);
  if (!stbir_resize_uint8((const unsigned char *)px, w, h, 0, out, (int)nw, (int)nh, 0, 4))
    return ie_fail(L, "resize", "resize failed");
  ie_buf_push(L, &b, (size_t)nw * (size_t)nh * 4);
  return 1;
}

void ie_open_pixels(lua_State *L) {
  if (luaL_newmetatable(L, BOX_MT)) {
    lua_pushcfunction(L, box_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
  static const luaL_Reg fns[] = {
      {"decode", l_decode}, {"encode", l_encode}, {"resize", l_resize}, {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
}
