//! Whole-file writes that a reader (or a job killed half-way) never sees half done:
//! write a sibling temporary file, flush it, rename it over the target. Every crate
//! that writes markers, manifests, shards' JSON or pages uses this one helper.

use std::io::Write;
use std::path::{Path, PathBuf};

/// A sibling of `path` unique to this process (`.NAME.tmpPID`), for write-then-rename;
/// two processes writing the same target never share a temporary file.
pub fn tmp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp{}", std::process::id()))
}

/// Writes `bytes` to `path` through [`tmp_name`]; the error names the file that
/// failed (the temporary one or the target).
pub fn write(path: &Path, bytes: &[u8]) -> Result<(), (PathBuf, std::io::Error)> {
    let tmp = tmp_name(path);
    let written = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err((tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| (path.to_path_buf(), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_whole_files_and_names_the_failing_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.json");
        write(&path, b"{}\n").unwrap();
        write(&path, b"{\"b\": 1}\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"{\"b\": 1}\n");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left");
        let (failed, _) = write(&dir.path().join("missing/a.json"), b"x").unwrap_err();
        assert!(failed.ends_with(format!("missing/.a.json.tmp{}", std::process::id())));
    }
}
