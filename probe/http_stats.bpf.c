// SPDX-License-Identifier: (BSD-2-Clause OR GPL-2.0-only)
/*
 * scope-http-statistics probe: counts, per process, the HTTP/1.x requests it
 * reads from TCP sockets and the responses (by status code) it writes to them.
 *
 * Layers:
 *   hooks   two interchangeable paths that hand (process, connection, user
 *           buffer, length) to the same core, chosen by the daemon at start:
 *           - socket layer (Linux 6.3+): sock/sock_recv_length and
 *             sock/sock_send_length fire once per TCP receive or send; the
 *             user buffer comes from the syscall's registers. Other syscalls
 *             are never slowed down.
 *           - syscall tracepoints (older kernels): the enter side decides in
 *             the kernel whether the fd is a TCP socket and remembers the
 *             buffer, the exit side hands it on.
 *   parsing parse_buffer()/scan_headers(): find every message start in a
 *           buffer (pipelining), skipping bodies by Content-Length; the
 *           byte-level checks are in http_parse.h.
 *   counting process_counts, keyed by tgid, removed when the process exits;
 *           latency pairs each response with the oldest request awaiting one
 *           on its connection into latency_by_process (bucket arithmetic in
 *           latency.h).
 *   connections one entry per connection (struct sock, or whatever key a
 *           hook layer uses), kept for the connection's life: its verdict
 *           (not HTTP and client connections are skipped before any user
 *           memory is read), its latency queue, and each direction's stream
 *           state, so that a message cut anywhere by the end of a transfer
 *           (a request read "G" + "ET / ...") is still counted once.
 * Nothing is sent to userspace per request: the daemon reads the maps once a
 * second.
 *
 * This file holds the maps and the programs. Headers: http_stats.h, what the
 * daemon shares (map values, bounds, drop reasons); kernel.h, the kernel and
 * x86-64 user ABI declarations; http_parse.h and latency.h, pure helpers.
 */
#include <linux/bpf.h>
#include <linux/types.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#include "http_stats.h"
#include "kernel.h"
#include "http_parse.h"
#include "latency.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* ---- maps ---- */

/* Writer: sys_enter_* of the eight socket I/O syscalls, for TCP sockets only.
 * Reader: the matching sys_exit_*, which deletes the entry; sched_process_exit
 * deletes what a dying thread left. Bound: threads inside a socket syscall at
 * once; when full, the transfer is not seen and DROP_SYSCALL_TABLE_FULL counts it. */
struct pending_io {
	__u64 buf;      /* user buffer, or user iovec array when iovcnt > 0 */
	__u64 sk;       /* the connection: its struct sock */
	__u64 enter_ns; /* when the syscall started */
	__u32 iovcnt;   /* 0 for read/write/recvfrom/sendto */
	__u32 dir;      /* DIR_READ or DIR_WRITE */
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 10240);
	__type(key, __u64); /* pid_tgid: one syscall in flight per thread */
	__type(value, struct pending_io);
} syscalls_in_flight SEC(".maps");

/* Writer: parse_buffer() creates and increments; sched_process_exit deletes.
 * Reader: the daemon, once a second. Bound: max_entries (the daemon may set it
 * at load); a new process that finds it full is skipped and
 * DROP_PROCESS_MAP_FULL counts each skipped buffer. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32); /* tgid, in the initial pid namespace */
	__type(value, struct process_counts);
} process_counts SEC(".maps");

/* Writer: parse_buffer() on responses; sched_process_exit deletes. Reader: the
 * daemon, once a second. Bound: as process_counts (the daemon sets both);
 * entries are allocated only for processes that answered requests. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32); /* tgid */
	__type(value, struct latency_stats);
} latency_by_process SEC(".maps");

/* Every connection the probe has something to remember about (struct
 * connection). Writer: count_transfer() creates an entry when a connection
 * first shows a request, a verdict or a cut message, and updates it on each
 * transfer; inet_sock_set_state deletes it when the socket closes,
 * tcp_destroy_sock when the kernel frees it (so a read after the close
 * cannot leave it behind), sched_process_exit when the process that owns
 * its queue exits. Reader: the daemon counts the entries with requests
 * queued (in flight). Bound: max_entries; a connection that finds it full is
 * counted statelessly (no latency, no cut messages) and a request on it
 * counts DROP_AWAITING_FULL. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); /* struct sock pointer (or the hook's own connection key) */
	__type(value, struct connection);
} connections SEC(".maps");

/* Which status code claimed slot `slot` of a process's codes[]. Writer:
 * claim_code_slot(), once per new code of a process: BPF_NOEXIST lets only
 * the first insert for a slot succeed. Reader: claim_code_slot() of a thread
 * that lost that race. Bound: LRU eviction; an entry matters only until its
 * winner has written codes[slot], a few instructions after the insert. */
struct code_slot {
	__u64 first_seen_ns; /* of the process_counts entry: a reused pid claims anew */
	__u32 tgid;
	__u32 slot;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 1024);
	__type(key, struct code_slot);
	__type(value, __u32);
} code_slots SEC(".maps");

/* Writer: the probe, per CPU, indexed by enum probe_drop. Reader: the daemon
 * sums the CPUs. Bound: DROP_REASONS entries. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DROP_REASONS);
	__type(key, __u32);
	__type(value, __u64);
} probe_drops SEC(".maps");

/* Per-CPU working memory (too big for the 512-byte BPF stack), and the
 * transfer being counted, since BPF functions take at most five arguments.
 * Writer: count_transfer() (the transfer), then the parsing and counting
 * functions it calls; reader: the same, on the same CPU, within one program
 * run (tracepoint programs do not nest on a CPU). */
struct scan_scratch {
	char data[SCAN_WINDOW + SCAN_SLACK];
	__s64 content_length; /* -1 when the headers have none */
	__u32 chunked;        /* Transfer-Encoding present: body length unknown */
	struct process_counts fresh; /* a new process_counts entry, built here, not on the stack */
	struct latency_stats fresh_latency;
	struct connection fresh_connection;
	/* The transfer being parsed, set by count_transfer(). */
	__u32 tgid;
	__u32 dir;
	__u64 sk;
	__u64 io_ns; /* request: when its read returned; response: when its write began */
	__u32 stream_start; /* this read holds the first bytes ever read on the connection */
	/* In and out of parse_buffer(): the direction's stream state, and what
	 * the transfer held, applied to the connection afterwards. */
	struct stream_state st;
	__u32 requests_read;   /* requests counted: each queued for its response */
	__u32 responses_final; /* final (not 1xx) responses: each paired with a request */
	__u32 verdict;         /* a verdict the transfer showed, or VERDICT_UNKNOWN */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scan_scratch);
} scratch SEC(".maps");

/* ---- helpers ---- */

/* v, which is at most max already, clamped again in the register that is
 * used next: the 6.1 verifier forgets the bounds of a value clang spilled to
 * the stack across calls ("R2 unbounded memory access"), and clang cannot
 * fold an asm clamp away as it would a C one. */
#define VERIFIER_CLAMP(value, max)                                                \
	({                                                                        \
		__u64 __v = (value);                                              \
		asm volatile("if %[v] <= %[m] goto +1; %[v] = %[m]"              \
			     : [v] "+r"(__v)                                      \
			     : [m] "i"(max));                                     \
		__v;                                                              \
	})

/* This CPU's scratch; every function of the core finds the transfer there. */
static __always_inline struct scan_scratch *cpu_scratch(void)
{
	__u32 key = 0;

	return bpf_map_lookup_elem(&scratch, &key);
}

static __always_inline void count_drop(__u32 reason)
{
	__u64 *v = bpf_map_lookup_elem(&probe_drops, &reason);

	if (v)
		*v += 1; /* per-CPU slot: no atomics needed */
}

/* What tells one connection on a struct sock from a later one at the same
 * address: its ports (the client's is ephemeral). One read: this is on the
 * path of every TCP transfer. */
static __always_inline __u64 sock_ident(__u64 key)
{
	struct sock *sk = (struct sock *)key;

	return BPF_CORE_READ(sk, __sk_common.skc_portpair);
}

/* The entry of the socket `key`, or NULL. An entry left by an earlier socket
 * at the same address (its close or free went unseen: a tracepoint program
 * that fires while another runs on the CPU is skipped) is reset first, so a
 * stale verdict never hides a new connection. */
static __always_inline struct connection *sock_connection(__u64 key)
{
	struct connection *c = bpf_map_lookup_elem(&connections, &key);

	if (c) {
		__u64 ident = sock_ident(key);

		if (c->ident != ident) {
			c->ident = ident;
			c->verdict = VERDICT_UNKNOWN;
			c->head = c->tail;
			__builtin_memset(&c->stream, 0, sizeof(c->stream));
		}
	}
	return c;
}

/* Whether a connection's verdict says its transfers need not be looked at. */
static __always_inline int skipped(struct connection *c)
{
	return c && c->verdict >= VERDICT_CLIENT;
}

/* ---- parsing: the header scan over this CPU's scratch ---- */

/*
 * Looks at the header line starting at offset i of the scratch window (n bytes
 * valid). Returns the length of the line break when it is the blank line that
 * ends the header block (2 for CRLF, 1 for LF), else 0, after recording
 * Content-Length and Transfer-Encoding in the scratch. Global, so the
 * verifier checks it once rather than at every step of scan_lines().
 */
__noinline int header_line(__u32 i, __u32 n)
{
	struct scan_scratch *s = cpu_scratch();

	if (!s || i >= n || n > SCAN_WINDOW)
		return 0;
	__u32 rest = n - i;
	const char *line = &s->data[i & (SCAN_WINDOW - 1)];

	if (line[0] == '\n')
		return 1;
	if (rest >= 2 && line[0] == '\r' && line[1] == '\n')
		return 2;
	if (rest >= 16 && header_is(line, W8('c', 'o', 'n', 't', 'e', 'n', 't', '-'),
				    W8('l', 'e', 'n', 'g', 't', 'h', ':', 0), LOW_BYTES(7)))
		s->content_length = parse_length(line, rest);
	else if (rest >= 18 && header_is(line, W8('t', 'r', 'a', 'n', 's', 'f', 'e', 'r'),
					 W8('-', 'e', 'n', 'c', 'o', 'd', 'i', 'n'), ~0ULL))
		s->chunked = 1;
	return 0;
}

#define HEADERS_END 0x40000000 /* scan_lines() result flag: the header block ends here */

/*
 * Scans at most SCAN_CHUNK_STEPS steps (an 8-byte word, or one header line)
 * of the scratch window from i, a position inside the header block. Returns
 * HEADERS_END | the offset just past the block, or the position to resume
 * from, or 0 when the block does not end inside the window. Records
 * Content-Length and Transfer-Encoding in the scratch. A global function, so
 * the verifier walks one chunk of the scan, not all of it.
 */
__noinline int scan_lines(__u32 i, __u32 n)
{
	struct scan_scratch *s = cpu_scratch();

	if (!s)
		return 0;
	for (__u32 step = 0; step < SCAN_CHUNK_STEPS; step++) {
		if (i >= n || n > SCAN_WINDOW)
			return 0;
		i &= SCAN_WINDOW - 1;
		__u32 nl = i + first_newline(*(const __u64 *)&s->data[i]);

		if (nl >= n)
			return 0;
		if (nl - i == 8) {
			i = nl;
			continue;
		}
		i = nl + 1; /* the next line starts here */
		int blank = header_line(i, n);

		if (blank)
			return HEADERS_END | (i + blank);
	}
	return i;
}

/* Finds the end of the header block of the message starting at pos: the
 * offset just past it, or 0 when it is not inside the first n bytes. */
static __always_inline __u32 scan_headers(struct scan_scratch *s, __u32 pos, __u32 n)
{
	s->content_length = -1;
	s->chunked = 0;
	for (__u32 chunk = 0; chunk < SCAN_CHUNKS; chunk++) {
		int r = scan_lines(pos, n);

		if (r <= 0)
			return 0;
		if (r & HEADERS_END)
			return r & ~HEADERS_END;
		pos = r;
	}
	return 0;
}

/* ---- counting ---- */

static __always_inline struct process_counts *process_entry(struct scan_scratch *s, __u32 tgid)
{
	struct process_counts *pc = bpf_map_lookup_elem(&process_counts, &tgid);

	if (pc)
		return pc;
	__builtin_memset(&s->fresh, 0, sizeof(s->fresh));
	s->fresh.first_seen_ns = bpf_ktime_get_ns();
	bpf_get_current_comm(s->fresh.comm, sizeof(s->fresh.comm));
	/* NOEXIST: another thread of the process may have created it meanwhile. */
	if (bpf_map_update_elem(&process_counts, &tgid, &s->fresh, BPF_NOEXIST) == -E2BIG)
		count_drop(DROP_PROCESS_MAP_FULL);
	return bpf_map_lookup_elem(&process_counts, &tgid);
}

/* The code that owns slot i of pc->codes, which looked free: the first
 * thread to insert its code for that slot wins, as a compare-and-swap would
 * (BPF has none before Linux 5.12); a loser reads the winner's code. */
static __always_inline __u32 claim_code_slot(struct process_counts *pc, __u32 tgid, __u32 i,
					     __u32 code)
{
	struct code_slot key = { .first_seen_ns = pc->first_seen_ns, .tgid = tgid, .slot = i };
	__u32 *owner;

	if (!bpf_map_update_elem(&code_slots, &key, &code, BPF_NOEXIST)) {
		pc->codes[i] = code;
		return code;
	}
	owner = bpf_map_lookup_elem(&code_slots, &key);
	return owner ? *owner : pc->codes[i];
}

/* Counts one response with status `code` for the scratch's process. Global:
 * the verifier checks its walk of the slots once, not at every message of
 * parse_buffer() (the 6.1 verifier gives up on parse_buffer() otherwise). */
__noinline int count_response(__u32 code)
{
	struct scan_scratch *s = cpu_scratch();
	struct process_counts *pc;

	if (!s)
		return 0;
	pc = bpf_map_lookup_elem(&process_counts, &s->tgid);
	if (!pc)
		return 0;
	for (__u32 i = 0; i < MAX_CODES_PER_PROCESS; i++) {
		__u32 c = pc->codes[i];

		if (c == 0)
			c = claim_code_slot(pc, s->tgid, i, code);
		if (c == code) {
			__sync_fetch_and_add(&pc->responses[i], 1);
			return 0;
		}
	}
	__sync_fetch_and_add(&pc->untracked_responses, 1);
	return 0;
}

/* Adds one latency of the scratch's process to its histograms. Global: the
 * verifier checks it once, not at every message of parse_buffer(). */
__noinline int record_latency(__u64 ns)
{
	struct scan_scratch *s = cpu_scratch();
	struct latency_stats *l;

	if (!s)
		return 0;
	l = bpf_map_lookup_elem(&latency_by_process, &s->tgid);
	if (!l) {
		/* Too big for an inlined memset (volatile keeps clang from making the loop one). */
		volatile __u64 *w = (volatile __u64 *)&s->fresh_latency;

		for (__u32 i = 0; i < sizeof(s->fresh_latency) / 8; i++)
			w[i] = 0;
		bpf_map_update_elem(&latency_by_process, &s->tgid, &s->fresh_latency, BPF_NOEXIST);
		l = bpf_map_lookup_elem(&latency_by_process, &s->tgid);
		if (!l)
			return 0; /* full: process_counts, of the same bound, counts the drop */
	}
	__u32 b = 0;

	for (; b < LATENCY_BOUNDS; b++)
		if (ns <= latency_bounds_ns[b])
			break;
	__sync_fetch_and_add(&l->le[b], 1);
	__u32 f = fine_bucket(ns);

	/* Keep clang from folding away the bound the verifier needs to see. */
	asm volatile("" : "+r"(f));
	if (f >= LATENCY_FINE_BUCKETS)
		f = LATENCY_FINE_BUCKETS - 1;
	__sync_fetch_and_add(&l->fine[f], 1);
	__sync_fetch_and_add(&l->sum_ns, ns);
	return 0;
}

/* 1 when the v bytes at p, fewer than message_start() needs to decide,
 * could begin a message of direction dir (a request method and its space,
 * or "HTTP/1.x NNN "). */
static __always_inline int is_start_prefix(const char *p, __u32 v, __u32 dir)
{
	__u64 w = *(const __u64 *)p;

	if (v == 0)
		return 0;
	if (dir == DIR_READ) {
		if (v >= 8)
			return 0;
		__u64 m = LOW_BYTES(v);

		w &= m;
		return w == (W4('G', 'E', 'T', ' ') & m) || w == (W4('P', 'U', 'T', ' ') & m) ||
		       w == (W8('P', 'O', 'S', 'T', ' ', 0, 0, 0) & m) ||
		       w == (W8('H', 'E', 'A', 'D', ' ', 0, 0, 0) & m) ||
		       w == (W8('P', 'A', 'T', 'C', 'H', ' ', 0, 0) & m) ||
		       w == (W8('T', 'R', 'A', 'C', 'E', ' ', 0, 0) & m) ||
		       w == (W8('D', 'E', 'L', 'E', 'T', 'E', ' ', 0) & m) ||
		       w == (W8('O', 'P', 'T', 'I', 'O', 'N', 'S', ' ') & m) ||
		       w == (W8('C', 'O', 'N', 'N', 'E', 'C', 'T', ' ') & m);
	}
	if (v >= 13)
		return 0;
	__u64 m = LOW_BYTES(v < 8 ? v : 8);

	if ((w & m) != (W8('H', 'T', 'T', 'P', '/', '1', '.', '1') & m) &&
	    (w & m) != (W8('H', 'T', 'T', 'P', '/', '1', '.', '0') & m))
		return 0;
	return (v <= 8 || p[8] == ' ') && (v <= 9 || (p[9] >= '1' && p[9] <= '5')) &&
	       (v <= 10 || is_digit(p[10])) && (v <= 11 || is_digit(p[11]));
}

/* A PROXY protocol header (v1 text or v2 binary), which a load balancer
 * sends before the HTTP it forwards: not a reason to call a connection
 * "not HTTP". */
static __always_inline int is_proxy_header(const char *p)
{
	__u64 w = *(const __u64 *)p;

	return (w & LOW_BYTES(6)) == W8('P', 'R', 'O', 'X', 'Y', ' ', 0, 0) ||
	       w == W8('\r', '\n', '\r', '\n', 0, '\r', '\n', 'Q');
}

/* Zeroes the 16 bytes at data[i]: the parser may look that far past the
 * bytes it was given, and must find no stale bytes of an earlier transfer. */
static __always_inline void pad_after(struct scan_scratch *s, __u32 at)
{
	__u64 i = VERIFIER_CLAMP(at, SCAN_WINDOW); /* data has SCAN_SLACK bytes past it */

	*(__u64 *)&s->data[i] = 0;
	*(__u64 *)&s->data[i + 8] = 0;
}

/* Keeps data[pos, pos + v) (v <= CARRY_MAX) as the carry of the stream. */
static __always_inline void keep_carry(struct scan_scratch *s, __u32 pos, __u32 v, __u32 counted)
{
	pos &= SCAN_WINDOW - 1;
	for (__u32 i = 0; i < CARRY_MAX; i += 8)
		*(__u64 *)&s->st.carry[i] = *(const __u64 *)&s->data[pos + i];
	s->st.carry_len = v;
	s->st.carry_counted = counted;
}

/* The buffer ends at pos with v (< 16) bytes that may begin a message:
 * keep them for the next transfer. Returns 0 when kept, else PARSE_STOP. */
__noinline int carry_start(__u32 pos, __u32 v)
{
	struct scan_scratch *s = cpu_scratch();

	if (!s || v >= MIN_MESSAGE || pos >= SCAN_WINDOW)
		return PARSE_STOP;
	if (!is_start_prefix(&s->data[pos], v, s->dir & 1))
		return PARSE_STOP;
	keep_carry(s, pos, v, 0);
	return 0;
}

/*
 * The message starting at pos of the window (n bytes; the buffer's bytes run
 * to total, maybe past the window) was counted, with status code `code` for
 * a response: finds where the next one starts. Returns that position, inside
 * the window; or 0 when the buffer ends inside this message, leaving in s->st
 * how the stream goes on (body to skip, or the unfinished head carried); or
 * PARSE_STOP when it cannot be known. Global: verified once, not at every
 * message of parse_buffer().
 */
__noinline int message_end(__u32 pos, __u32 n, __u32 total, __u32 code)
{
	struct scan_scratch *s = cpu_scratch();

	if (!s || pos >= n || n > SCAN_WINDOW)
		return PARSE_STOP;
	__u32 end = scan_headers(s, pos, n);

	if (!end) {
		/* The head goes on in the next transfer: carry it when short. */
		__u32 v = n - pos;

		if (n == total && v <= CARRY_MAX) {
			keep_carry(s, pos, v, 1);
			return 0;
		}
		return PARSE_STOP;
	}
	if (s->chunked)
		return PARSE_STOP;
	__u64 body = s->content_length < 0 ? 0 : s->content_length;

	if (s->dir == DIR_WRITE) {
		/* No body: 1xx, 204, 304 always; a response to HEAD carries a
		 * Content-Length but no body, which shows as the next status
		 * line right after the headers. A response without a length
		 * runs to the connection's end. */
		if (code < 200 || code == 204 || code == 304)
			body = 0;
		else if (end + MIN_MESSAGE <= n && response_status(&s->data[end & (SCAN_WINDOW - 1)]))
			body = 0;
		else if (s->content_length < 0)
			return PARSE_STOP;
	}
	__u64 next = end + body;

	if (next >= total) {
		if (next - total > MAX_BODY)
			return PARSE_STOP;
		s->st.skip = next - total;
		return 0;
	}
	if (next >= n) {
		/* More bytes follow, but outside the scanned window. */
		count_drop(DROP_MESSAGE_LIMIT);
		return PARSE_STOP;
	}
	return next;
}

/* message_start() of the window at pos. Global: the verifier checks it
 * once, not at every message of parse_buffer() (the 6.1 verifier runs out of
 * its million instructions otherwise). */
__noinline int message_start_at(__u32 pos, __u32 dir)
{
	struct scan_scratch *s = cpu_scratch();

	if (!s)
		return 0;
	return message_start(&s->data[pos & (SCAN_WINDOW - 1)], dir);
}

/*
 * The counting core: counts every message that starts in the user buffer
 * [buf, buf+len), for the transfer (process, connection, direction, time)
 * count_transfer_on() put in the scratch, continuing the direction's stream
 * state (s->st): body bytes still to skip, or the carried start of a message
 * cut by the end of the previous transfer, which is parsed as if it came
 * first in this buffer. Leaves in s->st where the stream stands at the end
 * of the buffer. Returns 0, or PARSE_STOP when the next message start cannot
 * be known (the state is then empty: the next transfer is looked at afresh).
 */
#define SHORT_COPY 256 /* buffers up to this long are copied in one read */

__noinline int parse_buffer(__u64 buf, __u32 len)
{
	struct scan_scratch *s = cpu_scratch();
	struct process_counts *pc;
	int r;

	if (!s)
		return PARSE_STOP;
	if (!len)
		return 0;
	__u32 dir = s->dir & 1;
	__u32 off = 0; /* where this buffer's part of the window starts */

	if (s->st.skip) {
		/* Inside a body. A message start where the body should go on
		 * wins (a response to HEAD has a Content-Length and no body). */
		__u32 peek = VERIFIER_CLAMP(len, MIN_MESSAGE); /* min(len, MIN_MESSAGE) */

		pad_after(s, 0);
		if (bpf_probe_read_user(s->data, peek, (const void *)buf))
			goto stop;
		if (message_start(s->data, dir)) {
			s->st.skip = 0;
		} else if (s->st.skip >= len) {
			s->st.skip -= len;
			return 0;
		} else {
			off = s->st.skip;
			s->st.skip = 0;
		}
	}
	__u32 k = s->st.carry_len; /* the window starts with these carried bytes */
	__u32 counted = s->st.carry_counted;

	if (k > CARRY_MAX)
		k = 0;
	for (__u32 i = 0; i < CARRY_MAX; i += 8)
		*(__u64 *)&s->data[i] = *(const __u64 *)&s->st.carry[i];
	s->st.carry_len = 0;
	s->st.carry_counted = 0;

	__u32 avail = len - off; /* bytes of this buffer from its first possible message start */
	__u32 nb = VERIFIER_CLAMP(avail, SCAN_WINDOW - CARRY_MAX); /* min(avail, ...) */
	__u32 peek = VERIFIER_CLAMP(nb, MIN_MESSAGE); /* min(nb, MIN_MESSAGE) */
	__u32 total = k + avail; /* stream bytes from the window's start to the buffer's end */

	/* Look at 16 bytes first: traffic that is not an HTTP start should not
	 * pay for copying a whole window. A short buffer is copied at once. */
	if (nb <= SHORT_COPY)
		peek = nb;
	pad_after(s, k);
	if (bpf_probe_read_user(&s->data[k], peek, (const void *)(buf + off)))
		goto stop;
	if (!counted && !message_start(s->data, dir)) {
		if (nb == peek && !carry_start(0, k + peek))
			return 0; /* the whole buffer is the start of a message */
		/* What the bytes say about the connection. */
		if (dir == DIR_WRITE ? is_request_start(s->data) : response_status(s->data) != 0)
			s->verdict = VERDICT_CLIENT;
		else if (dir == DIR_READ && s->stream_start && !k && !off && !is_proxy_header(s->data))
			s->verdict = VERDICT_NOT_HTTP;
		goto stop;
	}
	pc = process_entry(s, s->tgid);
	if (!pc)
		goto stop;
	if (nb > peek && bpf_probe_read_user(&s->data[VERIFIER_CLAMP(k, CARRY_MAX)],
					     VERIFIER_CLAMP(nb, SCAN_WINDOW - CARRY_MAX),
					     (const void *)(buf + off)))
		goto stop;
	__u32 n = k + nb; /* bytes of the window */

	pad_after(s, n);
	__u32 pos = 0; /* start of the current message in the window */
	for (__u32 m = 0; m < MAX_MESSAGES; m++) {
		__u32 code = message_start_at(pos, dir);

		if (!code) {
			if (n == total && !carry_start(pos, n - pos))
				return 0;
			goto stop;
		}
		if (m > 0 || !counted) {
			if (dir == DIR_READ) {
				__sync_fetch_and_add(&pc->requests, 1);
				s->requests_read++;
				s->verdict = VERDICT_SERVER;
			} else {
				count_response(code);
				if (code >= 200) /* 1xx are interim: the request still awaits its response */
					s->responses_final++;
			}
		}
		r = message_end(pos, n, total, code);
		if (r == 0)
			return 0;
		if (r < 0)
			goto stop;
		pos = r;
	}
	count_drop(DROP_MESSAGE_LIMIT);
stop:
	s->st.skip = 0;
	s->st.carry_len = 0;
	s->st.carry_counted = 0;
	return PARSE_STOP;
}

/* A connection's entry, created when there is something to remember and the
 * socket is not closed already (a request read after a reset: nothing would
 * remove the entry). is_sock: the key is a struct sock. */
static __always_inline struct connection *new_connection(struct scan_scratch *s, __u64 key,
							  __u32 is_sock)
{
	if (is_sock) {
		struct sock *sk = (struct sock *)key;

		if (BPF_CORE_READ(sk, __sk_common.skc_state) == TCP_CLOSE)
			return 0;
	}
	__builtin_memset(&s->fresh_connection, 0, sizeof(s->fresh_connection));
	s->fresh_connection.tgid = s->tgid;
	if (is_sock)
		s->fresh_connection.ident = sock_ident(key);
	if (bpf_map_update_elem(&connections, &key, &s->fresh_connection, BPF_NOEXIST) == -E2BIG) {
		if (s->requests_read)
			count_drop(DROP_AWAITING_FULL);
		return 0;
	}
	return bpf_map_lookup_elem(&connections, &key);
}

/* Queues the read time of the transfer's requests, or pairs its final
 * responses with the oldest queued ones. */
static __always_inline void pair_messages(struct scan_scratch *s, struct connection *c)
{
	if (s->requests_read) {
		if (c->tgid != s->tgid) {
			/* The socket changed hands: what the other process read is not ours to answer. */
			c->tgid = s->tgid;
			c->head = c->tail;
		}
		for (__u32 i = 0; i < MAX_MESSAGES; i++) {
			if (i >= s->requests_read)
				break;
			if (c->tail - c->head >= MAX_AWAITING) {
				count_drop(DROP_PIPELINE_DEPTH);
				break;
			}
			c->read_ns[c->tail & (MAX_AWAITING - 1)] = s->io_ns;
			c->tail++;
		}
		return;
	}
	if (c->tgid != s->tgid)
		return;
	for (__u32 i = 0; i < MAX_MESSAGES; i++) {
		if (i >= s->responses_final || c->head == c->tail)
			break;
		__u64 read_ns = c->read_ns[c->head & (MAX_AWAITING - 1)];

		c->head++;
		if (s->io_ns > read_ns)
			record_latency(s->io_ns - read_ns);
	}
}

/* ---- hook layer ---- */

/* The struct sock of fd when it is a TCP (stream, inet/inet6) socket of the
 * current task, else 0. */
static __always_inline __u64 tcp_socket_of(__u32 fd)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	struct file **fds;
	struct file *f = 0;

	if (!fdt || fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	fds = BPF_CORE_READ(fdt, fd);
	if (bpf_probe_read_kernel(&f, sizeof(f), &fds[fd]) || !f)
		return 0;
	if ((BPF_CORE_READ(f, f_inode, i_mode) & S_IFMT) != S_IFSOCK)
		return 0;

	struct socket *sock = BPF_CORE_READ(f, private_data);

	if (BPF_CORE_READ(sock, type) != SOCK_STREAM)
		return 0;
	struct sock *sk = BPF_CORE_READ(sock, sk);
	unsigned short family = BPF_CORE_READ(sk, __sk_common.skc_family);

	return family == AF_INET || family == AF_INET6 ? (__u64)sk : 0;
}

/* Enter side: remember where the data goes, only for TCP sockets. */
static __always_inline int remember_io(__u32 fd, __u64 buf, __u32 iovcnt, __u32 dir)
{
	__u64 sk = tcp_socket_of(fd);

	if (!sk || skipped(sock_connection(sk)))
		return 0;

	__u64 id = bpf_get_current_pid_tgid();
	struct pending_io io = {
		.buf = buf, .sk = sk, .enter_ns = bpf_ktime_get_ns(), .iovcnt = iovcnt, .dir = dir};

	if (bpf_map_update_elem(&syscalls_in_flight, &id, &io, BPF_ANY))
		count_drop(DROP_SYSCALL_TABLE_FULL);
	return 0;
}

/* The iovec array and its length of a user msghdr; 0 when unreadable or empty. */
static __always_inline __u32 msghdr_iov(__u64 msg, __u64 *iov)
{
	struct user_msghdr m;

	if (bpf_probe_read_user(&m, sizeof(m), (const void *)msg) || !m.msg_iovlen)
		return 0;
	*iov = m.msg_iov;
	return m.msg_iovlen > 1024 ? 1024 : m.msg_iovlen;
}

static __always_inline int remember_msghdr(__u32 fd, __u64 msg, __u64 flags, __u32 dir)
{
	__u64 iov = 0;
	__u32 iovcnt;

	if (flags & MSG_PEEK)
		return 0;
	iovcnt = msghdr_iov(msg, &iov);
	return iovcnt ? remember_io(fd, iov, iovcnt, dir) : 0;
}

/* Walks an iovec array as one stream: a body or a message cut at the end
 * of a segment goes on in the next. */
static __always_inline void handle_iovecs(__u64 iov, __u32 iovcnt, __u64 total)
{
	for (__u32 i = 0; i < MAX_SEGMENTS; i++) {
		struct user_iovec v;

		if (i >= iovcnt || !total)
			return;
		if (bpf_probe_read_user(&v, sizeof(v), (const void *)(iov + i * sizeof(v))))
			return;
		__u64 seg = v.len < total ? v.len : total;

		total -= seg;
		if (seg > MAX_BODY)
			seg = MAX_BODY;
		if (parse_buffer(v.base, seg) < 0)
			return;
	}
	if (total && iovcnt > MAX_SEGMENTS)
		count_drop(DROP_SEGMENT_LIMIT);
}

/* Flags of count_transfer_on(). */
#define KEY_IS_SOCK 1  /* the connection key is a struct sock */
#define STREAM_START 2 /* a read that holds the first bytes ever read on the connection */

/* The counting core's entry, for a connection whose entry (c, or NULL) the
 * hook already looked up: parses one transfer of `len` bytes (process,
 * connection key, direction, time, user buffer or iovec array), then
 * updates the connection: its stream state, its verdict, its latency queue. */
static __always_inline int count_transfer_on(struct connection *c, __u32 tgid, __u64 key, __u32 dir,
					     __u64 io_ns, __u64 buf, __u32 iovcnt, long len,
					     __u32 flags)
{
	struct scan_scratch *s = cpu_scratch();

	if (!s || len <= 0)
		return 0;
	dir &= 1;
	s->tgid = tgid;
	s->dir = dir;
	s->sk = key;
	s->io_ns = io_ns;
	s->stream_start = flags & STREAM_START;
	s->requests_read = 0;
	s->responses_final = 0;
	s->verdict = VERDICT_UNKNOWN;
	if (c)
		s->st = c->stream[dir];
	else
		__builtin_memset(&s->st, 0, sizeof(s->st));
	if (iovcnt)
		handle_iovecs(buf, iovcnt, len);
	else
		parse_buffer(buf, len > MAX_BODY ? MAX_BODY : len);

	if (!c) {
		if (!s->requests_read && !s->verdict && !s->st.carry_len && !s->st.skip)
			return 0; /* nothing to remember */
		c = new_connection(s, key, flags & KEY_IS_SOCK);
		if (!c)
			return 0;
	}
	c->stream[dir] = s->st;
	if (s->verdict > c->verdict)
		c->verdict = s->verdict;
	if (s->requests_read || s->responses_final)
		pair_messages(s, c);
	return 0;
}

/* The counting core's entry for every hook: one transfer on the connection
 * `key` (a struct sock on the socket and syscall paths; flags KEY_IS_SOCK). */
static __always_inline int count_transfer(__u32 tgid, __u64 key, __u32 dir, __u64 io_ns, __u64 buf,
					  __u32 iovcnt, long len, __u32 flags)
{
	struct connection *c = flags & KEY_IS_SOCK ? sock_connection(key)
						   : bpf_map_lookup_elem(&connections, &key);

	if (skipped(c))
		return 0;
	return count_transfer_on(c, tgid, key, dir, io_ns, buf, iovcnt, len, flags);
}

/* Syscall path, exit side: the bytes actually transferred. */
static __always_inline int complete_io(long ret)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct pending_io *p = bpf_map_lookup_elem(&syscalls_in_flight, &id);

	if (!p)
		return 0;
	struct pending_io io = *p;

	bpf_map_delete_elem(&syscalls_in_flight, &id);
	if (ret <= 0)
		return 0;
	/* A request was delivered when its read returned; a response began when its write did. */
	return count_transfer(id >> 32, io.sk, io.dir,
			      io.dir == DIR_READ ? bpf_ktime_get_ns() : io.enter_ns, io.buf, io.iovcnt,
			      ret, KEY_IS_SOCK);
}

/* ---- socket-layer path ---- */

/* One TCP receive or send of the current task: find the user buffer in the
 * syscall's registers and hand the transfer on. */
static __always_inline int socket_io(struct sock_length_args *ctx, __u32 dir)
{
	if (ctx->ret <= 0 || (ctx->family != AF_INET && ctx->family != AF_INET6) ||
	    (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_MPTCP) ||
	    (dir == DIR_READ && (ctx->flags & MSG_PEEK)))
		return 0;

	__u64 key = ctx->sk;
	struct connection *c = sock_connection(key);

	if (skipped(c))
		return 0; /* not HTTP, or a client: before any other work */
	struct task_struct *task = bpf_get_current_task_btf();

	if (task->flags & PF_KTHREAD)
		return 0; /* kernel sockets (NFS, iSCSI...): no user buffer */
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
	long nr = regs->orig_ax;
	__u64 arg = regs->si; /* buf, iovec array or msghdr */
	__u32 iovcnt = 0;

	switch (nr) {
	case NR_read:
	case NR_recvfrom:
	case NR_write:
	case NR_sendto:
		break;
	case NR_readv:
	case NR_writev: {
		__u64 n = regs->dx;

		iovcnt = n > 1024 ? 1024 : n;
		if (!iovcnt)
			return 0;
		break;
	}
	case NR_recvmsg:
	case NR_sendmsg:
		iovcnt = msghdr_iov(arg, &arg);
		if (!iovcnt)
			return 0;
		break;
	default:
		/* io_uring, sendfile, splice, recvmmsg/sendmmsg...: no buffer we can
		 * read. When a body is due, these are its bytes (nginx sends a
		 * file's body with sendfile): the stream stays in step. */
		if (c && c->stream[dir].skip) {
			__u32 n = ctx->ret, skip = c->stream[dir].skip;

			c->stream[dir].skip = skip > n ? skip - n : 0;
		}
		count_drop(DROP_UNSUPPORTED_SYSCALL);
		return 0;
	}
	__u32 flags = KEY_IS_SOCK;

	if (!c && dir == DIR_READ && ctx->protocol == IPPROTO_TCP) {
		/* A connection without an entry: are these its first bytes?
		 * (read so far = received in order - not yet read) */
		struct tcp_sock *tp = (struct tcp_sock *)key;
		__u64 received = BPF_CORE_READ(tp, bytes_received);
		__u32 unread = BPF_CORE_READ(tp, rcv_nxt) - BPF_CORE_READ(tp, copied_seq);

		if (received - unread == (__u64)ctx->ret)
			flags |= STREAM_START;
	}
	return count_transfer_on(c, bpf_get_current_pid_tgid() >> 32, key, dir, bpf_ktime_get_ns(),
				 arg, iovcnt, ctx->ret, flags);
}

SEC("tracepoint/sock/sock_recv_length")
int sock_recv(struct sock_length_args *ctx)
{
	return socket_io(ctx, DIR_READ);
}

SEC("tracepoint/sock/sock_send_length")
int sock_send(struct sock_length_args *ctx)
{
	return socket_io(ctx, DIR_WRITE);
}

/* ---- syscall-tracepoint path ---- */

#define ARG(i) (ctx->args[i])

SEC("tracepoint/syscalls/sys_enter_read")
int enter_read(struct syscall_enter_args *ctx)
{
	return ARG(2) == 0 ? 0 : remember_io(ARG(0), ARG(1), 0, DIR_READ);
}

SEC("tracepoint/syscalls/sys_enter_recvfrom")
int enter_recvfrom(struct syscall_enter_args *ctx)
{
	if (ARG(2) == 0 || (ARG(3) & MSG_PEEK))
		return 0;
	return remember_io(ARG(0), ARG(1), 0, DIR_READ);
}

SEC("tracepoint/syscalls/sys_enter_readv")
int enter_readv(struct syscall_enter_args *ctx)
{
	return ARG(2) == 0 ? 0 : remember_io(ARG(0), ARG(1), ARG(2) > 1024 ? 1024 : ARG(2), DIR_READ);
}

SEC("tracepoint/syscalls/sys_enter_recvmsg")
int enter_recvmsg(struct syscall_enter_args *ctx)
{
	return remember_msghdr(ARG(0), ARG(1), ARG(2), DIR_READ);
}

SEC("tracepoint/syscalls/sys_enter_write")
int enter_write(struct syscall_enter_args *ctx)
{
	return ARG(2) == 0 ? 0 : remember_io(ARG(0), ARG(1), 0, DIR_WRITE);
}

SEC("tracepoint/syscalls/sys_enter_sendto")
int enter_sendto(struct syscall_enter_args *ctx)
{
	return ARG(2) == 0 ? 0 : remember_io(ARG(0), ARG(1), 0, DIR_WRITE);
}

SEC("tracepoint/syscalls/sys_enter_writev")
int enter_writev(struct syscall_enter_args *ctx)
{
	return ARG(2) == 0 ? 0
			   : remember_io(ARG(0), ARG(1), ARG(2) > 1024 ? 1024 : ARG(2), DIR_WRITE);
}

SEC("tracepoint/syscalls/sys_enter_sendmsg")
int enter_sendmsg(struct syscall_enter_args *ctx)
{
	return remember_msghdr(ARG(0), ARG(1), ARG(2), DIR_WRITE);
}

/* One program for the eight exits (the daemon attaches it to each): their
 * records are alike, and the kernel verifies it once. */
SEC("tracepoint/syscalls/sys_exit_read")
int exit_socket_io(struct syscall_exit_args *ctx)
{
	return complete_io(ctx->ret);
}

static long forget_if_owner(void *map, __u64 *key, struct connection *c, __u32 *tgid)
{
	if (c->tgid == *tgid)
		bpf_map_delete_elem(map, key);
	return 0;
}

/* Fires for every exiting thread: drop what it left in flight, and when the
 * whole process goes (its leader exits), its counts, so that a reused pid
 * starts from zero, and, with walk, the connections whose requests it owned
 * (its sockets may linger in FIN_WAIT long after it). Only processes that
 * did HTTP pay for the walk of connections. */
static __always_inline int forget_exited(int walk)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;

	bpf_map_delete_elem(&syscalls_in_flight, &id);
	if ((__u32)id != tgid || bpf_map_delete_elem(&process_counts, &tgid))
		return 0;
	bpf_map_delete_elem(&latency_by_process, &tgid);
	if (walk)
		bpf_for_each_map_elem(&connections, forget_if_owner, &tgid, 0);
	return 0;
}

SEC("tracepoint/sched/sched_process_exit")
int process_exit(void *ctx)
{
	return forget_exited(1);
}

/* The daemon's choice on kernels without bpf_for_each_map_elem (before
 * 5.13): it forgets the connections of exited processes itself, at its next
 * snapshot. */
SEC("tracepoint/sched/sched_process_exit")
int process_exit_no_walk(void *ctx)
{
	return forget_exited(0);
}

/* A closed connection's unanswered requests will never be answered. */
SEC("tracepoint/sock/inet_sock_set_state")
int socket_state(struct inet_sock_set_state_args *ctx)
{
	__u64 sk = ctx->skaddr;

	if (ctx->newstate == TCP_CLOSE)
		bpf_map_delete_elem(&connections, &sk);
	return 0;
}

/* The kernel frees the socket: whatever a read after its close left (a
 * request of a client that reset the connection) goes with it, and a later
 * socket at the same address starts afresh. */
SEC("tracepoint/tcp/tcp_destroy_sock")
int socket_destroyed(struct tcp_event_sk_args *ctx)
{
	__u64 sk = ctx->skaddr;

	bpf_map_delete_elem(&connections, &sk);
	return 0;
}

/* ---- HTTPS through OpenSSL (uprobes; attached by the daemon's src/tls/) ---- */

#include "tls.h"
