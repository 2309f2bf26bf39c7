/* SPDX-License-Identifier: (BSD-2-Clause OR GPL-2.0-only) */
/*
 * What the probe shares with the daemon: the map values it reads, their
 * bounds, the latency boundaries and the drop reasons. This file is the one
 * source of both sides:
 * - here, _Static_asserts pin every shared struct's size and field offsets
 *   (and that it has no padding: the daemon takes any bytes as valid);
 * - build.rs compiles probe/abi_export.c, which includes this header, for
 *   the build host and runs it: it prints these numbers and strings as
 *   Rust constants, and src/probe/abi.rs checks its #[repr(C)] mirrors
 *   against them at compile time.
 * So a change on one side only fails the build. A new drop reason is one
 * line of PROBE_DROP_REASONS.
 */
#ifndef HTTP_STATS_H
#define HTTP_STATS_H

#include <linux/types.h>

/* Distinct status codes tracked per process; responses with a code that
 * finds no free slot are counted in process_counts.untracked_responses. */
#define MAX_CODES_PER_PROCESS 32
#define COMM_LEN 16 /* the kernel's TASK_COMM_LEN */

/* Per process (tgid) since the probe was loaded, or since the process first
 * received or sent HTTP, whichever is later. */
struct process_counts {
	__u64 first_seen_ns;            /* bpf_ktime_get_ns() at creation: tells a reused pid apart */
	__u64 requests;                 /* request start lines read from TCP sockets */
	__u64 untracked_responses;      /* responses whose code found no free slot */
	__u32 codes[MAX_CODES_PER_PROCESS];      /* 0 = free slot, else an HTTP status code */
	__u64 responses[MAX_CODES_PER_PROCESS];  /* responses written with codes[i] */
	char comm[COMM_LEN];            /* task comm when the entry was created */
};

/* Its layout, field by field: (struct, field, offset). */
#define PROCESS_COUNTS_FIELDS(F)                  \
	F(process_counts, first_seen_ns, 0)       \
	F(process_counts, requests, 8)            \
	F(process_counts, untracked_responses, 16) \
	F(process_counts, codes, 24)              \
	F(process_counts, responses, 152)         \
	F(process_counts, comm, 408)
#define PROCESS_COUNTS_SIZE 424

/* Request latency, per process: read that delivered a request -> first write
 * of its response on the same socket.
 * Fine histogram: log-linear like HDR histograms. Values are in units of
 * 2^LATENCY_UNIT_SHIFT ns (~1 us); below LATENCY_SUB_BUCKETS units each unit
 * is a bucket, above it each power of two is split in LATENCY_SUB_BUCKETS, so
 * a bucket is at most 1/16 of its value wide (quantiles within ~3%). The
 * last bucket also takes everything above ~275 s. */
#define LATENCY_UNIT_SHIFT 10
#define LATENCY_SUB_BUCKETS 16
#define LOG2_SUB_BUCKETS 4 /* log2(LATENCY_SUB_BUCKETS) */
#define LATENCY_FINE_BUCKETS 400
/* Exact counters for the OpenTelemetry HTTP server duration boundaries,
 * 5 ms ... 10 s, plus one for everything above: Prometheus buckets must not
 * depend on where a fine bucket happens to straddle a boundary. */
#define LATENCY_BOUNDS 14

/* The boundaries, in ns (seconds: 0.005 0.01 0.025 0.05 0.075 0.1 0.25 0.5
 * 0.75 1 2.5 5 7.5 10); the daemon's Prometheus `le` labels are made from
 * them. */
static const __u64 latency_bounds_ns[LATENCY_BOUNDS] = {
	5000000,   10000000,   25000000,   50000000,   75000000,
	100000000, 250000000,  500000000,  750000000,  1000000000,
	2500000000, 5000000000, 7500000000, 10000000000,
};

struct latency_stats {
	__u64 sum_ns;                          /* the count is the sum of le[] */
	__u64 le[LATENCY_BOUNDS + 1];          /* le[i]: bound[i-1] < latency <= bound[i] */
	__u32 fine[LATENCY_FINE_BUCKETS];
};

#define LATENCY_STATS_FIELDS(F)   \
	F(latency_stats, sum_ns, 0) \
	F(latency_stats, le, 8)     \
	F(latency_stats, fine, 128)
#define LATENCY_STATS_SIZE 1728

/* Where one direction of a connection's byte stream stands between two
 * transfers: the body still to come before the next message can start, or
 * the first bytes of a message whose start (or head) was cut by the end of
 * the last transfer (Go's net/http reads "G", then "ET / HTTP/1.1...").
 * Only the probe reads it. */
#define CARRY_MAX 32
struct stream_state {
	__u32 skip;          /* body bytes still to come */
	__u8 carry_len;      /* bytes kept in carry[] (at most CARRY_MAX) */
	__u8 carry_counted;  /* carry[] begins a message already counted, whose head is unfinished */
	__u8 pad[2];
	char carry[CARRY_MAX];
};

/* What a connection was seen to be; the probe skips the last two at once,
 * before it reads any user memory. */
enum connection_verdict {
	VERDICT_UNKNOWN = 0,  /* nothing decided yet (or seen from mid-stream) */
	VERDICT_SERVER = 1,   /* the process reads requests on it */
	VERDICT_CLIENT = 2,   /* the process writes requests or reads responses on it */
	VERDICT_NOT_HTTP = 3, /* its first bytes read were not HTTP/1.x */
};

/* One connection (the `connections` map), kept for its life: its verdict,
 * the requests read on it and not yet answered, oldest first, and each
 * direction's stream state (indexed by DIR_READ, DIR_WRITE). The daemon
 * counts the connections with requests queued (tail != head). */
#define MAX_AWAITING 16 /* pipelined requests remembered per connection */
struct connection {
	__u32 tgid;        /* the process that read the queued requests */
	__u32 verdict;     /* enum connection_verdict */
	__u32 head, tail;  /* read_ns[head % MAX_AWAITING] is the oldest; tail - head queued */
	__u64 ident;       /* the socket's ports: tells a reused struct sock apart */
	__u64 read_ns[MAX_AWAITING];
	struct stream_state stream[2];
};

#define CONNECTION_FIELDS(F)      \
	F(connection, tgid, 0)      \
	F(connection, verdict, 4)   \
	F(connection, head, 8)      \
	F(connection, tail, 12)     \
	F(connection, ident, 16)    \
	F(connection, read_ns, 24)  \
	F(connection, stream, 152)
#define CONNECTION_SIZE 232

/* iovecs walked per readv/writev/recvmsg/sendmsg; the daemon names it in a
 * log hint. */
#define MAX_SEGMENTS 8

#define ABI_STR(x) #x
#define ABI_XSTR(x) ABI_STR(x)

/*
 * Things the probe saw but could not count: the indexes of the probe_drops
 * counters. One line each: DROP(name, the daemon's metrics label, the hint it
 * logs when the counter starts growing). "{max_processes}" in a hint is
 * replaced by --max-processes; an empty hint means the drop is expected, not
 * a fault, and is not logged.
 */
#define PROBE_DROP_REASONS(DROP)                                                          \
	/* a new process found process_counts full */                                     \
	DROP(PROCESS_MAP_FULL, "process_map_full",                                        \
	     "the table of {max_processes} processes is full, new processes are not "    \
	     "counted (raise --max-processes)")                                           \
	/* a socket syscall found syscalls_in_flight full */                              \
	DROP(SYSCALL_TABLE_FULL, "syscall_table_full",                                    \
	     "too many threads inside socket syscalls at once; some transfers are not "  \
	     "seen")                                                                      \
	/* a buffer held more messages than the probe scans */                            \
	DROP(MESSAGE_LIMIT, "message_limit",                                              \
	     "some pipelined messages were beyond what the probe scans per buffer")       \
	/* an iovec array had more segments than the probe walks */                       \
	DROP(SEGMENT_LIMIT, "segment_limit",                                              \
	     "a readv/writev/recvmsg/sendmsg had more than " ABI_XSTR(MAX_SEGMENTS)       \
	     " iovec segments; messages in the segments beyond are not counted")          \
	/* a request found the connections map full: no latency for it */                   \
	DROP(AWAITING_FULL, "awaiting_table_full",                                        \
	     "too many connections with unanswered requests; their latency is not "      \
	     "measured")                                                                  \
	/* more requests awaiting a response on one connection than kept */               \
	DROP(PIPELINE_DEPTH, "pipeline_depth",                                            \
	     "more than " ABI_XSTR(MAX_AWAITING) " pipelined requests awaiting "          \
	     "responses on a connection; their latency is not measured")                  \
	/* socket path: TCP I/O by io_uring, sendfile, splice...: not read. Not a     \
	 * fault: nginx's sendfile bodies land here all the time. */                      \
	DROP(UNSUPPORTED_SYSCALL, "unsupported_syscall", "")

enum probe_drop {
#define DROP_ENUM(name, label, hint) DROP_##name,
	PROBE_DROP_REASONS(DROP_ENUM)
#undef DROP_ENUM
	DROP_REASONS, /* how many: the size of probe_drops */
};

/* ---- the layout checks (see the top of this file) ---- */

#define ABI_OFFSET_IS(type, field, offset)                                     \
	_Static_assert(__builtin_offsetof(struct type, field) == (offset),      \
		       "struct " #type "." #field " moved: change src/probe/abi.rs too");
#define ABI_FIELD_SIZE(type, field, offset) +sizeof(((struct type *)0)->field)
#define ABI_LAYOUT_IS(type, FIELDS, size)                                      \
	FIELDS(ABI_OFFSET_IS)                                                   \
	_Static_assert(sizeof(struct type) == (size),                           \
		       "struct " #type " changed size: change src/probe/abi.rs too"); \
	_Static_assert(sizeof(struct type) == 0 FIELDS(ABI_FIELD_SIZE),         \
		       "struct " #type ": padding, or a field missing from its list");

ABI_LAYOUT_IS(process_counts, PROCESS_COUNTS_FIELDS, PROCESS_COUNTS_SIZE)
ABI_LAYOUT_IS(latency_stats, LATENCY_STATS_FIELDS, LATENCY_STATS_SIZE)
ABI_LAYOUT_IS(connection, CONNECTION_FIELDS, CONNECTION_SIZE)
_Static_assert(sizeof(struct stream_state) == 8 + CARRY_MAX, "struct stream_state: padding");
_Static_assert(1 << LOG2_SUB_BUCKETS == LATENCY_SUB_BUCKETS, "LOG2_SUB_BUCKETS");

#endif /* HTTP_STATS_H */
