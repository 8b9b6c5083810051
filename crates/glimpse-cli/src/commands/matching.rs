use anyhow::Result;
use serde::Serialize;

use super::{check_images, check_texts, load_quantized, read_image};
use crate::cli::MatchArgs;
use crate::output::{outln, print_json};

#[derive(Serialize)]
struct MatchOutput {
    itc: Vec<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    itm: Option<Vec<f32>>,
}

pub fn run(args: MatchArgs) -> Result<()> {
    check_texts(&args.texts, "--text")?;
    let image = read_image(&args.image)?;
    let pipeline = load_quantized(&args.common, super::Bundled::Retrieval, args.quantize)?;
    check_images(&pipeline, &[&args.image], std::slice::from_ref(&image))?;
    let texts: Vec<&str> = args.texts.iter().map(String::as_str).collect();
    let scores = pipeline.match_scores(&image, &texts)?;
    super::check_finite(
        &args.common,
        super::Bundled::Retrieval,
        "scores",
        scores.itc.iter().chain(scores.itm.iter().flatten()),
    )?;
    if args.common.json {
        return print_json(&MatchOutput {
            itc: scores.itc,
            itm: scores.itm,
        });
    }
    outln!("{}", args.image.display());
    for (i, text) in args.texts.iter().enumerate() {
        match &scores.itm {
            Some(itm) => outln!("  itc {:+.4}  itm {:.4}  {text}", scores.itc[i], itm[i]),
            None => outln!("  itc {:+.4}  {text}", scores.itc[i]),
        }
    }
    Ok(())
}
