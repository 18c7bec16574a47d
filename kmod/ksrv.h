/* SPDX-License-Identifier: GPL-2.0 */
/*
 * ksrv: the listener and connection bookkeeping shared by kecho and khttpd.
 *
 * One kthread accepts; each connection is served either by a work item on a
 * CMWQ workqueue (bound or unbound) or by a kthread of its own, at most
 * max_conns of them served or queued at once. Every live
 * connection is on a list, so stopping the server shuts the listener down,
 * shuts every connection's socket down (which wakes any worker blocked in
 * recvmsg or sendmsg), waits for every worker and frees everything.
 */
#ifndef KSRV_H
#define KSRV_H

#include <linux/atomic.h>
#include <linux/cpumask.h>
#include <linux/list.h>
#include <linux/mutex.h>
#include <linux/net.h>
#include <linux/sched.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

/* The longest idle_timeout a module accepts, in seconds (a day). */
#define KSRV_MAX_IDLE_S 86400
/* The default and the largest max_conns a module accepts. */
#define KSRV_DEFAULT_MAX_CONNS 1024
#define KSRV_MAX_CONNS 65536

enum ksrv_mode {
	KSRV_WQ_UNBOUND,
	KSRV_WQ_BOUND,
	KSRV_KTHREAD,
};

struct ksrv {
	/* Set by the module before ksrv_start(). */
	const char *name;
	enum ksrv_mode mode;
	/* Serves one connection until it ends; the caller closes the socket. */
	void (*serve)(struct socket *sock);
	/*
	 * A connection silent this long (jiffies) is closed, and so is one
	 * whose peer takes longer than this to accept one ksrv_send(); 0: never.
	 */
	long idle_timeout;
	/*
	 * Connections served or queued at once; past it a new connection is
	 * closed at accept, counted in refused, and logged (rate-limited).
	 */
	int max_conns;
	/*
	 * CPUs the listener and kthread-mode workers run on (ksrv_set_cpus());
	 * empty: any. A bound workqueue runs its work where the listener queued
	 * it; an unbound one is made with WQ_SYSFS so that user space pins it
	 * through /sys/devices/virtual/workqueue/<name>/cpumask (the kernel does
	 * not export apply_workqueue_attrs() to modules).
	 */
	struct cpumask cpus;

	/* Private. */
	struct socket *listen;
	struct task_struct *listener;
	struct workqueue_struct *wq;
	struct mutex lock;		/* protects conns, dead, stopping */
	struct list_head conns;		/* connections being served */
	struct list_head dead;		/* kthread mode: finished, not yet reaped */
	bool stopping;
	atomic_t live;			/* entries on conns */
	atomic_t refused;		/* connections closed at max_conns */
	atomic_t next_id;
	wait_queue_head_t idle;		/* woken when live drops */
};

int ksrv_set_cpus(struct ksrv *srv, const char *list);
int ksrv_start(struct ksrv *srv, u16 port, int backlog, bool reuseaddr);
void ksrv_stop(struct ksrv *srv);

int ksrv_recv(struct socket *sock, void *buf, size_t len);
int ksrv_send(struct socket *sock, const void *buf, size_t len);
void ksrv_set_rcvtimeo(struct socket *sock, long timeo);

#endif /* KSRV_H */
