//! The per-shard job: read a shard's samples, caption them in batches, score every
//! web and synthetic text with the filter, and write the bootstrapped shard and its
//! marker.
//!
//! A sample whose image does not decode, whose record is malformed or whose key
//! repeats is skipped and named in the marker; a model that fails stops the shard
//! (its temporary file is removed, no marker is written) so that a retry redoes it.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::time::Instant;

use glimpse_data::dataset::{read_source, resolve_sources, RawSample, Source};
use glimpse_data::tar::TarWriter;
use image::RgbImage;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::layout::{Counts, OutputDir, Settings, ShardReport, Skipped, FORMAT};
use crate::models::{Captioner, Filter};
use crate::options::CapfiltOptions;
use crate::record::{entry_key, image_ext, judge, texts_to_score};

/// One input shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputShard {
    pub index: usize,
    pub source: Source,
}

/// The input shards of a data argument (a folder or glob of WebDataset shards, a
/// JSONL file, a COCO captions file; see glimpse-data's `resolve_sources`).
pub fn resolve_inputs(spec: &str) -> Result<Vec<InputShard>> {
    Ok(resolve_sources(spec)?
        .into_iter()
        .enumerate()
        .map(|(index, source)| InputShard { index, source })
        .collect())
}

/// The settings a run over `inputs` records in its output directory.
pub fn settings(
    captioner: &dyn Captioner,
    filter: &dyn Filter,
    opts: &CapfiltOptions,
    inputs: &[InputShard],
) -> Settings {
    Settings {
        format: FORMAT.into(),
        captioner: captioner.id().to_string(),
        filter: filter.id().to_string(),
        options: opts.clone(),
        inputs: inputs.iter().map(|s| s.source.to_string()).collect(),
    }
}

/// What [`run_shard`] did.
#[derive(Debug, Clone)]
pub struct ShardOutcome {
    pub report: ShardReport,
    /// The shard was complete already; nothing was done.
    pub already_done: bool,
    /// Temporary files of killed attempts that were removed.
    pub removed_temporaries: usize,
}

/// A sample ready for the models.
struct Ready {
    entry: String,
    ext: &'static str,
    bytes: Vec<u8>,
    image: RgbImage,
    meta: serde_json::Map<String, Value>,
    web: Option<String>,
}

/// Totals of a shard in progress.
#[derive(Default)]
struct Tally {
    samples: u64,
    web: Counts,
    web_missing: u64,
    synthetic: Counts,
}

/// FNV-1a of the key, mixed with the seed (SplitMix64's finaliser): a batch's
/// sampling seed depends only on the run's seed and the data.
fn batch_seed(seed: u64, first_key: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in first_key.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut z = h ^ seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `SOURCE: sample KEY: REASON` (glimpse-data's skip messages) as a [`Skipped`].
fn skipped_from_message(shard: usize, source: &str, message: String) -> Skipped {
    let key_and_reason = message
        .strip_prefix(source)
        .and_then(|rest| rest.strip_prefix(": sample "))
        .and_then(|rest| rest.split_once(": "));
    match key_and_reason {
        Some((key, reason)) => Skipped {
            shard,
            key: Some(key.to_string()),
            reason: reason.to_string(),
        },
        None => Skipped {
            shard,
            key: None,
            reason: message,
        },
    }
}

/// Checks a raw sample: the image decodes and both models can take it, the record is
/// an object whose `caption` (the web text) is a string or absent, the key fits a tar
/// entry and is new.
fn prepare(
    sample: RawSample,
    seen: &mut HashSet<String>,
    captioner: &dyn Captioner,
    filter: &dyn Filter,
) -> std::result::Result<Ready, (String, String)> {
    let key = sample.key;
    let fail = |reason: String| (key.clone(), reason);
    let Some(entry) = entry_key(&key) else {
        return Err(fail("the key is empty or too long for a tar entry".into()));
    };
    if !seen.insert(entry.clone()) {
        return Err(fail(format!(
            "duplicate key (entry {entry:?} is already in this shard)"
        )));
    }
    let image = glimpse_data::decode_image(&sample.image_bytes, &sample.image_name)
        .map_err(|e| fail(format!("corrupt image: {e}")))?;
    for (role, check) in [
        ("captioner", captioner.check_image(&image)),
        ("filter", filter.check_image(&image)),
    ] {
        check.map_err(|why| fail(format!("the {role} cannot take this image: {why}")))?;
    }
    let Value::Object(meta) = sample.meta else {
        return Err(fail("malformed record: not a JSON object".into()));
    };
    let web = match meta.get("caption") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.trim().to_string()).filter(|s| !s.is_empty()),
        Some(other) => {
            return Err(fail(format!(
                "malformed record: `caption` is not a string but {other}"
            )))
        }
    };
    Ok(Ready {
        entry,
        ext: image_ext(&sample.image_name),
        bytes: sample.image_bytes,
        image,
        meta,
        web,
    })
}

/// Captions and filters one batch, then appends its samples to the shard.
fn process_batch<W: Write>(
    batch: &mut Vec<Ready>,
    captioner: &dyn Captioner,
    filter: &dyn Filter,
    opts: &CapfiltOptions,
    tar: &mut TarWriter<W>,
    tally: &mut Tally,
    path: &std::path::Path,
) -> Result<()> {
    if batch.is_empty() {
        return Ok(());
    }
    let images: Vec<RgbImage> = batch.iter().map(|r| r.image.clone()).collect();
    let seed = batch_seed(opts.seed, &batch[0].entry);
    let captions = captioner.caption(&images, opts, seed)?;
    if captions.len() != batch.len() {
        return Err(Error::Model {
            role: crate::error::Role::Captioner,
            model: captioner.id().to_string(),
            msg: format!(
                "returned captions for {} images, {} were given",
                captions.len(),
                batch.len()
            ),
        });
    }
    for (mut sample, synthetic) in batch.drain(..).zip(captions) {
        let texts = texts_to_score(sample.web.as_deref(), &synthetic);
        let itm = if texts.is_empty() {
            Vec::new()
        } else {
            filter.itm(&sample.image, &texts)?
        };
        let record = judge(sample.web.as_deref(), &synthetic, &itm, opts.threshold);
        match &record.web {
            Some(w) => tally.web.add(w.kept),
            None => tally.web_missing += 1,
        }
        for s in &record.synthetic {
            tally.synthetic.add(s.kept);
        }
        tally.samples += 1;
        sample.meta.insert(
            "capfilt".into(),
            serde_json::to_value(&record).expect("plain structs serialise"),
        );
        let json = serde_json::to_vec(&sample.meta).expect("JSON values serialise");
        let io = Error::io(path);
        tar.append(&format!("{}.{}", sample.entry, sample.ext), &sample.bytes)
            .map_err(io)?;
        tar.append(&format!("{}.json", sample.entry), &json)
            .map_err(Error::io(path))?;
    }
    Ok(())
}

/// Bootstraps `shard` into `out` unless its marker exists; `progress` is called with
/// the number of samples read since the last call.
pub fn run_shard(
    out: &OutputDir,
    shard: &InputShard,
    captioner: &dyn Captioner,
    filter: &dyn Filter,
    opts: &CapfiltOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<ShardOutcome> {
    let source_name = shard.source.to_string();
    if let Some(report) = out.marker(shard.index)? {
        if report.source != source_name {
            return Err(Error::format(
                out.marker_path(shard.index),
                format!(
                    "shard {} was made from {:?}, not {:?}; use another --out",
                    shard.index, report.source, source_name
                ),
            ));
        }
        return Ok(ShardOutcome {
            report,
            already_done: true,
            removed_temporaries: 0,
        });
    }
    opts.validate()?;
    let stale = out.stale_temporaries(shard.index)?;
    for p in &stale {
        fs::remove_file(p).map_err(Error::io(p))?;
    }
    let start = Instant::now();
    let tmp = out.shard_tmp_path(shard.index);
    let result = write_shard(shard, &tmp, captioner, filter, opts, progress);
    let (tally, skipped) = match result {
        Ok(r) => r,
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
    };
    let report = ShardReport {
        shard: shard.index,
        source: source_name,
        output: out
            .shard_path(shard.index)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        samples: tally.samples,
        web: tally.web,
        web_missing: tally.web_missing,
        synthetic: tally.synthetic,
        skipped,
        seconds: start.elapsed().as_secs_f64(),
    };
    out.commit_shard(&tmp, &report)?;
    Ok(ShardOutcome {
        report,
        already_done: false,
        removed_temporaries: stale.len(),
    })
}

fn write_shard(
    shard: &InputShard,
    tmp: &std::path::Path,
    captioner: &dyn Captioner,
    filter: &dyn Filter,
    opts: &CapfiltOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<(Tally, Vec<Skipped>)> {
    let source_name = shard.source.to_string();
    let file = File::create(tmp).map_err(Error::io(tmp))?;
    let mut tar = TarWriter::new(BufWriter::new(file));
    let mut tally = Tally::default();
    let mut skipped = Vec::new();
    let mut seen = HashSet::new();
    let mut batch = Vec::with_capacity(opts.batch_size);
    for item in read_source(&shard.source)? {
        progress(1);
        match item.map(|s| prepare(s, &mut seen, captioner, filter)) {
            Ok(Ok(ready)) => batch.push(ready),
            Ok(Err((key, reason))) => skipped.push(Skipped {
                shard: shard.index,
                key: Some(key),
                reason,
            }),
            Err(message) => skipped.push(skipped_from_message(shard.index, &source_name, message)),
        }
        if batch.len() == opts.batch_size {
            process_batch(
                &mut batch, captioner, filter, opts, &mut tar, &mut tally, tmp,
            )?;
        }
    }
    process_batch(
        &mut batch, captioner, filter, opts, &mut tar, &mut tally, tmp,
    )?;
    let writer = tar.finish().map_err(Error::io(tmp))?;
    let file = writer
        .into_inner()
        .map_err(|e| Error::io(tmp)(e.into_error()))?;
    file.sync_all().map_err(Error::io(tmp))?;
    Ok((tally, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_messages_split_into_key_and_reason() {
        let s = skipped_from_message(
            2,
            "d/shard-000001.tar",
            "d/shard-000001.tar: sample 000007: malformed .json entry: EOF".into(),
        );
        assert_eq!(s.key.as_deref(), Some("000007"));
        assert_eq!(s.reason, "malformed .json entry: EOF");
        let lost = skipped_from_message(0, "a.tar", "a.tar: the shard is truncated".into());
        assert_eq!(lost.key, None);
        assert_eq!(lost.reason, "a.tar: the shard is truncated");
    }

    #[test]
    fn batch_seeds_depend_on_seed_and_key_only() {
        assert_eq!(batch_seed(0, "000001"), batch_seed(0, "000001"));
        assert_ne!(batch_seed(0, "000001"), batch_seed(1, "000001"));
        assert_ne!(batch_seed(0, "000001"), batch_seed(0, "000002"));
    }
}
