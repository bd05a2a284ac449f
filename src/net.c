/* The network side of a transfer: verification and the caller's CAs, the
 * proxy, the share; the sockets of a multi's connections, so that a send
 * can tell a connection the server closed while it sat idle, and an HTTP/2
 * one; and what failed in a TLS handshake. All of it runs inside libcurl's
 * callbacks or after a transfer, in plain C. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/ssl.h>
#include <openssl/x509_vfy.h>

#include "http.h"

/* The multi keeps the sockets of its connections (libcurl opens and closes
 * them through these two callbacks), so that a send can find its own by the
 * local port libcurl names before it. */
static curl_socket_t open_sock(void *ud, curlsocktype purpose, struct curl_sockaddr *a) {
  multi *m = (multi *)ud;
  (void)purpose;
  /* Close-on-exec: a program the caller spawns must not hold a connection. */
  curl_socket_t fd = socket(a->family, a->socktype | SOCK_CLOEXEC, a->protocol);
  if (fd != CURL_SOCKET_BAD && m->nsocks < IE_MAX_SOCKS)
    m->socks[m->nsocks++] = fd;
  return fd;
}

static int close_sock(void *ud, curl_socket_t fd) {
  multi *m = (multi *)ud;
  for (int i = 0; i < m->nsocks; i++)
    if (m->socks[i] == fd) {
      m->socks[i] = m->socks[--m->nsocks];
      break;
    }
  return close(fd);
}

static int local_port_of(curl_socket_t fd) {
  struct sockaddr_storage ss;
  socklen_t n = sizeof ss;
  if (getsockname(fd, (struct sockaddr *)&ss, &n) != 0)
    return -1;
  if (ss.ss_family == AF_INET)
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
  if (ss.ss_family == AF_INET6)
    return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
  return -1;
}

/* Whether the server had already closed the connection this send is about
 * to use (it sent FIN while the connection sat idle in the pool): then the
 * request cannot reach it. libcurl's own liveness check misses this over
 * TLS, where the close_notify bytes waiting to be read look like data. */
int ie_net_peer_closed(const multi *m, int local_port) {
  for (int i = 0; m && i < m->nsocks; i++) {
    if (local_port_of(m->socks[i]) != local_port)
      continue;
    struct pollfd p = {m->socks[i], POLLRDHUP, 0};
    return poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP)) != 0;
  }
  return 0;
}

/* Whether this send goes out as an HTTP/2 stream: the ALPN its TLS
 * connection agreed on. */
int ie_net_on_h2(CURL *e) {
  struct curl_tlssessioninfo *ti = NULL;
  if (curl_easy_getinfo(e, CURLINFO_TLS_SSL_PTR, &ti) != CURLE_OK || !ti || ti->backend != CURLSSLBACKEND_OPENSSL ||
      !ti->internals)
    return 0;
  const unsigned char *p = NULL;
  unsigned n = 0;
  SSL_get0_alpn_selected((SSL *)ti->internals, &p, &n);
  return n == 2 && memcmp(p, "h2", 2) == 0;
}

/* The caller's certificate authorities go into the store libcurl already
 * filled from the system's: in addition, never instead. Runs in libcurl,
 * plain C. */
static CURLcode add_cas(CURL *e, void *sslctx, void *ud) {
  const ie_net *net = (const ie_net *)ud;
  (void)e;
  X509_STORE *store = SSL_CTX_get_cert_store((SSL_CTX *)sslctx);
  if (!store || X509_STORE_load_locations(store, net->ca_file, net->ca_path) != 1)
    return CURLE_SSL_CACERT_BADFILE;
  return CURLE_OK;
}

/* Verification always on; the caller's CAs, the proxy, socket tracking. */
void ie_net_setup(CURL *e, multi *m) {
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
  curl_easy_setopt(e, CURLOPT_PROXY_SSL_VERIFYPEER, 1L);
  curl_easy_setopt(e, CURLOPT_PROXY_SSL_VERIFYHOST, 2L);
  if (m->net.ca_file || m->net.ca_path) {
    curl_easy_setopt(e, CURLOPT_SSL_CTX_FUNCTION, add_cas);
    curl_easy_setopt(e, CURLOPT_SSL_CTX_DATA, (void *)&m->net);
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
}
