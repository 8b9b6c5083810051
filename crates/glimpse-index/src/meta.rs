//! Per-shard metadata as Parquet, one row per embedded sample, in the order of the
//! shard's `.npy` rows: `key` (the sample's key), `image_path` (a file, or
//! `SHARD.tar#ENTRY` for a WebDataset sample) and `caption` (null when the sample has
//! none) — the columns clip-retrieval's `metadata/*.parquet` carry, readable by pandas,
//! pyarrow and Spark.
//!
//! Written with parquet's low-level column writer (no Arrow): three UTF-8 columns do
//! not need the Arrow stack, which would double this crate's build time.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use parquet::data_type::{ByteArray, ByteArrayType};
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{FileReader, SerializedFileReader};
use parquet::file::writer::SerializedFileWriter;
use parquet::record::Field;
use parquet::schema::parser::parse_message_type;

use crate::error::{Error, Result};

const SCHEMA: &str = "message glimpse_metadata {
    REQUIRED BYTE_ARRAY key (UTF8);
    REQUIRED BYTE_ARRAY image_path (UTF8);
    OPTIONAL BYTE_ARRAY caption (UTF8);
}";

/// One embedded sample.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub key: String,
    pub image_path: String,
    pub caption: Option<String>,
}

fn parquet_error(path: &Path) -> impl Fn(parquet::errors::ParquetError) -> Error + '_ {
    move |e| Error::Parquet {
        path: path.to_path_buf(),
        msg: e.to_string(),
    }
}

/// Writes `records` to `path` as one row group.
pub fn write_metadata(path: &Path, records: &[Record]) -> Result<()> {
    let perr = parquet_error(path);
    let schema = Arc::new(parse_message_type(SCHEMA).map_err(&perr)?);
    let props = Arc::new(WriterProperties::builder().build());
    let file = File::create(path).map_err(Error::io(path))?;
    let mut writer = SerializedFileWriter::new(file, schema, props).map_err(&perr)?;
    let mut group = writer.next_row_group().map_err(&perr)?;
    let bytes = |s: &str| ByteArray::from(s.as_bytes().to_vec());
    let columns: [(Vec<ByteArray>, Option<Vec<i16>>); 3] = [
        (records.iter().map(|r| bytes(&r.key)).collect(), None),
        (records.iter().map(|r| bytes(&r.image_path)).collect(), None),
        (
            records
                .iter()
                .filter_map(|r| r.caption.as_deref())
                .map(bytes)
                .collect(),
            Some(records.iter().map(|r| r.caption.is_some() as i16).collect()),
        ),
    ];
    for (values, def_levels) in &columns {
        let mut col = group
            .next_column()
            .map_err(&perr)?
            .ok_or_else(|| Error::format(path, "parquet writer ran out of columns"))?;
        col.typed::<ByteArrayType>()
            .write_batch(values, def_levels.as_deref(), None)
            .map_err(&perr)?;
        col.close().map_err(&perr)?;
    }
    group.close().map_err(&perr)?;
    writer.close().map_err(&perr)?;
    Ok(())
}

/// Reads a metadata file written by [`write_metadata`] (or any Parquet file with
/// string columns `key` and `image_path`, and optionally `caption`).
pub fn read_metadata(path: &Path) -> Result<Vec<Record>> {
    let perr = parquet_error(path);
    let file = File::open(path).map_err(Error::io(path))?;
    let reader = SerializedFileReader::new(file).map_err(&perr)?;
    let mut out = Vec::with_capacity(reader.metadata().file_metadata().num_rows() as usize);
    for row in reader.get_row_iter(None).map_err(&perr)? {
        let row = row.map_err(&perr)?;
        let (mut key, mut image_path, mut caption) = (None, None, None);
        for (name, field) in row.get_column_iter() {
            let value = match field {
                Field::Str(s) => Some(s.clone()),
                Field::Null => None,
                other => {
                    return Err(Error::format(
                        path,
                        format!("column {name}: expected a string, found {other}"),
                    ))
                }
            };
            match name.as_str() {
                "key" => key = value,
                "image_path" => image_path = value,
                "caption" => caption = value,
                _ => {}
            }
        }
        let missing = |c: &str| Error::format(path, format!("a row without `{c}`"));
        out.push(Record {
            key: key.ok_or_else(|| missing("key"))?,
            image_path: image_path.ok_or_else(|| missing("image_path"))?,
            caption,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_with_null_captions() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("metadata_0.parquet");
        let records = vec![
            Record {
                key: "000001".into(),
                image_path: "shards/a.tar#000001.png".into(),
                caption: Some("a red circle".into()),
            },
            Record {
                key: "x/y".into(),
                image_path: "/photos/y.jpg".into(),
                caption: None,
            },
            Record {
                key: "é".into(),
                image_path: "p".into(),
                caption: Some(String::new()),
            },
        ];
        write_metadata(&p, &records).unwrap();
        assert_eq!(read_metadata(&p).unwrap(), records);
        write_metadata(&p, &[]).unwrap();
        assert!(read_metadata(&p).unwrap().is_empty());
    }

    #[test]
    fn a_file_that_is_not_parquet_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.parquet");
        std::fs::write(&p, b"not parquet at all").unwrap();
        let e = read_metadata(&p).unwrap_err().to_string();
        assert!(e.contains("bad.parquet"), "{e}");
    }
}
