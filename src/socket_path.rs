//! Where the plugin's socket lives and what it is called: the plugin id Scope
//! derives from the file name, and the safety checks on the path (the
//! directory must be ours, not a symlink, and nothing but a stale socket may
//! be replaced). Nothing here serves anything.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;

use log::info;

/// Whether `id` is a plugin id Scope accepts: `^[A-Za-z0-9]+(-[A-Za-z0-9]+)*$`.
pub fn is_valid_plugin_id(id: &str) -> bool {
    !id.is_empty()
        && !id.starts_with('-')
        && !id.ends_with('-')
        && !id.contains("--")
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// The plugin id Scope derives from the socket: its file name without the
/// extension. Refuses names Scope would skip.
pub fn plugin_id(socket: &Path) -> Result<String, String> {
    let stem = socket
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    if is_valid_plugin_id(stem) {
        Ok(stem.to_string())
    } else {
        Err(format!(
            "socket {}: Scope takes the plugin id from the file name without extension, and {stem:?} is not a \
             valid id (letters, digits and single dashes, e.g. http-statistics.sock)",
            socket.display()
        ))
    }
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// What stands at the socket path now, once found usable.
struct PathState {
    /// The socket's directory is missing and must be created.
    create_dir: bool,
    /// The directory is ours but with this looser mode.
    loose_mode: Option<u32>,
    /// A socket left by a crashed run is there.
    stale_socket: bool,
}

fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Looks at the socket path without changing anything. Refuses, rather than
/// follows or chmods, a directory that is a symlink, not a directory, or
/// someone else's; refuses a live daemon's socket and anything that is not a
/// socket.
fn inspect(path: &Path) -> Result<PathState, String> {
    let parent = parent_of(path);
    let mut state = PathState {
        create_dir: false,
        loose_mode: None,
        stale_socket: false,
    };
    match fs::symlink_metadata(parent) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => state.create_dir = true,
        Err(e) => return Err(format!("cannot inspect socket directory {}: {e}", parent.display())),
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(format!(
                "socket directory {} is a symlink; refusing to follow it",
                parent.display()
            ))
        }
        Ok(meta) if !meta.is_dir() => {
            return Err(format!("socket directory {} is not a directory", parent.display()))
        }
        Ok(meta) if meta.uid() != euid() => {
            return Err(format!(
                "socket directory {} belongs to uid {}, not to this daemon's uid {}; refusing to use it",
                parent.display(),
                meta.uid(),
                euid()
            ))
        }
        Ok(meta) => state.loose_mode = Some(meta.mode() & 0o777).filter(|&m| m != 0o700),
    }
    if state.create_dir {
        return Ok(state);
    }
    match fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(format!(
                "cannot inspect socket path {}: {e}",
                path.display()
            ))
        }
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(format!(
                "socket path {} exists and is not a socket; refusing to replace it",
                path.display()
            ))
        }
        Ok(_) if UnixStream::connect(path).is_ok() => {
            return Err(format!(
                "another process is already serving on {}; refusing to take it over",
                path.display()
            ))
        }
        Ok(_) => state.stale_socket = true,
    }
    Ok(state)
}

/// Checks that the daemon could serve on `path`, changing nothing: done
/// before the probe loads, so that a bad path fails fast and leaves the
/// filesystem as it was.
pub fn check(path: &Path) -> Result<(), String> {
    inspect(path).map(|_| ())
}

/// Makes the socket's directory (0700, ancestors 0755), tightens its mode,
/// and clears a stale socket left by a crashed run.
pub fn prepare(path: &Path) -> Result<(), String> {
    let state = inspect(path)?;
    let parent = parent_of(path);
    if state.create_dir {
        if let Some(grandparent) = parent.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(grandparent)
                .map_err(|e| format!("cannot create {}: {e}", grandparent.display()))?;
        }
        fs::DirBuilder::new()
            .mode(0o700)
            .create(parent)
            .map_err(|e| format!("cannot create socket directory {}: {e}", parent.display()))?;
        info!("created socket directory {} (mode 0700)", parent.display());
    }
    if let Some(mode) = state.loose_mode {
        fs::set_permissions(parent, fs::Permissions::from_mode(0o700))
            .map_err(|e| format!("cannot set mode 0700 on {}: {e}", parent.display()))?;
        info!(
            "socket directory {} had mode {mode:o}: set it to 0700",
            parent.display()
        );
    }
    if state.stale_socket {
        fs::remove_file(path)
            .map_err(|e| format!("cannot remove stale socket {}: {e}", path.display()))?;
        info!("replaced stale socket {}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_ids() {
        for ok in ["http-statistics", "a", "A1-b2-C3"] {
            assert!(is_valid_plugin_id(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "a--b", "a.b", "a_b", "a b", "é"] {
            assert!(!is_valid_plugin_id(bad), "{bad}");
        }
    }

    #[test]
    fn plugin_id_follows_the_socket_name() {
        assert_eq!(
            plugin_id(Path::new("/var/run/scope/plugins/x/http-statistics.sock")).unwrap(),
            "http-statistics"
        );
        assert_eq!(plugin_id(Path::new("/tmp/my-plugin")).unwrap(), "my-plugin");
        assert!(plugin_id(Path::new("/tmp/my_plugin.sock"))
            .unwrap_err()
            .contains("not a valid id"));
        assert!(plugin_id(Path::new("/tmp/a.b.sock")).is_err());
        assert!(plugin_id(Path::new("/")).is_err());
    }

    #[test]
    fn stale_socket_is_replaced_and_live_one_refused() {
        let dir = std::env::temp_dir().join(format!("shs-unit-{}", std::process::id()));
        let path = dir.join("s.sock");
        fs::create_dir_all(&dir).unwrap();
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(prepare(&path).unwrap_err().contains("already serving"));
        drop(listener); // the file stays: a stale socket
        prepare(&path).unwrap();
        assert!(!path.exists());
        fs::write(&path, b"x").unwrap();
        assert!(prepare(&path).unwrap_err().contains("not a socket"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
