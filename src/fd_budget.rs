//! How many connections the daemon can hold: the open-files limit, raised to
//! its hard ceiling at start-up, less what the process already holds (the
//! probe's maps, programs and links, the standard streams) and a reserve.
//! A cap above what the process can open would let idle clients exhaust the
//! descriptors before the worker sheds any, and lock Scope out.

use std::io;

use log::warn;

/// Descriptors kept free besides those open when the cap is sized: the
/// listener, the one accept(2) needs to take a connection before the worker
/// sheds another, and what start-up or the snapshot loop may open for a
/// moment (tracefs and /proc files).
pub const RESERVE: usize = 32;

/// The soft and hard limits on open files, as getrlimit(2) reports them.
fn open_files_limit() -> io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid, writable rlimit for the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit)
}

/// Raises the soft open-files limit to the hard one (systemd's default soft
/// limit is 1024, for select(2)'s sake; this daemon uses poll(2)). Returns
/// the soft limit in force afterwards, and the one before when it was
/// raised. Failing to raise it (a seccomp filter, say) is only a warning:
/// the connection cap is then sized from the limit as it is.
pub fn raise_open_files_limit() -> Result<(u64, Option<u64>), String> {
    let limit = open_files_limit().map_err(|e| format!("cannot read RLIMIT_NOFILE: {e}"))?;
    if limit.rlim_cur >= limit.rlim_max {
        return Ok((limit.rlim_cur, None));
    }
    let raised = libc::rlimit {
        rlim_cur: limit.rlim_max,
        rlim_max: limit.rlim_max,
    };
    // SAFETY: `raised` is a valid rlimit; raising the soft limit up to the
    // hard one needs no privilege.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        warn!(
            "cannot raise the open-files limit from {} to {} ({}): serving fewer connections",
            limit.rlim_cur,
            limit.rlim_max,
            io::Error::last_os_error()
        );
        return Ok((limit.rlim_cur, None));
    }
    Ok((limit.rlim_max, Some(limit.rlim_cur)))
}

/// Descriptors this process holds now (its entries in /proc/self/fd, less
/// the one reading the directory).
pub fn open_descriptors() -> Result<usize, String> {
    let entries = std::fs::read_dir("/proc/self/fd")
        .map_err(|e| format!("cannot count open descriptors in /proc/self/fd: {e}"))?;
    Ok(entries.count().saturating_sub(1))
}

/// The connections the worker may hold under a soft limit of `limit` with
/// `open` descriptors in use: at most `max`, and never so many that they,
/// `open` and [`RESERVE`] together pass the limit. Err when that leaves
/// fewer than `min`.
pub fn connection_cap(limit: u64, open: usize, max: usize, min: usize) -> Result<usize, String> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let room = limit.saturating_sub(open).saturating_sub(RESERVE);
    if room < min {
        return Err(format!(
            "the open-files limit ({limit}) leaves room for {room} connections once the probe \
             holds its {open} descriptors, fewer than {min}: raise it (LimitNOFILE= in the \
             systemd unit, ulimit -n)"
        ));
    }
    Ok(room.min(max))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_stays_below_the_limit() {
        // (soft limit, descriptors open, expected cap)
        let cases: [(u64, usize, Result<usize, ()>); 7] = [
            (1 << 20, 40, Ok(1024)),
            (1024, 40, Ok(1024 - 40 - RESERVE)),
            (2048, 40, Ok(1024)),
            (1024 + 40 + RESERVE as u64, 40, Ok(1024)),
            (40 + RESERVE as u64 + 16, 40, Ok(16)),
            (40 + RESERVE as u64 + 15, 40, Err(())),
            (10, 40, Err(())),
        ];
        for (limit, open, expected) in cases {
            let cap = connection_cap(limit, open, 1024, 16);
            assert_eq!(cap.map_err(|_| ()), expected, "limit {limit}, {open} open");
        }
        assert!(connection_cap(80, 40, 1024, 16)
            .unwrap_err()
            .contains("LimitNOFILE"));
    }
}
