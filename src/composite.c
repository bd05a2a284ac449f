/* Masks that hold. The service treats a mask as a soft guide and may redraw
 * the whole picture; this measures how far its answer strayed from image 1
 * where the mask keeps (drift) and where it left the edit area alone
 * (spill), and composites the answer back onto image 1 so that every kept
 * pixel is image 1's. All of it in one C call over decoded pixels, so that
 * no picture-sized string crosses into Lua but the encoded result. */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <stb_image_resize.h>
#include <webp/decode.h>

#include "imgedit.h"

#define MAX_FEATHER 256

/* The largest difference of one pixel over its four channels; two fully
 * transparent pixels are equal whatever colour they carry. */
static int pixel_diff(const unsigned char *a, const unsigned char *b) {
  if (a[3] == 0 && b[3] == 0)
    return 0;
  int m = 0;
  for (int c = 0; c < 4; c++) {
    int d = a[c] > b[c] ? a[c] - b[c] : b[c] - a[c];
    if (d > m)
      m = d;
  }
  return m;
}

/* Chamfer (3-4) distance from each edit pixel (alpha 0) to the nearest kept
 * one, in thirds of a pixel, capped at cap: two passes, exact along rows
 * and columns, within 6 % on diagonals. */
static void distance_to_keep(const unsigned char *alpha, uint16_t *d, int w, int h, uint16_t cap) {
  size_t n = (size_t)w * (size_t)h;
  for (size_t i = 0; i < n; i++)
    d[i] = alpha[i] ? 0 : cap;
#define RELAX(cond, j, cost)                                                                                           \
  if ((cond) && d[j] + (cost) < v)                                                                                     \
  v = (uint16_t)(d[j] + (cost))
  for (int y = 0; y < h; y++)
    for (int x = 0; x < w; x++) {
      size_t i = (size_t)y * w + x;
      uint16_t v = d[i];
      if (!v)
        continue;
      RELAX(x > 0, i - 1, 3);
      RELAX(y > 0, i - w, 3);
      RELAX(y > 0 && x > 0, i - w - 1, 4);
      RELAX(y > 0 && x < w - 1, i - w + 1, 4);
      d[i] = v;
    }
  for (int y = h - 1; y >= 0; y--)
    for (int x = w - 1; x >= 0; x--) {
      size_t i = (size_t)y * w + x;
      uint16_t v = d[i];
      if (!v)
        continue;
      RELAX(x < w - 1, i + 1, 3);
      RELAX(y < h - 1, i + w, 3);
      RELAX(y < h - 1 && x < w - 1, i + w + 1, 4);
      RELAX(y < h - 1 && x > 0, i + w - 1, 4);
      d[i] = v;
    }
#undef RELAX
}

/* The weight of image 1 at each pixel, 0..255, written over alpha: a kept
 * pixel keeps its alpha (255: image 1 exactly), an edit pixel within
 * `feather` pixels of the kept area ramps down from it (smoothstep), so the
 * seam lies inside the edit area and never touches a kept pixel. */
static void seam_weights(unsigned char *alpha, const uint16_t *d, size_t n, int feather) {
  double span = 3.0 * (feather + 1);
  for (size_t i = 0; i < n; i++) {
    if (alpha[i] || !d || d[i] >= span)
      continue;
    double t = 1.0 - d[i] / span;
    alpha[i] = (unsigned char)(255.0 * t * t * (3.0 - 2.0 * t) + 0.5);
  }
}

static void blend(unsigned char *out, const unsigned char *ans, const unsigned char *base, const unsigned char *wt,
                  size_t n) {
  for (size_t i = 0; i < n; i++) {
    unsigned k = wt[i];
    if (k == 255)
      memcpy(out + 4 * i, base + 4 * i, 4);
    else if (k == 0)
      memcpy(out + 4 * i, ans + 4 * i, 4);
    else
      for (int c = 0; c < 4; c++)
        out[4 * i + c] = (unsigned char)((base[4 * i + c] * k + ans[4 * i + c] * (255 - k) + 127) / 255);
  }
}

typedef struct decode_job {
  const unsigned char *bytes;
  size_t len;
  ie_limits lim;
  ie_pixels out;
  int ok;
} decode_job;

/* Runs without the Lua state: the bytes are the caller's strings, which
 * stay on its stack until the join. */
static void *decode_thread(void *arg) {
  decode_job *j = (decode_job *)arg;
  if (!j->ok)
    j->ok = ie_decode_raw(j->bytes, j->len, &j->lim, &j->out);
  return NULL;
}

/* The answer's pixels, when the caller has them (decode = "rgba" made them
 * on the decoder thread): borrowed from the Lua string at index px, which
 * stays on the stack; the header still comes from the bytes. */
static void given_pixels(lua_State *L, int px, lua_Integer w, lua_Integer h, decode_job *j) {
  size_t n = 0;
  const char *s;
  ie_buffer *b = (ie_buffer *)luaL_testudata(L, px, IE_BUFFER_MT);
  if (b) /* the decoder thread's, read where it is */
    s = (const char *)b->p, n = b->p ? b->len : 0;
  else
    s = lua_tolstring(L, px, &n);
  ie_src src = {j->bytes, -1, j->len};
  char why[160];
  luaL_argcheck(L, ie_inspect(&src, &j->out.info, why, sizeof why) == IE_OK, 1, "cannot read the answer's header");
  luaL_argcheck(L,
                w > 0 && h > 0 && (lua_Integer)j->out.info.width == w && (lua_Integer)j->out.info.height == h &&
                    n == (size_t)w * (size_t)h * 4,
                4, "answer_rgba is not the answer's pixels (width x height x 4 bytes)");
  j->out.p = (unsigned char *)s, j->out.release = NULL; /* not ours to free */
  j->out.w = (int)w, j->out.h = (int)h;
  j->ok = 1;
}

/* A guess at a decode's cost from the header: pixels, JPEG's at a fifth
 * (stb decodes it about five times faster than PNG or WebP here); none for
 * pixels already decoded. */
static double decode_cost(const decode_job *j) {
  if (j->ok)
    return 0;
  ie_src src = {j->bytes, -1, j->len};
  ie_info info;
  char why[160];
  if (ie_inspect(&src, &info, why, sizeof why) != IE_OK)
    return 0;
  double px = (double)info.width * info.height;
  return strcmp(info.format, "jpeg") == 0 ? px / 5 : px;
}

static void set_int(lua_State *L, const char *k, lua_Integer v) {
  lua_pushinteger(L, v);
  lua_setfield(L, -2, k);
}

/* inpaint(answer, base, mask [, {tolerance=30, preserve=false, feather=4, quality=90, max_pixels=,
 *         max_bytes=, answer_rgba=, width=, height=, keep_rgba=false}])
 * -> {width=, height=, keep=, edit=, drifted=, unchanged=, scaled=, bytes=, rgba=} | nil, message, reason
 * answer_rgba, width, height: the answer's pixels, decoded already; with
 * keep_rgba, a PNG composite's pixels come back as rgba too (the PNG holds
 * exactly them), so nobody decodes what was just encoded.
 * keep: pixels the mask keeps (alpha > 0), drifted: those of them whose
 * largest channel difference from image 1 passes the tolerance; edit:
 * pixels to edit (alpha 0), unchanged: those within it. Image 1 and the mask
 * are scaled to the answer's size first when theirs differ. With preserve,
 * bytes is the composite, encoded in the answer's format. */
static int l_inpaint(lua_State *L) {
  size_t an, bn, mn;
  const unsigned char *as = (const unsigned char *)luaL_checklstring(L, 1, &an);
  const unsigned char *bs = (const unsigned char *)luaL_checklstring(L, 2, &bn);
  const unsigned char *ms = (const unsigned char *)luaL_checklstring(L, 3, &mn);
  int o = lua_istable(L, 4) ? 4 : 0;
  lua_Integer tol = o ? ie_opt_integer(L, o, "tolerance", 30) : 30;
  lua_Integer feather = o ? ie_opt_integer(L, o, "feather", 4) : 4;
  lua_Integer quality = o ? ie_opt_integer(L, o, "quality", 90) : 90;
  /* each of the three decodes is bounded on its own: they run at once */
  ie_limits lim = {o ? ie_opt_integer(L, o, "max_pixels", IE_MAX_PIXELS) : IE_MAX_PIXELS,
                   o ? ie_opt_integer(L, o, "max_bytes", IE_MAX_DECODE_BYTES) : IE_MAX_DECODE_BYTES};
  int preserve = o ? ie_opt_bool(L, o, "preserve") : 0;
  int keep_rgba = o ? ie_opt_bool(L, o, "keep_rgba") : 0;
  luaL_argcheck(L, tol >= 0 && tol <= 255, 4, "tolerance out of range 0-255");
  luaL_argcheck(L, feather >= 0 && feather <= MAX_FEATHER, 4, "feather out of range 0-256");
  luaL_argcheck(L, quality >= 1 && quality <= 100, 4, "quality out of range 1-100");
  lua_settop(L, 4);
  decode_job jobs[3] = {{as, an, lim, {0}, 0}, {bs, bn, lim, {0}, 0}, {ms, mn, lim, {0}, 0}};
  if (o) {
    lua_getfield(L, o, "answer_rgba"); /* index 5, kept while the pixels are used */
    if (!lua_isnil(L, 5)) {
      luaL_argcheck(L, lua_type(L, 5) == LUA_TSTRING || luaL_testudata(L, 5, IE_BUFFER_MT), 4,
                    "answer_rgba must be a string or a buffer");
      given_pixels(L, 5, ie_opt_integer(L, o, "width", 0), ie_opt_integer(L, o, "height", 0), &jobs[0]);
    }
  }

  /* The boxes first, so that nothing decoded is ever unowned; then the
   * costliest decode runs on a thread of its own while the other two run
   * here: the decodes are most of the cost (bench/README.md). */
  void *boxes[3];
  int big = 0;
  for (int i = 0; i < 3; i++) {
    boxes[i] = ie_box_push(L);
    if (decode_cost(&jobs[i]) > decode_cost(&jobs[big]))
      big = i;
  }
  pthread_t thread;
  int threaded = pthread_create(&thread, NULL, decode_thread, &jobs[big]) == 0;
  for (int i = 0; i < 3; i++)
    if (i != big || !threaded)
      decode_thread(&jobs[i]);
  if (threaded)
    pthread_join(thread, NULL);
  unsigned char *px[3];
  for (int i = 0; i < 3; i++)
    px[i] = ie_box_adopt(boxes[i], &jobs[i].out);
  static const char *const names[] = {"the answer", "image 1", "the mask"};
  for (int i = 0; i < 3; i++)
    if (!jobs[i].ok)
      return ie_fail(L, jobs[i].out.reason, "%s: %s", names[i], jobs[i].out.why);
  unsigned char *ans = px[0], *base = px[1], *mask = px[2];
  int w = jobs[0].out.w, h = jobs[0].out.h, bw = jobs[1].out.w, bh = jobs[1].out.h;
  int mw = jobs[2].out.w, mh = jobs[2].out.h;

  size_t n = (size_t)w * (size_t)h;
  int scaled = 0;
  if (bw != w || bh != h) { /* in linear light, alpha-weighted: stb's default filters */
    unsigned char *s = (unsigned char *)ie_newuserdata(L, n * 4);
    if (!stbir_resize_uint8_srgb(base, bw, bh, 0, s, w, h, 0, 4, 3, 0))
      return ie_fail(L, "resize", "cannot scale image 1 to %dx%d", w, h);
    base = s, scaled = 1;
  }
  unsigned char *alpha = (unsigned char *)ie_newuserdata(L, n);
  if (mw == w && mh == h) {
    for (size_t i = 0; i < n; i++)
      alpha[i] = mask[4 * i + 3];
  } else {
    size_t mn2 = (size_t)mw * (size_t)mh;
    unsigned char *ma = (unsigned char *)ie_newuserdata(L, mn2);
    int hard = 1;
    for (size_t i = 0; i < mn2; i++) {
      ma[i] = mask[4 * i + 3];
      hard = hard && (ma[i] == 0 || ma[i] == 255);
    }
    if (!stbir_resize_uint8(ma, mw, mh, 0, alpha, w, h, 0, 1))
      return ie_fail(L, "resize", "cannot scale the mask to %dx%d", w, h);
    /* A hard mask stays hard: its edge where the filter crosses the middle,
     * not a rim of faint alpha that would count as kept. */
    if (hard)
      for (size_t i = 0; i < n; i++)
        alpha[i] = alpha[i] >= 128 ? 255 : 0;
    scaled = 1;
  }

  lua_Integer keep = 0, edit = 0, drifted = 0, unchanged = 0;
  for (size_t i = 0; i < n; i++) {
    int d = pixel_diff(ans + 4 * i, base + 4 * i);
    if (alpha[i])
      keep++, drifted += d > tol;
    else
      edit++, unchanged += d <= tol;
  }

  lua_createtable(L, 0, 8);
  int result = lua_gettop(L);
  set_int(L, "width", w);
  set_int(L, "height", h);
  set_int(L, "keep", keep);
  set_int(L, "edit", edit);
  set_int(L, "drifted", drifted);
  set_int(L, "unchanged", unchanged);
  lua_pushboolean(L, scaled);
  lua_setfield(L, -2, "scaled");
  if (!preserve)
    return 1;

  uint16_t *dist = NULL;
  if (feather > 0) {
    dist = (uint16_t *)ie_newuserdata(L, n * sizeof *dist);
    distance_to_keep(alpha, dist, w, h, (uint16_t)(3 * (feather + 1)));
  }
  seam_weights(alpha, dist, n, (int)feather);
  unsigned char *out = (unsigned char *)ie_newuserdata(L, n * 4);
  blend(out, ans, base, alpha, n);

  /* The answer's own format; a lossless WebP stays lossless. */
  const ie_info info = jobs[0].out.info;
  int fmt = ie_format_index(info.format);
  WebPBitstreamFeatures feat;
  int lossless = fmt == 2 && WebPGetFeatures(as, an, &feat) == VP8_STATUS_OK && feat.format == 2;
  /* An answer without an alpha channel gets none back. */
  int flags = (lossless ? IE_LOSSLESS : 0) | (info.has_alpha ? 0 : IE_DROP_ALPHA);
  if (fmt < 0 || !ie_encode_push(L, out, w, h, fmt, (int)quality, flags))
    return ie_fail(L, "encode", "cannot encode the composite as %s", info.format);
  lua_setfield(L, result, "bytes");
  if (keep_rgba && fmt == 0) {
    lua_pushlstring(L, (const char *)out, n * 4);
    lua_setfield(L, result, "rgba");
  }
  lua_settop(L, result);
  return 1;
}

void ie_open_composite(lua_State *L) {
  lua_pushcfunction(L, l_inpaint);
  lua_setfield(L, -2, "inpaint");
}
