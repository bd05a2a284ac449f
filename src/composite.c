/* Masks that hold. The service treats a mask as a soft guide and may redraw
 * the whole picture; this measures how far its answer strayed from image 1
 * where the mask keeps (drift) and where it left the edit area alone
 * (spill), and composites the answer back onto image 1 so that every kept
 * pixel is image 1's. All of it in one C call over decoded pixels, so that
 * no picture-sized string crosses into Lua but the encoded result. */
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
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
 * on the decoder thread): borrowed from the string or buffer at index px,
 * which stays on the stack; the header still comes from the bytes. */
static void given_pixels(lua_State *L, int px, lua_Integer w, lua_Integer h, ie_inpaint_in *in) {
  size_t n = 0;
  const char *s;
  ie_buffer *b = (ie_buffer *)luaL_testudata(L, px, IE_BUFFER_MT);
  if (b) /* the decoder thread's, read where it is */
    s = (const char *)b->p, n = b->p ? b->len : 0;
  else
    s = lua_tolstring(L, px, &n);
  ie_src src = {in->answer, -1, in->an};
  ie_info info;
  char why[160];
  luaL_argcheck(L, ie_inspect(&src, &info, why, sizeof why) == IE_OK, 1, "cannot read the answer's header");
  luaL_argcheck(L,
                w > 0 && h > 0 && (lua_Integer)info.width == w && (lua_Integer)info.height == h &&
                    n == (size_t)w * (size_t)h * 4,
                4, "answer_rgba is not the answer's pixels (width x height x 4 bytes)");
  in->answer_px = (const unsigned char *)s, in->answer_w = (int)w, in->answer_h = (int)h;
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

static int held_gc(lua_State *L) {
  ie_inpaint_out_free((ie_inpaint_out *)lua_touserdata(L, 1));
  return 0;
}

void ie_push_inpaint(lua_State *L, ie_inpaint_out *r, int rgba_buffer) {
  lua_createtable(L, 0, 10);
  set_int(L, "width", r->width);
  set_int(L, "height", r->height);
  set_int(L, "keep", r->keep);
  set_int(L, "edit", r->edit);
  set_int(L, "drifted", r->drifted);
  set_int(L, "unchanged", r->unchanged);
  lua_pushboolean(L, r->scaled);
  lua_setfield(L, -2, "scaled");
  if (r->bytes) {
    lua_pushlstring(L, (const char *)r->bytes, r->nbytes);
    lua_setfield(L, -2, "bytes");
  }
  if (r->rgba && rgba_buffer) { /* handed over: the buffer frees it */
    ie_pixels px;
    memset(&px, 0, sizeof px);
    px.p = r->rgba, px.w = r->width, px.h = r->height, px.release = free;
    r->rgba = NULL;
    ie_buffer_push(L, &px);
    lua_setfield(L, -2, "buffer");
  } else if (r->rgba) {
    lua_pushlstring(L, (const char *)r->rgba, (size_t)r->width * (size_t)r->height * 4);
    lua_setfield(L, -2, "rgba");
  }
}

/* What ie_inpaint holds while it works: freed on every path by done(). */
typedef struct work {
  decode_job jobs[3];
  unsigned char *scaled, *alpha, *malpha, *out;
  uint16_t *dist;
} work;

static void work_free(work *k) {
  for (int i = 0; i < 3; i++)
    if (k->jobs[i].out.p && k->jobs[i].out.release)
      k->jobs[i].out.release(k->jobs[i].out.p);
  free(k->scaled), free(k->alpha), free(k->malpha), free(k->dist);
  free(k->out);
}

static int failed(ie_inpaint_out *o, const char *reason, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int failed(ie_inpaint_out *o, const char *reason, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  o->reason = reason;
  vsnprintf(o->why, sizeof o->why, fmt, ap);
  va_end(ap);
  return 0;
}

void ie_inpaint_out_free(ie_inpaint_out *o) {
  if (o->bytes && o->bytes_release)
    o->bytes_release(o->bytes);
  free(o->rgba);
  o->bytes = o->rgba = NULL;
}

/* The whole of an inpaint in plain C, on any thread: no Lua state is
 * touched, and everything it allocates is freed on every path (the
 * results go to out, for the caller to free with ie_inpaint_out_free). */
int ie_inpaint(const ie_inpaint_in *in, ie_inpaint_out *o) {
  memset(o, 0, sizeof *o);
  work k;
  memset(&k, 0, sizeof k);
  decode_job *jobs = k.jobs;
  jobs[0] = (decode_job){in->answer, in->an, in->lim, {0}, 0};
  jobs[1] = (decode_job){in->base, in->bn, in->lim, {0}, 0};
  jobs[2] = (decode_job){in->mask, in->mn, in->lim, {0}, 0};
  if (in->answer_px) { /* decoded already: borrowed, not ours to free */
    ie_src src = {in->answer, -1, in->an};
    char why[160];
    if (ie_inspect(&src, &jobs[0].out.info, why, sizeof why) != IE_OK)
      return failed(o, "corrupt", "the answer: %s", why);
    jobs[0].out.p = (unsigned char *)(uintptr_t)in->answer_px, jobs[0].out.release = NULL;
    jobs[0].out.w = in->answer_w, jobs[0].out.h = in->answer_h;
    jobs[0].ok = 1;
  }
  /* The costliest decode runs on a thread of its own while the other two
   * run here: the decodes are most of the cost (bench/README.md). */
  int big = 0;
  for (int i = 1; i < 3; i++)
    if (decode_cost(&jobs[i]) > decode_cost(&jobs[big]))
      big = i;
  pthread_t thread;
  int threaded = pthread_create(&thread, NULL, decode_thread, &jobs[big]) == 0;
  for (int i = 0; i < 3; i++)
    if (i != big || !threaded)
      decode_thread(&jobs[i]);
  if (threaded)
    pthread_join(thread, NULL);
  static const char *const names[] = {"the answer", "image 1", "the mask"};
  for (int i = 0; i < 3; i++)
    if (!jobs[i].ok) {
      failed(o, jobs[i].out.reason, "%s: %s", names[i], jobs[i].out.why);
      work_free(&k);
      return 0;
    }
  const unsigned char *ans = jobs[0].out.p, *base = jobs[1].out.p, *mask = jobs[2].out.p;
  int w = jobs[0].out.w, h = jobs[0].out.h, bw = jobs[1].out.w, bh = jobs[1].out.h;
  int mw = jobs[2].out.w, mh = jobs[2].out.h;

  size_t n = (size_t)w * (size_t)h;
  int scaled = 0;
  if (bw != w || bh != h) { /* in linear light, alpha-weighted: stb's default filters */
    k.scaled = (unsigned char *)malloc(n * 4);
    if (!k.scaled || !stbir_resize_uint8_srgb(base, bw, bh, 0, k.scaled, w, h, 0, 4, 3, 0)) {
      failed(o, "resize", "cannot scale image 1 to %dx%d", w, h);
      work_free(&k);
      return 0;
    }
    base = k.scaled, scaled = 1;
  }
  unsigned char *alpha = k.alpha = (unsigned char *)malloc(n ? n : 1);
  if (!alpha) {
    work_free(&k);
    return failed(o, "memory", "out of memory");
  }
  if (mw == w && mh == h) {
    for (size_t i = 0; i < n; i++)
      alpha[i] = mask[4 * i + 3];
  } else {
    size_t mn2 = (size_t)mw * (size_t)mh;
    unsigned char *ma = k.malpha = (unsigned char *)malloc(mn2 ? mn2 : 1);
    int hard = 1;
    for (size_t i = 0; ma && i < mn2; i++) {
      ma[i] = mask[4 * i + 3];
      hard = hard && (ma[i] == 0 || ma[i] == 255);
    }
    if (!ma || !stbir_resize_uint8(ma, mw, mh, 0, alpha, w, h, 0, 1)) {
      failed(o, "resize", "cannot scale the mask to %dx%d", w, h);
      work_free(&k);
      return 0;
    }
    /* A hard mask stays hard: its edge where the filter crosses the middle,
     * not a rim of faint alpha that would count as kept. */
    if (hard)
      for (size_t i = 0; i < n; i++)
        alpha[i] = alpha[i] >= 128 ? 255 : 0;
    scaled = 1;
  }

  for (size_t i = 0; i < n; i++) {
    int d = pixel_diff(ans + 4 * i, base + 4 * i);
    if (alpha[i])
      o->keep++, o->drifted += d > in->tolerance;
    else
      o->edit++, o->unchanged += d <= in->tolerance;
  }
  o->width = w, o->height = h, o->scaled = scaled;
  if (!in->preserve) {
    work_free(&k);
    return 1;
  }

  if (in->feather > 0) {
    k.dist = (uint16_t *)malloc(n * sizeof *k.dist + 1);
    if (!k.dist) {
      work_free(&k);
      return failed(o, "memory", "out of memory");
    }
    distance_to_keep(alpha, k.dist, w, h, (uint16_t)(3 * (in->feather + 1)));
  }
  seam_weights(alpha, k.dist, n, in->feather);
  k.out = (unsigned char *)malloc(n * 4 + 1);
  if (!k.out) {
    work_free(&k);
    return failed(o, "memory", "out of memory");
  }
  blend(k.out, ans, base, alpha, n);

  /* The answer's own format; a lossless WebP stays lossless. */
  const ie_info info = jobs[0].out.info;
  int fmt = ie_format_index(info.format);
  WebPBitstreamFeatures feat;
  int lossless = fmt == 2 && WebPGetFeatures(in->answer, in->an, &feat) == VP8_STATUS_OK && feat.format == 2;
  /* An answer without an alpha channel gets none back. */
  int flags = (lossless ? IE_LOSSLESS : 0) | (info.has_alpha ? 0 : IE_DROP_ALPHA);
  ie_mem enc;
  if (fmt < 0 || !ie_encode_mem(k.out, w, h, fmt, in->quality, flags, &enc)) {
    failed(o, "encode", "cannot encode the composite as %s", info.format);
    work_free(&k);
    return 0;
  }
  o->bytes = enc.p, o->nbytes = enc.len, o->bytes_release = enc.release;
  if (in->keep_rgba && fmt == 0) /* the PNG holds exactly these: nobody decodes it again */
    o->rgba = k.out, k.out = NULL;
  work_free(&k);
  return 1;
}

/* inpaint(answer, base, mask [, {tolerance=30, preserve=false, feather=4, quality=90, max_pixels=,
 *         max_bytes=, answer_rgba=, width=, height=, keep_rgba=false}])
 * -> {width=, height=, keep=, edit=, drifted=, unchanged=, scaled=, bytes=, rgba=} | nil, message, reason
 * answer_rgba, width, height: the answer's pixels, decoded already (a
 * string or a buffer); with keep_rgba, a PNG composite's pixels come back
 * as rgba too (the PNG holds exactly them), so nobody decodes what was
 * just encoded.
 * keep: pixels the mask keeps (alpha > 0), drifted: those of them whose
 * largest channel difference from image 1 passes the tolerance; edit:
 * pixels to edit (alpha 0), unchanged: those within it. Image 1 and the mask
 * are scaled to the answer's size first when theirs differ. With preserve,
 * bytes is the composite, encoded in the answer's format. */
static int l_inpaint(lua_State *L) {
  ie_inpaint_in in;
  memset(&in, 0, sizeof in);
  in.answer = (const unsigned char *)luaL_checklstring(L, 1, &in.an);
  in.base = (const unsigned char *)luaL_checklstring(L, 2, &in.bn);
  in.mask = (const unsigned char *)luaL_checklstring(L, 3, &in.mn);
  int o = lua_istable(L, 4) ? 4 : 0;
  lua_Integer tol = o ? ie_opt_integer(L, o, "tolerance", 30) : 30;
  lua_Integer feather = o ? ie_opt_integer(L, o, "feather", 4) : 4;
  lua_Integer quality = o ? ie_opt_integer(L, o, "quality", 90) : 90;
  /* each of the three decodes is bounded on its own: they run at once */
  in.lim = (ie_limits){o ? ie_opt_integer(L, o, "max_pixels", IE_MAX_PIXELS) : IE_MAX_PIXELS,
                       o ? ie_opt_integer(L, o, "max_bytes", IE_MAX_DECODE_BYTES) : IE_MAX_DECODE_BYTES};
  in.preserve = o ? ie_opt_bool(L, o, "preserve") : 0;
  in.keep_rgba = o ? ie_opt_bool(L, o, "keep_rgba") : 0;
  luaL_argcheck(L, tol >= 0 && tol <= 255, 4, "tolerance out of range 0-255");
  luaL_argcheck(L, feather >= 0 && feather <= MAX_FEATHER, 4, "feather out of range 0-256");
  luaL_argcheck(L, quality >= 1 && quality <= 100, 4, "quality out of range 1-100");
  in.tolerance = (int)tol, in.feather = (int)feather, in.quality = (int)quality;
  lua_settop(L, 4);
  if (o) {
    lua_getfield(L, o, "answer_rgba"); /* index 5, kept while the pixels are used */
    if (!lua_isnil(L, 5)) {
      luaL_argcheck(L, lua_type(L, 5) == LUA_TSTRING || luaL_testudata(L, 5, IE_BUFFER_MT), 4,
                    "answer_rgba must be a string or a buffer");
      given_pixels(L, 5, ie_opt_integer(L, o, "width", 0), ie_opt_integer(L, o, "height", 0), &in);
    }
  }
  ie_inpaint_out r;
  if (!ie_inpaint(&in, &r))
    return ie_fail(L, r.reason ? r.reason : "corrupt", "%s", r.why);
  /* Lua from here: a box holds the results, so a memory error cannot leak them. */
  ie_inpaint_out *held = (ie_inpaint_out *)ie_newuserdata(L, sizeof *held);
  *held = r;
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, held_gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  ie_push_inpaint(L, held, 0);
  return 1;
}

void ie_open_composite(lua_State *L) {
  lua_pushcfunction(L, l_inpaint);
  lua_setfield(L, -2, "inpaint");
}
