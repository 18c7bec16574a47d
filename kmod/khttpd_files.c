// SPDX-License-Identifier: GPL-2.0
/*
 * khttpd static files (see khttpd_files.h).
 *
 * Confinement: a request path is percent-decoded once; a NUL, a backslash or
 * a ".." segment is refused outright (as the core does), and the rest is
 * looked up from the root= directory as the walk's preset root, so ".."
 * and absolute symlinks can never climb above it. What else the kernel
 * offers is detected at build time (Kbuild, #ifdef): with vfs_path_lookup()
 * exported and LOOKUP_BENEATH defined, the walk fails with -EXDEV on any
 * ".." above the root and any absolute symlink, and LOOKUP_NO_MAGICLINKS
 * refuses /proc magic links; without them, file_open_root() with O_PATH
 * (which opens nothing) walks from the preset root. Either way the result
 * must then pass path_is_under() against the root.
 */
#include <linux/ctype.h>
#include <linux/dcache.h>
#include <linux/err.h>
#include <linux/file.h>
#include <linux/fs.h>
#include <linux/fs_struct.h>
#include <linux/kernel.h>
#include <linux/limits.h>
#include <linux/mm.h>
#include <linux/namei.h>
#include <linux/sched.h>
#include <linux/slab.h>
#include <linux/sort.h>
#include <linux/string.h>

#define KHTTPD_WANT_MIME
#include "khttpd_files.h"
#include "khttpd_wire.h"

#if defined(KHTTPD_HAVE_VFS_PATH_LOOKUP) && defined(LOOKUP_BENEATH)
#define KHTTPD_SCOPE LOOKUP_BENEATH
#define KHTTPD_SCOPE_NAME "LOOKUP_BENEATH"
#else
#define KHTTPD_SCOPE 0
#define KHTTPD_SCOPE_NAME "a preset root and path_is_under()"
#endif
#ifdef LOOKUP_NO_MAGICLINKS
#define KHTTPD_NO_MAGIC LOOKUP_NO_MAGICLINKS
#else
#define KHTTPD_NO_MAGIC 0
#endif

#ifdef KHTTPD_DECLARE_VFS_PATH_LOOKUP
/* Exported, but declared in fs/internal.h only. */
int vfs_path_lookup(struct dentry *dentry, struct vfsmount *mnt,
		    const char *name, unsigned int flags, struct path *path);
#endif

static struct path khttpd_root;		/* the root= directory */
/* The loader's root, where a listed symlink's target is looked up. */
static struct path khttpd_sysroot;
static char *khttpd_root_str;		/* the root's path from there */
static size_t khttpd_root_len;		/* 0 when the root is "/" */
static bool khttpd_enabled;

bool khttpd_files_enabled(void)
{
	return khttpd_enabled;
}

const char *khttpd_files_scope(void)
{
	return KHTTPD_SCOPE_NAME;
}

int khttpd_files_init(const char *root)
{
	char *buf, *p;
	int err;

	if (!root || !*root)
		return 0;
	err = kern_path(root, LOOKUP_FOLLOW | LOOKUP_DIRECTORY, &khttpd_root);
	if (err)
		return err;
	buf = kmalloc(PATH_MAX, GFP_KERNEL);
	if (!buf) {
		err = -ENOMEM;
		goto err_root;
	}
	/* In the loader's context: its root and the root='s path from there. */
	get_fs_root(current->fs, &khttpd_sysroot);
	p = d_path(&khttpd_root, buf, PATH_MAX);
	if (IS_ERR(p)) {
		err = PTR_ERR(p);
		goto err_sys;
	}
	khttpd_root_str = kstrdup(p, GFP_KERNEL);
	if (!khttpd_root_str) {
		err = -ENOMEM;
		goto err_sys;
	}
	khttpd_root_len = strlen(khttpd_root_str);
	if (khttpd_root_len == 1)
		khttpd_root_len = 0;	/* "/" */
	kfree(buf);
	khttpd_enabled = true;
	return 0;

err_sys:
	path_put(&khttpd_sysroot);
	kfree(buf);
err_root:
	path_put(&khttpd_root);
	return err;
}

void khttpd_files_exit(void)
{
	if (!khttpd_enabled)
		return;
	khttpd_enabled = false;
	kfree(khttpd_root_str);
	path_put(&khttpd_sysroot);
	path_put(&khttpd_root);
}

size_t khttpd_unquote(const char *src, size_t len, char *dst)
{
	size_t i = 0, n = 0;
	int hi, lo;

	while (i < len) {
		if (src[i] == '%' && i + 2 < len) {
			hi = hex_to_bin(src[i + 1]);
			lo = hex_to_bin(src[i + 2]);
			if (hi >= 0 && lo >= 0) {
				dst[n++] = (char)(hi << 4 | lo);
				i += 3;
				continue;
			}
		}
		dst[n++] = src[i++];
	}
	return n;
}

/*
 * Look name up with start as the walk's "/" (following a final symlink),
 * with the scope flags where vfs_path_lookup() takes them.
 */
static int khttpd_lookup(const struct path *start, const char *name,
			 unsigned int scope, struct path *out)
{
#ifdef KHTTPD_HAVE_VFS_PATH_LOOKUP
	return vfs_path_lookup(start->dentry, start->mnt, name,
			       LOOKUP_FOLLOW | scope, out);
#else
	struct file *f = file_open_root(start, name, O_PATH, 0);

	if (IS_ERR(f))
		return PTR_ERR(f);
	*out = f->f_path;
	path_get(out);
	fput(f);
	return 0;
#endif
}

/*
 * The lookup name for a decoded path: its segments but empty and "." ones,
 * joined by "/" ("." for none), in buf (room for len + 2). -ENOENT for a
 * path the core refuses: a NUL, a backslash or a ".." segment.
 */
static int khttpd_relpath(const char *dpath, size_t len, char *buf)
{
	size_t i = 0, n = 0, seg;

	if (memchr(dpath, '\0', len) || memchr(dpath, '\\', len))
		return -ENOENT;
	while (i < len) {
		while (i < len && dpath[i] == '/')
			i++;
		seg = i;
		while (i < len && dpath[i] != '/')
			i++;
		if (i == seg || (i - seg == 1 && dpath[seg] == '.'))
			continue;
		if (i - seg == 2 && dpath[seg] == '.' && dpath[seg + 1] == '.')
			return -ENOENT;
		if (n)
			buf[n++] = '/';
		memcpy(buf + n, dpath + seg, i - seg);
		n += i - seg;
	}
	if (!n)
		buf[n++] = '.';
	buf[n] = '\0';
	return 0;
}

int khttpd_files_resolve(const char *dpath, size_t len, char *scratch,
			 struct path *out)
{
	int err;

	err = khttpd_relpath(dpath, len, scratch);
	if (err)
		return err;
	err = khttpd_lookup(&khttpd_root, scratch, KHTTPD_SCOPE | KHTTPD_NO_MAGIC,
			    out);
	if (err)
		return err;
	if (!path_is_under(out, &khttpd_root)) {
		path_put(out);
		return -EXDEV;
	}
	return 0;
}

/* posixpath.splitext: where s's extension starts, or len if it has none. */
static size_t khttpd_splitext(const char *s, size_t len)
{
	size_t dot, i;

	for (dot = len; dot > 0; dot--)
		if (s[dot - 1] == '.')
			break;
	if (!dot)
		return len;
	dot--;
	for (i = 0; i < dot; i++)
		if (s[i] != '.')
			return dot;	/* leading dots do not start an extension */
	return len;
}

static bool khttpd_ext_is(const char *ext, size_t n, const char *key, bool icase)
{
	if (n != strlen(key))
		return false;
	return icase ? !strncasecmp(ext, key, n) : !memcmp(ext, key, n);
}

const char *khttpd_content_type(const char *name, size_t len)
{
	char buf[NAME_MAX + 32];
	size_t ext, i, rlen;
	int rounds = 0;

	if (len > NAME_MAX)
		return KHTTPD_DEFAULT_TYPE;
	memcpy(buf, name, len);
	ext = khttpd_splitext(buf, len);
	/* mimetypes.guess_type: suffix_map, then one encoding, then the type. */
again:
	for (i = 0; i < ARRAY_SIZE(khttpd_suffixes) && ext < len; i++) {
		if (!khttpd_ext_is(buf + ext + 1, len - ext - 1,
				   khttpd_suffixes[i].ext, true))
			continue;
		rlen = strlen(khttpd_suffixes[i].type);
		if (ext + rlen > sizeof(buf) || ++rounds > 4)
			return KHTTPD_DEFAULT_TYPE;
		memcpy(buf + ext, khttpd_suffixes[i].type, rlen);
		len = ext + rlen;
		ext = khttpd_splitext(buf, len);
		goto again;
	}
	for (i = 0; i < ARRAY_SIZE(khttpd_encodings) && ext < len; i++) {
		if (khttpd_ext_is(buf + ext + 1, len - ext - 1,
				  khttpd_encodings[i], false)) {
			len = ext;
			ext = khttpd_splitext(buf, len);
			break;
		}
	}
	if (ext == len)
		return KHTTPD_DEFAULT_TYPE;
	for (i = 0; i < ARRAY_SIZE(khttpd_mimes); i++)
		if (khttpd_ext_is(buf + ext + 1, len - ext - 1,
				  khttpd_mimes[i].ext, true))
			return khttpd_mimes[i].type;
	return KHTTPD_DEFAULT_TYPE;
}

/* Listings. */

struct khttpd_dirctx {
	struct dir_context ctx;
	struct khttpd_listing *ls;
	int err;
	size_t added;
};

/* Grow *buf (cap bytes in use count) to hold need; kvmalloc'ed. */
static int khttpd_grow(void **buf, size_t *cap, size_t used, size_t need,
		       size_t min)
{
	size_t ncap = max(*cap, min);
	void *p;

	if (need <= *cap)
		return 0;
	while (ncap < need)
		ncap *= 2;
	p = kvmalloc(ncap, GFP_KERNEL);
	if (!p)
		return -ENOMEM;
	if (*buf)
		memcpy(p, *buf, used);
	kvfree(*buf);
	*buf = p;
	*cap = ncap;
	return 0;
}

static bool khttpd_fill(struct dir_context *ctx, const char *name, int namlen,
			loff_t offset, u64 ino, unsigned int d_type)
{
	struct khttpd_dirctx *d = container_of(ctx, struct khttpd_dirctx, ctx);
	struct khttpd_listing *ls = d->ls;
	struct khttpd_entry *e;
	size_t cap;
	int err;

	d->added++;	/* "." and ".." too: the pass was not empty */
	if (namlen == 1 && name[0] == '.')
		return true;
	if (namlen == 2 && name[0] == '.' && name[1] == '.')
		return true;
	if (namlen <= 0 || namlen > NAME_MAX ||
	    ls->n >= KHTTPD_LIST_MAX_ENTRIES ||
	    ls->names_len + namlen > KHTTPD_LIST_MAX_NAMES) {
		d->err = -E2BIG;
		return false;
	}
	cap = ls->cap * sizeof(*ls->ents);
	err = khttpd_grow((void **)&ls->ents, &cap, ls->n * sizeof(*ls->ents),
			  (ls->n + 1) * sizeof(*ls->ents), 64 * sizeof(*ls->ents));
	if (!err)
		err = khttpd_grow((void **)&ls->names, &ls->names_cap,
				  ls->names_len, ls->names_len + namlen, 4096);
	ls->cap = cap / sizeof(*ls->ents);
	if (err) {
		d->err = err;
		return false;
	}
	e = &ls->ents[ls->n++];
	e->off = ls->names_len;
	e->len = namlen;
	e->type = d_type;
	e->dir = d_type == DT_DIR;
	memcpy(ls->names + ls->names_len, name, namlen);
	ls->names_len += namlen;
	return true;
}

/*
 * As os.DirEntry.is_dir(): a symlink (or an entry of unknown type) is
 * followed, from the loader's root, as the core's stat() would: 1 for a
 * directory, 0 for anything else or nothing (ENOENT), -errno to leave the
 * entry out (the core skips an entry whose stat fails otherwise). Only the
 * target's type is read, never its bytes.
 */
static int khttpd_follow_is_dir(const struct khttpd_entry *e, const char *rel,
				char *buf)
{
	size_t rlen = strlen(rel);
	struct path p;
	size_t n = 0;
	int err;

	if (khttpd_root_len + rlen + e->len + 3 > PATH_MAX)
		return -ENAMETOOLONG;
	memcpy(buf, khttpd_root_str, khttpd_root_len);
	n = khttpd_root_len;
	buf[n++] = '/';
	if (strcmp(rel, ".")) {
		memcpy(buf + n, rel, rlen);
		n += rlen;
		buf[n++] = '/';
	}
	memcpy(buf + n, e->name, e->len);
	buf[n + e->len] = '\0';
	err = khttpd_lookup(&khttpd_sysroot, buf, 0, &p);
	if (err)
		return err == -ENOENT ? 0 : err;
	err = d_is_dir(p.dentry);
	path_put(&p);
	return err;
}

/* Python's sort of (not is_dir, name + "/" for a directory). */
static int khttpd_entry_cmp(const void *a, const void *b)
{
	const struct khttpd_entry *x = a, *y = b;
	size_t xn = x->len + x->dir, yn = y->len + y->dir, i;
	int cx, cy;

	if (x->dir != y->dir)
		return x->dir ? -1 : 1;
	for (i = 0; i < min(xn, yn); i++) {
		cx = i < x->len ? (unsigned char)x->name[i] : '/';
		cy = i < y->len ? (unsigned char)y->name[i] : '/';
		if (cx != cy)
			return cx - cy;
	}
	return xn < yn ? -1 : xn > yn;
}

int khttpd_listing_read(struct khttpd_listing *ls, const struct path *dir,
			const char *dpath, size_t dlen)
{
	struct khttpd_dirctx d = { .ctx.actor = khttpd_fill, .ls = ls };
	struct file *f;
	char *buf = NULL;
	size_t i, kept;
	int err;

	memset(ls, 0, sizeof(*ls));
	f = dentry_open(dir, O_RDONLY | O_DIRECTORY | O_LARGEFILE,
			current_cred());
	if (IS_ERR(f))
		return PTR_ERR(f);
	do {
		d.added = 0;
		err = iterate_dir(f, &d.ctx);
	} while (!err && !d.err && d.added);
	fput(f);
	if (!err)
		err = d.err;
	if (err)
		goto out;

	for (i = 0; i < ls->n; i++)
		ls->ents[i].name = ls->names + ls->ents[i].off;
	kept = 0;
	for (i = 0; i < ls->n; i++) {
		struct khttpd_entry *e = &ls->ents[i];
		int ret = e->dir;

		if (e->type == DT_LNK || e->type == DT_UNKNOWN) {
			if (!buf) {
				/* The relative path first, then the full one. */
				buf = kmalloc(2 * PATH_MAX + 2, GFP_KERNEL);
				if (!buf) {
					err = -ENOMEM;
					goto out;
				}
				if (dlen + 2 > PATH_MAX + 1 ||
				    khttpd_relpath(dpath, dlen, buf + PATH_MAX + 1)) {
					err = -ENOENT;
					goto out;
				}
			}
			ret = khttpd_follow_is_dir(e, buf + PATH_MAX + 1, buf);
			if (ret < 0)
				continue;
		}
		e->dir = ret;
		ls->ents[kept++] = *e;
	}
	ls->n = kept;
	sort(ls->ents, ls->n, sizeof(*ls->ents), khttpd_entry_cmp, NULL);
out:
	kfree(buf);
	if (err)
		khttpd_listing_free(ls);
	return err;
}

void khttpd_listing_free(struct khttpd_listing *ls)
{
	kvfree(ls->ents);
	kvfree(ls->names);
	memset(ls, 0, sizeof(*ls));
}

struct khttpd_out {
	khttpd_sink_fn sink;
	void *arg;
	ssize_t total;
	int err;
};

static void khttpd_put(struct khttpd_out *o, const char *p, size_t n)
{
	if (o->err || !n)
		return;
	o->total += n;
	if (o->sink)
		o->err = o->sink(o->arg, p, n);
}

static void khttpd_put_str(struct khttpd_out *o, const char *s)
{
	khttpd_put(o, s, strlen(s));
}

/* urllib.parse.quote(s, safe="/"): bytes but A-Z a-z 0-9 _.-~/ as %XX. */
static void khttpd_put_quoted(struct khttpd_out *o, const char *s, size_t n)
{
	size_t i, run = 0;
	char esc[3];

	for (i = 0; i < n; i++) {
		unsigned char c = s[i];

		if (isalnum(c) && c < 0x80)
			continue;
		if (c && strchr("_.-~/", c))
			continue;
		khttpd_put(o, s + run, i - run);
		esc[0] = '%';
		esc[1] = hex_asc_upper_hi(c);
		esc[2] = hex_asc_upper_lo(c);
		khttpd_put(o, esc, 3);
		run = i + 1;
	}
	khttpd_put(o, s + run, n - run);
}

/*
 * The length of the well-formed UTF-8 sequence at s (as Python's decoder
 * accepts it), or 0 if none starts there.
 */
static size_t khttpd_utf8_len(const unsigned char *s, size_t n, u32 *cp)
{
	unsigned char c = s[0];
	unsigned char lo = 0x80, hi = 0xbf;
	size_t len, i;

	if (c < 0x80) {
		*cp = c;
		return 1;
	}
	if (c >= 0xc2 && c <= 0xdf) {
		len = 2;
		*cp = c & 0x1f;
	} else if (c >= 0xe0 && c <= 0xef) {
		len = 3;
		*cp = c & 0x0f;
		if (c == 0xe0)
			lo = 0xa0;
		else if (c == 0xed)
			hi = 0x9f;
	} else if (c >= 0xf0 && c <= 0xf4) {
		len = 4;
		*cp = c & 0x07;
		if (c == 0xf0)
			lo = 0x90;
		else if (c == 0xf4)
			hi = 0x8f;
	} else {
		return 0;
	}
	if (n < len)
		return 0;
	for (i = 1; i < len; i++) {
		if (s[i] < lo || s[i] > hi)
			return 0;
		lo = 0x80;
		hi = 0xbf;
		*cp = *cp << 6 | (s[i] & 0x3f);
	}
	return len;
}

/*
 * The core's display_name(): UTF-8 where it is, "\xNN" for any other byte
 * and for control characters (C0, DEL, C1), then HTML-escaped.
 */
static void khttpd_put_display(struct khttpd_out *o, const char *s, size_t n)
{
	const unsigned char *u = (const unsigned char *)s;
	size_t i = 0, run = 0, len;
	const char *rep;
	char esc[5];
	u32 cp;

	while (i < n) {
		len = khttpd_utf8_len(u + i, n - i, &cp);
		rep = NULL;
		if (!len || cp < 0x20 || (cp >= 0x7f && cp <= 0x9f)) {
			esc[0] = '\\';
			esc[1] = 'x';
			esc[2] = hex_asc_hi(len ? cp : u[i]);
			esc[3] = hex_asc_lo(len ? cp : u[i]);
			esc[4] = '\0';
			rep = esc;
			len = len ? len : 1;
		} else if (cp == '&') {
			rep = "&amp;";
		} else if (cp == '<') {
			rep = "&lt;";
		} else if (cp == '>') {
			rep = "&gt;";
		} else if (cp == '"') {
			rep = "&quot;";
		} else if (cp == '\'') {
			rep = "&#x27;";
		}
		if (rep) {
			khttpd_put(o, s + run, i - run);
			khttpd_put_str(o, rep);
			run = i + len;
		}
		i += len;
	}
	khttpd_put(o, s + run, n - run);
}

ssize_t khttpd_listing_emit(const struct khttpd_listing *ls,
			    const char *dpath, size_t dlen,
			    khttpd_sink_fn sink, void *arg)
{
	struct khttpd_out o = { .sink = sink, .arg = arg };
	bool slash = !dlen || dpath[dlen - 1] != '/';
	size_t i;

	/* The base: the decoded request path, ending in "/". */
	khttpd_put_str(&o, KHTTPD_LIST_HEAD);
	khttpd_put_display(&o, dpath, dlen);
	khttpd_put(&o, "/", slash);
	khttpd_put_str(&o, KHTTPD_LIST_TITLE_END);
	khttpd_put_display(&o, dpath, dlen);
	khttpd_put(&o, "/", slash);
	khttpd_put_str(&o, KHTTPD_LIST_LIST_START);
	for (i = 0; i < ls->n; i++) {
		const struct khttpd_entry *e = &ls->ents[i];

		khttpd_put_str(&o, KHTTPD_LIST_ITEM_START);
		khttpd_put_quoted(&o, dpath, dlen);
		khttpd_put(&o, "/", slash);
		khttpd_put_quoted(&o, e->name, e->len);
		khttpd_put(&o, "/", e->dir);
		khttpd_put_str(&o, KHTTPD_LIST_ITEM_MID);
		khttpd_put_display(&o, e->name, e->len);
		khttpd_put(&o, "/", e->dir);
		khttpd_put_str(&o, KHTTPD_LIST_ITEM_END);
	}
	khttpd_put_str(&o, KHTTPD_LIST_TAIL);
	return o.err ? o.err : o.total;
}
