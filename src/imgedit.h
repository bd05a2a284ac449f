/* Internal interface shared by the C files of imgedit.core and imgedit.emulator.core.
 * Nothing here is exported from the shared objects: only luaopen_* are. */
#ifndef IMGEDIT_H
#define IMGEDIT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "compat.h"
#include "sse.h"

#define IMGEDIT_VERSION "0.1.0"

/* IE_API and IE_LOCAL: compat.h. */

/* memmem is not in C or POSIX (nor in Windows' C library). */
static inline const void *ie_memmem(const void *hay, size_t n, const void *needle, size_t k) {
  const unsigned char *h = (const unsigned char *)hay, *end = h + n;
  if (k == 0)
    return hay;
  while (k <= (size_t)(end - h)) {
    const unsigned char *p =
        (const unsigned char *)memchr(h, *(const unsigned char *)needle, (size_t)(end - h) - k + 1);
    if (!p)
      return NULL;
    if (memcmp(p, needle, k) == 0)
      return p;
    h = p + 1;
  }
  return NULL;
}

/* ---- image inspection (inspect.c) ---- */

enum ie_status { IE_OK = 0, IE_IO, IE_TRUNCATED, IE_CORRUPT, IE_UNKNOWN };

typedef struct ie_info {
  const char *format; /* png jpeg webp gif bmp tiff */
  const char *mime;
  uint32_t width, height;
  int channels, has_alpha, bit_depth, interlaced, accepted;
  uint64_t bytes;
} ie_info;

/* A byte source: either memory or an open file descriptor read with pread. */
typedef struct ie_src {
  const unsigned char *mem;
  int fd;
  uint64_t size;
} ie_src;

IE_LOCAL int ie_inspect(const ie_src *s, ie_info *out, char *why, size_t whylen);
IE_LOCAL int ie_lua_inspect(lua_State *L);

/* A file's identity and last change as a string (device, inode, size,
 * mtime, ctime): equal stamps, same file, unchanged since, save a change
 * within the file system's timestamp tick (see inspect's `racy`). */
#define IE_STAMP_LEN 112
struct ie_stat;
IE_LOCAL void ie_file_stamp(const struct ie_stat *st, char *out, size_t len);

/* ---- codecs (codec.c) ---- */
IE_LOCAL void ie_open_codec(lua_State *L);
/* Lua-free, for any thread: */
IE_LOCAL int ie_b64_decode(const char *s, size_t n, unsigned char *out, size_t *outlen, char *why, size_t whylen);
typedef struct ie_b64_value {
  const char *p; /* the string's content, as written */
  size_t len;
  size_t open, close; /* 0-based offsets of the value's quotes */
  int escaped;        /* backslash escapes inside */
} ie_b64_value;
IE_LOCAL int ie_b64_find(const char *s, size_t n, size_t from, ie_b64_value *v);
IE_LOCAL int ie_b64_payload(const char **p, size_t *len);

/* ---- pixels (pixels.c) ---- */
IE_LOCAL void ie_open_pixels(lua_State *L);
/* Decoded RGBA pixels, or why there are none. */
typedef struct ie_pixels {
  unsigned char *p;
  int w, h;
  ie_info info; /* what the header said: format, has_alpha, ... */
  void (*release)(void *);
  const char *reason; /* "corrupt", "truncated", "unsupported", "too_large" */
  char why[160];
} ie_pixels;
/* What one decode may take: pixels, and bytes of memory at its peak (a
 * small file can declare a picture that is dear to decode). The defaults
 * are the Lua side's (image.lua): used by callers that pass none. */
#define IE_MAX_PIXELS 50000000
#define IE_MAX_DECODE_BYTES 268435456
typedef struct ie_limits {
  lua_Integer pixels, bytes;
} ie_limits;
/* Decodes bytes to RGBA (stb_image, libwebp): 1, or 0 with the reason
 * ("too_large" for a picture over lim, refused from its header before any
 * allocation). It touches no Lua state, so it may run on any thread; the
 * caller frees p with release, or hands it to a box. */
IE_LOCAL int ie_decode_raw(const unsigned char *s, size_t n, const ie_limits *lim, ie_pixels *out);
/* Pushes an empty box: a userdata that frees the C buffer it is given when
 * collected. Made before the decode, so that a Lua error cannot leak it. */
IE_LOCAL void *ie_box_push(lua_State *L);
/* The box takes px's pixels (NULL too); returns them. */
IE_LOCAL unsigned char *ie_box_adopt(void *box, ie_pixels *px);
/* Encodes RGBA pixels in format fmt (0 png, 1 jpeg, 2 webp) and pushes the
 * bytes as a string; or pushes nothing and returns 0. Flags: IE_LOSSLESS
 * (WebP), IE_DROP_ALPHA (PNG: RGB when every pixel is opaque). */
enum { IE_LOSSLESS = 1, IE_DROP_ALPHA = 2 };
IE_LOCAL int ie_encode_push(lua_State *L, const unsigned char *px, int w, int h, int fmt, int quality, int flags);
/* The index of a format's name for ie_encode_push, or -1. */
IE_LOCAL int ie_format_index(const char *name);
/* The same encode into C memory, on any thread: 1 and out filled (free
 * out->p with out->release), or 0. */
typedef struct ie_mem {
  unsigned char *p;
  size_t len;
  void (*release)(void *);
} ie_mem;
IE_LOCAL int ie_encode_mem(const unsigned char *px, int w, int h, int fmt, int quality, int flags, ie_mem *out);

/* ---- pixels handed to Lua without a copy (buffer.c) ---- */
#define IE_BUFFER_MT "imgedit.buffer"
typedef struct ie_buffer {
  unsigned char *p; /* NULL once closed */
  size_t len;
  void (*release)(void *);
} ie_buffer;
IE_LOCAL void ie_open_buffer(lua_State *L);
/* Pushes a buffer that takes px's pixels (px->p becomes NULL). */
IE_LOCAL ie_buffer *ie_buffer_push(lua_State *L, ie_pixels *px);

/* ---- masks held: drift, spill and compositing (composite.c) ---- */
IE_LOCAL void ie_open_composite(lua_State *L);
/* An inpaint's inputs: the answer (its bytes, and its pixels when decoded
 * already), image 1 and the mask as sent; plain C, so that the decoder
 * threads run it. */
typedef struct ie_inpaint_in {
  const unsigned char *answer, *base, *mask;
  size_t an, bn, mn;
  const unsigned char *answer_px; /* or NULL: decoded here */
  int answer_w, answer_h;
  int tolerance, feather, quality, preserve, keep_rgba;
  ie_limits lim;
} ie_inpaint_in;
typedef struct ie_inpaint_out {
  int width, height, scaled;
  long long keep, edit, drifted, unchanged;
  unsigned char *bytes; /* the composite, encoded (preserve) */
  size_t nbytes;
  void (*bytes_release)(void *);
  unsigned char *rgba; /* its pixels, malloc'd (keep_rgba, a PNG) */
  const char *reason;  /* why it failed */
  char why[200];
} ie_inpaint_out;
/* 1, or 0 with out->reason and out->why; on any thread, no Lua state. */
IE_LOCAL int ie_inpaint(const ie_inpaint_in *in, ie_inpaint_out *out);
IE_LOCAL void ie_inpaint_out_free(ie_inpaint_out *out);
/* Pushes {width=, height=, keep=, edit=, drifted=, unchanged=, scaled=,
 * bytes=, and rgba= (a string) or buffer= (rgba_buffer: r's pixels go to
 * it)}. */
IE_LOCAL void ie_push_inpaint(lua_State *L, ie_inpaint_out *r, int rgba_buffer);

/* ---- mask pixels (mask.c) ---- */
IE_LOCAL void ie_open_mask(lua_State *L);

/* ---- files (fileio.c) ---- */
IE_LOCAL void ie_open_fileio(lua_State *L);
IE_LOCAL void ie_open_appender(lua_State *L);

/* ---- metadata in image files (meta.c) ---- */
IE_LOCAL void ie_open_meta(lua_State *L);

/* ---- waiting for a file to be saved (watch.c) ---- */
IE_LOCAL void ie_open_watch(lua_State *L);

/* ---- SIGINT and SIGTERM read as data (signal.c) ---- */
IE_LOCAL void ie_open_signal(lua_State *L);

/* ---- HTTP transfers (http.c) ---- */
IE_LOCAL void ie_open_http(lua_State *L);

/* ---- small helpers shared by the C files (both modules) ---- */

/* RGBA pixels at idx, with width and height at idx+1 and idx+2. */
static inline const char *ie_check_rgba(lua_State *L, int idx, int *w, int *h) {
  size_t n;
  const char *px;
  ie_buffer *b = (ie_buffer *)luaL_testudata(L, idx, IE_BUFFER_MT);
  if (b) { /* a buffer is read where it is: no copy */
    luaL_argcheck(L, b->p != NULL, idx, "the buffer is closed");
    px = (const char *)b->p, n = b->len;
  } else {
    px = luaL_checklstring(L, idx, &n);
  }
  lua_Integer lw = luaL_checkinteger(L, idx + 1), lh = luaL_checkinteger(L, idx + 2);
  luaL_argcheck(L, lw > 0 && lw <= 65535, idx + 1, "width out of range");
  luaL_argcheck(L, lh > 0 && lh <= 65535, idx + 2, "height out of range");
  luaL_argcheck(L, n == (size_t)lw * (size_t)lh * 4, idx, "not width*height RGBA pixels");
  *w = (int)lw, *h = (int)lh;
  return px;
}

/* Optional fields of the table at t: the default when absent, and a Lua
 * error when of the wrong type. A string stays anchored by the table. */
static inline lua_Integer ie_opt_integer(lua_State *L, int t, const char *k, lua_Integer dflt) {
  lua_getfield(L, t, k);
  lua_Integer v = luaL_optinteger(L, -1, dflt);
  lua_pop(L, 1);
  return v;
}

static inline lua_Number ie_opt_number(lua_State *L, int t, const char *k, lua_Number dflt) {
  lua_getfield(L, t, k);
  lua_Number v = luaL_optnumber(L, -1, dflt);
  lua_pop(L, 1);
  return v;
}

static inline const char *ie_opt_lstring(lua_State *L, int t, const char *k, size_t *len) {
  lua_getfield(L, t, k);
  const char *s = lua_isnil(L, -1) ? NULL : luaL_checklstring(L, -1, len);
  lua_pop(L, 1);
  return s;
}

static inline int ie_opt_bool(lua_State *L, int t, const char *k) {
  lua_getfield(L, t, k);
  int v = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return v;
}

/* The queued server-sent events as a list of {event=, data=} tables. */
static inline void ie_push_events(lua_State *L, const sse_queue *q) {
  lua_createtable(L, (int)q->n, 0);
  for (size_t i = 0; i < q->n; i++) {
    lua_createtable(L, 0, 2);
    lua_pushlstring(L, q->ev[i].name, q->ev[i].nlen);
    lua_setfield(L, -2, "event");
    lua_pushlstring(L, q->ev[i].data, q->ev[i].dlen);
    lua_setfield(L, -2, "data");
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
}

/* A class metatable `name`: the methods as __index, `close` as __gc and
 * __close (and as a method called close_name, when given), and __tostring
 * when given. Made once per Lua state. */
static inline void ie_new_class(lua_State *L, const char *name, const luaL_Reg *methods, lua_CFunction close,
                                const char *close_name, lua_CFunction tostring) {
  if (!luaL_newmetatable(L, name)) {
    lua_pop(L, 1);
    return;
  }
  lua_newtable(L);
  luaL_setfuncs(L, methods, 0);
  if (close_name) {
    lua_pushcfunction(L, close);
    lua_setfield(L, -2, close_name);
  }
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, close);
  lua_setfield(L, -2, "__gc");
  lua_pushcfunction(L, close);
  lua_setfield(L, -2, "__close");
  if (tostring) {
    lua_pushcfunction(L, tostring);
    lua_setfield(L, -2, "__tostring");
  }
  lua_pop(L, 1);
}

/* Push nil, message, reason: the run-time failure convention of the core. */
IE_LOCAL int ie_fail(lua_State *L, const char *reason, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#endif
