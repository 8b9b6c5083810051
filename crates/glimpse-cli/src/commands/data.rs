//! `glimpse data` (being written).

use anyhow::Result;
use clap::Args;

#[derive(Debug, Args)]
pub struct DataArgs {}

pub fn run(_args: DataArgs) -> Result<()> {
    anyhow::bail!("not yet")
}
