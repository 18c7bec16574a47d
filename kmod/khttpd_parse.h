/* SPDX-License-Identifier: GPL-2.0 */
/*
 * khttpd request-head parser: one HTTP/1.x request line and its header
 * fields, parsed in place from a bounded buffer. Nothing is copied.
 */
#ifndef KHTTPD_PARSE_H
#define KHTTPD_PARSE_H

#include <linux/types.h>

/* A header section (request line included) longer than this gets 431. */
#define KHTTPD_MAX_HEAD 8192
/* A declared body longer than this gets 413. */
#define KHTTPD_MAX_BODY (1024 * 1024)

enum khttpd_method {
	KHTTPD_GET,
	KHTTPD_HEAD,
	KHTTPD_OTHER,	/* a known method that is not served: 405 */
};

struct khttpd_req {
	int status;		/* 0: route it; else 400, 413 or 431, then close */
	enum khttpd_method method;
	int version;		/* 9 (no version), 10, 11 or 20, as llhttp takes */
	bool keep_alive;
	bool last;		/* answer at the head's end, read nothing after */
	bool root;		/* the path is "/" */
	const char *path;	/* the target's path, still percent-encoded */
	size_t path_len;	/* (it points into the parsed buffer) */
	bool chunked;		/* Transfer-Encoding: chunked body follows */
	u64 body_len;		/* Content-Length, to be skipped */
};

/* Where a chunked body decoder stands; zeroed to start. */
struct khttpd_chunked {
	int state;
	u64 left;		/* bytes left in this chunk (or its size so far) */
	u64 total;		/* data bytes so far */
	size_t trailer;		/* trailer bytes so far */
	bool digits;
};

/*
 * Parse the request head at the start of buf, judging its bytes in order as
 * servers/core/WIRE.md's table says. Returns the number of bytes the head
 * takes (req is filled; req->status says whether it is valid), or 0 when
 * more bytes are needed and nothing wrong was seen yet.
 */
size_t khttpd_parse(const char *buf, size_t len, struct khttpd_req *req);

/*
 * Skip chunked body bytes from buf; *used says how many were taken. Returns
 * 1 when the body (with its trailer) is complete, 0 when more bytes are
 * needed, or an error status to answer (400, 413 or 431).
 */
int khttpd_chunked_skip(struct khttpd_chunked *ck, const char *buf,
			size_t len, size_t *used);

#endif /* KHTTPD_PARSE_H */
