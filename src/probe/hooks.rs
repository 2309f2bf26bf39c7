//! Where the probe hooks in: the two hook paths and the programs and
//! tracepoints of each, which one to use (`--hooks`, and what auto falls back
//! to), and loading and attaching their programs.

use aya::programs::{ProgramError, ProgramType, TracePoint};
use aya::sys::{is_helper_supported, BpfHelper};
use aya::Ebpf;
use log::debug;

use super::describe;
use super::preflight::tracepoint_exists;

/// Which hook path the user asked for (`--hooks`; see probe/http_stats.bpf.c).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookChoice {
    /// The socket layer when the kernel allows it, else syscall tracepoints.
    Auto,
    Socket,
    Syscalls,
}

/// (program, tracepoint category, tracepoint names it is attached to).
pub(super) type Hook = (&'static str, &'static str, &'static [&'static str]);

/// The socket-layer path (Linux 6.3+): unrelated syscalls pay nothing.
pub(super) const SOCKET_HOOKS: [Hook; 2] = [
    ("sock_recv", "sock", &["sock_recv_length"]),
    ("sock_send", "sock", &["sock_send_length"]),
];

/// The syscall-tracepoint path. The eight exits share one program: the
/// kernel verifies it once.
pub(super) const SYSCALL_HOOKS: [Hook; 9] = [
    ("enter_read", "syscalls", &["sys_enter_read"]),
    ("enter_recvfrom", "syscalls", &["sys_enter_recvfrom"]),
    ("enter_readv", "syscalls", &["sys_enter_readv"]),
    ("enter_recvmsg", "syscalls", &["sys_enter_recvmsg"]),
    ("enter_write", "syscalls", &["sys_enter_write"]),
    ("enter_sendto", "syscalls", &["sys_enter_sendto"]),
    ("enter_writev", "syscalls", &["sys_enter_writev"]),
    ("enter_sendmsg", "syscalls", &["sys_enter_sendmsg"]),
    (
        "exit_socket_io",
        "syscalls",
        &[
            "sys_exit_read",
            "sys_exit_recvfrom",
            "sys_exit_readv",
            "sys_exit_recvmsg",
            "sys_exit_write",
            "sys_exit_sendto",
            "sys_exit_writev",
            "sys_exit_sendmsg",
        ],
    ),
];

/// Needed on both paths: cleanup when processes exit and sockets close or
/// are freed.
pub(super) const COMMON_HOOKS: [Hook; 3] = [
    ("process_exit", "sched", &["sched_process_exit"]),
    ("socket_state", "sock", &["inet_sock_set_state"]),
    ("socket_destroyed", "tcp", &["tcp_destroy_sock"]),
];

/// How the connections of an exited process are forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ExitCleanup {
    /// `process_exit` walks the connections map (bpf_for_each_map_elem, 5.13+).
    InKernel,
    /// The kernel lacks that helper: `process_exit_no_walk` leaves them, and
    /// the daemon forgets them at its next snapshot.
    AtSnapshot,
}

impl ExitCleanup {
    /// Asks the kernel (a tiny program calling the helper) rather than
    /// guessing from its version.
    pub(super) fn probe() -> ExitCleanup {
        match is_helper_supported(
            ProgramType::TracePoint,
            BpfHelper::BPF_FUNC_for_each_map_elem,
        ) {
            Ok(true) => ExitCleanup::InKernel,
            Ok(false) => ExitCleanup::AtSnapshot,
            Err(e) => {
                debug!("probing bpf_for_each_map_elem failed ({e}): assuming it is missing");
                ExitCleanup::AtSnapshot
            }
        }
    }

    fn program(self) -> &'static str {
        match self {
            ExitCleanup::InKernel => "process_exit",
            ExitCleanup::AtSnapshot => "process_exit_no_walk",
        }
    }

    /// What the log and the hooks gauge say was left out, if anything.
    pub(super) fn note(self) -> Option<&'static str> {
        match self {
            ExitCleanup::InKernel => None,
            ExitCleanup::AtSnapshot => Some(
                "no bpf_for_each_map_elem (Linux 5.13+): an exited process's connections \
                 are forgotten at the next snapshot, not at its exit",
            ),
        }
    }
}

/// The hook path in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HookPath {
    Socket,
    Syscalls,
}

impl HookPath {
    pub fn name(self) -> &'static str {
        match self {
            HookPath::Socket => "socket",
            HookPath::Syscalls => "syscalls",
        }
    }

    fn hooks(self) -> &'static [Hook] {
        match self {
            HookPath::Socket => &SOCKET_HOOKS,
            HookPath::Syscalls => &SYSCALL_HOOKS,
        }
    }
}

/// What to try, given the choice and whether the kernel has the socket-layer
/// tracepoints: the path to load first, and whether syscalls may replace it
/// when the kernel refuses it. Pure, so the rules are tested.
pub(super) fn plan(
    choice: HookChoice,
    has_socket_tracepoints: bool,
) -> Result<(HookPath, bool), String> {
    match (choice, has_socket_tracepoints) {
        (HookChoice::Syscalls, _) => Ok((HookPath::Syscalls, false)),
        (HookChoice::Socket, true) => Ok((HookPath::Socket, false)),
        (HookChoice::Socket, false) => Err(
            "--hooks socket: this kernel has no sock/sock_recv_length and \
             sock/sock_send_length tracepoints (Linux 6.3 or later); use --hooks syscalls"
                .to_string(),
        ),
        (HookChoice::Auto, true) => Ok((HookPath::Socket, true)),
        (HookChoice::Auto, false) => Ok((HookPath::Syscalls, false)),
    }
}

pub(super) fn check_tracepoints(hooks: &[Hook]) -> Result<(), String> {
    for (_, category, names) in hooks {
        for name in names.iter() {
            if !tracepoint_exists(category, name) {
                return Err(format!(
                    "tracepoint {category}/{name} is missing on this kernel"
                ));
            }
        }
    }
    Ok(())
}

fn tracepoint_program<'a>(ebpf: &'a mut Ebpf, program: &str) -> Result<&'a mut TracePoint, String> {
    ebpf.program_mut(program)
        .ok_or_else(|| format!("the probe has no program {program}"))?
        .try_into()
        .map_err(|e| describe(&format!("program {program}"), &e))
}

/// Loads every program of `hooks` (the verifier runs here).
fn load_programs(ebpf: &mut Ebpf, hooks: &[Hook]) -> Result<(), String> {
    for (program, _, _) in hooks {
        tracepoint_program(ebpf, program)?
            .load()
            .map_err(|e| refused(program, &e))?;
    }
    Ok(())
}

/// Lines of the verifier's log shown when it refuses a program: its verdict
/// and the instructions just before it (the whole log can run to megabytes).
const VERIFIER_TAIL: usize = 8;

/// Why the kernel refused `program`: for a verifier refusal, its name, the
/// error and the verifier's last lines (not a privilege hint: the errno of a
/// refusal, often EACCES, says nothing about privileges, checked already).
fn refused(program: &str, err: &ProgramError) -> String {
    match err {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            let log = verifier_log.to_string();
            let tail = verifier_tail(&log, VERIFIER_TAIL);
            format!(
                "the kernel's verifier refused program {program} ({io_error}); its last lines:\n  {}",
                tail.join("\n  ")
            )
        }
        _ => describe(&format!("the kernel refused program {program}"), err),
    }
}

/// The last `n` non-blank lines of a verifier log. Pure, so tested.
fn verifier_tail(log: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

fn attach_programs(ebpf: &mut Ebpf, hooks: &[Hook]) -> Result<(), String> {
    for (program, category, names) in hooks {
        let tp = tracepoint_program(ebpf, program)?;
        for name in names.iter() {
            tp.attach(category, name).map_err(|e| {
                describe(&format!("cannot attach {program} to {category}/{name}"), &e)
            })?;
            debug!("attached {program} to {category}/{name}");
        }
    }
    Ok(())
}

/// Loads the programs of the planned path, or, when auto may fall back and
/// the kernel refuses the socket-layer programs, of the syscall path: the
/// path in use and why.
pub(super) fn load_path(
    ebpf: &mut Ebpf,
    choice: HookChoice,
    first: HookPath,
    may_fall_back: bool,
) -> Result<(HookPath, String), String> {
    Ok(match (first, load_programs(ebpf, first.hooks())) {
        (HookPath::Socket, Ok(())) if choice == HookChoice::Auto => (
            HookPath::Socket,
            "auto: the kernel has the socket-layer tracepoints".to_string(),
        ),
        (HookPath::Socket, Ok(())) => (HookPath::Socket, "forced by --hooks socket".to_string()),
        (HookPath::Socket, Err(e)) if may_fall_back => {
            check_tracepoints(&SYSCALL_HOOKS)?;
            load_programs(ebpf, &SYSCALL_HOOKS)?;
            (
                HookPath::Syscalls,
                format!("auto: socket-layer programs refused ({e})"),
            )
        }
        (HookPath::Socket, Err(e)) => return Err(format!("--hooks socket: {e}")),
        (HookPath::Syscalls, result) => {
            check_tracepoints(&SYSCALL_HOOKS)?;
            result?;
            let reason = if choice == HookChoice::Syscalls {
                "forced by --hooks syscalls"
            } else {
                "auto: the kernel has no sock_recv_length/sock_send_length tracepoints (Linux 6.3+)"
            };
            (HookPath::Syscalls, reason.to_string())
        }
    })
}

/// Loads the cleanup programs both paths need (the exit program `cleanup`
/// says), then attaches the path's programs and theirs.
pub(super) fn attach(ebpf: &mut Ebpf, path: HookPath, cleanup: ExitCleanup) -> Result<(), String> {
    let common = COMMON_HOOKS.map(|(program, category, names)| match program {
        "process_exit" => (cleanup.program(), category, names),
        _ => (program, category, names),
    });
    load_programs(ebpf, &common)?;
    attach_programs(ebpf, path.hooks())?;
    attach_programs(ebpf, &common)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verifier_tail_is_its_last_non_blank_lines() {
        let log = "func#0\n1: (b7) r0 = 0\n\n2: (95) exit\nR2 unbounded memory access\nprocessed 3 insns\n\n";
        assert_eq!(
            verifier_tail(log, 3),
            [
                "2: (95) exit",
                "R2 unbounded memory access",
                "processed 3 insns"
            ]
        );
        assert_eq!(verifier_tail("one line", 8), ["one line"]);
        assert!(verifier_tail("", 8).is_empty());
    }

    #[test]
    fn hook_plans() {
        assert_eq!(plan(HookChoice::Auto, true), Ok((HookPath::Socket, true)));
        assert_eq!(
            plan(HookChoice::Auto, false),
            Ok((HookPath::Syscalls, false))
        );
        assert_eq!(
            plan(HookChoice::Socket, true),
            Ok((HookPath::Socket, false))
        );
        assert!(plan(HookChoice::Socket, false)
            .unwrap_err()
            .contains("Linux 6.3"));
        assert_eq!(
            plan(HookChoice::Syscalls, true),
            Ok((HookPath::Syscalls, false))
        );
        assert_eq!(
            plan(HookChoice::Syscalls, false),
            Ok((HookPath::Syscalls, false))
        );
    }
}
