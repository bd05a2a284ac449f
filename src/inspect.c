/* Image inspection from headers only: the format from the magic bytes, the
 * dimensions, channels and alpha, and a cheap structural check for truncation.
 * Nothing here decodes pixels or allocates by the declared size, so a header
 * that claims 60000x60000 costs the same as one that claims 16x16. */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <webp/decode.h>

#include "imgedit.h"
#include "platform.h"

/* Upper bound on chunks/segments walked; real files have far fewer. */
#define MAX_WALK 1000000

static size_t src_read(const ie_src *s, uint64_t off, void *buf, size_t n) {
  if (off >= s->size)
    return 0;
  if (n > s->size - off)
    n = (size_t)(s->size - off);
  if (s->mem) {
    memcpy(buf, s->mem + off, n);
    return n;
  }
  size_t got = 0;
  while (got < n) {
    ie_ssize r = ie_os_pread(s->fd, (char *)buf + got, n - got, off + got);
    if (r < 0 && errno == EINTR)
      continue;
    if (r <= 0)
      break;
    got += (size_t)r;
  }
  return got;
}

static uint32_t be32(const unsigned char *p) {
  return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}
static uint32_t be16(const unsigned char *p) { return ((uint32_t)p[0] << 8) | p[1]; }
static uint32_t le32(const unsigned char *p) {
  return ((uint32_t)p[3] << 24) | ((uint32_t)p[2] << 16) | ((uint32_t)p[1] << 8) | p[0];
}
static uint32_t le16(const unsigned char *p) { return ((uint32_t)p[1] << 8) | p[0]; }

static int say(char *why, size_t len, int status, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, len, fmt, ap);
  va_end(ap);
  return status;
}

/* ---- PNG: IHDR, then walk the chunks by their lengths to IEND ---- */

/* deflate cannot shrink data by more than about 1032:1 (a 258-byte match in
 * two bits, zlib's tech notes), so the IDAT bytes bound the pixels they can
 * hold. A header that declares more (a decompression bomb, or a picture cut
 * short) is refused from the chunk lengths alone, without inflating. */
#define DEFLATE_MAX_RATIO 1032u

static int png_data_holds(const ie_info *o, int ctype, uint64_t idat, char *why, size_t wl) {
  static const int samples[] = {1, 0, 3, 1, 2, 0, 4};
  uint64_t bits = (uint64_t)o->width * o->height * (uint64_t)samples[ctype] * (uint64_t)o->bit_depth;
  uint64_t need = bits / 8;
  if (idat == 0)
    return say(why, wl, IE_CORRUPT, "corrupt PNG (no image data)");
  if (need / DEFLATE_MAX_RATIO > idat)
    return say(why, wl, IE_CORRUPT,
               "corrupt PNG (declares %ux%u pixels, but its %llu bytes of image data cannot hold them)",
               (unsigned)o->width, (unsigned)o->height, (unsigned long long)idat);
  return IE_OK;
}

static int inspect_png(const ie_src *s, ie_info *o, char *why, size_t wl) {
  unsigned char h[8 + 8 + 13];
  if (src_read(s, 0, h, sizeof h) < sizeof h)
    return say(why, wl, IE_TRUNCATED, "truncated PNG (header incomplete)");
  if (be32(h + 8) != 13 || memcmp(h + 12, "IHDR", 4) != 0)
    return say(why, wl, IE_CORRUPT, "corrupt PNG (first chunk is not IHDR)");
  o->width = be32(h + 16);
  o->height = be32(h + 20);
  o->bit_depth = h[24];
  int ctype = h[25];
  o->interlaced = h[28] == 1;
  if (o->width == 0 || o->height == 0 || o->width > 0x7fffffffu || o->height > 0x7fffffffu)
    return say(why, wl, IE_CORRUPT, "corrupt PNG (invalid dimensions)");
  switch (ctype) {
  case 0: o->channels = 1; break;
  case 2: o->channels = 3; break;
  case 3: o->channels = 3; break;
  case 4:
    o->channels = 2;
    o->has_alpha = 1;
    break;
  case 6:
    o->channels = 4;
    o->has_alpha = 1;
    break;
  default: return say(why, wl, IE_CORRUPT, "corrupt PNG (colour type %d)", ctype);
  }
  uint64_t off = 8, idat = 0;
  for (long n = 0; n < MAX_WALK; n++) {
    unsigned char c[8];
    if (src_read(s, off, c, 8) < 8)
      return say(why, wl, IE_TRUNCATED, "truncated PNG (ends inside chunk list, no IEND)");
    uint32_t len = be32(c);
    if (len > 0x7fffffffu)
      return say(why, wl, IE_CORRUPT, "corrupt PNG (chunk length %u)", (unsigned)len);
    uint64_t end = off + 12 + (uint64_t)len;
    if (end > s->size)
      return say(why, wl, IE_TRUNCATED, "truncated PNG (chunk %.4s cut short)", (const char *)c + 4);
    if (memcmp(c + 4, "tRNS", 4) == 0 && (ctype == 0 || ctype == 2 || ctype == 3)) {
      o->has_alpha = 1;
      o->channels = ctype == 0 ? 2 : 4;
    }
    if (memcmp(c + 4, "IDAT", 4) == 0)
      idat += len;
    if (memcmp(c + 4, "IEND", 4) == 0)
      return png_data_holds(o, ctype, idat, why, wl);
    off = end;
  }
  return say(why, wl, IE_CORRUPT, "corrupt PNG (too many chunks)");
}

/* ---- JPEG: walk the segments to the frame header, then demand EOI at the end ---- */

static int jpeg_has_eoi(const ie_src *s) {
  unsigned char tail[64];
  uint64_t n = s->size < sizeof tail ? s->size : sizeof tail;
  if (src_read(s, s->size - n, tail, (size_t)n) < n)
    return 0;
  /* Tolerate padding some writers leave after EOI. */
  while (n > 2 && (tail[n - 1] == 0 || tail[n - 1] == '\n' || tail[n - 1] == '\r' || tail[n - 1] == ' '))
    n--;
  return n >= 2 && tail[n - 2] == 0xFF && tail[n - 1] == 0xD9;
}

/* After the frame header: the segments up to the first scan (SOS), which
 * must carry data before the end-of-image marker. A header with no scan
 * declares pixels it does not hold. */
static int jpeg_has_scan(const ie_src *s, uint64_t off, char *why, size_t wl) {
  for (long n = 0; n < MAX_WALK; n++) {
    unsigned char m[4];
    if (src_read(s, off, m, 4) < 2)
      break;
    if (m[0] != 0xFF)
      return say(why, wl, IE_CORRUPT, "corrupt JPEG (marker expected at byte %llu)", (unsigned long long)off);
    if (m[1] == 0xFF) {
      off += 1;
      continue;
    }
    if (m[1] == 0xD9)
      break;
    if (m[1] == 0x01 || (m[1] >= 0xD0 && m[1] <= 0xD8)) {
      off += 2;
      continue;
    }
    uint32_t len = be16(m + 2);
    if (len < 2)
      return say(why, wl, IE_CORRUPT, "corrupt JPEG (segment length %u)", (unsigned)len);
    if (m[1] == 0xDA) {
      /* entropy-coded data, then at least the two bytes of EOI */
      if (off + 2 + len + 2 >= s->size)
        break;
      return IE_OK;
    }
    off += 2 + len;
  }
  return say(why, wl, IE_CORRUPT, "corrupt JPEG (no scan data: the header declares pixels the file does not hold)");
}

static int inspect_jpeg(const ie_src *s, ie_info *o, char *why, size_t wl) {
  uint64_t off = 2;
  for (long n = 0; n < MAX_WALK; n++) {
    unsigned char m[2];
    if (src_read(s, off, m, 2) < 2)
      return say(why, wl, IE_TRUNCATED, "truncated JPEG (no frame header)");
    if (m[0] != 0xFF)
      return say(why, wl, IE_CORRUPT, "corrupt JPEG (marker expected at byte %llu)", (unsigned long long)off);
    if (m[1] == 0xFF) { /* fill byte */
      off += 1;
      continue;
    }
    off += 2;
    if (m[1] == 0x01 || (m[1] >= 0xD0 && m[1] <= 0xD8))
      continue; /* markers without a length */
    if (m[1] == 0xD9 || m[1] == 0xDA)
      return say(why, wl, IE_CORRUPT, "corrupt JPEG (no frame header before scan data)");
    unsigned char seg[8];
    size_t got = src_read(s, off, seg, sizeof seg);
    if (got < 2)
      return say(why, wl, IE_TRUNCATED, "truncated JPEG (segment cut short)");
    uint32_t len = be16(seg);
    if (len < 2)
      return say(why, wl, IE_CORRUPT, "corrupt JPEG (segment length %u)", (unsigned)len);
    int sof = m[1] >= 0xC0 && m[1] <= 0xCF && m[1] != 0xC4 && m[1] != 0xC8 && m[1] != 0xCC;
    if (sof) {
      if (got < 8 || len < 8)
        return say(why, wl, IE_TRUNCATED, "truncated JPEG (frame header cut short)");
      o->bit_depth = seg[2];
      o->height = be16(seg + 3);
      o->width = be16(seg + 5);
      o->channels = seg[7];
      o->interlaced = m[1] == 0xC2 || m[1] == 0xC6 || m[1] == 0xCA || m[1] == 0xCE;
      o->has_alpha = 0; /* JPEG has none; 4 components are CMYK */
      if (o->width == 0 || o->height == 0)
        return say(why, wl, IE_CORRUPT, "corrupt JPEG (invalid dimensions)");
      if (o->channels != 1 && o->channels != 3 && o->channels != 4)
        return say(why, wl, IE_CORRUPT, "corrupt JPEG (%d components)", o->channels);
      if (!jpeg_has_eoi(s))
        return say(why, wl, IE_TRUNCATED, "truncated JPEG (no end-of-image marker)");
      return jpeg_has_scan(s, off + len, why, wl);
    }
    off += len;
  }
  return say(why, wl, IE_CORRUPT, "corrupt JPEG (too many segments)");
}

/* ---- WebP: RIFF size must match the file; features from libwebp ---- */

/* The chunks after the header: a picture needs an image chunk (VP8 or VP8L,
 * or animation frames), and a still one's bitstream must be the canvas's
 * size. Only chunk headers and the first bytes of the bitstream are read. */
static int webp_frame_holds(const ie_src *s, const ie_info *o, int animated, char *why, size_t wl) {
  uint64_t off = 12;
  for (long n = 0; n < MAX_WALK && off + 8 <= s->size; n++) {
    unsigned char c[8 + 10];
    size_t got = src_read(s, off, c, sizeof c);
    uint32_t len = le32(c + 4);
    if ((uint64_t)len > s->size - off - 8)
      return say(why, wl, IE_TRUNCATED, "truncated WebP (chunk %.4s cut short)", (const char *)c);
    uint32_t w = 0, h = 0;
    if (memcmp(c, "ANMF", 4) == 0 && animated)
      return IE_OK;
    if (memcmp(c, "VP8 ", 4) == 0 && got >= 18 && len >= 10 && c[11] == 0x9d && c[12] == 0x01 && c[13] == 0x2a) {
      w = le16(c + 14) & 0x3fff, h = le16(c + 16) & 0x3fff;
    } else if (memcmp(c, "VP8L", 4) == 0 && got >= 13 && len >= 5 && c[8] == 0x2f) {
      uint32_t bits = le32(c + 9);
      w = (bits & 0x3fff) + 1, h = ((bits >> 14) & 0x3fff) + 1;
    } else if (memcmp(c, "VP8 ", 4) == 0 || memcmp(c, "VP8L", 4) == 0) {
      return say(why, wl, IE_CORRUPT, "corrupt WebP (bad %.4s bitstream header)", (const char *)c);
    }
    if (w || h) {
      if (w != o->width || h != o->height)
        return say(why, wl, IE_CORRUPT, "corrupt WebP (a %ux%u canvas, but its image is %ux%u)", (unsigned)o->width,
                   (unsigned)o->height, (unsigned)w, (unsigned)h);
      return IE_OK;
    }
    off += 8 + (uint64_t)len + (len & 1);
  }
  return say(why, wl, IE_CORRUPT, "corrupt WebP (no image data: the header declares pixels the file does not hold)");
}

static int inspect_webp(const ie_src *s, ie_info *o, char *why, size_t wl) {
  unsigned char h[64];
  size_t got = src_read(s, 0, h, sizeof h);
  uint64_t riff = (uint64_t)le32(h + 4) + 8;
  if (riff > s->size)
    return say(why, wl, IE_TRUNCATED, "truncated WebP (RIFF size %llu, file %llu bytes)", (unsigned long long)riff,
               (unsigned long long)s->size);
  if (riff < s->size)
    return say(why, wl, IE_CORRUPT, "corrupt WebP (%llu bytes after the RIFF data)",
               (unsigned long long)(s->size - riff));
  WebPBitstreamFeatures f;
  VP8StatusCode st = WebPGetFeatures(h, got, &f);
  if (st == VP8_STATUS_NOT_ENOUGH_DATA)
    return say(why, wl, IE_TRUNCATED, "truncated WebP (header incomplete)");
  if (st != VP8_STATUS_OK)
    return say(why, wl, IE_CORRUPT, "corrupt WebP header (libwebp status %d)", (int)st);
  o->width = (uint32_t)f.width;
  o->height = (uint32_t)f.height;
  o->has_alpha = f.has_alpha != 0;
  o->channels = f.has_alpha ? 4 : 3;
  o->bit_depth = 8;
  return webp_frame_holds(s, o, f.has_animation, why, wl);
}

int ie_inspect(const ie_src *s, ie_info *o, char *why, size_t wl) {
  unsigned char m[32];
  memset(o, 0, sizeof *o);
  o->bytes = s->size;
  size_t n = src_read(s, 0, m, sizeof m);
  if (s->size == 0)
    return say(why, wl, IE_UNKNOWN, "empty file (0 bytes)");
  if (n >= 8 && memcmp(m, "\x89PNG\r\n\x1a\n", 8) == 0) {
    o->format = "png", o->mime = "image/png", o->accepted = 1;
    return inspect_png(s, o, why, wl);
  }
  if (n >= 3 && m[0] == 0xFF && m[1] == 0xD8 && m[2] == 0xFF) {
    o->format = "jpeg", o->mime = "image/jpeg", o->accepted = 1;
    return inspect_jpeg(s, o, why, wl);
  }
  if (n >= 12 && memcmp(m, "RIFF", 4) == 0 && memcmp(m + 8, "WEBP", 4) == 0) {
    o->format = "webp", o->mime = "image/webp", o->accepted = 1;
    return inspect_webp(s, o, why, wl);
  }
  /* Recognised but refused for upload: say what they are. */
  if (n >= 10 && (memcmp(m, "GIF87a", 6) == 0 || memcmp(m, "GIF89a", 6) == 0)) {
    o->format = "gif", o->mime = "image/gif";
    o->width = le16(m + 6), o->height = le16(m + 8), o->channels = 3, o->bit_depth = 8;
    return IE_OK;
  }
  if (n >= 26 && m[0] == 'B' && m[1] == 'M') {
    int32_t hgt = (int32_t)le32(m + 22);
    o->format = "bmp", o->mime = "image/bmp";
    o->width = le32(m + 18), o->height = (uint32_t)(hgt < 0 ? -(int64_t)hgt : hgt);
    o->bit_depth = le16(m + 28);
    o->channels = o->bit_depth == 32 ? 4 : 3;
    return IE_OK;
  }
  if (n >= 4 && (memcmp(m, "II*\0", 4) == 0 || memcmp(m, "MM\0*", 4) == 0)) {
    o->format = "tiff", o->mime = "image/tiff";
    return IE_OK;
  }
  return say(why, wl, IE_UNKNOWN, "not a PNG, JPEG or WebP image (unknown format)");
}

/* ---- Lua binding: inspect(path) / inspect(bytes, true) ---- */

void ie_file_stamp(const ie_stat *st, char *out, size_t len) {
  snprintf(out, len, "%llu:%llu:%lld:%lld.%09ld:%lld.%09ld", (unsigned long long)st->dev, (unsigned long long)st->ino,
           (long long)st->size, (long long)st->mtime_s, st->mtime_ns, (long long)st->ctime_s, st->ctime_ns);
}

/* A file changed within the last two seconds (or in the future) may change
 * again without its ctime moving: timestamps advance by a clock tick, and
 * by whole seconds on some file systems. Its stamp alone cannot vouch for
 * its bytes. */
static int racy(const ie_stat *st) {
  double age = ie_os_realtime() - ((double)st->ctime_s + (double)st->ctime_ns / 1e9);
  return age < 2.0;
}

static void push_info(lua_State *L, const ie_info *o) {
  lua_createtable(L, 0, 10);
  lua_pushstring(L, o->format), lua_setfield(L, -2, "format");
  lua_pushstring(L, o->mime), lua_setfield(L, -2, "mime");
  if (o->width)
    lua_pushinteger(L, o->width), lua_setfield(L, -2, "width");
  if (o->height)
    lua_pushinteger(L, o->height), lua_setfield(L, -2, "height");
  if (o->channels)
    lua_pushinteger(L, o->channels), lua_setfield(L, -2, "channels");
  if (o->bit_depth)
    lua_pushinteger(L, o->bit_depth), lua_setfield(L, -2, "bit_depth");
  lua_pushboolean(L, o->has_alpha), lua_setfield(L, -2, "has_alpha");
  lua_pushboolean(L, o->interlaced), lua_setfield(L, -2, "interlaced");
  lua_pushboolean(L, o->accepted), lua_setfield(L, -2, "accepted");
  lua_pushinteger(L, (lua_Integer)o->bytes), lua_setfield(L, -2, "bytes");
}

static const char *const status_names[] = {"ok", "io", "truncated", "corrupt", "unknown_format"};

/* inspect(path) reads a file's header; inspect(bytes, true) looks at a string.
 * Returns the info table, or nil, message, reason. */
int ie_lua_inspect(lua_State *L) {
  size_t len;
  const char *arg = luaL_checklstring(L, 1, &len);
  int from_bytes = lua_toboolean(L, 2);
  ie_src s = {NULL, -1, 0};
  ie_info info;
  char why[160], stamp[IE_STAMP_LEN] = "";
  int is_racy = 0;
  if (from_bytes) {
    s.mem = (const unsigned char *)arg, s.size = len;
  } else {
    s.fd = ie_os_open_read(arg);
    if (s.fd < 0)
      return ie_fail(L, "io", "cannot open: %s", ie_os_strerror(errno));
    ie_stat st;
    if (ie_os_fstat(s.fd, &st) != 0 || st.kind != IE_KIND_REG) {
      int dir = st.kind == IE_KIND_DIR;
      ie_os_close(s.fd);
      return ie_fail(L, "io", dir ? "is a directory" : "not a regular file");
    }
    s.size = (uint64_t)st.size;
    /* Taken before the header is read: a change from here on shows. */
    ie_file_stamp(&st, stamp, sizeof stamp);
    is_racy = racy(&st);
  }
  int rc = ie_inspect(&s, &info, why, sizeof why);
  if (s.fd >= 0)
    ie_os_close(s.fd);
  if (rc != IE_OK)
    return ie_fail(L, status_names[rc], "%s", why);
  push_info(L, &info);
  if (stamp[0]) {
    lua_pushstring(L, stamp), lua_setfield(L, -2, "stamp");
    lua_pushboolean(L, is_racy), lua_setfield(L, -2, "racy");
  }
  return 1;
}
