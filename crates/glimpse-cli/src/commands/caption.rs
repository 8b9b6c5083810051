use anyhow::{bail, Result};
use serde::Serialize;

use super::{check_batch_size, check_images, load_quantized, read_image, read_images};
use crate::cli::{AskArgs, CaptionArgs};
use crate::output::{self, print_json, progress};

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

pub fn run_caption(args: CaptionArgs) -> Result<()> {
    let gen = args.decode.generation_config()?;
    check_batch_size(args.batch_size)?;
    let pipeline = load_quantized(&args.common, super::Bundled::Caption, args.quantize)?;
    let gen = args.decode.explicit(pipeline.generation_config(gen));

    let bar = progress(args.images.len(), args.batch_size, "captioning");
    let (mut captions, mut token_ids) = (Vec::new(), Vec::new());
    for chunk in args.images.chunks(args.batch_size) {
        let images = read_images(chunk)?;
        check_images(&pipeline, chunk, &images)?;
        for (path, out) in
            chunk
                .iter()
                .zip(pipeline.caption(&images, args.prompt.as_deref(), &gen)?)
        {
            if !args.common.json {
                bar.suspend(|| output::line(format_args!("{}: {}", path.display(), out.text)))?;
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
    let gen = args.decode.generation_config()?;
    let image = read_image(&args.image)?;
    let pipeline = load_quantized(&args.common, super::Bundled::Vqa, args.quantize)?;
    check_images(&pipeline, &[&args.image], std::slice::from_ref(&image))?;
    let gen = args.decode.explicit(pipeline.generation_config(gen));
    let out = pipeline.ask(&image, &args.question, &gen)?;
    if args.common.json {
        return print_json(&AskOutput {
            answer: out.text,
            token_ids: out.token_ids,
        });
    }
    output::line(&out.text)
}
