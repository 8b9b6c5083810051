//! The workloads: what each times, on which checkpoint, and what it counts. Names,
//! directories, shapes and prompt ids are repeated in `tools/bench/reference.py`; the
//! tests in `script_agreement.rs` keep the two equal.

use glimpse_nn::quant::Quant;

use crate::error::{Error, Result};

pub(crate) const CLIP_DIR: &str = "clip-vit-base-patch32";
pub(crate) const BLIP_DIR: &str = "blip-image-captioning-base";
pub(crate) const BLIP2_DIR: &str = "blip2-vitb16-opt-125m";
pub(crate) const LLAVA_DIR: &str = "llava-clip-b32-llama-1b";
pub(crate) const CLIP_TEXT_BATCH: usize = 32;
pub(crate) const CLIP_TEXT_LEN: usize = 16;
pub(crate) const CAPTION_TOKENS: usize = 20;
/// Default new tokens per call of the streaming workloads (`--new-tokens`).
pub const STREAM_TOKENS: usize = 32;
/// Synthetic prompt ids, the same in `reference.py`. BLIP-2: OPT's bos and seven ids,
/// after the 32 query placeholders the processor puts first.
pub(crate) const BLIP2_TEXT_IDS: &[u32] = &[2, 1000, 2000, 3000, 4000, 5000, 6000, 7000];
/// LLaVA: these, one `<image>` per image token, then [`LLAVA_IDS_AFTER`].
pub(crate) const LLAVA_IDS_BEFORE: &[u32] = &[1, 1000, 2000];
pub(crate) const LLAVA_IDS_AFTER: &[u32] = &[3000, 4000, 5000, 6000, 7000];
/// The `matmul` workload: `MATMUL_COUNT` products of two `MATMUL_N` square f32 matrices
/// per timed call (the same in `reference.py`), enough work for a stable rate.
pub(crate) const MATMUL_N: usize = 2048;
pub(crate) const MATMUL_COUNT: usize = 4;
/// The name of the workload whose rate is each side's peak.
pub const MATMUL: &str = "matmul";
/// The same products through each side's 8-bit dynamic linear layer (Glimpse's integer
/// kernel; PyTorch's `quantize_dynamic` on fbgemm/onednn): the 8-bit workloads' peak.
pub const MATMUL_I8: &str = "matmul-i8";

/// What one workload runs; shapes and names are repeated in `reference.py`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// `MATMUL_COUNT` times `C = A·B`, `MATMUL_N` square, f32; no model.
    Matmul,
    ClipImage {
        batch: usize,
    },
    ClipText,
    Caption {
        beams: usize,
    },
    /// Image + fixed prompt ids -> `--new-tokens` greedy tokens, each timestamped.
    Stream(StreamModel),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamModel {
    Blip2Opt,
    LlavaLlama,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Workload {
    pub name: &'static str,
    /// The checkpoint directory under `--models`; `None` for `matmul`.
    pub model_dir: Option<&'static str>,
    pub task: Task,
    /// Units counted by the throughput column, and how many one call produces.
    pub unit: &'static str,
    pub items: usize,
    /// Run with 8-bit linear layers on both sides: Glimpse's `--quantize q8` encoders,
    /// the reference's `torch.ao.quantization.quantize_dynamic` (int8 weights, dynamic
    /// int8 activations) on every `nn.Linear`.
    pub int8: bool,
}

/// Every workload, in the order a full run times them.
pub const WORKLOADS: &[Workload] = &[
    // First, so that the peak is known before the models run.
    Workload {
        name: MATMUL,
        model_dir: None,
        task: Task::Matmul,
        unit: "call/s",
        items: 1,
        int8: false,
    },
    Workload {
        name: MATMUL_I8,
        model_dir: None,
        task: Task::Matmul,
        unit: "call/s",
        items: 1,
        int8: true,
    },
    Workload {
        name: "clip-image-b1",
        model_dir: Some(CLIP_DIR),
        task: Task::ClipImage { batch: 1 },
        unit: "img/s",
        items: 1,
        int8: false,
    },
    Workload {
        name: "clip-image-b8",
        model_dir: Some(CLIP_DIR),
        task: Task::ClipImage { batch: 8 },
        unit: "img/s",
        items: 8,
        int8: false,
    },
    Workload {
        name: "clip-text-b32",
        model_dir: Some(CLIP_DIR),
        task: Task::ClipText,
        unit: "text/s",
        items: CLIP_TEXT_BATCH,
        int8: false,
    },
    Workload {
        name: "blip-caption",
        model_dir: Some(BLIP_DIR),
        task: Task::Caption { beams: 1 },
        unit: "tok/s",
        items: CAPTION_TOKENS,
        int8: false,
    },
    Workload {
        name: "blip-caption-beam3",
        model_dir: Some(BLIP_DIR),
        task: Task::Caption { beams: 3 },
        unit: "tok/s",
        items: CAPTION_TOKENS,
        int8: false,
    },
    Workload {
        name: "blip2-opt",
        model_dir: Some(BLIP2_DIR),
        task: Task::Stream(StreamModel::Blip2Opt),
        unit: "tok/s",
        items: STREAM_TOKENS,
        int8: false,
    },
    Workload {
        name: "llava-llama",
        model_dir: Some(LLAVA_DIR),
        task: Task::Stream(StreamModel::LlavaLlama),
        unit: "tok/s",
        items: STREAM_TOKENS,
        int8: false,
    },
    Workload {
        name: "clip-image-b8-q8",
        model_dir: Some(CLIP_DIR),
        task: Task::ClipImage { batch: 8 },
        unit: "img/s",
        items: 8,
        int8: true,
    },
    Workload {
        name: "clip-text-b32-q8",
        model_dir: Some(CLIP_DIR),
        task: Task::ClipText,
        unit: "text/s",
        items: CLIP_TEXT_BATCH,
        int8: true,
    },
    Workload {
        name: "blip-caption-q8",
        model_dir: Some(BLIP_DIR),
        task: Task::Caption { beams: 1 },
        unit: "tok/s",
        items: CAPTION_TOKENS,
        int8: true,
    },
];

impl Workload {
    /// Items one call produces under `--new-tokens`.
    pub fn items_per_call(&self, new_tokens: usize) -> usize {
        match self.task {
            Task::Stream(_) => new_tokens,
            _ => self.items,
        }
    }

    /// Generation timed per token (`blip2-opt`, `llava-llama`): the workloads that
    /// `--quantize` changes.
    pub fn is_streaming(&self) -> bool {
        matches!(self.task, Task::Stream(_))
    }

    /// Workloads `--quantize` allows: the streaming ones, and `matmul`, which has no
    /// model to quantise and stays in for the peak that the shares need.
    fn allows_quantize(&self) -> bool {
        self.is_streaming() || self.name == MATMUL
    }
}

/// The workload called `name`; the error lists the known ones.
pub fn workload(name: &str) -> Result<Workload> {
    WORKLOADS
        .iter()
        .find(|w| w.name == name)
        .copied()
        .ok_or_else(|| Error::UnknownWorkload {
            name: name.to_string(),
            known: WORKLOADS
                .iter()
                .map(|w| w.name)
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// The workloads named (surrounding spaces ignored), or with no names every workload
/// that runs under `quantize`; a named workload that `quantize` cannot apply to is an
/// error.
pub fn select(names: &[String], quantize: Option<Quant>) -> Result<Vec<Workload>> {
    let selected: Vec<Workload> = if names.is_empty() {
        WORKLOADS
            .iter()
            .filter(|w| quantize.is_none() || w.allows_quantize())
            .copied()
            .collect()
    } else {
        names
            .iter()
            .map(|n| workload(n.trim()))
            .collect::<Result<_>>()?
    };
    if let Some(q) = quantize {
        if let Some(w) = selected.iter().find(|w| !w.allows_quantize()) {
            return Err(Error::InvalidConfig(format!(
                "--quantize {q}: {} has no language model to quantise; \
                 --quantize applies to blip2-opt and llava-llama",
                w.name
            )));
        }
    }
    Ok(selected)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_workload_is_found_and_unknown_ones_are_named() {
        for w in WORKLOADS {
            assert_eq!(workload(w.name).unwrap().name, w.name);
        }
        let err = workload("clip-image-b2").unwrap_err().to_string();
        assert!(
            err.contains("clip-image-b2") && err.contains("clip-image-b8"),
            "{err}"
        );
    }

    #[test]
    fn eight_bit_workloads_time_the_same_task_as_their_f32_twins() {
        for (q8, f32) in [
            ("clip-image-b8-q8", "clip-image-b8"),
            ("clip-text-b32-q8", "clip-text-b32"),
            ("blip-caption-q8", "blip-caption"),
            (MATMUL_I8, MATMUL),
        ] {
            let (a, b) = (workload(q8).unwrap(), workload(f32).unwrap());
            assert!(a.int8 && !b.int8, "{q8}");
            assert_eq!(
                (a.task, a.model_dir, a.items),
                (b.task, b.model_dir, b.items)
            );
            assert_eq!(a.flops(STREAM_TOKENS), b.flops(STREAM_TOKENS), "{q8}");
        }
        // They are their own quantisation: `--quantize` (the language models') refuses them.
        let err = select(&["clip-text-b32-q8".into()], Some(Quant::Q8)).unwrap_err();
        assert!(err.to_string().contains("clip-text-b32-q8"), "{err}");
    }

    #[test]
    fn streaming_workloads_count_new_tokens() {
        for name in ["blip2-opt", "llava-llama"] {
            let w = workload(name).unwrap();
            assert!(matches!(w.task, Task::Stream(_)));
            assert_eq!(w.items_per_call(STREAM_TOKENS), STREAM_TOKENS);
            assert_eq!(w.items_per_call(8), 8);
        }
        assert_eq!(
            workload("blip-caption").unwrap().items_per_call(8),
            CAPTION_TOKENS
        );
    }

    #[test]
    fn selection_follows_names_or_quantize() {
        let names = |ws: Vec<Workload>| ws.iter().map(|w| w.name).collect::<Vec<_>>();
        assert_eq!(select(&[], None).unwrap().len(), WORKLOADS.len());
        assert_eq!(
            names(select(&[], Some(Quant::Q8)).unwrap()),
            ["matmul", "blip2-opt", "llava-llama"]
        );
        let picked = select(&[" llava-llama".into(), "matmul ".into()], None).unwrap();
        assert_eq!(names(picked), ["llava-llama", "matmul"]);
        let err = select(&["clip-image-b1".into()], Some(Quant::Q4))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "--quantize q4: clip-image-b1 has no language model to quantise; \
             --quantize applies to blip2-opt and llava-llama"
        );
        assert!(matches!(
            select(&["nope".into()], None),
            Err(Error::UnknownWorkload { .. })
        ));
    }
}
