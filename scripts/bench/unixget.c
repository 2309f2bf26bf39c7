/*
 * HTTP GET over a Unix socket, for scripts/bench.sh.
 *
 *   unixget time SOCKET PATH COUNT   COUNT requests, one connection each (as a
 *                                    fresh Scope poll); prints
 *                                    "median_us min_us max_us bytes"
 *   unixget poll SOCKET PATH MS      one request every MS milliseconds until
 *                                    killed (Scope's poller); failures are ignored
 *
 * The time is from connect() to the last byte of the answer (the daemon
 * closes the connection after answering a "Connection: close" request).
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

static double now_us(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

/* Returns the bytes of the answer (head and body), or -1. */
static long get(const char *sock, const char *path)
{
	static char buf[1 << 16];
	struct sockaddr_un a = {.sun_family = AF_UNIX};
	char req[512];
	long total = 0;
	int fd, len;

	if (strlen(sock) >= sizeof(a.sun_path))
		return -1;
	strcpy(a.sun_path, sock);
	fd = socket(AF_UNIX, SOCK_STREAM, 0);
	if (fd < 0)
		return -1;
	if (connect(fd, (struct sockaddr *)&a, sizeof(a))) {
		close(fd);
		return -1;
	}
	len = snprintf(req, sizeof(req),
		       "GET %s HTTP/1.1\r\nHost: plugin\r\nConnection: close\r\n\r\n", path);
	if (write(fd, req, len) != len) {
		close(fd);
		return -1;
	}
	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf));

		if (n < 0) {
			close(fd);
			return -1;
		}
		if (n == 0)
			break;
		if (total == 0 && (n < 12 || memcmp(buf + 9, "200", 3))) {
			close(fd);
			return -1;
		}
		total += n;
	}
	close(fd);
	return total;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	if (argc == 5 && !strcmp(argv[1], "time")) {
		int n = atoi(argv[4]);
		double *t = calloc(n > 0 ? n : 1, sizeof(double));
		long bytes = 0;

		if (n < 1 || !t)
			return 2;
		for (int i = 0; i < n; i++) {
			double t0 = now_us();

			bytes = get(argv[2], argv[3]);
			if (bytes < 0) {
				fprintf(stderr, "unixget: GET %s on %s failed\n", argv[3], argv[2]);
				return 1;
			}
			t[i] = now_us() - t0;
		}
		qsort(t, n, sizeof(double), cmp);
		printf("%.1f %.1f %.1f %ld\n", n % 2 ? t[n / 2] : (t[n / 2 - 1] + t[n / 2]) / 2, t[0],
		       t[n - 1], bytes);
		return 0;
	}
	if (argc == 5 && !strcmp(argv[1], "poll")) {
		long ms = atol(argv[4]);

		for (;;) {
			get(argv[2], argv[3]);
			usleep(ms * 1000);
		}
	}
	fprintf(stderr, "usage: %s time SOCKET PATH COUNT | poll SOCKET PATH MS\n", argv[0]);
	return 2;
}
