/* SHA-256 through the system's own library: OpenSSL's libcrypto on POSIX
 * (which libcurl already loads there), Windows' CNG elsewhere. One
 * streaming interface; final() leaves the context ready to start again. */
#include <stdlib.h>

#include "platform.h"

#ifdef IE_OPENSSL
#include <openssl/evp.h>

struct ie_sha256 {
  EVP_MD_CTX *md;
};

ie_sha256 *ie_sha256_new(void) {
  ie_sha256 *h = (ie_sha256 *)malloc(sizeof *h);
  if (!h)
    return NULL;
  h->md = EVP_MD_CTX_new();
  if (!h->md || !EVP_DigestInit_ex(h->md, EVP_sha256(), NULL)) {
    ie_sha256_free(h);
    return NULL;
  }
  return h;
}

int ie_sha256_update(ie_sha256 *h, const void *p, size_t n) { return EVP_DigestUpdate(h->md, p, n) == 1; }

int ie_sha256_final(ie_sha256 *h, unsigned char out[32]) {
  unsigned int n = 0;
  int ok = EVP_DigestFinal_ex(h->md, out, &n) == 1 && n == 32;
  return EVP_DigestInit_ex(h->md, EVP_sha256(), NULL) == 1 && ok;
}

void ie_sha256_free(ie_sha256 *h) {
  if (h) {
    EVP_MD_CTX_free(h->md);
    free(h);
  }
}
#elif defined(_WIN32)
/* clang-format off */
#include <windows.h>
#include <bcrypt.h>
/* clang-format on */

struct ie_sha256 {
  BCRYPT_HASH_HANDLE hash;
};

/* The algorithm provider is opened per hash: nothing global to set up or
 * tear down, and hashing is rare next to a network request. */
static int start(ie_sha256 *h) {
  BCRYPT_ALG_HANDLE alg = NULL;
  if (!BCRYPT_SUCCESS(BCryptOpenAlgorithmProvider(&alg, BCRYPT_SHA256_ALGORITHM, NULL, 0)))
    return 0;
  /* Since Windows 7 CNG allocates the hash object itself; the provider may
   * then be closed at once (the hash keeps what it needs). */
  NTSTATUS st = BCryptCreateHash(alg, &h->hash, NULL, 0, NULL, 0, 0);
  BCryptCloseAlgorithmProvider(alg, 0);
  return BCRYPT_SUCCESS(st);
}

ie_sha256 *ie_sha256_new(void) {
  ie_sha256 *h = (ie_sha256 *)calloc(1, sizeof *h);
  if (h && !start(h)) {
    free(h);
    return NULL;
  }
  return h;
}

int ie_sha256_update(ie_sha256 *h, const void *p, size_t n) {
  while (n > 0) {
    ULONG k = n > 0x40000000 ? 0x40000000 : (ULONG)n;
    if (!BCRYPT_SUCCESS(BCryptHashData(h->hash, (PUCHAR)p, k, 0)))
      return 0;
    p = (const char *)p + k, n -= k;
  }
  return 1;
}

int ie_sha256_final(ie_sha256 *h, unsigned char out[32]) {
  int ok = BCRYPT_SUCCESS(BCryptFinishHash(h->hash, out, 32, 0));
  BCryptDestroyHash(h->hash);
  h->hash = NULL;
  return start(h) && ok;
}

void ie_sha256_free(ie_sha256 *h) {
  if (h) {
    if (h->hash)
      BCryptDestroyHash(h->hash);
    free(h);
  }
}
#else
#error "no SHA-256: build with OpenSSL's libcrypto"
#endif
