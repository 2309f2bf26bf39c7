/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * HTTPS through OpenSSL: uprobes on SSL_read, SSL_read_ex, SSL_write and
 * SSL_write_ex hand the plaintext to the same counting core as the socket
 * hooks (count_transfer()), one transfer per call that moved bytes. The
 * daemon attaches them to every distinct file that holds OpenSSL (src/tls/).
 *
 *   entry   remembers the SSL *, the user buffer, and for the _ex variants
 *           where OpenSSL will store the byte count;
 *   return  reads are counted here, when the bytes are known; writes too
 *           (a write that fails with SSL_ERROR_WANT_WRITE is retried with
 *           the same bytes and must count once), timed from their entry.
 *
 * The encrypted records the socket hooks see on the same connection start
 * with a TLS record header, never with an HTTP start line, so nothing is
 * counted twice. Included by http_stats.bpf.c after the counting core.
 */
#ifndef TLS_H
#define TLS_H

#include <linux/types.h>
#include <bpf/bpf_helpers.h>

/* x86-64 user registers as a uprobe program receives them: the layout of
 * struct pt_regs, a fixed ABI (read without CO-RE). */
struct tls_regs {
	unsigned long r15, r14, r13, r12, bp, bx, r11, r10, r9, r8;
	unsigned long ax, cx, dx, si, di, orig_ax, ip, cs, flags, sp, ss;
};

/* Writer: the entry programs. Reader: tls_return, which deletes the entry.
 * Bound: threads inside an OpenSSL read or write at once; LRU, so that a call
 * whose return never fires (the thread died inside it) is evicted in time
 * rather than left forever. */
struct tls_call {
	__u64 ssl;      /* the SSL *: the connection */
	__u64 buf;      /* user buffer of the plaintext */
	__u64 done_ptr; /* SSL_*_ex: where OpenSSL stores the bytes moved; 0 otherwise */
	__u64 enter_ns; /* when the call began */
	__u32 dir;      /* DIR_READ or DIR_WRITE */
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 10240);
	__type(key, __u64); /* pid_tgid: one OpenSSL call in flight per thread */
	__type(value, struct tls_call);
} tls_calls_in_flight SEC(".maps");

/* Writer: tls_exec, for every exec on the host. Reader: the daemon, once a
 * second, deletes what it read and looks for OpenSSL in those processes.
 * Bound: execs in one second; when full, a process is found by the daemon's
 * slower full scan instead. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32); /* tgid */
	__type(value, __u32); /* unused */
} tls_exec_marks SEC(".maps");

/* The key of a TLS connection in connections. The SSL * alone is a
 * user address, equal in processes forked from one parent (nginx's
 * workers), so the tgid is mixed into bits 40..61: the key stays apart
 * from the kernel's struct sock addresses (bit 63 set) that key the
 * plaintext connections. */
static __always_inline __u64 tls_connection(__u64 ssl, __u32 tgid)
{
	return ssl ^ ((__u64)(tgid & 0x3fffff) << 40);
}

static __always_inline int tls_enter(struct tls_regs *regs, __u32 dir, int ex)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct tls_call call = {
		.ssl = regs->di,
		.buf = regs->si,
		.done_ptr = ex ? regs->cx : 0,
		.enter_ns = bpf_ktime_get_ns(),
		.dir = dir,
	};

	bpf_map_update_elem(&tls_calls_in_flight, &id, &call, BPF_ANY);
	return 0;
}

/* int SSL_read(SSL *ssl, void *buf, int num) */
SEC("uprobe")
int tls_read_entry(struct tls_regs *ctx)
{
	return tls_enter(ctx, DIR_READ, 0);
}

/* int SSL_read_ex(SSL *ssl, void *buf, size_t num, size_t *readbytes) */
SEC("uprobe")
int tls_read_ex_entry(struct tls_regs *ctx)
{
	return tls_enter(ctx, DIR_READ, 1);
}

/* int SSL_write(SSL *ssl, const void *buf, int num) */
SEC("uprobe")
int tls_write_entry(struct tls_regs *ctx)
{
	return tls_enter(ctx, DIR_WRITE, 0);
}

/* int SSL_write_ex(SSL *ssl, const void *buf, size_t num, size_t *written) */
SEC("uprobe")
int tls_write_ex_entry(struct tls_regs *ctx)
{
	return tls_enter(ctx, DIR_WRITE, 1);
}

/* The return of any of the four: SSL_read/SSL_write return the bytes moved
 * (<= 0 on error), the _ex variants 1 on success with the count stored. */
SEC("uretprobe")
int tls_return(struct tls_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct tls_call *p = bpf_map_lookup_elem(&tls_calls_in_flight, &id);

	if (!p)
		return 0;
	struct tls_call call = *p;

	bpf_map_delete_elem(&tls_calls_in_flight, &id);
	int ret = (int)ctx->ax;
	__u64 n = 0;

	if (call.done_ptr) {
		if (ret != 1 || bpf_probe_read_user(&n, sizeof(n), (const void *)call.done_ptr))
			return 0;
	} else {
		if (ret <= 0)
			return 0;
		n = ret;
	}
	if (!n)
		return 0;
	__u32 tgid = id >> 32;

	/* As on the sockets: a request was delivered when its read returned, a
	 * response began when its write did. */
	return count_transfer(tgid, tls_connection(call.ssl, tgid), call.dir,
			      call.dir == DIR_READ ? bpf_ktime_get_ns() : call.enter_ns, call.buf, 0,
			      n > MAX_BODY ? MAX_BODY : n, 0);
}

/* void SSL_free(SSL *ssl): the connection is gone. Its entry in
 * connections (verdict, stream state, what it left unanswered) goes too:
 * no socket close deletes it, and the address may soon hold another
 * connection. */
SEC("uprobe")
int tls_free(struct tls_regs *ctx)
{
	__u64 key = tls_connection(ctx->di, bpf_get_current_pid_tgid() >> 32);

	bpf_map_delete_elem(&connections, &key);
	return 0;
}

/* Every exec: the daemon looks at the new program's files for OpenSSL. */
SEC("tracepoint/sched/sched_process_exec")
int tls_exec(void *ctx)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32, unused = 0;

	bpf_map_update_elem(&tls_exec_marks, &tgid, &unused, BPF_ANY);
	return 0;
}

#endif /* TLS_H */
