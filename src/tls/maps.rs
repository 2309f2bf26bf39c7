//! Which files of a process may hold OpenSSL, read from its /proc/<pid>/maps.
//! Pure: the text in, the candidate files out.

/// A file identity as the kernel maps it: the device (major, minor) and inode
/// that /proc/<pid>/maps prints. For a file of an overlay (container) mount
/// this is the real file underneath, which is also what a uprobe attaches to:
/// two containers sharing a layer share the file, and it is hooked once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    pub major: u32,
    pub minor: u32,
    pub inode: u64,
}

/// A file mapped by a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappedFile {
    pub id: FileId,
    /// The path as the process sees it (inside its own root).
    pub path: String,
    /// The file was deleted or replaced on disk since it was mapped (a
    /// package upgrade under a running server): reachable only through
    /// /proc/<pid>/map_files/<range>.
    pub deleted: bool,
    /// `start-end` of its first mapping, the name of its map_files entry.
    pub range: String,
}

/// What a process maps that matters for TLS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsMappings {
    /// OpenSSL's libssl (libssl.so, libssl.so.3, libssl.so.1.1...). NSS's
    /// libssl3.so is not OpenSSL and is not listed.
    pub libssl: Vec<MappedFile>,
    /// OpenSSL's libcrypto, which holds the version string libssl lacks.
    pub libcrypto: Option<MappedFile>,
    /// Every other mapped file (the executable among them).
    pub others: Vec<MappedFile>,
}

const DELETED: &str = " (deleted)";

/// Parses one line of /proc/<pid>/maps; None for anonymous mappings,
/// pseudo-files ([heap], [vdso]...) and malformed lines.
fn parse_line(line: &str) -> Option<MappedFile> {
    let mut fields = line.splitn(6, ' ');
    let range = fields.next()?;
    let _perms = fields.next()?;
    let _offset = fields.next()?;
    let dev = fields.next()?;
    let inode = fields.next()?;
    let path = fields.next()?.trim_start();
    let inode: u64 = inode.parse().ok()?;
    if inode == 0 || !path.starts_with('/') {
        return None;
    }
    let (major, minor) = dev.split_once(':')?;
    let (path, deleted) = match path.strip_suffix(DELETED) {
        Some(p) => (p, true),
        None => (path, false),
    };
    Some(MappedFile {
        id: FileId {
            major: u32::from_str_radix(major, 16).ok()?,
            minor: u32::from_str_radix(minor, 16).ok()?,
            inode,
        },
        path: path.to_string(),
        deleted,
        range: range.to_string(),
    })
}

fn file_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Whether `path` names OpenSSL's libssl: `libssl.so` or `libssl.so.<version>`.
pub fn is_libssl(path: &str) -> bool {
    let name = file_name(path);
    name == "libssl.so" || name.starts_with("libssl.so.")
}

fn is_libcrypto(path: &str) -> bool {
    let name = file_name(path);
    name == "libcrypto.so" || name.starts_with("libcrypto.so.")
}

/// The distinct files a process maps, sorted into libssl, libcrypto and the
/// rest (each file once, with its first mapping's range).
pub fn tls_mappings(maps: &str) -> TlsMappings {
    let mut out = TlsMappings::default();
    let mut seen = std::collections::HashSet::new();
    for file in maps.lines().filter_map(parse_line) {
        if !seen.insert(file.id) {
            continue;
        }
        if is_libssl(&file.path) {
            out.libssl.push(file);
        } else if is_libcrypto(&file.path) {
            if out.libcrypto.is_none() {
                out.libcrypto = Some(file);
            }
        } else {
            out.others.push(file);
        }
    }
    out
}

/// The OpenSSL major version a libssl's file name promises, for the log when
/// the library itself carries no version string: `libssl.so.3` -> "OpenSSL 3".
pub fn version_from_name(path: &str) -> Option<String> {
    let version = file_name(path).strip_prefix("libssl.so.")?;
    if version.is_empty() || !version.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    Some(format!("OpenSSL {version}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c8a00000-55d0c8a2a000 r--p 00000000 fe:00 262311                     /usr/sbin/nginx
55d0c8a2a000-55d0c8b0f000 r-xp 0002a000 fe:00 262311                     /usr/sbin/nginx
55d0ca1f4000-55d0ca2c9000 rw-p 00000000 00:00 0                          [heap]
7f3a1b000000-7f3a1b09a000 r--p 00000000 fe:00 131812                     /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7f3a1b09a000-7f3a1b2f6000 r-xp 0009a000 fe:00 131812                     /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7f3a1b400000-7f3a1b41e000 r--p 00000000 fe:00 131815                     /usr/lib/x86_64-linux-gnu/libssl.so.3
7f3a1b41e000-7f3a1b47a000 r-xp 0001e000 fe:00 131815                     /usr/lib/x86_64-linux-gnu/libssl.so.3
7f3a1b500000-7f3a1b520000 r-xp 00000000 00:2a 77                         /tmp/copy/libssl.so.3 (deleted)
7f3a1b600000-7f3a1b620000 r-xp 00000000 fe:00 4242                       /usr/lib/x86_64-linux-gnu/nss/libssl3.so
7f3a1b700000-7f3a1b720000 r-xp 00000000 fe:00 4243                       /opt/my app/lib/libssl.so.1.1
7ffd5a1e2000-7ffd5a203000 rw-p 00000000 00:00 0                          [stack]
7ffd5a3f8000-7ffd5a3fa000 r-xp 00000000 00:00 0                          [vdso]
";

    fn id(major: u32, minor: u32, inode: u64) -> FileId {
        FileId {
            major,
            minor,
            inode,
        }
    }

    #[test]
    fn finds_each_libssl_once_with_its_identity() {
        let m = tls_mappings(MAPS);
        let found: Vec<_> = m
            .libssl
            .iter()
            .map(|f| (f.id, f.path.as_str(), f.deleted, f.range.as_str()))
            .collect();
        assert_eq!(
            found,
            vec![
                (
                    id(0xfe, 0, 131815),
                    "/usr/lib/x86_64-linux-gnu/libssl.so.3",
                    false,
                    "7f3a1b400000-7f3a1b41e000"
                ),
                (
                    id(0, 0x2a, 77),
                    "/tmp/copy/libssl.so.3",
                    true,
                    "7f3a1b500000-7f3a1b520000"
                ),
                (
                    id(0xfe, 0, 4243),
                    "/opt/my app/lib/libssl.so.1.1",
                    false,
                    "7f3a1b700000-7f3a1b720000"
                ),
            ]
        );
        assert_eq!(
            m.libcrypto.map(|f| f.path),
            Some("/usr/lib/x86_64-linux-gnu/libcrypto.so.3".to_string())
        );
        let others: Vec<_> = m.others.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            others,
            vec![
                "/usr/sbin/nginx",
                "/usr/lib/x86_64-linux-gnu/nss/libssl3.so"
            ]
        );
    }

    #[test]
    fn libssl_names() {
        for (path, yes) in [
            ("/usr/lib/x86_64-linux-gnu/libssl.so.3", true),
            ("/lib/libssl.so.1.1", true),
            ("/x/libssl.so", true),
            ("/usr/lib/x86_64-linux-gnu/libssl3.so", false), // NSS
            ("/x/libssl.so.3.bak/libfoo.so", false),
            ("/x/libsslx.so.3", false),
        ] {
            assert_eq!(is_libssl(path), yes, "{path}");
        }
    }

    #[test]
    fn garbage_lines_are_skipped() {
        let m = tls_mappings("not a maps line\n\n7f-80 r-xp 0 zz:00 5 /libssl.so.3\n7f-80 r-xp 0 fe:00 x /libssl.so.3\n");
        assert_eq!(m, TlsMappings::default());
    }

    #[test]
    fn versions_from_names() {
        assert_eq!(
            version_from_name("/usr/lib/libssl.so.3").as_deref(),
            Some("OpenSSL 3")
        );
        assert_eq!(
            version_from_name("libssl.so.1.1").as_deref(),
            Some("OpenSSL 1.1")
        );
        assert_eq!(version_from_name("/x/libssl.so"), None);
        assert_eq!(version_from_name("/x/libssl.so.3-custom"), None);
    }
}
