/* The emulator's picture: a visible, deterministic composite of its inputs.
 * The first image is the base, later images are inset along the bottom edge,
 * and a tint from the prompt washes over everything. With a mask, it acts
 * as the service does with one, as a soft guide: the edit area (hatched with
 * a fill colour) lands a few pixels off the mask's, so it spills over some
 * kept pixels and leaves some edit pixels alone, and the kept area comes
 * back redrawn, a level or two off image 1. Nearest-neighbour sampling
 * keeps it cheap and exactly reproducible. */
#include <string.h>

#include "emulator.h"

typedef struct layer {
  const unsigned char *px;
  int w, h;
} layer;

static int get_layer(lua_State *L, int t, const char *key, layer *out) {
  lua_getfield(L, t, key);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return 0;
  }
  luaL_checktype(L, -1, LUA_TTABLE);
  int l = lua_gettop(L);
  lua_getfield(L, l, "w");
  lua_getfield(L, l, "h");
  out->w = (int)luaL_checkinteger(L, -2);
  out->h = (int)luaL_checkinteger(L, -1);
  lua_getfield(L, l, "px");
  size_t n;
  out->px = (const unsigned char *)luaL_checklstring(L, -1, &n);
  if (out->w <= 0 || out->h <= 0 || n != (size_t)out->w * (size_t)out->h * 4)
    luaL_error(L, "layer %s: not w*h RGBA pixels", key);
  lua_pop(L, 3); /* the layer table stays on the stack, anchoring px */
  return 1;
}

static void get_rgb(lua_State *L, int t, const char *key, unsigned char rgb[3]) {
  lua_getfield(L, t, key);
  for (int i = 0; i < 3; i++) {
    ie_rawgeti(L, -1, i + 1);
    rgb[i] = (unsigned char)luaL_optinteger(L, -1, 128);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
}

/* Cover-fit: scale uniformly so the layer fills w x h, cropping the overflow,
 * so a portrait base is not stretched into a landscape answer. */
static const unsigned char *sample_cover(const layer *l, int x, int y, int w, int h) {
  double s = (double)l->w / w < (double)l->h / h ? (double)l->w / w : (double)l->h / h;
  int sx = (int)((l->w - w * s) / 2 + x * s), sy = (int)((l->h - h * s) / 2 + y * s);
  if (sx >= l->w)
    sx = l->w - 1;
  if (sy >= l->h)
    sy = l->h - 1;
  return l->px + ((size_t)sy * (size_t)l->w + (size_t)sx) * 4;
}

static const unsigned char *sample(const layer *l, int x, int y, int w, int h) {
  int sx = (int)((long long)x * l->w / w), sy = (int)((long long)y * l->h / h);
  return l->px + ((size_t)sy * (size_t)l->w + (size_t)sx) * 4;
}

/* compose{width=, height=, base=layer?, mask=layer?, insets={layer...}, tint={r,g,b}, fill={r,g,b}} */
static int l_compose(lua_State *L) {
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_getfield(L, 1, "width");
  lua_getfield(L, 1, "height");
  int w = (int)luaL_checkinteger(L, -2), h = (int)luaL_checkinteger(L, -1);
  lua_pop(L, 2);
  luaL_argcheck(L, w > 0 && h > 0 && w <= 8192 && h <= 8192, 1, "size out of range");
  unsigned char tint[3], fill[3];
  get_rgb(L, 1, "tint", tint);
  get_rgb(L, 1, "fill", fill);
  layer base, mask;
  int has_base = get_layer(L, 1, "base", &base);
  int has_mask = get_layer(L, 1, "mask", &mask);
  /* How far the edit area lands off the mask's: a sixty-fourth of the
   * picture's smaller side, at least a pixel, right and down. */
  int shift = (w < h ? w : h) / 64;
  if (shift < 1)
    shift = 1;
  ie_buf b;
  unsigned char *out = (unsigned char *)ie_buf_init(L, &b, (size_t)w * (size_t)h * 4);
  for (int y = 0; y < h; y++) {
    for (int x = 0; x < w; x++) {
      unsigned char *o = out + ((size_t)y * (size_t)w + (size_t)x) * 4;
      int edit = 1;
      if (has_mask) { /* the mask read where the edit area was misplaced from */
        int mx = x >= shift ? x - shift : 0, my = y >= shift ? y - shift : 0;
        edit = sample_cover(&mask, mx, my, w, h)[3] < 128;
      }
      if (has_base && !edit) {
        const unsigned char *s = sample_cover(&base, x, y, w, h);
        int jitter = (x * 7 + y * 13) % 5 - 2; /* redrawn, within a level or two */
        for (int c = 0; c < 3; c++) {
          int v = s[c] + jitter;
          o[c] = (unsigned char)(v < 0 ? 0 : v > 255 ? 255 : v);
        }
        o[3] = s[3];
        continue;
      }
      if (has_base) {
        const unsigned char *s = sample_cover(&base, x, y, w, h);
        if (has_mask) /* new content: 25 % base, 75 % tint */
          for (int c = 0; c < 3; c++)
            o[c] = (unsigned char)((s[c] + tint[c] * 3) / 4);
        else /* the whole picture redrawn: 75 % base, 25 % tint */
          for (int c = 0; c < 3; c++)
            o[c] = (unsigned char)((s[c] * 3 + tint[c]) / 4);
      } else {
        for (int c = 0; c < 3; c++) /* a gradient in the tint's colour */
          o[c] = (unsigned char)(tint[c] * (x + y) / (w + h) + (255 - tint[c]) * (w + h - x - y) / (2 * (w + h)));
      }
      o[3] = 255;
      if (has_mask && ((x + y) / 8) % 2 == 0)
        memcpy(o, fill, 3);
    }
  }
  /* Later images as thumbnails along the bottom edge, right to left. */
  lua_getfield(L, 1, "insets");
  if (lua_istable(L, -1)) {
    int it = lua_gettop(L);
    lua_Integer n = ie_len(L, it);
    int tw = w / 4, th = h / 4, pad = w / 64 + 1;
    for (lua_Integer i = 1; i <= n; i++) {
      ie_rawgeti(L, it, i);
      lua_pushvalue(L, -1);
      lua_setfield(L, 1, "_inset"); /* reuse get_layer's parsing */
      layer in;
      get_layer(L, 1, "_inset", &in);
      int x0 = w - (int)i * (tw + pad), y0 = h - th - pad;
      if (x0 < 0) { /* no room left: the stack must be balanced before the buffer ends */
        lua_settop(L, it);
        break;
      }
      for (int y = -2; y < th + 2; y++)
        for (int x = -2; x < tw + 2; x++) {
          int ox = x0 + x, oy = y0 + y;
          if (ox < 0 || oy < 0 || ox >= w || oy >= h)
            continue;
          if (has_mask && /* with a mask, only the edit area takes them */
              sample_cover(&mask, ox >= shift ? ox - shift : 0, oy >= shift ? oy - shift : 0, w, h)[3] >= 128)
            continue;
          unsigned char *o = out + ((size_t)oy * (size_t)w + (size_t)ox) * 4;
          if (x < 0 || y < 0 || x >= tw || y >= th)
            memset(o, 255, 3); /* white frame */
          else
            memcpy(o, sample(&in, x, y, tw, th), 3);
        }
      lua_settop(L, it);
    }
  }
  lua_pop(L, 1); /* balance the stack before finishing the buffer */
  ie_buf_push(L, &b, (size_t)w * (size_t)h * 4);
  return 1;
}

void emu_open_render(lua_State *L) {
  lua_pushcfunction(L, l_compose);
  lua_setfield(L, -2, "_compose");
}
