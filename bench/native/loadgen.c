/* loadgen.c - zoo_loadgen: an epoll-driven TCP/HTTP load generator.
 *
 * One pthread per "thread", each owning a share of the connections and its own
 * epoll instance, histogram and counters; the GIL is released for the whole run.
 * Workloads: echo, echo-connect, http, http-connect, http-pipeline, and the app's:
 * file (GET one file: its length checked, its content sampled against the
 * pattern the harness wrote), guestbook (GET /guestbook: 200 and a marker in the
 * page) and guestbook-post (every post_every-th request a POST of the form,
 * answered 303).  Closed loop
 * (each connection sends its next request when the answer arrived) or open loop
 * at a fixed total rate, where latency counts from the moment a request was due
 * (coordinated-omission correction, as wrk2 does).  Every wait is bounded: the
 * run ends at warmup + duration, plus at most `timeout` for requests in flight.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "hist.h"

enum { W_ECHO, W_ECHO_CONNECT, W_HTTP, W_HTTP_CONNECT, W_HTTP_PIPELINE, W_FILE, W_GUESTBOOK,
       W_GUESTBOOK_POST, W_COUNT };
static const char *const WORKLOADS[W_COUNT] = {
    "echo", "echo-connect", "http", "http-connect", "http-pipeline", "file", "guestbook",
    "guestbook-post"};

#define GUESTBOOK_FORM "name=tcp-zoo&message=a+load+test+was+here"
#define FILE_SAMPLE 16          /* file body bytes checked at each end of each chunk */

/* Byte i of a file the harness generated (bench.files.pattern_byte: keep in step). */
static inline unsigned char file_byte(uint64_t i)
{
    return (unsigned char)((i * 7 + (i >> 8) * 13 + (i >> 16) * 17 + 0x5A) & 0xFF);
}

enum { E_REFUSED, E_RESET, E_TIMEOUT, E_SHORT, E_WRONG, E_STATUS, E_OTHER, E_COUNT };
static const char *const ERRNAMES[E_COUNT] = {
    "refused", "reset", "timeout", "short", "wrong", "status", "other"};

enum { S_OFF, S_CONNECTING, S_READY, S_BUSY };

#define PATTERN_SPAN 4096      /* echo payloads start at varying offsets of a random block */
#define MAX_HEAD 16384         /* response head larger than this: "wrong" */
#define CONNECT_RETRIES 3
#define SCAN_NS 20000000ull    /* timeout scan period: 20 ms */
#define NS 1000000000ull
#define START_AT_MAX_S 600.0   /* the furthest start_at instant accepted */

typedef struct {
    struct sockaddr_storage addr;
    socklen_t addrlen;
    int workload;
    int conns;
    int threads;
    int idle;
    int pipeline;
    size_t size;
    double rate;
    int poisson;                /* open loop: exponential gaps (1) or a fixed period (0) */
    uint64_t seed;              /* open loop: arrivals are a function of it and the slot */
    uint64_t warmup_ns, duration_ns, timeout_ns;
    long long limit;            /* 0: none */
    char *req;                  /* one HTTP request */
    size_t req_len;
    char *post;                 /* guestbook-post: the POST request */
    size_t post_len;
    int post_every;
    int expect_status;          /* what a GET must answer (200) */
    long long expect_length;    /* file: the body length; -1: any */
    char *marker;               /* guestbook: must appear in the body; NULL: none */
    size_t marker_len;
    char *preq;                 /* `pipeline` requests back to back */
    unsigned char *pattern;     /* echo source: size + PATTERN_SPAN random bytes */
    uint64_t interval_ns;       /* open loop: per-connection period between sends */
    uint64_t t_start, t0, t_measure, t_mid, t_end, t_hard_end;
    atomic_int ready;           /* threads done connecting */
    atomic_int go;              /* t0 is fixed: run */
    atomic_llong issued;        /* measured requests reserved (for the limit) */
    atomic_int stop;
} cfg_t;

typedef struct conn {
    int fd;
    int gidx;                   /* global index among active connections */
    uint8_t idle;               /* silent connection */
    uint8_t state;
    uint8_t retries;
    uint8_t has_req;            /* a request (batch) is reserved / in flight */
    uint8_t measured;
    uint8_t in_body;
    uint8_t body_to_eof;
    uint8_t resp_close;
    uint8_t got_any;            /* some byte of the current answer arrived */
    uint8_t queued;             /* in the connect queue */
    uint8_t peer_closed;        /* the peer hung up: no new request on this socket */
    uint8_t is_post;            /* the request in flight is the guestbook POST */
    uint8_t bad_body;           /* a sampled byte or the length was wrong */
    uint16_t mmatch;            /* marker bytes matched so far; marker_len: found */
    uint32_t gen;               /* bumped at each close: tells a new socket from the old */
    int status;
    int outstanding;            /* answers still awaited */
    int batch;
    int heap_pos;
    uint32_t seq;
    const char *sbuf;
    size_t slen, soff;
    size_t rcv;                 /* echo: bytes of the answer so far */
    int64_t body_left;
    uint64_t body_off;          /* body bytes of the current answer so far */
    uint64_t t_req, deadline, due, wake;
    uint64_t rng;               /* open loop, Poisson: this connection's arrival stream */
    char *hbuf;
    uint32_t hlen, hcap;
} conn_t;

typedef struct {
    cfg_t *cfg;
    int id;
    int epfd;
    pthread_t tid;
    int joined;
    conn_t *conns;              /* active first, then idle */
    int nactive, nidle;
    conn_t **heap;
    int heap_n;
    int *cq;                    /* connect queue (indices into conns) */
    int cq_head, cq_tail, cq_cap;
    int connecting, max_connecting;
    int inflight;               /* conns with has_req */
    int measuring;
    char *rbuf;
    size_t rbuf_size;
    hist_t hist;
    hist_t hist2;               /* the answers of the measured window's second half */
    uint64_t requests, requests2, bytes_sent, bytes_recv;
    uint64_t errors[E_COUNT];
    uint64_t last_done;
    double cpu_s;
    uint64_t t_run0, t_run1;    /* this thread's own start and end */
    int use_pwait2;
} thr_t;

static inline uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS + (uint64_t)ts.tv_nsec;
}

/* Seconds since the epoch: the clock hosts share (NTP-synchronised on real hosts). */
static inline double realtime_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* splitmix64: one step; seeds each connection's arrival stream from (seed, slot). */
static inline uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Open loop: the gap before c's next request.  Uniform: the fixed period; Poisson: an
   exponential gap of the same mean (-ln U, U uniform in (0, 1)), so that the
   connections together offer a Poisson stream of the asked total rate. */
static inline uint64_t next_gap(const cfg_t *g, conn_t *c)
{
    if (!g->poisson)
        return g->interval_ns;
    double u = ((double)(splitmix64(&c->rng) >> 11) + 0.5) / 9007199254740992.0;
    return (uint64_t)(-log(u) * (double)g->interval_ns);
}

static inline int is_connect_workload(int w) { return w == W_ECHO_CONNECT || w == W_HTTP_CONNECT; }
static inline int is_http(int w) { return w >= W_HTTP; }

/* ---------------------------------------------------------------- timer heap */

static void heap_swap(thr_t *t, int a, int b)
{
    conn_t *x = t->heap[a];
    t->heap[a] = t->heap[b];
    t->heap[b] = x;
    t->heap[a]->heap_pos = a;
    t->heap[b]->heap_pos = b;
}

static void heap_up(thr_t *t, int i)
{
    while (i > 0) {
        int p = (i - 1) / 2;
        if (t->heap[p]->wake <= t->heap[i]->wake)
            break;
        heap_swap(t, i, p);
        i = p;
    }
}

static void heap_down(thr_t *t, int i)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < t->heap_n && t->heap[l]->wake < t->heap[m]->wake)
            m = l;
        if (r < t->heap_n && t->heap[r]->wake < t->heap[m]->wake)
            m = r;
        if (m == i)
            break;
        heap_swap(t, i, m);
        i = m;
    }
}

static void heap_remove(thr_t *t, conn_t *c)
{
    int i = c->heap_pos;
    if (i < 0)
        return;
    t->heap_n--;
    if (i != t->heap_n) {
        t->heap[i] = t->heap[t->heap_n];
        t->heap[i]->heap_pos = i;
        heap_down(t, i);
        heap_up(t, i);
    }
    c->heap_pos = -1;
}

static void heap_push(thr_t *t, conn_t *c, uint64_t wake)
{
    heap_remove(t, c);
    c->wake = wake;
    c->heap_pos = t->heap_n;
    t->heap[t->heap_n++] = c;
    heap_up(t, c->heap_pos);
}

static conn_t *heap_pop_due(thr_t *t, uint64_t now)
{
    if (t->heap_n == 0 || t->heap[0]->wake > now)
        return NULL;
    conn_t *c = t->heap[0];
    heap_remove(t, c);
    return c;
}

/* ---------------------------------------------------------------- helpers */

static void count_error(thr_t *t, int kind, uint64_t n)
{
    if (t->measuring)
        t->errors[kind] += n;
}

static int errno_kind(int e)
{
    switch (e) {
    case ECONNREFUSED:
        return E_REFUSED;
    case ECONNRESET:
    case EPIPE:
    case ECONNABORTED:
        return E_RESET;
    case ETIMEDOUT:
        return E_TIMEOUT;
    default:
        return E_OTHER;
    }
}

static int stopping(thr_t *t, uint64_t now)
{
    cfg_t *g = t->cfg;
    if (atomic_load_explicit(&g->stop, memory_order_relaxed))
        return 1;
    if (g->t0 == 0)
        return 0;
    if (now >= g->t_end)
        return 1;
    if (g->limit && atomic_load_explicit(&g->issued, memory_order_relaxed) >= g->limit)
        return 1;
    return 0;
}

/* Edge-triggered, registered once per socket: no epoll_ctl in the steady state, and no
   re-poll of every ready socket on each epoll_wait (a load generator must stay cheaper
   than the servers it measures). Reads stop once a recv returns less than asked. */
static void ep_add(thr_t *t, conn_t *c)
{
    struct epoll_event ev;
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.ptr = c;
    epoll_ctl(t->epfd, EPOLL_CTL_ADD, c->fd, &ev);
}

static void conn_close(thr_t *t, conn_t *c)
{
    if (c->fd >= 0) {
        epoll_ctl(t->epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
        c->fd = -1;
    }
    if (c->state == S_CONNECTING)
        t->connecting--;
    c->state = S_OFF;
    c->in_body = 0;
    c->hlen = 0;
    c->body_to_eof = 0;
    c->resp_close = 0;
    c->peer_closed = 0;
    c->gen++;
}

/* Drop the request in flight (its reservation is given back for the limit). */
static void drop_request(thr_t *t, conn_t *c)
{
    if (!c->has_req)
        return;
    if (c->measured && t->cfg->limit)
        atomic_fetch_sub(&t->cfg->issued, c->outstanding);
    c->has_req = 0;
    c->outstanding = 0;
    t->inflight--;
}

static void cq_push(thr_t *t, int idx)
{
    t->cq[t->cq_tail] = idx;
    t->cq_tail = (t->cq_tail + 1) % t->cq_cap;
}

static void start_connect(thr_t *t, conn_t *c, uint64_t now);

/* Connect now if the batch allows, otherwise queue. */
static void want_connect(thr_t *t, conn_t *c, uint64_t now)
{
    if (t->connecting < t->max_connecting)
        start_connect(t, c, now);
    else if (!c->queued) {
        c->queued = 1;
        cq_push(t, (int)(c - t->conns));
    }
}

static void pump_connect_queue(thr_t *t, uint64_t now)
{
    while (t->cq_head != t->cq_tail && t->connecting < t->max_connecting) {
        conn_t *c = &t->conns[t->cq[t->cq_head]];
        t->cq_head = (t->cq_head + 1) % t->cq_cap;
        c->queued = 0;
        if (c->fd < 0 && c->state == S_OFF)
            start_connect(t, c, now);
    }
}

static void send_some(thr_t *t, conn_t *c, uint64_t now);
static void conn_fail(thr_t *t, conn_t *c, int kind, uint64_t now);

/* Reserve and send the next request (or batch) on c. */
static void send_request(thr_t *t, conn_t *c, uint64_t now)
{
    cfg_t *g = t->cfg;
    int w = g->workload;
    if (c->has_req || stopping(t, now))
        return;
    uint64_t t_req = now;
    if (g->rate > 0) {
        if (c->due > now) {
            heap_push(t, c, c->due);
            return;
        }
        t_req = c->due;
        c->due += next_gap(g, c);
    }
    int batch = w == W_HTTP_PIPELINE ? g->pipeline : 1;
    int measured = t_req >= g->t_measure;
    if (measured && g->limit) {
        long long old = atomic_fetch_add(&g->issued, batch);
        if (old >= g->limit) {
            atomic_fetch_sub(&g->issued, batch);
            return;
        }
        if (old + batch > g->limit) {
            atomic_fetch_sub(&g->issued, old + batch - g->limit);
            batch = (int)(g->limit - old);
        }
    }
    c->has_req = 1;
    t->inflight++;
    c->measured = (uint8_t)measured;
    c->batch = batch;
    c->outstanding = batch;
    c->t_req = t_req;
    c->got_any = 0;
    c->rcv = 0;
    c->seq++;
    if (w == W_ECHO || w == W_ECHO_CONNECT) {
        size_t off = ((size_t)c->seq * 2654435761u + (size_t)c->gidx * 40503u) % PATTERN_SPAN;
        c->sbuf = (const char *)g->pattern + off;
        c->slen = g->size;
    } else if (w == W_HTTP_PIPELINE) {
        c->sbuf = g->preq;
        c->slen = g->req_len * (size_t)batch;
    } else if (w == W_GUESTBOOK_POST && c->seq % (uint32_t)g->post_every == 0) {
        c->is_post = 1;
        c->sbuf = g->post;
        c->slen = g->post_len;
    } else {
        c->is_post = 0;
        c->sbuf = g->req;
        c->slen = g->req_len;
    }
    c->soff = 0;
    c->deadline = now + g->timeout_ns;
    if (c->fd < 0) {            /* connect-per-request: the request starts with connect */
        c->retries = 0;
        start_connect(t, c, now);
        return;
    }
    c->state = S_BUSY;
    send_some(t, c, now);
}

static void send_some(thr_t *t, conn_t *c, uint64_t now)
{
    while (c->soff < c->slen) {
        ssize_t n = send(c->fd, c->sbuf + c->soff, c->slen - c->soff, MSG_NOSIGNAL);
        if (n > 0) {
            c->soff += (size_t)n;
            if (t->measuring)
                t->bytes_sent += (uint64_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;             /* EPOLLOUT (edge) says when there is room again */
        conn_fail(t, c, n < 0 ? errno_kind(errno) : E_OTHER, now);
        return;
    }
}

/* What a connection does when it has nothing in flight. */
static void conn_next(thr_t *t, conn_t *c, uint64_t now)
{
    if (c->idle || stopping(t, now) || c->has_req)
        return;
    if (is_connect_workload(t->cfg->workload)) {
        send_request(t, c, now);
        return;
    }
    if (c->fd < 0) {
        want_connect(t, c, now);
        return;
    }
    if (c->state == S_READY && t->cfg->t0 != 0)
        send_request(t, c, now);
}

static void start_connect(thr_t *t, conn_t *c, uint64_t now)
{
    cfg_t *g = t->cfg;
    int fd = socket(g->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        c->state = S_OFF;
        conn_fail(t, c, E_OTHER, now);
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->fd = fd;
    c->state = S_CONNECTING;
    t->connecting++;
    if (!c->has_req)
        c->deadline = now + g->timeout_ns;
    int r = connect(fd, (struct sockaddr *)&g->addr, g->addrlen);
    if (r < 0 && errno != EINPROGRESS) {
        conn_fail(t, c, errno_kind(errno), now);
        return;
    }
    ep_add(t, c);
}

static void on_connected(thr_t *t, conn_t *c, uint64_t now)
{
    t->connecting--;
    c->retries = 0;
    if (c->idle) {
        c->state = S_READY;
        return;
    }
    if (c->has_req) {           /* connect-per-request */
        c->state = S_BUSY;
        send_some(t, c, now);
        return;
    }
    c->state = S_READY;
    conn_next(t, c, now);
}

/* An error on c: count it (unless it is a connect we retry), close, plan what next. */
static void conn_fail(thr_t *t, conn_t *c, int kind, uint64_t now)
{
    cfg_t *g = t->cfg;
    int was_connecting = c->state == S_CONNECTING || c->fd < 0;
    conn_close(t, c);
    if (was_connecting && (kind == E_REFUSED || kind == E_RESET) &&
        c->retries < CONNECT_RETRIES && !stopping(t, now)) {
        c->retries++;
        heap_push(t, c, now + (5000000ull << (2 * c->retries)));   /* 20, 80, 320 ms */
        return;
    }
    c->retries = 0;
    if (c->idle)
        return;                 /* idle connections count nothing */
    uint64_t n = c->has_req ? (uint64_t)c->outstanding : 1;
    count_error(t, kind, n);
    drop_request(t, c);
    if (stopping(t, now))
        return;
    if (was_connecting || kind == E_REFUSED) {
        /* back off before trying this slot again */
        if (g->rate > 0 && c->due > now + 100000000ull)
            heap_push(t, c, c->due);
        else
            heap_push(t, c, now + 100000000ull);
        return;
    }
    conn_next(t, c, now);
}

/* A complete answer to one request of c's batch: is it the one we asked for? */
static int answer_kind(const cfg_t *g, const conn_t *c)
{
    if (!is_http(g->workload))
        return -1;              /* echo: checked byte by byte as it arrives */
    if (c->is_post)
        return c->status == 303 ? -1 : E_STATUS;
    if (g->expect_status ? c->status != g->expect_status : c->status < 200 || c->status > 299)
        return E_STATUS;
    if (c->bad_body || (g->marker && c->mmatch < g->marker_len) ||
        (g->expect_length >= 0 && c->body_off != (uint64_t)g->expect_length))
        return E_WRONG;
    return -1;
}

static void answer_done(thr_t *t, conn_t *c, uint64_t now)
{
    int kind = answer_kind(t->cfg, c);
    if (kind < 0) {
        if (c->measured && t->measuring) {
            hist_record_ns(&t->hist, now - c->t_req);
            t->requests++;
            t->last_done = now;
            if (now >= t->cfg->t_mid) {
                hist_record_ns(&t->hist2, now - c->t_req);
                t->requests2++;
            }
        }
    } else {
        count_error(t, kind, 1);
        if (c->measured && t->cfg->limit)
            atomic_fetch_sub(&t->cfg->issued, 1);
    }
    c->outstanding--;
    c->got_any = 0;
    c->rcv = 0;
}

/* After the last answer of a batch: close or go on. */
static void batch_done(thr_t *t, conn_t *c, uint64_t now)
{
    c->has_req = 0;
    t->inflight--;
    if (is_connect_workload(t->cfg->workload) || c->resp_close || c->peer_closed) {
        conn_close(t, c);
        c->resp_close = 0;
    } else {
        c->state = S_READY;
    }
    conn_next(t, c, now);
}

enum { FEED_MORE, FEED_DONE, FEED_ERR };

static int parse_head(conn_t *c, const char *h, size_t len)
{
    /* status line: HTTP/1.x NNN */
    if (len < 12 || memcmp(h, "HTTP/1.", 7) != 0 || h[8] != ' ')
        return -1;
    if (h[9] < '0' || h[9] > '9' || h[10] < '0' || h[10] > '9' || h[11] < '0' || h[11] > '9')
        return -1;
    c->status = (h[9] - '0') * 100 + (h[10] - '0') * 10 + (h[11] - '0');
    int64_t cl = -1;
    int chunked = 0;
    c->resp_close = 0;
    const char *p = memchr(h, '\n', len);
    const char *end = h + len;
    while (p && p + 1 < end) {
        const char *line = p + 1;
        const char *eol = memchr(line, '\n', (size_t)(end - line));
        if (!eol)
            break;
        size_t ll = (size_t)(eol - line);
        if (ll > 15 && strncasecmp(line, "content-length:", 15) == 0) {
            const char *v = line + 15;
            while (*v == ' ' || *v == '\t')
                v++;
            if (*v < '0' || *v > '9')
                return -1;
            cl = 0;
            while (*v >= '0' && *v <= '9')
                cl = cl * 10 + (*v++ - '0');
        } else if (ll > 11 && strncasecmp(line, "connection:", 11) == 0) {
            for (const char *v = line + 11; v + 5 <= eol; v++)
                if (strncasecmp(v, "close", 5) == 0)
                    c->resp_close = 1;
        } else if (ll > 18 && strncasecmp(line, "transfer-encoding:", 18) == 0) {
            chunked = 1;
        }
        p = eol;
    }
    if (chunked)
        return -1;              /* not supported: our servers always send a length */
    if (c->status == 204 || c->status == 304 || (c->status >= 100 && c->status < 200))
        cl = 0;
    c->body_to_eof = cl < 0;
    c->body_left = cl < 0 ? 0 : cl;
    c->in_body = 1;
    c->body_off = 0;
    c->mmatch = 0;
    c->bad_body = 0;
    return 0;
}

/*
 * Body bytes of an answer: sample a file's content, look for the guestbook's
 * marker (whose first byte does not recur in it, so one pass finds it).
 */
static void on_body(const cfg_t *g, conn_t *c, const char *d, size_t n)
{
    if (g->expect_length >= 0 && !c->is_post) {
        for (size_t i = 0; i < n; i++) {
            if (i == FILE_SAMPLE && n > 2 * FILE_SAMPLE)
                i = n - FILE_SAMPLE;            /* the middle is not sampled */
            if ((unsigned char)d[i] != file_byte(c->body_off + i))
                c->bad_body = 1;
        }
    }
    if (g->marker && !c->is_post && c->mmatch < g->marker_len) {
        for (size_t i = 0; i < n && c->mmatch < g->marker_len; i++) {
            if (d[i] == g->marker[c->mmatch])
                c->mmatch++;
            else
                c->mmatch = d[i] == g->marker[0];
        }
    }
    c->body_off += n;
}

/* Feed received bytes of an HTTP answer; *kind set on FEED_ERR. */
static int feed_http(thr_t *t, conn_t *c, const char *d, size_t n, uint64_t now, int *kind)
{
    while (n > 0) {
        if (c->outstanding <= 0) {
            *kind = E_WRONG;
            return FEED_ERR;
        }
        c->got_any = 1;
        if (!c->in_body && c->hlen == 0) {
            /* common case: the whole head is in this chunk, parse it where it lies */
            const char *hit = memmem(d, n, "\r\n\r\n", 4);
            if (hit) {
                size_t head_len = (size_t)(hit - d) + 4;
                if (head_len > MAX_HEAD || parse_head(c, d, head_len) < 0) {
                    *kind = E_WRONG;
                    return FEED_ERR;
                }
                d += head_len;
                n -= head_len;
                goto body_check;
            }
        }
        if (!c->in_body) {
            uint32_t old = c->hlen;
            size_t take = n;
            if (old + take > MAX_HEAD)
                take = MAX_HEAD - old;
            if (c->hcap < old + take) {
                uint32_t cap = c->hcap ? c->hcap : 512;
                while (cap < old + take)
                    cap *= 2;
                char *nb = realloc(c->hbuf, cap);
                if (!nb) {
                    *kind = E_OTHER;
                    return FEED_ERR;
                }
                c->hbuf = nb;
                c->hcap = cap;
            }
            memcpy(c->hbuf + old, d, take);
            c->hlen = old + (uint32_t)take;
            size_t from = old > 3 ? old - 3 : 0;
            const char *hit = memmem(c->hbuf + from, c->hlen - from, "\r\n\r\n", 4);
            if (!hit) {
                if (c->hlen >= MAX_HEAD) {
                    *kind = E_WRONG;
                    return FEED_ERR;
                }
                return FEED_MORE;
            }
            size_t head_len = (size_t)(hit - c->hbuf) + 4;
            size_t used = head_len - old;
            d += used;
            n -= used;
            c->hlen = 0;
            if (parse_head(c, c->hbuf, head_len) < 0) {
                *kind = E_WRONG;
                return FEED_ERR;
            }
        } else if (c->body_to_eof) {
            return FEED_MORE;   /* everything until the peer closes */
        } else {
            size_t take = (uint64_t)c->body_left < n ? (size_t)c->body_left : n;
            c->body_left -= (int64_t)take;
            on_body(t->cfg, c, d, take);
            d += take;
            n -= take;
        }
    body_check:
        if (c->in_body && !c->body_to_eof && c->body_left == 0) {
            c->in_body = 0;
            answer_done(t, c, now);
            if (c->outstanding == 0) {
                if (n > 0) {
                    *kind = E_WRONG;
                    return FEED_ERR;
                }
                return FEED_DONE;
            }
            if (c->resp_close) {            /* closing mid-batch: the rest is lost */
                *kind = E_SHORT;
                return FEED_ERR;
            }
        }
    }
    return FEED_MORE;
}

static int feed_echo(thr_t *t, conn_t *c, const char *d, size_t n, uint64_t now, int *kind)
{
    if (!c->has_req || c->rcv + n > c->slen ||
        (c->rcv + n > c->soff) ||
        memcmp(d, c->sbuf + c->rcv, n) != 0) {
        *kind = E_WRONG;
        return FEED_ERR;
    }
    c->got_any = 1;
    c->rcv += n;
    if (c->rcv == c->slen) {
        answer_done(t, c, now);
        return FEED_DONE;
    }
    return FEED_MORE;
}

/* One recv; returns 1 if the socket may hold more (a full buffer was read). */
static int read_once(thr_t *t, conn_t *c, uint64_t now)
{
    ssize_t n = recv(c->fd, t->rbuf, t->rbuf_size, 0);
    if (n < 0) {
        if (errno == EINTR)
            return 1;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        int kind = errno_kind(errno);
        if (!c->has_req) {      /* idle keep-alive connection dropped: just reconnect */
            conn_close(t, c);
            conn_next(t, c, now);
            return 0;
        }
        conn_fail(t, c, kind, now);
        return 0;
    }
    if (c->idle) {
        if (n == 0)
            conn_close(t, c);
        return (size_t)n == t->rbuf_size;   /* idle connections ignore what they get */
    }
    if (n == 0) {
        if (!c->has_req) {      /* server closed a kept connection between requests */
            conn_close(t, c);
            conn_next(t, c, now);
            return 0;
        }
        if (is_http(t->cfg->workload) && c->in_body && c->body_to_eof) {
            c->in_body = 0;
            c->resp_close = 1;
            answer_done(t, c, now);
            if (c->outstanding == 0) {
                batch_done(t, c, now);
                return 0;
            }
        }
        conn_fail(t, c, c->got_any ? E_SHORT : E_RESET, now);
        return 0;
    }
    if (t->measuring)
        t->bytes_recv += (uint64_t)n;
    int kind = E_OTHER, r;
    if (is_http(t->cfg->workload))
        r = feed_http(t, c, t->rbuf, (size_t)n, now, &kind);
    else
        r = feed_echo(t, c, t->rbuf, (size_t)n, now, &kind);
    if (r == FEED_ERR) {
        conn_fail(t, c, kind, now);
        return 0;
    }
    if (r == FEED_DONE)
        batch_done(t, c, now);
    return (size_t)n == t->rbuf_size;
}

/* Read until a short recv; when the peer also hung up (the edge that told us is already
   consumed), read on until EOF or EAGAIN. */
static void on_readable(thr_t *t, conn_t *c, uint64_t now, int hangup)
{
    uint32_t gen = c->gen;
    if (hangup)
        c->peer_closed = 1;
    for (;;) {
        int more = read_once(t, c, now);
        if (c->gen != gen || c->fd < 0)
            return;
        if (!more && !hangup)
            return;
        if (!more)
            hangup = 0;         /* one more recv: EOF (or EAGAIN) ends it */
    }
}

static void on_event(thr_t *t, conn_t *c, uint32_t ev, uint64_t now)
{
    if (c->fd < 0)
        return;
    if (c->state == S_CONNECTING) {
        int err = 0;
        socklen_t len = sizeof err;
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
            err = errno;
        if (err) {
            conn_fail(t, c, errno_kind(err), now);
            pump_connect_queue(t, now);
            return;
        }
        if (!(ev & (EPOLLOUT | EPOLLIN | EPOLLHUP | EPOLLERR)))
            return;
        on_connected(t, c, now);
        pump_connect_queue(t, now);
        if (c->fd < 0 || !(ev & EPOLLIN))
            return;
    }
    if ((ev & EPOLLOUT) && c->state == S_BUSY && c->soff < c->slen) {
        send_some(t, c, now);
        if (c->fd < 0)
            return;
    }
    if (ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR))
        on_readable(t, c, now, (ev & (EPOLLRDHUP | EPOLLHUP | EPOLLERR)) != 0);
}

/* Requests past their deadline count as timeouts. */
static void scan_timeouts(thr_t *t, uint64_t now)
{
    int total = t->nactive + t->nidle;
    for (int i = 0; i < total; i++) {
        conn_t *c = &t->conns[i];
        if (c->fd < 0)
            continue;
        if (c->state == S_CONNECTING && now >= c->deadline) {
            conn_fail(t, c, E_TIMEOUT, now);
            pump_connect_queue(t, now);
        } else if (c->state == S_BUSY && c->has_req && now >= c->deadline) {
            conn_fail(t, c, E_TIMEOUT, now);
        }
    }
}

static void reset_stats(thr_t *t)
{
    memset(&t->hist, 0, sizeof t->hist);
    memset(&t->hist2, 0, sizeof t->hist2);
    t->requests = t->requests2 = t->bytes_sent = t->bytes_recv = 0;
    memset(t->errors, 0, sizeof t->errors);
    t->measuring = 1;
}

static int ep_wait(thr_t *t, struct epoll_event *evs, int max, uint64_t timeout_ns)
{
#ifdef SYS_epoll_pwait2
    if (t->use_pwait2) {
        struct timespec ts = {(time_t)(timeout_ns / NS), (long)(timeout_ns % NS)};
        long r = syscall(SYS_epoll_pwait2, t->epfd, evs, max, &ts, NULL, 0);
        if (r >= 0 || errno != ENOSYS)
            return (int)r;
        t->use_pwait2 = 0;
    }
#endif
    int ms = (int)((timeout_ns + 999999) / 1000000);
    return epoll_wait(t->epfd, evs, max, ms);
}

static void *thread_main(void *arg)
{
    thr_t *t = arg;
    cfg_t *g = t->cfg;
    struct epoll_event evs[256];
    int total = t->nactive + t->nidle;
    uint64_t now = now_ns();
    t->t_run0 = now;

    /* phase 1: connect everything (in batches), bounded by the timeout */
    if (!is_connect_workload(g->workload)) {
        for (int i = 0; i < total; i++)
            want_connect(t, &t->conns[i], now);
    } else {
        for (int i = t->nactive; i < total; i++)
            want_connect(t, &t->conns[i], now);
    }
    uint64_t phase_end = now + g->timeout_ns;
    while (t->connecting > 0 || t->cq_head != t->cq_tail) {
        now = now_ns();
        if (now >= phase_end || atomic_load(&g->stop))
            break;
        uint64_t wait = phase_end - now;
        if (t->heap_n && t->heap[0]->wake > now && t->heap[0]->wake - now < wait)
            wait = t->heap[0]->wake - now;
        if (wait > SCAN_NS)
            wait = SCAN_NS;
        int n = ep_wait(t, evs, 256, wait);
        now = now_ns();
        for (int i = 0; i < n; i++)
            on_event(t, evs[i].data.ptr, evs[i].events, now);
        conn_t *c;
        while ((c = heap_pop_due(t, now)) != NULL)
            if (c->fd < 0)
                want_connect(t, c, now);
        pump_connect_queue(t, now);
        scan_timeouts(t, now);
    }
    atomic_fetch_add(&g->ready, 1);             /* the main thread fixes t0, then says go */
    while (!atomic_load(&g->go)) {
        struct timespec ms = {0, 1000000};
        nanosleep(&ms, NULL);
    }

    /* phase 2: the run */
    now = now_ns();
    if (g->warmup_ns == 0)
        reset_stats(t);
    for (int i = 0; i < t->nactive; i++) {
        conn_t *c = &t->conns[i];
        if (g->rate > 0 && g->poisson) {
            c->rng = g->seed ^ ((uint64_t)c->gidx * 0xD1B54A32D192ED03ull);
            c->due = g->t0 + next_gap(g, c);
        } else if (g->rate > 0) {
            c->due = g->t0 + (uint64_t)((double)c->gidx * ((double)NS / g->rate));
        }
        if (c->heap_pos >= 0)
            continue;                           /* a connect retry is pending */
        conn_next(t, c, now);
    }
    uint64_t next_scan = now + SCAN_NS;
    for (;;) {
        now = now_ns();
        if (!t->measuring && now >= g->t_measure)
            reset_stats(t);
        if (stopping(t, now)) {
            if (t->inflight == 0 || atomic_load(&g->stop))
                break;
            if (now >= g->t_hard_end) {
                for (int i = 0; i < t->nactive; i++) {
                    conn_t *c = &t->conns[i];
                    if (c->has_req) {
                        count_error(t, E_TIMEOUT, (uint64_t)c->outstanding);
                        drop_request(t, c);
                        conn_close(t, c);
                    }
                }
                break;
            }
        }
        uint64_t wake = next_scan;
        if (t->heap_n && t->heap[0]->wake < wake)
            wake = t->heap[0]->wake;
        if (!t->measuring && g->t_measure < wake)
            wake = g->t_measure;
        if (now < g->t_end && g->t_end < wake)
            wake = g->t_end;
        if (now < g->t_hard_end && g->t_hard_end < wake)
            wake = g->t_hard_end;
        int n = ep_wait(t, evs, 256, wake > now ? wake - now : 0);
        now = now_ns();
        for (int i = 0; i < n; i++)
            on_event(t, evs[i].data.ptr, evs[i].events, now);
        conn_t *c;
        while ((c = heap_pop_due(t, now)) != NULL) {
            if (c->idle) {
                if (c->fd < 0)
                    want_connect(t, c, now);
            } else if (is_connect_workload(g->workload) || c->fd >= 0) {
                if (c->state == S_OFF && c->has_req)
                    start_connect(t, c, now);
                else
                    conn_next(t, c, now);
            } else {
                conn_next(t, c, now);
            }
        }
        pump_connect_queue(t, now);
        if (now >= next_scan) {
            scan_timeouts(t, now);
            next_scan = now + SCAN_NS;
        }
    }
    if (!t->measuring)
        reset_stats(t);
    struct rusage ru;
    if (getrusage(RUSAGE_THREAD, &ru) == 0)
        t->cpu_s = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6 +
                   (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    t->t_run1 = now_ns();
    return NULL;
}

/* ---------------------------------------------------------------- Python entry */

static int raise_nofile(rlim_t need)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
        return -1;
    if (rl.rlim_cur >= need)
        return 0;
    if (rl.rlim_max != RLIM_INFINITY && rl.rlim_max < need) {
        struct rlimit want = {need, need};
        if (setrlimit(RLIMIT_NOFILE, &want) == 0)
            return 0;
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        return -1;
    }
    rl.rlim_cur = need;
    return setrlimit(RLIMIT_NOFILE, &rl);
}

static void free_threads(thr_t *ts, int n)
{
    if (!ts)
        return;
    for (int i = 0; i < n; i++) {
        thr_t *t = &ts[i];
        if (t->conns) {
            for (int j = 0; j < t->nactive + t->nidle; j++) {
                if (t->conns[j].fd >= 0)
                    close(t->conns[j].fd);
                free(t->conns[j].hbuf);
            }
        }
        if (t->epfd >= 0)
            close(t->epfd);
        free(t->conns);
        free(t->heap);
        free(t->cq);
        free(t->rbuf);
    }
    free(ts);
}

/* The raw histogram, for exact merging across load generators: {"buckets": [[highest
   value of the bucket in us, count], ...] (non-empty buckets, ascending), "sum_ns",
   "max_us"}; the percentiles above are computed from the same buckets. */
static PyObject *hist_buckets(const hist_t *h)
{
    PyObject *list = PyList_New(0);
    for (unsigned i = 0; list && i < H_SIZE; i++) {
        if (!h->counts[i])
            continue;
        PyObject *pair = Py_BuildValue("[KK]", (unsigned long long)hist_high(i),
                                       (unsigned long long)h->counts[i]);
        if (!pair || PyList_Append(list, pair) < 0)
            Py_CLEAR(list);
        Py_XDECREF(pair);
    }
    if (!list)
        return NULL;
    PyObject *out = Py_BuildValue("{s:N,s:K,s:K}", "buckets", list, "sum_ns",
                                  (unsigned long long)h->sum_ns, "max_us",
                                  (unsigned long long)h->max_us);
    return out;
}

static int set_double(PyObject *dict, const char *key, double value)
{
    PyObject *v = PyFloat_FromDouble(value);
    int rc = v ? PyDict_SetItemString(dict, key, v) : -1;
    Py_XDECREF(v);
    return rc;
}

/* The measured window's two halves, for the harness's stationarity check:
   {"duration_s": [a, b], "requests": [n1, n2], "p99_us": [p1, p2]} (an answer belongs to
   the half it completed in; the first half's histogram is the whole one less the second's). */
static PyObject *halves_of(const thr_t *ts, int threads, const hist_t *whole, double first_s,
                           double second_s)
{
    hist_t *h2 = calloc(1, sizeof *h2), *h1 = calloc(1, sizeof *h1);
    PyObject *out = NULL;
    if (h2 && h1) {
        for (int i = 0; i < threads; i++)
            hist_merge(h2, &ts[i].hist2);
        for (unsigned i = 0; i < H_SIZE; i++)
            h1->counts[i] = whole->counts[i] - h2->counts[i];
        h1->total = whole->total - h2->total;
        h1->max_us = whole->max_us;
        out = Py_BuildValue("{s:[dd],s:[KK],s:[KK]}", "duration_s", first_s, second_s,
                            "requests", (unsigned long long)h1->total,
                            (unsigned long long)h2->total,
                            "p99_us", (unsigned long long)hist_percentile(h1, 99.0),
                            (unsigned long long)hist_percentile(h2, 99.0));
    } else {
        PyErr_NoMemory();
    }
    free(h1);
    free(h2);
    return out;
}

static PyObject *lg_run(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwlist[] = {"host", "port", "workload", "connections", "duration", "threads",
                             "rate", "size", "pipeline", "idle", "warmup", "requests",
                             "timeout", "host_header", "path", "expect_length", "marker",
                             "post_every", "start_at", "arrivals", "seed", NULL};
    const char *host, *workload, *host_header = NULL, *path = "/", *marker = NULL;
    const char *arrivals = "poisson";
    unsigned long long seed = 1;
    int port, conns, threads = 1, pipeline = 1, idle = 0, post_every = 20;
    double duration, rate = 0.0, warmup = 0.0, timeout = 5.0, start_at = 0.0;
    Py_ssize_t size = 64;
    long long limit = 0, expect_length = -1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "sisid|idniidLdzsLzidsK", kwlist, &host, &port,
                                     &workload, &conns, &duration, &threads, &rate, &size,
                                     &pipeline, &idle, &warmup, &limit, &timeout, &host_header,
                                     &path, &expect_length, &marker, &post_every, &start_at,
                                     &arrivals, &seed))
        return NULL;
    cfg_t *g = calloc(1, sizeof *g);
    if (!g)
        return PyErr_NoMemory();
    g->workload = -1;
    for (int i = 0; i < W_COUNT; i++)
        if (strcmp(workload, WORKLOADS[i]) == 0)
            g->workload = i;
    PyObject *result = NULL;
    thr_t *ts = NULL;
    int nthreads = 0;
    if (g->workload < 0) {
        PyErr_Format(PyExc_ValueError, "unknown workload %s", workload);
        goto out;
    }
    if (conns < 1 || threads < 1 || pipeline < 1 || idle < 0 || size < 1 || duration <= 0 ||
        warmup < 0 || timeout <= 0 || rate < 0 || limit < 0 || port < 1 || port > 65535 ||
        post_every < 1 || path[0] != '/' || strlen(path) > 200 || strpbrk(path, " \r\n") ||
        (marker && (!marker[0] || strlen(marker) > 200 || strchr(marker + 1, marker[0])))) {
        PyErr_SetString(PyExc_ValueError, "invalid load generator parameters");
        goto out;
    }
    if (start_at < 0 || (start_at > 0 && start_at > realtime_s() + START_AT_MAX_S)) {
        PyErr_SetString(PyExc_ValueError, "start_at must be a CLOCK_REALTIME instant at most "
                        "600 s from now");
        goto out;
    }
    struct sockaddr_in *a4 = (struct sockaddr_in *)&g->addr;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&g->addr;
    if (inet_pton(AF_INET, host, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        a4->sin_port = htons((uint16_t)port);
        g->addrlen = sizeof *a4;
    } else if (inet_pton(AF_INET6, host, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        g->addrlen = sizeof *a6;
    } else {
        PyErr_Format(PyExc_ValueError, "host must be a numeric address, got %s", host);
        goto out;
    }
    if (threads > conns)
        threads = conns;
    g->conns = conns;
    g->threads = threads;
    g->idle = idle;
    g->pipeline = g->workload == W_HTTP_PIPELINE ? pipeline : 1;
    g->size = (size_t)size;
    g->rate = rate;
    if (strcmp(arrivals, "poisson") != 0 && strcmp(arrivals, "uniform") != 0) {
        PyErr_Format(PyExc_ValueError, "arrivals must be poisson or uniform, got %s", arrivals);
        goto out;
    }
    g->poisson = strcmp(arrivals, "poisson") == 0;
    g->seed = seed;
    g->warmup_ns = (uint64_t)(warmup * 1e9);
    g->duration_ns = (uint64_t)(duration * 1e9);
    g->timeout_ns = (uint64_t)(timeout * 1e9);
    g->limit = limit;
    if (rate > 0)
        g->interval_ns = (uint64_t)((double)conns * g->pipeline * 1e9 / rate);
    char hh[300];
    if (host_header)
        snprintf(hh, sizeof hh, "%s", host_header);
    else if (a4->sin_family == AF_INET)
        snprintf(hh, sizeof hh, "%s:%d", host, port);
    else
        snprintf(hh, sizeof hh, "[%s]:%d", host, port);
    char req[512];
    int rl = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s\r\n%s\r\n", path, hh,
                      g->workload == W_HTTP_CONNECT ? "Connection: close\r\n" : "");
    char post[768];
    int pl = snprintf(post, sizeof post,
                      "POST %s HTTP/1.1\r\nHost: %s\r\n"
                      "Content-Type: application/x-www-form-urlencoded\r\n"
                      "Content-Length: %zu\r\n\r\n%s",
                      path, hh, strlen(GUESTBOOK_FORM), GUESTBOOK_FORM);
    g->req_len = (size_t)rl;
    g->post_len = (size_t)pl;
    g->post_every = post_every;
    g->expect_status = g->workload >= W_FILE ? 200 : 0;
    g->expect_length = g->workload == W_FILE ? expect_length : -1;
    g->marker_len = marker ? strlen(marker) : 0;
    g->req = malloc(g->req_len);
    g->post = malloc(g->post_len);
    g->marker = marker ? strdup(marker) : NULL;
    g->preq = malloc(g->req_len * (size_t)g->pipeline);
    g->pattern = malloc(g->size + PATTERN_SPAN);
    if (!g->req || !g->preq || !g->pattern || !g->post || (marker && !g->marker)) {
        PyErr_NoMemory();
        goto out;
    }
    memcpy(g->post, post, g->post_len);
    memcpy(g->req, req, g->req_len);
    for (int i = 0; i < g->pipeline; i++)
        memcpy(g->preq + (size_t)i * g->req_len, req, g->req_len);
    uint64_t x = now_ns() | 1;
    for (size_t i = 0; i < g->size + PATTERN_SPAN; i++) {   /* xorshift64 */
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        g->pattern[i] = (unsigned char)(x >> 24);
    }
    raise_nofile((rlim_t)conns + (rlim_t)idle + 64 + 4 * (rlim_t)threads);

    ts = calloc((size_t)threads, sizeof *ts);
    if (!ts) {
        PyErr_NoMemory();
        goto out;
    }
    nthreads = threads;
    for (int i = 0; i < threads; i++) {
        thr_t *t = &ts[i];
        t->epfd = -1;
        t->cfg = g;
        t->id = i;
        t->nactive = conns / threads + (i < conns % threads);
        t->nidle = idle / threads + (i < idle % threads);
        int total = t->nactive + t->nidle;
        t->conns = calloc((size_t)total + 1, sizeof *t->conns);
        t->heap = calloc((size_t)total + 1, sizeof *t->heap);
        t->cq_cap = 2 * total + 2;
        t->cq = calloc((size_t)t->cq_cap, sizeof *t->cq);
        t->rbuf_size = 65536;
        t->rbuf = malloc(t->rbuf_size);
        t->epfd = epoll_create1(EPOLL_CLOEXEC);
        t->max_connecting = 128 / threads > 8 ? 128 / threads : 8;
        t->use_pwait2 = 1;
        if (!t->conns || !t->heap || !t->cq || !t->rbuf || t->epfd < 0) {
            PyErr_SetFromErrno(PyExc_OSError);
            goto out;
        }
        for (int j = 0; j < total; j++) {
            conn_t *c = &t->conns[j];
            c->fd = -1;
            c->heap_pos = -1;
            c->idle = (uint8_t)(j >= t->nactive);
            c->gidx = j * threads + i;
        }
    }
    int started = 0, interrupted = 0;
    double late_s = 0.0;
    uint64_t t_begin = now_ns(), t_finish;
    Py_BEGIN_ALLOW_THREADS
    g->t_start = t_begin;
    for (; started < threads; started++)
        if (pthread_create(&ts[started].tid, NULL, thread_main, &ts[started]) != 0)
            break;
    if (started < threads) {
        /* cannot happen in practice: stop the started ones at once */
        atomic_store(&g->stop, 1);
        atomic_store(&g->go, 1);
    } else {
        while (atomic_load(&g->ready) < threads) {
            struct timespec ms = {0, 1000000};
            nanosleep(&ms, NULL);
        }
        /* several load generators (one per client host) start their clocks together at
           an agreed CLOCK_REALTIME instant, once connected; a late one starts at once */
        while (start_at > 0 && !interrupted) {
            double left = start_at - realtime_s();
            if (left <= 0) {
                late_s = -left;
                break;
            }
            struct timespec nap = {0, left < 0.01 ? (long)(left * 1e9) : 10000000L};
            nanosleep(&nap, NULL);
            Py_BLOCK_THREADS
            if (PyErr_CheckSignals() < 0)
                interrupted = 1;
            Py_UNBLOCK_THREADS
        }
        if (interrupted)
            atomic_store(&g->stop, 1);
        uint64_t t0 = now_ns();
        g->t_measure = t0 + g->warmup_ns;
        g->t_end = g->t_measure + g->duration_ns;
        g->t_mid = g->t_measure + g->duration_ns / 2;
        g->t_hard_end = g->t_end + g->timeout_ns;
        g->t0 = t0;
        atomic_store(&g->go, 1);
        /* wait, checking for signals every 10 ms */
        for (;;) {
            struct timespec ts10 = {0, 10000000};
            nanosleep(&ts10, NULL);
            Py_BLOCK_THREADS
            if (PyErr_CheckSignals() < 0) {
                interrupted = 1;
                atomic_store(&g->stop, 1);
            }
            Py_UNBLOCK_THREADS
            if (interrupted)
                break;
            int busy = 0;
            for (int i = 0; i < threads; i++) {
                if (!ts[i].joined && pthread_tryjoin_np(ts[i].tid, NULL) == EBUSY)
                    busy = 1;
                else
                    ts[i].joined = 1;
            }
            if (!busy)
                break;
        }
    }
    for (int i = 0; i < started; i++)
        if (!ts[i].joined)
            pthread_join(ts[i].tid, NULL);
    t_finish = now_ns();
    Py_END_ALLOW_THREADS
    if (interrupted || started < threads) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_OSError, "could not start the load generator threads");
        goto out;
    }

    hist_t *h = calloc(1, sizeof *h);
    if (!h) {
        PyErr_NoMemory();
        goto out;
    }
    uint64_t requests = 0, sent = 0, recvd = 0, errs[E_COUNT] = {0}, last = 0;
    double cpu = 0, thread_wall = 0;
    long idle_open = 0;
    for (int i = 0; i < threads; i++) {
        thr_t *t = &ts[i];
        hist_merge(h, &t->hist);
        requests += t->requests;
        sent += t->bytes_sent;
        recvd += t->bytes_recv;
        for (int k = 0; k < E_COUNT; k++)
            errs[k] += t->errors[k];
        if (t->last_done > last)
            last = t->last_done;
        cpu += t->cpu_s;
        if (t->t_run1 > t->t_run0)
            thread_wall += (double)(t->t_run1 - t->t_run0) / 1e9;
        for (int j = t->nactive; j < t->nactive + t->nidle; j++)
            if (t->conns[j].fd >= 0)
                idle_open++;
    }
    /* measured window: warmup end to duration end (or to the last answer, if later,
       or earlier when a request limit ended the run) */
    uint64_t end = g->t_end;
    if (last > end)
        end = last;
    if (g->limit && (long long)requests >= g->limit && last < end)
        end = last;
    if (end > t_finish)
        end = t_finish;
    double dur = end > g->t_measure ? (double)(end - g->t_measure) / 1e9 : 0.0;
    double wall = (double)(t_finish - t_begin) / 1e9;
    uint64_t etotal = 0;
    for (int k = 0; k < E_COUNT; k++)
        etotal += errs[k];
    double mean = h->total ? (double)h->sum_ns / (double)h->total / 1000.0 : 0.0;
    double half1 = g->t_mid > g->t_measure ? (double)(g->t_mid - g->t_measure) / 1e9 : 0.0;
    PyObject *halves = halves_of(ts, threads, h, half1, dur > half1 ? dur - half1 : 0.0);
    PyObject *lat = Py_BuildValue(
        "{s:K,s:K,s:K,s:K,s:K,s:d}", "p50", (unsigned long long)hist_percentile(h, 50.0),
        "p90", (unsigned long long)hist_percentile(h, 90.0),
        "p99", (unsigned long long)hist_percentile(h, 99.0),
        "p999", (unsigned long long)hist_percentile(h, 99.9),
        "max", (unsigned long long)h->max_us, "mean", mean);
    PyObject *buckets = hist_buckets(h);
    free(h);
    PyObject *errd = PyDict_New();
    for (int k = 0; lat && errd && k < E_COUNT; k++) {
        PyObject *v = PyLong_FromUnsignedLongLong(errs[k]);
        if (!v || PyDict_SetItemString(errd, ERRNAMES[k], v) < 0) {
            Py_XDECREF(v);
            Py_CLEAR(errd);
            break;
        }
        Py_DECREF(v);
    }
    if (lat && errd)
        result = Py_BuildValue(
            "{s:s,s:i,s:i,s:d,s:K,s:d,s:K,s:K,s:O,s:O,s:K,s:l,s:d,s:d,s:d}",
            "workload", WORKLOADS[g->workload], "connections", conns, "threads", threads,
            "duration_s", dur, "requests", (unsigned long long)requests,
            "requests_per_s", dur > 0 ? (double)requests / dur : 0.0,
            "bytes_sent", (unsigned long long)sent, "bytes_received", (unsigned long long)recvd,
            "latency_us", lat, "errors", errd, "errors_total", (unsigned long long)etotal,
            "idle_open", idle_open, "client_cpu_s", cpu,
            "client_cpu_util", thread_wall > 0 ? cpu / thread_wall : 0.0, "wall_s", wall);
    if (result && (!buckets ||
                   PyDict_SetItemString(result, "histogram", buckets) < 0 ||
                   set_double(result, "start_late_s", late_s) < 0))
        Py_CLEAR(result);
    Py_XDECREF(buckets);
    if (result && (!halves || PyDict_SetItemString(result, "halves", halves) < 0))
        Py_CLEAR(result);
    Py_XDECREF(halves);
    Py_XDECREF(lat);
    Py_XDECREF(errd);
out:
    free_threads(ts, nthreads);
    if (g) {
        free(g->req);
        free(g->post);
        free(g->marker);
        free(g->preq);
        free(g->pattern);
        free(g);
    }
    return result;
}

static PyMethodDef methods[] = {
    {"run", (PyCFunction)(void (*)(void))lg_run, METH_VARARGS | METH_KEYWORDS,
     "run(host, port, workload, connections, duration, threads=1, rate=0.0, size=64,\n"
     "    pipeline=1, idle=0, warmup=0.0, requests=0, timeout=5.0, host_header=None,\n"
     "    path='/', expect_length=-1, marker=None, post_every=20, start_at=0.0)"
     " -> dict\n\nRun one load test against a numeric address; see bench.loadgen."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "zoo_loadgen",
                                    "Native epoll load generator (see bench.loadgen).", -1,
                                    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit_zoo_loadgen(void)
{
    return PyModule_Create(&module);
}
