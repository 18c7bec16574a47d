// SPDX-License-Identifier: GPL-2.0
/*
 * khttpd request-head parser (see khttpd_parse.h).
 *
 * The head is judged byte by byte as llhttp, the core's parser, judges it, so
 * the first fault wins (servers/core/WIRE.md): a head that is not complete
 * yet is already malformed (400) once a byte in it cannot be HTTP, and only
 * its first KHTTPD_MAX_HEAD bytes are judged (the byte past them: 431). Lines
 * end in CRLF. The request line is METHOD SP TARGET [SP VERSION], each SP
 * maybe a run of spaces, the version none (0.9), 1.0, 1.1 or 2.0; a method
 * token llhttp does not know is 400, one it knows but khttpd does not serve
 * is 405. Header names are tokens followed directly by a colon; folded lines
 * and control bytes in values are malformed. What is decided at the head's
 * end: a declared body over the limit (413), a body that cannot be framed,
 * and a protocol switch or HTTP/1.0 framing that ends the connection.
 */
#include <linux/ctype.h>
#include <linux/kernel.h>
#include <linux/string.h>

#include "khttpd_parse.h"

/* Methods llhttp knows for HTTP: GET and HEAD are served, the others 405. */
static const char * const khttpd_known_methods[] = {
	"GET", "HEAD", "DELETE", "POST", "PUT", "CONNECT", "OPTIONS", "TRACE",
	"COPY", "LOCK", "MKCOL", "MOVE", "PROPFIND", "PROPPATCH", "SEARCH",
	"UNLOCK", "BIND", "REBIND", "UNBIND", "ACL", "REPORT", "MKACTIVITY",
	"CHECKOUT", "MERGE", "M-SEARCH", "NOTIFY", "SUBSCRIBE", "UNSUBSCRIBE",
	"PATCH", "PURGE", "MKCALENDAR", "LINK", "UNLINK", "SOURCE", "QUERY",
};

/* Tokens llhttp also reads as methods: RTSP's, and PRI (HTTP/2's preface). */
static const char * const khttpd_other_methods[] = {
	"PRI", "DESCRIBE", "ANNOUNCE", "SETUP", "PLAY", "PAUSE", "TEARDOWN",
	"GET_PARAMETER", "SET_PARAMETER", "REDIRECT", "RECORD", "FLUSH",
};

/* The methods llhttp takes with an RTSP/ version (ICE/ takes SOURCE only). */
static const char * const khttpd_rtsp_methods[] = {
	"OPTIONS", "DESCRIBE", "ANNOUNCE", "SETUP", "PLAY", "PAUSE", "TEARDOWN",
	"GET_PARAMETER", "SET_PARAMETER", "REDIRECT", "RECORD", "FLUSH", "GET",
	"POST",
};

/* What llhttp wants after a PRI request line: the rest of HTTP/2's preface. */
static const char khttpd_pri_rest[] = "\r\nSM\r\n\r\n";

/* What the header lines said so far. */
struct khttpd_scan {
	bool connect;		/* the method is CONNECT */
	bool pri;		/* PRI with an HTTP/ version: HTTP/2's preface */
	bool has_len;
	bool len_over;		/* a length over KHTTPD_MAX_BODY: 413 */
	bool has_te;
	bool chunked;		/* "chunked" ended a Transfer-Encoding */
	bool te_bad;		/* ... but the last one did not end with it */
	bool close;
	bool keep;
	bool conn_upgrade;
	bool upgrade;		/* an Upgrade header with a value */
};

struct khttpd_span {
	const char *p;
	size_t n;
};

static bool khttpd_is_tchar(unsigned char c)
{
	return isalnum(c) || (c && strchr("!#$%&'*+-.^_`|~", c));
}

static bool khttpd_span_is(struct khttpd_span s, const char *lit)
{
	return s.n == strlen(lit) && !memcmp(s.p, lit, s.n);
}

static bool khttpd_span_ieq(struct khttpd_span s, const char *lit)
{
	return s.n == strlen(lit) && !strncasecmp(s.p, lit, s.n);
}

static void khttpd_trim(struct khttpd_span *s)
{
	while (s->n && (s->p[0] == ' ' || s->p[0] == '\t')) {
		s->p++;
		s->n--;
	}
	while (s->n && (s->p[s->n - 1] == ' ' || s->p[s->n - 1] == '\t'))
		s->n--;
}

/*
 * An absolute-form authority as http_parser accepts it: [userinfo@]host
 * [:port], the host a name (letters, digits, '-', '.') or an [IPv6] literal.
 */
static bool khttpd_authority_ok(struct khttpd_span a)
{
	const char *p = a.p, *end = a.p + a.n, *at;
	const char *host;

	at = memchr(p, '@', a.n);
	if (at) {
		for (; p < at; p++)
			if (!isalnum(*p) && !strchr("-._~%!$&'()*+,;=:", *p))
				return false;
		p = at + 1;
	}
	host = p;
	if (p < end && *p == '[') {
		while (++p < end && *p != ']')
			if (!isxdigit(*p) && !strchr(":.%", *p) && !isalnum(*p))
				return false;
		if (p == end || p == host + 1)
			return false;
		p++;
	} else {
		while (p < end && (isalnum(*p) || *p == '-' || *p == '.'))
			p++;
		if (p == host)
			return false;
	}
	if (p < end && *p == ':') {
		if (++p == end)
			return false;
		while (p < end && isdigit(*p))
			p++;
	}
	return p == end;
}

/*
 * The path of a request target, as httptools.parse_url() finds it: origin
 * form ("/p?q#f", or "*"), or absolute form ("scheme://authority/p?q", whose
 * path is "/" when it has none). A byte outside printable ASCII, or another
 * form, is a target the core answers 400.
 */
static int khttpd_target_path(struct khttpd_span t, struct khttpd_span *path)
{
	const char *p = t.p, *end = t.p + t.n;
	struct khttpd_span auth;
	size_t i;

	for (i = 0; i < t.n; i++)
		if ((unsigned char)t.p[i] >= 0x80)
			return 400;
	if (*p != '/' && *p != '*') {
		while (p < end && isalpha(*p))
			p++;
		if (p == t.p || end - p < 3 || memcmp(p, "://", 3))
			return 400;
		p += 3;
		auth.p = p;
		while (p < end && *p != '/' && *p != '?')
			p++;
		auth.n = p - auth.p;
		if (!khttpd_authority_ok(auth))
			return 400;
		if (p == end || *p == '?') {
			path->p = "/";
			path->n = 1;
			return 0;
		}
	}
	path->p = p;
	while (p < end && *p != '?' && *p != '#')
		p++;
	path->n = p - path->p;
	return 0;
}

static bool khttpd_in_list(const char * const *list, size_t count,
			   struct khttpd_span m, bool whole)
{
	size_t i, n;

	for (i = 0; i < count; i++) {
		n = strlen(list[i]);
		if ((whole ? n == m.n : n >= m.n) && !memcmp(list[i], m.p, m.n))
			return true;
	}
	return false;
}

/* Can m still become a method llhttp reads (all of it when whole)? */
static bool khttpd_method_prefix(struct khttpd_span m, bool whole)
{
	return khttpd_in_list(khttpd_known_methods,
			      ARRAY_SIZE(khttpd_known_methods), m, whole) ||
	       khttpd_in_list(khttpd_other_methods,
			      ARRAY_SIZE(khttpd_other_methods), m, whole);
}

/*
 * The next line from *pos up to end: 1 and the line (without its CRLF) when
 * it ends in CRLF; 0 and what came of it when it does not end before end (a
 * CR at the very end left out); -1 and the bytes before it at a bare LF or a
 * CR followed by anything but LF.
 */
static int khttpd_next_line(const char **pos, const char *end,
			    struct khttpd_span *line)
{
	const char *p;

	line->p = *pos;
	for (p = *pos; p < end; p++) {
		if (*p == '\n')
			break;
		if (*p != '\r')
			continue;
		if (p + 1 == end) {
			line->n = p - line->p;
			return 0;
		}
		if (p[1] != '\n')
			break;
		line->n = p - line->p;
		*pos = p + 2;
		return 1;
	}
	line->n = p - line->p;
	return p == end ? 0 : -1;
}

/*
 * Is line (before a bare LF) a request line llhttp lets that LF end? HTTP/0.9's:
 * a method, spaces and a target, with no version (nor a space) after it.
 */
static bool khttpd_line09(struct khttpd_span line)
{
	const char *end = line.p + line.n, *t = memchr(line.p, ' ', line.n);

	if (!t)
		return false;
	while (t < end && *t == ' ')
		t++;
	return t < end && !memchr(t, ' ', end - t);
}

/* Is the request line so far (not complete) already malformed? */
static int khttpd_request_prefix(struct khttpd_span line)
{
	const char *end = line.p + line.n;
	const char *sp = memchr(line.p, ' ', line.n);
	struct khttpd_span m = { line.p, sp ? sp - line.p : line.n };
	const char *p;

	if (!khttpd_method_prefix(m, sp))
		return 400;
	if (!sp)
		return 0;
	for (p = sp + 1; p < end && *p == ' '; p++)
		;
	for (; p < end && *p != ' '; p++)
		if ((unsigned char)*p < 0x20 || (unsigned char)*p >= 0x7f)
			return 400;
	return 0;
}

/* The target forms llhttp reads; CONNECT's authority refuses a few bytes. */
static bool khttpd_target_form_ok(struct khttpd_span t, bool connect)
{
	const char *colon;
	size_t i;

	if (connect) {
		for (i = 0; i < t.n && t.p[i] != '/' && t.p[i] != '?'; i++)
			if (strchr("\"#<>\\^`{|}", t.p[i]))
				return false;
		return true;
	}
	if (t.p[0] == '/' || t.p[0] == '*')
		return true;
	colon = memchr(t.p, ':', t.n);
	return colon && t.p + t.n - colon >= 3 && !memcmp(colon, "://", 3);
}

/*
 * The protocol and version: HTTP/, RTSP/ or ICE/ (each with the methods llhttp
 * takes with it), then 0.9, 1.0, 1.1 or 2.0. 0 or 400; PRI with HTTP/ sets
 * sc->pri.
 */
static int khttpd_version(struct khttpd_span v, struct khttpd_span method,
			  struct khttpd_req *req, struct khttpd_scan *sc)
{
	size_t pl;
	bool ok;

	if (v.n == 8 && !memcmp(v.p, "HTTP/", 5)) {
		pl = 5;
		ok = khttpd_in_list(khttpd_known_methods,
				    ARRAY_SIZE(khttpd_known_methods), method, true);
		sc->pri = khttpd_span_is(method, "PRI");
		ok |= sc->pri;
	} else if (v.n == 8 && !memcmp(v.p, "RTSP/", 5)) {
		pl = 5;
		ok = khttpd_in_list(khttpd_rtsp_methods,
				    ARRAY_SIZE(khttpd_rtsp_methods), method, true);
	} else if (v.n == 7 && !memcmp(v.p, "ICE/", 4)) {
		pl = 4;
		ok = khttpd_span_is(method, "SOURCE");
	} else {
		return 400;
	}
	if (!isdigit(v.p[pl]) || v.p[pl + 1] != '.' || !isdigit(v.p[pl + 2]))
		return 400;
	req->version = (v.p[pl] - '0') * 10 + v.p[pl + 2] - '0';
	if (req->version != 9 && req->version != 10 && req->version != 11 &&
	    req->version != 20)
		return 400;
	return ok ? 0 : 400;
}

static int khttpd_request_line(struct khttpd_span line, struct khttpd_req *req,
			       struct khttpd_scan *sc)
{
	const char *p = line.p, *end = line.p + line.n;
	struct khttpd_span method, target, version, path;
	size_t i;

	p = memchr(line.p, ' ', line.n);
	if (!p || p == line.p)
		return 400;
	method.p = line.p;
	method.n = p - line.p;
	if (!khttpd_method_prefix(method, true))
		return 400;
	sc->connect = khttpd_span_is(method, "CONNECT");
	while (p < end && *p == ' ')
		p++;
	target.p = p;
	while (p < end && *p != ' ')
		p++;
	target.n = p - target.p;
	if (!target.n)
		return 400;
	for (i = 0; i < target.n; i++)
		if ((unsigned char)target.p[i] <= ' ' ||
		    (unsigned char)target.p[i] >= 0x7f)
			return 400;
	version.p = p;
	while (version.p < end && *version.p == ' ')
		version.p++;
	version.n = end - version.p;
	if (p == end)
		req->version = 9;	/* none: HTTP/0.9, any method llhttp reads */
	else if (khttpd_version(version, method, req, sc))
		return 400;	/* junk, or spaces and then the line's end */
	if (!khttpd_target_form_ok(target, sc->connect))
		return 400;
	if (sc->pri)
		return 0;	/* judged by what follows (khttpd_parse) */

	if (khttpd_span_is(method, "GET")) {
		req->method = KHTTPD_GET;
	} else if (khttpd_span_is(method, "HEAD")) {
		req->method = KHTTPD_HEAD;
	} else {
		req->method = KHTTPD_OTHER;
		return 0;	/* the core parses the target only to serve it */
	}
	if (khttpd_target_path(target, &path))
		return 400;
	req->path = path.p;
	req->path_len = path.n;
	req->root = khttpd_span_is(path, "/");
	return 0;
}

/* Connection: a comma-separated list of tokens. */
static void khttpd_connection(struct khttpd_span v, struct khttpd_scan *sc)
{
	while (v.n) {
		const char *comma = memchr(v.p, ',', v.n);
		struct khttpd_span tok = { v.p, comma ? comma - v.p : v.n };

		khttpd_trim(&tok);
		if (khttpd_span_ieq(tok, "close"))
			sc->close = true;
		else if (khttpd_span_ieq(tok, "keep-alive"))
			sc->keep = true;
		else if (khttpd_span_ieq(tok, "upgrade"))
			sc->conn_upgrade = true;
		if (!comma)
			break;
		v.n -= comma + 1 - v.p;
		v.p = comma + 1;
	}
}

/* Content-Length: digits only, at most 64 bits (llhttp: past that, 400). */
static int khttpd_content_length(struct khttpd_span v, u64 *out)
{
	u64 n = 0;
	size_t i;

	if (!v.n)
		return -EINVAL;
	for (i = 0; i < v.n; i++) {
		if (!isdigit(v.p[i]))
			return -EINVAL;
		if (n > (U64_MAX - (v.p[i] - '0')) / 10)
			return -EINVAL;
		n = n * 10 + (v.p[i] - '0');
	}
	*out = n;
	return 0;
}

/*
 * Transfer-Encoding: codings separated by commas and blanks; "chunked" at
 * most once, and last (not even a comma after it). te_bad: the body cannot
 * be framed, which is 400 at the head's end (HTTP/1.1).
 */
static int khttpd_transfer_encoding(struct khttpd_span v, struct khttpd_scan *sc)
{
	size_t i = 0, start, k;

	if (!v.n || sc->chunked || sc->has_len)
		return 400;
	sc->has_te = true;
	while (i < v.n) {
		while (i < v.n && (v.p[i] == ' ' || v.p[i] == '\t' || v.p[i] == ','))
			i++;
		start = i;
		while (i < v.n && v.p[i] != ',' && v.p[i] != ' ' && v.p[i] != '\t')
			i++;
		if (i == start)
			break;
		if (sc->chunked)
			return 400;	/* a coding after "chunked" */
		if (i - start == 7 && !strncasecmp(v.p + start, "chunked", 7)) {
			sc->chunked = true;
			for (k = i; k < v.n && (v.p[k] == ' ' || v.p[k] == '\t'); k++)
				;
			if (k < v.n)
				return 400;	/* anything after it */
		}
	}
	sc->te_bad = !sc->chunked;
	return 0;
}

static bool khttpd_value_ok(struct khttpd_span v)
{
	size_t i;

	for (i = 0; i < v.n; i++) {
		unsigned char c = v.p[i];

		if ((c < ' ' && c != '\t') || c == 0x7f)
			return false;
	}
	return true;
}

static int khttpd_header(struct khttpd_span line, struct khttpd_req *req,
			 struct khttpd_scan *sc)
{
	struct khttpd_span name = { line.p, 0 }, value;
	u64 len;

	while (name.n < line.n && khttpd_is_tchar(line.p[name.n]))
		name.n++;
	if (!name.n || name.n == line.n || line.p[name.n] != ':')
		return 400;
	value.p = line.p + name.n + 1;
	value.n = line.n - name.n - 1;
	khttpd_trim(&value);
	if (!khttpd_value_ok(value))
		return 400;

	if (khttpd_span_ieq(name, "connection")) {
		khttpd_connection(value, sc);
	} else if (khttpd_span_ieq(name, "upgrade")) {
		sc->upgrade |= value.n > 0;
	} else if (khttpd_span_ieq(name, "content-length")) {
		if (khttpd_content_length(value, &len))
			return 400;
		if (sc->has_len || sc->has_te)
			return 400;	/* a second length, or both framings */
		sc->has_len = true;
		sc->len_over = len > KHTTPD_MAX_BODY;
		req->body_len = len;
	} else if (khttpd_span_ieq(name, "transfer-encoding")) {
		return khttpd_transfer_encoding(value, sc);
	}
	return 0;
}

/* Does "chunked" end just before v, as a whole token of a value at start? */
static bool khttpd_chunked_before(const char *start, const char *v)
{
	return v - start >= 7 && !strncasecmp(v - 7, "chunked", 7) &&
	       (v - 7 == start || v[-8] == ' ' || v[-8] == '\t' || v[-8] == ',');
}

/* Is a header line so far (not complete) already malformed? */
static int khttpd_header_prefix(struct khttpd_span line,
				const struct khttpd_scan *sc)
{
	const char *end = line.p + line.n, *colon, *v;
	bool len, te, chunked = sc->chunked, any = false;
	bool digits = false, after = false;
	struct khttpd_span name;
	u64 n = 0;

	for (colon = line.p; colon < end && *colon != ':'; colon++)
		if (!khttpd_is_tchar(*colon))
			return 400;
	if (colon == end)
		return 0;
	if (colon == line.p)
		return 400;
	name.p = line.p;
	name.n = colon - line.p;
	len = khttpd_span_ieq(name, "content-length");
	te = khttpd_span_ieq(name, "transfer-encoding");
	if ((len && sc->has_te) || (te && sc->has_len))
		return 400;	/* both framings */
	for (v = colon + 1; v < end; v++) {
		unsigned char ch = *v;
		bool blank = ch == ' ' || ch == '\t';

		if ((ch < ' ' && ch != '\t') || ch == 0x7f)
			return 400;
		if (!blank && !any) {
			any = true;	/* the value's first byte */
			if ((len && sc->has_len) || (te && sc->chunked))
				return 400;
		}
		if (len) {
			if (isdigit(ch)) {
				if (after || n > (U64_MAX - (ch - '0')) / 10)
					return 400;
				digits = true;
				n = n * 10 + (ch - '0');
			} else if (blank) {
				after = digits;
			} else {
				return 400;
			}
		} else if (te && chunked && !blank) {
			return 400;	/* anything after "chunked" */
		} else if (te && (ch == ',' || blank) &&
			   khttpd_chunked_before(colon + 1, v)) {
			chunked = true;
			if (ch == ',')
				return 400;
		}
	}
	return 0;
}

/* The head is complete: what is decided at its end (WIRE.md). */
static void khttpd_head_end(struct khttpd_req *req, const struct khttpd_scan *sc)
{
	/* As llhttp_should_keep_alive(). */
	req->keep_alive = req->version == 11 ? !sc->close : sc->keep;
	if (sc->len_over) {
		req->status = 413;
	} else if (sc->connect || (sc->upgrade && sc->conn_upgrade)) {
		req->last = true;	/* llhttp switches protocols here */
		req->body_len = 0;
	} else if (sc->te_bad && req->version != 10) {
		req->status = 400;	/* a body that cannot be framed */
	} else if (req->version == 10 && sc->has_te) {
		/* RFC 9112 6.1: no trustworthy framing; answer, then close. */
		req->last = true;
		req->keep_alive = false;
		req->body_len = 0;
	} else {
		req->chunked = sc->chunked;
	}
}

/*
 * After a PRI request line llhttp wants the rest of HTTP/2's preface, and
 * refuses it (400) once what follows deviates from it or completes it.
 */
static int khttpd_pri(struct khttpd_req *req, const char *p, const char *end)
{
	size_t got = end - p;

	if (got >= sizeof(khttpd_pri_rest) - 1 ||
	    memcmp(p, khttpd_pri_rest, got))
		req->status = 400;
	return req->status;
}

size_t khttpd_parse(const char *buf, size_t len, struct khttpd_req *req)
{
	const char *pos = buf, *end = buf + min_t(size_t, len, KHTTPD_MAX_HEAD);
	struct khttpd_scan sc = {};
	struct khttpd_span line;
	bool first = true;
	int ret;

	memset(req, 0, sizeof(*req));
	while (pos < end && (*pos == '\r' || *pos == '\n'))
		pos++;		/* llhttp skips these before a request; they count */
	for (;;) {
		ret = khttpd_next_line(&pos, end, &line);
		if (ret < 0 && first && line.p[line.n] == '\n' &&
		    khttpd_line09(line)) {
			pos = line.p + line.n + 1;	/* a 0.9 line's bare LF */
			ret = 1;
		}
		if (ret < 0) {
			req->status = 400;
			return len;
		}
		if (!ret) {
			/* the last line is not complete: judge what came of it */
			req->status = first ? khttpd_request_prefix(line) :
					      khttpd_header_prefix(line, &sc);
			if (!req->status && len > KHTTPD_MAX_HEAD)
				req->status = 431;	/* the byte past the limit */
			return req->status ? len : 0;
		}
		if (first) {
			req->status = khttpd_request_line(line, req, &sc);
			if (!req->status && sc.pri)
				return khttpd_pri(req, pos, buf + len) ? len : 0;
		} else if (line.n) {
			req->status = khttpd_header(line, req, &sc);
		} else {
			break;
		}
		if (req->status)
			return len;
		first = false;
	}
	khttpd_head_end(req, &sc);
	return pos - buf;
}

enum {
	KC_SIZE,	/* hex digits of a chunk size */
	KC_EXT_NAME,	/* ";name" of an extension */
	KC_EXT_VALUE,	/* "=value", a token */
	KC_EXT_QUOTED,	/* '="value"', inside the quotes */
	KC_EXT_ESCAPED,	/* ... after a backslash */
	KC_EXT_QUOTE_END,
	KC_SIZE_LF,
	KC_DATA,
	KC_DATA_CR,
	KC_DATA_LF,
	KC_TRAILER_START,	/* at the start of a trailer line */
	KC_TRAILER_NAME,
	KC_TRAILER_VALUE,
	KC_TRAILER_LF,
	KC_END_LF,
};

/*
 * One byte of a chunk size line, as llhttp reads it: hex digits, then
 * extensions ";name", ";name=token" or ';name="quoted"' (no blanks), then
 * CRLF. ck->digits: the digits, name or value so far is not empty. Returns
 * 0, or 400.
 */
static int khttpd_chunk_line(struct khttpd_chunked *ck, unsigned char ch)
{
	bool ctl = (ch < ' ' && ch != '\t') || ch == 0x7f;

	switch (ck->state) {
	case KC_SIZE:
		if (isxdigit(ch)) {
			if (ck->left >> 60)
				return 400;	/* past 64 bits */
			ck->left = ck->left * 16 + hex_to_bin(ch);
			ck->digits = true;
			return 0;
		}
		break;
	case KC_EXT_NAME:
		if (khttpd_is_tchar(ch)) {
			ck->digits = true;
			return 0;
		}
		if (ch == '=') {
			ck->state = KC_EXT_VALUE;
			ck->digits = false;
			return 0;
		}
		break;
	case KC_EXT_VALUE:
		if (ch == '"' && !ck->digits) {
			ck->state = KC_EXT_QUOTED;
			return 0;
		}
		if (khttpd_is_tchar(ch)) {
			ck->digits = true;
			return 0;
		}
		break;
	case KC_EXT_QUOTED:
		if (ctl)
			return 400;
		if (ch == '"')
			ck->state = KC_EXT_QUOTE_END;
		else if (ch == '\\')
			ck->state = KC_EXT_ESCAPED;
		return 0;
	case KC_EXT_ESCAPED:
		ck->state = KC_EXT_QUOTED;
		return ctl ? 400 : 0;
	case KC_EXT_QUOTE_END:
		ck->digits = true;
		break;
	}
	/*
	 * A ';' or the CR: after digits or a name (not after nothing), or after
	 * a value, however short.
	 */
	if (ch != ';' && ch != '\r')
		return 400;
	if (!ck->digits && ck->state != KC_EXT_VALUE)
		return 400;
	ck->state = ch == ';' ? KC_EXT_NAME : KC_SIZE_LF;
	ck->digits = false;
	return 0;
}

/* One byte of a trailer line: a header line (name, colon, value) or CRLF. */
static int khttpd_trailer_byte(struct khttpd_chunked *ck, unsigned char ch)
{
	switch (ck->state) {
	case KC_TRAILER_START:
		if (ch == '\r') {
			ck->state = KC_END_LF;
			return 0;
		}
		ck->state = KC_TRAILER_NAME;
		return khttpd_is_tchar(ch) ? 0 : 400;
	case KC_TRAILER_NAME:
		if (ch == ':')
			ck->state = KC_TRAILER_VALUE;
		return khttpd_is_tchar(ch) || ch == ':' ? 0 : 400;
	case KC_TRAILER_VALUE:
		if (ch == '\r')
			ck->state = KC_TRAILER_LF;
		else if ((ch < ' ' && ch != '\t') || ch == 0x7f)
			return 400;
		return 0;
	case KC_TRAILER_LF:
		ck->state = KC_TRAILER_START;
		return ch == '\n' ? 0 : 400;
	default:	/* KC_END_LF */
		return ch == '\n' ? 1 : 400;
	}
}

int khttpd_chunked_skip(struct khttpd_chunked *ck, const char *buf,
			size_t len, size_t *used)
{
	size_t i = 0, n;
	int ret = 0;

	while (i < len && !ret) {
		unsigned char ch = buf[i];

		if (ck->state == KC_DATA) {
			n = min_t(u64, ck->left, len - i);
			ck->left -= n;
			ck->total += n;
			i += n;
			/* as the core: the data bytes that came pass the limit */
			if (ck->total > KHTTPD_MAX_BODY)
				ret = 413;
			else if (!ck->left)
				ck->state = KC_DATA_CR;
			continue;
		}
		i++;
		if (ck->state >= KC_TRAILER_START) {
			if (++ck->trailer > KHTTPD_MAX_HEAD)
				ret = 431;
			else
				ret = khttpd_trailer_byte(ck, ch);
			continue;
		}
		switch (ck->state) {
		case KC_SIZE_LF:
			if (ch != '\n')
				ret = 400;
			else
				ck->state = ck->left ? KC_DATA : KC_TRAILER_START;
			break;
		case KC_DATA_CR:
			ck->state = KC_DATA_LF;
			if (ch != '\r')
				ret = 400;
			break;
		case KC_DATA_LF:
			ck->state = KC_SIZE;
			ck->digits = false;
			if (ch != '\n')
				ret = 400;
			break;
		default:
			ret = khttpd_chunk_line(ck, ch);
			break;
		}
	}
	*used = i;
	return ret;
}
