//! The collection to embed, cut into shards: WebDataset tar shards and JSONL files
//! (read by glimpse-data, one shard each), or a folder of image files (sorted, cut into
//! shards of `shard_size` files; a `NAME.txt` next to `NAME.jpg` is its caption).

use std::fs;
use std::path::{Path, PathBuf};

use glimpse_data::dataset::{read_source, resolve_sources, Source};

use crate::error::{Error, Result};

const IMAGE_EXTS: [&str; 8] = ["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"];

/// Where one shard's samples come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardSource {
    /// A WebDataset shard, a JSONL or a COCO file.
    Dataset(Source),
    /// Image files of a folder (the folder, for keys relative to it).
    Files { root: PathBuf, files: Vec<PathBuf> },
}

/// One shard of the collection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub index: usize,
    pub source: ShardSource,
}

impl Shard {
    /// A stable name for the marker and messages.
    pub fn name(&self) -> String {
        match &self.source {
            ShardSource::Dataset(s) => s.to_string(),
            ShardSource::Files { root, files } => format!(
                "{} files {}..{}",
                root.display(),
                files.first().map(|f| rel(root, f)).unwrap_or_default(),
                files.last().map(|f| rel(root, f)).unwrap_or_default()
            ),
        }
    }
}

fn rel(root: &Path, f: &Path) -> String {
    f.strip_prefix(root).unwrap_or(f).display().to_string()
}

/// A sample before decoding.
#[derive(Debug, Clone)]
pub struct RawItem {
    pub key: String,
    pub image_path: String,
    pub caption: Option<String>,
    pub bytes: Vec<u8>,
}

fn is_image(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

fn walk_images(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).map_err(Error::io(dir))? {
        let entry = entry.map_err(Error::io(dir))?;
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let kind = entry.file_type().map_err(Error::io(&path))?;
        if kind.is_dir() {
            walk_images(&path, out)?;
        } else if is_image(&path) {
            out.push(path);
        }
    }
    Ok(())
}

/// The shards of `spec`: a folder of WebDataset shards or JSONL files, a glob, a single
/// `.tar`/`.jsonl` (see glimpse-data's `resolve_sources`), or a folder of images.
pub fn resolve_shards(spec: &str, shard_size: usize) -> Result<Vec<Shard>> {
    if shard_size == 0 {
        return Err(Error::Invalid("shard size must be at least 1".into()));
    }
    let dataset = resolve_sources(spec);
    let path = Path::new(spec.trim());
    let sources = match dataset {
        Ok(s) => s.into_iter().map(ShardSource::Dataset).collect::<Vec<_>>(),
        Err(e) if path.is_dir() => {
            let mut files = Vec::new();
            walk_images(path, &mut files)?;
            if files.is_empty() {
                return Err(Error::format(
                    path,
                    format!("no image files ({}) and {e}", IMAGE_EXTS.join(", ")),
                ));
            }
            files.sort();
            files
                .chunks(shard_size)
                .map(|c| ShardSource::Files {
                    root: path.to_path_buf(),
                    files: c.to_vec(),
                })
                .collect()
        }
        Err(e) => return Err(e.into()),
    };
    Ok(sources
        .into_iter()
        .enumerate()
        .map(|(index, source)| Shard { index, source })
        .collect())
}

/// Every sample of `shard` in order: `Err` holds the message of a sample that cannot
/// be used (listed in the shard's marker).
pub fn read_shard(
    shard: &Shard,
) -> Result<Box<dyn Iterator<Item = std::result::Result<RawItem, String>> + Send>> {
    match &shard.source {
        ShardSource::Dataset(source) => {
            let is_tar = matches!(source, Source::Shard(_));
            let name = source.to_string();
            Ok(Box::new(read_source(source)?.map(move |s| {
                let s = s?;
                let caption = s
                    .meta
                    .get("caption")
                    .and_then(|c| c.as_str())
                    .map(str::to_string);
                let image_path = if is_tar {
                    format!("{name}#{}", s.image_name)
                } else {
                    s.image_name.clone()
                };
                Ok(RawItem {
                    key: s.key,
                    image_path,
                    caption,
                    bytes: s.image_bytes,
                })
            })))
        }
        ShardSource::Files { root, files } => {
            let root = root.clone();
            Ok(Box::new(files.clone().into_iter().map(move |f| {
                let key = rel(&root, &f.with_extension(""));
                let bytes = fs::read(&f)
                    .map_err(|e| format!("{}: sample {key}: cannot read: {e}", f.display()))?;
                let caption = fs::read_to_string(f.with_extension("txt"))
                    .ok()
                    .map(|t| t.trim().to_string());
                Ok(RawItem {
                    key,
                    image_path: f.display().to_string(),
                    caption,
                    bytes,
                })
            })))
        }
    }
}

/// The bytes of the image at `image_path` as [`RawItem::image_path`] writes it: a file,
/// or `SHARD.tar#ENTRY` (the shard is scanned for the entry).
pub fn read_image_bytes(image_path: &str) -> Result<Vec<u8>> {
    if let Some((shard, entry)) = image_path.rsplit_once(".tar#") {
        let shard = PathBuf::from(format!("{shard}.tar"));
        let file = fs::File::open(&shard).map_err(Error::io(&shard))?;
        let mut tar = glimpse_data::tar::TarReader::new(std::io::BufReader::new(file));
        while let Some((name, data)) = tar.next_entry().map_err(Error::io(&shard))? {
            if name == entry {
                return Ok(data);
            }
        }
        return Err(Error::format(&shard, format!("no entry {entry:?}")));
    }
    fs::read(image_path).map_err(Error::io(image_path))
}
