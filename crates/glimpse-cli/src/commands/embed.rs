use anyhow::{bail, Result};
use serde::Serialize;

use super::{check_batch_size, check_images, check_texts, load_quantized, read_images};
use crate::cli::EmbedArgs;
use crate::output::{outln, preview, print_json, progress};

#[derive(Serialize)]
struct EmbedOutput {
    image_embeds: Vec<Vec<f32>>,
    text_embeds: Vec<Vec<f32>>,
}

pub fn run(args: EmbedArgs) -> Result<()> {
    if args.images.is_empty() && args.texts.is_empty() {
        bail!("nothing to embed: give at least one --image or --text");
    }
    check_texts(&args.texts, "--text")?;
    check_batch_size(args.batch_size)?;
    let pipeline = load_quantized(&args.common, super::Bundled::Clip, args.quantize)?;

    let bar = progress(args.images.len(), args.batch_size, "embedding images");
    let mut image_embeds = Vec::with_capacity(args.images.len());
    for chunk in args.images.chunks(args.batch_size) {
        let images = read_images(chunk)?;
        check_images(&pipeline, chunk, &images)?;
        let embeds = pipeline.image_embeds(&images)?.to_vec2::<f32>()?;
        image_embeds.extend(embeds);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();

    let mut text_embeds = Vec::with_capacity(args.texts.len());
    for chunk in args.texts.chunks(64) {
        let texts: Vec<&str> = chunk.iter().map(String::as_str).collect();
        text_embeds.extend(pipeline.text_embeds(&texts)?.to_vec2::<f32>()?);
    }
    super::check_finite(
        &args.common,
        super::Bundled::Clip,
        "embeddings",
        image_embeds.iter().chain(&text_embeds).flatten(),
    )?;

    if args.common.json {
        return print_json(&EmbedOutput {
            image_embeds,
            text_embeds,
        });
    }
    for (path, v) in args.images.iter().zip(&image_embeds) {
        outln!("image {}: {}", path.display(), preview(v));
    }
    for (text, v) in args.texts.iter().zip(&text_embeds) {
        outln!("text {text:?}: {}", preview(v));
    }
    Ok(())
}
