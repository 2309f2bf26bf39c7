/* SPDX-License-Identifier: (BSD-2-Clause OR GPL-2.0-only) */
/*
 * What the probe knows about the kernel and the user ABI it reads: the few
 * kernel struct fields it follows (relocated by CO-RE at load time), the
 * tracepoint records, and the x86-64 registers, syscall numbers and user
 * structs. Nothing here is shared with the daemon.
 */
#ifndef KERNEL_H
#define KERNEL_H

#include <linux/types.h>

/* The registers (struct pt_regs), syscall numbers and user struct layouts
 * below are x86-64's; build.rs defines __TARGET_ARCH_<arch> from the Rust
 * target. Another architecture would mis-read them, so refuse to build. */
#ifndef __TARGET_ARCH_x86
#error "the probe reads x86-64 registers and syscall numbers: only x86_64 targets are supported"
#endif

/* ---- the few kernel fields we read, relocated by CO-RE at load time ---- */

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
} __attribute__((preserve_access_index));

struct files_struct {
	struct fdtable *fdt;
} __attribute__((preserve_access_index));

struct task_struct {
	unsigned int flags;
	struct files_struct *files;
} __attribute__((preserve_access_index));

/* x86_64 user registers at syscall entry (socket-layer path). */
struct pt_regs {
	unsigned long dx;
	unsigned long si;
	unsigned long orig_ax;
} __attribute__((preserve_access_index));

struct inode {
	unsigned short i_mode;
} __attribute__((preserve_access_index));

struct file {
	struct inode *f_inode;
	void *private_data;
} __attribute__((preserve_access_index));

struct sock_common {
	__u32 skc_portpair;  /* peer and local port */
	unsigned short skc_family;
	volatile unsigned char skc_state;
} __attribute__((preserve_access_index));

/* How far the user has read a TCP connection (socket path: tells the first
 * bytes ever read apart). */
struct tcp_sock {
	__u64 bytes_received; /* in-order bytes received, read or not */
	__u32 rcv_nxt;
	__u32 copied_seq;     /* the next byte the user will read */
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
} __attribute__((preserve_access_index));

struct socket {
	short type;
	struct sock *sk;
} __attribute__((preserve_access_index));

/* Syscall tracepoint records: a stable ABI (see the format files under events/syscalls/). */
struct syscall_enter_args {
	__u64 common;
	long id;
	unsigned long args[6];
};

struct syscall_exit_args {
	__u64 common;
	long id;
	long ret;
};

/* User ABI structs (x86_64 / any LP64). */
struct user_iovec {
	__u64 base;
	__u64 len;
};

struct user_msghdr {
	__u64 msg_name;
	__u32 msg_namelen;
	__u32 pad;
	__u64 msg_iov;
	__u64 msg_iovlen;
};

#define S_IFMT 0170000
#define S_IFSOCK 0140000
#define SOCK_STREAM 1
#define AF_INET 2
#define AF_INET6 10
#define MSG_PEEK 2
#define IPPROTO_TCP 6
#define IPPROTO_MPTCP 262
#define PF_KTHREAD 0x00200000

/* x86_64 syscall numbers of the socket I/O the socket-layer path understands. */
#define NR_read 0
#define NR_write 1
#define NR_readv 19
#define NR_writev 20
#define NR_sendto 44
#define NR_recvfrom 45
#define NR_sendmsg 46
#define NR_recvmsg 47
#define E2BIG 7
#define TCP_CLOSE 7

/* sock/sock_recv_length and sock/sock_send_length (Linux 6.3+). */
struct sock_length_args {
	__u64 common;
	__u64 sk;
	__u16 family;
	__u16 protocol;
	int ret;
	int flags;
};

/* tcp/tcp_destroy_sock: the socket is being freed. */
struct tcp_event_sk_args {
	__u64 common;
	__u64 skaddr;
};

struct inet_sock_set_state_args {
	__u64 common;
	__u64 skaddr;
	int oldstate;
	int newstate;
};

#endif /* KERNEL_H */
