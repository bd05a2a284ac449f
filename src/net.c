/* The network side of a transfer: verification and the caller's CAs, the
 * proxy, the share; the sockets of a multi's connections, so that a send
 * can tell a connection the server closed while it sat idle, and an HTTP/2
 * one; and what failed in a TLS handshake. All of it runs inside libcurl's
 * callbacks or after a transfer, in plain C. */
#include <string.h>

#include "http.h"
#include "platform.h"

#ifdef IE_OPENSSL
#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>
#endif

/* The multi keeps the sockets of its connections (libcurl opens and closes
 * them through these two callbacks), so that a send can find its own by the
 * local port libcurl names before it. */
static curl_socket_t open_sock(void *ud, curlsocktype purpose, struct curl_sockaddr *a) {
  multi *m = (multi *)ud;
  (void)purpose;
  /* Close-on-exec: a program the caller spawns must not hold a connection. */
  curl_socket_t fd = ie_os_socket(a->family, a->socktype, a->protocol);
  if (fd != CURL_SOCKET_BAD && m->nsocks < IE_MAX_SOCKS) {
    m->sends[m->nsocks] = 0;
    m->socks[m->nsocks++] = fd;
  }
  return fd;
}

static int close_sock(void *ud, curl_socket_t fd) {
  multi *m = (multi *)ud;
  for (int i = 0; i < m->nsocks; i++)
    if (m->socks[i] == fd) {
      m->nsocks--;
      m->socks[i] = m->socks[m->nsocks], m->sends[i] = m->sends[m->nsocks];
      break;
    }
  return ie_os_closesocket(fd);
}

/* Whether the server had already closed the connection this send is about
 * to use (it sent FIN while the connection sat idle in the pool): then the
 * request cannot reach it. libcurl's own liveness check misses this over
 * TLS, where the close_notify bytes waiting to be read look like data. */
int ie_net_peer_closed(multi *m, int local_port, int h2) {
  for (int i = 0; m && i < m->nsocks; i++) {
    if (ie_os_local_port(m->socks[i]) == local_port)
      return ie_os_peer_closed(m->socks[i], m->sends[i]++ > 0 && !h2);
  }
  return 0;
}

/* Whether this send goes out as an HTTP/2 stream: the ALPN its TLS
 * connection agreed on. */
int ie_net_on_h2(CURL *e) {
#ifndef IE_OPENSSL
  (void)e;
  return 0; /* no HTTP/2 in the Schannel builds */
#else
  struct curl_tlssessioninfo *ti = NULL;
  if (curl_easy_getinfo(e, CURLINFO_TLS_SSL_PTR, &ti) != CURLE_OK || !ti || ti->backend != CURLSSLBACKEND_OPENSSL ||
      !ti->internals)
    return 0;
  const unsigned char *p = NULL;
  unsigned n = 0;
  SSL_get0_alpn_selected((SSL *)ti->internals, &p, &n);
  return n == 2 && memcmp(p, "h2", 2) == 0;
#endif
}

/* Whether libcurl's TLS backend is OpenSSL (or a fork of it): then the
 * SSL_CTX can be reached and the verdicts read. */
static int backend_openssl(void) {
#ifdef IE_OPENSSL
  const curl_version_info_data *v = curl_version_info(CURLVERSION_NOW);
  const char *s = v->ssl_version ? v->ssl_version : "";
  return strncmp(s, "OpenSSL", 7) == 0 || strncmp(s, "LibreSSL", 8) == 0 || strncmp(s, "BoringSSL", 9) == 0 ||
         strncmp(s, "quictls", 7) == 0;
#else
  return 0;
#endif
}

/* The caller's certificate authorities go into the store libcurl already
 * filled from the system's: in addition, never instead. Runs in libcurl,
 * plain C. */
#ifdef IE_OPENSSL
static CURLcode add_cas(CURL *e, void *sslctx, void *ud) {
  const ie_net *net = (const ie_net *)ud;
  (void)e;
  X509_STORE *store = SSL_CTX_get_cert_store((SSL_CTX *)sslctx);
  if (!store || X509_STORE_load_locations(store, net->ca_file, net->ca_path) != 1)
    return CURLE_SSL_CACERT_BADFILE;
  return CURLE_OK;
}
#endif

/* Verification always on; the caller's CAs, the proxy, socket tracking. */
void ie_net_setup(CURL *e, multi *m) {
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
  curl_easy_setopt(e, CURLOPT_PROXY_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(e, CURLOPT_PROXY_SSL_VERIFYHOST, 2L);
  if ((m->net.ca_file || m->net.ca_path) && backend_openssl()) {
#ifdef IE_OPENSSL
    curl_easy_setopt(e, CURLOPT_SSL_CTX_FUNCTION, add_cas);
    curl_easy_setopt(e, CURLOPT_SSL_CTX_DATA, (void *)&m->net);
#endif
  } else if (m->net.ca_file || m->net.ca_path) {
    /* Other backends (Schannel, Secure Transport) take the caller's CAs
     * as libcurl allows: in place of the system's, not beside them. */
    if (m->net.ca_file)
      curl_easy_setopt(e, CURLOPT_CAINFO, m->net.ca_file);
    if (m->net.ca_path)
      curl_easy_setopt(e, CURLOPT_CAPATH, m->net.ca_path);
  }
  if (m->net.proxy) {
    curl_easy_setopt(e, CURLOPT_PROXY, m->net.proxy);
    /* The caller's proxy takes every request: NO_PROXY is for the
     * environment's proxy, not a chosen one. */
    if (*m->net.proxy)
      curl_easy_setopt(e, CURLOPT_NOPROXY, "");
  }
  /* The share is set by the network thread as it adds the handle, and
   * unset as it removes it: a share is used from one thread. */
  curl_easy_setopt(e, CURLOPT_OPENSOCKETFUNCTION, open_sock);
  curl_easy_setopt(e, CURLOPT_OPENSOCKETDATA, m);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETFUNCTION, close_sock);
  curl_easy_setopt(e, CURLOPT_CLOSESOCKETDATA, m);
}

/* What failed in a TLS handshake, in a word Lua turns into a sentence:
 * from OpenSSL's verdict on the chain, else from libcurl's own host name
 * check (which reports through its message only). */
const char *ie_net_tls_problem(const transfer *t) {
  if (t->code == CURLE_SSL_CACERT_BADFILE)
    return "ca_file";
  if (t->code == CURLE_PEER_FAILED_VERIFICATION && strstr(t->errbuf, "subject name"))
    return "host_mismatch";
  /* OpenSSL's verdict means something only when verification failed:
   * libcurl leaves it non-zero from the start of every handshake. */
  if (t->code != CURLE_PEER_FAILED_VERIFICATION && t->code != CURLE_SSL_ISSUER_ERROR) {
    if (strstr(t->errbuf, "wrong version number") || strstr(t->errbuf, "packet length too long"))
      return "not_tls";
    return "handshake";
  }
#ifndef IE_OPENSSL
  if (strstr(t->errbuf, "expired") || strstr(t->errbuf, "CERT_EXPIRED"))
    return "expired";
  if (strstr(t->errbuf, "CN_NO_MATCH") || strstr(t->errbuf, "name"))
    return "host_mismatch";
  if (strstr(t->errbuf, "UNTRUSTEDROOT") || strstr(t->errbuf, "untrusted") || strstr(t->errbuf, "issuer"))
    return "unknown_ca";
  return "untrusted";
#else
  if (!backend_openssl())
    return "untrusted";
  long v = X509_V_OK;
  if (t->e && curl_easy_getinfo(t->e, CURLINFO_SSL_VERIFYRESULT, &v) != CURLE_OK)
    v = X509_V_OK;
  if (v == X509_V_OK && t->e && curl_easy_getinfo(t->e, CURLINFO_PROXY_SSL_VERIFYRESULT, &v) != CURLE_OK)
    v = X509_V_OK;
  switch (v) {
  case X509_V_ERR_CERT_HAS_EXPIRED: return "expired";
  case X509_V_ERR_CERT_NOT_YET_VALID: return "not_yet_valid";
  case X509_V_ERR_HOSTNAME_MISMATCH:
  case X509_V_ERR_IP_ADDRESS_MISMATCH: return "host_mismatch";
  case X509_V_ERR_CERT_REVOKED: return "revoked";
  case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
  case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
  case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
  case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
  case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
  case X509_V_ERR_CERT_UNTRUSTED: return "unknown_ca";
  default: return "untrusted";
  }
#endif
}
