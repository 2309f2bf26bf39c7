/*
 * Per-call cost of syscalls an eBPF probe may slow down (scripts/bench.sh, part 4).
 *
 *   microbench ITERS [BATCHES [CPU [EXCHANGES]]]
 *
 * Pins itself to CPU (default 0; -1: not pinned), runs each case BATCHES
 * times (default 7) with ITERS calls per batch (EXCHANGES, default 100000,
 * for the exchange cases) and prints, per case, "name cpu_median cpu_min
 * wall_median wall_min": ns per call (or per pair, per exchange) over the
 * batches, of the thread's CPU time (CLOCK_THREAD_CPUTIME_ID: time spent
 * preempted by other processes on a busy machine is not counted, while the
 * kernel's work in the syscall, eBPF programs included, is) and of the wall
 * clock. MICROBENCH_CASES=name,name runs only those cases.
 *
 * Cases:
 *   getppid         syscall(SYS_getppid): a syscall no hook looks at
 *   pread_1B_file   pread(fd, 1 byte, offset 0) of a small regular file
 *                   (pread64: not one of the eight syscalls the syscalls path hooks)
 *   read_1B_zero    read(/dev/zero, 1 byte): a hooked syscall, below the probe's
 *                   16-byte minimum, so its enter program returns at once
 *   read_64B_zero   read(/dev/zero, 64 bytes): the syscalls path's enter program
 *                   walks the fd table to see that it is not a TCP socket
 *   tcp_1B_pair     send(1 byte) + recv(1 byte) on a loopback TCP connection
 *   tcp_64B_pair    the same with 64 bytes that are not HTTP (the probe reads and
 *                   rejects the first 16)
 *   exchange_http   one HTTP exchange on a loopback connection, four socket calls
 *                   in one thread: the client writes a 70-byte GET, the server
 *                   reads it from the accepted socket, writes a 90-byte 200
 *                   response with a 5-byte body, the client reads it
 *   exchange_other  the same four calls, same sizes, bytes that are not HTTP, on
 *                   a connection of its own (opened after the probe attached, so
 *                   the probe sees its first bytes)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int file_fd, zero_fd, cli, srv;
static int http_cli, http_srv, other_cli, other_srv;
static char buf[4096];

/* 70 bytes */
static const char GET[] = "GET /index.html HTTP/1.1\r\nHost: bench\r\nUser-Agent: microbench/1.0x\r\n\r\n";
/* 90 bytes, of which a 5-byte body */
static const char OK[] = "HTTP/1.1 200 OK\r\nServer: microbench1\r\nContent-Type: text/plain\r\n"
			 "Content-Length: 5\r\n\r\nhello";
static char other_request[sizeof(GET) - 1], other_response[sizeof(OK) - 1];

static double now_ns(clockid_t clock)
{
	struct timespec t;

	clock_gettime(clock, &t);
	return t.tv_sec * 1e9 + t.tv_nsec;
}

static void die(const char *what)
{
	perror(what);
	exit(1);
}

static void do_getppid(long n)
{
	for (long i = 0; i < n; i++)
		syscall(SYS_getppid);
}

static void do_pread(long n)
{
	for (long i = 0; i < n; i++)
		if (pread(file_fd, buf, 1, 0) != 1)
			die("pread");
}

static void do_read1(long n)
{
	for (long i = 0; i < n; i++)
		if (read(zero_fd, buf, 1) != 1)
			die("read");
}

static void do_read64(long n)
{
	for (long i = 0; i < n; i++)
		if (read(zero_fd, buf, 64) != 64)
			die("read");
}

static void pair(long n, size_t len)
{
	for (long i = 0; i < n; i++) {
		if (send(cli, buf, len, 0) != (ssize_t)len)
			die("send");
		for (size_t got = 0; got < len;) {
			ssize_t r = recv(srv, buf + got, len - got, 0);

			if (r <= 0)
				die("recv");
			got += r;
		}
	}
}

static void recv_all(int fd, size_t len)
{
	for (size_t got = 0; got < len;) {
		ssize_t r = recv(fd, buf + got, len - got, 0);

		if (r <= 0)
			die("recv");
		got += r;
	}
}

static void exchange(long n, int c, int s, const char *req, size_t req_len, const char *resp,
		     size_t resp_len)
{
	for (long i = 0; i < n; i++) {
		if (send(c, req, req_len, 0) != (ssize_t)req_len)
			die("send request");
		recv_all(s, req_len);
		if (send(s, resp, resp_len, 0) != (ssize_t)resp_len)
			die("send response");
		recv_all(c, resp_len);
	}
}

static void do_exchange_http(long n)
{
	exchange(n, http_cli, http_srv, GET, sizeof(GET) - 1, OK, sizeof(OK) - 1);
}

static void do_exchange_other(long n)
{
	exchange(n, other_cli, other_srv, other_request, sizeof(other_request), other_response,
		 sizeof(other_response));
}

static void do_tcp1(long n)
{
	pair(n, 1);
}

static void do_tcp64(long n)
{
	memset(buf, 'x', 64); /* not an HTTP start */
	pair(n, 64);
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static void run(const char *name, void (*fn)(long), long iters, int batches)
{
	double cpu[64], wall[64];
	const char *only = getenv("MICROBENCH_CASES"); /* a comma-separated subset, for profiling */

	if (only && !strstr(only, name))
		return;

	fn(iters / 10 + 1); /* warm up */
	for (int b = 0; b < batches; b++) {
		double c0 = now_ns(CLOCK_THREAD_CPUTIME_ID), w0 = now_ns(CLOCK_MONOTONIC);

		fn(iters);
		wall[b] = (now_ns(CLOCK_MONOTONIC) - w0) / iters;
		cpu[b] = (now_ns(CLOCK_THREAD_CPUTIME_ID) - c0) / iters;
	}
	qsort(cpu, batches, sizeof(cpu[0]), cmp);
	qsort(wall, batches, sizeof(wall[0]), cmp);
	printf("%s %.1f %.1f %.1f %.1f\n", name, cpu[batches / 2], cpu[0], wall[batches / 2], wall[0]);
	fflush(stdout);
}

/* A connected loopback TCP pair: *c the client's end, *s the accepted one. */
static void tcp_pair(int *c, int *s)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t alen = sizeof(a);
	int one = 1, l;

	if ((l = socket(AF_INET, SOCK_STREAM, 0)) < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) ||
	    listen(l, 1) || getsockname(l, (struct sockaddr *)&a, &alen))
		die("listen");
	if ((*c = socket(AF_INET, SOCK_STREAM, 0)) < 0 || connect(*c, (struct sockaddr *)&a, sizeof(a)))
		die("connect");
	if ((*s = accept(l, NULL, NULL)) < 0)
		die("accept");
	close(l);
	setsockopt(*c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(*s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
}

static void setup(void)
{
	char path[] = "/tmp/shs-microbench-XXXXXX";
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t alen = sizeof(a);
	int one = 1, l;

	file_fd = mkstemp(path);
	if (file_fd < 0 || write(file_fd, "0123456789abcdef", 16) != 16)
		die("small file");
	unlink(path);
	zero_fd = open("/dev/zero", O_RDONLY);
	if (zero_fd < 0)
		die("/dev/zero");
	if ((l = socket(AF_INET, SOCK_STREAM, 0)) < 0 || bind(l, (struct sockaddr *)&a, sizeof(a)) ||
	    listen(l, 1) || getsockname(l, (struct sockaddr *)&a, &alen))
		die("listen");
	if ((cli = socket(AF_INET, SOCK_STREAM, 0)) < 0 ||
	    connect(cli, (struct sockaddr *)&a, sizeof(a)))
		die("connect");
	if ((srv = accept(l, NULL, NULL)) < 0)
		die("accept");
	close(l);
	/* No Nagle: the receiver never answers, so a delayed ACK would hold small sends. */
	setsockopt(cli, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (sizeof(GET) - 1 != 70 || sizeof(OK) - 1 != 90)
		die("exchange sizes");
	tcp_pair(&http_cli, &http_srv);
	memset(other_request, 'q', sizeof(other_request));
	memset(other_response, 'r', sizeof(other_response));
	tcp_pair(&other_cli, &other_srv);
}

int main(int argc, char **argv)
{
	long iters = argc > 1 ? atol(argv[1]) : 200000;
	int batches = argc > 2 ? atoi(argv[2]) : 7;
	int cpu = argc > 3 ? atoi(argv[3]) : 0;
	long exchanges = argc > 4 ? atol(argv[4]) : 100000;

	if (iters < 10 || batches < 1 || batches > 64 || exchanges < 10) {
		fprintf(stderr, "usage: %s ITERS [BATCHES<=64 [CPU [EXCHANGES]]]\n", argv[0]);
		return 2;
	}
	if (cpu >= 0) {
		cpu_set_t set;

		CPU_ZERO(&set);
		CPU_SET(cpu, &set);
		if (sched_setaffinity(0, sizeof(set), &set))
			die("sched_setaffinity");
	}
	setup();
	/* The headline case first: the least chance of a neighbour waking up mid-run. */
	run("exchange_http", do_exchange_http, exchanges, batches);
	run("exchange_other", do_exchange_other, exchanges, batches);
	run("getppid", do_getppid, iters, batches);
	run("pread_1B_file", do_pread, iters, batches);
	run("read_1B_zero", do_read1, iters, batches);
	run("read_64B_zero", do_read64, iters, batches);
	/* A pair is two syscalls and a loopback delivery: fewer iterations. */
	run("tcp_1B_pair", do_tcp1, iters / 4 + 1, batches);
	run("tcp_64B_pair", do_tcp64, iters / 4 + 1, batches);
	return 0;
}
