//! `glimpse chat`: multi-turn chat about one image with a model that chats (LLaVA).
//!
//! Interactive by default (prompt `> ` on stdout, the reply streamed token by token,
//! `/quit` or end of input to stop). With `--turns FILE` (or `--json` and the turns on
//! stdin) it runs a scripted conversation: a JSON list of user messages, each a string
//! or `{"text": ...}`. The model's cache is kept between turns, so each turn only runs
//! its new tokens.

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use glimpse_data::text::StreamDecoder;
use glimpse_data::TextTokenizer;
use glimpse_generate::GenerationConfig;
use glimpse_models::capability::{ChatTurn, Conversation};
use serde::Serialize;

use super::{check_images, load_quantized, read_image, Bundled};
use crate::cli::{DecodeArgs, ModelArgs};
use crate::output::{self, outln, print_json};

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
    if args.common.model.is_none() {
        bail!("chat needs --model: a LLaVA checkpoint (there is no bundled chat model)");
    }
    // With --model given, the bundled default is never used.
    let pipeline = load_quantized(&args.common, Bundled::Caption, args.quantize)?;
    check_images(&pipeline, &[&args.image], std::slice::from_ref(&image))?;
    let pixels = pipeline
        .pixel_values(std::slice::from_ref(&image))
        .with_context(|| format!("--image {}", args.image.display()))?;
    let gen = args.decode.explicit(pipeline.generation_config(gen));
    let mut session = pipeline.start_chat(&pixels, args.system.as_deref())?;
    let tokenizer = pipeline.tokenizer();

    let Some(turns) = scripted else {
        return interactive(session.as_mut(), tokenizer, &gen);
    };
    let mut out = Vec::with_capacity(turns.len());
    for text in &turns {
        let turn = if args.common.json {
            session.send(text, &gen)?
        } else {
            outln!("> {text}");
            reply(session.as_mut(), tokenizer, text, &gen)?
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
    session: &mut dyn Conversation,
    tokenizer: &TextTokenizer,
    gen: &GenerationConfig,
) -> Result<()> {
    let stdin = std::io::stdin();
    let mut line = String::new();
    loop {
        output::text("> ")?;
        line.clear();
        if stdin.lock().read_line(&mut line).context("reading stdin")? == 0 {
            return output::line("");
        }
        let text = line.trim();
        match text {
            "/quit" | "/exit" => return Ok(()),
            "" => continue,
            _ => {
                reply(session, tokenizer, text, gen)?;
            }
        }
    }
}

/// One turn printed for people: streamed when decoding allows it (not with beams).
fn reply(
    session: &mut dyn Conversation,
    tokenizer: &TextTokenizer,
    text: &str,
    gen: &GenerationConfig,
) -> Result<ChatTurn> {
    if gen.num_beams > 1 {
        let turn = session.send(text, gen)?;
        outln!("{}", turn.answer);
        return Ok(turn);
    }
    let mut decoder = StreamDecoder::new(tokenizer, &gen.eos_token_ids);
    // A closed stdout stops the generation; its error is returned after the turn.
    let mut written = Ok(());
    let turn = session.send_stream(text, gen, &mut |id| {
        // A failed partial decode shows nothing yet; the full reply below decides.
        if let Ok(piece) = decoder.push(id) {
            written = show(&piece);
        }
        written.is_ok()
    })?;
    written?;
    show(&decoder.finish()?)?;
    output::line("")?;
    Ok(turn)
}

fn show(piece: &str) -> Result<()> {
    if piece.is_empty() {
        return Ok(());
    }
    output::text(piece)
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
