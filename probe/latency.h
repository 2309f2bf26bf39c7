/* SPDX-License-Identifier: (BSD-2-Clause OR GPL-2.0-only) */
/*
 * The latency histogram's arithmetic (layout and bounds in http_stats.h):
 * the fine log-linear bucket of a latency. Pure; src/latency.rs has the
 * daemon's twin of fine_bucket(), and a unit test compares the two on every
 * bucket edge (build.rs runs this code on the build host for it).
 */
#ifndef LATENCY_H
#define LATENCY_H

#include <linux/types.h>

#include "http_stats.h"

/* Also built for the build host (probe/abi_export.c), without bpf_helpers.h. */
#ifndef __always_inline
#define __always_inline inline __attribute__((always_inline))
#endif

static __always_inline __u32 log2_floor(__u64 v)
{
	__u32 r = 0;

	if (v >> 32) { v >>= 32; r += 32; }
	if (v >> 16) { v >>= 16; r += 16; }
	if (v >> 8) { v >>= 8; r += 8; }
	if (v >> 4) { v >>= 4; r += 4; }
	if (v >> 2) { v >>= 2; r += 2; }
	if (v >> 1) r += 1;
	return r;
}

/* Index of the fine histogram bucket for ns (see http_stats.h). */
static __always_inline __u32 fine_bucket(__u64 ns)
{
	__u64 u = ns >> LATENCY_UNIT_SHIFT;

	if (u < LATENCY_SUB_BUCKETS)
		return u;
	__u32 p = log2_floor(u); /* >= LOG2_SUB_BUCKETS */
	__u32 i = (p - LOG2_SUB_BUCKETS + 1) * LATENCY_SUB_BUCKETS +
		  ((u >> (p - LOG2_SUB_BUCKETS)) & (LATENCY_SUB_BUCKETS - 1));

	return i < LATENCY_FINE_BUCKETS ? i : LATENCY_FINE_BUCKETS - 1;
}

#endif /* LATENCY_H */
