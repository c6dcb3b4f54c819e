//! One `run --config` of a configuration file at a time on a machine: two timers, or a
//! timer and a person, must not rotate the same applications at once. An advisory lock
//! on a file beside the configuration (or `--lock-file`), held for the whole run and
//! released by the operating system when the process ends, however it ends.
//!
//! The standard library's `File::try_lock` does the locking (flock on Unix); the holder
//! writes who it is into the file so the second run can say who holds it.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

/// Held for as long as the run lasts; dropping it (or the process ending) releases it.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another run of this configuration is in progress ({holder}; lock file {path}); nothing was done. Runs of one file never overlap: wait for it, or give runs of different machines their own lock with --lock-file"
    )]
    Busy { path: PathBuf, holder: String },
    #[error(
        "cannot use the lock file {path}: {source}. Runs of one configuration take a lock beside it; where its folder is read-only, pass --lock-file with a writable path"
    )]
    Unusable { path: PathBuf, source: std::io::Error },
}

/// The default lock of a configuration file: `.<file name>.lock` in the same folder.
pub fn default_path(config: &Path) -> PathBuf {
    let name = config.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "rotator.yaml".into());
    config.with_file_name(format!(".{name}.lock"))
}

/// Takes the lock at `path` without waiting, or says who holds it.
pub fn acquire(path: &Path) -> Result<RunLock, LockError> {
    let unusable = |source| LockError::Unusable { path: path.to_owned(), source };
    let mut file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(unusable)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            file.read_to_string(&mut holder).map_err(unusable)?;
            let holder = match holder.trim() {
                "" => "a process that has not said who it is yet".to_string(),
                text => text.to_string(),
            };
            return Err(LockError::Busy { path: path.to_owned(), holder });
        }
        Err(TryLockError::Error(error)) => return Err(unusable(error)),
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default();
    let holder = format!(
        "held by entra-rotator pid {} on {} since {}",
        std::process::id(),
        if host.is_empty() { "this machine" } else { host.as_str() },
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    );
    file.set_len(0).and_then(|()| file.seek(SeekFrom::Start(0))).and_then(|_| file.write_all(holder.as_bytes())).map_err(unusable)?;
    Ok(RunLock { _file: file })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_taker_is_told_who_holds_the_lock_until_it_is_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = default_path(&dir.path().join("rotator.yaml"));
        assert!(path.ends_with(".rotator.yaml.lock"));

        let held = acquire(&path).unwrap();
        let busy = acquire(&path).unwrap_err().to_string();
        assert!(busy.contains(&format!("held by entra-rotator pid {}", std::process::id())), "{busy}");
        assert!(busy.contains("nothing was done"), "{busy}");

        drop(held);
        acquire(&path).expect("released when dropped");
    }

    #[test]
    fn an_unwritable_place_says_to_choose_another() {
        let error = acquire(Path::new("/proc/entra-rotator.lock")).unwrap_err().to_string();
        assert!(error.contains("pass --lock-file"), "{error}");
    }
}
