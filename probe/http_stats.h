/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * Types shared by the probe and the daemon. Every struct here is mirrored
 * once, field for field, as a #[repr(C)] struct in src/probe.rs; change both
 * together.
 */
#ifndef HTTP_STATS_H
#define HTTP_STATS_H

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

/* Indexes of the probe_drops counters: things the probe saw but could not
 * count. */
enum probe_drop {
	DROP_PROCESS_MAP_FULL = 0,  /* a new process found process_counts full */
	DROP_INFLIGHT_MAP_FULL = 1, /* a socket syscall found io_inflight full */
	DROP_MESSAGE_LIMIT = 2,     /* a buffer held more messages than the probe scans */
	DROP_SEGMENT_LIMIT = 3,     /* an iovec array had more segments than the probe walks */
	DROP_REASONS = 4,
};

#endif /* HTTP_STATS_H */
