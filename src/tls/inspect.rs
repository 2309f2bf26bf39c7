//! Finding the files that hold OpenSSL in the host's processes, away from
//! the snapshot loop: reading an executable's symbol table or scanning it for
//! a version string can take a while (node is 100 MB), and a snapshot must
//! not wait for it. Only attaching is left to the thread that owns the probe.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use aya::maps::{HashMap as BpfHashMap, MapData};
use log::{debug, warn};

use super::elf::{self, TlsFunctions};
use super::maps::{self, FileId, MappedFile, TlsMappings};

/// How often the inspector looks for new processes.
pub const ROUND: Duration = Duration::from_millis(500);
/// Rounds during which a process that just started is looked at again: its
/// dynamic loader maps its libraries after the exec, and python imports
/// `ssl` a moment later still.
const WATCH_ROUNDS: u8 = 6;
/// How often every process is looked at, for libraries loaded (dlopen) long
/// after a process started, and starts the exec marks missed.
const FULL_SCAN_INTERVAL: Duration = Duration::from_secs(30);

/// A file that holds OpenSSL, ready to hook.
#[derive(Debug)]
pub struct Found {
    pub id: FileId,
    /// A process that maps it: the path goes through its /proc entry.
    pub pid: u32,
    /// Where the daemon reaches the file.
    pub path: PathBuf,
    /// How the log names it.
    pub name: String,
    pub functions: TlsFunctions,
    /// "OpenSSL 3.0.19", from the file, its libcrypto or its name.
    pub version: String,
}

/// What the inspector tells the probe's owner.
#[derive(Debug)]
pub enum Finding {
    Hookable(Found),
    /// A libssl that cannot be hooked, and why (logged once).
    Unhookable {
        id: FileId,
        name: String,
        reason: String,
    },
}

pub struct Inspector {
    /// Files already reported, or executables found to hold no OpenSSL.
    seen: HashSet<FileId>,
    /// Processes that started recently -> rounds left to look at them.
    watching: HashMap<u32, u8>,
    exec_marks: BpfHashMap<MapData, u32, u32>,
    last_full_scan: Option<Instant>,
    root: Option<(u64, u64)>,
    /// Whether the log already said that a /proc/<pid>/maps was refused.
    warned_access: bool,
}

fn root_of(pid: &str) -> Option<(u64, u64)> {
    fs::metadata(format!("/proc/{pid}/root/"))
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

fn process_exists(pid: u32) -> bool {
    fs::metadata(format!("/proc/{pid}")).is_ok()
}

fn all_pids() -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect()
}

/// Whether the daemon holds CAP_SYS_PTRACE (bit 19 of CapEff), which reading
/// the maps of other users' or more privileged processes needs.
fn has_cap_sys_ptrace() -> bool {
    const CAP_SYS_PTRACE: u32 = 19;
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_PTRACE) != 0)
}

/// The (major, minor) of a device number, as /proc/<pid>/maps prints them.
fn major_minor(dev: u64) -> (u32, u32) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major as u32, minor as u32)
}

/// A path that reaches the file from the daemon: the path itself when it
/// names the same file here (then it outlives the process), else through the
/// process's root (a container's files), or its map_files entry once deleted.
fn reachable_path(pid: u32, file: &MappedFile) -> PathBuf {
    if file.deleted {
        return PathBuf::from(format!("/proc/{pid}/map_files/{}", file.range));
    }
    if let Ok(m) = fs::metadata(&file.path) {
        if m.ino() == file.id.inode && major_minor(m.dev()) == (file.id.major, file.id.minor) {
            return PathBuf::from(&file.path);
        }
    }
    PathBuf::from(format!("/proc/{pid}/root{}", file.path))
}

impl Inspector {
    pub fn new(exec_marks: BpfHashMap<MapData, u32, u32>) -> Inspector {
        Inspector {
            seen: HashSet::new(),
            watching: HashMap::new(),
            exec_marks,
            last_full_scan: None,
            root: root_of("self"),
            warned_access: false,
        }
    }

    /// Forgets a reported file whose hooking failed because the process it
    /// was found in went away, and looks at every process on the next round:
    /// others that map it were skipped as already seen.
    pub fn forget(&mut self, id: FileId) {
        self.seen.remove(&id);
        self.last_full_scan = None;
    }

    /// One round: the processes marked since the last one, those still
    /// watched, and all of them on the first round and every
    /// FULL_SCAN_INTERVAL; returns the files not reported before.
    pub fn round(&mut self) -> Vec<Finding> {
        let marked: Vec<u32> = self.exec_marks.keys().filter_map(Result::ok).collect();
        for pid in marked {
            let _ = self.exec_marks.remove(&pid);
            self.watching.insert(pid, WATCH_ROUNDS);
        }
        if self
            .last_full_scan
            .is_none_or(|at| at.elapsed() >= FULL_SCAN_INTERVAL)
        {
            self.last_full_scan = Some(Instant::now());
            for pid in all_pids() {
                self.watching.entry(pid).or_insert(1);
            }
        }
        let mut findings = Vec::new();
        let pids: Vec<u32> = self.watching.keys().copied().collect();
        for pid in pids {
            let gone = match fs::read_to_string(format!("/proc/{pid}/maps")) {
                Ok(text) => {
                    self.look_at(pid, &maps::tls_mappings(&text), &mut findings);
                    false
                }
                Err(e) => {
                    if e.kind() == std::io::ErrorKind::PermissionDenied && !self.warned_access {
                        self.warned_access = true;
                        if has_cap_sys_ptrace() {
                            debug!("tls: cannot read /proc/{pid}/maps: {e}");
                        } else {
                            warn!(
                                "tls: cannot read /proc/{pid}/maps ({e}): without CAP_SYS_PTRACE, \
                                 HTTPS served by processes of other users is not counted"
                            );
                        }
                    }
                    true
                }
            };
            match self.watching.get_mut(&pid) {
                Some(left) if !gone && *left > 1 => *left -= 1,
                _ => {
                    self.watching.remove(&pid);
                }
            }
        }
        findings
    }

    fn look_at(&mut self, pid: u32, mapped: &TlsMappings, findings: &mut Vec<Finding>) {
        for lib in &mapped.libssl {
            if !self.seen.contains(&lib.id) {
                if let Some(f) = self.inspect(pid, lib, mapped.libcrypto.as_ref(), true) {
                    findings.push(f);
                }
            }
        }
        // An executable that links OpenSSL statically and exports it (node).
        let Ok(exe) = fs::read_link(format!("/proc/{pid}/exe")) else {
            return;
        };
        let exe = exe.to_string_lossy();
        let exe = exe.strip_suffix(" (deleted)").unwrap_or(&exe);
        if let Some(file) = mapped.others.iter().find(|f| f.path == exe) {
            if !self.seen.contains(&file.id) {
                if let Some(f) = self.inspect(pid, file, None, false) {
                    findings.push(f);
                }
            }
        }
    }

    /// Reads a file's OpenSSL functions and version. A libssl is reported
    /// either way; an executable only when it exports OpenSSL.
    fn inspect(
        &mut self,
        pid: u32,
        file: &MappedFile,
        libcrypto: Option<&MappedFile>,
        is_libssl: bool,
    ) -> Option<Finding> {
        let path = reachable_path(pid, file);
        let functions = match elf::tls_functions(&path) {
            Ok(f) => f,
            // The process went away: another one may map the file later.
            Err(_) if !process_exists(pid) => return None,
            Err(e) => {
                self.seen.insert(file.id);
                if !is_libssl {
                    debug!("tls: not looking into {}: {e}", file.path);
                    return None;
                }
                return Some(self.unhookable(pid, file, e));
            }
        };
        self.seen.insert(file.id);
        if !functions.hookable() {
            if !is_libssl {
                return None;
            }
            let reason = "it exports no SSL_read and SSL_write".to_string();
            return Some(self.unhookable(pid, file, reason));
        }
        let version = elf::openssl_version_of_file(&path)
            .or_else(|| {
                libcrypto.and_then(|c| elf::openssl_version_of_file(&reachable_path(pid, c)))
            })
            .or_else(|| maps::version_from_name(&file.path))
            .unwrap_or_else(|| "OpenSSL, version unknown".to_string());
        Some(Finding::Hookable(Found {
            id: file.id,
            pid,
            name: self.display(pid, file),
            path,
            functions,
            version,
        }))
    }

    fn unhookable(&self, pid: u32, file: &MappedFile, reason: String) -> Finding {
        Finding::Unhookable {
            id: file.id,
            name: self.display(pid, file),
            reason,
        }
    }

    /// How the log names a file: its path, and whose root it is in when that
    /// is not the daemon's.
    fn display(&self, pid: u32, file: &MappedFile) -> String {
        let mut name = file.path.clone();
        if file.deleted {
            name.push_str(" (deleted)");
        }
        if root_of(&pid.to_string()) != self.root {
            name.push_str(&format!(" in the root of pid {pid}"));
        }
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_split_as_maps_prints_them() {
        for (major, minor) in [(0xfe, 0x01), (259, 0x10001), (0x12345, 0xabcdef)] {
            assert_eq!(major_minor(libc::makedev(major, minor)), (major, minor));
        }
    }

    #[test]
    fn a_file_seen_from_the_same_root_is_reached_by_its_own_path() {
        let exe = std::env::current_exe().unwrap();
        let m = fs::metadata(&exe).unwrap();
        let (major, minor) = major_minor(m.dev());
        let file = MappedFile {
            id: FileId {
                major,
                minor,
                inode: m.ino(),
            },
            path: exe.display().to_string(),
            deleted: false,
            range: "1000-2000".to_string(),
        };
        assert_eq!(reachable_path(1, &file), exe);
        let other = MappedFile {
            id: FileId {
                inode: m.ino() + 1,
                ..file.id
            },
            ..file.clone()
        };
        assert_eq!(
            reachable_path(7, &other),
            PathBuf::from(format!("/proc/7/root{}", exe.display()))
        );
        let deleted = MappedFile {
            deleted: true,
            ..file
        };
        assert_eq!(
            reachable_path(7, &deleted),
            PathBuf::from("/proc/7/map_files/1000-2000")
        );
    }
}
