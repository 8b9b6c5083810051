//! `glimpse chat`: multi-turn chat about one image with a LLaVA model.
//!
//! Interactive by default (prompt `> ` on stdout, the reply streamed token by token,
//! `/quit` or end of input to stop). With `--turns FILE` (or `--json` and the turns on
//! stdin) it runs a scripted conversation: a JSON list of user messages, each a string
//! or `{"text": ...}`. The model's cache is kept between turns, so each turn only runs
//! its new tokens.

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use glimpse_generate::GenerationConfig;
use glimpse_models::checkpoint::{plan_load, ModelFiles};
use glimpse_models::llava::{ChatSession, LlavaForConditionalGeneration, LlavaProcessor};
use serde::Serialize;

use super::{device, read_image};
use crate::cli::{DecodeArgs, ModelArgs};
use crate::output::print_json;

#[derive(Debug, Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub common: ModelArgs,
    /// The image the conversation is about.
    #[arg(long, short = 'i')]
    pub image: PathBuf,
    /// A JSON list of user messages (strings or {"text": ...}); `-` reads stdin.
    /// With `--json` and no `--turns`, the list is read from stdin.
    #[arg(long)]
    pub turns: Option<PathBuf>,
    /// A system message placed before the first turn.
    #[arg(long)]
    pub system: Option<String>,
    #[command(flatten)]
    pub decode: DecodeArgs,
    /// Quantise the language model's weights after loading (`q8` or `q4`), for less
    /// memory and faster decoding at a small accuracy cost.
    #[arg(long, value_name = "q8|q4")]
    pub quantize: Option<glimpse_nn::quant::Quant>,
}

#[derive(Serialize)]
struct TurnOutput {
    user: String,
    answer: String,
    token_ids: Vec<u32>,
}

#[derive(Serialize)]
struct ChatOutput {
    turns: Vec<TurnOutput>,
}

pub fn run(args: ChatArgs) -> Result<()> {
    let gen = args.decode.generation_config()?;
    let scripted = match (&args.turns, args.common.json) {
        (Some(path), _) => Some(read_turns(path)?),
        (None, true) => Some(read_turns(Path::new("-"))?),
        (None, false) => None,
    };
    let image = read_image(&args.image)?;
    let device = device(&args.common.device)?;
    let Some(model_name) = &args.common.model else {
        anyhow::bail!("chat needs --model: a LLaVA checkpoint (there is no bundled chat model)");
    };
    let files = ModelFiles::resolve(model_name).with_context(|| format!("--model {model_name}"))?;
    // LLaVA's own load checks the memory plan; print it first, as every command does.
    eprintln!("{}", plan_load(&files, &device)?);
    let mut model = LlavaForConditionalGeneration::load(&files, &device)
        .with_context(|| format!("loading model `{model_name}` as LLaVA"))?;
    if let Some(quant) = args.quantize {
        eprintln!("{}", model.quantize_language_model(quant)?);
    }
    let processor = LlavaProcessor::load(&files, model.config())
        .with_context(|| format!("loading the processor of `{model_name}`"))?;
    let pixels = processor
        .image_processor
        .preprocess_batch(std::slice::from_ref(&image), &device)
        .with_context(|| format!("--image {}", args.image.display()))?;
    let gen = model.generation_config(&gen);
    let mut session = ChatSession::new(&model, &processor, &pixels)?;
    if let Some(system) = &args.system {
        session = session.with_system(system);
    }

    let Some(turns) = scripted else {
        return interactive(&mut session, &processor, &gen);
    };
    let mut out = Vec::with_capacity(turns.len());
    for text in &turns {
        let turn = if args.common.json {
            session.send(text, &gen)?
        } else {
            println!("> {text}");
            reply(&mut session, &processor, text, &gen)?
        };
        out.push(TurnOutput {
            user: turn.user,
            answer: turn.answer,
            token_ids: turn.token_ids,
        });
    }
    if args.common.json {
        print_json(&ChatOutput { turns: out })?;
    }
    Ok(())
}

/// Reads turns from stdin until `/quit` or end of input.
fn interactive(
    session: &mut ChatSession,
    processor: &LlavaProcessor,
    gen: &GenerationConfig,
) -> Result<()> {
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        print!("> ");
        std::io::stdout().flush()?;
        line.clear();
        if stdin.lock().read_line(&mut line).context("reading stdin")? == 0 {
            println!();
            return Ok(());
        }
        let text = line.trim();
        match text {
            "/quit" | "/exit" => return Ok(()),
            "" => continue,
            _ => {
                reply(session, processor, text, gen)?;
            }
        }
    }
}

/// One turn printed for people: streamed when decoding allows it (not with beams).
fn reply(
    session: &mut ChatSession,
    processor: &LlavaProcessor,
    text: &str,
    gen: &GenerationConfig,
) -> Result<glimpse_models::llava::ChatTurn> {
    if gen.num_beams > 1 {
        let turn = session.send(text, gen)?;
        println!("{}", turn.answer);
        return Ok(turn);
    }
    let eos = &gen.eos_token_ids;
    let mut ids = Vec::new();
    let mut shown = String::new();
    let turn = session.send_stream(text, gen, |id| {
        ids.push(id);
        // Print only text that is final: byte-fallback pieces (`<0xNN>`) decode as a
        // group once the next ordinary token arrives.
        let byte_piece = processor
            .tokenizer
            .inner()
            .id_to_token(id)
            .is_some_and(|t| t.starts_with("<0x"));
        if byte_piece {
            return true;
        }
        if let Ok(now) = processor.decode_reply(&ids, eos) {
            if !now.ends_with('\u{FFFD}') {
                show_growth(&mut shown, &now);
            }
        }
        true
    })?;
    show_growth(&mut shown, &turn.answer);
    println!();
    Ok(turn)
}

/// Prints the part of `now` beyond what is on screen, when `now` extends it.
fn show_growth(shown: &mut String, now: &str) {
    if let Some(rest) = now.strip_prefix(shown.as_str()) {
        if !rest.is_empty() {
            print!("{rest}");
            let _ = std::io::stdout().flush();
            *shown = now.to_string();
        }
    }
}

/// A JSON list of user messages: strings or objects with a `text` string.
fn read_turns(path: &Path) -> Result<Vec<String>> {
    let (name, text) = if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading turns from stdin")?;
        ("stdin".to_string(), s)
    } else {
        let s =
            std::fs::read_to_string(path).with_context(|| format!("--turns {}", path.display()))?;
        (path.display().to_string(), s)
    };
    let value: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("turns from {name}: invalid JSON"))?;
    let Some(items) = value.as_array() else {
        bail!("turns from {name}: expected a JSON list of messages");
    };
    if items.is_empty() {
        bail!("turns from {name}: the list is empty");
    }
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let text = match item {
                serde_json::Value::String(s) => Some(s.as_str()),
                serde_json::Value::Object(o) => o.get("text").and_then(|t| t.as_str()),
                _ => None,
            };
            match text {
                Some(t) if !t.trim().is_empty() => Ok(t.to_string()),
                Some(_) => bail!("turns from {name}: turn #{}: empty message", i + 1),
                None => bail!(
                    "turns from {name}: turn #{}: expected a string or {{\"text\": ...}}",
                    i + 1
                ),
            }
        })
        .collect()
}
