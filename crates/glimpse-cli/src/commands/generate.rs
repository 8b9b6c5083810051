//! `glimpse generate`: continue text with a text-only causal language model
//! (`OPTForCausalLM`, `LlamaForCausalLM`, e.g. an `lm` run's export), greedy or beam
//! search; `--logits` adds the logits of every prompt position (for checking an
//! export against the reference).

use anyhow::{bail, Context, Result};
use clap::Args;
use glimpse_generate::GenerationConfig;
use glimpse_models::causal_lm::CausalLm;
use glimpse_models::checkpoint::ModelFiles;
use serde::Serialize;

use crate::output::{self, outln};

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// The model directory (or hub id) of an OPTForCausalLM or LlamaForCausalLM.
    #[arg(long, short = 'm')]
    pub model: String,
    /// Text to continue; the model's bos token goes first.
    #[arg(long, short = 'p', conflicts_with = "ids")]
    pub prompt: Option<String>,
    /// Token ids to continue instead of a prompt, comma-separated, used as they are.
    #[arg(long, value_delimiter = ',')]
    pub ids: Option<Vec<u32>>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Beam search with this many beams (1: greedy).
    #[arg(long, default_value_t = 1)]
    pub num_beams: usize,
    /// Include the logits of every prompt position in the JSON output.
    #[arg(long, requires = "json")]
    pub logits: bool,
    /// Device: `cpu`, or `cuda` / `cuda:N` in builds with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct Generated {
    model: String,
    class: &'static str,
    prompt_ids: Vec<u32>,
    ids: Vec<u32>,
    text: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    logits: Option<Vec<Vec<f32>>>,
}

pub fn run(a: GenerateArgs) -> Result<()> {
    if a.max_new_tokens == 0 {
        bail!("--max-new-tokens must be at least 1");
    }
    if a.num_beams == 0 {
        bail!("--num-beams must be at least 1");
    }
    if a.prompt.is_none() && a.ids.as_ref().is_none_or(|i| i.is_empty()) {
        bail!("give --prompt TEXT or --ids 1,2,3");
    }
    let device = super::device(&a.device)?;
    let context = || format!("loading model `{}`", a.model);
    let files = ModelFiles::resolve(&a.model).with_context(context)?;
    let lm = CausalLm::load(&files, &device).with_context(context)?;
    let prompt_ids = match (&a.prompt, &a.ids) {
        (Some(p), _) => lm.encode_prompt(p)?,
        (None, Some(ids)) => ids.clone(),
        (None, None) => unreachable!("checked above"),
    };
    let vocab = lm.tokenizer.vocab_size() as u32;
    if let Some(bad) = prompt_ids.iter().find(|&&i| i >= vocab) {
        bail!("--ids: token id {bad} is outside the vocabulary of {vocab}");
    }
    let cfg = GenerationConfig {
        max_new_tokens: a.max_new_tokens,
        num_beams: a.num_beams,
        ..GenerationConfig::default()
    };
    let ids = lm.generate(&prompt_ids, &cfg)?;
    let text = lm.tokenizer.decode(&ids, true)?;
    let logits = match a.logits {
        true => Some(lm.logits(&prompt_ids)?.to_vec2::<f32>()?),
        false => None,
    };
    if a.json {
        return output::print_json(&Generated {
            model: a.model,
            class: lm.class,
            prompt_ids,
            ids,
            text,
            logits,
        });
    }
    outln!("{text}");
    Ok(())
}
