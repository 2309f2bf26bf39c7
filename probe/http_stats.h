/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Types shared by the probe and the daemon. Every struct here is mirrored
 * once, field for field, as a #[repr(C)] struct in src/probe.rs; change both
 * together.
 */
#ifndef HTTP_STATS_H
#define HTTP_STATS_H

#include <linux/types.h>

/* Distinct status codes tracked per process; responses with a code that
 * finds no free slot are counted in process_counts.untracked_responses. */
#define MAX_CODES_PER_PROCESS 32

/* Per process (tgid) since the probe was loaded, or since the process first
 * received or sent HTTP, whichever is later. */
struct process_counts {
	__u64 first_seen_ns;            /* bpf_ktime_get_ns() at creation: tells a reused pid apart */
	__u64 requests;                 /* request start lines read from TCP sockets */
	__u64 untracked_responses;      /* responses whose code found no free slot */
	__u32 codes[MAX_CODES_PER_PROCESS];      /* 0 = free slot, else an HTTP status code */
	__u64 responses[MAX_CODES_PER_PROCESS];  /* responses written with codes[i] */
	char comm[16];                  /* task comm when the entry was created */
};

/* Request latency, per process: read that delivered a request -> first write
 * of its response on the same socket.
 * Fine histogram: log-linear like HDR histograms. Values are in units of
 * 2^LATENCY_UNIT_SHIFT ns (~1 us); below LATENCY_SUB_BUCKETS units each unit
 * is a bucket, above it each power of two is split in LATENCY_SUB_BUCKETS, so
 * a bucket is at most 1/16 of its value wide (quantiles within ~3%). The
 * last bucket also takes everything above ~275 s. */
#define LATENCY_UNIT_SHIFT 10
#define LATENCY_SUB_BUCKETS 16
#define LATENCY_FINE_BUCKETS 400
/* Exact counters for the OpenTelemetry HTTP server duration boundaries,
 * 5 ms ... 10 s, plus one for everything above: Prometheus buckets must not
 * depend on where a fine bucket happens to straddle a boundary. */
#define LATENCY_BOUNDS 14

struct latency_stats {
	__u64 sum_ns;                          /* the count is the sum of le[] */
	__u64 le[LATENCY_BOUNDS + 1];          /* le[i]: bound[i-1] < latency <= bound[i] */
	__u32 fine[LATENCY_FINE_BUCKETS];
};

/* Requests read but not yet answered on one connection (awaiting_response),
 * oldest first. */
#define MAX_AWAITING 16 /* pipelined requests remembered per connection */
struct awaiting {
	__u32 tgid;        /* the process that read the requests */
	__u32 head, tail;  /* read_ns[head % MAX_AWAITING] is the oldest; tail - head queued */
	__u32 pad;
	__u64 read_ns[MAX_AWAITING];
};

/* Indexes of the probe_drops counters: things the probe saw but could not
 * count. */
enum probe_drop {
	DROP_PROCESS_MAP_FULL = 0,  /* a new process found process_counts full */
	DROP_SYSCALL_TABLE_FULL = 1, /* a socket syscall found syscalls_in_flight full */
	DROP_MESSAGE_LIMIT = 2,     /* a buffer held more messages than the probe scans */
	DROP_SEGMENT_LIMIT = 3,     /* an iovec array had more segments than the probe walks */
	DROP_AWAITING_FULL = 4,     /* a request found awaiting_response full: no latency for it */
	DROP_PIPELINE_DEPTH = 5,    /* more requests awaiting a response on one connection than kept */
	DROP_UNSUPPORTED_SYSCALL = 6, /* socket path: TCP I/O by io_uring, sendfile, splice...: not read */
	DROP_REASONS = 7,
};

#endif /* HTTP_STATS_H */
