use anyhow::{bail, Result};
use glimpse_generate::GenerationConfig;
use serde::Serialize;

use super::{check_batch_size, load, read_image, read_images};
use crate::cli::{AskArgs, CaptionArgs, DecodeArgs};
use crate::output::{print_json, progress};

#[derive(Serialize)]
struct CaptionOutput {
    captions: Vec<String>,
    token_ids: Vec<Vec<u32>>,
}

#[derive(Serialize)]
struct AskOutput {
    answer: String,
    token_ids: Vec<u32>,
}

/// Validates decoding flags into a generation config (model ids are filled in later).
fn generation_config(args: &DecodeArgs) -> Result<GenerationConfig> {
    if args.max_new_tokens == 0 {
        bail!("--max-new-tokens must be at least 1");
    }
    if args.min_new_tokens > args.max_new_tokens {
        bail!(
            "--min-new-tokens ({}) exceeds --max-new-tokens ({})",
            args.min_new_tokens,
            args.max_new_tokens
        );
    }
    if args.beams == 0 {
        bail!("--beams must be at least 1");
    }
    let sample = args.top_p.is_some() || args.top_k.is_some() || args.temperature.is_some();
    let cfg = GenerationConfig {
        max_new_tokens: args.max_new_tokens,
        min_new_tokens: args.min_new_tokens,
        num_beams: args.beams,
        length_penalty: args.length_penalty as f32,
        do_sample: sample,
        temperature: args.temperature.unwrap_or(1.0) as f32,
        top_k: args.top_k.unwrap_or(0),
        top_p: args.top_p.unwrap_or(1.0) as f32,
        repetition_penalty: args.repetition_penalty as f32,
        seed: args.seed,
        ..GenerationConfig::default()
    };
    cfg.validate()?;
    Ok(cfg)
}

pub fn run_caption(args: CaptionArgs) -> Result<()> {
    let gen = generation_config(&args.decode)?;
    check_batch_size(args.batch_size)?;
    let pipeline = load(&args.common)?;
    let gen = pipeline.generation_config(gen);

    let bar = progress(args.images.len(), args.batch_size, "captioning");
    let (mut captions, mut token_ids) = (Vec::new(), Vec::new());
    for chunk in args.images.chunks(args.batch_size) {
        let images = read_images(chunk)?;
        for (path, out) in
            chunk
                .iter()
                .zip(pipeline.caption(&images, args.prompt.as_deref(), &gen)?)
        {
            if !args.common.json {
                bar.suspend(|| println!("{}: {}", path.display(), out.text));
            }
            captions.push(out.text);
            token_ids.push(out.token_ids);
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    if args.common.json {
        print_json(&CaptionOutput {
            captions,
            token_ids,
        })?;
    }
    Ok(())
}

pub fn run_ask(args: AskArgs) -> Result<()> {
    if args.question.trim().is_empty() {
        bail!("--question: empty text");
    }
    let gen = generation_config(&args.decode)?;
    let image = read_image(&args.image)?;
    let pipeline = load(&args.common)?;
    let gen = pipeline.generation_config(gen);
    let out = pipeline.ask(&image, &args.question, &gen)?;
    if args.common.json {
        return print_json(&AskOutput {
            answer: out.text,
            token_ids: out.token_ids,
        });
    }
    println!("{}", out.text);
    Ok(())
}
