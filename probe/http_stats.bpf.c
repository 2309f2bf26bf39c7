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
 *           on its socket (awaiting_response) into latency_by_process
 *           (bucket arithmetic in latency.h).
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

/* Requests read but not yet answered, oldest first, per connection.
 * Writer: parse_buffer() pushes on requests, pops on responses and deletes
 * the entry when it empties; inet_sock_set_state deletes it when the socket
 * closes; sched_process_exit deletes the dying process's entries. Reader: the
 * daemon counts the entries. Bound: max_entries; a request that finds it full
 * gets no latency and DROP_AWAITING_FULL counts it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64); /* struct sock pointer: the connection */
	__type(value, struct awaiting);
} awaiting_response SEC(".maps");

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
	struct awaiting fresh_awaiting;
	/* The transfer being parsed, set by the hook layer. */
	__u32 tgid;
	__u32 dir;
	__u64 sk;
	__u64 io_ns; /* request: when its read returned; response: when its write began */
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scan_scratch);
} scratch SEC(".maps");

/* ---- helpers ---- */

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

static __always_inline void count_response(struct process_counts *pc, __u32 code)
{
	for (__u32 i = 0; i < MAX_CODES_PER_PROCESS; i++) {
		__u32 c = pc->codes[i];

		if (c == 0)
			c = __sync_val_compare_and_swap(&pc->codes[i], 0, code) ?: code;
		if (c == code) {
			__sync_fetch_and_add(&pc->responses[i], 1);
			return;
		}
	}
	__sync_fetch_and_add(&pc->untracked_responses, 1);
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

/* A request was read on the scratch's connection: queue its read time. */
__noinline int request_read(void)
{
	struct scan_scratch *s = cpu_scratch();
	struct awaiting *a;

	if (!s)
		return 0;
	a = bpf_map_lookup_elem(&awaiting_response, &s->sk);
	if (!a) {
		__builtin_memset(&s->fresh_awaiting, 0, sizeof(s->fresh_awaiting));
		s->fresh_awaiting.tgid = s->tgid;
		if (bpf_map_update_elem(&awaiting_response, &s->sk, &s->fresh_awaiting, BPF_NOEXIST) ==
		    -E2BIG) {
			count_drop(DROP_AWAITING_FULL);
			return 0;
		}
		a = bpf_map_lookup_elem(&awaiting_response, &s->sk);
		if (!a)
			return 0;
	}
	if (a->tgid != s->tgid) {
		/* The socket changed hands: what the other process read is not ours to answer. */
		a->tgid = s->tgid;
		a->head = a->tail;
	}
	if (a->tail - a->head >= MAX_AWAITING) {
		count_drop(DROP_PIPELINE_DEPTH);
		return 0;
	}
	a->read_ns[a->tail & (MAX_AWAITING - 1)] = s->io_ns;
	a->tail++;
	return 0;
}

/* A final response was written on the scratch's connection: pair it with the
 * oldest request awaiting one, and forget the connection once none waits. */
__noinline int response_written(void)
{
	struct scan_scratch *s = cpu_scratch();
	struct awaiting *a;

	if (!s)
		return 0;
	a = bpf_map_lookup_elem(&awaiting_response, &s->sk);
	if (!a || a->tgid != s->tgid || a->head == a->tail)
		return 0;
	__u64 read_ns = a->read_ns[a->head & (MAX_AWAITING - 1)];

	a->head++;
	if (a->head == a->tail)
		bpf_map_delete_elem(&awaiting_response, &s->sk);
	if (s->io_ns > read_ns)
		record_latency(s->io_ns - read_ns);
	return 0;
}

/*
 * The counting core: counts every message that starts in the user buffer
 * [buf, buf+len), for the transfer (process, connection, direction, time)
 * the hook layer put in the scratch. skip is how many leading bytes still
 * belong to the body of a message counted in an earlier segment of the same
 * syscall. Returns the number of bytes of the last message's body that run
 * past this buffer, or PARSE_STOP when the next message start cannot be known.
 */
__noinline int parse_buffer(__u64 buf, __u32 len, __u32 skip)
{
	struct scan_scratch *s;
	struct process_counts *pc;

	if (skip >= len)
		return skip - len;
	__u32 avail = len - skip; /* bytes from the first message start to the buffer's end */
	__u32 n = avail < SCAN_WINDOW ? avail : SCAN_WINDOW;

	if (n < MIN_MESSAGE)
		return PARSE_STOP;
	s = cpu_scratch();
	if (!s)
		return PARSE_STOP;
	/* Look at 16 bytes first: most socket traffic is not an HTTP start and
	 * should not pay for copying the whole window. */
	__u32 dir = s->dir;

	if (bpf_probe_read_user(s->data, MIN_MESSAGE, (const void *)(buf + skip)))
		return PARSE_STOP;
	if (!message_start(s->data, dir))
		return PARSE_STOP;
	pc = process_entry(s, s->tgid);
	if (!pc)
		return PARSE_STOP;
	if (bpf_probe_read_user(s->data, n, (const void *)(buf + skip)))
		return PARSE_STOP;

	__u32 pos = 0; /* start of the current message, relative to buf + skip */
	for (__u32 m = 0; m < MAX_MESSAGES; m++) {
		__u32 code = message_start(&s->data[pos & (SCAN_WINDOW - 1)], dir);

		if (!code)
			return PARSE_STOP;
		if (dir == DIR_READ) {
			__sync_fetch_and_add(&pc->requests, 1);
			request_read();
		} else {
			count_response(pc, code);
			if (code >= 200) /* 1xx are interim: the request still awaits its response */
				response_written();
		}

		__u32 end = scan_headers(s, pos, n);

		if (!end || s->chunked)
			return PARSE_STOP;
		__u64 body = s->content_length < 0 ? 0 : s->content_length;

		if (dir == DIR_WRITE) {
			/* No body: 1xx, 204, 304 always; a response to HEAD carries a
			 * Content-Length but no body, which shows as the next status
			 * line right after the headers. A response without a length
			 * runs to the connection's end. */
			if (code < 200 || code == 204 || code == 304)
				body = 0;
			else if (end + MIN_MESSAGE <= n &&
				 response_status(&s->data[end & (SCAN_WINDOW - 1)]))
				body = 0;
			else if (s->content_length < 0)
				return PARSE_STOP;
		}
		__u64 next = end + body;

		if (next >= avail)
			return next - avail > MAX_BODY ? PARSE_STOP : (int)(next - avail);
		if (next + MIN_MESSAGE > n) {
			/* More bytes follow, but outside the scanned window. */
			count_drop(DROP_MESSAGE_LIMIT);
			return PARSE_STOP;
		}
		pos = next;
	}
	count_drop(DROP_MESSAGE_LIMIT);
	return PARSE_STOP;
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

	if (!sk)
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

/* Walks an iovec array as one stream: a body that runs past a segment is
 * skipped at the start of the next. */
static __always_inline void handle_iovecs(__u64 iov, __u32 iovcnt, __u64 total)
{
	int skip = 0;

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
		skip = parse_buffer(v.base, seg, skip);
		if (skip < 0)
			return;
	}
	if (total && iovcnt > MAX_SEGMENTS)
		count_drop(DROP_SEGMENT_LIMIT);
}

/* The meeting point of both hook paths: hands one transfer of `len` bytes
 * (process, connection, direction, time, user buffer or iovec array) to the
 * counting core. */
static __always_inline int count_transfer(__u32 tgid, __u64 sk, __u32 dir, __u64 io_ns, __u64 buf,
					  __u32 iovcnt, long len)
{
	struct scan_scratch *s = cpu_scratch();

	if (!s)
		return 0;
	s->tgid = tgid;
	s->dir = dir;
	s->sk = sk;
	s->io_ns = io_ns;
	if (iovcnt)
		handle_iovecs(buf, iovcnt, len);
	else
		parse_buffer(buf, len > MAX_BODY ? MAX_BODY : len, 0);
	return 0;
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
	if (ret < MIN_MESSAGE)
		return 0;
	/* A request was delivered when its read returned; a response began when its write did. */
	return count_transfer(id >> 32, io.sk, io.dir,
			      io.dir == DIR_READ ? bpf_ktime_get_ns() : io.enter_ns, io.buf, io.iovcnt,
			      ret);
}

/* ---- socket-layer path ---- */

/* One TCP receive or send of the current task: find the user buffer in the
 * syscall's registers and hand the transfer on. */
static __always_inline int socket_io(struct sock_length_args *ctx, __u32 dir)
{
	if (ctx->ret < MIN_MESSAGE || (ctx->family != AF_INET && ctx->family != AF_INET6) ||
	    (ctx->protocol != IPPROTO_TCP && ctx->protocol != IPPROTO_MPTCP) ||
	    (dir == DIR_READ && (ctx->flags & MSG_PEEK)))
		return 0;

	struct task_struct *task = bpf_get_current_task_btf();

	if (BPF_CORE_READ(task, flags) & PF_KTHREAD)
		return 0; /* kernel sockets (NFS, iSCSI...): no user buffer */
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(task);
	long nr = BPF_CORE_READ(regs, orig_ax);
	__u64 arg = BPF_CORE_READ(regs, si); /* buf, iovec array or msghdr */
	__u32 iovcnt = 0;

	switch (nr) {
	case NR_read:
	case NR_recvfrom:
	case NR_write:
	case NR_sendto:
		break;
	case NR_readv:
	case NR_writev: {
		__u64 n = BPF_CORE_READ(regs, dx);

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
		/* io_uring, sendfile, splice, recvmmsg/sendmmsg...: no buffer we can read. */
		count_drop(DROP_UNSUPPORTED_SYSCALL);
		return 0;
	}
	return count_transfer(bpf_get_current_pid_tgid() >> 32, ctx->sk, dir, bpf_ktime_get_ns(), arg,
			      iovcnt, ctx->ret);
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
	return ARG(2) < MIN_MESSAGE ? 0 : remember_io(ARG(0), ARG(1), 0, DIR_READ);
}

SEC("tracepoint/syscalls/sys_enter_recvfrom")
int enter_recvfrom(struct syscall_enter_args *ctx)
{
	if (ARG(2) < MIN_MESSAGE || (ARG(3) & MSG_PEEK))
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
	return ARG(2) < MIN_MESSAGE ? 0 : remember_io(ARG(0), ARG(1), 0, DIR_WRITE);
}

SEC("tracepoint/syscalls/sys_enter_sendto")
int enter_sendto(struct syscall_enter_args *ctx)
{
	return ARG(2) < MIN_MESSAGE ? 0 : remember_io(ARG(0), ARG(1), 0, DIR_WRITE);
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

static long forget_if_owner(void *map, __u64 *sk, struct awaiting *a, __u32 *tgid)
{
	if (a->tgid == *tgid)
		bpf_map_delete_elem(map, sk);
	return 0;
}

/* Fires for every exiting thread: drop what it left in flight, and when the
 * whole process goes (its leader exits), its counts, so that a reused pid
 * starts from zero, and the requests it left unanswered (its sockets may
 * linger in FIN_WAIT long after it). Only processes that did HTTP pay for
 * the walk of awaiting_response. */
SEC("tracepoint/sched/sched_process_exit")
int process_exit(void *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	__u32 tgid = id >> 32;

	bpf_map_delete_elem(&syscalls_in_flight, &id);
	if ((__u32)id != tgid || bpf_map_delete_elem(&process_counts, &tgid))
		return 0;
	bpf_map_delete_elem(&latency_by_process, &tgid);
	bpf_for_each_map_elem(&awaiting_response, forget_if_owner, &tgid, 0);
	return 0;
}

/* A closed connection's unanswered requests will never be answered. */
SEC("tracepoint/sock/inet_sock_set_state")
int socket_state(struct inet_sock_set_state_args *ctx)
{
	__u64 sk = ctx->skaddr;

	if (ctx->newstate == TCP_CLOSE)
		bpf_map_delete_elem(&awaiting_response, &sk);
	return 0;
}
