/* SPDX-License-Identifier: GPL-2.0 */
/*
 * khttpd static files: request paths resolved strictly beneath the root=
 * directory, content types and directory listings, byte for byte as the
 * user-space core (servers/core/files.py) makes them.
 */
#ifndef KHTTPD_FILES_H
#define KHTTPD_FILES_H

#include <linux/path.h>
#include <linux/types.h>

/* A directory whose entries' names total more than this is not listed. */
#define KHTTPD_LIST_MAX_NAMES (1024 * 1024)
#define KHTTPD_LIST_MAX_ENTRIES 65536

/* Writes n bytes of a response body; 0 or -errno. */
typedef int (*khttpd_sink_fn)(void *arg, const char *p, size_t n);

struct khttpd_entry {
	const char *name;
	u32 off;		/* of the name in names, until it is final */
	u16 len;
	u8 type;		/* DT_* as the directory reported it */
	bool dir;
};

struct khttpd_listing {
	char *names;
	size_t names_len;
	size_t names_cap;
	struct khttpd_entry *ents;
	size_t n;
	size_t cap;
};

int khttpd_files_init(const char *root);
void khttpd_files_exit(void);
bool khttpd_files_enabled(void);
/* Which mechanism keeps lookups beneath the root, for the log. */
const char *khttpd_files_scope(void);

/*
 * Percent-decode src once (as urllib's unquote_to_bytes); returns the length
 * written to dst, which has room for len bytes.
 */
size_t khttpd_unquote(const char *src, size_t len, char *dst);

/*
 * Resolve the decoded request path beneath the root. scratch has room for
 * len + 2 bytes. 0 and *out held, or -errno (the caller answers 404).
 */
int khttpd_files_resolve(const char *dpath, size_t len, char *scratch,
			 struct path *out);

/* The Content-Type of a file by its (final) name, as the core's. */
const char *khttpd_content_type(const char *name, size_t len);

/*
 * Read, classify and sort a directory's entries (dpath: the decoded request
 * path that named it). 0, or -EACCES/-EPERM (403), -E2BIG (too many
 * entries), other -errno.
 */
int khttpd_listing_read(struct khttpd_listing *ls, const struct path *dir,
			const char *dpath, size_t dlen);
void khttpd_listing_free(struct khttpd_listing *ls);
/*
 * Write the listing page through sink (NULL: only count). Returns the
 * body's length, or -errno from the sink.
 */
ssize_t khttpd_listing_emit(const struct khttpd_listing *ls,
			    const char *dpath, size_t dlen,
			    khttpd_sink_fn sink, void *arg);

#endif /* KHTTPD_FILES_H */
