// SPDX-License-Identifier: GPL-2.0
/*
 * khttpd request-head parser (see khttpd_parse.h).
 *
 * Lines end in CRLF (a bare LF is malformed, as in llhttp). The request line
 * is METHOD SP TARGET SP HTTP/1.0 or HTTP/1.1, where each SP may be a run of
 * spaces, as llhttp accepts; a method token that llhttp does not know is a
 * malformed request (400), one it knows but khttpd does not serve is 405.
 * Header names are tokens followed directly by a colon; obsolete line
 * folding and control bytes in values are malformed.
 */
#include <linux/ctype.h>
#include <linux/kernel.h>
#include <linux/string.h>

#include "khttpd_parse.h"

static const char * const khttpd_known_methods[] = {
	"DELETE", "POST", "PUT", "CONNECT", "OPTIONS", "TRACE", "COPY",
	"LOCK", "MKCOL", "MOVE", "PROPFIND", "PROPPATCH", "SEARCH", "UNLOCK",
	"BIND", "REBIND", "UNBIND", "ACL", "REPORT", "MKACTIVITY", "CHECKOUT",
	"MERGE", "M-SEARCH", "NOTIFY", "SUBSCRIBE", "UNSUBSCRIBE", "PATCH",
	"PURGE", "MKCALENDAR", "LINK", "UNLINK", "SOURCE", "QUERY",
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

/*
 * The next line from *pos, without its CRLF: 1, or 0 if no LF before end, or
 * -1 for a line that ends in a bare LF.
 */
static int khttpd_next_line(const char **pos, const char *end,
			    struct khttpd_span *line)
{
	const char *start = *pos;
	const char *lf = memchr(start, '\n', end - start);

	if (!lf)
		return 0;
	if (lf == start || lf[-1] != '\r')
		return -1;
	*pos = lf + 1;
	line->p = start;
	line->n = lf - 1 - start;
	return 1;
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

static int khttpd_request_line(struct khttpd_span line, struct khttpd_req *req)
{
	const char *p = line.p, *end = line.p + line.n;
	struct khttpd_span method, target, version, path;
	size_t i;

	method.p = p;
	while (p < end && khttpd_is_tchar(*p))
		p++;
	method.n = p - method.p;
	if (!method.n || p >= end || *p != ' ')
		return 400;
	while (p < end && *p == ' ')
		p++;
	target.p = p;
	while (p < end && (unsigned char)*p > ' ' && *p != 0x7f)
		p++;
	target.n = p - target.p;
	if (!target.n || p >= end || *p != ' ')
		return 400;
	while (p < end && *p == ' ')
		p++;
	version.p = p;
	version.n = end - version.p;

	if (khttpd_span_is(version, "HTTP/1.1"))
		req->http10 = false;
	else if (khttpd_span_is(version, "HTTP/1.0"))
		req->http10 = true;
	else
		return 400;

	if (khttpd_span_is(method, "GET")) {
		req->method = KHTTPD_GET;
	} else if (khttpd_span_is(method, "HEAD")) {
		req->method = KHTTPD_HEAD;
	} else {
		for (i = 0; i < ARRAY_SIZE(khttpd_known_methods); i++)
			if (khttpd_span_is(method, khttpd_known_methods[i]))
				break;
		if (i == ARRAY_SIZE(khttpd_known_methods))
			return 400;
		req->method = KHTTPD_OTHER;
	}
	/* The core looks at the target only for the methods it serves. */
	if (khttpd_target_path(target, &path))
		return req->method == KHTTPD_OTHER ? 0 : 400;
	req->path = path.p;
	req->path_len = path.n;
	req->root = khttpd_span_is(path, "/");
	return 0;
}

/* Connection: a comma-separated list of tokens. */
static void khttpd_connection(struct khttpd_span v, bool *close, bool *keep)
{
	while (v.n) {
		const char *comma = memchr(v.p, ',', v.n);
		struct khttpd_span tok = { v.p, comma ? comma - v.p : v.n };

		khttpd_trim(&tok);
		if (khttpd_span_ieq(tok, "close"))
			*close = true;
		else if (khttpd_span_ieq(tok, "keep-alive"))
			*keep = true;
		if (!comma)
			break;
		v.n -= comma + 1 - v.p;
		v.p = comma + 1;
	}
}

/* Content-Length: digits only; saturates above the body limit. */
static int khttpd_content_length(struct khttpd_span v, u64 *out)
{
	u64 n = 0;
	size_t i;

	if (!v.n)
		return -EINVAL;
	for (i = 0; i < v.n; i++) {
		if (!isdigit(v.p[i]))
			return -EINVAL;
		if (n <= KHTTPD_MAX_BODY)
			n = n * 10 + (v.p[i] - '0');
	}
	*out = n;
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
			 bool *close, bool *keep, bool *has_len, bool *chunked)
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
		khttpd_connection(value, close, keep);
	} else if (khttpd_span_ieq(name, "content-length")) {
		if (khttpd_content_length(value, &len))
			return 400;
		if (*has_len)
			return 400;	/* llhttp refuses a repeated length */
		*has_len = true;
		req->body_len = len;
	} else if (khttpd_span_ieq(name, "transfer-encoding")) {
		/* Only a body whose last coding is chunked can be framed. */
		const char *last = value.p + value.n;

		while (last > value.p && last[-1] != ',' && last[-1] != ' ' &&
		       last[-1] != '\t')
			last--;
		value.n -= last - value.p;
		value.p = last;
		if (!khttpd_span_ieq(value, "chunked"))
			return 400;
		*chunked = true;
	}
	return 0;
}

size_t khttpd_parse(const char *buf, size_t len, struct khttpd_req *req)
{
	const char *pos = buf, *end = buf + len;
	bool close = false, keep = false, has_len = false, chunked = false;
	struct khttpd_span line;
	size_t head;
	int ret;

	memset(req, 0, sizeof(*req));
	ret = khttpd_next_line(&pos, end, &line);
	if (!ret)
		return 0;
	req->status = ret < 0 ? 400 : khttpd_request_line(line, req);
	if (req->status)
		return len;

	for (;;) {
		ret = khttpd_next_line(&pos, end, &line);
		if (!ret)
			return 0;
		if (ret < 0) {
			req->status = 400;
			return len;
		}
		if (!line.n)
			break;
		if (line.p[0] == ' ' || line.p[0] == '\t') {
			req->status = 400;	/* obsolete line folding */
			return len;
		}
		req->status = khttpd_header(line, req, &close, &keep, &has_len,
					    &chunked);
		if (req->status)
			return len;
	}

	head = pos - buf;
	if (head > KHTTPD_MAX_HEAD)
		req->status = 431;
	else if (chunked && has_len)
		req->status = 400;
	else if (req->body_len > KHTTPD_MAX_BODY)
		req->status = 413;

	/* As llhttp_should_keep_alive(). */
	if (req->http10)
		req->keep_alive = keep;
	else
		req->keep_alive = !close;
	req->chunked = chunked;
	return head;
}

enum {
	KC_SIZE,	/* hex digits of a chunk size */
	KC_EXT,		/* ";extension" up to CR */
	KC_SIZE_LF,
	KC_DATA,
	KC_DATA_CR,
	KC_DATA_LF,
	KC_TRAILER_START,	/* at the start of a trailer line */
	KC_TRAILER,
	KC_TRAILER_LF,
	KC_END_LF,
};

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
			i += n;
			if (!ck->left)
				ck->state = KC_DATA_CR;
			continue;
		}
		i++;
		if (ck->state >= KC_TRAILER_START && ++ck->trailer > KHTTPD_MAX_HEAD) {
			ret = 431;
			break;
		}
		switch (ck->state) {
		case KC_SIZE:
			if (isxdigit(ch)) {
				ck->left = ck->left * 16 + hex_to_bin(ch);
				ck->digits = true;
				if (ck->left > KHTTPD_MAX_BODY)
					ret = 413;
			} else if (ch == ';' && ck->digits) {
				ck->state = KC_EXT;
			} else if (ch == '\r' && ck->digits) {
				ck->state = KC_SIZE_LF;
			} else {
				ret = 400;
			}
			break;
		case KC_EXT:
			if (ch == '\r')
				ck->state = KC_SIZE_LF;
			else if (ch == '\n')
				ret = 400;
			break;
		case KC_SIZE_LF:
			if (ch != '\n') {
				ret = 400;
			} else if (!ck->left) {
				ck->state = KC_TRAILER_START;
			} else {
				ck->total += ck->left;
				if (ck->total > KHTTPD_MAX_BODY)
					ret = 413;
				ck->state = KC_DATA;
			}
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
		case KC_TRAILER_START:
			ck->state = ch == '\r' ? KC_END_LF : KC_TRAILER;
			break;
		case KC_TRAILER:
			if (ch == '\r')
				ck->state = KC_TRAILER_LF;
			break;
		case KC_TRAILER_LF:
			ck->state = KC_TRAILER_START;
			if (ch != '\n')
				ret = 400;
			break;
		case KC_END_LF:
			ret = ch == '\n' ? 1 : 400;
			break;
		}
	}
	*used = i;
	return ret;
}
