//! Output files that appear whole or not at all: the examples' writers open a temporary file beside the
//! target before solving (so an unwritable destination fails at once, not after a long solve), write it,
//! flush it to disk and rename it over the target. A failed write removes the temporary file and leaves
//! any previous output untouched.

use std::fs::File;
use std::io::BufWriter;
use std::path::{Path, PathBuf};

/// A file being written in place of `target`.
pub struct AtomicFile {
    target: PathBuf,
    temp: PathBuf,
    file: Option<File>,
}

impl AtomicFile {
    /// Creates the temporary file `.NAME.tmp-PID` in `target`'s directory. Errors: the directory does not
    /// exist or is not writable, or `target` names a directory.
    pub fn create(target: &Path) -> std::io::Result<Self> {
        if target.is_dir() {
            return Err(std::io::Error::other("the output path is a directory"));
        }
        let name = target
            .file_name()
            .ok_or_else(|| std::io::Error::other("the output path has no file name"))?;
        let dir = target.parent().filter(|d| !d.as_os_str().is_empty());
        let temp_name = format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id());
        let temp = match dir {
            Some(d) => d.join(temp_name),
            None => PathBuf::from(temp_name),
        };
        let file = File::create(&temp)?;
        Ok(Self {
            target: target.to_path_buf(),
            temp,
            file: Some(file),
        })
    }

    /// Writes the content with `write` (given a buffered writer on the temporary file), syncs it and
    /// renames it over the target. On any error the temporary file is removed.
    pub fn commit<E: From<std::io::Error>>(
        mut self,
        write: impl FnOnce(BufWriter<File>) -> Result<File, E>,
    ) -> Result<(), E> {
        let file = self.file.take().expect("an AtomicFile is committed once");
        let file = write(BufWriter::new(file))?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&self.temp, &self.target)?;
        Ok(())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        // Not committed, or the commit failed before the rename: the temporary file goes.
        if self.temp.exists() {
            let _ = std::fs::remove_file(&self.temp);
        }
    }
}
