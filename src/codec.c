/* Codecs: base64 and data URLs (OpenSSL's EVP block coder), SHA-256 (libcrypto). */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "imgedit.h"

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
  /* EVP_DecodeBlock trims surrounding whitespace; refuse it beforehand. */
  if ((unsigned char)s[0] <= ' ' || (unsigned char)s[n - 1 - pad] <= ' ')
    return snprintf(why, whylen, "invalid base64 (whitespace)"), 0;
  int got = EVP_DecodeBlock(out, (const unsigned char *)s, (int)n);
  if (got < 0)
    return snprintf(why, whylen, "invalid base64 (character outside the alphabet)"), 0;
  *outlen = (size_t)got - pad;
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
    k = memmem(k, (size_t)(end - k), key, sizeof key - 1);
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
  int got = EVP_EncodeBlock((unsigned char *)out, s, (int)n);
  ie_buf_push(L, &b, (size_t)got);
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
  char out[2 * EVP_MAX_MD_SIZE];
  for (unsigned i = 0; i < n; i++)
    out[2 * i] = hex[d[i] >> 4], out[2 * i + 1] = hex[d[i] & 15];
  lua_pushlstring(L, out, 2 * (size_t)n);
}

static int l_sha256(lua_State *L) {
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned mdlen = 0;
  if (!EVP_Digest(s, n, md, &mdlen, EVP_sha256(), NULL))
    return ie_fail(L, "crypto", "SHA-256 failed");
  push_hex(L, md, mdlen);
  return 1;
}

/* Stream a file through SHA-256 without holding it in memory. */
static int l_sha256_file(lua_State *L) {
  const char *path = luaL_checkstring(L, 1);
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK); /* a FIFO must not block us */
  if (fd < 0)
    return ie_fail(L, "io", "cannot open: %s", strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    close(fd);
    return ie_fail(L, "io", "not a regular file");
  }
  EVP_MD_CTX *ctx = EVP_MD_CTX_new();
  int ok = ctx && EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
  unsigned char buf[65536];
  int err = 0;
  while (ok) {
    ssize_t r = read(fd, buf, sizeof buf);
    if (r < 0 && errno == EINTR)
      continue;
    if (r < 0)
      err = errno, ok = 0;
    if (r <= 0)
      break;
    ok = EVP_DigestUpdate(ctx, buf, (size_t)r);
  }
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned mdlen = 0;
  ok = ok && EVP_DigestFinal_ex(ctx, md, &mdlen);
  EVP_MD_CTX_free(ctx);
  close(fd);
  if (!ok)
    return ie_fail(L, "io", "cannot read: %s", err ? strerror(err) : "digest failed");
  push_hex(L, md, mdlen);
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
