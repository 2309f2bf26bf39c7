// SPDX-License-Identifier: (BSD-2-Clause OR GPL-2.0-only)
/*
 * Empty eBPF programs on the hooks of each path of the probe, for the
 * "empty-program floor" of scripts/bench.sh (part 4): what merely attaching
 * a program to these tracepoints costs, before it does any work. Each returns
 * 0, as the probe's programs do (a tracepoint program that returns 1, as
 * bpftrace's do, also makes the kernel hand the event on to perf, which costs
 * more). Built twice: -DHOOKS_SOCKET (sock_recv_length, sock_send_length) and
 * -DHOOKS_SYSCALLS (sys_enter/sys_exit of the eight socket I/O syscalls).
 * Loaded and attached with `bpftool prog loadall OBJ DIR autoattach`.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

#define EMPTY(name, tp) \
	SEC("tracepoint/" tp) \
	int name(void *ctx) \
	{ \
		return 0; \
	}

#ifdef HOOKS_SOCKET
EMPTY(empty_sock_recv, "sock/sock_recv_length")
EMPTY(empty_sock_send, "sock/sock_send_length")
#endif

#ifdef HOOKS_SYSCALLS
#define BOTH(s) EMPTY(empty_enter_##s, "syscalls/sys_enter_" #s) EMPTY(empty_exit_##s, "syscalls/sys_exit_" #s)
BOTH(read)
BOTH(recvfrom)
BOTH(readv)
BOTH(recvmsg)
BOTH(write)
BOTH(sendto)
BOTH(writev)
BOTH(sendmsg)
#endif
