//! The classes Glimpse can load: how a checkpoint names its class, what each class
//! can do, and how to load it.
//!
//! A family registers each of its classes with one [`Registration`] in [`REGISTRY`];
//! the order of the registry is the order in which messages list classes.

use candle_core::Device;
use serde::Deserialize;

use crate::capability::{Capability, Model};
use crate::checkpoint::ModelFiles;
use crate::{blip, blip2, clip, llava};
use crate::{Error, Result};

/// The model classes Glimpse can run, named as in `config.json` `architectures`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Clip,
    BlipCaption,
    BlipRetrieval,
    BlipVqa,
    Blip2Generation,
    Blip2Retrieval,
    Llava,
}

impl Architecture {
    pub fn class_name(self) -> &'static str {
        match self {
            Self::Clip => "CLIPModel",
            Self::BlipCaption => "BlipForConditionalGeneration",
            Self::BlipRetrieval => "BlipForImageTextRetrieval",
            Self::BlipVqa => "BlipForQuestionAnswering",
            Self::Blip2Generation => "Blip2ForConditionalGeneration",
            Self::Blip2Retrieval => "Blip2ForImageTextRetrieval",
            Self::Llava => "LlavaForConditionalGeneration",
        }
    }

    fn from_class(name: &str) -> Option<Self> {
        REGISTRY
            .iter()
            .map(|r| r.architecture)
            .find(|a| a.class_name() == name)
    }

    /// This class's entry in [`REGISTRY`].
    pub fn registration(self) -> &'static Registration {
        REGISTRY
            .iter()
            .find(|r| r.architecture == self)
            .expect("every architecture is registered")
    }
}

/// A loaded model behind the capability traits.
pub type LoadFn = fn(&ModelFiles, &Device) -> Result<Box<dyn Model>>;

/// One loadable class: what it can do and how to load it.
pub struct Registration {
    pub architecture: Architecture,
    /// What a loaded model of this class offers through [`Model`]'s `as_*` methods
    /// (checked when it loads), in [`Capability`] order.
    pub capabilities: &'static [Capability],
    pub load: LoadFn,
}

/// Every class Glimpse runs, one line per class.
pub static REGISTRY: &[Registration] = &[
    clip::REGISTRATION,
    blip::CAPTION_REGISTRATION,
    blip::RETRIEVAL_REGISTRATION,
    blip::VQA_REGISTRATION,
    blip2::GENERATION_REGISTRATION,
    blip2::RETRIEVAL_REGISTRATION,
    llava::REGISTRATION,
];

/// Loads `files` as `arch`, checking in debug builds that the model offers what its
/// registration says.
pub fn load(arch: Architecture, files: &ModelFiles, device: &Device) -> Result<Box<dyn Model>> {
    let registration = arch.registration();
    let mut model = (registration.load)(files, device)?;
    debug_assert_eq!(
        offered(model.as_mut()),
        registration.capabilities,
        "{} offers other capabilities than its registration says",
        arch.class_name()
    );
    Ok(model)
}

fn offered(model: &mut dyn Model) -> Vec<Capability> {
    let offered = [
        (Capability::Embed, model.as_embed().is_some()),
        (Capability::Classify, model.as_classify().is_some()),
        (Capability::Match, model.as_match().is_some()),
        (Capability::Caption, model.as_caption().is_some()),
        (Capability::Answer, model.as_answer().is_some()),
        (Capability::Chat, model.as_chat().is_some()),
        (Capability::Quantize, model.as_quantize().is_some()),
    ];
    offered
        .into_iter()
        .filter_map(|(c, yes)| yes.then_some(c))
        .collect()
}

/// The classes that offer `capability`, as a message lists them: "a A, B or C".
pub fn classes_with(capability: Capability) -> String {
    let names: Vec<&str> = REGISTRY
        .iter()
        .filter(|r| r.capabilities.contains(&capability))
        .map(|r| r.architecture.class_name())
        .collect();
    format!("a {}", enumerate(&names, "or"))
}

/// `a`, `a <last> b`, `a, b <last> c`.
fn enumerate(names: &[&str], last: &str) -> String {
    match names {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., tail] => format!("{} {last} {tail}", init.join(", ")),
    }
}

#[derive(Deserialize)]
struct ArchitectureProbe {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    model_type: Option<String>,
}

/// Which class a checkpoint holds: `architectures` first, then `model_type`.
pub fn detect_architecture(files: &ModelFiles) -> Result<Architecture> {
    let probe: ArchitectureProbe = files.read_config()?;
    if let Some(arch) = probe
        .architectures
        .iter()
        .find_map(|a| Architecture::from_class(a))
    {
        return Ok(arch);
    }
    let config_err = |msg: String| Error::Config {
        path: files.config.clone(),
        msg,
    };
    match probe.model_type.as_deref() {
        Some("clip") => Ok(Architecture::Clip),
        Some("blip") => Err(config_err(
            "model_type is \"blip\" but `architectures` does not say which BLIP head \
             (BlipForConditionalGeneration, BlipForImageTextRetrieval or BlipForQuestionAnswering)"
                .into(),
        )),
        other => {
            let all: Vec<&str> = REGISTRY
                .iter()
                .map(|r| r.architecture.class_name())
                .collect();
            Err(config_err(format!(
                "unsupported model (architectures {:?}, model_type {:?}); Glimpse runs {}",
                probe.architectures,
                other,
                enumerate(&all, "and")
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_list_the_classes_as_before() {
        assert_eq!(
            classes_with(Capability::Embed),
            "a CLIPModel or BlipForImageTextRetrieval"
        );
        assert_eq!(classes_with(Capability::Classify), "a CLIPModel");
        assert_eq!(
            classes_with(Capability::Match),
            "a CLIPModel, BlipForImageTextRetrieval or Blip2ForImageTextRetrieval"
        );
        assert_eq!(
            classes_with(Capability::Caption),
            "a BlipForConditionalGeneration, Blip2ForConditionalGeneration or \
             LlavaForConditionalGeneration"
        );
        assert_eq!(
            classes_with(Capability::Answer),
            "a BlipForQuestionAnswering, Blip2ForConditionalGeneration or \
             LlavaForConditionalGeneration"
        );
        assert_eq!(
            classes_with(Capability::Chat),
            "a LlavaForConditionalGeneration"
        );
    }

    #[test]
    fn every_class_is_registered_once() {
        for (i, r) in REGISTRY.iter().enumerate() {
            assert_eq!(
                Architecture::from_class(r.architecture.class_name()),
                Some(r.architecture)
            );
            assert!(
                REGISTRY[..i]
                    .iter()
                    .all(|o| o.architecture != r.architecture),
                "{:?} twice",
                r.architecture
            );
            let mut sorted = r.capabilities.to_vec();
            sorted.sort();
            assert_eq!(sorted, r.capabilities, "{:?}", r.architecture);
        }
    }
}
