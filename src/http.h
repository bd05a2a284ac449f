/* Internal interface of the HTTP transport: http.c drives transfers on
 * libcurl's multi handle and gives Lua their objects; transfer.c builds one
 * transfer's easy handle from a spec, records what libcurl hands it (plain C
 * callbacks, never Lua), and reads its result. */
#ifndef IMGEDIT_HTTP_H
#define IMGEDIT_HTTP_H

#include <pthread.h>

#include <curl/curl.h>

#include "imgedit.h"
#include "platform.h"
#include "sse.h"

#define MAX_HEADER_BYTES (64 * 1024)

typedef struct transfer transfer;

/* The network settings every transfer of a multi shares. */
typedef struct ie_net {
  char *ca_file, *ca_path; /* the caller's CAs, added to the system's */
  char *proxy;             /* NULL: libcurl reads the *_proxy variables */
} ie_net;

#define IE_MAX_SOCKS 256
#define IE_MAX_PICTURES 16
/* Decoder threads per multi: pictures that finish together are decoded
 * side by side, as many at once as there are cores, between 2 and this. */
#define IE_MAX_DECODERS 4

/* One picture decoded off the caller's thread (decoder.c). */
typedef struct ie_picture {
  unsigned char *bytes; /* the file's bytes when they came as base64 (malloc), else NULL */
  size_t nbytes;
  size_t open, close; /* 1-based positions of the base64 value's quotes in its JSON; 0 for raw bytes */
  ie_pixels px;       /* px.p NULL: px.reason and px.why say why */
  ie_inpaint_out *ip; /* with a mask: drift and spill, or the composite (malloc), else NULL */
} ie_picture;

/* What a decode job made of a JSON text (every "b64_json" value in it, in
 * order) or of raw bytes. */
typedef struct ie_decoded {
  int n, done; /* done: written by the decoder, read under the lock */
  int bounded; /* an event's: counted toward max_response_bytes (in event order) */
  ie_picture pic[IE_MAX_PICTURES];
} ie_decoded;

typedef struct ie_job {
  struct ie_job *next;
  transfer *t;
  const char *src; /* stays alive: owned by t, which the job holds a ref on */
  size_t n;
  int json;
  int inpaint; /* the picture is a final one of an edit with a mask */
  ie_decoded *out;
} ie_job;

/* Where a transfer is: its one state, changed only under the multi's lock,
 * and only along this table (the function that moves it, on which thread):
 *
 *   from     to       by                                   thread
 *   NONE     ADD      multi_start (handed over)            caller
 *   ADD      RUN      add_new (into libcurl)               network
 *   ADD      NONE     cancel (never reached libcurl)       caller
 *   RUN      DEC      ended_locked (pictures to decode)    network
 *   RUN      DRAIN    ended_locked (events not yet taken)  network
 *   RUN      FIN      ended_locked (on the finished list)  network
 *   RUN      NONE     remove_canceled (the cancel's ack)   network
 *   DEC      DRAIN    ie_dec_end_locked (last decode ends) decoder
 *   DEC      FIN      ie_dec_end_locked                    decoder
 *   DEC      NONE     ie_dec_end_locked (canceled)         decoder
 *   DRAIN    FIN      transfer_events (last event taken)   caller
 *   DRAIN    NONE     cancel                               caller
 *   FIN      NONE     multi_perform (taken) or cancel      caller
 *   any      NONE     multi_close, after both threads      caller
 *                     stopped; the fork child handler      child
 *
 * A transfer is finished for the caller (done) only once it left FIN
 * through multi_perform: every event it produced was handed over first
 * (DRAIN), so the per-poll budget and a busy lock delay a hand-over and
 * never drop one. The network thread writes a transfer's answer (body,
 * code, status, counters) while it is ADD or RUN, and never after: from
 * DEC on they are the caller's to read. A cancel of a RUN transfer is a
 * request (cancel_req) that the network thread carries out and
 * acknowledges by moving it to NONE; the caller waits for that. */
enum { W_NONE, W_ADD, W_RUN, W_DEC, W_DRAIN, W_FIN };

/* A multi: one libcurl multi handle driven by a network thread of its own,
 * and a decoder thread started on first use. The Lua object points here;
 * the struct lives until the Lua object and every transfer let go of it,
 * since a transfer may outlive its multi. Threading rules:
 *  - libcurl calls on m and on a transfer's easy handle while it is added
 *    run on the network thread only; the caller's thread builds an easy
 *    handle before it is handed over, and reads it after it came back;
 *  - neither thread ever touches a Lua state but the caller's;
 *  - what both read or write (the queues, where, refs, the progress
 *    snapshot, the event queue) is under mu, held briefly, never across a
 *    libcurl call or a decode. */
typedef struct multi {
  pthread_mutex_t mu;
  pthread_cond_t cv;  /* the caller waits for something to happen */
  pthread_cond_t dcv; /* the decoder waits for work */
  pthread_cond_t pcv; /* the network thread waits, parked for a fork */
  int refs;           /* the Lua object, and each transfer that points here */
  unsigned gen, seen; /* changes the caller has (not) seen */
  ie_os_wake wake;    /* the caller's loop waits on wake.r, made by multi:fd() */
  int wake_on, wake_set;
  int count;          /* transfers the multi holds */
  int quit, dquit, cancels;
  int park, parked;             /* a fork is about to happen: the network thread waits outside libcurl */
  int forked;                   /* this process is a child forked from the one that made the multi */
  struct multi *proc_next;      /* the process's live multis (procs.c) */
  CURLMcode broken;             /* the network thread stopped on this error */
  int net_started, dec_started; /* the caller's: threads to join (dec_started: how many decoders) */
  int net_running;              /* under mu: the network thread is in its loop */
  pthread_t net_thread, dec_thread[IE_MAX_DECODERS];
  transfer *all;                 /* every transfer the multi holds (all_next) */
  transfer *add_head;            /* handed over, not yet added (qnext) */
  transfer *fin_head, *fin_tail; /* finished, waiting for the caller (qnext) */
  ie_job *job_head, *job_tail;
  /* the caller's thread only: what one perform(0) may still hand over,
   * and whether it only tries the lock (it never waits for it) */
  size_t budget, spent;
  int trying, last_count;
  int busy; /* tries in a row that found the lock busy */
  /* network thread only: */
  CURLM *m;
  CURLSH *share;    /* TLS sessions and DNS, shared by the multi's transfers */
  transfer *run;    /* transfers added to m (rnext) */
  double refreshed; /* when the progress of running transfers was last read */
  ie_net net;
  /* the sockets of its connections (beyond the bound, not tracked: then a
   * resend is blocked, the safe side) */
  curl_socket_t socks[IE_MAX_SOCKS];
  int sends[IE_MAX_SOCKS]; /* requests sent on each so far */
  int nsocks;
} multi;

/* An in-memory file part: points into a Lua string that the transfer anchors. */
typedef struct memsrc {
  const char *p;
  size_t len, pos;
} memsrc;

/* What the caller may read of a running transfer: under the lock. */
typedef struct ie_snap {
  curl_off_t ul_now, ul_total, dl_now, dl_total;
  int answering;
} ie_snap;

struct transfer {
  CURL *e;
  curl_mime *mime;
  struct curl_slist *headers;
  multi *hub; /* never NULL while t lives: the lock and the queues */
  /* under hub->mu: */
  int where, refs, held, cancel_req, pending;
  size_t held_px; /* bytes of decoded pictures of events still queued: they count toward max */
  transfer *all_next, *all_prev, *qnext;
  ie_snap snap;
  sse_queue events;
  ie_decoded *decoded; /* of the body, once decoded */
  double last_byte;    /* when the last byte of the answer arrived */
  /* the network thread's while running, the caller's after: */
  transfer *rnext;
  char *body;
  size_t len, cap, max;
  size_t header_bytes;
  int too_large, header_flood, idle, answering;
  int decode;       /* decode the pictures of the answer to RGBA off the caller's thread */
  int drop_pixels;  /* ... only for the inpaint: the caller did not ask for them */
  struct ie_inpaint_req *inpaint; /* an edit with a mask: its figures or composite, made by the decoder */
  int raw_picture;  /* ... the answer is a picture's bytes, not JSON */
  int unreadable;   /* the index of a file part that could not be opened */
  int changed;      /* ... whose file changed while it was sent (network thread's, then the caller's) */
  ie_limits limits; /* of each decode */
  sse_queue parsed; /* events parsed, not yet moved to the caller's queue */
  /* A billable request: libcurl may not send it again once the whole body
   * went out (see on_prereq). */
  int billable, sends, resend_blocked, has_body;
  int sent_to_closed;           /* this send went into a connection the server had closed */
  int sent_on_h2;               /* ... as an HTTP/2 stream */
  int refused;                  /* HTTP/2 streams the server refused, sent again */
  int via_proxy;                /* through the caller's proxy option */
  int sent_all;                 /* the whole body went out at least once: sticky across re-sends */
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
  /* the caller's only: */
  int done, canceled;
  int forked;      /* inherited by a forked child: it ended there, unfinished */
  int inherited_e; /* ... and its easy handle is libcurl's multi's, never to be touched */
  ie_snap seen;    /* the last snapshot read, for when the lock is busy */
};

/* hub.c: lifetimes, shared by the threads. Under the lock: */

/* One ref of t less; 1 when it was the last: then ie_transfer_free it
 * after unlocking. */
IE_LOCAL int ie_drop_locked(transfer *t);
/* The multi lets go of t (it left every queue); ie_drop_locked's answer. */
IE_LOCAL int ie_unhold_locked(multi *m, transfer *t);
/* t ended and its pictures are decoded: to DRAIN while events of it wait
 * for the caller, else to the caller's finished list (FIN). */
IE_LOCAL void ie_settle_locked(multi *m, transfer *t);
/* t goes to the caller's finished list (FIN). */
IE_LOCAL void ie_hand_over_locked(multi *m, transfer *t);
/* Something the caller can see changed: wake a waiting perform. */
IE_LOCAL void ie_changed_locked(multi *m);
IE_LOCAL void ie_wake_locked(multi *m);
/* Without the lock: frees t's resources, then lets go of its multi. */
IE_LOCAL void ie_transfer_free(transfer *t);

/* hub.c, the caller's side: */

/* Stop and join m's threads (close, and the exit hook). */
IE_LOCAL void ie_multi_stop_threads(multi *m);
/* Once the threads stopped: every transfer ends, libcurl's handles go, m
 * lets go of itself. */
IE_LOCAL void ie_multi_end(multi *m);
/* One ref of m less; the last frees it (never in a forked child). */
IE_LOCAL void ie_hub_unref(multi *m);
/* fn on a thread of its own, with every signal blocked; 1 when started. */
IE_LOCAL int ie_thread_start(pthread_t *th, void *(*fn)(void *), void *arg);
/* Stop t wherever it is; it ends as canceled. Waits for the network
 * thread's acknowledgement of a running one. */
IE_LOCAL void ie_transfer_cancel(transfer *t);
/* The lock: only tried when m->trying (poll(0)); 0 when not taken. */
IE_LOCAL int ie_lock_caller(multi *m);
/* A forked child's inherited transfers end now, to the finished list. Locked. */
IE_LOCAL void ie_orphan_all_locked(multi *m);
/* Whether what costs `cost` may still be handed over in this perform. Locked. */
IE_LOCAL int ie_affordable(multi *m, size_t cost);
/* Wait until the threads hand something over, or timeout seconds pass. Locked. */
IE_LOCAL void ie_wait_locked(multi *m, double timeout);

/* procs.c: the process's live multis, for its exit and fork hooks. */
IE_LOCAL void ie_procs_add(multi *m);
IE_LOCAL void ie_procs_remove(multi *m);
#define IE_FD_SCAN 4096
IE_LOCAL void ie_fds_open(unsigned char *bits);
IE_LOCAL void ie_fds_cloexec_new(const unsigned char *before);

/* worker.c: the network thread. */
IE_LOCAL void *ie_net_main(void *m);
/* Copy t's figures to what the caller reads; 1 when they changed. */
IE_LOCAL int ie_snap_locked(transfer *t);
/* Out of libcurl's multi, out of its share, off the running list. */
IE_LOCAL void ie_remove_handle(multi *m, transfer *t);

/* decoder.c: the decoder thread, and its jobs (under the lock). */
IE_LOCAL void *ie_dec_main(void *m);
/* Queue a decode of src (JSON, or the picture's bytes); *out gets the
 * result, done once decoded. 0 when it cannot be queued: nothing decoded. */
IE_LOCAL int ie_dec_submit_locked(multi *m, transfer *t, const char *src, size_t n, int json, int final,
                                  ie_decoded **out);
/* Starts the multi's decoder threads, once; 0 when none could start. */
IE_LOCAL int ie_dec_start(multi *m);
/* What an edit with a mask hands the decoder: copies of image 1 and the
 * mask as sent, and the inpaint's options (the answer is filled in there). */
typedef struct ie_inpaint_req {
  ie_inpaint_in in;
  unsigned char *base, *mask; /* malloc'd copies: in.base and in.mask point here */
} ie_inpaint_req;
IE_LOCAL void ie_inpaint_req_free(ie_inpaint_req *r);
/* A job ended; 1 when that was its transfer's last ref. */
IE_LOCAL int ie_dec_end_locked(multi *m, ie_job *j);
IE_LOCAL void ie_decoded_free(void *d);
/* The bytes of pictures (files and pixels) d holds. */
IE_LOCAL size_t ie_decoded_cost(const ie_decoded *d);

/* record.c: the network thread's callbacks, set on e for t. */
IE_LOCAL void ie_transfer_callbacks(CURL *e, transfer *t);
/* What a file part must still be when it is opened and when its last
 * chunk is read: stamp (ie_file_stamp) and/or the SHA-256 of its bytes
 * (32 bytes) and/or its size (-1: any). NULL fields are not checked. */
typedef struct ie_file_check {
  const char *stamp;
  const unsigned char *sha256;
  curl_off_t size;
} ie_file_check;
/* A file part streamed from disk (opened close-on-exec), part `index` of t;
 * CURLE_READ_ERROR when the file cannot be opened or fails check. A change
 * seen while it is sent aborts the transfer with t->changed = index. */
IE_LOCAL CURLcode ie_part_file(curl_mimepart *part, const char *path, const ie_file_check *check, transfer *t,
                               int index);
/* A part from len bytes at data, which the caller keeps alive. */
IE_LOCAL CURLcode ie_part_memory(curl_mimepart *part, const char *data, size_t len);
/* x-ratelimit-{limit,remaining,reset}-{requests,tokens,images}, in t->ratelimit's order. */
IE_LOCAL extern const char *const ie_ratelimit_headers[9];

/* xfer.c: the transfer's Lua object; http.c makes it in multi:start. */
#define IE_XFER_MT "imgedit.transfer"
typedef struct {
  transfer *t; /* NULL once closed */
} ie_xfer_box;
IE_LOCAL int ie_transfer_close(lua_State *L);
IE_LOCAL void ie_open_transfers(lua_State *L);

/* transfer.c (the caller's thread) */

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

/* Verification, the caller's CAs, the proxy and socket tracking for one
 * easy handle of m (the network thread sets the share as it adds it). */
IE_LOCAL void ie_net_setup(CURL *e, multi *m);

/* Whether the server closed (FIN) the connection of m at local_port. */
IE_LOCAL int ie_net_peer_closed(multi *m, int local_port, int h2);

/* Whether the TLS connection e is about to send on agreed on HTTP/2. */
IE_LOCAL int ie_net_on_h2(CURL *e);

/* What failed in t's TLS handshake: "unknown_ca", "expired", ... */
IE_LOCAL const char *ie_net_tls_problem(const transfer *t);

#endif
