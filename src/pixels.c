/* Pixels: decode PNG/JPEG (stb_image) and WebP (libwebp) to RGBA, resize
 * (stb_image_resize) and encode PNG (libpng), JPEG (stb_image_write) or WebP
 * (libwebp). Buffers that C libraries allocate are held by a "box" userdata
 * while Lua copies them, so an out-of-memory error raised by Lua cannot leak
 * them. composite.c decodes and encodes through the same functions. */
#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <png.h>
#include <stb_image.h>
#include <stb_image_resize.h>
#include <stb_image_write.h>
#include <webp/decode.h>
#include <webp/encode.h>
#include <zlib.h>

#include "imgedit.h"

#define BOX_MT "imgedit.box"

typedef struct box {
  void *p;
  size_t len, cap;
  void (*release)(void *);
} box;

static void box_free(box *b) {
  if (b->p && b->release)
    b->release(b->p);
  b->p = NULL;
}

static int box_gc(lua_State *L) {
  box_free((box *)luaL_checkudata(L, 1, BOX_MT));
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
  box_free(b);
  lua_remove(L, -2);
}

static void stbi_free_fn(void *p) { stbi_image_free(p); }
static void webp_free_fn(void *p) { WebPFree(p); }

/* The most memory a decode holds at once, from the header alone, so that a
 * picture small in bytes but dear to decode (a 381 KB 16-bit PNG of
 * 7000x7000 takes ~750 MB) is refused before anything is allocated. Each
 * buffer the decoder makes is summed, whether or not it outlives the
 * previous: an upper bound, kept simple. PNG (stb): the inflated rows with
 * a filter byte each, the picture at its depth and channels (a palette
 * counted as its colours), the RGBA it is converted to, and for 16 bits
 * the 8-bit RGBA at the end. JPEG: a plane per component and the RGBA.
 * WebP: the RGBA. In doubles: dimensions the pixel bound let through
 * cannot overflow them. */
static double decode_bytes(const ie_info *i) {
  double w = i->width, h = i->height, px = w * h, rgba = px * 4;
  if (strcmp(i->format, "png") == 0) {
    double sample = i->bit_depth == 16 ? 2 : 1;
    double row = ceil(w * i->channels * i->bit_depth / 8);
    double b = h * (1 + row) + px * i->channels * sample;
    if (i->channels != 4)
      b += rgba * sample;
    if (i->bit_depth == 16)
      b += rgba;
    return b;
  }
  if (strcmp(i->format, "jpeg") == 0)
    return px * i->channels + rgba;
  return rgba;
}

int ie_decode_raw(const unsigned char *s, size_t n, const ie_limits *lim, ie_pixels *out) {
  ie_src src = {s, -1, n};
  ie_info *ip = &out->info, info;
  char *why = out->why;
  size_t whylen = sizeof out->why;
  out->p = NULL, out->release = NULL;
  int rc = ie_inspect(&src, ip, why, whylen);
  info = *ip;
  out->reason = rc == IE_TRUNCATED ? "truncated" : "corrupt";
  if (rc != IE_OK)
    return 0;
  if (!info.accepted) {
    out->reason = "unsupported";
    snprintf(why, whylen, "cannot decode %s images", info.format);
    return 0;
  }
  /* Refuse decompression bombs from the header, before any allocation. */
  if ((uint64_t)info.width * info.height > (uint64_t)lim->pixels) {
    out->reason = "too_large";
    snprintf(why, whylen, "%ux%u is more than %lld pixels", (unsigned)info.width, (unsigned)info.height,
             (long long)lim->pixels);
    return 0;
  }
  double need = decode_bytes(&info);
  if (need > (double)lim->bytes) {
    out->reason = "too_large";
    snprintf(why, whylen, "%ux%u %d-bit %s needs %.0f MiB to decode (%.0f bytes), more than max_decode_bytes (%lld)",
             (unsigned)info.width, (unsigned)info.height, info.bit_depth, info.format, need / 1048576, need,
             (long long)lim->bytes);
    return 0;
  }
  int webp = strcmp(info.format, "webp") == 0;
  if (!webp && n > INT_MAX) { /* stb takes an int length */
    out->reason = "too_large";
    snprintf(why, whylen, "%zu bytes is more than the decoder takes", n);
    return 0;
  }
  if (webp) {
    out->p = WebPDecodeRGBA(s, n, &out->w, &out->h);
    out->release = webp_free_fn;
  } else { /* stb keeps its failure reason per thread */
    int c;
    out->p = stbi_load_from_memory(s, (int)n, &out->w, &out->h, &c, 4);
    out->release = stbi_free_fn;
  }
  if (!out->p) {
    out->reason = "corrupt";
    snprintf(why, whylen, "cannot decode %s image%s%s", info.format, webp ? "" : ": ",
             webp ? "" : stbi_failure_reason());
    return 0;
  }
  return 1;
}

void *ie_box_push(lua_State *L) { return box_new(L); }

unsigned char *ie_box_adopt(void *bp, ie_pixels *px) {
  box *b = (box *)bp;
  box_free(b);
  b->p = px->p, b->release = px->release;
  b->len = px->p ? (size_t)px->w * (size_t)px->h * 4 : 0;
  px->p = NULL;
  return (unsigned char *)b->p;
}

/* decode(bytes [, max_pixels [, max_bytes]]) -> rgba, width, height | nil, message, reason */
static int l_decode(lua_State *L) {
  size_t n;
  const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
  ie_limits lim = {luaL_optinteger(L, 2, IE_MAX_PIXELS), luaL_optinteger(L, 3, IE_MAX_DECODE_BYTES)};
  box *b = box_new(L); /* first: nothing decoded is left unowned if Lua raises */
  ie_pixels px;
  memset(&px, 0, sizeof px);
  int ok = ie_decode_raw(s, n, &lim, &px);
  ie_box_adopt(b, &px);
  if (!ok)
    return ie_fail(L, px.reason, "%s", px.why);
  box_to_string(L, b);
  lua_pushinteger(L, px.w);
  lua_pushinteger(L, px.h);
  return 3;
}

/* Growable buffer for the encoders' callbacks: plain malloc, owned by a box. */
static void grow_write(void *ctx, const void *data, size_t size) {
  box *b = (box *)ctx;
  if (!b->release) /* an earlier allocation failed */
    return;
  if (b->len + size > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 65536;
    while (cap < b->len + size)
      cap *= 2;
    void *np = realloc(b->p, cap);
    if (!np) {
      free(b->p);
      b->p = NULL, b->release = NULL;
      return;
    }
    b->p = np, b->cap = cap;
  }
  memcpy((char *)b->p + b->len, data, size);
  b->len += size;
}

static void stb_write(void *ctx, void *data, int size) { grow_write(ctx, data, (size_t)size); }
static void png_write(png_structp p, png_bytep data, size_t size) { grow_write(png_get_io_ptr(p), data, size); }
static void png_flush(png_structp p) { (void)p; }
/* libpng's own error path: back to our setjmp, with nothing printed. */
static void png_error_fn(png_structp p, png_const_charp msg) {
  (void)msg;
  png_longjmp(p, 1);
}
static void png_warning_fn(png_structp p, png_const_charp msg) { (void)p, (void)msg; }

/* PNG through libpng: the Paeth filter with zlib's run-length strategy is
 * several times faster than stb_image_write's and its files are smaller
 * (bench/README.md). With IE_DROP_ALPHA, a picture with no transparent
 * pixel is written as RGB: a quarter fewer bytes to filter and compress. */
/* The writing itself, apart: after a longjmp it touches nothing. */
static int png_rows(png_structp p, png_infop info, box *b, const unsigned char *px, int w, int h, int opaque) {
  if (setjmp(png_jmpbuf(p)))
    return 0;
  png_set_write_fn(p, b, png_write, png_flush);
  png_set_IHDR(p, info, (png_uint_32)w, (png_uint_32)h, 8, opaque ? PNG_COLOR_TYPE_RGB : PNG_COLOR_TYPE_RGBA,
               PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_set_filter(p, PNG_FILTER_TYPE_BASE, PNG_FILTER_PAETH);
  png_set_compression_strategy(p, Z_RLE);
  png_set_compression_level(p, 1);
  png_write_info(p, info);
  if (opaque) /* the rows keep their fourth byte: libpng drops it */
    png_set_filler(p, 0, PNG_FILLER_AFTER);
  for (int y = 0; y < h; y++)
    png_write_row(p, px + (size_t)y * (size_t)w * 4);
  png_write_end(p, info);
  return 1;
}

static int encode_png(box *b, const unsigned char *px, int w, int h, int may_drop_alpha) {
  png_structp p = png_create_write_struct(PNG_LIBPNG_VER_STRING, NULL, png_error_fn, png_warning_fn);
  png_infop info = p ? png_create_info_struct(p) : NULL;
  if (!info) {
    png_destroy_write_struct(&p, NULL);
    return 0;
  }
  size_t n = (size_t)w * (size_t)h;
  int opaque = may_drop_alpha;
  for (size_t i = 3; opaque && i < n * 4; i += 4)
    opaque = px[i] == 255;
  b->release = free;
  int ok = png_rows(p, info, b, px, w, h, opaque);
  png_destroy_write_struct(&p, &info);
  return ok && b->p != NULL;
}

/* WebP at method 0: three times faster than the default method 4 for files
 * about 8 % larger (bench/README.md). */
static int encode_webp(box *b, const unsigned char *px, int w, int h, int quality, int lossless) {
  WebPConfig cfg;
  WebPPicture pic;
  WebPMemoryWriter wr;
  if (!WebPConfigInit(&cfg) || !WebPPictureInit(&pic))
    return 0;
  cfg.method = 0;
  cfg.lossless = lossless;
  cfg.quality = lossless ? 20.0f : (float)quality; /* for lossless: the effort */
  pic.width = w, pic.height = h, pic.use_argb = lossless;
  WebPMemoryWriterInit(&wr);
  pic.writer = WebPMemoryWrite, pic.custom_ptr = &wr;
  int ok = WebPPictureImportRGBA(&pic, px, w * 4) && WebPEncode(&cfg, &pic);
  WebPPictureFree(&pic);
  b->p = wr.mem, b->len = wr.size, b->release = webp_free_fn;
  return ok && wr.size > 0;
}

static const char *const FORMATS[] = {"png", "jpeg", "webp", NULL};

/* Into b, which frees what it holds whatever happened. */
static int encode(box *b, const unsigned char *px, int w, int h, int fmt, int quality, int flags) {
  if (fmt == 2)
    return encode_webp(b, px, w, h, quality, flags & IE_LOSSLESS);
  if (fmt == 0)
    return encode_png(b, px, w, h, flags & IE_DROP_ALPHA);
  b->release = free;
  return stbi_write_jpg_to_func(stb_write, b, w, h, 4, px, quality < 1 ? 1 : quality) && b->p;
}

int ie_encode_push(lua_State *L, const unsigned char *px, int w, int h, int fmt, int quality, int flags) {
  box *b = box_new(L);
  if (!encode(b, px, w, h, fmt, quality, flags)) {
    box_free(b);
    lua_pop(L, 1);
    return 0;
  }
  box_to_string(L, b);
  return 1;
}

int ie_encode_mem(const unsigned char *px, int w, int h, int fmt, int quality, int flags, ie_mem *out) {
  box b;
  memset(&b, 0, sizeof b);
  if (!encode(&b, px, w, h, fmt, quality, flags)) {
    box_free(&b);
    return 0;
  }
  out->p = (unsigned char *)b.p, out->len = b.len, out->release = b.release;
  return 1;
}

int ie_format_index(const char *name) {
  for (int i = 0; FORMATS[i]; i++)
    if (strcmp(FORMATS[i], name) == 0)
      return i;
  return -1;
}

/* encode(rgba, w, h, format [, quality [, lossless]]) -> bytes */
static int l_encode(lua_State *L) {
  int w, h;
  const char *px = ie_check_rgba(L, 1, &w, &h);
  int fmt = luaL_checkoption(L, 4, "png", FORMATS);
  int quality = (int)luaL_optinteger(L, 5, 90);
  int lossless = lua_toboolean(L, 6);
  luaL_argcheck(L, quality >= 0 && quality <= 100, 5, "quality out of range 0-100");
  if (!ie_encode_push(L, (const unsigned char *)px, w, h, fmt, quality, lossless ? IE_LOSSLESS : 0))
    return ie_fail(L, "encode", "cannot encode %s", FORMATS[fmt]);
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
  static const luaL_Reg fns[] = {{"decode", l_decode}, {"encode", l_encode}, {"resize", l_resize}, {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
}
