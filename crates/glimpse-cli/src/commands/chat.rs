//! `glimpse chat` (being written).

use anyhow::Result;
use clap::Args;

#[derive(Debug, Args)]
pub struct ChatArgs {}

pub fn run(_args: ChatArgs) -> Result<()> {
    anyhow::bail!("not yet")
}
