/* Minimal C epoll echo: one level-triggered loop, recv and send, nothing else. */
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

static void on_term(int sig)
{
	(void)sig;
	_exit(0);
}

int main(int argc, char **argv)
{
	struct sockaddr_in addr = { .sin_family = AF_INET };
	socklen_t len = sizeof(addr);
	struct epoll_event ev = { .events = EPOLLIN }, events[256];
	char buf[65536];
	int one = 1, lfd, ep, i, n;

	addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	addr.sin_port = htons(argc > 1 ? atoi(argv[1]) : 0);
	signal(SIGTERM, on_term);
	lfd = socket(AF_INET, SOCK_STREAM, 0);
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) || listen(lfd, 1024))
		return perror("listen"), 1;
	getsockname(lfd, (struct sockaddr *)&addr, &len);
	printf("listening on 127.0.0.1:%d\n", ntohs(addr.sin_port));
	fflush(stdout);
	ep = epoll_create1(0);
	ev.data.fd = lfd;
	epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
	for (;;) {
		int ready = epoll_wait(ep, events, 256, -1);

		for (i = 0; i < ready; i++) {
			int fd = events[i].data.fd;

			if (fd == lfd) {
				int c = accept(lfd, NULL, NULL);

				if (c < 0)
					continue;
				setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
				ev.data.fd = c;
				epoll_ctl(ep, EPOLL_CTL_ADD, c, &ev);
				continue;
			}
			n = recv(fd, buf, sizeof(buf), 0);
			if (n > 0)
				send(fd, buf, n, MSG_NOSIGNAL); /* 64-byte ping-pong: taken whole */
			else
				close(fd);
		}
	}
}
