// SPDX-License-Identifier: GPL-2.0
/*
 * kecho: in-kernel TCP echo server for tcp-zoo.
 *
 * Every byte received is sent back, binary-safe. A connection is served by a
 * work item on a CMWQ workqueue (mode=wq, unbound unless bound=1) or by a
 * kthread of its own (mode=kthread). The worker blocks in sendmsg while the
 * peer does not read, so it stops reading too: memory per connection stays
 * at one buffer plus the socket buffers; a peer that does not take what it is
 * sent within idle_timeout is closed.
 */
#include <linux/kernel.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/string.h>

#include "ksrv.h"

#define KECHO_BUF_SIZE (64 * 1024)

static ushort port = 12345;
module_param(port, ushort, 0444);
MODULE_PARM_DESC(port, "TCP port to listen on (default 12345)");

static int backlog = 1024;
module_param(backlog, int, 0444);
MODULE_PARM_DESC(backlog, "listen() backlog (default 1024)");

static char *mode = "wq";
module_param(mode, charp, 0444);
MODULE_PARM_DESC(mode, "wq: a CMWQ work item per connection; kthread: a kthread per connection");

static bool bound;
module_param(bound, bool, 0444);
MODULE_PARM_DESC(bound, "mode=wq: use a bound (per-CPU) workqueue instead of an unbound one");

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

static char *cpus;
module_param(cpus, charp, 0444);
MODULE_PARM_DESC(cpus,
		 "CPU list (e.g. 1-3) for the listener and kthread workers; an unbound workqueue is pinned through its sysfs cpumask (default: any)");

static void kecho_serve(struct socket *sock)
{
	void *buf = kvmalloc(KECHO_BUF_SIZE, GFP_KERNEL);
	int n;

	if (!buf)
		return;
	for (;;) {
		n = ksrv_recv(sock, buf, KECHO_BUF_SIZE);
		if (n <= 0)
			break;
		if (ksrv_send(sock, buf, n))
			break;
	}
	kvfree(buf);
}

static struct ksrv kecho_srv = {
	.name = "kecho",
	.serve = kecho_serve,
};

static int __init kecho_init(void)
{
	int err;

	if (!strcmp(mode, "wq")) {
		kecho_srv.mode = bound ? KSRV_WQ_BOUND : KSRV_WQ_UNBOUND;
	} else if (!strcmp(mode, "kthread")) {
		kecho_srv.mode = KSRV_KTHREAD;
	} else {
		pr_err("kecho: mode must be wq or kthread\n");
		return -EINVAL;
	}
	if (backlog <= 0 || idle_timeout > KSRV_MAX_IDLE_S)
		return -EINVAL;
	kecho_srv.idle_timeout = idle_timeout * HZ;
	kecho_srv.max_conns = max_conns;
	err = ksrv_set_cpus(&kecho_srv, cpus);
	if (err) {
		pr_err("kecho: cpus=%s is not a list of online CPUs\n", cpus);
		return err;
	}

	err = ksrv_start(&kecho_srv, port, backlog, reuseaddr);
	if (err) {
		pr_err("kecho: cannot listen on port %u: %d\n", port, err);
		return err;
	}
	pr_info("kecho: listening on port %u (%s)\n", port,
		kecho_srv.mode == KSRV_KTHREAD ? "kthread" :
		kecho_srv.mode == KSRV_WQ_BOUND ? "bound wq" : "unbound wq");
	return 0;
}

static void __exit kecho_exit(void)
{
	ksrv_stop(&kecho_srv);
	pr_info("kecho: stopped\n");
}

module_init(kecho_init);
module_exit(kecho_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("tcp-zoo");
MODULE_DESCRIPTION("In-kernel TCP echo server (CMWQ or kthread per connection)");
