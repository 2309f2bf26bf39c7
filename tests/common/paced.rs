//! Load at a known rate: a thread that makes one request every 1/rate
//! seconds on a fixed schedule (late requests catch up, so the average rate
//! holds), and counts what it sent. Tests can then assert rates, not just
//! totals.

// Each test file includes this on its own and uses only part of it.
#![allow(dead_code)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

pub struct PacedLoad {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<u64>>,
}

impl PacedLoad {
    /// Calls `request` `per_second` times a second until [`PacedLoad::finish`].
    pub fn start(per_second: f64, mut request: impl FnMut() + Send + 'static) -> PacedLoad {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let period = Duration::from_secs_f64(1.0 / per_second);
        let handle = thread::spawn(move || {
            let started = Instant::now();
            let mut sent = 0u64;
            while !flag.load(Ordering::SeqCst) {
                let due = started + period * sent as u32;
                let now = Instant::now();
                if due > now {
                    thread::sleep(due - now);
                    continue;
                }
                request();
                sent += 1;
            }
            sent
        });
        PacedLoad {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops; returns how many requests were made (each one completed).
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.handle
            .take()
            .unwrap()
            .join()
            .expect("the load thread panicked")
    }
}

impl Drop for PacedLoad {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}
