//! How well a finished CapFilt run filtered, measured against noise that is known:
//! data from `glimpse data synth --noise P` marks every corrupted web caption in its
//! record (`corrupted`, `corruption`, `clean_caption`), so the filter's verdicts can be
//! counted per corruption kind (`glimpse eval --task capfilt`).
//!
//! - Per kind: corrupted web captions, and the share removed. Clean web captions: the
//!   share kept. The two goals of the BLIP recipe are "removed" high and "kept" high.
//! - At the run's own threshold, or any other, from the ITM probabilities the records
//!   store; a sweep over thresholds shows the trade-off.
//! - Evidence (for the report page): for each kind, removed and kept captions beside
//!   their image thumbnails with the clean caption they came from; the same for clean
//!   web captions and for the synthetic captions.
//!
//! Only completed shards (those with a marker) are read.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use glimpse_data::tar::TarReader;
use glimpse_eval::evidence::Thumbnail;
use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::layout::{OutputDir, Settings};
use crate::record::CapfiltRecord;

/// Examples kept per list of evidence.
pub const EXAMPLES: usize = 8;

/// Thresholds of the sweep: 0.05 to 0.95 in steps of 0.05.
pub fn sweep_thresholds() -> Vec<f64> {
    (1..20).map(|i| f64::from(i) / 20.0).collect()
}

/// Corrupted web captions of one kind.
#[derive(Debug, Clone, Default, Serialize)]
pub struct KindRow {
    pub kind: String,
    pub n: u64,
    pub removed: u64,
}

/// Texts seen and kept.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Kept {
    pub n: u64,
    pub kept: u64,
}

/// Removed corrupted and kept clean web captions at one threshold.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SweepPoint {
    pub threshold: f64,
    pub corrupted_removed: f64,
    pub clean_kept: f64,
}

/// One caption the filter judged, with its image.
#[derive(Debug, Clone, Serialize)]
pub struct Example {
    pub key: String,
    pub text: String,
    pub itm: Option<f64>,
    pub kept: bool,
    /// For a corrupted web caption, the clean caption it was made from.
    pub clean_caption: Option<String>,
    #[serde(skip)]
    pub thumbnail: Option<Thumbnail>,
}

/// Examples of one group (a corruption kind, clean web captions, synthetic captions),
/// split by verdict.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Group {
    pub name: String,
    pub removed: Vec<Example>,
    pub kept: Vec<Example>,
}

/// The filter quality of an output directory.
#[derive(Debug, Clone, Serialize)]
pub struct Quality {
    pub out: String,
    pub captioner: String,
    pub filter: String,
    pub threshold: f64,
    /// Samples read (with a web caption or not).
    pub samples: u64,
    /// Samples whose record has no noise marks (not from `glimpse data synth`),
    /// left out of every figure.
    pub unlabelled: u64,
    /// Corrupted web captions per kind, by name.
    pub kinds: Vec<KindRow>,
    pub corrupted: KindRow,
    pub clean: Kept,
    pub synthetic: Kept,
    pub sweep: Vec<SweepPoint>,
    /// Per group, when evidence was asked for: every corruption kind, then `clean`,
    /// then `synthetic`.
    pub evidence: Vec<Group>,
}

impl Quality {
    /// Share of corrupted web captions removed.
    pub fn corrupted_removed(&self) -> f64 {
        ratio(self.corrupted.removed, self.corrupted.n)
    }

    /// Share of clean web captions kept.
    pub fn clean_kept(&self) -> f64 {
        ratio(self.clean.kept, self.clean.n)
    }
}

pub fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 {
        f64::NAN
    } else {
        a as f64 / b as f64
    }
}

/// One web caption's label and score, as the sweep needs them.
struct WebScore {
    corrupted: bool,
    itm: f64,
}

/// What reading the records gathers.
#[derive(Default)]
struct Acc {
    samples: u64,
    unlabelled: u64,
    kinds: BTreeMap<String, KindRow>,
    clean: Kept,
    synthetic: Kept,
    web: Vec<WebScore>,
    groups: BTreeMap<String, Group>,
}

impl Acc {
    fn wants(&self, evidence: bool, group: &str, kept: bool) -> bool {
        evidence
            && self
                .groups
                .get(group)
                .is_none_or(|g| if kept { &g.kept } else { &g.removed }.len() < EXAMPLES)
    }

    fn add(&mut self, group: &str, ex: Example) {
        let g = self
            .groups
            .entry(group.to_string())
            .or_insert_with(|| Group {
                name: group.to_string(),
                ..Group::default()
            });
        let list = if ex.kept { &mut g.kept } else { &mut g.removed };
        if list.len() < EXAMPLES {
            list.push(ex);
        }
    }

    fn sweep(&self) -> Vec<SweepPoint> {
        sweep_thresholds()
            .into_iter()
            .map(|t| {
                let (mut corrupted, mut removed, mut clean, mut kept) = (0, 0, 0, 0);
                for s in &self.web {
                    if s.corrupted {
                        corrupted += 1;
                        removed += u64::from(s.itm < t);
                    } else {
                        clean += 1;
                        kept += u64::from(s.itm >= t);
                    }
                }
                SweepPoint {
                    threshold: t,
                    corrupted_removed: ratio(removed, corrupted),
                    clean_kept: ratio(kept, clean),
                }
            })
            .collect()
    }
}

/// A tar entry: its name and bytes.
type Entry = (String, Vec<u8>);

/// One sample of an output shard: its record and its image entry.
struct Sample<'a> {
    shard: &'a Path,
    key: &'a str,
    record: Value,
    image: Option<Entry>,
}

/// Reads the completed shards of `out` and measures the filter at `threshold` (the
/// run's own when `None`). With `evidence`, keeps up to [`EXAMPLES`] captions per
/// group and verdict, with thumbnails.
///
/// Samples whose record has no noise marks are counted in `unlabelled` and left out.
///
/// Errors: not a CapFilt output directory, no completed shard, no record with noise
/// marks (data not from `glimpse data synth`), a threshold outside [0, 1], a shard
/// that cannot be read.
pub fn measure(out: &Path, threshold: Option<f64>, evidence: bool) -> Result<Quality> {
    let settings_path = out.join("settings.json");
    let text = std::fs::read_to_string(&settings_path).map_err(|e| {
        Error::format(
            &settings_path,
            format!("not a `glimpse capfilt` output directory ({e})"),
        )
    })?;
    let settings: Settings = serde_json::from_str(&text)
        .map_err(|e| Error::format(&settings_path, format!("unreadable settings: {e}")))?;
    let threshold = threshold.unwrap_or(f64::from(settings.options.threshold));
    if !(0.0..=1.0).contains(&threshold) {
        return Err(Error::option(
            "--threshold",
            format!("{threshold} is not a probability in [0, 1]"),
        ));
    }
    let dir = OutputDir {
        root: out.to_path_buf(),
        settings,
    };
    let mut acc = Acc::default();
    let mut shards = 0;
    for shard in 0..dir.settings.inputs.len() {
        if dir.marker(shard)?.is_none() {
            continue;
        }
        shards += 1;
        let path = dir.shard_path(shard);
        let file = File::open(&path).map_err(Error::io(&path))?;
        let mut tar = TarReader::new(BufReader::new(file));
        // A sample's record and image are adjacent entries, in either order.
        let mut pending: BTreeMap<String, (Option<Value>, Option<Entry>)> = BTreeMap::new();
        while let Some((name, bytes)) = tar.next_entry().map_err(Error::io(&path))? {
            let Some((key, ext)) = name.rsplit_once('.') else {
                continue;
            };
            let slot = pending.entry(key.to_string()).or_default();
            if ext == "json" {
                let v: Value = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::format(&path, format!("{name}: {e}")))?;
                slot.0 = Some(v);
            } else {
                slot.1 = Some((name.clone(), bytes));
            }
            if let (Some(_), Some(_)) = slot {
                let (record, image) = pending.remove(key).expect("present");
                let record = record.expect("present");
                sample(
                    &mut acc,
                    Sample {
                        shard: &path,
                        key,
                        record,
                        image,
                    },
                    threshold,
                    evidence,
                )?;
            }
        }
        for (key, (record, image)) in pending {
            if let Some(record) = record {
                sample(
                    &mut acc,
                    Sample {
                        shard: &path,
                        key: &key,
                        record,
                        image,
                    },
                    threshold,
                    evidence,
                )?;
            }
        }
    }
    if shards == 0 {
        return Err(Error::format(
            out,
            "no completed shard (no marker under done/): run `glimpse capfilt` first",
        ));
    }
    if acc.web.is_empty() && acc.synthetic.n == 0 {
        return Err(Error::format(
            out,
            format!(
                "none of its {} samples carries noise marks (`corrupted` in the record): \
                 measure data made by `glimpse data synth --noise P`",
                acc.samples
            ),
        ));
    }
    let mut corrupted = KindRow {
        kind: "all kinds".into(),
        ..KindRow::default()
    };
    for row in acc.kinds.values() {
        corrupted.n += row.n;
        corrupted.removed += row.removed;
    }
    let sweep = acc.sweep();
    let kinds: Vec<KindRow> = std::mem::take(&mut acc.kinds).into_values().collect();
    let mut evidence_groups: Vec<Group> = kinds
        .iter()
        .filter_map(|k| acc.groups.remove(&k.kind))
        .collect();
    evidence_groups.extend(acc.groups.remove("clean"));
    evidence_groups.extend(acc.groups.remove("synthetic"));
    Ok(Quality {
        out: out.display().to_string(),
        captioner: dir.settings.captioner.clone(),
        filter: dir.settings.filter.clone(),
        threshold,
        samples: acc.samples,
        unlabelled: acc.unlabelled,
        kinds,
        corrupted,
        clean: acc.clean,
        synthetic: acc.synthetic,
        sweep,
        evidence: evidence_groups,
    })
}

fn sample(acc: &mut Acc, s: Sample<'_>, threshold: f64, evidence: bool) -> Result<()> {
    let bad = |msg: String| Error::format(s.shard, format!("{}: {msg}", s.key));
    let cf: CapfiltRecord = serde_json::from_value(s.record["capfilt"].clone())
        .map_err(|e| bad(format!("no readable `capfilt` field ({e})")))?;
    acc.samples += 1;
    let Some(corrupted) = s.record["corrupted"].as_bool() else {
        acc.unlabelled += 1;
        return Ok(());
    };
    let corruption = corrupted.then(|| {
        s.record["corruption"]
            .as_str()
            .unwrap_or("unnamed")
            .to_string()
    });
    let clean_caption = s.record["clean_caption"].as_str().map(String::from);
    // Decoded once per sample, and only when an example of it is kept.
    let mut thumb: Option<Option<Thumbnail>> = None;
    let mut thumbnail = || {
        thumb
            .get_or_insert_with(|| {
                s.image.as_ref().and_then(|(name, bytes)| {
                    glimpse_data::decode_image(bytes, name)
                        .ok()
                        .map(|img| Thumbnail::of(&img))
                })
            })
            .clone()
    };
    if let Some(itm) = cf.web.as_ref().and_then(|w| w.itm) {
        let kept = itm >= threshold;
        match &corruption {
            Some(kind) => {
                let row = acc.kinds.entry(kind.clone()).or_insert_with(|| KindRow {
                    kind: kind.clone(),
                    ..KindRow::default()
                });
                row.n += 1;
                row.removed += u64::from(!kept);
            }
            None => {
                acc.clean.n += 1;
                acc.clean.kept += u64::from(kept);
            }
        }
        acc.web.push(WebScore {
            corrupted: corruption.is_some(),
            itm,
        });
        let group = corruption.as_deref().unwrap_or("clean");
        if acc.wants(evidence, group, kept) {
            let ex = Example {
                key: s.key.to_string(),
                text: cf.web.as_ref().map(|w| w.text.clone()).unwrap_or_default(),
                itm: Some(itm),
                kept,
                clean_caption: corruption.as_ref().and(clean_caption.clone()),
                thumbnail: thumbnail(),
            };
            acc.add(group, ex);
        }
    }
    for syn in &cf.synthetic {
        let kept = syn.itm.is_some_and(|p| p >= threshold);
        acc.synthetic.n += 1;
        acc.synthetic.kept += u64::from(kept);
        if acc.wants(evidence, "synthetic", kept) {
            let ex = Example {
                key: s.key.to_string(),
                text: syn.text.clone(),
                itm: syn.itm,
                kept,
                clean_caption: None,
                thumbnail: thumbnail(),
            };
            acc.add("synthetic", ex);
        }
    }
    Ok(())
}
