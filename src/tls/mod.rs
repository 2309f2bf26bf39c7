//! HTTPS served through OpenSSL: finds the files that hold OpenSSL in the
//! processes of the host (a shared libssl, or an executable that exports
//! OpenSSL's functions, like node) and hooks each file once with the probe's
//! TLS programs (probe/tls.h), which hand the plaintext to the same counting
//! core as the socket hooks.
//!
//! A uprobe on a file fires in every process that maps it, present and
//! future, so files are hooked once per (device, inode), not per process.
//! Processes are looked at when they start (the probe marks every exec), for
//! a few seconds while their libraries get mapped, plus a slow full scan of
//! /proc for libraries loaded long after start. The looking is done by an
//! inspector thread (inspect.rs); the thread that owns the probe only
//! attaches what it reports, between snapshots.

mod elf;
mod inspect;
mod maps;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use aya::maps::HashMap as BpfHashMap;
use aya::programs::uprobe::{UProbeLinkId, UProbeScope};
use aya::programs::{TracePoint, UProbe};
use aya::Ebpf;
use log::{info, warn};

use self::elf::TlsFunctions;
use self::inspect::{Finding, Found, Inspector};
use self::maps::FileId;

/// `--tls`: whether to hook OpenSSL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsChoice {
    /// Hook OpenSSL when the kernel allows uprobes; run without otherwise.
    Auto,
    Off,
}

/// Files hooked at most. Each holds one descriptor per probe (nine), which
/// the daemon sets aside from its connection budget at start-up; a host
/// with more distinct OpenSSL files than this (many container images) gets
/// the first ones hooked and a log line for the others.
pub const MAX_FILES: usize = 32;

/// The probe's TLS programs and the functions each is attached to. The
/// return program serves all four.
#[derive(Debug, Clone, Copy)]
enum Function {
    Read,
    ReadEx,
    Write,
    WriteEx,
    Free,
}

const UPROBES: [(&str, Function); 9] = [
    ("tls_read_entry", Function::Read),
    ("tls_read_ex_entry", Function::ReadEx),
    ("tls_write_entry", Function::Write),
    ("tls_write_ex_entry", Function::WriteEx),
    ("tls_return", Function::Read),
    ("tls_return", Function::ReadEx),
    ("tls_return", Function::Write),
    ("tls_return", Function::WriteEx),
    ("tls_free", Function::Free),
];

/// The tracepoint program that marks every exec for the inspector.
const EXEC_PROGRAM: &str = "tls_exec";
const EXEC_MARKS: &str = "tls_exec_marks";

impl Function {
    fn offset(self, f: &TlsFunctions) -> Option<u64> {
        match self {
            Function::Read => f.ssl_read,
            Function::ReadEx => f.ssl_read_ex,
            Function::Write => f.ssl_write,
            Function::WriteEx => f.ssl_write_ex,
            Function::Free => f.ssl_free,
        }
    }
}

/// The TLS hooks: what is hooked, and the inspector thread's reports.
pub struct TlsHooks {
    /// Every file reported: true once hooked, false when it could not be.
    files: HashMap<FileId, bool>,
    /// Every probe attached, for [`TlsHooks::detach`].
    links: Vec<(&'static str, UProbeLinkId)>,
    findings: Receiver<Finding>,
    /// Files to look at again (their process vanished before the attach).
    forget: Sender<FileId>,
    stop: Arc<AtomicBool>,
    inspector: Option<JoinHandle<()>>,
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe, String> {
    ebpf.program_mut(name)
        .ok_or_else(|| format!("the probe has no program {name}"))?
        .try_into()
        .map_err(|e| format!("program {name}: {e}"))
}

/// An error with its whole chain of sources, on one line.
fn chain(err: &dyn std::error::Error) -> String {
    let mut msg = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        msg.push_str(&format!(": {s}"));
        source = s.source();
    }
    msg
}

impl TlsHooks {
    /// Loads the TLS programs (the verifier runs here), starts marking
    /// execs, hooks the OpenSSL of the processes running now, and starts
    /// the inspector thread that finds it in the processes to come.
    pub fn start(ebpf: &mut Ebpf) -> Result<TlsHooks, String> {
        let mut loaded = HashSet::new();
        for (name, _) in UPROBES {
            if loaded.insert(name) {
                program(ebpf, name)?
                    .load()
                    .map_err(|e| format!("the kernel refused program {name}: {}", chain(&e)))?;
            }
        }
        let exec: &mut TracePoint = ebpf
            .program_mut(EXEC_PROGRAM)
            .ok_or_else(|| format!("the probe has no program {EXEC_PROGRAM}"))?
            .try_into()
            .map_err(|e| format!("program {EXEC_PROGRAM}: {e}"))?;
        exec.load()
            .map_err(|e| format!("the kernel refused program {EXEC_PROGRAM}: {}", chain(&e)))?;
        exec.attach("sched", "sched_process_exec")
            .map_err(|e| format!("cannot attach to sched/sched_process_exec: {}", chain(&e)))?;
        let marks = ebpf
            .take_map(EXEC_MARKS)
            .ok_or_else(|| format!("the probe has no map {EXEC_MARKS}"))?;
        let marks = BpfHashMap::try_from(marks).map_err(|e| format!("map {EXEC_MARKS}: {e}"))?;

        let mut inspector = Inspector::new(marks);
        let (report, findings) = mpsc::channel();
        let (forget, forgotten) = mpsc::channel();
        let mut hooks = TlsHooks {
            files: HashMap::new(),
            links: Vec::new(),
            findings,
            forget,
            stop: Arc::new(AtomicBool::new(false)),
            inspector: None,
        };
        // What runs already is hooked before the daemon answers; a file
        // first found in a process that exited before the attach is looked
        // for again, in the others.
        for _attempt in 0..3 {
            for finding in inspector.round() {
                hooks.handle(ebpf, finding);
            }
            let mut again = false;
            while let Ok(id) = forgotten.try_recv() {
                inspector.forget(id);
                again = true;
            }
            if !again {
                break;
            }
        }
        let stop = Arc::clone(&hooks.stop);
        let thread = std::thread::Builder::new()
            .name("tls-inspector".to_string())
            .spawn(move || inspect_until_stopped(inspector, &report, &forgotten, &stop))
            .map_err(|e| format!("cannot start the TLS inspector thread: {e}"))?;
        hooks.inspector = Some(thread);
        Ok(hooks)
    }

    /// How many files are hooked.
    pub fn hooked_files(&self) -> usize {
        self.files.values().filter(|hooked| **hooked).count()
    }

    /// Descriptors the files still to be hooked may take, at most.
    pub fn descriptors_to_come(&self) -> usize {
        MAX_FILES.saturating_sub(self.hooked_files()) * UPROBES.len()
    }

    /// Detaches every probe, quickly (see [`detach_in_parallel`]); what is
    /// left is dropped with the probe.
    pub fn detach(mut self, ebpf: &mut Ebpf) {
        let links = std::mem::take(&mut self.links);
        detach_in_parallel(ebpf, links);
    }

    /// Hooks what the inspector found since the last call. Cheap when it
    /// found nothing: call it as often as the loop wakes up.
    pub fn poll(&mut self, ebpf: &mut Ebpf) {
        while let Ok(finding) = self.findings.try_recv() {
            self.handle(ebpf, finding);
        }
    }

    fn handle(&mut self, ebpf: &mut Ebpf, finding: Finding) {
        match finding {
            Finding::Unhookable { id, name, reason } => {
                warn!("tls: cannot hook {name}: {reason}; HTTPS through it is not counted");
                self.files.insert(id, false);
            }
            Finding::Hookable(found) => self.hook(ebpf, found),
        }
    }

    fn hook(&mut self, ebpf: &mut Ebpf, found: Found) {
        let Found {
            id,
            pid,
            path,
            name,
            functions,
            version,
        } = found;
        if self.files.contains_key(&id) {
            return;
        }
        if self.hooked_files() >= MAX_FILES {
            warn!(
                "tls: cannot hook {name}: {MAX_FILES} files are hooked already, the most the \
                 daemon sets descriptors aside for; HTTPS through it is not counted"
            );
            self.files.insert(id, false);
            return;
        }
        match hook_file(ebpf, &path, &functions) {
            Ok(links) => {
                self.links.extend(links);
                info!("tls: hooked {name} ({version})");
                self.files.insert(id, true);
            }
            // The process went away before the attach: another process may
            // map the file later.
            Err(_) if std::fs::metadata(format!("/proc/{pid}")).is_err() => {
                let _ = self.forget.send(id);
            }
            Err(e) => {
                warn!("tls: cannot hook {name}: {e}; HTTPS through it is not counted");
                self.files.insert(id, false);
            }
        }
    }
}

/// The inspector thread: a round every [`inspect::ROUND`] until stopped or
/// the daemon stops listening.
fn inspect_until_stopped(
    mut inspector: Inspector,
    report: &Sender<Finding>,
    forgotten: &Receiver<FileId>,
    stop: &AtomicBool,
) {
    const STEP: Duration = Duration::from_millis(50);
    while !stop.load(Ordering::Relaxed) {
        while let Ok(id) = forgotten.try_recv() {
            inspector.forget(id);
        }
        for finding in inspector.round() {
            if report.send(finding).is_err() {
                return;
            }
        }
        let mut waited = Duration::ZERO;
        while waited < inspect::ROUND && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(STEP);
            waited += STEP;
        }
    }
}

impl Drop for TlsHooks {
    /// Tells the inspector to stop, without waiting: a round in progress
    /// may be reading a large executable, and a SIGTERM must not wait for
    /// it (the daemon exits within 2 s). The thread holds nothing that
    /// needs closing in order: its map descriptor goes with the process.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.inspector.take() {
            if thread.is_finished() {
                let _ = thread.join();
            }
        }
    }
}

/// Attaches every TLS program to its function in the file at `path`; on
/// failure detaches what it attached, so that a file is hooked wholly or not.
fn hook_file(
    ebpf: &mut Ebpf,
    path: &Path,
    functions: &TlsFunctions,
) -> Result<Vec<(&'static str, UProbeLinkId)>, String> {
    let mut attached: Vec<(&'static str, UProbeLinkId)> = Vec::new();
    let mut result = Ok(());
    for (name, function) in UPROBES {
        let Some(offset) = function.offset(functions) else {
            continue; // SSL_read_ex and SSL_write_ex are new in OpenSSL 1.1.1
        };
        match program(ebpf, name).and_then(|p| {
            p.attach(offset, path, UProbeScope::AllProcesses)
                .map_err(|e| format!("cannot attach {name} to {function:?}: {}", chain(&e)))
        }) {
            Ok(link) => attached.push((name, link)),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    if let Err(e) = result {
        detach_in_parallel(ebpf, attached);
        return Err(e);
    }
    Ok(attached)
}

/// Detaches uprobes all at once. Each detach waits for the kernel to make
/// sure no CPU still runs the probe (~250 ms here), one after the other when
/// done in turn: nine per file made a SIGTERM take seconds. Waits that
/// overlap end together, so each link is dropped on a thread of its own.
fn detach_in_parallel(ebpf: &mut Ebpf, links: Vec<(&'static str, UProbeLinkId)>) {
    let taken: Vec<_> = links
        .into_iter()
        .filter_map(|(name, id)| program(ebpf, name).ok()?.take_link(id).ok())
        .collect();
    std::thread::scope(|scope| {
        for link in taken {
            // A thread that cannot start drops its link here, in turn.
            let _ = std::thread::Builder::new().spawn_scoped(scope, move || drop(link));
        }
    });
}
