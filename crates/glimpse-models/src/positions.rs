//! Decoding within a model's learned positions. A decoder with a table of
//! `max_position_embeddings` positions cannot go past it; running into the end midway
//! would fail the whole generation and lose what it produced.

use glimpse_generate::GenerationConfig;

use crate::{Error, Result};

/// `gen` cut to the positions left after a prompt of `prompt` positions:
/// `max - prompt + 1` new tokens (the last one is never fed back). A prompt over the limit is
/// refused naming it; a longer `max_new_tokens` stops at the limit with a warning, so
/// the output keeps what was generated.
pub(crate) fn fit_positions(
    model: &str,
    gen: &GenerationConfig,
    prompt: usize,
    max: usize,
) -> Result<GenerationConfig> {
    if prompt > max {
        return Err(Error::Model {
            model: model.to_string(),
            msg: format!(
                "the prompt takes {prompt} positions, over the decoder's \
                 max_position_embeddings = {max}; shorten it"
            ),
        });
    }
    let room = max - prompt + 1;
    if gen.max_new_tokens <= room {
        return Ok(gen.clone());
    }
    tracing::warn!(
        "{model}: generation stops after {room} new tokens, not {}: the prompt takes \
         {prompt} of the decoder's {max} positions (max_position_embeddings)",
        gen.max_new_tokens
    );
    Ok(GenerationConfig {
        max_new_tokens: room,
        min_new_tokens: gen.min_new_tokens.min(room),
        ..gen.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_generation_stops_at_the_last_position() {
        let gen = GenerationConfig::greedy(60, vec![]);
        assert_eq!(fit_positions("m", &gen, 9, 64).unwrap().max_new_tokens, 56);
        assert_eq!(fit_positions("m", &gen, 4, 64).unwrap().max_new_tokens, 60);
        let err = fit_positions("m", &gen, 70, 64).unwrap_err().to_string();
        assert!(err.contains("max_position_embeddings = 64"), "{err}");
    }
}
