/* Codecs: base64 and data URLs, SHA-256 (through platform.h's shim). */
#include <errno.h>
#include <string.h>
#include <strings.h>

#include "imgedit.h"
#include "platform.h"

/* The value of each base64 character, 64 for padding, 255 for the rest. */
static const unsigned char B64[256] = {
    ['A'] = 0,  ['B'] = 1,  ['C'] = 2,  ['D'] = 3,  ['E'] = 4,  ['F'] = 5,  ['G'] = 6,  ['H'] = 7,  ['I'] = 8,
    ['J'] = 9,  ['K'] = 10, ['L'] = 11, ['M'] = 12, ['N'] = 13, ['O'] = 14, ['P'] = 15, ['Q'] = 16, ['R'] = 17,
    ['S'] = 18, ['T'] = 19, ['U'] = 20, ['V'] = 21, ['W'] = 22, ['X'] = 23, ['Y'] = 24, ['Z'] = 25, ['a'] = 26,
    ['b'] = 27, ['c'] = 28, ['d'] = 29, ['e'] = 30, ['f'] = 31, ['g'] = 32, ['h'] = 33, ['i'] = 34, ['j'] = 35,
    ['k'] = 36, ['l'] = 37, ['m'] = 38, ['n'] = 39, ['o'] = 40, ['p'] = 41, ['q'] = 42, ['r'] = 43, ['s'] = 44,
    ['t'] = 45, ['u'] = 46, ['v'] = 47, ['w'] = 48, ['x'] = 49, ['y'] = 50, ['z'] = 51, ['0'] = 52, ['1'] = 53,
    ['2'] = 54, ['3'] = 55, ['4'] = 56, ['5'] = 57, ['6'] = 58, ['7'] = 59, ['8'] = 60, ['9'] = 61, ['+'] = 62,
    ['/'] = 63, ['='] = 64};

/* Designated initializers leave the rest 0, which is 'A': mark them. */
static int b64_value(unsigned char c) { return (B64[c] == 0 && c != 'A') ? 255 : B64[c]; }

/* Whole quads to bytes (the caller has checked length and padding);
 * 0 for a character outside the alphabet. */
static int b64_quads(const unsigned char *s, size_t n, unsigned char *out) {
  for (size_t i = 0; i < n; i += 4) {
    int a = b64_value(s[i]), b = b64_value(s[i + 1]), c = b64_value(s[i + 2]), d = b64_value(s[i + 3]);
    if ((a | b | c | d) & 0x80 || a == 64 || b == 64)
      return 0;
    c &= 63, d &= 63; /* padding decodes as zero bits, trimmed by the caller */
    uint32_t v = ((uint32_t)a << 18) | ((uint32_t)b << 12) | ((uint32_t)c << 6) | (uint32_t)d;
    *out++ = (unsigned char)(v >> 16), *out++ = (unsigned char)(v >> 8), *out++ = (unsigned char)v;
  }
  return 1;
}

/* Strict base64 into out (room for n / 4 * 3 bytes). Padding is required,
 * whitespace and characters outside the alphabet are errors: never silent
 * garbage. Returns 1 and the length, or 0 and why. Lua-free: the decoder
 * thread uses it too. */
int ie_b64_decode(const char *s, size_t n, unsigned char *out, size_t *outlen, char *why, size_t whylen) {
  if (n == 0)
    return snprintf(why, whylen, "empty base64 data"), 0;
  if (n % 4 != 0)
    return snprintf(why, whylen, "invalid base64 (length %zu is not a multiple of 4)", n), 0;
  if (n > (size_t)INT32_MAX)
    return snprintf(why, whylen, "base64 data too large"), 0;
  size_t pad = (s[n - 1] == '=') + (s[n - 1] == '=' && s[n - 2] == '=');
  /* '=' is only valid as padding at the very end. */
  const char *eq = memchr(s, '=', n);
  if (eq && (size_t)(eq - s) < n - pad)
    return snprintf(why, whylen, "invalid base64 (padding inside the data)"), 0;
  if ((unsigned char)s[0] <= ' ' || (unsigned char)s[n - 1 - pad] <= ' ')
    return snprintf(why, whylen, "invalid base64 (whitespace)"), 0;
  if (!b64_quads((const unsigned char *)s, n, out))
    return snprintf(why, whylen, "invalid base64 (character outside the alphabet)"), 0;
  *outlen = n / 4 * 3 - pad;
  return 1;
}

static int push_b64(lua_State *L, const char *s, size_t n) {
  char why[96];
  size_t got = 0;
  ie_buf b;
  unsigned char *out = (unsigned char *)ie_buf_init(L, &b, n / 4 * 3 + 1);
  if (!ie_b64_decode(s, n, out, &got, why, sizeof why))
    return ie_fail(L, "base64", "%s", why);
  ie_buf_push(L, &b, got);
  return 1;
}

static const char *skip_ws(const char *p, const char *end) {
  while (p < end && (*p == ' ' || *p == '\t' || *p == '\r' || *p == '\n'))
    p++;
  return p;
}

/* The next "b64_json": "..." of a JSON text, from byte `from` on: 1 and its
 * value's span as written (escapes and all), or 0 when there is none. */
int ie_b64_find(const char *s, size_t n, size_t from, ie_b64_value *v) {
  static const char key[] = "\"b64_json\"";
  const char *end = s + n;
  for (const char *k = s + from; k < end; k++) {
    k = ie_memmem(k, (size_t)(end - k), key, sizeof key - 1);
    if (!k)
      return 0;
    const char *p = skip_ws(k + sizeof key - 1, end);
    if (p >= end || *p++ != ':')
      continue;
    p = skip_ws(p, end);
    if (p >= end || *p != '"')
      continue; /* null, or not a string */
    const char *open = p++, *q = p;
    int escaped = 0;
    while (q < end && *q != '"') {
      if (*q == '\\')
        escaped = 1, q++;
      q++;
    }
    if (q >= end)
      return 0;
    v->open = (size_t)(open - s), v->close = (size_t)(q - s), v->escaped = escaped;
    v->p = p, v->len = (size_t)(q - p);
    return 1;
  }
  return 0;
}

/* The base64 of a value: itself, or a data: URL's payload. 0 when it is a
 * data: URL that is not a base64 image. */
int ie_b64_payload(const char **p, size_t *len) {
  const char *s = *p;
  size_t n = *len;
  if (n < 5 || strncasecmp(s, "data:", 5) != 0)
    return 1;
  const char *comma = memchr(s, ',', n < 256 ? n : 256);
  if (!comma || comma - s < 12 || strncasecmp(comma - 7, ";base64", 7) != 0 || strncasecmp(s + 5, "image/", 6) != 0)
    return 0;
  *len = n - (size_t)(comma + 1 - s), *p = comma + 1;
  return 1;
}

static int l_b64decode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  return push_b64(L, s, n);
}

static int l_b64encode(lua_State *L) {
  size_t n;
  const unsigned char *s = (const unsigned char *)luaL_checklstring(L, 1, &n);
  luaL_argcheck(L, n <= (size_t)INT32_MAX / 4 * 3, 1, "too large");
  ie_buf b;
  char *out = ie_buf_init(L, &b, (n + 2) / 3 * 4 + 1);
  static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  char *o = out;
  size_t i = 0;
  for (; i + 3 <= n; i += 3) {
    uint32_t v = ((uint32_t)s[i] << 16) | ((uint32_t)s[i + 1] << 8) | s[i + 2];
    *o++ = abc[v >> 18], *o++ = abc[(v >> 12) & 63], *o++ = abc[(v >> 6) & 63], *o++ = abc[v & 63];
  }
  if (i < n) {
    uint32_t v = (uint32_t)s[i] << 16 | (i + 1 < n ? (uint32_t)s[i + 1] << 8 : 0);
    *o++ = abc[v >> 18], *o++ = abc[(v >> 12) & 63];
    *o++ = i + 1 < n ? abc[(v >> 6) & 63] : '=';
    *o++ = '=';
  }
  ie_buf_push(L, &b, (size_t)(o - out));
  return 1;
}

/* data:<mime>[;param]*;base64,<payload> -> bytes, mime */
static int l_dataurl_decode(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  if (n < 5 || strncasecmp(s, "data:", 5) != 0)
    return ie_fail(L, "dataurl", "not a data URL");
  const char *comma = memchr(s, ',', n);
  if (!comma)
    return ie_fail(L, "dataurl", "invalid data URL (no comma)");
  size_t head = (size_t)(comma - s);
  if (head < 12 || strncasecmp(comma - 7, ";base64", 7) != 0)
    return ie_fail(L, "dataurl", "data URL is not base64-encoded");
  const char *mime = s + 5;
  size_t mlen = strcspn(mime, ";,");
  if (mlen < 7 || strncasecmp(mime, "image/", 6) != 0)
    return ie_fail(L, "dataurl", "data URL does not carry an image");
  if (push_b64(L, comma + 1, n - head - 1) != 1)
    return 3;
  lua_pushlstring(L, mime, mlen);
  return 2;
}

/* json_b64(body) -> bytes, open, close | nil
 * The fast path for answers: find the one "b64_json" string in a JSON body
 * and decode its base64 (raw, or a data: URL) straight from the body, with
 * no copy of the string. open and close are the 1-based positions of its
 * quotes, so Lua can decode the rest of the JSON without the big string and
 * check that the value sat where it should. Anything unusual (no key, two
 * keys, escapes inside the value) returns nil: the caller takes the plain
 * path. Invalid base64 returns nil, message, reason. */
static int l_json_b64(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  ie_b64_value v, again;
  if (!ie_b64_find(s, n, 0, &v) || v.escaped || ie_b64_find(s, n, v.close + 1, &again))
    return 0; /* escaped content, or two: leave it to the JSON decoder */
  if (!ie_b64_payload(&v.p, &v.len))
    return ie_fail(L, "dataurl", "the data URL is not a base64 image");
  if (push_b64(L, v.p, v.len) != 1)
    return 3;
  lua_pushinteger(L, (lua_Integer)v.open + 1);
  lua_pushinteger(L, (lua_Integer)v.close + 1);
  return 3;
}

static void push_hex(lua_State *L, const unsigned char *d, unsigned n) {
  static const char hex[] = "0123456789abcdef";
  char out[64];
  for (unsigned i = 0; i < n; i++)
    out[2 * i] = hex[d[i] >> 4], out[2 * i + 1] = hex[d[i] & 15];
  lua_pushlstring(L, out, 2 * (size_t)n);
}

static int l_sha256(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  unsigned char md[32];
  ie_sha256 *h = ie_sha256_new();
  int ok = h && ie_sha256_update(h, s, n) && ie_sha256_final(h, md);
  ie_sha256_free(h);
  if (!ok)
    return ie_fail(L, "crypto", "SHA-256 failed");
  push_hex(L, md, 32);
  return 1;
}

/* Stream a file through SHA-256 without holding it in memory. */
static int l_sha256_file(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int fd = ie_os_open_read(path);
  if (fd < 0)
    return ie_fail(L, "io", "cannot open: %s", ie_os_strerror(errno));
  ie_stat st;
  if (ie_os_fstat(fd, &st) != 0 || st.kind != IE_KIND_REG) {
    ie_os_close(fd);
    return ie_fail(L, "io", "not a regular file");
  }
  ie_sha256 *h = ie_sha256_new();
  int ok = h != NULL;
  unsigned char buf[65536];
  int err = 0;
  while (ok) {
    ie_ssize r = ie_os_read(fd, buf, sizeof buf);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0)
      err = errno, ok = 0;
    if (r <= 0)
      break;
    ok = ie_sha256_update(h, buf, (size_t)r);
  }
  unsigned char md[32];
  ok = ok && ie_sha256_final(h, md);
  ie_sha256_free(h);
  ie_os_close(fd);
  if (!ok)
    return ie_fail(L, "io", "cannot read: %s", err ? ie_os_strerror(err) : "digest failed");
  push_hex(L, md, 32);
  return 1;
}

void ie_open_codec(lua_State *L) {
  static const luaL_Reg fns[] = {{"b64decode", l_b64decode},
                                 {"b64encode", l_b64encode},
                                 {"dataurl_decode", l_dataurl_decode},
                                 {"sha256", l_sha256},
                                 {"sha256_file", l_sha256_file},
                                 {"json_b64", l_json_b64},
                                 {NULL, NULL}};
  luaL_setfuncs(L, fns, 0);
}
