/*
 * Lists the eBPF programs attached to tracepoints through BPF links, for
 * scripts/bench.sh: it refuses to measure while another program sits on a
 * tracepoint it measures (that program's cost would be counted as ours, or
 * as the baseline's).
 *
 *   attached
 *
 * Prints one line per tracepoint link: "TRACEPOINT PROG_ID PROG_NAME", e.g.
 * "sock_recv_length 1499 sock_recv". Tracepoints attached the older way (a
 * perf event with PERF_EVENT_IOC_SET_BPF, no link) are not links: bench.sh
 * finds those with `bpftool perf list`.
 *
 * The tracepoint's name is in the link's info since Linux 6.6
 * (bpf_link_info.perf_event); Debian 12's UAPI headers predate it, so the
 * layout is spelled out here. On older kernels a perf_event link is printed
 * with the name "?": bench.sh treats that as attached to anything.
 */
#include <bpf/bpf.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define LINK_TYPE_PERF_EVENT 7
#define PERF_EVENT_TRACEPOINT 5

/* struct bpf_link_info with its perf_event member (Linux 6.6+). */
struct link_info {
	uint32_t type;
	uint32_t id;
	uint32_t prog_id;
	uint32_t pad;
	struct {
		uint32_t type;
		uint32_t pad;
		uint64_t tp_name;
		uint32_t name_len;
		uint32_t pad2;
		uint64_t cookie;
	} perf_event;
	uint8_t rest[64]; /* room for the kernel's larger union members */
} __attribute__((aligned(8)));

int main(void)
{
	uint32_t id = 0;

	while (!bpf_link_get_next_id(id, &id)) {
		int fd = bpf_link_get_fd_by_id(id);
		struct link_info info;
		uint32_t len = sizeof(info);
		char tp[128] = "";

		if (fd < 0)
			continue; /* gone meanwhile */
		memset(&info, 0, sizeof(info));
		info.perf_event.tp_name = (uint64_t)(uintptr_t)tp;
		info.perf_event.name_len = sizeof(tp);
		if (bpf_obj_get_info_by_fd(fd, &info, &len) || info.type != LINK_TYPE_PERF_EVENT) {
			close(fd);
			continue;
		}
		close(fd);
		if (info.perf_event.type && info.perf_event.type != PERF_EVENT_TRACEPOINT)
			continue; /* a kprobe or uprobe */

		struct bpf_prog_info prog;
		uint32_t plen = sizeof(prog);
		int pfd = bpf_prog_get_fd_by_id(info.prog_id);

		memset(&prog, 0, sizeof(prog));
		if (pfd >= 0) {
			bpf_obj_get_info_by_fd(pfd, &prog, &plen);
			close(pfd);
		}
		printf("%s %u %s\n", tp[0] ? tp : "?", info.prog_id, prog.name[0] ? prog.name : "?");
	}
	if (errno && errno != ENOENT) {
		perror("bpf_link_get_next_id");
		return 1;
	}
	return 0;
}
