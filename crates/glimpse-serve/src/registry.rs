//! The models a server has loaded, by id, each with its worker.

use std::path::Path;
use std::sync::Arc;

use glimpse_models::capability::Capability;
use glimpse_models::pipeline::{Architecture, Pipeline};

use crate::error::{ApiError, ApiResult};
use crate::worker::Worker;

/// One loaded model.
pub struct LoadedModel {
    /// The id requests name (`model`): the family, then the directory's name.
    pub id: String,
    /// `clip`, `blip`, `blip2` or `llava`.
    pub family: &'static str,
    pub source: String,
    pub pipeline: Arc<Pipeline>,
    pub worker: Worker,
    /// Unix time of loading (OpenAI's `created`).
    pub created: u64,
    /// `NAME@FINGERPRINT` of the weights (with `+q8` for 8-bit encoders), as an index
    /// records the model that embedded it.
    pub fingerprint: String,
}

impl LoadedModel {
    pub fn can(&self, cap: Capability) -> bool {
        let p = &self.pipeline;
        match cap {
            Capability::Embed => p.as_embed().is_some(),
            Capability::Classify => p.as_classify().is_some(),
            Capability::Match => p.as_match().is_some(),
            Capability::Caption => p.as_caption().is_some(),
            Capability::Answer => p.as_answer().is_some(),
            Capability::Chat => p.as_chat().is_some(),
            Capability::Quantize => false,
        }
    }

    pub fn class_name(&self) -> &'static str {
        self.pipeline.architecture().class_name()
    }
}

pub fn family(arch: Architecture) -> &'static str {
    match arch {
        Architecture::Clip => "clip",
        Architecture::BlipCaption | Architecture::BlipRetrieval | Architecture::BlipVqa => "blip",
        Architecture::Blip2Generation | Architecture::Blip2Retrieval => "blip2",
        Architecture::Llava => "llava",
    }
}

/// `FAMILY-TASK-NAME` style id from the family and the source's last path component,
/// with the family prefix added when the name lacks it (`models/blip-synth/caption`
/// becomes `blip-synth-caption`; `models/clip-synth` stays `clip-synth`).
pub fn model_id(family: &str, source: &str) -> String {
    let path = Path::new(source.trim_end_matches('/'));
    let last = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_else(|| source.to_string());
    let parent = path
        .parent()
        .and_then(|p| p.file_name())
        .map(|n| n.to_string_lossy().to_string());
    let mut id = match parent {
        Some(parent) if !last.to_lowercase().contains(family) => format!("{parent}-{last}"),
        _ => last,
    };
    if !id.to_lowercase().contains(family) {
        id = format!("{family}-{id}");
    }
    id.replace(' ', "-")
}

/// What capability a route needs, in words for errors.
pub fn capability_words(cap: Capability) -> &'static str {
    match cap {
        Capability::Embed => "embed images and texts",
        Capability::Classify => "classify images",
        Capability::Match => "match images and texts",
        Capability::Caption => "caption images",
        Capability::Answer => "answer questions about images",
        Capability::Chat => "chat about images",
        Capability::Quantize => "quantise",
    }
}

#[derive(Default)]
pub struct Models {
    pub list: Vec<Arc<LoadedModel>>,
    /// Text-only language models (chat completions only).
    pub text: Vec<Arc<crate::text_lm::TextModel>>,
}

impl Models {
    pub fn ids(&self) -> Vec<String> {
        self.list
            .iter()
            .map(|m| m.id.clone())
            .chain(self.text.iter().map(|m| m.id.clone()))
            .collect()
    }

    pub fn get(&self, id: &str) -> Option<&Arc<LoadedModel>> {
        self.list.iter().find(|m| m.id == id)
    }

    /// The model `requested` names (404 when none is loaded under that id, 422 when it
    /// cannot do the route's work), or the first loaded model that has one of `caps`.
    pub fn pick(
        &self,
        requested: Option<&str>,
        caps: &[Capability],
    ) -> ApiResult<Arc<LoadedModel>> {
        let words = caps
            .iter()
            .map(|c| capability_words(*c))
            .collect::<Vec<_>>()
            .join(" or ");
        match requested {
            Some(id) => {
                let m = self
                    .get(id)
                    .ok_or_else(|| ApiError::unknown_model(id, &self.ids()))?;
                if caps.iter().any(|c| m.can(*c)) {
                    Ok(m.clone())
                } else {
                    Err(ApiError::invalid(
                        "model",
                        format!("`{id}` ({}) cannot {words}", m.class_name()),
                    ))
                }
            }
            None => caps
                .iter()
                .find_map(|c| self.list.iter().find(|m| m.can(*c)))
                .cloned()
                .ok_or_else(|| {
                    ApiError::not_found(format!(
                        "no loaded model can {words}; loaded: {}",
                        self.ids().join(", ")
                    ))
                }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::model_id;

    #[test]
    fn ids_name_the_family() {
        assert_eq!(model_id("clip", "models/clip-synth"), "clip-synth");
        assert_eq!(
            model_id("blip", "models/blip-synth/caption"),
            "blip-synth-caption"
        );
        assert_eq!(model_id("blip", "/x/blip-synth/vqa/"), "blip-synth-vqa");
        assert_eq!(
            model_id("llava", "llava-hf/llava-1.5-7b-hf"),
            "llava-1.5-7b-hf"
        );
        assert_eq!(model_id("blip2", "tiny"), "blip2-tiny");
        assert_eq!(
            model_id("clip", "openai/clip-vit-base-patch32"),
            "clip-vit-base-patch32"
        );
    }
}
