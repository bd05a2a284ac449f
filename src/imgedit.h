/* Internal interface shared by the C files of imgedit.core and imgedit.emulator.
 * Nothing here is exported from the shared objects: only luaopen_* are. */
#ifndef IMGEDIT_H
#define IMGEDIT_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <lauxlib.h>
#include <lua.h>

#include "compat.h"

#define IMGEDIT_VERSION "0.1.0"

#if defined(__GNUC__)
#define IE_API __attribute__((visibility("default")))
#define IE_LOCAL __attribute__((visibility("hidden")))
#else
#define IE_API
#define IE_LOCAL
#endif

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

/* ---- codecs (codec.c) ---- */
IE_LOCAL void ie_open_codec(lua_State *L);

/* ---- pixels (pixels.c) ---- */
IE_LOCAL void ie_open_pixels(lua_State *L);

/* ---- mask pixels (mask.c) ---- */
IE_LOCAL void ie_open_mask(lua_State *L);

/* ---- files (fileio.c) ---- */
IE_LOCAL void ie_open_fileio(lua_State *L);

/* ---- HTTP transfers (http.c) ---- */
IE_LOCAL void ie_open_http(lua_State *L);

/* ---- emulator (emulator.c, emu_render.c) ---- */
IE_LOCAL void emu_open_render(lua_State *L);

/* Push nil, message, reason: the run-time failure convention of the core. */
IE_LOCAL int ie_fail(lua_State *L, const char *reason, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
