/* cepoll.c - servers._cepoll: a single-threaded, level-triggered epoll server.
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
 */
#define _GNU_SOURCE
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define NS 1000000000ull
#define TICK_NS 200000000ull     /* signal check and timeout scan period */
#define LINGER_NS 1000000000ull  /* lingering close: drain the peer at most this long */
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
    uint64_t last_ns, head_start, linger_until;
} sconn_t;

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
                           const char *ctype, size_t len, int mode, int allow)
{
    int n = snprintf(dst, cap,
                     "HTTP/1.1 %d %s\r\nServer: %s\r\nDate: %s\r\nContent-Type: %s\r\n"
                     "Content-Length: %zu\r\n%s%s%s%s\r\n",
                     code, reason, s->server, s->date, ctype, len,
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
                                           s->ok_reason, s->page_type, s->page_len, m, 0);
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
                            d->body_len, mode, e == ERR_405);
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
/* Tokens llhttp also reads as methods before it fails on the protocol (RTSP, PRI). */
static const char *const OTHER_METHODS[] = {
    "PRI", "DESCRIBE", "ANNOUNCE", "SETUP", "PLAY", "PAUSE", "TEARDOWN", "GET_PARAMETER",
    "SET_PARAMETER", "REDIRECT", "RECORD", "FLUSH", NULL};

static int known_method(const char *m, size_t n)
{
    for (int i = 0; HTTP_METHODS[i]; i++)
        if (strlen(HTTP_METHODS[i]) == n && memcmp(HTTP_METHODS[i], m, n) == 0)
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
 * h[0..n) holds no bare LF or CR. Returns 0, 1 (400) or 2 (413).
 */
static int head_prefix_bad(const char *h, size_t n, size_t max_body)
{
    const char *end = h + n;
    const char *sp = memchr(h, ' ', n);
    if (!method_prefix_ok(h, sp ? (size_t)(sp - h) : n, sp != NULL))
        return 1;
    if (!sp)
        return 0;
    const char *q = sp + 1;
    for (; q < end && *q != ' ' && *q != '\r'; q++)
        if ((unsigned char)*q < 0x20 || (unsigned char)*q >= 0x7f)
            return 1;
    const char *line = memmem(h, n, "\r\n", 2);
    if (!line)
        return 0;
    if (!known_method(h, (size_t)(sp - h)) && !(sp - h == 3 && memcmp(h, "PRI", 3) == 0))
        return 1;               /* an RTSP method: llhttp refuses it when the line ends */
    int seen_clen = 0, seen_te = 0, chunked = 0, big = 0;
    for (line += 2; line < end;) {
        const char *eol = memmem(line, (size_t)(end - line), "\r\n", 2);
        const char *lend = eol ? eol : (end[-1] == '\r' ? end - 1 : end);
        const char *colon = line;
        for (; colon < lend && *colon != ':'; colon++)
            if (!is_tchar((unsigned char)*colon))
                return 1;
        if (colon == lend) {
            if (eol)
                return 1;       /* a whole line without a colon */
            if (big && lend > line)
                return 2;       /* llhttp hands over the name so far where the input ends */
            break;
        }
        if (colon == line)
            return 1;
        if (big)
            return 2;           /* a header name after a length over the limit: 413 */
        size_t nl = (size_t)(colon - line);
        int is_clen = nl == 14 && strncasecmp(line, "content-length", 14) == 0;
        int is_te = nl == 17 && strncasecmp(line, "transfer-encoding", 17) == 0;
        if ((is_clen && seen_te) || (is_te && seen_clen))
            return 1;           /* both framings */
        int64_t value = 0;
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
                    if (value <= (int64_t)max_body)
                        value = value * 10 + (ch - '0');
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
        big |= is_clen && value > (int64_t)max_body;
        line = eol + 2;
    }
    return 0;
}

/* Where the head in h[0..n) ends (after its blank line): 0 if not yet; or *bad, and the
 * offset of the byte that is wrong in *bad_at. */
static size_t head_end(const char *h, size_t n, int *bad, size_t *bad_at)
{
    size_t off = 0;
    for (;;) {
        const char *eol = find_crlf(h + off, n - off, bad);
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

/* Parse a complete head (ending in CRLF CRLF). 0 ok, -1 malformed. */
static int parse_request(const char *h, size_t len, req_t *r, size_t max_body)
{
    memset(r, 0, sizeof *r);
    r->clen = -1;
    const char *end = h + len, *p = h;
    const char *sp = memchr(p, ' ', (size_t)(end - p));
    if (!sp || sp == p)
        return -1;
    for (const char *q = p; q < sp; q++)
        if (!is_tchar((unsigned char)*q))
            return -1;
    size_t ml = (size_t)(sp - p);
    r->get = ml == 3 && memcmp(p, "GET", 3) == 0;
    r->head = ml == 4 && memcmp(p, "HEAD", 4) == 0;
    r->known = known_method(p, ml);
    if (!r->known)
        return -1;              /* a method llhttp does not know: malformed, as the core says */
    const char *t = sp + 1;
    const char *le = memmem(t, (size_t)(end - t), "\r\n", 2);
    if (!le)
        return -1;
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
    if (sp2 == le) {
        r->ver = 9;
    } else if (le - v == 8 && memcmp(v, "HTTP/", 5) == 0 && v[6] == '.' && isdigit((unsigned char)v[5]) &&
               isdigit((unsigned char)v[7])) {
        r->ver = (v[5] - '0') * 10 + (v[7] - '0');
        if (r->ver != 9 && r->ver != 10 && r->ver != 11 && r->ver != 20)
            return -1;          /* the versions llhttp takes: 0.9, 1.0, 1.1, 2.0 */
    } else {
        return -1;
    }
    /* the path: origin form, or absolute form (scheme://authority/path) */
    const char *path = t, *pend = sp2;
    if (*t == '*' && sp2 - t == 1) {
        path = "*";             /* asterisk form: not the page */
        pend = path + 1;
    } else if (*t != '/') {
        const char *scheme = memchr(t, ':', (size_t)(sp2 - t));
        if (!scheme || sp2 - scheme < 3 || scheme[1] != '/' || scheme[2] != '/')
            return -1;
        const char *slash = memchr(scheme + 3, '/', (size_t)(sp2 - scheme - 3));
        path = slash ? slash : "/";
        pend = slash ? sp2 : path + 1;
    }
    size_t pl = 0;
    while (path + pl < pend && path[pl] != '?' && path[pl] != '#')
        pl++;
    r->root = pl == 0 || (pl == 1 && path[0] == '/');
    /* headers */
    p = le + 2;
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
        if (r->clen == -2)
            return -2;          /* the core hears of a length over the limit at the next name */
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
            for (size_t i = 0; i < vl; i++) {
                if (val[i] < '0' || val[i] > '9')
                    return -1;
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
        } else if (nl == 10 && strncasecmp(p, "connection", 10) == 0) {
            if (has_token(val, vl, "close"))
                r->conn_close = 1;
            if (has_token(val, vl, "keep-alive"))
                r->conn_keep = 1;
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
            if (bad || !eol) {
                if (bad || avail > CHUNK_LINE_MAX)
                    return -1;
                /* llhttp wants hex digits, then ';', a blank or the CR: fail early as it */
                const char *x = p;
                while (x < p + avail && isxdigit((unsigned char)*x))
                    x++;
                if (x == p || (x < p + avail && *x != ';' && *x != ' ' && *x != '\t' &&
                               *x != '\r'))
                    return -1;
                goto more;
            }
            int64_t size = 0;
            const char *q = p;

            for (; q < eol && isxdigit((unsigned char)*q); q++) {
                size = size * 16 + (isdigit((unsigned char)*q) ? *q - '0' :
                                    (tolower((unsigned char)*q) - 'a' + 10));
                if (size > (int64_t)max_body)
                    return -2;
            }
            if (q == p || (q < eol && *q != ';' && *q != ' ' && *q != '\t'))
                return -1;
            off += (size_t)(eol - p) + 2;
            c->chunk_total += size;
            if (c->chunk_total > (int64_t)max_body)
                return -2;
            c->chunk_left = size;
            c->chunk_state = size ? CH_DATA : CH_TRAILER;
            break;
        }
        case CH_TRAILER:
            eol = find_crlf(p, avail, &bad);
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

static void respond_pending(srv_t *s, sconn_t *c)
{
    c->pend = 0;
    if (c->pend_code == 200)
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
    while (!c->closing && pending_out(c) <= s->hwm) {
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
        /* what comes before a bad line end is judged first, in byte order, as llhttp does */
        int early = hl ? 0 : head_prefix_bad(h, bad ? bad_at : avail, s->max_body);
        if (bad && !early)
            early = 1;
        if (early) {
            /* a bare LF, a stray CR, or a head already malformed: answered now, as the core */
            emit_error(s, c, early == 2 ? ERR_413 : ERR_400, CLOSE, 0);
            off = n;
            break;
        }
        if (!hl) {
            if (avail + c->head_skipped > s->max_header) {
                emit_error(s, c, ERR_431, CLOSE, 0);
                off = n;
                break;
            }
            break;
        }
        c->head_start = 0;
        c->head_skipped = 0;
        if (hl > s->max_header) {
            emit_error(s, c, ERR_431, CLOSE, 0);
            off = n;
            break;
        }
        req_t r;
        int pr = parse_request(h, hl, &r, s->max_body);
        if (pr == 0 && r.clen == -2)
            pr = -2;            /* body over the limit */
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
        if (r.get || r.head) {
            c->pend_code = r.root ? 200 : 404;
        } else {
            c->pend_code = 405;
            c->pend_head_only = 0;
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
    free(c->in);
    free(c->out);
    memset(c, 0, sizeof *c);
    c->fd = -1;
    s->live--;
    if (s->accept_resume)
        accept_resume(s);       /* a descriptor is free: accept again without waiting */
}

/* All output is out and the connection must end: close, lingering if the peer still sends. */
static void finish_close(srv_t *s, sconn_t *c, uint64_t now)
{
    int unread = 0;
    if (ioctl(c->fd, FIONREAD, &unread) < 0 || unread == 0) {
        conn_free(s, c);
        return;
    }
    shutdown(c->fd, SHUT_WR);
    c->lingering = 1;
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
    int want_in = !c->closing && !c->eof && pending_out(c) <= s->hwm;
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
        if (!s->http || c->closing || c->in_len == 0 || pending_out(c) > s->hwm)
            break;
        size_t used = process_http(s, c, c->in, c->in_len, now);
        keep_input(c, c->in, c->in_len, used);
        if (used == 0)
            break;              /* only part of a request: wait for more */
    }
    if (c->eof && !c->closing && pending_out(c) <= s->hwm) {
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
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
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
            if (s->accept_resume && now >= s->accept_resume && !stopping)
                accept_resume(s);
            next_tick = now + TICK_NS;
        }
        if (stopping && (s->live == 0 || now >= stop_deadline))
            break;
        int timeout_ms = (int)((next_tick - now + 999999) / 1000000);
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
                        if (c->lingering || pending_out(c) == 0) {
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
            if (fd < 0 || fd >= s->nconns_cap || !s->conns[fd].used)
                continue;
            sconn_t *c = &s->conns[fd];
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

static PyObject *cepoll_serve(PyObject *self, PyObject *args, PyObject *kw)
{
    (void)self;
    static char *kwlist[] = {"listen_fd", "stop_fd", "proto", "server", "ok_reason",
                             "page_body", "page_content_type", "error_content_type", "allow",
                             "errors", "idle_timeout", "header_timeout", "max_header_bytes",
                             "max_body_bytes", "write_high_water", "read_size",
                             "shutdown_grace", NULL};
    int lfd, stop_fd;
    const char *proto;
    PyObject *server, *ok_reason, *page_body, *page_type, *error_type, *allow, *errors;
    double idle = 30.0, header = 10.0, grace = 1.0;
    Py_ssize_t max_header = 8192, max_body = 1 << 20, hwm = 256 * 1024, read_size = 65536;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "iisOOOOOOO!|ddnnnnd", kwlist, &lfd, &stop_fd,
                                     &proto, &server, &ok_reason, &page_body, &page_type,
                                     &error_type, &allow, &PyDict_Type, &errors, &idle, &header,
                                     &max_header, &max_body, &hwm, &read_size, &grace))
        return NULL;
    srv_t s;
    memset(&s, 0, sizeof s);
    s.lfd = lfd;
    s.epfd = -1;
    s.date_sec = -1;
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
     "      read_size=65536, shutdown_grace=1.0) -> None\n\n"
     "Serve on listen_fd (taken over: closed on return) until stop_fd is readable."},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "servers._cepoll",
                                    "Native single-threaded epoll server (see servers.c_epoll).",
                                    -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__cepoll(void)
{
    return PyModule_Create(&module);
}
