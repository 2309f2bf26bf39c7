/*
 * Per-call cost of syscalls an eBPF probe may slow down (scripts/bench.sh, part 4).
 *
 *   microbench ITERS [BATCHES]
 *
 * Runs each case BATCHES times (default 7) with ITERS calls per batch and
 * prints, per case, "name cpu_median cpu_min wall_median": ns per call (or
 * per pair) over the batches, of the thread's CPU time (CLOCK_THREAD_CPUTIME_ID:
 * time spent preempted by other processes on a busy machine is not counted,
 * while the kernel's work in the syscall, eBPF programs included, is) and of
 * the wall clock.
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
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int file_fd, zero_fd, cli, srv;
static char buf[4096];

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

	fn(iters / 10 + 1); /* warm up */
	for (int b = 0; b < batches; b++) {
		double c0 = now_ns(CLOCK_THREAD_CPUTIME_ID), w0 = now_ns(CLOCK_MONOTONIC);

		fn(iters);
		wall[b] = (now_ns(CLOCK_MONOTONIC) - w0) / iters;
		cpu[b] = (now_ns(CLOCK_THREAD_CPUTIME_ID) - c0) / iters;
	}
	qsort(cpu, batches, sizeof(cpu[0]), cmp);
	qsort(wall, batches, sizeof(wall[0]), cmp);
	printf("%s %.1f %.1f %.1f\n", name, cpu[batches / 2], cpu[0], wall[batches / 2]);
	fflush(stdout);
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
}

int main(int argc, char **argv)
{
	long iters = argc > 1 ? atol(argv[1]) : 200000;
	int batches = argc > 2 ? atoi(argv[2]) : 7;

	if (iters < 10 || batches < 1 || batches > 64) {
		fprintf(stderr, "usage: %s ITERS [BATCHES<=64]\n", argv[0]);
		return 2;
	}
	setup();
	run("getppid", do_getppid, iters, batches);
	run("pread_1B_file", do_pread, iters, batches);
	run("read_1B_zero", do_read1, iters, batches);
	run("read_64B_zero", do_read64, iters, batches);
	/* A pair is two syscalls and a loopback delivery: fewer iterations. */
	run("tcp_1B_pair", do_tcp1, iters / 4 + 1, batches);
	run("tcp_64B_pair", do_tcp64, iters / 4 + 1, batches);
	return 0;
}
