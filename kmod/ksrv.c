// SPDX-License-Identifier: GPL-2.0
/*
 * ksrv: listener, per-connection workers and their teardown (see ksrv.h).
 */
#include <linux/err.h>
#include <linux/in.h>
#include <linux/kthread.h>
#include <linux/slab.h>
#include <linux/tcp.h>
#include <net/sock.h>

#include "ksrv.h"

struct ksrv_conn {
	struct list_head node;
	struct ksrv *srv;
	struct socket *sock;
	struct work_struct work;
	struct task_struct *task;
};

int ksrv_recv(struct socket *sock, void *buf, size_t len)
{
	struct msghdr msg = { };
	struct kvec vec = { .iov_base = buf, .iov_len = len };

	return kernel_recvmsg(sock, &msg, &vec, 1, len, 0);
}

void ksrv_set_rcvtimeo(struct socket *sock, long timeo)
{
	WRITE_ONCE(sock->sk->sk_rcvtimeo, timeo);
}

/*
 * Send all of buf, blocking while the peer does not read, but for no longer
 * in all than the socket's send timeout (the idle timeout, set at accept):
 * a peer that takes one byte now and then cannot keep the worker. 0 or
 * -errno (-ETIMEDOUT once the time is up).
 */
int ksrv_send(struct socket *sock, const void *buf, size_t len)
{
	struct sock *sk = sock->sk;
	long timeo = READ_ONCE(sk->sk_sndtimeo);
	unsigned long deadline = jiffies + timeo;
	int err = 0;

	while (len) {
		struct msghdr msg = { .msg_flags = MSG_NOSIGNAL };
		struct kvec vec = { .iov_base = (void *)buf, .iov_len = len };
		long left;
		int n;

		if (timeo != MAX_SCHEDULE_TIMEOUT) {
			left = (long)(deadline - jiffies);
			if (left <= 0) {
				err = -ETIMEDOUT;
				break;
			}
			WRITE_ONCE(sk->sk_sndtimeo, left);
		}
		n = kernel_sendmsg(sock, &msg, &vec, 1, len);
		if (n == -EAGAIN) {
			err = -ETIMEDOUT;
			break;
		}
		if (n <= 0) {
			err = n ? n : -EPIPE;
			break;
		}
		buf += n;
		len -= n;
	}
	WRITE_ONCE(sk->sk_sndtimeo, timeo);
	return err;
}

/*
 * Pin the server's threads to the CPUs in list ("0-2,5"); NULL or "": any.
 * -EINVAL for a malformed list or one without an online CPU.
 */
int ksrv_set_cpus(struct ksrv *srv, const char *list)
{
	int err;

	cpumask_clear(&srv->cpus);
	if (!list || !*list)
		return 0;
	err = cpulist_parse(list, &srv->cpus);
	if (err)
		return err;
	if (!cpumask_intersects(&srv->cpus, cpu_online_mask)) {
		cpumask_clear(&srv->cpus);
		return -EINVAL;
	}
	return 0;
}

/* Before its first wake-up: a new thread runs on the server's CPUs only. */
static void ksrv_pin(struct ksrv *srv, struct task_struct *task)
{
	if (!cpumask_empty(&srv->cpus) && set_cpus_allowed_ptr(task, &srv->cpus))
		pr_warn_once("%s: a thread could not be pinned to cpus\n", srv->name);
}

static void ksrv_conn_gone(struct ksrv *srv)
{
	if (atomic_dec_and_test(&srv->live))
		wake_up(&srv->idle);
}

static void ksrv_work_fn(struct work_struct *work)
{
	struct ksrv_conn *conn = container_of(work, struct ksrv_conn, work);
	struct ksrv *srv = conn->srv;

	srv->serve(conn->sock);

	mutex_lock(&srv->lock);
	list_del(&conn->node);
	mutex_unlock(&srv->lock);
	sock_release(conn->sock);
	kfree(conn);
	ksrv_conn_gone(srv);
}

static int ksrv_thread_fn(void *data)
{
	struct ksrv_conn *conn = data;
	struct ksrv *srv = conn->srv;
	struct socket *sock = conn->sock;

	srv->serve(sock);

	/*
	 * The task and conn are freed by ksrv_reap(), which waits in
	 * kthread_stop() until this thread has really exited.
	 */
	mutex_lock(&srv->lock);
	list_move_tail(&conn->node, &srv->dead);
	conn->sock = NULL;
	mutex_unlock(&srv->lock);
	sock_release(sock);
	ksrv_conn_gone(srv);
	return 0;
}

/* Kthread mode: collect the threads of finished connections. */
static void ksrv_reap(struct ksrv *srv)
{
	struct ksrv_conn *conn, *tmp;
	LIST_HEAD(dead);

	mutex_lock(&srv->lock);
	list_splice_init(&srv->dead, &dead);
	mutex_unlock(&srv->lock);

	list_for_each_entry_safe(conn, tmp, &dead, node) {
		list_del(&conn->node);
		kthread_stop(conn->task);
		put_task_struct(conn->task);
		kfree(conn);
	}
}

static int ksrv_add(struct ksrv *srv, struct socket *sock)
{
	struct ksrv_conn *conn;
	struct task_struct *task;
	int err = 0;

	/* Only the listener adds, so live cannot pass the cap between here and the add. */
	if (atomic_read(&srv->live) >= srv->max_conns) {
		atomic_inc(&srv->refused);
		pr_warn_ratelimited("%s: at max_conns (%d): connection refused (%d so far)\n",
				    srv->name, srv->max_conns,
				    atomic_read(&srv->refused));
		return -EBUSY;
	}
	conn = kzalloc(sizeof(*conn), GFP_KERNEL);
	if (!conn)
		return -ENOMEM;
	conn->srv = srv;
	conn->sock = sock;

	mutex_lock(&srv->lock);
	if (srv->stopping) {
		err = -ESHUTDOWN;
		goto out_unlock;
	}
	if (srv->wq) {
		INIT_WORK(&conn->work, ksrv_work_fn);
		list_add_tail(&conn->node, &srv->conns);
		atomic_inc(&srv->live);
		queue_work(srv->wq, &conn->work);
	} else {
		task = kthread_create(ksrv_thread_fn, conn, "%s/%d", srv->name,
				      atomic_inc_return(&srv->next_id));
		if (IS_ERR(task)) {
			err = PTR_ERR(task);
			goto out_unlock;
		}
		get_task_struct(task);
		ksrv_pin(srv, task);
		conn->task = task;
		list_add_tail(&conn->node, &srv->conns);
		atomic_inc(&srv->live);
		wake_up_process(task);
	}
	mutex_unlock(&srv->lock);
	return 0;

out_unlock:
	mutex_unlock(&srv->lock);
	kfree(conn);
	return err;
}

static void ksrv_nap(void)
{
	set_current_state(TASK_INTERRUPTIBLE);
	if (!kthread_should_stop())
		schedule_timeout(HZ / 50);
	__set_current_state(TASK_RUNNING);
}

static int ksrv_listen_fn(void *data)
{
	struct ksrv *srv = data;

	while (!kthread_should_stop()) {
		struct socket *sock;
		int err;

		err = kernel_accept(srv->listen, &sock, 0);
		if (err) {
			/* -EINVAL once the listener is shut down; else transient. */
			ksrv_nap();
			continue;
		}
		if (!srv->wq)
			ksrv_reap(srv);
		tcp_sock_set_nodelay(sock->sk);
		/*
		 * A recvmsg that waits longer returns -EAGAIN, a ksrv_send()
		 * that takes longer -ETIMEDOUT: either way the worker ends.
		 */
		if (srv->idle_timeout) {
			WRITE_ONCE(sock->sk->sk_rcvtimeo, srv->idle_timeout);
			WRITE_ONCE(sock->sk->sk_sndtimeo, srv->idle_timeout);
		}
		if (ksrv_add(srv, sock))
			sock_release(sock);
	}
	return 0;
}

static int ksrv_listen(struct ksrv *srv, u16 port, int backlog, bool reuseaddr)
{
	struct sockaddr_in addr = {
		.sin_family = AF_INET,
		.sin_addr.s_addr = htonl(INADDR_ANY),
		.sin_port = htons(port),
	};
	struct socket *sock;
	int err;

	err = sock_create_kern(&init_net, AF_INET, SOCK_STREAM, IPPROTO_TCP, &sock);
	if (err)
		return err;
	if (reuseaddr)
		sock_set_reuseaddr(sock->sk);
	err = kernel_bind(sock, (struct sockaddr *)&addr, sizeof(addr));
	if (!err)
		err = kernel_listen(sock, backlog);
	if (err) {
		sock_release(sock);
		return err;
	}
	srv->listen = sock;
	return 0;
}

int ksrv_start(struct ksrv *srv, u16 port, int backlog, bool reuseaddr)
{
	int err;

	mutex_init(&srv->lock);
	INIT_LIST_HEAD(&srv->conns);
	INIT_LIST_HEAD(&srv->dead);
	init_waitqueue_head(&srv->idle);
	atomic_set(&srv->live, 0);
	atomic_set(&srv->refused, 0);
	atomic_set(&srv->next_id, 0);
	srv->stopping = false;
	srv->wq = NULL;
	if (srv->max_conns <= 0 || srv->max_conns > KSRV_MAX_CONNS)
		return -EINVAL;

	/* Past max_active (at most 512) a work item waits for a running one to end. */
	if (srv->mode == KSRV_WQ_UNBOUND)
		srv->wq = alloc_workqueue("%s", WQ_UNBOUND | WQ_SYSFS,
					  min_t(int, srv->max_conns, WQ_UNBOUND_MAX_ACTIVE),
					  srv->name);
	else if (srv->mode == KSRV_WQ_BOUND)
		srv->wq = alloc_workqueue("%s", 0,
					  min_t(int, srv->max_conns, WQ_MAX_ACTIVE),
					  srv->name);
	if (srv->mode != KSRV_KTHREAD && !srv->wq)
		return -ENOMEM;

	err = ksrv_listen(srv, port, backlog, reuseaddr);
	if (err)
		goto err_wq;

	srv->listener = kthread_create(ksrv_listen_fn, srv, "%s-listen", srv->name);
	if (IS_ERR(srv->listener)) {
		err = PTR_ERR(srv->listener);
		goto err_sock;
	}
	ksrv_pin(srv, srv->listener);
	wake_up_process(srv->listener);
	return 0;

err_sock:
	sock_release(srv->listen);
err_wq:
	if (srv->wq)
		destroy_workqueue(srv->wq);
	return err;
}

void ksrv_stop(struct ksrv *srv)
{
	struct ksrv_conn *conn;

	mutex_lock(&srv->lock);
	srv->stopping = true;
	mutex_unlock(&srv->lock);

	/* Wakes the listener out of accept; then no connection is added. */
	kernel_sock_shutdown(srv->listen, SHUT_RDWR);
	kthread_stop(srv->listener);

	/* Wakes every worker blocked in recvmsg or sendmsg. */
	mutex_lock(&srv->lock);
	list_for_each_entry(conn, &srv->conns, node)
		kernel_sock_shutdown(conn->sock, SHUT_RDWR);
	mutex_unlock(&srv->lock);

	if (srv->wq) {
		destroy_workqueue(srv->wq);
	} else {
		wait_event(srv->idle, !atomic_read(&srv->live));
		ksrv_reap(srv);
	}
	sock_release(srv->listen);
}
