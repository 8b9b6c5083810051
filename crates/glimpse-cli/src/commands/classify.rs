use anyhow::{bail, Result};
use serde::Serialize;

use super::{check_images, load_quantized, read_image};
use crate::cli::ClassifyArgs;
use crate::output::{outln, print_json};

#[derive(Serialize)]
struct ClassifyOutput {
    labels: Vec<String>,
    probs: Vec<f32>,
}

pub fn run(args: ClassifyArgs) -> Result<()> {
    let labels: Vec<String> = args.labels.iter().map(|l| l.trim().to_string()).collect();
    if let Some(i) = labels.iter().position(|l| l.is_empty()) {
        bail!("--labels: label #{} is empty", i + 1);
    }
    if !args.template.contains("{}") {
        bail!(
            "--template {:?} must contain `{{}}` where the label goes",
            args.template
        );
    }
    let image = read_image(&args.image)?;
    let pipeline = load_quantized(&args.common, super::Bundled::Clip, args.quantize)?;
    check_images(&pipeline, &[&args.image], std::slice::from_ref(&image))?;
    let refs: Vec<&str> = labels.iter().map(String::as_str).collect();
    let probs = pipeline.classify(&image, &refs, &args.template)?;
    super::check_finite(&args.common, super::Bundled::Clip, "probabilities", &probs)?;
    if args.common.json {
        return print_json(&ClassifyOutput { labels, probs });
    }
    let mut order: Vec<usize> = (0..labels.len()).collect();
    order.sort_by(|&a, &b| probs[b].total_cmp(&probs[a]));
    outln!("{}", args.image.display());
    for i in order {
        let bar = "#".repeat((probs[i] * 30.0).round() as usize);
        outln!("  {:>6.2}%  {:<30} {}", probs[i] * 100.0, bar, labels[i]);
    }
    Ok(())
}
