/* SPDX-License-Identifier: (BSD-2-Clause OR GPL-2.0-only) */
/*
 * HTTP/1.x byte parsing: recognising a request or status line, matching
 * header names and reading Content-Length, on bytes already copied from the
 * user buffer. Pure functions of their arguments; the scanning loops that
 * walk the per-CPU scratch stay next to it in http_stats.bpf.c.
 */
#ifndef HTTP_PARSE_H
#define HTTP_PARSE_H

#include <linux/types.h>

/* Direction of a socket transfer, from the traced process's side. */
#define DIR_READ 0  /* bytes received: requests are counted */
#define DIR_WRITE 1 /* bytes sent: responses are counted */

/* Parsing bounds (the verifier needs every loop bounded). */
#define SCAN_WINDOW 4096 /* bytes of a buffer copied and scanned, from the first message start */
#define SCAN_SLACK 32    /* lets header-name checks read past a line start without bounds math */
#define MAX_MESSAGES 16  /* message starts counted per buffer (pipelining) */
/* MAX_SEGMENTS is in http_stats.h: the daemon names it in a log hint. */
#define SCAN_CHUNK_STEPS 64 /* 8-byte steps or header lines per scan_lines() call */
#define SCAN_CHUNKS 12   /* scan_lines() calls per header block */
#define MIN_MESSAGE 16   /* shortest complete message: "HTTP/1.0 200\r\n\r\n" */
#define MAX_BODY 0x7fffffff
#define PARSE_STOP (-1)

#define W4(a, b, c, d) ((__u64)(a) | (__u64)(b) << 8 | (__u64)(c) << 16 | (__u64)(d) << 24)
#define W8(a, b, c, d, e, f, g, h) (W4(a, b, c, d) | W4(e, f, g, h) << 32)
#define LOW_BYTES(n) ((n) == 8 ? ~0ULL : (1ULL << ((n) * 8)) - 1)

/* Returns 1 when p starts an HTTP/1.x request line (method token and a space). */
static __always_inline int is_request_start(const char *p)
{
	__u64 w = *(const __u64 *)p;
	__u64 w4 = w & LOW_BYTES(4), w5 = w & LOW_BYTES(5);
	__u64 w6 = w & LOW_BYTES(6), w7 = w & LOW_BYTES(7);

	return w4 == W4('G', 'E', 'T', ' ') || w4 == W4('P', 'U', 'T', ' ') ||
	       w5 == W8('P', 'O', 'S', 'T', ' ', 0, 0, 0) ||
	       w5 == W8('H', 'E', 'A', 'D', ' ', 0, 0, 0) ||
	       w6 == W8('P', 'A', 'T', 'C', 'H', ' ', 0, 0) ||
	       w6 == W8('T', 'R', 'A', 'C', 'E', ' ', 0, 0) ||
	       w7 == W8('D', 'E', 'L', 'E', 'T', 'E', ' ', 0) ||
	       w == W8('O', 'P', 'T', 'I', 'O', 'N', 'S', ' ') ||
	       w == W8('C', 'O', 'N', 'N', 'E', 'C', 'T', ' ');
}

static __always_inline int is_digit(char c)
{
	return c >= '0' && c <= '9';
}

/* Returns the status code when p starts "HTTP/1.0 NNN" or "HTTP/1.1 NNN"
 * followed by a space or CR, else 0. */
static __always_inline __u32 response_status(const char *p)
{
	__u64 w = *(const __u64 *)p;

	if (w != W8('H', 'T', 'T', 'P', '/', '1', '.', '1') &&
	    w != W8('H', 'T', 'T', 'P', '/', '1', '.', '0'))
		return 0;
	if (p[8] != ' ' || p[9] < '1' || p[9] > '5' || !is_digit(p[10]) || !is_digit(p[11]) ||
	    (p[12] != ' ' && p[12] != '\r'))
		return 0;
	return (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
}

/* Returns 1 for a request (DIR_READ), the status code for a response
 * (DIR_WRITE), 0 when p starts neither. */
static __always_inline __u32 message_start(const char *p, __u32 dir)
{
	return dir == DIR_READ ? is_request_start(p) : response_status(p);
}

/* Case-insensitive compare of a header name of up to 16 bytes; OR-ing 0x20
 * lowercases letters and leaves '-' and ':' as they are. */
static __always_inline int header_is(const char *line, __u64 lo, __u64 hi, __u64 hi_mask)
{
	__u64 a = *(const __u64 *)line | 0x2020202020202020ULL;
	__u64 b = (*(const __u64 *)(line + 8) | 0x2020202020202020ULL) & hi_mask;

	return a == lo && b == hi;
}

/* Value of a "Content-Length:" line (up to 3 spaces, then up to 10 digits),
 * or -1 when it has no digits. */
static __always_inline __s64 parse_length(const char *line, __u32 rest)
{
	__u64 v = 0;
	__u32 digits = 0;

	for (__u32 j = 15; j < 15 + 13 && j < rest; j++) {
		char c = line[j];

		if (c == ' ' || c == '\t') {
			if (digits)
				break;
			continue;
		}
		if (!is_digit(c))
			break;
		v = v * 10 + (c - '0');
		digits++;
	}
	if (!digits)
		return -1;
	return v > MAX_BODY ? MAX_BODY : v;
}

/* Index of the first '\n' byte in w (little-endian), or 8 when there is none. */
static __always_inline __u32 first_newline(__u64 w)
{
	__u64 x = w ^ 0x0a0a0a0a0a0a0a0aULL;
	/* High bit of each byte that was '\n' (exact for the lowest such byte). */
	__u64 m = (x - 0x0101010101010101ULL) & ~x & 0x8080808080808080ULL;

	if (!m)
		return 8;
	/* Lowest set bit is 256^k << 7; multiplying by 0x0001..07 puts k in the top byte. */
	return (((m & -m) >> 7) * 0x0001020304050607ULL) >> 56;
}

#endif /* HTTP_PARSE_H */
