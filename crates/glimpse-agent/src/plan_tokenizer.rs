//! The planner's tokenizer: lossless, so that the pieces of a plan concatenate to
//! exactly its JSON text.
//!
//! Why not the `lm` recipe's WordPiece vocabulary: it lower-cases, splits punctuation
//! and decodes with spaces between words, so `{"id":0,...}` would come back as
//! `{ " id " : 0 , ...}` and JSON strings could not be told apart from the spaces the
//! decoder invents. Rebuilding the plan from pieces inside the grammar decoder would
//! tie the grammar to one tokenizer's quirks. Instead the planner uses a Unigram model
//! with no normaliser and no pre-tokeniser whose pieces are the canonical plan's
//! structural fragments (`{"tasks":[`, `,"task":"`, `","dep":[`, ...), the task names,
//! every corpus word with and without its leading space, and every printable ASCII
//! character: every piece is a literal substring, all pieces score the same, so the
//! Viterbi segmentation is a fewest-pieces cover of the text and decoding is plain
//! concatenation (the `Fuse` decoder). Any ASCII text tokenizes; the grammar decoder
//! checks each piece's characters against the plan grammar.
//!
//! Written as `tokenizer.json` (the `tokenizers` crate's format, so the training
//! recipe, `transformers` and [`glimpse_data::TextTokenizer`] all read it),
//! `tokenizer_config.json` and `special_tokens_map.json`. `[CLS]` starts a sequence,
//! `[SEP]` ends it, `[PAD]` pads.

use std::collections::BTreeSet;
use std::path::Path;

use tokenizers::decoders::fuse::Fuse;
use tokenizers::models::unigram::Unigram;
use tokenizers::{AddedToken, Tokenizer};

use crate::tasks::Catalog;
use crate::{Error, Result};

/// Special tokens, ids 0..4.
pub const SPECIALS: [&str; 4] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"];

/// Fragments of the canonical plan text (see [`crate::Plan::to_json`]).
const STRUCTURE: [&str; 27] = [
    "{\"tasks\":[",
    "{\"id\":",
    ",\"task\":\"",
    "\",\"dep\":[",
    "\",\"dep\":[-1],\"args\":{",
    "],\"args\":{",
    "\"image\":\"<image>-",
    "\"image\":\"<resource>-",
    ",\"text\":\"",
    "\"text\":\"",
    "\"text\":\"<resource>-",
    ",\"question\":\"",
    ",\"labels\":[\"",
    "\"<resource>-",
    "<resource>-",
    "<image>-",
    "\",\"",
    "\"]",
    "\"}}",
    "\"}},",
    "\"}}]}",
    "\"]}}",
    "\"]}}]}",
    "}},",
    "}}]}",
    "-1",
    "\"",
];

/// The vocabulary: specials, structure, task names, the words of `texts` (bare and
/// after a space), and printable ASCII characters; each once, in that order.
pub fn pieces<'a>(texts: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut out: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    let push = |s: String, out: &mut Vec<String>| {
        if !s.is_empty() && !out.contains(&s) {
            out.push(s);
        }
    };
    for s in STRUCTURE {
        push(s.to_string(), &mut out);
    }
    for name in Catalog::builtin().names() {
        push(name.to_string(), &mut out);
    }
    let mut words = BTreeSet::new();
    for t in texts {
        for w in t.split(|c: char| !c.is_ascii_alphanumeric()) {
            if !w.is_empty() {
                words.insert(w.to_string());
            }
        }
    }
    let mut set: BTreeSet<String> = out.iter().cloned().collect();
    for w in &words {
        for p in [w.clone(), format!(" {w}")] {
            if set.insert(p.clone()) {
                out.push(p);
            }
        }
    }
    for b in 32u8..127 {
        let c = (b as char).to_string();
        if set.insert(c.clone()) {
            out.push(c);
        }
    }
    out
}

/// The tokenizer over `pieces` (ids in order).
pub fn build(pieces: &[String]) -> Result<Tokenizer> {
    let err =
        |e: Box<dyn std::error::Error + Send + Sync>| Error::Io(format!("plan tokenizer: {e}"));
    let vocab: Vec<(String, f64)> = pieces.iter().map(|p| (p.clone(), -1.0)).collect();
    let model = Unigram::from(vocab, Some(1), false).map_err(err)?;
    let mut tok = Tokenizer::new(model);
    tok.with_decoder(Some(Fuse::new()));
    let specials: Vec<AddedToken> = SPECIALS
        .iter()
        .map(|s| AddedToken::from(*s, true))
        .collect();
    tok.add_special_tokens(specials).map_err(err)?;
    Ok(tok)
}

/// Writes the tokenizer files for the words of `texts` into `dir`.
pub fn write<'a>(dir: &Path, texts: impl IntoIterator<Item = &'a str>) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::Io(format!("{}: {e}", dir.display())))?;
    let tok = build(&pieces(texts))?;
    let path = dir.join("tokenizer.json");
    let json = tok
        .to_string(true)
        .map_err(|e| Error::Io(format!("{}: {e}", path.display())))?;
    let put = |name: &str, text: String| -> Result<()> {
        let p = dir.join(name);
        glimpse_data::atomic::write(&p, text.as_bytes())
            .map_err(|(p, e)| Error::Io(format!("{}: {e}", p.display())))
    };
    put("tokenizer.json", json)?;
    let cfg = serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": 256,
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "bos_token": "[CLS]",
        "eos_token": "[SEP]",
        "clean_up_tokenization_spaces": false,
    });
    put(
        "tokenizer_config.json",
        serde_json::to_string_pretty(&cfg).expect("json") + "\n",
    )?;
    let special = serde_json::json!({
        "pad_token": "[PAD]", "unk_token": "[UNK]", "bos_token": "[CLS]", "eos_token": "[SEP]",
    });
    put(
        "special_tokens_map.json",
        serde_json::to_string_pretty(&special).expect("json") + "\n",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_text_round_trips_exactly() {
        let plan = r#"{"tasks":[{"id":0,"task":"text-to-image-retrieval","dep":[-1],"args":{"text":"a red circle"}},{"id":1,"task":"image-to-text","dep":[0],"args":{"image":"<resource>-0"}}]}"#;
        let prompt = "images: 0. request: find a picture of a red circle and describe it. plan: ";
        let tok = build(&pieces([plan, prompt])).unwrap();
        for text in [plan, prompt, "Unseen Words, {weird} \"text\"~"] {
            let enc = tok.encode(text, false).unwrap();
            assert!(!enc.get_ids().contains(&1), "unknown piece in {text:?}");
            let joined: String = enc.get_tokens().concat();
            assert_eq!(joined, text);
            assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), text);
        }
        // Structure pieces keep the plan short.
        let n = tok.encode(plan, false).unwrap().len();
        assert!(n < 30, "{n} pieces");
    }
}
