//! Float32 matrices as NumPy `.npy` files (format version 1.0, read also 2.0), the
//! form clip-retrieval writes its `img_emb/*.npy` and `text_emb/*.npy` in, so numpy,
//! faiss and autofaiss read our shards as they are.
//!
//! The header is a Python dict literal, padded with spaces so that the data starts at a
//! multiple of 64 bytes; the writer emits exactly what `numpy.save` would.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use crate::error::{Error, Result};

const MAGIC: &[u8; 6] = b"\x93NUMPY";

/// A row-major `rows x dim` float32 matrix.
#[derive(Debug, Clone, PartialEq)]
pub struct Matrix {
    pub rows: usize,
    pub dim: usize,
    pub data: Vec<f32>,
}

impl Matrix {
    pub fn new(dim: usize) -> Self {
        Matrix {
            rows: 0,
            dim,
            data: Vec::new(),
        }
    }

    pub fn row(&self, i: usize) -> &[f32] {
        &self.data[i * self.dim..(i + 1) * self.dim]
    }

    pub fn push(&mut self, row: &[f32]) {
        assert_eq!(
            row.len(),
            self.dim,
            "row length must equal the matrix dimension"
        );
        self.data.extend_from_slice(row);
        self.rows += 1;
    }
}

/// The v1.0 header bytes for a little-endian float32 C-order matrix.
fn header(rows: usize, dim: usize) -> Vec<u8> {
    let dict = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {dim}), }}");
    // magic (6) + version (2) + header length (2) + dict + padding + '\n'
    let unpadded = 10 + dict.len() + 1;
    let pad = (64 - unpadded % 64) % 64;
    let mut h = Vec::with_capacity(unpadded + pad);
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&[1, 0]);
    h.extend_from_slice(&((dict.len() + pad + 1) as u16).to_le_bytes());
    h.extend_from_slice(dict.as_bytes());
    h.extend(std::iter::repeat_n(b' ', pad));
    h.push(b'\n');
    h
}

/// Writes `m` to `path` (replacing it).
pub fn write_npy(path: &Path, m: &Matrix) -> Result<()> {
    debug_assert_eq!(m.data.len(), m.rows * m.dim);
    let file = File::create(path).map_err(Error::io(path))?;
    let mut w = BufWriter::new(file);
    let io = |e| Error::Io {
        path: path.to_path_buf(),
        source: e,
    };
    w.write_all(&header(m.rows, m.dim)).map_err(io)?;
    for v in &m.data {
        w.write_all(&v.to_le_bytes()).map_err(io)?;
    }
    w.flush().map_err(io)?;
    Ok(())
}

/// Reads a 2-D little-endian float32 C-order `.npy` file.
pub fn read_npy(path: &Path) -> Result<Matrix> {
    let bad = |msg: &str| Error::Npy {
        path: path.to_path_buf(),
        msg: msg.to_string(),
    };
    let file = File::open(path).map_err(Error::io(path))?;
    let len = file.metadata().map_err(Error::io(path))?.len();
    let mut r = BufReader::new(file);
    let mut pre = [0u8; 8];
    r.read_exact(&mut pre)
        .map_err(|_| bad("too short for a header"))?;
    if &pre[..6] != MAGIC {
        return Err(bad("no \\x93NUMPY magic"));
    }
    let header_len = match pre[6] {
        1 => {
            let mut b = [0u8; 2];
            r.read_exact(&mut b).map_err(|_| bad("truncated header"))?;
            u16::from_le_bytes(b) as usize
        }
        2 | 3 => {
            let mut b = [0u8; 4];
            r.read_exact(&mut b).map_err(|_| bad("truncated header"))?;
            u32::from_le_bytes(b) as usize
        }
        v => return Err(bad(&format!("format version {v} is unknown"))),
    };
    let prefix = if pre[6] == 1 { 10 } else { 12 };
    let mut dict = vec![0u8; header_len];
    r.read_exact(&mut dict)
        .map_err(|_| bad("truncated header"))?;
    let dict = String::from_utf8_lossy(&dict);
    let field = |name: &str| -> Option<String> {
        let at = dict.find(&format!("'{name}'"))? + name.len() + 2;
        let rest = dict[at..].trim_start().strip_prefix(':')?.trim_start();
        let end = if rest.starts_with('(') {
            rest.find(')')? + 1
        } else {
            rest.find([',', '}'])?
        };
        Some(rest[..end].trim().to_string())
    };
    let descr = field("descr").ok_or_else(|| bad("no 'descr' in the header"))?;
    if descr != "'<f4'" {
        return Err(bad(&format!("dtype {descr}, expected '<f4' (float32)")));
    }
    if field("fortran_order").as_deref() != Some("False") {
        return Err(bad("Fortran order is not supported"));
    }
    let shape = field("shape").ok_or_else(|| bad("no 'shape' in the header"))?;
    let dims: Vec<usize> = shape
        .trim_matches(|c| c == '(' || c == ')')
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| bad(&format!("bad shape {shape}")))
        })
        .collect::<Result<_>>()?;
    let [rows, dim] = dims[..] else {
        return Err(bad(&format!("shape {shape} is not 2-D")));
    };
    let expected = (prefix + header_len) as u64 + (rows * dim * 4) as u64;
    if len != expected {
        return Err(bad(&format!(
            "{len} bytes, but a {rows}x{dim} float32 matrix needs {expected}"
        )));
    }
    let mut bytes = vec![0u8; rows * dim * 4];
    r.read_exact(&mut bytes).map_err(Error::io(path))?;
    let data = bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Ok(Matrix { rows, dim, data })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_64_byte_aligned_and_round_trips() {
        for (rows, dim) in [(0, 512), (3, 4), (1_000_000, 768)] {
            let h = header(rows, dim);
            assert_eq!(h.len() % 64, 0, "{rows}x{dim}");
            assert_eq!(*h.last().unwrap(), b'\n');
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.npy");
        let m = Matrix {
            rows: 3,
            dim: 2,
            data: vec![1.0, -2.5, 0.0, 3.25, f32::MIN_POSITIVE, 7.0],
        };
        write_npy(&p, &m).unwrap();
        assert_eq!(read_npy(&p).unwrap(), m);
        // Exactly the bytes numpy.save writes for np.array(..., dtype='<f4').
        let bytes = std::fs::read(&p).unwrap();
        assert_eq!(&bytes[..10], b"\x93NUMPY\x01\x00\x76\x00");
        assert!(bytes[10..128]
            .starts_with(b"{'descr': '<f4', 'fortran_order': False, 'shape': (3, 2), }"));
    }

    #[test]
    fn refuses_other_dtypes_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("m.npy");
        let mut m = Matrix::new(4);
        m.push(&[1.0, 2.0, 3.0, 4.0]);
        write_npy(&p, &m).unwrap();
        let mut bytes = std::fs::read(&p).unwrap();
        bytes.pop();
        std::fs::write(&p, &bytes).unwrap();
        let e = read_npy(&p).unwrap_err().to_string();
        assert!(e.contains("bytes, but a 1x4"), "{e}");
        let at = bytes.windows(3).position(|w| w == b"<f4").unwrap();
        bytes[at + 2] = b'8';
        std::fs::write(&p, &bytes).unwrap();
        assert!(read_npy(&p).unwrap_err().to_string().contains("'<f8'"));
    }
}
