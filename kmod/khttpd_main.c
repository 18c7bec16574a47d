// SPDX-License-Identifier: GPL-2.0
/*
 * khttpd: in-kernel HTTP/1.1 server for tcp-zoo, on a CMWQ workqueue.
 *
 * GET / and HEAD / answer the benchmark page with the bytes of
 * servers/core/WIRE.md (taken from wire.json at build time); other paths get
 * 404, other known methods 405 with Allow, a malformed request 400 and a
 * header section over 8 KiB 431 (both then close). Keep-alive follows
 * HTTP/1.1 and HTTP/1.0 rules; pipelined requests are answered in order.
 *
 * With root=DIR, GET and HEAD serve DIR's files and directory listings
 * instead, as the user-space core does with --root (khttpd_files.c): a file
 * is read through the output buffer a piece at a time, so a connection holds
 * no more memory whatever the file's size.
 */
#include <linux/dcache.h>
#include <linux/fs.h>
#include <linux/kernel.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/time.h>
#include <linux/timekeeping.h>
#include <net/sock.h>

#include "khttpd_files.h"
#include "khttpd_parse.h"
#include "khttpd_wire.h"
#include "ksrv.h"

/* Room for a full header section plus what may follow it in one read. */
#define KHTTPD_IN_SIZE (KHTTPD_MAX_HEAD + 4096)
#define KHTTPD_OUT_SIZE (16 * 1024)
/* Room for any one response this server composes (checked below). */
#define KHTTPD_OUT_RESERVE 1024
#define KHTTPD_DATE_LEN 29	/* "Mon, 23 Nov 2026 12:00:00 GMT" */
/*
 * The lingering close reads at most this much, for at most a second in all:
 * the core's Settings.linger_bytes and linger_seconds.
 */
#define KHTTPD_DRAIN_BYTES (1024 * 1024)
#define KHTTPD_DRAIN_TIME HZ

#define KHTTPD_HEAD_FMT \
	"HTTP/1.1 %d %s\r\nServer: %s\r\nDate: %s\r\n" \
	"Content-Type: %s\r\nContent-Length: %zu\r\n%s%s\r\n"
/*
 * The longest response: the format with every field at its longest (the
 * format's own conversions count as room to spare), and the NUL scnprintf
 * writes. A body that does not fit fails the build instead of being dropped.
 */
#define KHTTPD_MAX_RESPONSE \
	(sizeof(KHTTPD_HEAD_FMT) + sizeof("18446744073709551615") + \
	 KHTTPD_MAX_REASON_LEN + sizeof(KHTTPD_SERVER) + KHTTPD_DATE_LEN + \
	 KHTTPD_MAX_TYPE_LEN + sizeof("Allow: " KHTTPD_ALLOW "\r\n") + \
	 sizeof("Connection: keep-alive\r\n") + KHTTPD_MAX_BODY_LEN)
static_assert(KHTTPD_MAX_RESPONSE <= KHTTPD_OUT_RESERVE,
	      "a response in servers/core/wire.json outgrows KHTTPD_OUT_RESERVE");

/* The head of a file or listing (root=); its body follows separately. */
#define KHTTPD_FILE_HEAD_FMT \
	"HTTP/1.1 200 OK\r\nServer: %s\r\nDate: %s\r\n" \
	"Content-Type: %s\r\nContent-Length: %llu\r\n%s%s%s%s\r\n"
static_assert(sizeof(KHTTPD_FILE_HEAD_FMT) + sizeof(KHTTPD_SERVER) +
	      2 * KHTTPD_DATE_LEN + KHTTPD_MAX_MIME_LEN +
	      sizeof("18446744073709551615") + sizeof("Last-Modified: \r\n") +
	      sizeof("Connection: keep-alive\r\n") <= KHTTPD_OUT_RESERVE,
	      "a file's head outgrows KHTTPD_OUT_RESERVE");

enum khttpd_conn_hdr {
	KHTTPD_KEEP,		/* HTTP/1.1 kept alive: no Connection header */
	KHTTPD_CLOSE,
	KHTTPD_KEEP_10,		/* HTTP/1.0 that asked for keep-alive */
};

static ushort port = 8000;
module_param(port, ushort, 0444);
MODULE_PARM_DESC(port, "TCP port to listen on (default 8000)");

static int backlog = 1024;
module_param(backlog, int, 0444);
MODULE_PARM_DESC(backlog, "listen() backlog (default 1024)");

static bool bound;
module_param(bound, bool, 0444);
MODULE_PARM_DESC(bound, "use a bound (per-CPU) workqueue instead of an unbound one");

static bool reuseaddr = true;
module_param(reuseaddr, bool, 0444);
MODULE_PARM_DESC(reuseaddr, "set SO_REUSEADDR on the listener (default 1)");

static uint idle_timeout = 30;
module_param(idle_timeout, uint, 0444);
MODULE_PARM_DESC(idle_timeout, "close a connection silent (or not reading) this many seconds; 0: never (default 30)");

static int max_conns = KSRV_DEFAULT_MAX_CONNS;
module_param(max_conns, int, 0444);
MODULE_PARM_DESC(max_conns,
		 "connections served or queued at once; past it new ones are closed at accept (default 1024)");

static uint header_timeout = 10;
module_param(header_timeout, uint, 0444);
MODULE_PARM_DESC(header_timeout,
		 "close a client whose request (head and body) is not complete this many seconds after its first byte; 0: never (default 10)");

static char *root;
module_param(root, charp, 0444);
MODULE_PARM_DESC(root, "serve this directory's files and listings instead of the page (default: none)");

static char *cpus;
module_param(cpus, charp, 0444);
MODULE_PARM_DESC(cpus,
		 "CPU list (e.g. 1-3) for the listener and kthread workers; an unbound workqueue is pinned through its sysfs cpumask (default: any)");

/* The answer to a request whose body is still being read (and dropped). */
struct khttpd_pending {
	bool active;
	bool chunked;
	bool head_only;
	bool file;			/* a path under root=, in the conn's path */
	bool last;			/* nothing after this request is read */
	int code;
	enum khttpd_conn_hdr conn_hdr;
	u64 skip;			/* Content-Length bytes still to drop */
	struct khttpd_chunked ck;
};

struct khttpd_conn {
	struct socket *sock;
	size_t in_start;		/* in[in_start..in_end) is unparsed */
	size_t in_end;
	size_t out_len;
	struct khttpd_pending pend;
	unsigned long req_since;	/* jiffies the request being read began, or 0 */
	time64_t date_sec;
	char date[KHTTPD_DATE_LEN + 1];
	size_t path_len;		/* the pending request's decoded path */
	char path[KHTTPD_MAX_HEAD];
	char scratch[KHTTPD_MAX_HEAD + 2];
	char in[KHTTPD_IN_SIZE];
	char out[KHTTPD_OUT_SIZE];
};

static const struct khttpd_status *khttpd_status(int code)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(khttpd_statuses); i++)
		if (khttpd_statuses[i].code == code)
			return &khttpd_statuses[i];
	return &khttpd_statuses[1];	/* 400 */
}

/* An IMF-fixdate, as Date and Last-Modified carry it. */
static void khttpd_fmt_date(char *buf, size_t size, time64_t t)
{
	static const char * const days[] = {
		"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat",
	};
	static const char * const months[] = {
		"Jan", "Feb", "Mar", "Apr", "May", "Jun",
		"Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
	};
	struct tm tm;

	time64_to_tm(t, 0, &tm);
	scnprintf(buf, size, "%s, %02d %s %04ld %02d:%02d:%02d GMT",
		  days[tm.tm_wday], tm.tm_mday, months[tm.tm_mon],
		  tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec);
}

/* The Date value, formatted once per second. */
static const char *khttpd_date(struct khttpd_conn *c)
{
	time64_t now = ktime_get_real_seconds();

	if (now == c->date_sec && c->date[0])
		return c->date;
	khttpd_fmt_date(c->date, sizeof(c->date), now);
	c->date_sec = now;
	return c->date;
}

static int khttpd_flush(struct khttpd_conn *c)
{
	int err = 0;

	if (c->out_len)
		err = ksrv_send(c->sock, c->out, c->out_len);
	c->out_len = 0;
	return err;
}

/* Append one response to the output buffer, flushing first if it is full. */
static int khttpd_respond(struct khttpd_conn *c, int code, bool head_only,
			  enum khttpd_conn_hdr conn_hdr)
{
	const struct khttpd_status *st = khttpd_status(code);
	const char *type = code == 200 ? KHTTPD_PAGE_TYPE : KHTTPD_ERROR_TYPE;
	const char *body = code == 200 ? KHTTPD_PAGE_BODY : st->body;
	size_t body_len = strlen(body);
	char *out;
	size_t room;
	int n;

	if (KHTTPD_OUT_SIZE - c->out_len < KHTTPD_OUT_RESERVE) {
		n = khttpd_flush(c);
		if (n)
			return n;
	}
	/* room >= KHTTPD_OUT_RESERVE >= KHTTPD_MAX_RESPONSE: all of it fits. */
	out = c->out + c->out_len;
	room = KHTTPD_OUT_SIZE - c->out_len;
	n = scnprintf(out, room, KHTTPD_HEAD_FMT,
		      code, st->reason, KHTTPD_SERVER, khttpd_date(c), type, body_len,
		      code == 405 ? "Allow: " KHTTPD_ALLOW "\r\n" : "",
		      conn_hdr == KHTTPD_CLOSE ? "Connection: close\r\n" :
		      conn_hdr == KHTTPD_KEEP_10 ? "Connection: keep-alive\r\n" : "");
	if (!head_only) {
		memcpy(out + n, body, body_len);
		n += body_len;
	}
	c->out_len += n;
	return 0;
}

/* code if wire.json gives it (403 and 500 are the core's), else 404. */
static int khttpd_known(int code)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(khttpd_statuses); i++)
		if (khttpd_statuses[i].code == code)
			return code;
	return 404;
}

/* Append the head of a 200 with a body of len bytes (root=). */
static int khttpd_file_head(struct khttpd_conn *c, const char *type, u64 len,
			    const char *lastmod, enum khttpd_conn_hdr conn_hdr)
{
	int n;

	if (KHTTPD_OUT_SIZE - c->out_len < KHTTPD_OUT_RESERVE) {
		n = khttpd_flush(c);
		if (n)
			return n;
	}
	c->out_len += scnprintf(c->out + c->out_len, KHTTPD_OUT_SIZE - c->out_len,
				KHTTPD_FILE_HEAD_FMT, KHTTPD_SERVER, khttpd_date(c),
				type, (unsigned long long)len,
				lastmod ? "Last-Modified: " : "",
				lastmod ? lastmod : "", lastmod ? "\r\n" : "",
				conn_hdr == KHTTPD_CLOSE ? "Connection: close\r\n" :
				conn_hdr == KHTTPD_KEEP_10 ? "Connection: keep-alive\r\n" : "");
	return 0;
}

/* Body bytes into the output buffer, flushed each time it fills. */
static int khttpd_sink(void *arg, const char *p, size_t n)
{
	struct khttpd_conn *c = arg;
	size_t k;
	int err;

	while (n) {
		if (c->out_len == KHTTPD_OUT_SIZE) {
			err = khttpd_flush(c);
			if (err)
				return err;
		}
		k = min(n, KHTTPD_OUT_SIZE - c->out_len);
		memcpy(c->out + c->out_len, p, k);
		c->out_len += k;
		p += k;
		n -= k;
	}
	return 0;
}

static int khttpd_send_listing(struct khttpd_conn *c, const struct path *dir,
			       bool head_only, enum khttpd_conn_hdr conn_hdr)
{
	struct khttpd_listing ls;
	ssize_t len;
	int err;

	err = khttpd_listing_read(&ls, dir, c->path, c->path_len);
	if (err == -EACCES || err == -EPERM)
		return khttpd_respond(c, khttpd_known(403), head_only, conn_hdr);
	if (err == -ENOENT || err == -ENOTDIR)
		return khttpd_respond(c, 404, head_only, conn_hdr);
	if (err)	/* over the listing limits, or out of memory */
		return khttpd_respond(c, khttpd_known(500), head_only, conn_hdr);
	len = khttpd_listing_emit(&ls, c->path, c->path_len, NULL, NULL);
	err = khttpd_file_head(c, KHTTPD_LISTING_TYPE, len, NULL, conn_hdr);
	if (!err && !head_only) {
		len = khttpd_listing_emit(&ls, c->path, c->path_len, khttpd_sink, c);
		err = len < 0 ? len : 0;
	}
	khttpd_listing_free(&ls);
	return err;
}

/*
 * A regular file: its head, then its bytes read into the output buffer a
 * piece at a time and sent (each piece within the send timeout, as the core
 * counts a slow reader's progress as activity). A file that shrinks under
 * the transfer ends the connection: Content-Length cannot be kept.
 */
static int khttpd_send_file(struct khttpd_conn *c, const struct path *path,
			    bool head_only, enum khttpd_conn_hdr conn_hdr)
{
	char lastmod[KHTTPD_DATE_LEN + 1];
	struct name_snapshot name;
	const char *type;
	struct kstat st;
	struct file *f;
	loff_t pos = 0;
	u64 left;
	ssize_t n;
	int err;

	f = dentry_open(path, O_RDONLY | O_LARGEFILE, current_cred());
	if (IS_ERR(f)) {
		err = PTR_ERR(f);
		return khttpd_respond(c, err == -EACCES || err == -EPERM ?
				      khttpd_known(403) : 404, head_only, conn_hdr);
	}
	err = vfs_getattr(&f->f_path, &st, STATX_SIZE | STATX_MTIME,
			  AT_STATX_SYNC_AS_STAT);
	if (err) {
		fput(f);
		return khttpd_respond(c, khttpd_known(500), head_only, conn_hdr);
	}
	take_dentry_name_snapshot(&name, path->dentry);
	type = khttpd_content_type(name.name.name, name.name.len);
	release_dentry_name_snapshot(&name);
	khttpd_fmt_date(lastmod, sizeof(lastmod), st.mtime.tv_sec);
	err = khttpd_file_head(c, type, st.size, lastmod, conn_hdr);
	left = head_only ? 0 : st.size;
	while (!err && left) {
		if (c->out_len == KHTTPD_OUT_SIZE) {
			err = khttpd_flush(c);
			continue;
		}
		n = kernel_read(f, c->out + c->out_len,
				min_t(u64, KHTTPD_OUT_SIZE - c->out_len, left), &pos);
		if (n <= 0) {
			err = n ? n : -EIO;
			break;
		}
		c->out_len += n;
		left -= n;
	}
	fput(f);
	return err;
}

/* Answer the pending request for a path under root=. 0 or -errno (close). */
static int khttpd_respond_path(struct khttpd_conn *c, bool head_only,
			       enum khttpd_conn_hdr conn_hdr)
{
	struct path path;
	int err;

	if (khttpd_files_resolve(c->path, c->path_len, c->scratch, &path))
		return khttpd_respond(c, 404, head_only, conn_hdr);
	if (d_is_dir(path.dentry))
		err = khttpd_send_listing(c, &path, head_only, conn_hdr);
	else if (d_is_reg(path.dentry))
		err = khttpd_send_file(c, &path, head_only, conn_hdr);
	else	/* a FIFO, device or socket is never opened */
		err = khttpd_respond(c, 404, head_only, conn_hdr);
	path_put(&path);
	return err;
}

static size_t khttpd_unparsed(struct khttpd_conn *c)
{
	return c->in_end - c->in_start;
}

static void khttpd_consume(struct khttpd_conn *c, size_t n)
{
	c->in_start += n;
}

/* Move the unparsed bytes to the start of the buffer, before reading more. */
static void khttpd_compact(struct khttpd_conn *c)
{
	if (!c->in_start)
		return;
	memmove(c->in, c->in + c->in_start, khttpd_unparsed(c));
	c->in_end -= c->in_start;
	c->in_start = 0;
}

/*
 * Drop the pending request's body from the input. Returns 1 once it is all
 * read, 0 if more is needed, or the error status to answer instead.
 */
static int khttpd_skip_body(struct khttpd_conn *c)
{
	struct khttpd_pending *p = &c->pend;
	size_t used;
	int ret;

	if (p->chunked) {
		ret = khttpd_chunked_skip(&p->ck, c->in + c->in_start,
					  khttpd_unparsed(c), &used);
		khttpd_consume(c, used);
		return ret;
	}
	used = min_t(u64, p->skip, khttpd_unparsed(c));
	khttpd_consume(c, used);
	p->skip -= used;
	return !p->skip;
}

/*
 * Answer every complete request in the input buffer, in order; like llhttp,
 * a request is answered once its body has been read. Returns 1 to keep
 * reading, 0 once a response said the connection closes, or -errno.
 */
static int khttpd_process(struct khttpd_conn *c)
{
	struct khttpd_pending *p = &c->pend;
	struct khttpd_req req;
	size_t used;
	int ret;

	for (;;) {
		if (p->active) {
			ret = khttpd_skip_body(c);
			if (!ret)
				return 1;
			p->active = false;
			c->req_since = 0;	/* the next request's clock starts anew */
			if (ret != 1) {
				ret = khttpd_respond(c, ret, false, KHTTPD_CLOSE);
				return ret ? ret : 0;
			}
			if (p->file)
				ret = khttpd_respond_path(c, p->head_only, p->conn_hdr);
			else
				ret = khttpd_respond(c, p->code, p->head_only, p->conn_hdr);
			if (ret)
				return ret;
			if (p->conn_hdr == KHTTPD_CLOSE || p->last)
				return 0;
		}

		/* a head over KHTTPD_MAX_HEAD is judged (431) before the buffer fills */
		used = khttpd_parse(c->in + c->in_start, khttpd_unparsed(c), &req);
		if (!used)
			return 1;
		if (req.status) {
			ret = khttpd_respond(c, req.status, false, KHTTPD_CLOSE);
			return ret ? ret : 0;
		}
		khttpd_consume(c, used);

		memset(p, 0, sizeof(*p));
		p->active = true;
		p->chunked = req.chunked;
		p->skip = req.body_len;
		p->head_only = req.method == KHTTPD_HEAD;
		p->last = req.last;
		if (!req.keep_alive)
			p->conn_hdr = KHTTPD_CLOSE;
		else
			p->conn_hdr = req.version == 10 ? KHTTPD_KEEP_10 : KHTTPD_KEEP;
		if (req.method == KHTTPD_OTHER) {
			p->code = 405;
		} else if (khttpd_files_enabled()) {
			p->file = true;
			c->path_len = khttpd_unquote(req.path, req.path_len, c->path);
		} else {
			p->code = req.root ? 200 : 404;
		}
	}
}

/*
 * After the last response: stop sending, then read (and drop) what the
 * client may still send for a short while, so closing does not answer
 * with a reset that could discard the response before the client reads it.
 * Both the bytes and the time are bounded in all, not per read: a client
 * dripping a byte now and then cannot keep the worker.
 */
static void khttpd_linger(struct khttpd_conn *c)
{
	unsigned long deadline = jiffies + KHTTPD_DRAIN_TIME;
	size_t total = 0;
	long left;
	int n;

	if (kernel_sock_shutdown(c->sock, SHUT_WR))
		return;
	while (total < KHTTPD_DRAIN_BYTES) {
		left = (long)(deadline - jiffies);
		if (left <= 0)
			break;
		ksrv_set_rcvtimeo(c->sock, left);
		n = ksrv_recv(c->sock, c->in, sizeof(c->in));
		if (n <= 0)
			break;
		total += n;
	}
}

/*
 * The receive timeout for the next read: the idle timeout, or less while a
 * request is being read (0 once its header timeout has passed). A request's
 * clock starts with its first byte, or when the previous response was
 * composed if its bytes came with that request's, and runs until its body
 * has been read: bytes that do not complete it never extend its life.
 */
static long khttpd_recv_timeout(struct khttpd_conn *c)
{
	long timeo = idle_timeout ? idle_timeout * HZ : MAX_SCHEDULE_TIMEOUT;
	long left;

	if (!header_timeout || (!c->pend.active && !khttpd_unparsed(c))) {
		c->req_since = 0;
		return timeo;
	}
	if (!c->req_since)
		c->req_since = jiffies ? jiffies : 1;
	left = (long)(c->req_since + header_timeout * HZ - jiffies);
	if (left <= 0)
		return 0;
	return min(timeo, left);
}

static void khttpd_serve(struct socket *sock)
{
	struct khttpd_conn *c = kvzalloc(sizeof(*c), GFP_KERNEL);
	long timeo;
	int more, n;

	if (!c)
		return;
	c->sock = sock;
	for (;;) {
		more = khttpd_process(c);
		if (more < 0)
			break;
		if (khttpd_flush(c))
			break;
		if (!more) {
			khttpd_linger(c);
			break;
		}
		timeo = khttpd_recv_timeout(c);
		if (!timeo)
			break;		/* the request head took too long */
		ksrv_set_rcvtimeo(sock, timeo);
		khttpd_compact(c);
		n = ksrv_recv(sock, c->in + c->in_end, KHTTPD_IN_SIZE - c->in_end);
		if (n <= 0)
			break;
		c->in_end += n;
	}
	kvfree(c);
}

static struct ksrv khttpd_srv = {
	.name = "khttpd",
	.serve = khttpd_serve,
};

static int __init khttpd_init(void)
{
	int err;

	if (backlog <= 0 || idle_timeout > KSRV_MAX_IDLE_S ||
	    header_timeout > KSRV_MAX_IDLE_S)
		return -EINVAL;
	khttpd_srv.idle_timeout = idle_timeout * HZ;
	khttpd_srv.max_conns = max_conns;
	khttpd_srv.mode = bound ? KSRV_WQ_BOUND : KSRV_WQ_UNBOUND;
	err = ksrv_set_cpus(&khttpd_srv, cpus);
	if (err) {
		pr_err("khttpd: cpus=%s is not a list of online CPUs\n", cpus);
		return err;
	}
	err = khttpd_files_init(root);
	if (err) {
		pr_err("khttpd: root=%s is not a directory to serve: %d\n", root, err);
		return err;
	}
	err = ksrv_start(&khttpd_srv, port, backlog, reuseaddr);
	if (err) {
		pr_err("khttpd: cannot listen on port %u: %d\n", port, err);
		khttpd_files_exit();
		return err;
	}
	if (khttpd_files_enabled())
		pr_info("khttpd: listening on port %u, serving %s (lookups confined by %s)\n",
			port, root, khttpd_files_scope());
	else
		pr_info("khttpd: listening on port %u\n", port);
	return 0;
}

static void __exit khttpd_exit(void)
{
	ksrv_stop(&khttpd_srv);
	khttpd_files_exit();
	pr_info("khttpd: stopped\n");
}

module_init(khttpd_init);
module_exit(khttpd_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("tcp-zoo");
MODULE_DESCRIPTION("In-kernel HTTP/1.1 server on CMWQ: the tcp-zoo page, or files under root=");
