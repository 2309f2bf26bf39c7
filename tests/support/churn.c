/*
 * Process-churn helper for tests/churn.rs and scripts/soak.sh.
 *
 * Every child owns one TCP connection over loopback: it listens on
 * 127.0.0.1:0, connects to itself, accepts, and then K times writes
 * "GET / HTTP/1.1" on the client fd, reads it on the server fd (one request
 * read from a TCP socket), writes "HTTP/1.1 200" on the server fd and reads it
 * on the client fd. Requests are only counted on reads and responses only on
 * writes, so a child counts exactly K requests and K responses with code 200.
 * Sockets are closed with SO_LINGER 0 (RST), so thousands of children leave no
 * TIME_WAIT behind to exhaust loopback ports.
 *
 *   shs-churn live N        fork N children that serve one request each and
 *                           stay alive; print "pid P" per child, then "ready"
 *   shs-churn serve K [P]   fork one child that serves K requests on one
 *                           connection and stays alive; with P, make its pid P
 *                           (writes P-1 to /proc/sys/kernel/ns_last_pid right
 *                           before fork, retrying); print "pid P", "ready"
 *   shs-churn burst T B     fork T children, at most B alive at a time, each
 *                           serving one request and exiting; print "pid P" per
 *                           child as it is forked, then "done FAILURES"
 *   shs-churn trickle MS K  until killed, every MS milliseconds fork a child
 *                           that serves K requests and exits; print "pid P"
 *                           per child and "fail ..." per failed child
 *
 * live/serve then wait for a line or EOF on stdin, SIGKILL and reap every
 * child, print "killed" and exit. Children die with the parent
 * (PR_SET_PDEATHSIG), so killing the parent cleans up too.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char REQUEST[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
static const char RESPONSE[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";

#define CHECK(cond) \
	do { \
		if (!(cond)) \
			return -__LINE__; \
	} while (0)

/* Reads one header block (up to the blank line) from fd. */
static int read_message(int fd)
{
	char buf[512];
	size_t have = 0;

	while (have < sizeof(buf) - 1) {
		ssize_t n = read(fd, buf + have, sizeof(buf) - 1 - have);

		if (n <= 0)
			return -1;
		have += n;
		buf[have] = 0;
		if (strstr(buf, "\r\n\r\n"))
			return 0;
	}
	return -1;
}

static void abortive(int fd)
{
	struct linger l = {.l_onoff = 1, .l_linger = 0};

	setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
}

/* Serves k requests on a connection of its own; returns 0 or -line. */
static int exchange(int k)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t alen = sizeof(a);
	int l, c, s;

	CHECK((l = socket(AF_INET, SOCK_STREAM, 0)) >= 0);
	CHECK(bind(l, (struct sockaddr *)&a, sizeof(a)) == 0);
	CHECK(listen(l, 1) == 0);
	CHECK(getsockname(l, (struct sockaddr *)&a, &alen) == 0);
	CHECK((c = socket(AF_INET, SOCK_STREAM, 0)) >= 0);
	CHECK(connect(c, (struct sockaddr *)&a, sizeof(a)) == 0);
	CHECK((s = accept(l, NULL, NULL)) >= 0);
	close(l);
	abortive(c);
	abortive(s);
	for (int i = 0; i < k; i++) {
		CHECK(write(c, REQUEST, sizeof(REQUEST) - 1) == sizeof(REQUEST) - 1);
		CHECK(read_message(s) == 0);
		CHECK(write(s, RESPONSE, sizeof(RESPONSE) - 1) == sizeof(RESPONSE) - 1);
		CHECK(read_message(c) == 0);
	}
	return 0;
}

static pid_t parent;

/* In a fresh child: die with the parent. */
static void child_setup(void)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	if (getppid() != parent)
		_exit(111);
}

/* A child that serves k requests, reports its pid (or -line) on the pipe and
 * stays until killed. */
static void resident_child(int k, int report_fd)
{
	int rc = exchange(k);
	int v = rc == 0 ? getpid() : rc;

	if (write(report_fd, &v, sizeof(v)) != sizeof(v))
		_exit(112);
	for (;;)
		pause();
}

static pid_t *children;
static int nchildren;

static void wait_then_kill(void)
{
	char line[64];

	printf("ready\n");
	fflush(stdout);
	if (!fgets(line, sizeof(line), stdin)) {
		/* EOF: the test is gone or done. */
	}
	for (int i = 0; i < nchildren; i++)
		kill(children[i], SIGKILL);
	for (int i = 0; i < nchildren; i++)
		waitpid(children[i], NULL, 0);
	printf("killed\n");
	fflush(stdout);
}

/* Reads n reports from the pipe; prints "pid P" or "fail -LINE". */
static int collect(int fd, int n)
{
	int fails = 0;

	for (int i = 0; i < n; i++) {
		int v;

		if (read(fd, &v, sizeof(v)) != sizeof(v)) {
			printf("fail pipe\n");
			return n;
		}
		if (v > 0) {
			printf("pid %d\n", v);
		} else {
			printf("fail %d\n", v);
			fails++;
		}
	}
	return fails;
}

static int live(int n)
{
	int p[2];

	if (pipe(p))
		return 2;
	children = calloc(n, sizeof(pid_t));
	for (int i = 0; i < n; i++) {
		pid_t pid = fork();

		if (pid < 0) {
			printf("fail fork %d: %s\n", i, strerror(errno));
			fflush(stdout);
			n = i;
			break;
		}
		if (pid == 0) {
			child_setup();
			resident_child(1, p[1]);
		}
		children[nchildren++] = pid;
	}
	collect(p[0], nchildren);
	wait_then_kill();
	return 0;
}

static int write_last_pid(int target)
{
	char text[32];
	int fd = open("/proc/sys/kernel/ns_last_pid", O_WRONLY);
	int len = snprintf(text, sizeof(text), "%d", target - 1);
	int ok;

	if (fd < 0)
		return -1;
	ok = write(fd, text, len) == len;
	close(fd);
	return ok ? 0 : -1;
}

static int serve(int k, int target)
{
	int p[2], go[2];
	pid_t pid = -1;

	if (pipe(p) || pipe(go))
		return 2;
	children = calloc(1, sizeof(pid_t));
	for (int attempt = 0; attempt < 100; attempt++) {
		if (target > 0 && write_last_pid(target)) {
			printf("fail ns_last_pid: %s\n", strerror(errno));
			return 2;
		}
		pid = fork();
		if (pid < 0) {
			printf("fail fork: %s\n", strerror(errno));
			return 2;
		}
		if (pid == 0) {
			char c;

			child_setup();
			close(go[1]);
			if (read(go[0], &c, 1) != 1)
				_exit(0);
			resident_child(k, p[1]);
		}
		if (target <= 0 || pid == target)
			break;
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		pid = -1;
	}
	if (pid < 0) {
		printf("fail could not get pid %d\n", target);
		return 3;
	}
	children[nchildren++] = pid;
	if (write(go[1], "g", 1) != 1)
		return 2;
	collect(p[0], 1);
	wait_then_kill();
	return 0;
}

static int burst(int total, int batch)
{
	int fails = 0, alive = 0, forked = 0;

	/* A sliding window: at most `batch` children alive, a new one forked as
	 * soon as one is reaped. */
	while (forked < total || alive > 0) {
		if (forked < total && alive < batch) {
			pid_t pid = fork();

			if (pid < 0) {
				printf("fail fork: %s\n", strerror(errno));
				fails++;
				total = forked;
				continue;
			}
			if (pid == 0) {
				child_setup();
				_exit(exchange(1) == 0 ? 0 : 1);
			}
			printf("pid %d\n", pid);
			forked++;
			alive++;
			continue;
		}
		int status;
		pid_t pid = waitpid(-1, &status, 0);

		if (pid < 0) {
			printf("fail waitpid: %s\n", strerror(errno));
			fails++;
			break;
		}
		alive--;
		if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
			printf("fail child %d status %d\n", pid, status);
			fails++;
		}
	}
	printf("done %d\n", fails);
	fflush(stdout);
	return fails ? 1 : 0;
}

static int trickle(int interval_ms, int k)
{
	struct timespec pause_for = {.tv_sec = interval_ms / 1000,
				     .tv_nsec = (long)(interval_ms % 1000) * 1000000};

	setvbuf(stdout, NULL, _IOLBF, 0);
	for (;;) {
		pid_t pid = fork();
		int status;

		if (pid < 0) {
			printf("fail fork: %s\n", strerror(errno));
		} else if (pid == 0) {
			child_setup();
			_exit(exchange(k) == 0 ? 0 : 1);
		} else {
			printf("pid %d\n", pid);
			if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
			    WEXITSTATUS(status) != 0)
				printf("fail child %d status %d\n", pid, status);
		}
		nanosleep(&pause_for, NULL);
	}
}

int main(int argc, char **argv)
{
	parent = getpid();
	setvbuf(stdout, NULL, _IOFBF, 1 << 16);
	if (argc >= 3 && !strcmp(argv[1], "live"))
		return live(atoi(argv[2]));
	if (argc >= 3 && !strcmp(argv[1], "serve"))
		return serve(atoi(argv[2]), argc >= 4 ? atoi(argv[3]) : 0);
	if (argc >= 4 && !strcmp(argv[1], "burst"))
		return burst(atoi(argv[2]), atoi(argv[3]));
	if (argc >= 4 && !strcmp(argv[1], "trickle"))
		return trickle(atoi(argv[2]), atoi(argv[3]));
	fprintf(stderr, "usage: %s live N | serve K [PID] | burst TOTAL BATCH | trickle MS K\n",
		argv[0]);
	return 2;
}
