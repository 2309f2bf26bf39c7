//! What the probe shares with the daemon, taken from probe/http_stats.h at
//! build time: build.rs runs probe/abi_export.c, which prints the header's
//! constants, struct layouts and drop reasons as the Rust included here.
//! The `#[repr(C)]` mirrors below are checked against those layouts at
//! compile time, so a change on one side only does not build.

// Generated: `MAX_CODES_PER_PROCESS`, `COMM_LEN`, `MAX_AWAITING`,
// `MAX_SEGMENTS`, the `LATENCY_*` constants, `LATENCY_BOUNDS_NS` and their
// `LATENCY_BOUND_LABELS`, `DROP_REASONS` with one `DROP_<NAME>` index per
// reason, and one module per shared struct with its `SIZE` and a [`Field`]
// per field.
include!(concat!(env!("OUT_DIR"), "/abi.rs"));

/// Where one field of a C struct lies.
pub struct Field {
    pub offset: usize,
    pub size: usize,
}

/// A reason the probe could not count something: one line of
/// `PROBE_DROP_REASONS` in probe/http_stats.h.
#[derive(Debug, PartialEq, Eq)]
pub struct DropReason {
    /// The `reason` label of `scope_http_statistics_probe_drops_total`.
    pub label: &'static str,
    /// What the daemon logs when the counter starts growing, with
    /// `{max_processes}` to fill in; empty when the drop is expected and not
    /// logged.
    pub hint: &'static str,
}

/// Only integers and arrays of them: any bytes are a valid value.
const fn is_pod<T: aya::Pod>() {}

/// Declares the `#[repr(C)]` mirror of a C struct and checks, when the crate
/// compiles, that it has the C struct's size, each field the C field's offset
/// and size, and no padding.
macro_rules! mirror {
    ($(#[$meta:meta])* $name:ident = struct $c:ident { $($field:ident: $ty:ty,)* }) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug)]
        pub struct $name {
            $(pub $field: $ty,)*
        }

        const _: () = {
            assert!(
                size_of::<$name>() == $c::SIZE,
                concat!(stringify!($name), ": not the size of struct ", stringify!($c))
            );
            $(
                is_pod::<$ty>();
                assert!(
                    std::mem::offset_of!($name, $field) == $c::$field.offset
                        && size_of::<$ty>() == $c::$field.size,
                    concat!(stringify!($name), ".", stringify!($field), " differs from struct ",
                        stringify!($c), " in probe/http_stats.h")
                );
            )*
            assert!(
                0 $(+ size_of::<$ty>())* == size_of::<$name>(),
                concat!(stringify!($name), " has padding")
            );
        };

        // SAFETY: repr(C), every field an integer or an array of integers
        // (is_pod above), and no padding (checked above): any bit pattern the
        // kernel writes is a valid value.
        unsafe impl aya::Pod for $name {}
    };
}

mirror! {
    /// A process's counters: the value of the probe's `process_counts` map.
    RawProcessCounts = struct process_counts {
        first_seen_ns: u64,
        requests: u64,
        untracked_responses: u64,
        codes: [u32; MAX_CODES_PER_PROCESS],
        responses: [u64; MAX_CODES_PER_PROCESS],
        comm: [u8; COMM_LEN],
    }
}

mirror! {
    /// A process's latency histograms: the value of `latency_by_process`.
    RawLatencyStats = struct latency_stats {
        sum_ns: u64,
        le: [u64; LATENCY_BOUNDS + 1],
        fine: [u32; LATENCY_FINE_BUCKETS],
    }
}

mirror! {
    /// A connection: the value of the probe's `connections` map (the daemon
    /// only reads whether requests are queued: `tail != head`).
    RawConnection = struct connection {
        tgid: u32,
        verdict: u32,
        head: u32,
        tail: u32,
        ident: u64,
        read_ns: [u64; MAX_AWAITING],
        // `struct stream_state stream[2]`, the probe's own.
        stream: [[u8; 40]; 2],
    }
}
