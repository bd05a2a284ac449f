/*
 * Smoke test for the Windows libcurl that tools/windows/deps.sh builds; run
 * under wine by tools/windows/check.sh. Prints curl_version() and fails
 * unless the features imgedit relies on are there: Schannel TLS, zlib, the
 * threaded resolver (the multi interface must not block on DNS), proxies
 * (HTTPS proxies need TLS), a working multi handle and CURLOPT_CAINFO.
 */
#include <stdio.h>
#include <string.h>
#include <curl/curl.h>

int main(void)
{
  curl_version_info_data *v;
  CURL *e;
  CURLM *m;
  int bad = 0;

  if (curl_global_init(CURL_GLOBAL_ALL) != CURLE_OK) {
    fprintf(stderr, "curl_global_init failed\n");
    return 1;
  }
  printf("%s\n", curl_version());
  v = curl_version_info(CURLVERSION_NOW);
  if (!v->ssl_version || !strstr(v->ssl_version, "Schannel")) {
    fprintf(stderr, "no Schannel\n");
    bad = 1;
  }
  if (!(v->features & CURL_VERSION_LIBZ)) {
    fprintf(stderr, "no zlib\n");
    bad = 1;
  }
  if (!(v->features & CURL_VERSION_ASYNCHDNS)) {
    fprintf(stderr, "no threaded resolver\n");
    bad = 1;
  }
  if (!(v->features & CURL_VERSION_HTTPS_PROXY)) {
    fprintf(stderr, "no HTTPS proxy support\n");
    bad = 1;
  }
  e = curl_easy_init();
  m = curl_multi_init();
  if (!e || !m) {
    fprintf(stderr, "no easy or multi handle\n");
    bad = 1;
  } else {
    /* Options a build without them rejects with CURLE_UNKNOWN_OPTION or
       CURLE_NOT_BUILT_IN. */
    if (curl_easy_setopt(e, CURLOPT_CAINFO, "ca.pem") != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_PROXY, "http://127.0.0.1:9") != CURLE_OK ||
        curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1) != CURLE_OK) {
      fprintf(stderr, "CAINFO, PROXY or HTTP/1.1 refused\n");
      bad = 1;
    }
    if (curl_multi_add_handle(m, e) != CURLM_OK || curl_multi_remove_handle(m, e) != CURLM_OK) {
      fprintf(stderr, "multi interface failed\n");
      bad = 1;
    }
  }
  if (m)
    curl_multi_cleanup(m);
  if (e)
    curl_easy_cleanup(e);
  curl_global_cleanup();
  return bad;
}
