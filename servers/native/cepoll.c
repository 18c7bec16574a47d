/* cepoll.c - zoo_cepoll: a single-threaded, level-triggered epoll server.
 *
 * The native user-space ceiling of tcp-zoo: echo and HTTP/1.1 (GET/HEAD of the
 * benchmark page, keep-alive, pipelining) with per-connection buffers and
 * bounded memory (while a peer's unsent output exceeds the high water mark, its
 * requests are not parsed, the unparsed rest is kept, and it is not read: the
 * mark plus one response, whatever one read held).  The header deadline runs
 * from a request's first byte; lines end in CRLF or the request gets 400, as
 * llhttp says.  accept() out of descriptors pauses accepting (100 ms, or until a
 * connection closes) with one log line per episode.  Every response text (page, types, reasons, error bodies, server
 * name) comes from the caller, who reads servers/core/wire.json; only the shape
 * of a response (WIRE.md) lives here.  The GIL is released while the loop runs
 * and taken back at least every 200 ms to run Python signal handlers.
 *
 * With a Redis (the guestbook argument), /guestbook is the core's guestbook app
 * (servers/core/guestbook.py) redone in C: a request that needs Redis becomes a
 * call that waits, FIFO, for a connection of a pool of non-blocking Redis
 * connections in the same epoll (up to --backend-pool, one call on each at a
 * time); the client is not read or parsed until the call is answered, so its
 * responses stay in request order.  Replies are read by a small bounded RESP
 * parser; a connection that fails, closes, times out or sends garbage fails its
 * call (503) and is closed, and the next call opens a new one.
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define NS 1000000000ull
#define TICK_NS 200000000ull     /* signal check and timeout scan period */
/* Lingering close, as the core's Settings.linger_seconds and linger_bytes: drain the
 * peer at most this long and this much, so an answer survives input it never reads. */
#define LINGER_NS 1000000000ull
#define LINGER_BYTES (1024 * 1024)
#define MAX_EVENTS 512

enum { KEEP, CLOSE, KEEP_10 };
enum { ERR_400, ERR_404, ERR_405, ERR_413, ERR_431, NERR };
static const int ERR_CODES[NERR] = {400, 404, 405, 413, 431};

typedef struct {
    char *reason;
    char *body;
    size_t body_len;
} errdef_t;

typedef struct {
    int fd;
    uint8_t used;
    uint8_t closing;            /* close once the output is flushed */
    uint8_t lingering;          /* write side shut, draining the peer */
    uint8_t epout;
    uint8_t epin;
    uint8_t eof;                /* peer done sending: answer what is kept, then close */
    /* pending response, sent when the request body has been read */
    uint8_t pend;
    uint8_t pend_head_only;
    int pend_code;
    int pend_mode;
    int64_t body_left;
    uint8_t chunk_state;        /* CH_NONE, or where a chunked body's decoder stands */
    int64_t chunk_left, chunk_total;
    char *in;
    size_t in_len, in_cap;
    char *out;
    size_t out_len, out_off, out_cap;
    size_t head_skipped;        /* blank-line bytes skipped since head_start */
    size_t lingered;            /* bytes drained while lingering */
    uint64_t last_ns, head_start, linger_until;
    /* the guestbook (with a Redis): the request being read, and its backend call */
    uint8_t gb_req;             /* GB_NONE, GB_PAGE (GET/HEAD) or GB_POST */
    uint8_t form_ok;            /* its Content-Type is the urlencoded form */
    uint8_t awaiting;           /* a call is pending: parsing and reading pause */
    uint8_t queued;             /* ... waiting in the FIFO for a free Redis connection */
    uint8_t stop_after;         /* graceful stop: close once the pending answer is out */
    uint8_t call_head_only;
    int call_mode;
    int call_kind;              /* GB_PAGE or GB_POST */
    char *call_cmd;             /* the RESP commands (owned for a POST) */
    size_t call_cmd_len;
    int call_replies;
    int q_prev, q_next;         /* FIFO links (descriptors of the neighbours, -1 none) */
    struct rconn *rc;           /* the Redis connection performing the call */
    char *body;                 /* a guestbook POST's body, kept (bounded by max_body) */
    size_t body_len, body_cap;
} sconn_t;

enum { GB_NONE, GB_PAGE, GB_POST };
enum { RC_CONNECTING, RC_RETRY, RC_READY };

/* One Redis connection of the pool: one call at a time. */
typedef struct rconn {
    int fd;                     /* -1 between two connect tries (RC_RETRY) */
    int state;
    int client;                 /* the descriptor of the client whose call this is, -1 none */
    int busy;
    int want;                   /* replies that end the call */
    int all_ix;                 /* where it is in srv_t.all */
    int idle_ix;                /* where it is in srv_t.idle, -1 if not idle */
    uint8_t epout;
    char *out;
    size_t out_len, out_off, out_cap;
    char *in;
    size_t in_len, in_cap;
    uint64_t deadline;          /* connect or reply deadline */
    uint64_t next_try;          /* RC_RETRY: when to connect again */
} rconn_t;

typedef struct {
    int http;
    int epfd;
    int lfd;
    uint64_t idle_ns, header_ns, grace_ns;
    size_t max_header, max_body, hwm, read_size;
    char *server, *page_type, *error_type, *allow, *ok_reason;
    char *page_body;
    size_t page_len;
    errdef_t errs[NERR];
    char date[40];
    time_t date_sec;
    char page_head[3][512];
    size_t page_head_len[3];
    sconn_t *conns;
    int nconns_cap;
    int live;
    char *rbuf;
    uint64_t accept_resume;     /* listener out of epoll until then (0: in) */
    int accept_failing;         /* out of descriptors since the backlog was last drained */
    /* the guestbook, with a Redis (gb: 0 without) */
    int gb;
    char *gb_page_cmd;          /* the core's page call, RESP */
    size_t gb_page_cmd_len;
    int gb_page_replies;
    char *gb_key;               /* the entries list */
    long gb_kept, gb_max_name, gb_max_message;
    char *gb_path, *gb_page_type, *gb_form_type, *gb_r303, *gb_r503;
    char *gb_head_a, *gb_head_b, *gb_entry_a, *gb_entry_b, *gb_entry_c, *gb_tail;
    char *gb_see_other, *gb_unavailable, *gb_bad_prefix;
    struct sockaddr_storage raddr;
    socklen_t raddr_len;
    uint64_t reply_ns;          /* reply timeout: the backend wait plus slack */
    uint64_t connect_ns;        /* connect timeout */
    uint64_t retry_ns;          /* a unix connect that met a full backlog: again after this */
    int pool_max;
    rconn_t **all;              /* every open Redis connection */
    int all_n, all_cap;
    rconn_t **idle;             /* connected, no call */
    int idle_n;
    rconn_t **rtab;             /* by descriptor */
    int rtab_cap;
    int n_retrying;
    int q_head, q_tail;         /* clients whose call waits for a connection, FIFO */
    char *scratch;              /* a page being rendered */
    size_t scratch_len, scratch_cap;
} srv_t;

#define ACCEPT_BACKOFF_NS 100000000ull  /* out of descriptors: retry accept after this */

static inline uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * NS + (uint64_t)ts.tv_nsec;
}

/* ---------------------------------------------------------------- responses */

static size_t compose_head(srv_t *s, char *dst, size_t cap, int code, const char *reason,
                           const char *ctype, size_t len, int mode, int allow,
                           const char *location)
{
    int n = snprintf(dst, cap,
                     "HTTP/1.1 %d %s\r\nServer: %s\r\nDate: %s\r\nContent-Type: %s\r\n"
                     "Content-Length: %zu\r\n%s%s%s%s%s%s%s\r\n",
                     code, reason, s->server, s->date, ctype, len,
                     location ? "Location: " : "", location ? location : "",
                     location ? "\r\n" : "",
                     allow ? "Allow: " : "", allow ? s->allow : "", allow ? "\r\n" : "",
                     mode == CLOSE ? "Connection: close\r\n"
                     : mode == KEEP_10 ? "Connection: keep-alive\r\n" : "");
    return n < 0 ? 0 : ((size_t)n < cap ? (size_t)n : cap - 1);
}

static void refresh_date(srv_t *s)
{
    static const char *const days[] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
    static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                         "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME_COARSE, &ts);
    if (ts.tv_sec == s->date_sec)
        return;
    s->date_sec = ts.tv_sec;
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    snprintf(s->date, sizeof s->date, "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday],
             tm.tm_mday, months[tm.tm_mon], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
             tm.tm_sec);
    for (int m = 0; m < 3; m++)
        s->page_head_len[m] = compose_head(s, s->page_head[m], sizeof s->page_head[m], 200,
                                           s->ok_reason, s->page_type, s->page_len, m, 0, NULL);
}

static int out_reserve(sconn_t *c, size_t more)
{
    if (c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    if (c->out_len + more <= c->out_cap)
        return 0;
    if (c->out_off > 0) {
        memmove(c->out, c->out + c->out_off, c->out_len - c->out_off);
        c->out_len -= c->out_off;
        c->out_off = 0;
        if (c->out_len + more <= c->out_cap)
            return 0;
    }
    size_t cap = c->out_cap ? c->out_cap : 4096;
    while (cap < c->out_len + more)
        cap *= 2;
    char *nb = realloc(c->out, cap);
    if (!nb)
        return -1;
    c->out = nb;
    c->out_cap = cap;
    return 0;
}

static int out_append(sconn_t *c, const char *d, size_t n)
{
    if (out_reserve(c, n) < 0)
        return -1;
    memcpy(c->out + c->out_len, d, n);
    c->out_len += n;
    return 0;
}

static void emit_error(srv_t *s, sconn_t *c, int e, int mode, int head_only)
{
    char head[1024];
    errdef_t *d = &s->errs[e];
    size_t n = compose_head(s, head, sizeof head, ERR_CODES[e], d->reason, s->error_type,
                            d->body_len, mode, e == ERR_405, NULL);
    out_append(c, head, n);
    if (!head_only)
        out_append(c, d->body, d->body_len);
    if (mode == CLOSE)
        c->closing = 1;
}

static void emit_page(srv_t *s, sconn_t *c, int mode, int head_only)
{
    out_append(c, s->page_head[mode], s->page_head_len[mode]);
    if (!head_only)
        out_append(c, s->page_body, s->page_len);
    if (mode == CLOSE)
        c->closing = 1;
}

/* ---------------------------------------------------------------- HTTP parsing */

static inline int is_tchar(unsigned char ch)
{
    if (ch >= 'a' && ch <= 'z')
        return 1;
    if (ch >= 'A' && ch <= 'Z')
        return 1;
    if (ch >= '0' && ch <= '9')
        return 1;
    return ch && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

/* HTTP methods llhttp knows (405 but for GET and HEAD); any other token is malformed, 400. */
static const char *const HTTP_METHODS[] = {
    "DELETE", "GET", "HEAD", "POST", "PUT", "CONNECT", "OPTIONS", "TRACE", "COPY",
    "LOCK", "MKCOL", "MOVE", "PROPFIND", "PROPPATCH", "SEARCH", "UNLOCK", "BIND",
    "REBIND", "UNBIND", "ACL", "REPORT", "MKACTIVITY", "CHECKOUT", "MERGE", "M-SEARCH",
    "NOTIFY", "SUBSCRIBE", "UNSUBSCRIBE", "PATCH", "PURGE", "MKCALENDAR", "LINK", "UNLINK",
    "SOURCE", "QUERY", NULL};
/* Tokens llhttp also reads as methods: RTSP's, and PRI (HTTP/2's preface). */
static const char *const OTHER_METHODS[] = {
    "PRI", "DESCRIBE", "ANNOUNCE", "SETUP", "PLAY", "PAUSE", "TEARDOWN", "GET_PARAMETER",
    "SET_PARAMETER", "REDIRECT", "RECORD", "FLUSH", NULL};
/* The methods llhttp takes with an RTSP/ version (ICE/ takes SOURCE only). */
static const char *const RTSP_METHODS[] = {
    "OPTIONS", "DESCRIBE", "ANNOUNCE", "SETUP", "PLAY", "PAUSE", "TEARDOWN", "GET_PARAMETER",
    "SET_PARAMETER", "REDIRECT", "RECORD", "FLUSH", "GET", "POST", NULL};
/* What llhttp wants after a PRI request line (HTTP/2's preface); it refuses it whole. */
static const char PRI_REST[] = "\r\nSM\r\n\r\n";

static int in_list(const char *const *list, const char *m, size_t n)
{
    for (int i = 0; list[i]; i++)
        if (strlen(list[i]) == n && memcmp(list[i], m, n) == 0)
            return 1;
    return 0;
}

/* Can m[0..n) still become a method llhttp reads (all of it when complete)? */
static int method_prefix_ok(const char *m, size_t n, int complete)
{
    const char *const *lists[] = {HTTP_METHODS, OTHER_METHODS};
    for (int l = 0; l < 2; l++)
        for (int i = 0; lists[l][i]; i++) {
            size_t kl = strlen(lists[l][i]);
            if ((complete ? kl == n : kl >= n) && memcmp(lists[l][i], m, n) == 0)
                return 1;
        }
    return 0;
}

/* Does the comma-separated header value contain token tok (case-insensitive)? */
static int has_token(const char *v, size_t n, const char *tok)
{
    size_t tl = strlen(tok), i = 0;
    while (i < n) {
        while (i < n && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        size_t st = i;
        while (i < n && v[i] != ',')
            i++;
        size_t en = i;
        while (en > st && (v[en - 1] == ' ' || v[en - 1] == '\t'))
            en--;
        if (en - st == tl && strncasecmp(v + st, tok, tl) == 0)
            return 1;
    }
    return 0;
}

typedef struct {
    int get, head, known;
    int root;
    int ver;                    /* 9 (HTTP/0.9: no version), 10, 11 or 20, as llhttp takes */
    int conn_close, conn_keep;
    int chunked;
    int te;                     /* a Transfer-Encoding header was present */
    int te_bad;                 /* ... but its codings cannot be delimited */
    int64_t clen;               /* -1: none; -2: over the limit */
    int gb;                     /* the guestbook's path (with a Redis) */
    int form_ok;                /* the last Content-Type is the urlencoded form */
    int connect;                /* CONNECT: llhttp switches protocols after its head */
    int upgrade_hdr, conn_upgrade;  /* Upgrade: (a value), Connection: upgrade */
} req_t;

enum { CH_NONE, CH_SIZE, CH_DATA, CH_DATA_END, CH_TRAILER };
#define CHUNK_LINE_MAX 1024

/*
 * Find the first CRLF in p[0..n). Lines end in CRLF only, as llhttp wants: a bare LF, or
 * a CR followed by anything but LF, sets *bad and is returned (the request is answered at
 * once, never left waiting for a CRLF that will not come).
 */
static const char *find_crlf(const char *p, size_t n, int *bad)
{
    *bad = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] == '\n') {
            *bad = 1;
            return p + i;
        }
        if (p[i] == '\r') {
            if (i + 1 == n)
                return NULL;
            if (p[i + 1] != '\n') {
                *bad = 1;
                return p + i;
            }
            return p + i;
        }
    }
    return NULL;
}

/*
 * A head not complete yet: is what came already malformed? llhttp stops at the byte that
 * goes wrong, so the core answers 400 then, not at a head end (or a deadline) that may
 * never come; these are the checks it makes byte by byte: the method (a prefix of one it
 * reads), control bytes or bytes over 0x7e in the target, header names of token bytes,
 * control bytes in values, a Content-Length of digits, the framing headers' rules.
 * h[0..n) holds no bare LF or CR. Returns 0 or 1 (400); a length over the limit is 413
 * only once the head has ended (WIRE.md).
 */
static int parse_line(srv_t *s, const char *h, const char *le, req_t *r);
static const char *request_line_end(const char *h, size_t n, const char **next);

static int head_prefix_bad(srv_t *s, const char *h, size_t n)
{
    const char *end = h + n;
    const char *sp = memchr(h, ' ', n);
    if (!method_prefix_ok(h, sp ? (size_t)(sp - h) : n, sp != NULL))
        return 1;
    if (!sp)
        return 0;
    const char *q = sp + 1;
    while (q < end && *q == ' ')
        q++;
    for (; q < end && *q != ' ' && *q != '\r'; q++)
        if ((unsigned char)*q < 0x20 || (unsigned char)*q >= 0x7f)
            return 1;
    const char *next;
    const char *line = request_line_end(h, n, &next);
    if (!line)
        return 0;
    req_t rl;
    int pr = parse_line(s, h, line, &rl);
    if (pr == -3) {
        /* PRI ... HTTP/x: llhttp wants HTTP/2's preface, and refuses it once it deviates
         * or is complete */
        size_t got = (size_t)(end - next);
        return got >= sizeof PRI_REST - 1 || memcmp(next, PRI_REST, got) != 0;
    }
    if (pr < 0)
        return 1;               /* the whole line as llhttp reads it (an RTSP method too) */
    int seen_clen = 0, seen_te = 0, chunked = 0;
    for (line = next; line < end;) {
        const char *eol = memmem(line, (size_t)(end - line), "\r\n", 2);
        const char *lend = eol ? eol : (end[-1] == '\r' ? end - 1 : end);
        const char *colon = line;
        for (; colon < lend && *colon != ':'; colon++)
            if (!is_tchar((unsigned char)*colon))
                return 1;
        if (colon == lend) {
            if (eol)
                return 1;       /* a whole line without a colon */
            break;
        }
        if (colon == line)
            return 1;
        size_t nl = (size_t)(colon - line);
        int is_clen = nl == 14 && strncasecmp(line, "content-length", 14) == 0;
        int is_te = nl == 17 && strncasecmp(line, "transfer-encoding", 17) == 0;
        if ((is_clen && seen_te) || (is_te && seen_clen))
            return 1;           /* both framings */
        uint64_t full = 0;
        int digits = 0, after = 0, any = 0;
        for (const char *v = colon + 1; v < lend; v++) {
            unsigned char ch = (unsigned char)*v;
            if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
                return 1;
            int blank = ch == ' ' || ch == '\t';
            if (!blank && !any) {
                any = 1;        /* the value's first byte */
                if ((is_clen && seen_clen) || (is_te && chunked))
                    return 1;   /* a second length; a coding after "chunked" */
            }
            if (is_clen) {
                if (ch >= '0' && ch <= '9') {
                    if (after)
                        return 1;   /* digits, blanks, digits */
                    digits = 1;
                    if (full > (UINT64_MAX - (uint64_t)(ch - '0')) / 10)
                        return 1;   /* past 64 bits: malformed */
                    full = full * 10 + (uint64_t)(ch - '0');
                } else if (blank) {
                    after = digits;
                } else {
                    return 1;
                }
            } else if (is_te && chunked && !blank) {
                return 1;       /* anything after "chunked" */
            } else if (is_te && (ch == ',' || blank) && v - colon > 7 &&
                       strncasecmp(v - 7, "chunked", 7) == 0 &&
                       (v - 8 == colon || v[-8] == ' ' || v[-8] == '\t' || v[-8] == ',')) {
                chunked = 1;    /* the token "chunked" just ended */
                if (ch == ',')
                    return 1;
            }
        }
        if (!eol)
            break;
        if (is_te && !chunked && lend - 7 > colon && strncasecmp(lend - 7, "chunked", 7) == 0 &&
            (lend - 8 == colon || lend[-8] == ' ' || lend[-8] == '\t' || lend[-8] == ','))
            chunked = 1;        /* the line ends with the token */
        seen_clen |= is_clen;
        seen_te |= is_te;
        line = eol + 2;
    }
    return 0;
}

/* Is the request line h[0..n) one that llhttp lets a bare LF end? HTTP/0.9's: a method,
 * spaces and a target, with no version (nor a space) after it. */
static int line09_lf(const char *h, size_t n)
{
    const char *end = h + n, *t = memchr(h, ' ', n);
    if (!t)
        return 0;
    while (t < end && *t == ' ')
        t++;
    return t < end && !memchr(t, ' ', (size_t)(end - t));
}

/* Where the request line in h[0..n) ends (at its CR, or a 0.9 line's LF), and where the
 * next line starts (*next); NULL if the line has no end yet (or a bad one). */
static const char *request_line_end(const char *h, size_t n, const char **next)
{
    const char *lf = memchr(h, '\n', n);
    if (!lf)
        return NULL;
    *next = lf + 1;
    if (lf > h && lf[-1] == '\r')
        return lf - 1;
    return line09_lf(h, (size_t)(lf - h)) ? lf : NULL;
}

/* Where the head in h[0..n) ends (after its blank line): 0 if not yet; or *bad, and the
 * offset of the byte that is wrong in *bad_at. */
static size_t head_end(const char *h, size_t n, int *bad, size_t *bad_at)
{
    size_t off = 0;
    for (;;) {
        const char *eol = find_crlf(h + off, n - off, bad);
        if (*bad && !off && *eol == '\n' && line09_lf(h, (size_t)(eol - h))) {
            *bad = 0;           /* llhttp ends an HTTP/0.9 request line at a bare LF */
            off = (size_t)(eol - h) + 1;
            continue;
        }
        if (*bad)
            *bad_at = (size_t)(eol - h);
        if (!eol || *bad)
            return 0;
        size_t line = (size_t)(eol - (h + off));
        off += line + 2;
        if (line == 0)
            return off;
    }
}

/* Is the Content-Type value v[0..n) the media type form (parameters aside)? As the core:
 * the part before ';', stripped, compared without case. */
static int media_is(const char *v, size_t n, const char *form)
{
    const char *semi = memchr(v, ';', n);
    size_t e = semi ? (size_t)(semi - v) : n, b = 0;
    while (b < e && (v[b] == ' ' || v[b] == '\t'))
        b++;
    while (e > b && (v[e - 1] == ' ' || v[e - 1] == '\t'))
        e--;
    return e - b == strlen(form) && strncasecmp(v + b, form, e - b) == 0;
}

/* The request line h[0..le) (le at its line end) as llhttp reads it: 0; -1 malformed; -3
 * PRI with an HTTP/ version, whose fate hangs on the bytes after it (HTTP/2's preface). */
static int parse_line(srv_t *s, const char *h, const char *le, req_t *r)
{
    const char *p = h;
    const char *sp = memchr(p, ' ', (size_t)(le - p));
    if (!sp || sp == p)
        return -1;
    for (const char *q = p; q < sp; q++)
        if (!is_tchar((unsigned char)*q))
            return -1;
    size_t ml = (size_t)(sp - p);
    r->get = ml == 3 && memcmp(p, "GET", 3) == 0;
    r->head = ml == 4 && memcmp(p, "HEAD", 4) == 0;
    if (!method_prefix_ok(p, ml, 1))
        return -1;              /* a method llhttp does not know: malformed, as the core says */
    r->connect = ml == 7 && memcmp(p, "CONNECT", 7) == 0;
    const char *t = sp + 1;
    while (t < le && *t == ' ')
        t++;                    /* llhttp skips spaces before the target and the version */
    const char *sp2 = memchr(t, ' ', (size_t)(le - t));
    if (le == t)
        return -1;
    if (!sp2)
        sp2 = le;               /* no version: HTTP/0.9, whose head llhttp still reads */
    for (const char *q = t; q < sp2; q++)
        if ((unsigned char)*q <= 0x20 || (unsigned char)*q >= 0x7f)
            return -1;
    const char *v = sp2;
    while (v < le && *v == ' ')
        v++;
    if (sp2 < le && v == le)
        return -1;              /* spaces, then the end of the line */
    /* the protocol: none (0.9: any method llhttp reads), HTTP/, RTSP/ or ICE/ (each with
     * its own methods), then the versions llhttp takes: 0.9, 1.0, 1.1, 2.0 */
    const char *const *methods = NULL;
    size_t pl = 0;
    if (sp2 == le)
        r->ver = 9;
    else if (le - v == 8 && memcmp(v, "HTTP/", 5) == 0)
        methods = HTTP_METHODS, pl = 5;
    else if (le - v == 8 && memcmp(v, "RTSP/", 5) == 0)
        methods = RTSP_METHODS, pl = 5;
    else if (le - v == 7 && memcmp(v, "ICE/", 4) == 0)
        pl = 4;
    else
        return -1;
    if (pl) {
        if (!isdigit((unsigned char)v[pl]) || v[pl + 1] != '.' || !isdigit((unsigned char)v[pl + 2]))
            return -1;
        r->ver = (v[pl] - '0') * 10 + (v[pl + 2] - '0');
        if (r->ver != 9 && r->ver != 10 && r->ver != 11 && r->ver != 20)
            return -1;
    }
    /* the path: origin form, or absolute form (scheme://authority/path) */
    const char *path = t, *pend = sp2;
    if (r->connect) {
        /* authority form; llhttp refuses these bytes before a '/' or '?' (never the page) */
        for (const char *q = t; q < sp2 && *q != '/' && *q != '?'; q++)
            if (strchr("\"#<>\\^`{|}", *q))
                return -1;
        path = "*";
        pend = path + 1;
    } else if (*t == '*') {
        path = "*";             /* asterisk form, and what llhttp reads after it: not the page */
        pend = path + 1;
    } else if (*t != '/') {
        const char *scheme = memchr(t, ':', (size_t)(sp2 - t));
        if (!scheme || sp2 - scheme < 3 || scheme[1] != '/' || scheme[2] != '/')
            return -1;
        const char *slash = memchr(scheme + 3, '/', (size_t)(sp2 - scheme - 3));
        path = slash ? slash : "/";
        pend = slash ? sp2 : path + 1;
    }
    size_t plen = 0;
    while (path + plen < pend && path[plen] != '?' && path[plen] != '#')
        plen++;
    r->root = plen == 0 || (plen == 1 && path[0] == '/');
    r->gb = s->gb && plen == strlen(s->gb_path) && memcmp(path, s->gb_path, plen) == 0;
    if (sp2 == le)
        return 0;
    if (pl == 4 ? !(ml == 6 && memcmp(p, "SOURCE", 6) == 0) : !in_list(methods, p, ml))
        return methods == HTTP_METHODS && ml == 3 && memcmp(p, "PRI", 3) == 0 ? -3 : -1;
    return 0;
}

/* Parse a complete head (ending in CRLF CRLF). 0 ok, -1 malformed, -2 a length over the
 * limit, -3 a PRI request line (parse_line). */
static int parse_request(srv_t *s, const char *h, size_t len, req_t *r, size_t max_body)
{
    memset(r, 0, sizeof *r);
    r->clen = -1;
    const char *end = h + len, *p;
    const char *le = request_line_end(h, len, &p);
    int lr = le ? parse_line(s, h, le, r) : -1;
    if (lr < 0)
        return lr;              /* -3: PRI, judged against HTTP/2's preface */
    /* headers */
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol || eol == p || eol[-1] != '\r')
            return -1;
        size_t ll = (size_t)(eol - p) - 1;
        if (ll == 0)
            break;              /* the empty line */
        const char *colon = memchr(p, ':', ll);
        if (!colon || colon == p)
            return -1;
        for (const char *q = p; q < colon; q++)
            if (!is_tchar((unsigned char)*q))
                return -1;
        size_t nl = (size_t)(colon - p);
        const char *val = colon + 1, *vend = p + ll;
        while (val < vend && (*val == ' ' || *val == '\t'))
            val++;
        while (vend > val && (vend[-1] == ' ' || vend[-1] == '\t'))
            vend--;
        size_t vl = (size_t)(vend - val);
        for (size_t i = 0; i < vl; i++)
            if (((unsigned char)val[i] < 0x20 && val[i] != '\t') || val[i] == 0x7f)
                return -1;
        if (nl == 14 && strncasecmp(p, "content-length", 14) == 0) {
            if (vl == 0)
                return -1;
            int64_t n = 0;
            uint64_t full = 0;
            for (size_t i = 0; i < vl; i++) {
                if (val[i] < '0' || val[i] > '9')
                    return -1;
                if (full > (UINT64_MAX - (uint64_t)(val[i] - '0')) / 10)
                    return -1;  /* llhttp: a length past 64 bits is malformed, not large */
                full = full * 10 + (uint64_t)(val[i] - '0');
                if (n <= (int64_t)max_body)
                    n = n * 10 + (val[i] - '0');
            }
            if (n > (int64_t)max_body)
                n = -2;
            if (r->clen != -1 || r->te)
                return -1;      /* a second length, even equal, or one with a coding */
            r->clen = n;
        } else if (nl == 17 && strncasecmp(p, "transfer-encoding", 17) == 0) {
            /* as llhttp: a list of codings, "chunked" at most once and only last; a body
             * whose last coding is another one cannot be delimited (te_bad, 400 once the
             * head has ended). */
            if (vl == 0 || r->chunked || r->clen != -1)
                return -1;
            r->te = 1;
            for (size_t i = 0; i < vl;) {
                while (i < vl && (val[i] == ' ' || val[i] == '\t' || val[i] == ','))
                    i++;
                size_t st = i;
                while (i < vl && val[i] != ',' && val[i] != ' ' && val[i] != '\t')
                    i++;
                if (i == st)
                    break;
                if (r->chunked)
                    return -1;  /* a coding after "chunked" */
                if (i - st == 7 && strncasecmp(val + st, "chunked", 7) == 0) {
                    r->chunked = 1;
                    size_t k = i;
                    while (k < vl && (val[k] == ' ' || val[k] == '\t'))
                        k++;
                    if (k < vl)
                        return -1;  /* anything after "chunked", even a comma */
                }
            }
            r->te_bad = !r->chunked;
        } else if (nl == 12 && strncasecmp(p, "content-type", 12) == 0) {
            r->form_ok = s->gb && media_is(val, vl, s->gb_form_type);
        } else if (nl == 10 && strncasecmp(p, "connection", 10) == 0) {
            if (has_token(val, vl, "close"))
                r->conn_close = 1;
            if (has_token(val, vl, "keep-alive"))
                r->conn_keep = 1;
            if (has_token(val, vl, "upgrade"))
                r->conn_upgrade = 1;
        } else if (nl == 7 && strncasecmp(p, "upgrade", 7) == 0) {
            r->upgrade_hdr |= vl > 0;
        }
        p = eol + 1;
    }
    if (r->te && r->clen != -1)
        return -1;              /* both framings at once: request smuggling, refuse */
    return 0;
}

/*
 * Read (and discard) a chunked body from d[0..n). Returns 1 when the body and its
 * trailers are complete, 0 when more input is needed, -1 if malformed, -2 over the
 * body limit. *used gets the bytes consumed.
 */
/* Keep d[0..n) of a guestbook POST's body (the body limit bounds it); -1 out of memory. */
static int keep_body(sconn_t *c, const char *d, size_t n)
{
    if (c->body_len + n > c->body_cap) {
        size_t cap = c->body_cap ? c->body_cap : 1024;
        while (cap < c->body_len + n)
            cap *= 2;
        char *nb = realloc(c->body, cap);
        if (!nb)
            return -1;
        c->body = nb;
        c->body_cap = cap;
    }
    memcpy(c->body + c->body_len, d, n);
    c->body_len += n;
    return 0;
}

/*
 * Is the chunk size line p[0..n) (without its line end) malformed so far? As llhttp: hex
 * digits, then extensions ";name", ";name=token" or ';name="quoted"', nothing else (no
 * blanks); complete: the line ended there.
 */
static int chunk_line_bad(const char *p, size_t n, int complete)
{
    enum { HEX, NAME, VALUE, QUOTED, ESCAPED, QUOTE_END } st = HEX;
    size_t len = 0;             /* bytes of the digits, name or value so far */

    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        int ctl = (ch < 0x20 && ch != '\t') || ch == 0x7f;

        switch (st) {
        case HEX:
            if (isxdigit(ch)) {
                len++;
                continue;
            }
            if (ch != ';' || !len)
                return 1;
            st = NAME;
            len = 0;
            break;
        case NAME:
            if (is_tchar(ch))
                len++;
            else if (ch == ';' && len)
                len = 0;
            else if (ch == '=')
                st = VALUE, len = 0;
            else
                return 1;
            break;
        case VALUE:
            if (ch == '"' && !len)
                st = QUOTED;
            else if (ch == ';')
                st = NAME, len = 0;
            else if (is_tchar(ch))
                len++;
            else
                return 1;
            break;
        case QUOTED:
            if (ctl)
                return 1;
            st = ch == '"' ? QUOTE_END : ch == '\\' ? ESCAPED : QUOTED;
            break;
        case ESCAPED:
            if (ctl)
                return 1;
            st = QUOTED;
            break;
        case QUOTE_END:
            if (ch != ';')
                return 1;
            st = NAME;
            len = 0;
            break;
        }
    }
    if (!complete)
        return 0;
    return st == QUOTED || st == ESCAPED || ((st == HEX || st == NAME) && !len);
}

/* Is the trailer line p[0..n) (maybe not complete, no line end) malformed so far? A name
 * of token bytes, a colon, a value without control bytes; complete: the line ended. */
static int trailer_line_bad(const char *p, size_t n, int complete)
{
    size_t i = 0;
    while (i < n && p[i] != ':')
        if (!is_tchar((unsigned char)p[i++]))
            return 1;
    if (i == n)
        return complete && n > 0;   /* a whole line without a colon */
    if (i == 0)
        return 1;
    for (i++; i < n; i++)
        if (((unsigned char)p[i] < 0x20 && p[i] != '\t' && p[i] != '\r') || p[i] == 0x7f)
            return 1;
    return 0;
}

static int consume_chunked(sconn_t *c, const char *d, size_t n, size_t max_body,
                           size_t *used)
{
    size_t off = 0;

    while (off < n) {
        const char *p = d + off;
        size_t avail = n - off;
        const char *eol;
        int bad;

        switch (c->chunk_state) {
        case CH_DATA: {
            size_t take = (size_t)c->chunk_left < avail ? (size_t)c->chunk_left : avail;

            /* as the core: over the limit once the data bytes that came pass it */
            c->chunk_total += (int64_t)take;
            if (c->chunk_total > (int64_t)max_body)
                return -2;
            if (c->gb_req == GB_POST && keep_body(c, p, take) < 0)
                return -2;
            c->chunk_left -= (int64_t)take;
            off += take;
            if (c->chunk_left == 0)
                c->chunk_state = CH_DATA_END;
            break;
        }
        case CH_DATA_END:
            if (avail < 2) {
                if (p[0] != '\r')
                    return -1;
                goto more;
            }
            if (p[0] != '\r' || p[1] != '\n')
                return -1;
            off += 2;
            c->chunk_state = CH_SIZE;
            break;
        case CH_SIZE: {
            eol = find_crlf(p, avail, &bad);
            /* judged byte by byte as llhttp does, the line not yet complete too */
            if (chunk_line_bad(p, eol ? (size_t)(eol - p) : avail - (p[avail - 1] == '\r'),
                               eol && !bad))
                return -1;
            if (bad || !eol) {
                if (bad || avail > CHUNK_LINE_MAX)
                    return -1;
                goto more;
            }
            uint64_t size = 0;
            const char *q = p;

            for (; q < eol && isxdigit((unsigned char)*q); q++) {
                if (size >> 60)
                    return -1;  /* llhttp: a size past 64 bits is malformed */
                size = size * 16 + (uint64_t)(isdigit((unsigned char)*q) ? *q - '0' :
                                              (tolower((unsigned char)*q) - 'a' + 10));
            }
            off += (size_t)(eol - p) + 2;
            c->chunk_left = size > INT64_MAX ? INT64_MAX : (int64_t)size;
            c->chunk_state = size ? CH_DATA : CH_TRAILER;
            break;
        }
        case CH_TRAILER:
            eol = find_crlf(p, avail, &bad);
            /* llhttp reads trailer lines as header lines, and fails at the first bad byte */
            if (trailer_line_bad(p, eol ? (size_t)(eol - p) : avail - (p[avail - 1] == '\r'),
                                 eol && !bad))
                return -1;
            if (bad || !eol) {
                if (bad || avail > CHUNK_LINE_MAX * 8)
                    return -1;
                goto more;
            }
            off += (size_t)(eol - p) + 2;
            if (eol == p) {
                c->chunk_state = CH_NONE;
                *used = off;
                return 1;
            }
            break;
        default:
            return -1;
        }
    }
more:
    *used = off;
    return 0;
}

static size_t pending_out(sconn_t *c);

/* ---------------------------------------------------------------- the guestbook
 *
 * With a Redis, /guestbook is the core's guestbook app (servers/core/guestbook.py),
 * mirrored here: the same form validation and 400 reasons, the same JSON entries
 * (json.dumps(..., ensure_ascii=False)), the same page (html.escape(quote=True)).
 * A request that needs Redis becomes a call (RESP commands and how many replies end
 * it); parsing and reading pause until it is answered, so responses stay in order.
 */

#define RESP_MAX_BULK (1u << 20)        /* a bulk string longer is garbage */
#define RESP_MAX_ARRAY 1024
#define RESP_MAX_LINE 4096
#define RESP_MAX_DEPTH 4
#define RESP_MAX_INPUT (32u << 20)      /* one call's replies: more is garbage */
#define JSON_MAX_DEPTH 64
#define FORM_MAX_FIELDS 8
#define REPR_MAX_CHARS 32

typedef struct {
    char *d;
    size_t n, cap;
    int fail;
} buf_t;

static void buf_put(buf_t *b, const void *d, size_t n)
{
    if (b->fail)
        return;
    if (b->n + n > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n)
            cap *= 2;
        char *nd = realloc(b->d, cap);
        if (!nd) {
            b->fail = 1;
            return;
        }
        b->d = nd;
        b->cap = cap;
    }
    memcpy(b->d + b->n, d, n);
    b->n += n;
}

static void buf_puts(buf_t *b, const char *str) { buf_put(b, str, strlen(str)); }

static void buf_putc(buf_t *b, char ch) { buf_put(b, &ch, 1); }

/* A code point as UTF-8. */
static void buf_put_cp(buf_t *b, uint32_t cp)
{
    char u[4];
    size_t n;
    if (cp < 0x80) {
        u[0] = (char)cp;
        n = 1;
    } else if (cp < 0x800) {
        u[0] = (char)(0xC0 | (cp >> 6));
        u[1] = (char)(0x80 | (cp & 0x3F));
        n = 2;
    } else if (cp < 0x10000) {
        u[0] = (char)(0xE0 | (cp >> 12));
        u[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[2] = (char)(0x80 | (cp & 0x3F));
        n = 3;
    } else {
        u[0] = (char)(0xF0 | (cp >> 18));
        u[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
        u[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
        u[3] = (char)(0x80 | (cp & 0x3F));
        n = 4;
    }
    buf_put(b, u, n);
}

/*
 * One UTF-8 character at p[0..n) as Python's strict decoder takes it (no surrogates, no
 * overlong forms, nothing past U+10FFFF): its length, or minus the length of the maximal
 * invalid subpart (what Python's "replace" turns into one U+FFFD).
 */
static int utf8_char(const unsigned char *p, size_t n, uint32_t *cp)
{
    unsigned char b = p[0];
    if (b < 0x80) {
        *cp = b;
        return 1;
    }
    int len;
    unsigned char lo = 0x80, hi = 0xBF;
    if (b >= 0xC2 && b <= 0xDF) {
        len = 2;
    } else if (b >= 0xE0 && b <= 0xEF) {
        len = 3;
        if (b == 0xE0)
            lo = 0xA0;
        else if (b == 0xED)
            hi = 0x9F;
    } else if (b >= 0xF0 && b <= 0xF4) {
        len = 4;
        if (b == 0xF0)
            lo = 0x90;
        else if (b == 0xF4)
            hi = 0x8F;
    } else {
        return -1;
    }
    uint32_t v = b & (0x7F >> len);
    for (int i = 1; i < len; i++) {
        if ((size_t)i >= n)
            return -i;
        unsigned char ch = p[i];
        if (ch < (i == 1 ? lo : 0x80) || ch > (i == 1 ? hi : 0xBF))
            return -i;
        v = (v << 6) | (ch & 0x3F);
    }
    *cp = v;
    return len;
}

static int utf8_valid(const char *s, size_t n)
{
    uint32_t cp;
    for (size_t i = 0; i < n;) {
        int k = utf8_char((const unsigned char *)s + i, n - i, &cp);
        if (k < 0)
            return 0;
        i += (size_t)k;
    }
    return 1;
}

/* bytes.decode("utf-8", "replace") */
static void put_utf8_replace(buf_t *b, const char *s, size_t n)
{
    uint32_t cp;
    for (size_t i = 0; i < n;) {
        int k = utf8_char((const unsigned char *)s + i, n - i, &cp);
        if (k > 0) {
            buf_put(b, s + i, (size_t)k);
            i += (size_t)k;
        } else {
            buf_put(b, "\xEF\xBF\xBD", 3);
            i += (size_t)-k;
        }
    }
}

/* html.escape(text, quote=True) of valid UTF-8 */
static void put_html(buf_t *b, const char *s, size_t n)
{
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        const char *rep = NULL;
        switch (s[i]) {
        case '&': rep = "&amp;"; break;
        case '<': rep = "&lt;"; break;
        case '>': rep = "&gt;"; break;
        case '"': rep = "&quot;"; break;
        case '\'': rep = "&#x27;"; break;
        default: continue;
        }
        buf_put(b, s + run, i - run);
        buf_puts(b, rep);
        run = i + 1;
    }
    buf_put(b, s + run, n - run);
}

/* str.isspace(), what str.strip() removes */
static int py_space(uint32_t c)
{
    return (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x20) || c == 0x85 || c == 0xA0 ||
           c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
           c == 0x202F || c == 0x205F || c == 0x3000;
}

/* str.isprintable() for one character; outside Latin-1 the non-printable blocks only
 * (separators, format characters, surrogates, private use), not every unassigned one */
static int py_printable(uint32_t c)
{
    if (c < 0x20 || (c >= 0x7F && c <= 0xA0) || c == 0xAD)
        return 0;
    if (c < 0x100)
        return 1;
    return !(c == 0x61C || c == 0x1680 || c == 0x180E || (c >= 0x2000 && c <= 0x200F) ||
             (c >= 0x2028 && c <= 0x202F) || (c >= 0x205F && c <= 0x206F) || c == 0x3000 ||
             (c >= 0xD800 && c <= 0xF8FF) || c == 0xFEFF || (c >= 0xFFF9 && c <= 0xFFFB) ||
             c >= 0xF0000 || (c >= 0xE0000 && c <= 0xE0FFF));
}

/* repr() of the str whose first REPR_MAX_CHARS characters are s[0..n) (valid UTF-8) */
static void put_py_repr(buf_t *b, const char *s, size_t n)
{
    size_t end = 0;
    int sq = 0, dq = 0;
    uint32_t cp;
    for (int chars = 0; end < n && chars < REPR_MAX_CHARS; chars++) {
        int k = utf8_char((const unsigned char *)s + end, n - end, &cp);
        if (k < 0)
            return;
        sq |= cp == '\'';
        dq |= cp == '"';
        end += (size_t)k;
    }
    char quote = sq && !dq ? '"' : '\'';
    buf_putc(b, quote);
    for (size_t i = 0; i < end;) {
        int k = utf8_char((const unsigned char *)s + i, end - i, &cp);
        char esc[16];
        if (cp == (uint32_t)quote || cp == '\\') {
            buf_putc(b, '\\');
            buf_putc(b, (char)cp);
        } else if (cp == '\t' || cp == '\n' || cp == '\r') {
            buf_putc(b, '\\');
            buf_putc(b, cp == '\t' ? 't' : cp == '\n' ? 'n' : 'r');
        } else if (py_printable(cp)) {
            buf_put(b, s + i, (size_t)k);
        } else {
            snprintf(esc, sizeof esc, cp < 0x100 ? "\\x%02x" : cp < 0x10000 ? "\\u%04x" : "\\U%08x",
                     cp);
            buf_puts(b, esc);
        }
        i += (size_t)k;
    }
    buf_putc(b, quote);
}

/* repr() of a bytes object */
static void put_bytes_repr(buf_t *b, const char *s, size_t n)
{
    int sq = memchr(s, '\'', n) != NULL, dq = memchr(s, '"', n) != NULL;
    char quote = sq && !dq ? '"' : '\'';
    buf_putc(b, 'b');
    buf_putc(b, quote);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        char esc[8];
        if (ch == (unsigned char)quote || ch == '\\') {
            buf_putc(b, '\\');
            buf_putc(b, (char)ch);
        } else if (ch == '\t' || ch == '\n' || ch == '\r') {
            buf_putc(b, '\\');
            buf_putc(b, ch == '\t' ? 't' : ch == '\n' ? 'n' : 'r');
        } else if (ch < 0x20 || ch >= 0x7F) {
            snprintf(esc, sizeof esc, "\\x%02x", ch);
            buf_puts(b, esc);
        } else {
            buf_putc(b, (char)ch);
        }
    }
    buf_putc(b, quote);
}

/* ---------------------------------------------------------------- JSON (the entries) */

static const char *json_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

static int hex4(const char *p, const char *end, uint32_t *v)
{
    if (end - p < 4)
        return -1;
    *v = 0;
    for (int i = 0; i < 4; i++) {
        int ch = (unsigned char)p[i];
        int d = isdigit(ch) ? ch - '0' : (ch >= 'a' && ch <= 'f') ? ch - 'a' + 10
                : (ch >= 'A' && ch <= 'F') ? ch - 'A' + 10 : -1;
        if (d < 0)
            return -1;
        *v = *v * 16 + (uint32_t)d;
    }
    return 0;
}

/* A JSON string at p (its opening quote) as json.loads reads it (strict: no raw control
 * characters), decoded into out (may be NULL); returns what follows it, NULL if bad.
 * A lone surrogate (which Python keeps, then cannot encode) becomes U+FFFD. */
static const char *json_string(const char *p, const char *end, buf_t *out)
{
    if (p >= end || *p != '"')
        return NULL;
    for (p++; p < end;) {
        unsigned char ch = (unsigned char)*p;
        if (ch == '"')
            return p + 1;
        if (ch < 0x20)
            return NULL;
        if (ch != '\\') {
            const char *q = p;
            while (q < end && *q != '"' && *q != '\\' && (unsigned char)*q >= 0x20)
                q++;
            if (out)
                buf_put(out, p, (size_t)(q - p));
            p = q;
            continue;
        }
        if (++p >= end)
            return NULL;
        uint32_t cp;
        switch (*p) {
        case '"': cp = '"'; break;
        case '\\': cp = '\\'; break;
        case '/': cp = '/'; break;
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'n': cp = '\n'; break;
        case 'r': cp = '\r'; break;
        case 't': cp = '\t'; break;
        case 'u':
            if (hex4(p + 1, end, &cp) < 0)
                return NULL;
            p += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF && end - p >= 7 && p[1] == '\\' && p[2] == 'u') {
                uint32_t lo;
                if (hex4(p + 3, end, &lo) == 0 && lo >= 0xDC00 && lo <= 0xDFFF) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    p += 6;
                }
            }
            if (cp >= 0xD800 && cp <= 0xDFFF)
                cp = 0xFFFD;
            break;
        default:
            return NULL;
        }
        p++;
        if (out)
            buf_put_cp(out, cp);
    }
    return NULL;
}

static const char *json_number(const char *p, const char *end)
{
    if (p < end && *p == '-')
        p++;
    if (end - p >= 8 && memcmp(p, "Infinity", 8) == 0)
        return p + 8;
    if (p >= end || !isdigit((unsigned char)*p))
        return NULL;
    if (*p == '0')
        p++;
    else
        while (p < end && isdigit((unsigned char)*p))
            p++;
    if (p < end && *p == '.') {
        const char *d = ++p;
        while (p < end && isdigit((unsigned char)*p))
            p++;
        if (p == d)
            return NULL;
    }
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        if (p < end && (*p == '+' || *p == '-'))
            p++;
        const char *d = p;
        while (p < end && isdigit((unsigned char)*p))
            p++;
        if (p == d)
            return NULL;
    }
    return p;
}

/* Skip one JSON value (json.loads' grammar, NaN and Infinity included); NULL if bad. */
static const char *json_value(const char *p, const char *end, int depth)
{
    p = json_ws(p, end);
    if (p >= end || depth > JSON_MAX_DEPTH)
        return NULL;
    static const char *const words[] = {"true", "false", "null", "NaN", NULL};
    for (int i = 0; words[i]; i++) {
        size_t l = strlen(words[i]);
        if ((size_t)(end - p) >= l && memcmp(p, words[i], l) == 0)
            return p + l;
    }
    if (*p == '"')
        return json_string(p, end, NULL);
    if (*p == '[' || *p == '{') {
        char close = *p == '[' ? ']' : '}';
        p = json_ws(p + 1, end);
        if (p < end && *p == close)
            return p + 1;
        for (;;) {
            if (close == '}') {
                p = json_string(json_ws(p, end), end, NULL);
                p = p ? json_ws(p, end) : NULL;
                if (!p || p >= end || *p != ':')
                    return NULL;
                p++;
            }
            p = json_value(p, end, depth + 1);
            p = p ? json_ws(p, end) : NULL;
            if (!p || p >= end)
                return NULL;
            if (*p == close)
                return p + 1;
            if (*p != ',')
                return NULL;
            p++;
        }
    }
    return json_number(p, end);
}

/* str() of the JSON value v[0..n) as Python shows it: a string decoded; the constants and
 * integers as Python names them; other numbers, lists and objects as their JSON text. */
static void put_py_str(buf_t *b, const char *v, size_t n)
{
    if (n && v[0] == '"') {
        json_string(v, v + n, b);
    } else if (n == 4 && memcmp(v, "true", 4) == 0) {
        buf_puts(b, "True");
    } else if (n == 5 && memcmp(v, "false", 5) == 0) {
        buf_puts(b, "False");
    } else if (n == 4 && memcmp(v, "null", 4) == 0) {
        buf_puts(b, "None");
    } else if (n == 2 && memcmp(v, "-0", 2) == 0) {
        buf_puts(b, "0");
    } else if (n == 8 && memcmp(v, "Infinity", 8) == 0) {
        buf_puts(b, "inf");
    } else if (n == 9 && memcmp(v, "-Infinity", 9) == 0) {
        buf_puts(b, "-inf");
    } else if (n == 3 && memcmp(v, "NaN", 3) == 0) {
        buf_puts(b, "nan");
    } else {
        buf_put(b, v, n);
    }
}

/* One stored entry as a list item: the core's _decode_entry, then html.escape. */
static void put_entry(srv_t *s, buf_t *page, const char *raw, size_t n)
{
    buf_t name = {0}, msg = {0};
    const char *end = raw + n;
    if (!utf8_valid(raw, n)) {
        buf_putc(&name, '?');
        put_utf8_replace(&msg, raw, n);
    } else {
        const char *after = json_value(raw, end, 0);
        if (!after || json_ws(after, end) != end) {
            buf_putc(&name, '?');                       /* not JSON: the text itself */
            buf_put(&msg, raw, n);
        } else if (*json_ws(raw, end) != '{') {
            buf_putc(&name, '?');                       /* JSON, not an object: str(raw) */
            put_bytes_repr(&msg, raw, n);
        } else {
            /* the last "name" and "message" members win, as in a dict */
            const char *nv = NULL, *mv = NULL, *ne = NULL, *me = NULL;
            const char *p = json_ws(json_ws(raw, end) + 1, end);
            while (p < end && *p != '}') {
                buf_t key = {0};
                const char *k = json_string(p, end, &key);
                const char *v = json_ws(json_ws(k, end) + 1, end);  /* past the colon */
                const char *ve = json_value(v, end, 1);
                if (!key.fail && key.n == 4 && memcmp(key.d, "name", 4) == 0) {
                    nv = v;
                    ne = ve;
                } else if (!key.fail && key.n == 7 && memcmp(key.d, "message", 7) == 0) {
                    mv = v;
                    me = ve;
                }
                free(key.d);
                p = json_ws(ve, end);
                if (p < end && *p == ',')
                    p = json_ws(p + 1, end);
            }
            if (nv)
                put_py_str(&name, nv, (size_t)(ne - nv));
            if (mv)
                put_py_str(&msg, mv, (size_t)(me - mv));
        }
    }
    buf_puts(page, s->gb_entry_a);
    put_html(page, name.d ? name.d : "", name.n);
    buf_puts(page, s->gb_entry_b);
    put_html(page, msg.d ? msg.d : "", msg.n);
    buf_puts(page, s->gb_entry_c);
    page->fail |= name.fail | msg.fail;
    free(name.d);
    free(msg.d);
}

/* ---------------------------------------------------------------- RESP */

/* A RESP command: an array of bulk strings. */
static void resp_command(buf_t *b, int argc, const char *const *argv, const size_t *lens)
{
    char num[32];
    snprintf(num, sizeof num, "*%d\r\n", argc);
    buf_puts(b, num);
    for (int i = 0; i < argc; i++) {
        snprintf(num, sizeof num, "$%zu\r\n", lens[i]);
        buf_puts(b, num);
        buf_put(b, argv[i], lens[i]);
        buf_put(b, "\r\n", 2);
    }
}

/* An integer of RESP, p[0..n): at most 19 digits, a sign allowed. */
static int resp_int(const char *p, size_t n, long long *v)
{
    int neg = n > 0 && p[0] == '-';
    size_t i = (size_t)neg;
    if (i == n || n - i > 19)
        return -1;
    unsigned long long acc = 0;
    for (; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return -1;
        acc = acc * 10 + (unsigned long long)(p[i] - '0');
    }
    if (acc > (unsigned long long)LLONG_MAX + (unsigned long long)neg)
        return -1;
    *v = neg ? (long long)(0 - acc) : (long long)acc;
    return 0;
}

/*
 * The length of the whole reply at p[0..n): > 0; 0 if it is not all there yet; -1 if it
 * is not RESP (an unknown type, a bad length, a line without CRLF, over the bounds).
 * The kinds Redis 2 protocol has: + - : $ *, nil bulk strings and arrays included.
 */
static long resp_reply(const char *p, size_t n, int depth)
{
    if (n == 0)
        return 0;
    size_t scan = n < RESP_MAX_LINE ? n : RESP_MAX_LINE;
    const char *cr = memchr(p, '\r', scan);
    if (!cr)
        return n < RESP_MAX_LINE ? 0 : -1;
    if (cr + 1 == p + n)
        return 0;
    if (cr[1] != '\n' || memchr(p, '\n', (size_t)(cr - p)))
        return -1;
    size_t line = (size_t)(cr - p), head = line + 2;
    long long v;
    switch (p[0]) {
    case '+':
    case '-':
        return (long)head;
    case ':':
        return resp_int(p + 1, line - 1, &v) < 0 ? -1 : (long)head;
    case '$':
        if (resp_int(p + 1, line - 1, &v) < 0 || v < -1 || v > (long long)RESP_MAX_BULK)
            return -1;
        if (v == -1)
            return (long)head;
        if (n < head + (size_t)v + 2)
            return 0;
        if (p[head + (size_t)v] != '\r' || p[head + (size_t)v + 1] != '\n')
            return -1;
        return (long)(head + (size_t)v + 2);
    case '*': {
        if (resp_int(p + 1, line - 1, &v) < 0 || v < -1 || v > RESP_MAX_ARRAY ||
            (v > 0 && depth >= RESP_MAX_DEPTH))
            return -1;
        size_t off = head;
        for (long long i = 0; i < v; i++) {
            long r = resp_reply(p + off, n - off, depth + 1);
            if (r <= 0)
                return r;
            off += (size_t)r;
        }
        return (long)off;
    }
    default:
        return -1;
    }
}

/* How many whole replies p[0..n) holds (at most want); -1 if garbage. *used: their bytes. */
static int resp_count(const char *p, size_t n, int want, size_t *used)
{
    int got = 0;
    size_t off = 0;
    while (got < want) {
        long r = resp_reply(p + off, n - off, 0);
        if (r < 0)
            return -1;
        if (r == 0)
            break;
        off += (size_t)r;
        got++;
    }
    *used = off;
    return got;
}

/* ---------------------------------------------------------------- the app's answers */

static void gb_emit(srv_t *s, sconn_t *c, int code, const char *reason, const char *ctype,
                    const char *body, size_t len, int mode, int head_only, const char *location)
{
    char head[1024];
    size_t n = compose_head(s, head, sizeof head, code, reason, ctype, len, mode, 0, location);
    out_append(c, head, n);
    if (!head_only)
        out_append(c, body, len);
    if (mode == CLOSE)
        c->closing = 1;
}

static void gb_unavailable(srv_t *s, sconn_t *c)
{
    gb_emit(s, c, 503, s->gb_r503, s->error_type, s->gb_unavailable, strlen(s->gb_unavailable),
            c->call_mode, c->call_head_only, NULL);
}

static void gb_bad(srv_t *s, sconn_t *c, int mode, const char *reason, size_t len)
{
    buf_t b = {0};
    buf_puts(&b, s->gb_bad_prefix);
    buf_put(&b, reason, len);
    buf_putc(&b, '\n');
    if (b.fail)
        emit_error(s, c, ERR_400, CLOSE, 0);
    else
        gb_emit(s, c, 400, s->errs[ERR_400].reason, s->error_type, b.d, b.n, mode, 0, NULL);
    free(b.d);
}

/* The answer from the call's replies r[0..n) (whole, counted): the page, or 303; 503 if
 * Redis refused a command or answered what the app cannot use. */
static void gb_answer(srv_t *s, sconn_t *c, const char *r, size_t n)
{
    const char *at[8];
    size_t len[8];
    int count = c->call_replies, ok = count <= 8;
    size_t off = 0;
    for (int i = 0; ok && i < count; i++) {
        long k = resp_reply(r + off, n - off, 0);
        ok = k > 0 && r[off] != '-';
        at[i] = r + off;
        len[i] = ok ? (size_t)k : 0;
        off += len[i];
    }
    if (!ok) {
        gb_unavailable(s, c);
        return;
    }
    if (c->call_kind == GB_POST) {
        gb_emit(s, c, 303, s->gb_r303, s->error_type, s->gb_see_other, strlen(s->gb_see_other),
                c->call_mode, 0, s->gb_path);
        return;
    }
    const char *visits = at[count - 2], *list = at[count - 1];
    long long nvisits, nentries;
    if (visits[0] != ':' || list[0] != '*' ||
        resp_int(visits + 1, len[count - 2] - 3, &nvisits) < 0 ||
        resp_int(list + 1, (size_t)((const char *)memchr(list, '\r', len[count - 1]) - list) - 1,
                 &nentries) < 0 || nentries < 0) {
        gb_unavailable(s, c);
        return;
    }
    const char *items[RESP_MAX_ARRAY];
    size_t ilen[RESP_MAX_ARRAY];
    const char *p = (const char *)memchr(list, '\r', len[count - 1]) + 2;
    for (long long i = 0; i < nentries; i++) {
        long k = resp_reply(p, (size_t)(list + len[count - 1] - p), 1);
        items[i] = p;
        ilen[i] = (size_t)k;
        p += k;
    }
    buf_t page = {.d = s->scratch, .cap = s->scratch_cap};
    buf_put(&page, s->gb_head_a, strlen(s->gb_head_a));
    char num[32];
    snprintf(num, sizeof num, "%lld", nvisits);
    buf_puts(&page, num);
    buf_puts(&page, s->gb_head_b);
    for (long long i = nentries - 1; i >= 0; i--) {   /* newest first */
        const char *it = items[i];
        const char *cr = memchr(it, '\r', ilen[i]);
        size_t hl = (size_t)(cr - it);
        if (it[0] == '$' && !(hl == 3 && it[1] == '-')) {
            put_entry(s, &page, cr + 2, ilen[i] - hl - 4);
        } else if (it[0] == '+') {
            put_entry(s, &page, it + 1, hl - 1);    /* a status is bytes too */
        } else {
            /* not a string: "?" and str() of what hiredis gives (None, an int, a text) */
            buf_t shown = {0};
            if (it[0] == '$' || (it[0] == '*' && hl == 3 && it[1] == '-'))
                buf_puts(&shown, "None");
            else if (it[0] == '*')
                buf_put(&shown, it, ilen[i]);
            else
                put_utf8_replace(&shown, it + 1, hl - 1);
            buf_puts(&page, s->gb_entry_a);
            buf_putc(&page, '?');
            buf_puts(&page, s->gb_entry_b);
            put_html(&page, shown.d ? shown.d : "", shown.n);
            buf_puts(&page, s->gb_entry_c);
            page.fail |= shown.fail;
            free(shown.d);
        }
    }
    buf_puts(&page, s->gb_tail);
    s->scratch = page.d;
    s->scratch_cap = page.cap;
    if (page.fail) {
        gb_unavailable(s, c);
        return;
    }
    gb_emit(s, c, 200, s->ok_reason, s->gb_page_type, page.d, page.n, c->call_mode,
            c->call_head_only, NULL);
}

/* ---------------------------------------------------------------- the form */

/* unquote_plus(): '+' is a space, %XX a byte (anything else after '%' stays). */
static size_t form_unquote(const char *src, size_t n, char *dst)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (src[i] == '+') {
            dst[o++] = ' ';
        } else if (src[i] == '%' && i + 2 < n && isxdigit((unsigned char)src[i + 1]) &&
                   isxdigit((unsigned char)src[i + 2])) {
            char hx[3] = {src[i + 1], src[i + 2], 0};
            dst[o++] = (char)strtol(hx, NULL, 16);
            i += 2;
        } else {
            dst[o++] = src[i];
        }
    }
    return o;
}

/* s[0..*n) stripped of Python's whitespace at both ends; returns the new start. */
static const char *py_strip(const char *s, size_t *n)
{
    uint32_t cp;
    size_t b = 0, e = *n, last = 0;
    int seen = 0;
    while (b < e) {
        int k = utf8_char((const unsigned char *)s + b, e - b, &cp);
        if (!py_space(cp))
            break;
        b += (size_t)k;
    }
    for (size_t i = b; i < e;) {
        int k = utf8_char((const unsigned char *)s + i, e - i, &cp);
        i += (size_t)k;
        if (!py_space(cp)) {
            last = i;
            seen = 1;
        }
    }
    *n = seen ? last - b : 0;
    return s + b;
}

/* JSON string body as json.dumps(ensure_ascii=False) writes it */
static void put_json_text(buf_t *b, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        char esc[8];
        switch (ch) {
        case '"': buf_puts(b, "\\\""); break;
        case '\\': buf_puts(b, "\\\\"); break;
        case '\n': buf_puts(b, "\\n"); break;
        case '\r': buf_puts(b, "\\r"); break;
        case '\t': buf_puts(b, "\\t"); break;
        case '\b': buf_puts(b, "\\b"); break;
        case '\f': buf_puts(b, "\\f"); break;
        default:
            if (ch < 0x20) {
                snprintf(esc, sizeof esc, "\\u%04x", ch);
                buf_puts(b, esc);
            } else {
                buf_putc(b, (char)ch);
            }
        }
    }
}

/*
 * The core's post_call: the urlencoded form checked as parse_qsl(strict) and the app
 * check it, in the same order. Returns 0 with the commands in cmd, or 1 with the
 * reason of the 400 in why.
 */
static int gb_form(srv_t *s, int form_ok, const char *body, size_t n, buf_t *cmd, buf_t *why)
{
    char num[64];
    if (!form_ok) {
        buf_puts(why, "the form must be sent as ");
        buf_puts(why, s->gb_form_type);
        return 1;
    }
    if (!utf8_valid(body, n)) {
        buf_puts(why, "the form is not UTF-8");
        return 1;
    }
    const char *key[FORM_MAX_FIELDS], *val[FORM_MAX_FIELDS];
    size_t klen[FORM_MAX_FIELDS], vlen[FORM_MAX_FIELDS];
    int nf = 0;
    char *dec = malloc(n + 1);
    if (!dec) {
        buf_puts(why, "the form is not valid urlencoded UTF-8");
        return 1;
    }
    size_t used = 0;
    int bad = 0;
    if (n) {
        size_t amps = 0;
        for (size_t i = 0; i < n; i++)
            amps += body[i] == '&';
        bad = amps + 1 > FORM_MAX_FIELDS;
        for (size_t i = 0; !bad && i <= n; nf++) {
            const char *f = body + i, *amp = memchr(f, '&', n - i);
            size_t fl = amp ? (size_t)(amp - f) : n - i;
            const char *eq = memchr(f, '=', fl);
            if (!eq) {
                bad = 1;                /* empty, or no '=': strict parsing refuses */
                break;
            }
            key[nf] = dec + used;
            klen[nf] = form_unquote(f, (size_t)(eq - f), dec + used);
            used += klen[nf];
            val[nf] = dec + used;
            vlen[nf] = form_unquote(eq + 1, fl - (size_t)(eq - f) - 1, dec + used);
            used += vlen[nf];
            bad = !utf8_valid(key[nf], klen[nf]) || !utf8_valid(val[nf], vlen[nf]);
            i += fl + 1;
        }
    }
    if (bad) {
        free(dec);
        buf_puts(why, "the form is not valid urlencoded UTF-8");
        return 1;
    }
    const char *name = NULL, *msg = NULL;
    size_t name_len = 0, msg_len = 0;
    for (int i = 0; i < nf; i++) {
        int is_name = klen[i] == 4 && memcmp(key[i], "name", 4) == 0;
        int is_msg = klen[i] == 7 && memcmp(key[i], "message", 7) == 0;
        if (!is_name && !is_msg) {
            buf_puts(why, "unknown field ");
            put_py_repr(why, key[i], klen[i]);
            free(dec);
            return 1;
        }
        if ((is_name && name) || (is_msg && msg)) {
            buf_puts(why, is_name ? "name given twice" : "message given twice");
            free(dec);
            return 1;
        }
        if (is_name) {
            name = val[i];
            name_len = vlen[i];
        } else {
            msg = val[i];
            msg_len = vlen[i];
        }
    }
    name = name ? py_strip(name, &name_len) : "";
    msg = msg ? py_strip(msg, &msg_len) : "";
    const char *labels[2] = {"name", "message"}, *texts[2] = {name, msg};
    size_t lens[2] = {name_len, msg_len};
    long caps[2] = {s->gb_max_name, s->gb_max_message};
    for (int f = 0; f < 2; f++) {
        size_t chars = 0;
        int control = 0;
        uint32_t cp;
        for (size_t i = 0; i < lens[f]; chars++) {
            i += (size_t)utf8_char((const unsigned char *)texts[f] + i, lens[f] - i, &cp);
            control |= (cp < 0x20 && cp != '\t' && cp != '\r' && cp != '\n') || cp == 0x7F;
        }
        if (!chars)
            snprintf(num, sizeof num, "%s is missing", labels[f]);
        else if (chars > (size_t)caps[f])
            snprintf(num, sizeof num, "%s is over %ld characters", labels[f], caps[f]);
        else if (control)
            snprintf(num, sizeof num, "%s holds control characters", labels[f]);
        else
            continue;
        buf_puts(why, num);
        free(dec);
        return 1;
    }
    if (memchr(name, '\n', name_len) || memchr(name, '\r', name_len)) {
        buf_puts(why, "name is one line");
        free(dec);
        return 1;
    }
    buf_t entry = {0};
    buf_puts(&entry, "{\"name\": \"");
    put_json_text(&entry, name, name_len);
    buf_puts(&entry, "\", \"message\": \"");
    put_json_text(&entry, msg, msg_len);
    buf_puts(&entry, "\"}");
    free(dec);
    const char *argv[4] = {"RPUSH", s->gb_key, entry.d ? entry.d : "", NULL};
    size_t alen[4] = {5, strlen(s->gb_key), entry.n, 0};
    resp_command(cmd, 3, argv, alen);
    snprintf(num, sizeof num, "%ld", -s->gb_kept);
    argv[0] = "LTRIM";
    argv[2] = num;
    argv[3] = "-1";
    alen[0] = 5;
    alen[2] = strlen(num);
    alen[3] = 2;
    resp_command(cmd, 4, argv, alen);
    cmd->fail |= entry.fail;
    free(entry.d);
    return 0;
}

/* ---------------------------------------------------------------- Redis connections */

static void q_push(srv_t *s, sconn_t *c)
{
    c->queued = 1;
    c->q_next = -1;
    c->q_prev = s->q_tail;
    if (s->q_tail >= 0)
        s->conns[s->q_tail].q_next = c->fd;
    else
        s->q_head = c->fd;
    s->q_tail = c->fd;
}

static void q_unlink(srv_t *s, sconn_t *c)
{
    if (!c->queued)
        return;
    if (c->q_prev >= 0)
        s->conns[c->q_prev].q_next = c->q_next;
    else
        s->q_head = c->q_next;
    if (c->q_next >= 0)
        s->conns[c->q_next].q_prev = c->q_prev;
    else
        s->q_tail = c->q_prev;
    c->queued = 0;
    c->q_prev = c->q_next = -1;
}

static void drive(srv_t *s, sconn_t *c, uint64_t now);

/* The request just read needs Redis: its call waits for a connection (FIFO). */
static void gb_call(srv_t *s, sconn_t *c, int kind, char *cmd, size_t len, int replies)
{
    c->awaiting = 1;
    c->call_kind = kind;
    c->call_cmd = cmd;
    c->call_cmd_len = len;
    c->call_replies = replies;
    c->call_mode = c->pend_mode;
    c->call_head_only = c->pend_head_only;
    q_push(s, c);
}

/* A guestbook request is complete (respond_pending): answer it, or queue its call. */
static void gb_respond(srv_t *s, sconn_t *c)
{
    int kind = c->gb_req;
    c->gb_req = GB_NONE;
    if (kind == GB_PAGE) {
        gb_call(s, c, GB_PAGE, s->gb_page_cmd, s->gb_page_cmd_len, s->gb_page_replies);
        return;
    }
    buf_t cmd = {0}, why = {0};
    int refused = gb_form(s, c->form_ok, c->body ? c->body : "", c->body_len, &cmd, &why);
    c->body_len = 0;
    if (c->body_cap > 65536) {
        free(c->body);          /* a big body is not kept for the next request */
        c->body = NULL;
        c->body_cap = 0;
    }
    if (refused || cmd.fail || why.fail) {
        gb_bad(s, c, c->pend_mode, why.d ? why.d : "", why.fail ? 0 : why.n);
        free(cmd.d);
    } else {
        gb_call(s, c, GB_POST, cmd.d, cmd.n, 2);
    }
    free(why.d);
}

static void call_clear(srv_t *s, sconn_t *c)
{
    if (c->call_cmd && c->call_cmd != s->gb_page_cmd)
        free(c->call_cmd);
    c->call_cmd = NULL;
    c->awaiting = 0;
    c->rc = NULL;
}

/* The call of client fd is over: replies r[0..n), or NULL if Redis failed. */
static void call_done(srv_t *s, int fd, const char *r, size_t n, uint64_t now)
{
    if (fd < 0 || fd >= s->nconns_cap || !s->conns[fd].used || !s->conns[fd].awaiting)
        return;                 /* the client went away: the reply is dropped */
    sconn_t *c = &s->conns[fd];
    if (r)
        gb_answer(s, c, r, n);
    else
        gb_unavailable(s, c);
    call_clear(s, c);
    c->last_ns = now;           /* the idle clock starts again when the call is answered */
    if (c->stop_after)
        c->closing = 1;
    drive(s, c, now);
}

static void rc_ep(srv_t *s, rconn_t *r, int out)
{
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN | (out ? EPOLLOUT : 0);
    ev.data.fd = r->fd;
    epoll_ctl(s->epfd, EPOLL_CTL_MOD, r->fd, &ev);
    r->epout = (uint8_t)out;
}

static void rc_idle_remove(srv_t *s, rconn_t *r)
{
    if (r->idle_ix < 0)
        return;
    rconn_t *last = s->idle[--s->idle_n];
    s->idle[r->idle_ix] = last;
    last->idle_ix = r->idle_ix;
    r->idle_ix = -1;
}

static void rc_drop_fd(srv_t *s, rconn_t *r)
{
    if (r->fd < 0)
        return;
    epoll_ctl(s->epfd, EPOLL_CTL_DEL, r->fd, NULL);
    if (r->fd < s->rtab_cap)
        s->rtab[r->fd] = NULL;
    close(r->fd);
    r->fd = -1;
}

/* Close a connection; the call on it, if any, fails (503) unless reported is set. */
static void rc_close(srv_t *s, rconn_t *r, uint64_t now, int fail_call)
{
    int client = r->busy ? r->client : -1;
    rc_idle_remove(s, r);
    rc_drop_fd(s, r);
    if (r->state == RC_RETRY)
        s->n_retrying--;
    rconn_t *last = s->all[--s->all_n];
    s->all[r->all_ix] = last;
    last->all_ix = r->all_ix;
    free(r->in);
    free(r->out);
    free(r);
    if (client >= 0 && client < s->nconns_cap && s->conns[client].used)
        s->conns[client].rc = NULL;
    if (fail_call)
        call_done(s, client, NULL, 0, now);
}

static int rtab_set(srv_t *s, int fd, rconn_t *r)
{
    if (fd >= s->rtab_cap) {
        int cap = s->rtab_cap ? s->rtab_cap : 1024;
        while (cap <= fd)
            cap *= 2;
        rconn_t **nt = realloc(s->rtab, (size_t)cap * sizeof *nt);
        if (!nt)
            return -1;
        memset(nt + s->rtab_cap, 0, (size_t)(cap - s->rtab_cap) * sizeof *nt);
        s->rtab = nt;
        s->rtab_cap = cap;
    }
    s->rtab[fd] = r;
    return 0;
}

/* Start (or try again) the connect of r: 0 under way or done, -1 failed. */
static int rc_connect(srv_t *s, rconn_t *r, uint64_t now)
{
    int fd = socket(s->raddr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (s->raddr.ss_family != AF_UNIX) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    }
    int rc = connect(fd, (struct sockaddr *)&s->raddr, s->raddr_len);
    if (rc < 0 && errno == EAGAIN && s->raddr.ss_family == AF_UNIX) {
        close(fd);              /* the accept backlog is full: try again in a moment */
        if (r->state != RC_RETRY)
            s->n_retrying++;
        r->state = RC_RETRY;
        r->next_try = now + s->retry_ns;
        return now + s->retry_ns < r->deadline ? 0 : -1;
    }
    if (rc < 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN | EPOLLOUT;
    ev.data.fd = fd;
    if (rtab_set(s, fd, r) < 0 || epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
        if (fd < s->rtab_cap)
            s->rtab[fd] = NULL;
        close(fd);
        return -1;
    }
    if (r->state == RC_RETRY)
        s->n_retrying--;
    r->fd = fd;
    r->epout = 1;
    r->state = rc == 0 ? RC_READY : RC_CONNECTING;
    return 0;
}

/* Write the call's commands; -1 if the connection failed (closed, call failed). */
static int rc_flush(srv_t *s, rconn_t *r, uint64_t now)
{
    while (r->out_off < r->out_len) {
        ssize_t n = send(r->fd, r->out + r->out_off, r->out_len - r->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            r->out_off += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        rc_close(s, r, now, 1);
        return -1;
    }
    int want_out = r->out_off < r->out_len;
    if (want_out != r->epout)
        rc_ep(s, r, want_out);
    return 0;
}

/* A connected connection takes a call: the reply deadline runs from here. */
static void rc_start(srv_t *s, rconn_t *r, uint64_t now)
{
    r->deadline = now + s->reply_ns;
    rc_flush(s, r, now);
}

/* Hand the call of client c to r (just opened, or idle). */
static int rc_assign(rconn_t *r, sconn_t *c)
{
    if (c->call_cmd_len > r->out_cap) {
        char *nb = realloc(r->out, c->call_cmd_len);
        if (!nb)
            return -1;
        r->out = nb;
        r->out_cap = c->call_cmd_len;
    }
    memcpy(r->out, c->call_cmd, c->call_cmd_len);
    r->out_len = c->call_cmd_len;
    r->out_off = 0;
    r->in_len = 0;
    r->want = c->call_replies;
    r->client = c->fd;
    r->busy = 1;
    c->rc = r;
    return 0;
}

/* A new connection of the pool (counted in all), or NULL. */
static rconn_t *rc_open(srv_t *s, uint64_t now)
{
    rconn_t *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->fd = -1;
    r->client = -1;
    r->idle_ix = -1;
    r->state = RC_CONNECTING;
    r->deadline = now + s->connect_ns;
    if (rc_connect(s, r, now) < 0) {
        if (r->state == RC_RETRY)
            s->n_retrying--;
        free(r);
        return NULL;
    }
    if (s->all_n == s->all_cap) {
        int cap = s->all_cap ? s->all_cap * 2 : 64;
        rconn_t **na = realloc(s->all, (size_t)cap * sizeof *na);
        if (na)
            s->all = na;
        rconn_t **ni = na ? realloc(s->idle, (size_t)cap * sizeof *ni) : NULL;
        if (ni)
            s->idle = ni;
        if (!ni) {
            rc_drop_fd(s, r);
            if (r->state == RC_RETRY)
                s->n_retrying--;
            free(r);
            return NULL;
        }
        s->all_cap = cap;
    }
    r->all_ix = s->all_n;
    s->all[s->all_n++] = r;
    return r;
}

/* An idle connection still open (Redis may have closed it since), or NULL. */
static rconn_t *rc_take_idle(srv_t *s, uint64_t now)
{
    while (s->idle_n > 0) {
        rconn_t *r = s->idle[s->idle_n - 1];
        char b;
        ssize_t n = recv(r->fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            rc_idle_remove(s, r);
            return r;
        }
        rc_close(s, r, now, 0);   /* closed, failed or sending unasked bytes */
    }
    return NULL;
}

/* Give waiting calls connections: idle ones first, then new ones up to the pool size. */
static void dispatch(srv_t *s, uint64_t now)
{
    while (s->q_head >= 0) {
        rconn_t *r = rc_take_idle(s, now);
        int fresh = 0;
        if (!r) {
            if (s->all_n >= s->pool_max)
                return;         /* the pool is full: the rest wait for a free one */
            r = rc_open(s, now);
            fresh = 1;
        }
        sconn_t *c = &s->conns[s->q_head];
        q_unlink(s, c);
        if (!r || rc_assign(r, c) < 0) {
            if (r)
                rc_close(s, r, now, 0);
            call_done(s, c->fd, NULL, 0, now);
            continue;
        }
        if (!fresh || r->state == RC_READY)
            rc_start(s, r, now);
    }
}

/* The call on r is answered (r->in holds exactly its replies): r is idle again. */
static void rc_complete(srv_t *s, rconn_t *r, uint64_t now)
{
    int client = r->client;
    r->busy = 0;
    r->client = -1;
    r->idle_ix = s->idle_n;
    s->idle[s->idle_n++] = r;
    if (client >= 0 && client < s->nconns_cap && s->conns[client].used)
        s->conns[client].rc = NULL;
    call_done(s, client, r->in, r->in_len, now);
    r->in_len = 0;
    if (r->in_cap > 65536) {
        free(r->in);
        r->in = NULL;
        r->in_cap = 0;
    }
}

static void rc_event(srv_t *s, rconn_t *r, uint32_t ev, uint64_t now)
{
    if (r->state == RC_CONNECTING) {
        int err = 0;
        socklen_t el = sizeof err;
        if (getsockopt(r->fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0 || err) {
            rc_close(s, r, now, 1);
            return;
        }
        if (!(ev & (EPOLLOUT | EPOLLIN | EPOLLHUP | EPOLLERR)))
            return;
        r->state = RC_READY;
        rc_start(s, r, now);
        return;
    }
    if ((ev & EPOLLOUT) && rc_flush(s, r, now) < 0)
        return;
    if (!(ev & (EPOLLIN | EPOLLHUP | EPOLLERR)))
        return;
    if (!r->busy) {
        rc_close(s, r, now, 0);  /* an idle connection closed, or sent unasked bytes */
        return;
    }
    for (;;) {
        if (r->in_cap - r->in_len < 16384) {
            size_t cap = r->in_cap ? r->in_cap * 2 : 16384;
            char *nb = cap <= RESP_MAX_INPUT ? realloc(r->in, cap) : NULL;
            if (!nb) {
                rc_close(s, r, now, 1);
                return;
            }
            r->in = nb;
            r->in_cap = cap;
        }
        size_t room = r->in_cap - r->in_len;
        ssize_t n = recv(r->fd, r->in + r->in_len, room, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (n <= 0) {
            rc_close(s, r, now, 1);  /* Redis went away mid-call */
            return;
        }
        r->in_len += (size_t)n;
        if ((size_t)n < room)
            break;
    }
    size_t used;
    int got = resp_count(r->in, r->in_len, r->want, &used);
    if (got < 0 || (got == r->want && used != r->in_len)) {
        rc_close(s, r, now, 1);      /* garbage, or bytes nobody asked for */
        return;
    }
    if (got == r->want) {
        r->out_off = r->out_len = 0;
        if (r->epout)
            rc_ep(s, r, 0);
        rc_complete(s, r, now);
    }
}

/* Deadlines and connect retries of the pool. */
static void rc_timers(srv_t *s, uint64_t now)
{
    for (int i = 0; i < s->all_n; i++) {
        rconn_t *r = s->all[i];
        if (r->state == RC_RETRY && now >= r->next_try) {
            if (rc_connect(s, r, now) < 0) {
                rc_close(s, r, now, 1);
                i = -1;         /* the table changed: scan again */
                continue;
            }
            if (r->state == RC_READY) {
                rc_start(s, r, now);
                i = -1;
            }
        } else if ((r->busy || r->state != RC_READY) && now >= r->deadline) {
            rc_close(s, r, now, 1);
            i = -1;
        }
    }
}

static int ml_is_post(const char *h) { return memcmp(h, "POST ", 5) == 0; }

static void respond_pending(srv_t *s, sconn_t *c)
{
    c->pend = 0;
    if (c->gb_req != GB_NONE)
        gb_respond(s, c);
    else if (c->pend_code == 200)
        emit_page(s, c, c->pend_mode, c->pend_head_only);
    else
        emit_error(s, c, c->pend_code == 404 ? ERR_404 : ERR_405, c->pend_mode,
                   c->pend_head_only);
}

static size_t pending_out(sconn_t *c) { return c->out_len - c->out_off; }

/* Handle the requests in d[0..n); returns how many bytes were consumed. */
static size_t process_http(srv_t *s, sconn_t *c, const char *d, size_t n, uint64_t now)
{
    size_t off = 0;
    while (!c->closing && !c->awaiting && pending_out(c) <= s->hwm) {
        if (c->chunk_state != CH_NONE) {
            size_t used = 0;
            int rc = consume_chunked(c, d + off, n - off, s->max_body, &used);

            off += used;
            if (rc == 0)
                break;
            if (rc < 0) {
                emit_error(s, c, rc == -2 ? ERR_413 : ERR_400, CLOSE, 0);
                off = n;
                break;
            }
            respond_pending(s, c);
            continue;
        }
        if (c->body_left > 0) {
            size_t take = (size_t)c->body_left < n - off ? (size_t)c->body_left : n - off;
            if (c->gb_req == GB_POST && keep_body(c, d + off, take) < 0) {
                emit_error(s, c, ERR_413, CLOSE, 0);
                off = n;
                break;
            }
            c->body_left -= (int64_t)take;
            off += take;
            if (c->body_left > 0)
                break;
            respond_pending(s, c);
            continue;
        }
        if (off >= n)
            break;
        /* The header deadline runs from the first byte of a request, blank lines before
         * it included (they never extend a connection's life), to the end of its head. */
        if (!c->head_start)
            c->head_start = now;
        /* llhttp skips any CR and LF before a request line; they count towards the head */
        size_t lead = off;
        while (off < n && (d[off] == '\r' || d[off] == '\n'))
            off++;
        c->head_skipped += off - lead;
        if (c->head_skipped > s->max_header) {
            emit_error(s, c, ERR_431, CLOSE, 0);
            off = n;
            break;
        }
        if (off >= n)
            break;
        const char *h = d + off;
        size_t avail = n - off;
        int bad;
        size_t bad_at = 0;
        size_t hl = head_end(h, avail, &bad, &bad_at);
        /* WIRE.md: only the head's first max_header bytes (blank lines before it counted)
         * are judged; a fault among them wins, else the byte past them is the fault, 431 */
        size_t room = s->max_header - c->head_skipped;
        int over = (hl ? hl : avail) > room;
        size_t judged = over ? room : avail;
        if (bad && bad_at >= judged)
            bad = 0;
        else if (bad)
            judged = bad_at;
        /* what comes before a bad line end is judged first, in byte order, as llhttp does */
        int early = hl && !over ? 0 : head_prefix_bad(s, h, judged);
        if (bad && !early)
            early = 1;
        if (!early && over)
            early = 3;
        if (early) {
            /* a bare LF, a stray CR, a head already malformed or too large: answered now */
            emit_error(s, c, early == 3 ? ERR_431 : ERR_400, CLOSE, 0);
            off = n;
            break;
        }
        if (!hl)
            break;
        c->head_start = 0;
        c->head_skipped = 0;
        req_t r;
        int pr = parse_request(s, h, hl, &r, s->max_body);
        if (pr == -3 && !head_prefix_bad(s, h, avail))
            break;              /* PRI: so far HTTP/2's preface, which llhttp waits out */
        if (pr == 0 && r.clen == -2)
            pr = -2;            /* body over the limit */
        else if (pr == 0 && (r.connect || (r.upgrade_hdr && r.conn_upgrade)))
            pr = 1;             /* llhttp switches protocols: answered, nothing more is read */
        else if (pr == 0 && r.te_bad && r.ver != 10)
            pr = -1;            /* a body that cannot be delimited (HTTP/1.0: see below) */
        if (pr < 0) {
            emit_error(s, c, pr == -2 ? ERR_413 : ERR_400, CLOSE, 0);
            off = n;
            break;
        }
        off += hl;
        /* llhttp: HTTP/1.1 keeps unless "close"; any other version only with "keep-alive" */
        int keep = r.ver == 11 ? !r.conn_close : r.conn_keep;
        int mode = !keep ? CLOSE : (r.ver == 10 ? KEEP_10 : KEEP);
        c->pend = 1;
        c->pend_mode = mode;
        c->pend_head_only = (uint8_t)r.head;
        c->body_len = 0;
        c->form_ok = (uint8_t)r.form_ok;
        c->gb_req = !r.gb ? GB_NONE : (r.get || r.head) ? GB_PAGE
                    : (ml_is_post(h) ? GB_POST : GB_NONE);
        if (r.get || r.head) {
            c->pend_code = r.root ? 200 : 404;
        } else {
            c->pend_code = 405;
            c->pend_head_only = 0;
        }
        if (pr == 1) {
            respond_pending(s, c);
            c->closing = 1;
            off = n;
            break;
        }
        if (r.ver == 10 && r.te) {
            /* RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 is faulty framing; what follows
             * the head cannot be trusted: answer now, then close (as the core does). */
            c->pend_mode = CLOSE;
            respond_pending(s, c);
            continue;
        }
        c->body_left = r.clen > 0 ? r.clen : 0;
        if (r.chunked) {
            c->chunk_state = CH_SIZE;
            c->chunk_left = 0;
            c->chunk_total = 0;
        } else if (c->body_left == 0) {
            respond_pending(s, c);
        }
    }
    if (c->closing)
        return n;               /* the rest is never read */
    return off;
}

/* ---------------------------------------------------------------- connections */

static void ep_mod(srv_t *s, sconn_t *c, int in, int out)
{
    if (c->epin == in && c->epout == out)
        return;
    struct epoll_event ev;
    ev.events = (in ? EPOLLIN : 0) | (out ? EPOLLOUT : 0);
    ev.data.fd = c->fd;
    epoll_ctl(s->epfd, EPOLL_CTL_MOD, c->fd, &ev);
    c->epin = (uint8_t)in;
    c->epout = (uint8_t)out;
}

static void accept_resume(srv_t *s)
{
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = s->lfd};
    s->accept_resume = 0;
    if (s->lfd >= 0)
        epoll_ctl(s->epfd, EPOLL_CTL_ADD, s->lfd, &ev);
}

static void conn_free(srv_t *s, sconn_t *c)
{
    if (!c->used)
        return;
    epoll_ctl(s->epfd, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    q_unlink(s, c);
    if (c->rc)
        c->rc->client = -1;     /* its call goes on; the reply will be dropped */
    call_clear(s, c);
    free(c->body);
    free(c->in);
    free(c->out);
    memset(c, 0, sizeof *c);
    c->fd = -1;
    s->live--;
    if (s->accept_resume)
        accept_resume(s);       /* a descriptor is free: accept again without waiting */
}

/* All output is out and the connection must end: close, lingering unless the peer has
 * finished sending (as the core's drivers: input that comes after a close would reset the
 * connection and could destroy the answer, whether or not any is waiting now). */
static void finish_close(srv_t *s, sconn_t *c, uint64_t now)
{
    if (c->eof || shutdown(c->fd, SHUT_WR) < 0) {
        conn_free(s, c);
        return;
    }
    c->lingering = 1;
    c->lingered = 0;
    c->linger_until = now + LINGER_NS;
    ep_mod(s, c, 1, 0);
}

/* Write what is pending; returns -1 if the connection was freed. */
static int flush(srv_t *s, sconn_t *c, uint64_t now)
{
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n > 0) {
            c->out_off += (size_t)n;
            c->last_ns = now;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        conn_free(s, c);
        return -1;
    }
    if (c->out_off == c->out_len) {
        c->out_off = c->out_len = 0;
        if (c->out_cap > 65536) {
            free(c->out);
            c->out = NULL;
            c->out_cap = 0;
        }
        if (c->closing) {
            finish_close(s, c, now);
            return -1;
        }
    }
    return 0;
}

/* Pick the epoll interest after a change. */
static void rearm(srv_t *s, sconn_t *c)
{
    int want_out = c->out_len > c->out_off;
    int want_in = !c->closing && !c->eof && !c->awaiting && pending_out(c) <= s->hwm;
    ep_mod(s, c, want_in, want_out);
}

static void keep_input(sconn_t *c, const char *d, size_t n, size_t consumed);

/*
 * Send what is pending and answer the requests kept in c->in, in turns, until the
 * output passes the high-water mark (parsing pauses there, between two requests, and
 * the unparsed rest stays in c->in: what a connection holds is the mark plus one
 * response, whatever one read contained), the input holds no complete request, or
 * the connection ends. After end-of-file, the connection closes once every complete
 * request kept has been answered. Then pick the epoll interest.
 */
static void drive(srv_t *s, sconn_t *c, uint64_t now)
{
    for (;;) {
        if (flush(s, c, now) < 0)
            return;
        if (!s->http || c->closing || c->awaiting || c->in_len == 0 || pending_out(c) > s->hwm)
            break;
        size_t used = process_http(s, c, c->in, c->in_len, now);
        keep_input(c, c->in, c->in_len, used);
        if (used == 0)
            break;              /* only part of a request: wait for more */
    }
    if (c->eof && !c->closing && !c->awaiting && pending_out(c) <= s->hwm) {
        c->closing = 1;
        if (flush(s, c, now) < 0)
            return;
    }
    rearm(s, c);
}

static void keep_input(sconn_t *c, const char *d, size_t n, size_t consumed)
{
    size_t rest = n - consumed;
    if (d == c->in) {
        if (consumed)
            memmove(c->in, c->in + consumed, rest);
        c->in_len = rest;
        return;
    }
    c->in_len = 0;
    if (rest == 0)
        return;
    if (c->in_cap < rest) {
        char *nb = realloc(c->in, rest);
        if (!nb)
            return;
        c->in = nb;
        c->in_cap = rest;
    }
    memcpy(c->in, d + consumed, rest);
    c->in_len = rest;
}

static void on_readable(srv_t *s, sconn_t *c, uint64_t now)
{
    if (c->lingering) {
        ssize_t n = recv(c->fd, s->rbuf, s->read_size, 0);
        if (n > 0)
            c->lingered += (size_t)n;
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR) ||
            c->lingered > LINGER_BYTES)
            conn_free(s, c);
        return;
    }
    char *dst;
    size_t room;
    int into_own;
    if (!s->http) {
        into_own = c->out_len > c->out_off;
        if (into_own) {
            if (out_reserve(c, s->read_size) < 0) {
                conn_free(s, c);
                return;
            }
            dst = c->out + c->out_len;
        } else {
            dst = s->rbuf;
        }
    } else {
        into_own = c->in_len > 0;
        if (into_own && c->in_cap < c->in_len + s->read_size) {
            char *nb = realloc(c->in, c->in_len + s->read_size);
            if (!nb) {
                conn_free(s, c);
                return;
            }
            c->in = nb;
            c->in_cap = c->in_len + s->read_size;
        }
        dst = into_own ? c->in + c->in_len : s->rbuf;
    }
    room = s->read_size;
    ssize_t n = recv(c->fd, dst, room, 0);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return;
        conn_free(s, c);
        return;
    }
    if (n == 0) {               /* peer done sending: answer what is complete, then close */
        c->eof = 1;
        drive(s, c, now);
        return;
    }
    c->last_ns = now;
    if (!s->http) {
        if (into_own) {
            c->out_len += (size_t)n;
        } else {
            ssize_t w = send(c->fd, dst, (size_t)n, MSG_NOSIGNAL);
            if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                conn_free(s, c);
                return;
            }
            if (w < 0)
                w = 0;
            if (w < n && out_append(c, dst + w, (size_t)(n - w)) < 0) {
                conn_free(s, c);
                return;
            }
        }
    } else {
        const char *d = into_own ? c->in : s->rbuf;
        size_t len = into_own ? c->in_len + (size_t)n : (size_t)n;
        size_t used = process_http(s, c, d, len, now);
        keep_input(c, d, len, used);
    }
    drive(s, c, now);
}

static void on_writable(srv_t *s, sconn_t *c, uint64_t now)
{
    drive(s, c, now);
}

static int grow_table(srv_t *s, int fd)
{
    if (fd < s->nconns_cap)
        return 0;
    int cap = s->nconns_cap ? s->nconns_cap : 1024;
    while (cap <= fd)
        cap *= 2;
    sconn_t *nt = realloc(s->conns, (size_t)cap * sizeof *nt);
    if (!nt)
        return -1;
    for (int i = s->nconns_cap; i < cap; i++) {
        memset(&nt[i], 0, sizeof nt[i]);
        nt[i].fd = -1;
    }
    s->conns = nt;
    s->nconns_cap = cap;
    return 0;
}

static void on_accept(srv_t *s, uint64_t now)
{
    for (int i = 0; i < 64; i++) {
        int fd = accept4(s->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
                /* Out of descriptors: the open connections go on; accepting stops until
                 * one closes or the back-off ends, and the episode is logged once. */
                if (!s->accept_failing) {
                    fprintf(stderr, "accept: %s; accepting paused until descriptors free up "
                            "(open connections are still served)\n", strerror(errno));
                    fflush(stderr);
                    s->accept_failing = 1;
                }
                epoll_ctl(s->epfd, EPOLL_CTL_DEL, s->lfd, NULL);
                s->accept_resume = now + ACCEPT_BACKOFF_NS;
            } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
                /* the backlog is drained with descriptors to spare: an episode of
                 * shortage, if any, is over (closes freeing one descriptor at a time
                 * while clients wait do not make a log line each) */
                s->accept_failing = 0;
            }
            return;
        }
        if (grow_table(s, fd) < 0) {
            close(fd);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        sconn_t *c = &s->conns[fd];
        memset(c, 0, sizeof *c);
        c->fd = fd;
        c->used = 1;
        c->epin = 1;
        c->last_ns = now;
        struct epoll_event ev;
        ev.events = EPOLLIN;
        ev.data.fd = fd;
        if (epoll_ctl(s->epfd, EPOLL_CTL_ADD, fd, &ev) < 0) {
            close(fd);
            c->used = 0;
            c->fd = -1;
            continue;
        }
        s->live++;
    }
}

static void scan(srv_t *s, uint64_t now)
{
    for (int fd = 0; fd < s->nconns_cap; fd++) {
        sconn_t *c = &s->conns[fd];
        if (!c->used)
            continue;
        if (c->lingering) {
            if (now >= c->linger_until)
                conn_free(s, c);
        } else if (c->awaiting) {
            continue;           /* no idle clock while a call is pending: the call's bounds */
        } else if (now - c->last_ns >= s->idle_ns) {
            conn_free(s, c);
        } else if (c->head_start && now - c->head_start >= s->header_ns) {
            conn_free(s, c);
        }
    }
}

/* ---------------------------------------------------------------- the loop */

static void srv_free(srv_t *s)
{
    for (int fd = 0; fd < s->nconns_cap; fd++)
        if (s->conns[fd].used)
            conn_free(s, &s->conns[fd]);
    while (s->all_n > 0)
        rc_close(s, s->all[0], 0, 0);
    free(s->all);
    free(s->idle);
    free(s->rtab);
    free(s->scratch);
    char **gb_strs[] = {&s->gb_page_cmd, &s->gb_key, &s->gb_path, &s->gb_page_type,
                        &s->gb_form_type, &s->gb_r303, &s->gb_r503, &s->gb_head_a,
                        &s->gb_head_b, &s->gb_entry_a, &s->gb_entry_b, &s->gb_entry_c,
                        &s->gb_tail, &s->gb_see_other, &s->gb_unavailable, &s->gb_bad_prefix};
    for (size_t i = 0; i < sizeof gb_strs / sizeof gb_strs[0]; i++)
        free(*gb_strs[i]);
    free(s->conns);
    free(s->rbuf);
    if (s->epfd >= 0)
        close(s->epfd);
    if (s->lfd >= 0)
        close(s->lfd);
    free(s->server);
    free(s->page_type);
    free(s->error_type);
    free(s->allow);
    free(s->ok_reason);
    free(s->page_body);
    for (int i = 0; i < NERR; i++) {
        free(s->errs[i].reason);
        free(s->errs[i].body);
    }
}

/* Returns 0 on a clean stop, -1 with a Python exception set. */
static int serve_loop(srv_t *s, int stop_fd)
{
    struct epoll_event evs[MAX_EVENTS];
    int stopping = 0, failed = 0;
    uint64_t stop_deadline = 0;
    uint64_t now = mono_ns(), next_tick = now + TICK_NS;
    Py_BEGIN_ALLOW_THREADS
    for (;;) {
        now = mono_ns();
        if (now >= next_tick) {
            Py_BLOCK_THREADS
            if (PyErr_CheckSignals() < 0)
                failed = 1;
            Py_UNBLOCK_THREADS
            if (failed)
                break;
            scan(s, now);
            if (s->gb)
                rc_timers(s, now);
            if (s->accept_resume && now >= s->accept_resume && !stopping)
                accept_resume(s);
            next_tick = now + TICK_NS;
        }
        if (stopping && (s->live == 0 || now >= stop_deadline))
            break;
        if (s->n_retrying > 0) {
            rc_timers(s, now);  /* unix connects waiting for room in the backlog */
            dispatch(s, now);
        }
        int timeout_ms = (int)((next_tick - now + 999999) / 1000000);
        int retry_ms = (int)((s->retry_ns + 999999) / 1000000);
        if (s->n_retrying > 0 && timeout_ms > retry_ms)
            timeout_ms = retry_ms;
        int n = epoll_wait(s->epfd, evs, MAX_EVENTS, timeout_ms);
        if (n < 0 && errno != EINTR) {
            failed = 2;
            break;
        }
        now = mono_ns();
        refresh_date(s);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            uint32_t ev = evs[i].events;
            if (fd == stop_fd) {
                if (!stopping) {
                    stopping = 1;
                    stop_deadline = now + s->grace_ns;
                    epoll_ctl(s->epfd, EPOLL_CTL_DEL, stop_fd, NULL);
                    epoll_ctl(s->epfd, EPOLL_CTL_DEL, s->lfd, NULL);
                    close(s->lfd);
                    s->lfd = -1;
                    for (int f = 0; f < s->nconns_cap; f++) {
                        sconn_t *c = &s->conns[f];
                        if (!c->used)
                            continue;
                        if (c->awaiting) {
                            c->stop_after = 1;  /* the call finishes or fails, then close */
                        } else if (c->lingering || pending_out(c) == 0) {
                            conn_free(s, c);
                        } else {
                            c->closing = 1;
                            rearm(s, c);
                        }
                    }
                }
                continue;
            }
            if (fd == s->lfd) {
                if (!stopping)
                    on_accept(s, now);
                continue;
            }
            if (fd >= 0 && fd < s->rtab_cap && s->rtab[fd]) {
                rc_event(s, s->rtab[fd], ev, now);
                continue;
            }
            if (fd < 0 || fd >= s->nconns_cap || !s->conns[fd].used)
                continue;
            sconn_t *c = &s->conns[fd];
            if (c->awaiting && (ev & (EPOLLHUP | EPOLLERR))) {
                conn_free(s, c);        /* the client went away mid-call: drop the reply */
                continue;
            }
            if (ev & EPOLLOUT) {
                on_writable(s, c, now);
                if (!c->used)
                    continue;
            }
            if (ev & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                if (c->epin || (ev & (EPOLLHUP | EPOLLERR)))
                    on_readable(s, c, now);
            }
        }
        if (s->gb)
            dispatch(s, now);
    }
    Py_END_ALLOW_THREADS
    if (failed == 2)
        PyErr_SetFromErrno(PyExc_OSError);
    return failed ? -1 : 0;
}

static char *dup_str(PyObject *o, const char *what)
{
    if (!PyUnicode_Check(o)) {
        PyErr_Format(PyExc_TypeError, "%s must be str", what);
        return NULL;
    }
    const char *u = PyUnicode_AsUTF8(o);
    return u ? strdup(u) : NULL;
}

static char *dup_bytes(PyObject *o, size_t *len, const char *what)
{
    char *b;
    Py_ssize_t n;
    if (!PyBytes_Check(o) || PyBytes_AsStringAndSize(o, &b, &n) < 0) {
        PyErr_Format(PyExc_TypeError, "%s must be bytes", what);
        return NULL;
    }
    char *r = malloc((size_t)n + 1);
    if (!r)
        return (char *)PyErr_NoMemory();
    memcpy(r, b, (size_t)n);
    *len = (size_t)n;
    return r;
}

/* One text of the guestbook dict (str, or bytes for the commands), copied; -1 if wrong. */
static int gb_text(PyObject *d, const char *key, char **dst, size_t *len)
{
    PyObject *v = PyDict_GetItemString(d, key);
    size_t n = 0;
    if (v && PyBytes_Check(v))
        *dst = dup_bytes(v, &n, key);
    else if (v)
        *dst = dup_str(v, key);
    else
        PyErr_Format(PyExc_KeyError, "guestbook[%s] is missing", key);
    if (!v || !*dst)
        return -1;
    if (len)
        *len = PyBytes_Check(v) ? n : strlen(*dst);
    if (PyBytes_Check(v))
        (*dst)[n] = 0;
    return 0;
}

static int gb_number(PyObject *d, const char *key, double *out)
{
    PyObject *v = PyDict_GetItemString(d, key);
    if (!v) {
        PyErr_Format(PyExc_KeyError, "guestbook[%s] is missing", key);
        return -1;
    }
    *out = PyFloat_AsDouble(v);
    return *out == -1.0 && PyErr_Occurred() ? -1 : 0;
}

/* The guestbook's texts, limits and Redis address (a dict: see servers/c_epoll.py). */
static int gb_setup(srv_t *s, PyObject *d)
{
    struct {
        const char *key;
        char **dst;
        size_t *len;
    } texts[] = {
        {"page_call", &s->gb_page_cmd, &s->gb_page_cmd_len}, {"key", &s->gb_key, NULL},
        {"path", &s->gb_path, NULL}, {"page_type", &s->gb_page_type, NULL},
        {"form_type", &s->gb_form_type, NULL}, {"reason_303", &s->gb_r303, NULL},
        {"reason_503", &s->gb_r503, NULL}, {"head_a", &s->gb_head_a, NULL},
        {"head_b", &s->gb_head_b, NULL}, {"entry_a", &s->gb_entry_a, NULL},
        {"entry_b", &s->gb_entry_b, NULL}, {"entry_c", &s->gb_entry_c, NULL},
        {"tail", &s->gb_tail, NULL}, {"see_other_body", &s->gb_see_other, NULL},
        {"unavailable_body", &s->gb_unavailable, NULL},
        {"bad_request_prefix", &s->gb_bad_prefix, NULL},
    };
    for (size_t i = 0; i < sizeof texts / sizeof texts[0]; i++)
        if (gb_text(d, texts[i].key, texts[i].dst, texts[i].len) < 0)
            return -1;
    double replies, kept, max_name, max_message, reply_timeout, pool, port, connect, retry;
    char *host = NULL;
    if (gb_number(d, "page_replies", &replies) < 0 || gb_number(d, "kept", &kept) < 0 ||
        gb_number(d, "max_name", &max_name) < 0 || gb_number(d, "max_message", &max_message) < 0 ||
        gb_number(d, "reply_timeout", &reply_timeout) < 0 || gb_number(d, "pool", &pool) < 0 ||
        gb_number(d, "redis_port", &port) < 0 || gb_number(d, "connect_timeout", &connect) < 0 ||
        gb_number(d, "connect_retry", &retry) < 0 || gb_text(d, "redis_host", &host, NULL) < 0)
        return -1;
    if (replies < 2 || replies > 8 || pool < 1 || reply_timeout <= 0 || connect <= 0 ||
        retry <= 0) {
        free(host);
        PyErr_SetString(PyExc_ValueError, "invalid guestbook settings");
        return -1;
    }
    s->gb_page_replies = (int)replies;
    s->gb_kept = (long)kept;
    s->gb_max_name = (long)max_name;
    s->gb_max_message = (long)max_message;
    s->reply_ns = (uint64_t)(reply_timeout * 1e9);
    s->connect_ns = (uint64_t)(connect * 1e9);
    s->retry_ns = (uint64_t)(retry * 1e9);
    s->pool_max = pool > INT_MAX ? INT_MAX : (int)pool;
    memset(&s->raddr, 0, sizeof s->raddr);
    int ok = 1;
    if (port < 0) {             /* a unix socket: host is its path */
        struct sockaddr_un *un = (struct sockaddr_un *)&s->raddr;
        un->sun_family = AF_UNIX;
        ok = strlen(host) < sizeof un->sun_path;
        if (ok)
            strcpy(un->sun_path, host);
        s->raddr_len = sizeof *un;
    } else if (strchr(host, ':')) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&s->raddr;
        in6->sin6_family = AF_INET6;
        in6->sin6_port = htons((uint16_t)port);
        ok = inet_pton(AF_INET6, host, &in6->sin6_addr) == 1;
        s->raddr_len = sizeof *in6;
    } else {
        struct sockaddr_in *in4 = (struct sockaddr_in *)&s->raddr;
        in4->sin_family = AF_INET;
        in4->sin_port = htons((uint16_t)port);
        ok = inet_pton(AF_INET, host, &in4->sin_addr) == 1;
        s->raddr_len = sizeof *in4;
    }
    free(host);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "invalid Redis address");
        return -1;
    }
    s->gb = 1;
    return 0;
}

static PyObject *cepoll_serve(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwlist[] = {"listen_fd", "stop_fd", "proto", "server", "ok_reason",
                             "page_body", "page_content_type", "error_content_type", "allow",
                             "errors", "idle_timeout", "header_timeout", "max_header_bytes",
                             "max_body_bytes", "write_high_water", "read_size",
                             "shutdown_grace", "guestbook", NULL};
    int lfd, stop_fd;
    const char *proto;
    PyObject *server, *ok_reason, *page_body, *page_type, *error_type, *allow, *errors;
    double idle = 30.0, header = 10.0, grace = 1.0;
    PyObject *guestbook = Py_None;
    Py_ssize_t max_header = 8192, max_body = 1 << 20, hwm = 256 * 1024, read_size = 65536;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iisOOOOOOO!|ddnnnndO", kwlist, &lfd, &stop_fd,
                                     &proto, &server, &ok_reason, &page_body, &page_type,
                                     &error_type, &allow, &PyDict_Type, &errors, &idle, &header,
                                     &max_header, &max_body, &hwm, &read_size, &grace, &guestbook))
        return NULL;
    srv_t s;
    memset(&s, 0, sizeof s);
    s.lfd = lfd;
    s.epfd = -1;
    s.date_sec = -1;
    s.q_head = s.q_tail = -1;
    int ok = 0;
    if (strcmp(proto, "http") == 0) {
        s.http = 1;
    } else if (strcmp(proto, "echo") != 0) {
        PyErr_Format(PyExc_ValueError, "unknown protocol %s", proto);
        goto done;
    }
    if (idle <= 0 || header <= 0 || grace < 0 || max_header < 64 || max_body < 0 || hwm < 1 ||
        read_size < 1024) {
        PyErr_SetString(PyExc_ValueError, "invalid limits");
        goto done;
    }
    s.idle_ns = (uint64_t)(idle * 1e9);
    s.header_ns = (uint64_t)(header * 1e9);
    s.grace_ns = (uint64_t)(grace * 1e9);
    s.max_header = (size_t)max_header;
    s.max_body = (size_t)max_body;
    s.hwm = (size_t)hwm;
    s.read_size = (size_t)read_size;
    if (!(s.server = dup_str(server, "server")) || !(s.ok_reason = dup_str(ok_reason, "ok_reason")) ||
        !(s.page_type = dup_str(page_type, "page_content_type")) ||
        !(s.error_type = dup_str(error_type, "error_content_type")) ||
        !(s.allow = dup_str(allow, "allow")) ||
        !(s.page_body = dup_bytes(page_body, &s.page_len, "page_body")))
        goto done;
    for (int i = 0; i < NERR; i++) {
        PyObject *key = PyLong_FromLong(ERR_CODES[i]);
        PyObject *item = key ? PyDict_GetItemWithError(errors, key) : NULL;
        Py_XDECREF(key);
        if (!item || !PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 2) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_ValueError, "errors[%d] must be (reason, body)",
                             ERR_CODES[i]);
            goto done;
        }
        if (!(s.errs[i].reason = dup_str(PyTuple_GET_ITEM(item, 0), "reason")) ||
            !(s.errs[i].body = dup_bytes(PyTuple_GET_ITEM(item, 1), &s.errs[i].body_len,
                                         "error body")))
            goto done;
    }
    if (guestbook != Py_None) {
        if (!PyDict_Check(guestbook)) {
            PyErr_SetString(PyExc_TypeError, "guestbook must be a dict or None");
            goto done;
        }
        if (!s.http) {
            PyErr_SetString(PyExc_ValueError, "the guestbook needs the http protocol");
            goto done;
        }
        if (gb_setup(&s, guestbook) < 0)
            goto done;
    }
    s.rbuf = malloc(s.read_size);
    s.epfd = epoll_create1(EPOLL_CLOEXEC);
    if (!s.rbuf || s.epfd < 0 || grow_table(&s, 1024) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    refresh_date(&s);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    struct epoll_event sev = {.events = EPOLLIN, .data.fd = stop_fd};
    if (epoll_ctl(s.epfd, EPOLL_CTL_ADD, lfd, &ev) < 0 ||
        epoll_ctl(s.epfd, EPOLL_CTL_ADD, stop_fd, &sev) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    ok = serve_loop(&s, stop_fd) == 0;
done:
    srv_free(&s);
    if (!ok)
        return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"serve", (PyCFunction)(void (*)(void))cepoll_serve, METH_VARARGS | METH_KEYWORDS,
     "serve(listen_fd, stop_fd, proto, server, ok_reason, page_body, page_content_type,\n"
     "      error_content_type, allow, errors, idle_timeout=30.0, header_timeout=10.0,\n"
     "      max_header_bytes=8192, max_body_bytes=1048576, write_high_water=262144,\n"
     "      read_size=65536, shutdown_grace=1.0, guestbook=None) -> None\n\n"
     "Serve on listen_fd (taken over: closed on return) until stop_fd is readable.\n"
     "guestbook: None, or the /guestbook app's texts, limits and Redis (servers.c_epoll)."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "zoo_cepoll",
                                    "Native single-threaded epoll server (see servers.c_epoll).",
                                    -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit_zoo_cepoll(void)
{
    return PyModule_Create(&module);
}
