//! Incremental detokenisation for streaming: the text of the ids so far, decoded as a
//! whole, minus what was already sent. A piece that ends in the middle of a UTF-8
//! character (byte-fallback tokens, `<0xE2>` then `<0x82>` ...) decodes to U+FFFD and
//! is held back until the character is complete, so no client sees a broken character.

use glimpse_data::TextTokenizer;

pub struct Detokenizer<'t> {
    tokenizer: &'t TextTokenizer,
    /// Ids before the generated ones that the final text includes (a caption's prompt).
    ids: Vec<u32>,
    sent: String,
}

impl<'t> Detokenizer<'t> {
    pub fn new(tokenizer: &'t TextTokenizer, prefix: Vec<u32>) -> Self {
        Self {
            tokenizer,
            ids: prefix,
            sent: String::new(),
        }
    }

    /// Adds `id` and returns the new text it completes, if any.
    pub fn push(&mut self, id: u32) -> Option<String> {
        self.ids.push(id);
        let text = self.tokenizer.decode(&self.ids, true).ok()?;
        self.delta(&text)
    }

    /// What `text` adds to what was sent; nothing while it ends in an incomplete
    /// character or does not extend the sent text (a decoder that rewrites its
    /// output, e.g. cleaning up spaces, catches up on a later piece or at the end).
    pub fn delta(&mut self, text: &str) -> Option<String> {
        let text = text.trim_start();
        if text.ends_with('\u{FFFD}') || !text.starts_with(self.sent.as_str()) {
            return None;
        }
        let new = &text[self.sent.len()..];
        if new.is_empty() {
            return None;
        }
        self.sent = text.to_string();
        Some(new.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A byte-level BPE vocabulary where "€" (E2 82 AC) is three byte-fallback pieces.
    fn byte_fallback_tokenizer(dir: &std::path::Path) -> TextTokenizer {
        let mut vocab = serde_json::Map::new();
        vocab.insert("<unk>".into(), 0.into());
        for b in 0..=255u32 {
            vocab.insert(format!("<0x{b:02X}>"), (b + 1).into());
        }
        vocab.insert("▁price".into(), 257.into());
        let json = serde_json::json!({
            "version": "1.0",
            "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": null, "pre_tokenizer": null, "post_processor": null,
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
                {"type": "ByteFallback"},
                {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}
            ]},
            "model": {"type": "BPE", "dropout": null, "unk_token": "<unk>",
                      "continuing_subword_prefix": null, "end_of_word_suffix": null,
                      "fuse_unk": true, "byte_fallback": true, "vocab": vocab, "merges": []}
        });
        let path = dir.join("tokenizer.json");
        std::fs::write(&path, serde_json::to_vec(&json).unwrap()).unwrap();
        TextTokenizer::from_file(&path).unwrap()
    }

    #[test]
    fn incomplete_characters_are_held_back() {
        let dir = tempfile::tempdir().unwrap();
        let tok = byte_fallback_tokenizer(dir.path());
        let mut d = Detokenizer::new(&tok, Vec::new());
        let mut out = String::new();
        let pieces: Vec<Option<String>> = [257, 0x20 + 1, 0xE2 + 1, 0x82 + 1, 0xAC + 1]
            .into_iter()
            .map(|id| d.push(id))
            .collect();
        for p in pieces.iter().flatten() {
            assert!(!p.contains('\u{FFFD}'), "{pieces:?}");
            out.push_str(p);
        }
        assert_eq!(out, "price €");
        // The two first bytes of "€" gave nothing; the third completed it.
        assert_eq!(pieces[2], None);
        assert_eq!(pieces[3], None);
        assert_eq!(pieces[4].as_deref(), Some("€"));
    }
}
