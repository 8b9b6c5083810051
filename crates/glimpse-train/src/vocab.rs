//! Tokenizer files for models trained from scratch: a BERT-style WordPiece vocabulary
//! (lower-cased, punctuation split) holding every word of a corpus plus single
//! characters and `##` continuations, so any lower-case text still tokenizes. Written
//! as `tokenizer.json` (built with the `tokenizers` crate, so the reference reads it),
//! `tokenizer_config.json`, `special_tokens_map.json` and `vocab.txt`.

use std::collections::BTreeSet;
use std::path::Path;

use glimpse_synth::{sample, SynthConfig};
use tokenizers::decoders::wordpiece::WordPiece as WordPieceDecoder;
use tokenizers::models::wordpiece::WordPiece;
use tokenizers::normalizers::bert::BertNormalizer;
use tokenizers::pre_tokenizers::bert::BertPreTokenizer;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, Tokenizer};

use crate::{Error, Result};

/// Special tokens, in id order: `[PAD]` 0, `[UNK]` 1, `[CLS]` 2, `[SEP]` 3, `[MASK]` 4,
/// `[DEC]` 5 (BLIP's decoder start), `[ENC]` 6.
pub const SPECIALS: [&str; 7] = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", "[ENC]",
];
pub const PAD_ID: u32 = 0;
pub const CLS_ID: u32 = 2;
pub const SEP_ID: u32 = 3;
pub const DEC_ID: u32 = 5;

/// Splits like BERT's pre-tokenizer: lower-case, whitespace, punctuation alone.
pub fn words_of(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for w in text.to_lowercase().split_whitespace() {
        let mut cur = String::new();
        for c in w.chars() {
            if c.is_ascii_punctuation() {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
                out.push(c.to_string());
            } else {
                cur.push(c);
            }
        }
        if !cur.is_empty() {
            out.push(cur);
        }
    }
    out
}

/// The vocabulary: specials, the corpus words (sorted), then characters and their
/// `##` continuations.
pub fn vocabulary<'a>(texts: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut words = BTreeSet::new();
    for t in texts {
        words.extend(words_of(t));
    }
    let mut chars: BTreeSet<String> = ('a'..='z').chain('0'..='9').map(String::from).collect();
    chars.extend(
        "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
            .chars()
            .map(String::from),
    );
    let mut vocab: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    for w in words.iter().chain(chars.iter()) {
        if !vocab.contains(w) {
            vocab.push(w.clone());
        }
    }
    for c in ('a'..='z').chain('0'..='9') {
        vocab.push(format!("##{c}"));
    }
    vocab
}

/// Every text the synthetic world can produce (captions, corrupted captions, questions,
/// answers), gathered from `n` samples with half of them corrupted.
pub fn synth_texts(n: u64) -> Vec<String> {
    let cfg = SynthConfig {
        count: n,
        noise: 0.5,
        ..SynthConfig::default()
    };
    let mut out = Vec::new();
    for i in 0..n {
        let s = sample(&cfg, i).record;
        out.extend(s.captions.iter().cloned());
        out.push(s.caption.clone());
        for qa in &s.qa {
            out.push(qa.question.clone());
            out.push(qa.answer.clone());
        }
    }
    out
}

/// Writes the tokenizer files for `vocab` into `dir`. `bos_token` is what the model's
/// config calls its start token: `[DEC]` for BLIP (the decoder starts there), `[CLS]`
/// for CLIP (every text starts there).
pub fn write_tokenizer(
    dir: &Path,
    vocab: &[String],
    model_max_length: usize,
    bos_token: &str,
) -> Result<()> {
    let err =
        |e: Box<dyn std::error::Error + Send + Sync>| Error::io_ctx(&dir.join("tokenizer.json"), e);
    std::fs::create_dir_all(dir).map_err(|e| Error::io_ctx(dir, e))?;
    let vocab_path = dir.join("vocab.txt");
    std::fs::write(&vocab_path, vocab.join("\n") + "\n")
        .map_err(|e| Error::io_ctx(&vocab_path, e))?;
    let wp = WordPiece::from_file(&vocab_path.to_string_lossy())
        .unk_token("[UNK]".into())
        .continuing_subword_prefix("##".into())
        .max_input_chars_per_word(100)
        .build()
        .map_err(err)?;
    let mut tok = Tokenizer::new(wp);
    tok.with_normalizer(Some(BertNormalizer::new(true, true, None, true)))
        .map_err(err)?;
    tok.with_pre_tokenizer(Some(BertPreTokenizer));
    let post = TemplateProcessing::builder()
        .try_single("[CLS] $A [SEP]")
        .map_err(|e| err(e.into()))?
        .try_pair("[CLS] $A [SEP] $B:1 [SEP]:1")
        .map_err(|e| err(e.into()))?
        .special_tokens(vec![("[CLS]", CLS_ID), ("[SEP]", SEP_ID)])
        .build()
        .map_err(|e| err(e.into()))?;
    tok.with_post_processor(Some(post));
    tok.with_decoder(Some(WordPieceDecoder::default()));
    let specials: Vec<AddedToken> = SPECIALS
        .iter()
        .map(|s| AddedToken::from(*s, true))
        .collect();
    tok.add_special_tokens(specials).map_err(err)?;
    tok.save(dir.join("tokenizer.json"), true).map_err(err)?;

    let write = |name: &str, text: String| -> Result<()> {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(|e| Error::io_ctx(&p, e))
    };
    let extra: Vec<&str> = ["[DEC]", "[ENC]"]
        .into_iter()
        .filter(|t| *t != bos_token)
        .collect();
    let cfg = serde_json::json!({
        "tokenizer_class": "BertTokenizer",
        "do_lower_case": true,
        "model_max_length": model_max_length,
        "pad_token": "[PAD]",
        "unk_token": "[UNK]",
        "cls_token": "[CLS]",
        "sep_token": "[SEP]",
        "mask_token": "[MASK]",
        "bos_token": bos_token,
        "extra_special_tokens": extra,
        "strip_accents": null,
        "tokenize_chinese_chars": true,
    });
    write(
        "tokenizer_config.json",
        serde_json::to_string_pretty(&cfg).unwrap() + "\n",
    )?;
    let special = serde_json::json!({
        "pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]",
        "sep_token": "[SEP]", "mask_token": "[MASK]", "bos_token": bos_token,
    });
    write(
        "special_tokens_map.json",
        serde_json::to_string_pretty(&special).unwrap() + "\n",
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synth_vocabulary_round_trips_captions() -> Result<()> {
        let texts = synth_texts(300);
        let vocab = vocabulary(texts.iter().map(|s| s.as_str()));
        assert!(vocab.len() < 400, "{}", vocab.len());
        let dir = tempfile::tempdir().unwrap();
        write_tokenizer(dir.path(), &vocab, 40, "[DEC]")?;
        let tok = glimpse_data::TextTokenizer::from_file(&dir.path().join("tokenizer.json"))?;
        for t in texts.iter().take(200) {
            let ids = tok.encode(t, true)?;
            assert_eq!(ids[0], CLS_ID);
            assert_eq!(*ids.last().unwrap(), SEP_ID);
            assert!(!ids.contains(&1), "unknown word in {t:?}");
            assert_eq!(words_of(&tok.decode(&ids, true)?), words_of(t));
        }
        // words outside the corpus still tokenize, through characters
        let ids = tok.encode("zebra", false)?;
        assert!(!ids.contains(&1));
        assert_eq!(tok.bos_id(), Some(DEC_ID));
        Ok(())
    }
}
