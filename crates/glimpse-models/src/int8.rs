//! The encoders' linear layers, listed for 8-bit rounding (`--quantize q8`, see
//! [`glimpse_nn::linears`]): the vision towers, the text towers and BLIP's text
//! decoder, BLIP-2's Q-Former and projections, LLaVA's projector. The language models
//! of BLIP-2 and LLaVA are not listed: their decoding has its own block formats
//! ([`crate::capability::QuantizeLanguageModel`]).

use candle_core::Result;
use glimpse_nn::bert::BertLMHeadModel;
use glimpse_nn::layers::Linear;
use glimpse_nn::linears::Linears;

use crate::blip::{
    BlipForConditionalGeneration, BlipForImageTextRetrieval, BlipForQuestionAnswering,
    BlipVisionModel,
};
use crate::blip2::{
    Blip2ForConditionalGeneration, Blip2ForImageTextRetrieval, Blip2QFormerLayer,
    Blip2QFormerModel, Blip2VisionModel,
};
use crate::clip::ClipModel;
use crate::llava::{Llava, LlavaMultiModalProjector};

type Visit<'a> = &'a mut dyn FnMut(&mut Linear) -> Result<()>;

impl Linears for ClipModel {
    fn for_each_linear(&mut self, f: Visit) -> Result<()> {
        self.vision_model.for_each_linear(f)?;
        self.text_model.encoder.for_each_linear(f)?;
        f(&mut self.visual_projection)?;
        f(&mut self.text_projection)
    }
}

impl Linears for BlipVisionModel {
    fn for_each_linear(&mut self, f: Visit) -> Result<()> {
        self.vit.for_each_linear(f)
    }
}

/// A BERT decoder with its language-model head.
fn decoder(d: &mut BertLMHeadModel, f: Visit) -> Result<()> {
    d.bert.for_each_linear(f)?;
    d.cls.for_each_linear(f)
}

impl Linears for BlipForConditionalGeneration {
    fn for_each_linear(&mut self, f: Visit) -> Result<()> {
        self.vision_model.for_each_linear(f)?;
        decoder(&mut self.text_decoder, f)
    }
}

impl Linears for BlipForImageTextRetrieval {
    fn for_each_linear(&mut self, f: Visit) -> Result<()> {
        self.vision_model.for_each_linear(f)?;
        self.text_encoder.for_each_linear(f)?;
        f(&mut self.vision_proj)?;
        f(&mut self.text_proj)?;
        f(&mut self.itm_head)
    }
}

impl Linears for BlipForQuestionAnswering {
    fn for_each_linear(&mut self, f: Visit) -> Result<()> {
        self.vision_model.for_each_linear(f)?;
        self.text_encoder.for_each_linear(f)?;
        decoder(&mut self.text_decoder, f)
    }
}

impl Linears for Blip2VisionModel {
    fn for_each_linear(&mut self, f: Visit) -> Result<()> {
        self.vit.for_each_linear(f)
    }
}

impl Linears for Blip2QFormerLayer {
    fn for_each_linear(&mut self, f: Visit) -> Result<()> {
        self.attention.for_each_linear(f)?;
        self.crossattention.for_each_linear(f)?;
        self.intermediate.for_each_linear(f)?;
        self.output.for_each_linear(f)?;
        f(&mut self.intermediate_query)?;
        self.output_query.for_each_linear(f)
    }
}

impl Linears for Blip2QFormerModel {
    fn for_each_linear(&mut self, f: Visit) -> Result<()> {
        self.layer.for_each_linear(f)
    }
}

impl Linears for Blip2ForConditionalGeneration {
    fn for_each_linear(&mut self, f: Visit) -> Result<()> {
        self.vision_model.for_each_linear(f)?;
        self.qformer.for_each_linear(f)?;
        f(&mut self.language_projection)
    }
}

impl Linears for Blip2ForImageTextRetrieval {
    fn for_each_linear(&mut self, f: Visit) -> Result<()> {
        self.vision_model.for_each_linear(f)?;
        self.qformer.for_each_linear(f)?;
        f(&mut self.vision_projection)?;
        f(&mut self.text_projection)?;
        f(&mut self.itm_head)
    }
}

impl Linears for LlavaMultiModalProjector {
    fn for_each_linear(&mut self, f: Visit) -> Result<()> {
        f(&mut self.linear_1)?;
        f(&mut self.linear_2)
    }
}

impl Linears for Llava {
    fn for_each_linear(&mut self, f: Visit) -> Result<()> {
        self.model.vision_tower.for_each_linear(f)?;
        self.model.multi_modal_projector.for_each_linear(f)
    }
}
