//! Property tests on the tar reader behind WebDataset shards
//! (`glimpse_data::tar::TarReader`): arbitrary bytes, archives cut anywhere, and
//! headers with a valid checksum but any size, type and name give entries or an error,
//! never a panic, and never an allocation larger than the input.

use std::io::Cursor;

use glimpse_data::tar::{TarReader, TarWriter};
use proptest::prelude::*;

/// Reads every entry; returns how many were read before the end or an error.
fn drain(bytes: &[u8]) -> usize {
    let mut r = TarReader::new(Cursor::new(bytes));
    let mut n = 0;
    // An archive of N bytes holds at most N / 512 headers.
    for _ in 0..=bytes.len() / 512 {
        match r.next_entry() {
            Ok(Some((_, data))) => {
                assert!(
                    data.len() <= bytes.len(),
                    "an entry larger than the archive"
                );
                n += 1;
            }
            Ok(None) | Err(_) => return n,
        }
    }
    panic!("more entries than the archive has headers");
}

fn archive(entries: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut w = TarWriter::new(Vec::new());
    for (name, data) in entries {
        w.append(name, data).unwrap();
    }
    w.finish().unwrap()
}

/// A header with the given raw size field, type flag and name, its checksum correct.
fn header(size_field: &[u8; 12], kind: u8, name: &[u8]) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    h[100..108].copy_from_slice(b"0000644\0");
    h[124..136].copy_from_slice(size_field);
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[148..156].fill(b' ');
    let sum: u32 = h.iter().map(|&b| b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

fn entries() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    prop::collection::vec(
        (
            "[a-z0-9]{1,12}\\.(png|json|txt)",
            prop::collection::vec(any::<u8>(), 0..1500),
        ),
        0..5,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        drain(&bytes);
    }

    #[test]
    fn archives_round_trip_and_survive_cuts(entries in entries(), cut in any::<prop::sample::Index>()) {
        let bytes = archive(&entries);
        prop_assert_eq!(drain(&bytes), entries.len());
        drain(&bytes[..cut.index(bytes.len() + 1)]);
    }

    #[test]
    fn archives_with_flipped_bytes(
        entries in entries(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut bytes = archive(&entries);
        for (at, b) in flips {
            let i = at.index(bytes.len());
            bytes[i] ^= b;
        }
        drain(&bytes);
    }

    #[test]
    fn headers_with_any_size_type_and_name(
        size_digits in prop::collection::vec(prop::sample::select(b"01234567 \0x".to_vec()), 12),
        kind in any::<u8>(),
        name in prop::collection::vec(any::<u8>(), 0..120),
        body in prop::collection::vec(any::<u8>(), 0..1024),
    ) {
        let field: [u8; 12] = size_digits.try_into().unwrap();
        let mut bytes = header(&field, kind, &name).to_vec();
        bytes.extend_from_slice(&body);
        drain(&bytes);
    }
}

/// A 512-byte header whose size field claims 68 GB (twelve octal digits, no NUL) must
/// be an error, not an attempt to allocate the claimed size.
#[test]
fn tar_size_beyond_the_archive_is_an_error_not_an_allocation() {
    let bytes = header(b"777777777777", b'0', b"000000.png").to_vec();
    let mut r = TarReader::new(Cursor::new(&bytes));
    assert!(r.next_entry().is_err());
}
