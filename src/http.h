/* Internal interface of the HTTP transport: http.c drives transfers on
 * libcurl's multi handle and gives Lua their objects; transfer.c builds one
 * transfer's easy handle from a spec, records what libcurl hands it (plain C
 * callbacks, never Lua), and reads its result. */
#ifndef IMGEDIT_HTTP_H
#define IMGEDIT_HTTP_H

#include <curl/curl.h>

#include "imgedit.h"
#include "sse.h"

#define MAX_HEADER_BYTES (64 * 1024)

typedef struct transfer transfer;

/* The network settings every transfer of a multi shares. */
typedef struct ie_net {
  char *ca_file, *ca_path; /* the caller's CAs, added to the system's */
  char *proxy;             /* NULL: libcurl reads the *_proxy variables */
} ie_net;

#define IE_MAX_SOCKS 256

typedef struct multi {
  CURLM *m;
  CURLSH *share;  /* TLS sessions and DNS, shared by the multi's transfers */
  transfer *head; /* transfers currently added to m */
  int count;
  ie_net net;
  /* the sockets of its connections (beyond the bound, not tracked: then a
   * resend is blocked, the safe side) */
  curl_socket_t socks[IE_MAX_SOCKS];
  int nsocks;
} multi;

/* An in-memory file part: points into a Lua string that the transfer anchors. */
typedef struct memsrc {
  const char *p;
  size_t len, pos;
} memsrc;

struct transfer {
  CURL *e;
  curl_mime *mime;
  struct curl_slist *headers;
  multi *owner;
  transfer *next, *prev;
  char *body;
  size_t len, cap, max;
  size_t header_bytes;
  int done, too_large, header_flood, canceled, closed, idle, answering;
  /* A billable request: libcurl may not send it again once the whole body
   * went out (see on_prereq). */
  int billable, sends, resend_blocked, has_body;
  int sent_to_closed; /* this send went into a connection the server had closed */
  int sent_on_h2;     /* ... as an HTTP/2 stream */
  int refused;        /* HTTP/2 streams the server refused, sent again */
  int via_proxy;      /* through the caller's proxy option */
  int sent_all; /* the whole body went out at least once: sticky across re-sends */
  double idle_limit, last_move; /* seconds; no bytes moving while sending or receiving */
  CURLcode code;
  long status;
  curl_off_t ul_now, ul_total, dl_now, dl_total;
  char ctype[128], retry_after[64], retry_after_ms[32], request_id[128], should_retry[8];
  /* x-ratelimit-{limit,remaining,reset}-{requests,tokens,images}, in that order */
  char ratelimit[9][32];
  char errbuf[CURL_ERROR_SIZE];
  /* Streaming answers: decided by the answer's content type. */
  int stream_wanted, mode_decided, sse_on;
  sse parser;
  sse_queue events;
};

/* transfer.c */

/* Build t's easy handle from the spec table at index spec; strings sent
 * from memory are anchored in the uservalue of the transfer object at self;
 * the network settings and the share come from the multi m.
 * Raises on a bad spec; t is freed by its owner's release either way. */
IE_LOCAL void ie_transfer_setup(lua_State *L, int spec, int self, transfer *t, multi *m);

/* Push the result table of a finished transfer. */
IE_LOCAL void ie_transfer_push_result(lua_State *L, const transfer *t);

/* Monotonic seconds. */
IE_LOCAL double ie_now(void);

/* net.c */

/* Verification, the caller's CAs, the proxy, the share and socket tracking
 * for one easy handle of m. */
IE_LOCAL void ie_net_setup(CURL *e, multi *m);

/* Whether the server closed (FIN) the connection of m at local_port. */
IE_LOCAL int ie_net_peer_closed(const multi *m, int local_port);

/* Whether the TLS connection e is about to send on agreed on HTTP/2. */
IE_LOCAL int ie_net_on_h2(CURL *e);

/* What failed in t's TLS handshake: "unknown_ca", "expired", ... */
IE_LOCAL const char *ie_net_tls_problem(const transfer *t);

#endif
