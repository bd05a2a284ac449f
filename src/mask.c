/* Mask pixels: shapes, alpha from grey levels, feathering and coverage.
 * Everything works on RGBA strings (4 bytes a pixel) that Lua owns; the
 * results are built in Lua-owned buffers, so nothing leaks if Lua raises. */
#include <math.h>
#include <string.h>

#include "imgedit.h"

static lua_Integer clip_lo(lua_Integer v, int size) { return v < 0 ? 0 : v > size ? size : v; }

/* min(v + len, size), clipped at 0, for any v and len */
static lua_Integer clip_hi(lua_Integer v, lua_Integer len, int size) {
  if (len <= 0 || v >= size)
    return 0;
  if (v < 0) {
    lua_Integer e = v + len; /* opposite signs: cannot overflow */
    return e < 0 ? 0 : e > size ? size : e;
  }
  return len >= size - v ? size : v + len;
}

/* mask_shapes(w, h, shapes [, invert]) -> rgba. Starts all kept (alpha 255);
 * each shape {kind="rect"|"ellipse", x=, y=, w=, h=, keep=bool} opens its
 * area for editing (alpha 0), or closes it again with keep = true. Later
 * shapes win, so shapes combine as union and difference. */
static int l_mask_shapes(lua_State *L) {
  lua_Integer lw = luaL_checkinteger(L, 1), lh = luaL_checkinteger(L, 2);
  luaL_argcheck(L, lw > 0 && lw <= 65535, 1, "width out of range");
  luaL_argcheck(L, lh > 0 && lh <= 65535, 2, "height out of range");
  luaL_checktype(L, 3, LUA_TTABLE);
  int invert = lua_toboolean(L, 4);
  int w = (int)lw, h = (int)lh;
  size_t n = (size_t)w * (size_t)h;
  ie_buf b;
  unsigned char *out = (unsigned char *)ie_buf_init(L, &b, n * 4);
  for (size_t i = 0; i < n; i++)
    out[4 * i] = out[4 * i + 1] = out[4 * i + 2] = 0, out[4 * i + 3] = 255;
  lua_Integer count = ie_len(L, 3);
  for (lua_Integer s = 1; s <= count; s++) {
    ie_rawgeti(L, 3, s);
    int t = lua_gettop(L);
    luaL_checktype(L, t, LUA_TTABLE);
    lua_getfield(L, t, "kind");
    int ellipse = strcmp(luaL_optstring(L, -1, "rect"), "ellipse") == 0;
    lua_pop(L, 1);
    lua_getfield(L, t, "keep");
    unsigned char a = lua_toboolean(L, -1) ? 255 : 0;
    lua_pop(L, 1);
    lua_Integer x0 = ie_opt_integer(L, t, "x", 0), y0 = ie_opt_integer(L, t, "y", 0);
    lua_Integer sw = ie_opt_integer(L, t, "w", 0), sh = ie_opt_integer(L, t, "h", 0);
    lua_pop(L, 1); /* balanced before the next buffer use */
    double cx = (double)x0 + (double)sw / 2, cy = (double)y0 + (double)sh / 2;
    double rx = (double)sw / 2, ry = (double)sh / 2;
    /* The shape clipped to the picture, without ever adding two caller
     * values (x + w may not fit in a lua_Integer). */
    lua_Integer ya = clip_lo(y0, h), yb = clip_hi(y0, sh, h);
    lua_Integer xa = clip_lo(x0, w), xb = clip_hi(x0, sw, w);
    for (lua_Integer y = ya; y < yb; y++)
      for (lua_Integer x = xa; x < xb; x++) {
        if (ellipse) { /* pixel centres inside the ellipse */
          double dx = ((double)x + 0.5 - cx) / rx, dy = ((double)y + 0.5 - cy) / ry;
          if (dx * dx + dy * dy > 1.0)
            continue;
        }
        out[((size_t)y * (size_t)w + (size_t)x) * 4 + 3] = a;
      }
  }
  if (invert)
    for (size_t i = 0; i < n; i++)
      out[4 * i + 3] = (unsigned char)(255 - out[4 * i + 3]);
  ie_buf_push(L, &b, n * 4);
  return 1;
}

/* Separable box blur of the alpha channel, radius r, in place (tmp: w*h). */
static void blur_alpha(unsigned char *px, unsigned char *tmp, int w, int h, int r) {
  for (int y = 0; y < h; y++) { /* horizontal: px -> tmp */
    long sum = 0;
    int cnt = 0;
    for (int x = -r; x < w + r; x++) {
      if (x + r < w && x + r >= 0)
        sum += px[((size_t)y * w + (x + r)) * 4 + 3], cnt++;
      if (x - r - 1 >= 0)
        sum -= px[((size_t)y * w + (x - r - 1)) * 4 + 3], cnt--;
      if (x >= 0 && x < w)
        tmp[(size_t)y * w + x] = (unsigned char)((sum + cnt / 2) / cnt);
    }
  }
  for (int x = 0; x < w; x++) { /* vertical: tmp -> px */
    long sum = 0;
    int cnt = 0;
    for (int y = -r; y < h + r; y++) {
      if (y + r < h && y + r >= 0)
        sum += tmp[(size_t)(y + r) * w + x], cnt++;
      if (y - r - 1 >= 0)
        sum -= tmp[(size_t)(y - r - 1) * w + x], cnt--;
      if (y >= 0 && y < h)
        px[((size_t)y * w + x) * 4 + 3] = (unsigned char)((sum + cnt / 2) / cnt);
    }
  }
}

/* mask_from_gray(rgba, w, h, {invert=, threshold=0..1, feather=px, use_alpha=})
 * -> rgba mask. White (or, with use_alpha, transparent) marks the area to
 * edit: it gets alpha 0. Without a threshold, grey levels give soft alpha. */
static int l_mask_from_gray(lua_State *L) {
  int w, h;
  const unsigned char *src = (const unsigned char *)ie_check_rgba(L, 1, &w, &h);
  int opts = lua_istable(L, 4) ? 4 : 0;
  int invert = 0, use_alpha = 0;
  double threshold = -1;
  lua_Integer feather = 0;
  if (opts) {
    lua_getfield(L, opts, "invert");
    invert = lua_toboolean(L, -1);
    lua_getfield(L, opts, "use_alpha");
    use_alpha = lua_toboolean(L, -1);
    lua_getfield(L, opts, "threshold");
    threshold = luaL_optnumber(L, -1, -1);
    lua_pop(L, 3);
    feather = ie_opt_integer(L, opts, "feather", 0);
  }
  luaL_argcheck(L, threshold < 0 || threshold <= 1, 4, "threshold must be within 0..1");
  luaL_argcheck(L, feather >= 0 && feather <= 1000, 4, "feather out of range");
  size_t n = (size_t)w * (size_t)h;
  /* Scratch for the blur: a userdata, collected even if we raise. */
  unsigned char *tmp = feather > 0 ? (unsigned char *)ie_newuserdata(L, n) : NULL;
  ie_buf b;
  unsigned char *out = (unsigned char *)ie_buf_init(L, &b, n * 4);
  for (size_t i = 0; i < n; i++) {
    const unsigned char *p = src + 4 * i;
    /* Rec. 601 luma, weighted by the source's own alpha over black. */
    double v = use_alpha ? 255.0 - p[3] : (0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]) * p[3] / 255.0;
    if (threshold >= 0)
      v = v >= threshold * 255.0 ? 255.0 : 0.0;
    if (invert)
      v = 255.0 - v;
    out[4 * i] = out[4 * i + 1] = out[4 * i + 2] = 0;
    out[4 * i + 3] = (unsigned char)lround(255.0 - v); /* edit where bright */
  }
  if (feather > 0)
    blur_alpha(out, tmp, w, h, (int)feather);
  ie_buf_push(L, &b, n * 4);
  return 1;
}

/* mask_stats(rgba) -> transparent, opaque, total: pixels with alpha 0, 255, all */
static int l_mask_stats(lua_State *L) {
  size_t n;
  const unsigned char *px = (const unsigned char *)luaL_checklstring(L, 1, &n);
  luaL_argcheck(L, n % 4 == 0, 1, "not RGBA pixels");
  lua_Integer clear = 0, solid = 0;
  for (size_t i = 3; i < n; i += 4) {
    if (px[i] == 0)
      clear++;
    else if (px[i] == 255)
      solid++;
  }
  lua_pushinteger(L, clear);
  lua_pushinteger(L, solid);
  lua_pushinteger(L, (lua_Integer)(n / 4));
  return 3;
}

void ie_open_mask(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"mask_shapes", l_mask_shapes}, {"mask_from_gray", l_mask_from_gray}, {"mask_stats", l_mask_stats}, {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
}
