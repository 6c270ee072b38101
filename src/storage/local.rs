//! The `local` backend: report files in `report.output_dir`, served by the host that
//! wrote them.

use std::path::{Path, PathBuf};

use super::StoreError;

/// Files in one directory.
pub(crate) struct LocalStore {
    /// `report.output_dir`: the finished files, and the generators' temporary files
    /// (hidden names, renamed into place when complete).
    dir: PathBuf,
}

impl LocalStore {
    pub(crate) fn new(dir: PathBuf) -> Self {
        Self { dir }
    }

    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the directory if it is missing.
    pub(crate) async fn prepare(&self) -> Result<String, StoreError> {
        tokio::fs::create_dir_all(&self.dir)
            .await
            .map_err(|e| StoreError::io(format!("cannot create {}", self.dir.display()), e))?;
        Ok(format!("report files go to {}", self.dir.display()))
    }

    /// Writes and removes a probe file: the directory exists (or can be made) and is
    /// writable.
    pub(crate) async fn check(&self) -> Result<String, StoreError> {
        self.prepare().await?;
        let probe = self
            .dir
            .join(format!(".reportd-check-{}", uuid::Uuid::new_v4().simple()));
        let io = |what: &str, e| StoreError::io(format!("cannot {what} {}", probe.display()), e);
        tokio::fs::write(&probe, b"reportd storage check\n")
            .await
            .map_err(|e| io("write", e))?;
        tokio::fs::remove_file(&probe)
            .await
            .map_err(|e| io("remove", e))?;
        Ok(format!(
            "local directory {} is writable",
            self.dir.display()
        ))
    }

    /// Renames the finished temporary file into place: a reader sees the old file or the
    /// whole new one, never half of it.
    pub(crate) async fn put(&self, temp: &Path, key: &str) -> Result<(), StoreError> {
        let target = self.path_of(key)?;
        if let Err(e) = tokio::fs::rename(temp, &target).await {
            super::remove_if_present(temp).await;
            return Err(StoreError::io(
                format!("cannot rename into {}", self.dir.display()),
                e,
            ));
        }
        Ok(())
    }

    /// Removes the file of `key`; a missing one is fine.
    pub(crate) async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = self.path_of(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StoreError::io(
                format!("cannot remove {}", path.display()),
                e,
            )),
        }
    }

    /// The path of a stored key. Keys are file names this store made; anything with a
    /// directory part is refused, so a key can never point outside the directory.
    pub(crate) fn path_of(&self, key: &str) -> Result<PathBuf, StoreError> {
        if !is_plain_file_name(key) {
            return Err(StoreError::io(
                format!("key `{key}` is not a file name"),
                std::io::ErrorKind::InvalidInput.into(),
            ));
        }
        Ok(self.dir.join(key))
    }
}

/// A non-empty name without `/`, `\` or a leading `.` (so no `..` either).
fn is_plain_file_name(key: &str) -> bool {
    !key.is_empty() && !key.starts_with('.') && !key.contains(['/', '\\'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_file_names_are_keys() {
        assert!(is_plain_file_name("0b1e6f0e.csv"));
        assert!(is_plain_file_name("0b1e6f0e.csv.gz"));
        for bad in ["", "../etc/passwd", "a/b.csv", ".hidden", "..", "a\\b"] {
            assert!(!is_plain_file_name(bad), "{bad}");
        }
    }
}
