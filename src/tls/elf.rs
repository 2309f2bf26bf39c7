//! What a file offers to hook: the file offsets of OpenSSL's functions in its
//! dynamic symbol table, and the OpenSSL version it carries.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use object::read::ReadCache;
use object::{Object, ObjectSection, ObjectSymbol};

/// OpenSSL's functions the probe hooks, as found in one file. A uprobe is
/// placed at a file offset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TlsFunctions {
    pub ssl_read: Option<u64>,
    pub ssl_read_ex: Option<u64>,
    pub ssl_write: Option<u64>,
    pub ssl_write_ex: Option<u64>,
    pub ssl_free: Option<u64>,
}

impl TlsFunctions {
    /// Whether the file can be hooked: SSL_read and SSL_write exist in every
    /// OpenSSL (the _ex variants since 1.1.1).
    pub fn hookable(&self) -> bool {
        self.ssl_read.is_some() && self.ssl_write.is_some()
    }
}

/// Reads the exported (defined, dynamic) OpenSSL functions of the ELF file at
/// `path`. Only the headers and the dynamic symbol table are read, not the
/// whole file: executables like node are 100 MB.
pub fn tls_functions(path: &Path) -> Result<TlsFunctions, String> {
    let file = File::open(path).map_err(|e| format!("cannot open: {e}"))?;
    let cache = ReadCache::new(file);
    let obj = object::File::parse(&cache).map_err(|e| format!("not an ELF file: {e}"))?;
    let mut found = TlsFunctions::default();
    for sym in obj.dynamic_symbols() {
        if !sym.is_definition() {
            continue;
        }
        let slot = match sym.name_bytes() {
            Ok(b"SSL_read") => &mut found.ssl_read,
            Ok(b"SSL_read_ex") => &mut found.ssl_read_ex,
            Ok(b"SSL_write") => &mut found.ssl_write,
            Ok(b"SSL_write_ex") => &mut found.ssl_write_ex,
            Ok(b"SSL_free") => &mut found.ssl_free,
            _ => continue,
        };
        // A uprobe takes a file offset: the symbol's address within its
        // section, plus where the section lies in the file.
        let Some(index) = sym.section_index() else {
            continue;
        };
        let Ok(section) = obj.section_by_index(index) else {
            continue;
        };
        let Some((offset, _)) = section.file_range() else {
            continue;
        };
        if let Some(within) = sym.address().checked_sub(section.address()) {
            *slot = Some(offset + within);
        }
    }
    Ok(found)
}

/// The OpenSSL version text in `bytes`, from OPENSSL_VERSION_TEXT
/// ("OpenSSL 3.0.19 27 Jan 2026", "OpenSSL 1.1.1w  11 Sep 2023"): "OpenSSL"
/// and the version, without the date.
pub fn openssl_version(bytes: &[u8]) -> Option<String> {
    const PREFIX: &[u8] = b"OpenSSL ";
    let mut from = 0;
    while let Some(at) = find(&bytes[from..], PREFIX) {
        let start = from + at;
        let rest = &bytes[start + PREFIX.len()..];
        let version_len = rest
            .iter()
            .position(|b| !(b.is_ascii_alphanumeric() || *b == b'.' || *b == b'-'))
            .unwrap_or(rest.len());
        let version = &rest[..version_len];
        let after = &rest[version_len..];
        // A version starts with a digit and has a dot; a date follows after
        // one or two spaces. That tells it from prose mentioning OpenSSL.
        let spaces = after.iter().take_while(|b| **b == b' ').count();
        let date_follows =
            (1..=2).contains(&spaces) && after.get(spaces).is_some_and(u8::is_ascii_digit);
        if version.first().is_some_and(u8::is_ascii_digit)
            && version.contains(&b'.')
            && date_follows
        {
            return Some(format!("OpenSSL {}", String::from_utf8_lossy(version)));
        }
        from = start + 1;
    }
    None
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    // Skip to each occurrence of the first byte: most of a binary is not 'O'.
    let (first, rest) = needle.split_first()?;
    let mut at = 0;
    while let Some(i) = haystack[at..].iter().position(|b| b == first) {
        let start = at + i;
        if haystack[start + 1..].starts_with(rest) {
            return Some(start);
        }
        at = start + 1;
    }
    None
}

/// [`openssl_version`] of a file, read in chunks so that a large executable
/// is never held in memory at once.
pub fn openssl_version_of_file(path: &Path) -> Option<String> {
    const CHUNK: usize = 1 << 20;
    const OVERLAP: usize = 64; // longer than any version text
    let mut file = File::open(path).ok()?;
    let mut buf = vec![0u8; CHUNK + OVERLAP];
    let mut kept = 0;
    loop {
        let n = file.read(&mut buf[kept..]).ok()?;
        if n == 0 {
            return None;
        }
        let filled = kept + n;
        if let Some(v) = openssl_version(&buf[..filled]) {
            return Some(v);
        }
        kept = OVERLAP.min(filled);
        buf.copy_within(filled - kept..filled, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_texts() {
        for (bytes, expected) in [
            (
                &b"\0\0OpenSSL 3.0.19 27 Jan 2026\0"[..],
                Some("OpenSSL 3.0.19"),
            ),
            (b"xOpenSSL 1.1.1w  11 Sep 2023\0", Some("OpenSSL 1.1.1w")),
            (
                b"built with OpenSSL support\0OpenSSL 3.2.0 23 Nov 2023",
                Some("OpenSSL 3.2.0"),
            ),
            (b"OpenSSL 3 compatible\0", None),
            (b"OpenSSL 3.0.19", None), // no date: could be anything
            (b"OpenSSL ", None),
            (b"", None),
        ] {
            assert_eq!(
                openssl_version(bytes).as_deref(),
                expected,
                "{:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }

    #[test]
    fn version_across_a_chunk_boundary_of_a_file() {
        let dir = std::env::temp_dir().join(format!("shs-tls-elf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("blob");
        let mut bytes = vec![0u8; (1 << 20) - 10];
        bytes.extend_from_slice(b"OpenSSL 3.0.19 27 Jan 2026\0");
        bytes.extend(vec![0u8; 100]);
        std::fs::write(&path, &bytes).unwrap();
        let found = openssl_version_of_file(&path);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(found.as_deref(), Some("OpenSSL 3.0.19"));
    }

    #[test]
    fn a_file_that_is_not_elf_is_an_error() {
        let err = tls_functions(Path::new("/proc/self/status")).unwrap_err();
        assert!(err.contains("not an ELF file"), "{err}");
        let err = tls_functions(Path::new("/nonexistent/libssl.so.3")).unwrap_err();
        assert!(err.contains("cannot open"), "{err}");
    }

    #[test]
    fn executables_without_openssl_have_nothing_to_hook() {
        // The test binary itself: an ELF file without OpenSSL.
        let exe = std::env::current_exe().unwrap();
        let f = tls_functions(&exe).unwrap();
        assert_eq!(f, TlsFunctions::default());
        assert!(!f.hookable());
    }
}
