//! A minimal, deterministic ustar writer and a reader for plain tar files (regular
//! files only), enough for WebDataset shards. Headers carry fixed metadata (mode
//! 0644, owner 0, mtime 0) so the same entries give the same bytes.

use std::io::{self, Read, Write};

const BLOCK: usize = 512;

/// Largest entry the reader accepts. A header's size field is untrusted: it is checked
/// against this before reading, and the entry's buffer grows only as bytes arrive.
pub const MAX_ENTRY_BYTES: u64 = 1 << 30;

fn octal(field: &mut [u8], value: u64) {
    // Width-1 octal digits, zero padded, then NUL.
    let width = field.len() - 1;
    let s = format!("{value:0width$o}");
    field[..width].copy_from_slice(s.as_bytes());
    field[width] = 0;
}

/// Writes tar entries to `W`.
pub struct TarWriter<W: Write> {
    out: W,
}

impl<W: Write> TarWriter<W> {
    pub fn new(out: W) -> Self {
        TarWriter { out }
    }

    /// Appends a regular file. `name` must be at most 100 bytes.
    pub fn append(&mut self, name: &str, data: &[u8]) -> io::Result<()> {
        if name.len() > 100 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("tar entry name longer than 100 bytes: {name}"),
            ));
        }
        let mut h = [0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut h[100..108], 0o644);
        octal(&mut h[108..116], 0);
        octal(&mut h[116..124], 0);
        octal(&mut h[124..136], data.len() as u64);
        octal(&mut h[136..148], 0);
        h[148..156].fill(b' ');
        h[156] = b'0';
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        let s = format!("{sum:06o}\0 ");
        h[148..156].copy_from_slice(s.as_bytes());
        self.out.write_all(&h)?;
        self.out.write_all(data)?;
        let pad = (BLOCK - data.len() % BLOCK) % BLOCK;
        self.out.write_all(&[0u8; BLOCK][..pad])
    }

    /// Writes the end-of-archive marker and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.write_all(&[0u8; 2 * BLOCK])?;
        self.out.flush()?;
        Ok(self.out)
    }
}

fn parse_octal(field: &[u8]) -> Option<u64> {
    let s: Vec<u8> = field
        .iter()
        .copied()
        .take_while(|&b| b != 0)
        .filter(|&b| b != b' ')
        .collect();
    if s.is_empty() {
        return Some(0);
    }
    u64::from_str_radix(std::str::from_utf8(&s).ok()?, 8).ok()
}

/// Reads the regular-file entries of a tar stream one by one.
pub struct TarReader<R: Read> {
    input: R,
    done: bool,
}

impl<R: Read> TarReader<R> {
    pub fn new(input: R) -> Self {
        TarReader { input, done: false }
    }

    /// The input, positioned after the last block read (after the first
    /// end-of-archive block once [`Self::next_entry`] has returned `None`).
    pub fn into_inner(self) -> R {
        self.input
    }

    /// The next regular file as `(name, bytes)`, or `None` at the end of the archive.
    pub fn next_entry(&mut self) -> io::Result<Option<(String, Vec<u8>)>> {
        let bad = |m: &str| io::Error::new(io::ErrorKind::InvalidData, m.to_string());
        while !self.done {
            let mut h = [0u8; BLOCK];
            match self.input.read_exact(&mut h) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(bad("truncated tar: missing end-of-archive marker"))
                }
                Err(e) => return Err(e),
            }
            if h.iter().all(|&b| b == 0) {
                self.done = true;
                break;
            }
            let stored =
                parse_octal(&h[148..156]).ok_or_else(|| bad("bad tar header checksum field"))?;
            let sum: u64 = h[..148]
                .iter()
                .chain(&[b' '; 8])
                .chain(&h[156..])
                .map(|&b| b as u64)
                .sum();
            if stored != sum {
                return Err(bad("tar header checksum mismatch"));
            }
            let size = parse_octal(&h[124..136]).ok_or_else(|| bad("bad tar size field"))?;
            let field = |r: std::ops::Range<usize>| {
                let f = &h[r];
                let end = f.iter().position(|&b| b == 0).unwrap_or(f.len());
                String::from_utf8_lossy(&f[..end]).into_owned()
            };
            let mut name = field(0..100);
            if &h[257..262] == b"ustar" {
                let prefix = field(345..500);
                if !prefix.is_empty() {
                    name = format!("{prefix}/{name}");
                }
            }
            if size > MAX_ENTRY_BYTES {
                return Err(bad(&format!(
                    "tar entry {name:?} claims {size} bytes, more than the {MAX_ENTRY_BYTES} \
                     an entry may hold"
                )));
            }
            // Grows with the bytes actually read, so a lying size costs no more memory
            // than the archive holds.
            let mut data = Vec::with_capacity(size.min(1 << 16) as usize);
            (&mut self.input).take(size).read_to_end(&mut data)?;
            if (data.len() as u64) < size {
                return Err(bad(&format!(
                    "truncated tar: entry {name:?} claims {size} bytes but the archive ends \
                     after {}",
                    data.len()
                )));
            }
            let pad = (BLOCK - size as usize % BLOCK) % BLOCK;
            let mut skip = [0u8; BLOCK];
            self.input.read_exact(&mut skip[..pad]).map_err(|e| {
                if e.kind() == io::ErrorKind::UnexpectedEof {
                    bad(&format!(
                        "truncated tar: the archive ends inside the padding of entry {name:?}"
                    ))
                } else {
                    e
                }
            })?;
            if h[156] != b'0' && h[156] != 0 {
                continue; // directories, links, extended headers
            }
            return Ok(Some((name, data)));
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tar_format_is_standard() {
        let mut w = TarWriter::new(Vec::new());
        w.append("000001.json", b"{}").unwrap();
        w.append("000001.png", &[1u8; 600]).unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len(), 512 + 512 + 512 + 1024 + 1024);
        assert_eq!(&bytes[257..263], b"ustar\0");
        let mut r = TarReader::new(bytes.as_slice());
        assert_eq!(
            r.next_entry().unwrap().unwrap(),
            ("000001.json".into(), b"{}".to_vec())
        );
        assert_eq!(r.next_entry().unwrap().unwrap().1, vec![1u8; 600]);
        assert!(r.next_entry().unwrap().is_none());
    }

    /// A size under the cap but past the end of the data is a truncation naming the
    /// entry, read into a buffer no larger than what the archive holds.
    #[test]
    fn tar_entry_cut_short_names_the_entry() {
        let mut w = TarWriter::new(Vec::new());
        w.append("000007.png", &[5u8; 3000]).unwrap();
        let bytes = w.finish().unwrap();
        let mut r = TarReader::new(&bytes[..512 + 100]);
        let err = r.next_entry().unwrap_err().to_string();
        assert!(
            err.contains("000007.png") && err.contains("3000") && err.contains("after 100"),
            "{err}"
        );
    }
}
