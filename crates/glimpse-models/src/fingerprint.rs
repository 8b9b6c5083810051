//! The id a model's outputs are recorded under (an index's vectors, a server's
//! embeddings): the model's name and a fingerprint of its config and weights, so that
//! the same files give the same id wherever they lie and other weights do not.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use crate::checkpoint::ModelFiles;
use crate::{Error, Result};

/// FNV-1a, 64 bit: a fingerprint, not a security measure.
fn fnv(hash: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *hash ^= *b as u64;
        *hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
}

/// `NAME@FINGERPRINT`: the config, and each weight file's size, first and last MiB.
pub fn model_id(model: &str) -> Result<String> {
    let files = ModelFiles::resolve(model)?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| Error::Io { path, source }
    };
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    let config = std::fs::read(&files.config).map_err(io(&files.config))?;
    fnv(&mut hash, &config);
    const MIB: u64 = 1 << 20;
    for w in &files.weights {
        let mut f = File::open(w).map_err(io(w))?;
        let len = f.metadata().map_err(io(w))?.len();
        fnv(&mut hash, &len.to_le_bytes());
        let mut buf = Vec::new();
        f.by_ref().take(MIB).read_to_end(&mut buf).map_err(io(w))?;
        if len > 2 * MIB {
            f.seek(SeekFrom::Start(len - MIB)).map_err(io(w))?;
            f.take(MIB).read_to_end(&mut buf).map_err(io(w))?;
        }
        fnv(&mut hash, &buf);
    }
    let name = Path::new(model.trim_end_matches('/'))
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| model.to_string());
    Ok(format!("{name}@{hash:016x}"))
}
