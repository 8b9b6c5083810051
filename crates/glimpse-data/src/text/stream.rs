//! Turning generated ids into text as they arrive, for a chat that prints (or sends)
//! its reply token by token.
//!
//! Decoding one id at a time is wrong twice over: SentencePiece-style tokenizers split
//! a character they have no piece for into byte-fallback pieces (`<0xC3>`, `<0xA9>`),
//! which decode to U+FFFD until the whole UTF-8 sequence is there, and decoders that
//! strip or merge spaces look at neighbouring pieces. So [`StreamDecoder`] decodes the
//! whole reply so far after each id and hands out only the part beyond what it handed
//! out before, holding back text that may still change.

use super::TextTokenizer;
use crate::error::Result;

/// Incremental detokeniser: push ids, get the text that became final.
///
/// Byte-fallback pieces are held until the next ordinary piece arrives (the byte
/// sequence is complete by then), and text that ends in U+FFFD is held too.
/// [`StreamDecoder::finish`] returns whatever is left once the reply has ended, so the
/// concatenation of every piece handed out is the reply's full text whenever each
/// decode extends the previous one (as it does for the tokenizers in use).
#[derive(Debug)]
pub struct StreamDecoder<'t> {
    tokenizer: &'t TextTokenizer,
    /// A trailing one of these is dropped before decoding, as a reply ends.
    end_ids: Vec<u32>,
    ids: Vec<u32>,
    shown: String,
}

impl<'t> StreamDecoder<'t> {
    /// A decoder for one reply; a trailing id from `end_ids` (the end-of-sequence ids)
    /// is not decoded, and special tokens are skipped.
    pub fn new(tokenizer: &'t TextTokenizer, end_ids: &[u32]) -> Self {
        Self {
            tokenizer,
            end_ids: end_ids.to_vec(),
            ids: Vec::new(),
            shown: String::new(),
        }
    }

    /// Adds the next id; returns the text that became final (often empty).
    ///
    /// A failed decode returns the error and hands out nothing; the id is kept, so a
    /// later push or [`Self::finish`] can still succeed.
    pub fn push(&mut self, id: u32) -> Result<String> {
        self.ids.push(id);
        if self.is_byte_piece(id) {
            return Ok(String::new());
        }
        let now = self.decode()?;
        if now.ends_with('\u{FFFD}') {
            return Ok(String::new());
        }
        Ok(self.grow(now))
    }

    /// The text not handed out yet, once no more ids will come.
    pub fn finish(&mut self) -> Result<String> {
        let now = self.decode()?;
        Ok(self.grow(now))
    }

    /// The ids pushed so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// The text handed out so far.
    pub fn text(&self) -> &str {
        &self.shown
    }

    /// A `<0xNN>` piece of a byte-fallback vocabulary.
    fn is_byte_piece(&self, id: u32) -> bool {
        self.tokenizer
            .inner()
            .id_to_token(id)
            .is_some_and(|t| t.starts_with("<0x"))
    }

    /// The reply so far: a trailing end id dropped, special tokens skipped.
    fn decode(&self) -> Result<String> {
        let end = match self.ids.last() {
            Some(last) if self.end_ids.contains(last) => self.ids.len() - 1,
            _ => self.ids.len(),
        };
        self.tokenizer.decode(&self.ids[..end], true)
    }

    /// The part of `now` beyond what was handed out, when `now` extends it; text that
    /// rewrites what was handed out gives nothing.
    fn grow(&mut self, now: String) -> String {
        match now.strip_prefix(self.shown.as_str()) {
            Some(rest) if !rest.is_empty() => {
                let rest = rest.to_string();
                self.shown = now;
                rest
            }
            _ => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// LLaVA's test tokenizer: a Llama-style BPE over ASCII with byte fallback.
    fn llama_tokenizer() -> TextTokenizer {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tools/fixtures/llava/tokenizer.json");
        TextTokenizer::from_file(&path).unwrap()
    }

    fn piece(tok: &TextTokenizer, id: u32) -> String {
        tok.inner().id_to_token(id).unwrap()
    }

    #[test]
    fn byte_pieces_are_held_until_the_next_ordinary_piece() {
        let tok = llama_tokenizer();
        let ids = tok.encode("the é sky", false).unwrap();
        let pieces: Vec<String> = ids.iter().map(|&id| piece(&tok, id)).collect();
        let first_byte = pieces.iter().position(|p| p.starts_with("<0x")).unwrap();
        assert_eq!(pieces[first_byte], "<0xC3>", "{pieces:?}");
        assert_eq!(pieces[first_byte + 1], "<0xA9>", "{pieces:?}");

        let mut dec = StreamDecoder::new(&tok, &[]);
        let mut out = Vec::new();
        for &id in &ids {
            out.push(dec.push(id).unwrap());
        }
        assert_eq!(out[first_byte], "", "a lone lead byte is held");
        assert_eq!(
            out[first_byte + 1],
            "",
            "byte pieces wait for an ordinary one"
        );
        assert!(
            out[first_byte + 2].starts_with('é'),
            "the character comes out whole with the next piece: {out:?}"
        );
        let all: String = out.concat() + &dec.finish().unwrap();
        assert_eq!(all, tok.decode(&ids, true).unwrap());
        assert!(!all.contains('\u{FFFD}'));
    }

    #[test]
    fn finish_flushes_trailing_byte_pieces() {
        let tok = llama_tokenizer();
        let ids = tok.encode("the sky é", false).unwrap();
        assert!(piece(&tok, *ids.last().unwrap()).starts_with("<0x"));

        let mut dec = StreamDecoder::new(&tok, &[]);
        let streamed: String = ids.iter().map(|&id| dec.push(id).unwrap()).collect();
        assert_eq!(streamed, "the sky ");
        assert_eq!(dec.finish().unwrap(), "é");
        assert_eq!(dec.text(), "the sky é");
        assert_eq!(dec.ids(), &ids[..]);
        assert_eq!(dec.finish().unwrap(), "", "nothing is handed out twice");
    }

    #[test]
    fn a_trailing_end_id_is_not_decoded() {
        let tok = llama_tokenizer();
        let eos = tok.eos_id().unwrap();
        let mut ids = tok.encode("the sky é", false).unwrap();
        ids.push(eos);
        let mut dec = StreamDecoder::new(&tok, &[eos]);
        let mut all: String = ids.iter().map(|&id| dec.push(id).unwrap()).collect();
        all += &dec.finish().unwrap();
        assert_eq!(all, "the sky é");
    }

    #[test]
    fn ordinary_pieces_come_out_as_they_arrive() {
        let tok = llama_tokenizer();
        let ids = tok.encode("the sky is", false).unwrap();
        let mut dec = StreamDecoder::new(&tok, &[]);
        let first = dec.push(ids[0]).unwrap();
        assert!(!first.is_empty());
        let rest: String = ids[1..].iter().map(|&id| dec.push(id).unwrap()).collect();
        assert_eq!(first + &rest, "the sky is");
        assert_eq!(dec.finish().unwrap(), "");
    }
}
