// SPDX-License-Identifier: GPL-2.0
/*
 * drop_tcp_sock: drop a TCP connection (TIME-WAIT or any other state) by its
 * four-tuple, so a server can be restarted on the same port at once.
 *
 * Write one line per connection to /proc/net/drop_tcp_sock:
 *
 *	LOCAL_IP:LOCAL_PORT REMOTE_IP:REMOTE_PORT
 *
 * (IPv4, dotted quad, decimal ports; the columns of ss(8) and netstat). The
 * socket with that local and remote end is dropped, and so is the socket with
 * the two ends swapped if there is one (the peer's end on loopback). A
 * socket in any state is aborted through tcp_abort(), the path "ss -K" takes,
 * which also deschedules a TIME-WAIT socket with bottom halves disabled. A
 * line that names no socket makes the write fail with -ENOENT; a malformed
 * line with -EINVAL.
 *
 * Each network namespace has its own entry, and a write acts only on the
 * namespace the entry belongs to, never on the writer's: /proc/PID/net/ of a
 * namespace made by an unprivileged user is owned by that user, so the
 * writer's namespace would let them reach the host's connections. The writer
 * and the opener both need CAP_NET_ADMIN over that namespace's user
 * namespace, and a writer outside the namespace needs it over the host's too.
 */
#include <linux/capability.h>
#include <linux/inet.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/proc_fs.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <net/inet_hashtables.h>
#include <net/net_namespace.h>
#include <net/tcp.h>

#define DROP_NAME "drop_tcp_sock"
#define DROP_MAX_WRITE 4096

struct drop_end {
	__be32 addr;
	__be16 port;
};

/* "A.B.C.D:PORT" from s[0..len), nothing before, between or after. */
static int drop_parse_end(const char *s, size_t len, struct drop_end *end)
{
	const char *colon, *addr_end;
	char port[6];
	size_t n;
	u16 val;

	colon = strnchr(s, len, ':');
	if (!colon || colon == s)
		return -EINVAL;
	/* in4_pton() stops at any non-digit: the address must end at the colon. */
	if (!in4_pton(s, colon - s, (u8 *)&end->addr, -1, &addr_end) ||
	    addr_end != colon)
		return -EINVAL;
	n = s + len - colon - 1;
	if (!n || n >= sizeof(port))
		return -EINVAL;
	memcpy(port, colon + 1, n);
	port[n] = '\0';
	/* kstrtou16() would take "80\n" and "+80": digits only. */
	if (strspn(port, "0123456789") != n || kstrtou16(port, 10, &val) || !val)
		return -EINVAL;
	end->port = htons(val);
	return 0;
}

/* Drop the socket whose local end is @local and remote end @remote. */
static bool drop_one(struct net *net, const struct drop_end *local,
		     const struct drop_end *remote)
{
	struct sock *sk;
	int err;

	/* The namespace's own table: it may have one (tcp_child_ehash_entries). */
	rcu_read_lock();
	sk = __inet_lookup_established(net, net->ipv4.tcp_death_row.hashinfo,
				       remote->addr, remote->port, local->addr,
				       ntohs(local->port), 0, 0);
	rcu_read_unlock();
	if (!sk)
		return false;

	/*
	 * As tcp_diag_destroy() does: tcp_abort() handles every state, takes
	 * its own reference on a TIME-WAIT socket and disables bottom halves
	 * around inet_twsk_deschedule_put(), whose locks the TIME-WAIT timer
	 * also takes from softirq. We drop the lookup's reference.
	 */
	err = tcp_abort(sk, ECONNABORTED);
	sock_gen_put(sk);
	return !err;
}

static int drop_line(struct net *net, const char *line, size_t len)
{
	struct drop_end a, b;
	const char *sp;
	bool found;
	int err;

	sp = strnchr(line, len, ' ');
	if (!sp)
		return -EINVAL;
	err = drop_parse_end(line, sp - line, &a);
	if (!err)
		err = drop_parse_end(sp + 1, line + len - sp - 1, &b);
	if (err)
		return err;
	found = drop_one(net, &a, &b);
	found |= drop_one(net, &b, &a);
	return found ? 0 : -ENOENT;
}

/*
 * Whoever opened the file and whoever writes to it must both hold
 * CAP_NET_ADMIN over @net; a writer from another network namespace (the
 * owner of a user namespace reaching in from the host, say) must also hold it
 * over the host.
 */
static bool drop_allowed(struct file *file, struct net *net)
{
	if (!file_ns_capable(file, net->user_ns, CAP_NET_ADMIN) ||
	    !ns_capable(net->user_ns, CAP_NET_ADMIN))
		return false;
	return net_eq(current->nsproxy->net_ns, net) || capable(CAP_NET_ADMIN);
}

static ssize_t drop_write(struct file *file, const char __user *ubuf,
			  size_t count, loff_t *ppos)
{
	/* Valid while the entry is: pernet exit removes it first. */
	struct net *net = pde_data(file_inode(file));
	char *buf, *line, *next;
	int err = 0, ret;
	size_t len;

	if (!drop_allowed(file, net))
		return -EPERM;
	if (count > DROP_MAX_WRITE)
		return -E2BIG;
	buf = memdup_user_nul(ubuf, count);
	if (IS_ERR(buf))
		return PTR_ERR(buf);

	for (line = buf; line && *line; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		line = strim(line);
		len = strlen(line);
		if (!len)
			continue;
		ret = drop_line(net, line, len);
		if (ret && !err)
			err = ret;
	}
	kfree(buf);
	return err ? err : count;
}

static const struct proc_ops drop_proc_ops = {
	.proc_write = drop_write,
	.proc_lseek = noop_llseek,
};

static int __net_init drop_net_init(struct net *net)
{
	if (!proc_create_data(DROP_NAME, 0200, net->proc_net, &drop_proc_ops, net))
		return -ENOMEM;
	return 0;
}

static void __net_exit drop_net_exit(struct net *net)
{
	remove_proc_entry(DROP_NAME, net->proc_net);
}

static struct pernet_operations drop_net_ops = {
	.init = drop_net_init,
	.exit = drop_net_exit,
};

static int __init drop_init(void)
{
	return register_pernet_subsys(&drop_net_ops);
}

static void __exit drop_exit(void)
{
	unregister_pernet_subsys(&drop_net_ops);
}

module_init(drop_init);
module_exit(drop_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("tcp-zoo");
MODULE_DESCRIPTION("Drop a TCP connection (e.g. TIME-WAIT) named by its four-tuple");
