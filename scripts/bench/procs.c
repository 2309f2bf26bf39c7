/*
 * N tracked processes for scripts/bench.sh (part 3).
 *
 *   procs N
 *
 * Forks N children; each opens a loopback TCP connection to itself, reads one
 * HTTP request on it and writes one response (so the probe puts it in its
 * table), tells the parent and sleeps. The parent prints "ready" once all
 * have, then waits for a line or EOF on stdin, kills and reaps them and
 * exits. Children die with the parent (PR_SET_PDEATHSIG). Sockets are closed
 * with SO_LINGER 0, so thousands of children leave no TIME_WAIT behind.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static const char REQUEST[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
static const char RESPONSE[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

/* Reads exactly n bytes. */
static int read_all(int fd, char *buf, size_t n)
{
	for (size_t got = 0; got < n;) {
		ssize_t r = read(fd, buf + got, n - got);

		if (r <= 0)
			return -1;
		got += r;
	}
	return 0;
}

static int exchange(void)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	struct linger lg = {.l_onoff = 1, .l_linger = 0};
	socklen_t alen = sizeof(a);
	char buf[128];
	int l, c, s;

	if ((l = socket(AF_INET, SOCK_STREAM, 0)) < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) ||
	    listen(l, 1) || getsockname(l, (struct sockaddr *)&a, &alen))
		return -1;
	if ((c = socket(AF_INET, SOCK_STREAM, 0)) < 0 ||
	    connect(c, (struct sockaddr *)&a, sizeof(a)) || (s = accept(l, NULL, NULL)) < 0)
		return -1;
	close(l);
	setsockopt(c, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	if (write(c, REQUEST, sizeof(REQUEST) - 1) != sizeof(REQUEST) - 1 ||
	    read_all(s, buf, sizeof(REQUEST) - 1) ||
	    write(s, RESPONSE, sizeof(RESPONSE) - 1) != sizeof(RESPONSE) - 1 ||
	    read_all(c, buf, sizeof(RESPONSE) - 1))
		return -1;
	return 0;
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 0, p[2], ok = 0, started = 0;
	pid_t parent = getpid(), *kids;
	char line[64];

	if (n < 1 || pipe(p) || !(kids = calloc(n, sizeof(pid_t)))) {
		fprintf(stderr, "usage: %s N\n", argv[0]);
		return 2;
	}
	for (; started < n; started++) {
		pid_t pid = fork();

		if (pid < 0) {
			perror("fork");
			break;
		}
		if (pid == 0) {
			char r;

			prctl(PR_SET_PDEATHSIG, SIGKILL);
			if (getppid() != parent)
				_exit(1);
			r = exchange() == 0 ? 'y' : 'n';
			if (write(p[1], &r, 1) != 1)
				_exit(1);
			for (;;)
				pause();
		}
		kids[started] = pid;
	}
	for (int i = 0; i < started; i++) {
		char r;

		if (read(p[0], &r, 1) != 1)
			break;
		ok += r == 'y';
	}
	printf("ready %d of %d\n", ok, n);
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin)) {
		/* EOF */
	}
	for (int i = 0; i < started; i++)
		kill(kids[i], SIGKILL);
	for (int i = 0; i < started; i++)
		waitpid(kids[i], NULL, 0);
	return ok == n ? 0 : 1;
}
