//! Unusable training samples: counted for the report, and bounded, so data with
//! nothing usable stops the run naming what failed instead of spinning over epochs
//! that never fill an update.

use std::collections::VecDeque;

use glimpse_data::dataset::LoaderStats;

use crate::Error;

/// Unusable samples in a row that stop a run; the loader applies the same bound to
/// the samples it cannot decode.
pub(super) const MAX_CONSECUTIVE: u64 = 1000;
/// Reasons kept for the report.
const KEPT: usize = 20;
/// Latest reasons an error quotes.
const RECENT: usize = 3;

#[derive(Default)]
pub(super) struct Skips {
    pub total: u64,
    pub reasons: Vec<String>,
    recent: VecDeque<String>,
    /// Samples the objective refused since the last usable one.
    consecutive: u64,
    usable_in_epoch: u64,
}

impl Skips {
    /// A sample the objective cannot train on; an error once too many in a row were.
    pub fn refused(&mut self, why: String) -> Result<(), Error> {
        self.total += 1;
        self.consecutive += 1;
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(why.clone());
        if self.reasons.len() < KEPT {
            self.reasons.push(why);
        }
        if self.consecutive >= MAX_CONSECUTIVE {
            return Err(Error::Train(format!(
                "{} training samples in a row could not be used; the last: {}",
                self.consecutive,
                self.recent_text(&[])
            )));
        }
        Ok(())
    }

    pub fn usable(&mut self) {
        self.consecutive = 0;
        self.usable_in_epoch += 1;
    }

    /// Adds the loader's counts at the end of an epoch.
    pub fn end_epoch(&mut self, stats: LoaderStats) {
        self.total += stats.skipped_corrupt;
        let room = KEPT.saturating_sub(self.reasons.len());
        self.reasons
            .extend(stats.skipped_reasons.into_iter().take(room));
        self.usable_in_epoch = 0;
    }

    /// The error for a whole epoch that did not fill one update: every later epoch
    /// would read the same samples and fail the same way.
    pub fn no_update(
        &self,
        data: &str,
        epoch: u64,
        positions: u64,
        per_update: u64,
        loader_recent: &[String],
    ) -> Error {
        Error::Train(format!(
            "epoch {epoch} of {data} gave no update: {} of its {positions} samples are usable \
             and an update takes {per_update}; the last skipped: {}",
            self.usable_in_epoch,
            self.recent_text(loader_recent)
        ))
    }

    fn recent_text(&self, loader_recent: &[String]) -> String {
        let all: Vec<&str> = loader_recent
            .iter()
            .chain(&self.recent)
            .map(String::as_str)
            .collect();
        if all.is_empty() {
            return "none".into();
        }
        all.join("; ")
    }
}
