//! Where the loop's examples come from: image datasets through `glimpse-data`'s
//! [`Loader`], or a JSONL text corpus ([`TextCorpus`]) for language models. Both give
//! epochs that depend only on `(seed, epoch)` and resume at a position.

use glimpse_data::dataset::{
    resolve_sources, EpochIter, Example, Loader, LoaderConfig, LoaderStats,
};

use crate::corpus::{TextCorpus, TextEpoch};
use crate::recipe::{ModelKind, Recipe};
use crate::Result;

use super::skips;

/// The training or validation data of a run.
pub(super) enum Data {
    Images(Loader),
    Text {
        corpus: TextCorpus,
        seed: u64,
        shuffle: bool,
    },
}

impl Data {
    /// `spec` read as the recipe's kind needs it; `shuffle` for training.
    pub fn open(recipe: &Recipe, spec: &str, shuffle: bool) -> Result<Self> {
        let seed = recipe.model.seed;
        if recipe.model.kind == ModelKind::Lm {
            return Ok(Data::Text {
                corpus: TextCorpus::open(std::path::Path::new(spec))?,
                seed,
                shuffle,
            });
        }
        let cfg = LoaderConfig {
            shuffle_buffer: if shuffle {
                recipe.data.shuffle_buffer
            } else {
                0
            },
            workers: recipe.data.workers,
            seed,
            shuffle_sources: shuffle,
            prefetch: if shuffle { 256 } else { 64 },
        };
        Ok(Data::Images(Loader::new(resolve_sources(spec)?, cfg)))
    }

    /// Samples in one epoch.
    pub fn count(&self) -> Result<u64> {
        match self {
            Data::Images(l) => Ok(l.count()?),
            Data::Text { corpus, .. } => Ok(corpus.len() as u64),
        }
    }

    pub fn epoch(&self, epoch: u64, position: u64) -> Epoch<'_> {
        match self {
            Data::Images(l) => Epoch::Images(Box::new(
                l.epoch(epoch, position)
                    .max_consecutive_skips(skips::MAX_CONSECUTIVE),
            )),
            Data::Text {
                corpus,
                seed,
                shuffle,
            } => Epoch::Text(corpus.epoch(*seed, epoch, position, *shuffle)),
        }
    }
}

/// One epoch of [`Data`].
pub(super) enum Epoch<'a> {
    Images(Box<EpochIter>),
    Text(TextEpoch<'a>),
}

impl Epoch<'_> {
    pub fn position(&self) -> u64 {
        match self {
            Epoch::Images(it) => EpochIter::position(it),
            Epoch::Text(it) => it.position(),
        }
    }

    pub fn stats(&self) -> LoaderStats {
        match self {
            Epoch::Images(it) => it.stats(),
            Epoch::Text(it) => it.stats(),
        }
    }

    pub fn recent_skips(&self) -> Vec<String> {
        match self {
            Epoch::Images(it) => it.recent_skips(),
            Epoch::Text(_) => Vec::new(),
        }
    }
}

impl Iterator for Epoch<'_> {
    type Item = glimpse_data::Result<Example>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            Epoch::Images(it) => it.next(),
            Epoch::Text(it) => it.next(),
        }
    }
}
