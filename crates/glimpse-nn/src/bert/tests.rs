//! The cache and mode invariants of the BERT text model on a tiny random model.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};

use super::*;
use crate::test_util::{max_diff, rand};

fn tiny_cfg() -> BertConfig {
    BertConfig {
        vocab_size: 50,
        hidden_size: 16,
        encoder_hidden_size: 12,
        intermediate_size: 24,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        max_position_embeddings: 32,
        ..BertConfig::default()
    }
}

fn tiny_decoder() -> (VarMap, BertLMHeadModel) {
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let model = BertLMHeadModel::new(&tiny_cfg(), vb).unwrap();
    (varmap, model)
}

/// Max difference relative to the largest magnitude in `want` (at least 1): the models
/// here have random weights, and a decoding step sums in another order than a full pass.
fn rel_diff(got: &Tensor, want: &Tensor) -> f32 {
    let scale = want
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    max_diff(got, want) / scale.max(1.0)
}

fn ids(rows: &[&[u32]]) -> Tensor {
    Tensor::new(rows.to_vec().concat(), &Device::Cpu)
        .unwrap()
        .reshape((rows.len(), rows[0].len()))
        .unwrap()
}

#[test]
fn cached_decoding_equals_full_causal_forward() {
    let (_vm, model) = tiny_decoder();
    let image = rand(&[2, 5, 12], 1);
    let enc = EncoderStates {
        hidden_states: &image,
        attention_mask: None,
    };
    let tokens = ids(&[&[3, 7, 9, 11, 2, 40], &[5, 1, 8, 30, 31, 4]]);
    let full = model.forward(&tokens, None, Some(enc), false).unwrap(); // [2, 6, V]

    // Prefill 2 tokens, then one token at a time.
    let mut cache = model.new_cache(Some(enc)).unwrap();
    let first = model
        .step(&tokens.narrow(1, 0, 2).unwrap(), &mut cache)
        .unwrap();
    let want = full.narrow(1, 1, 1).unwrap().squeeze(1).unwrap();
    assert!(rel_diff(&first, &want) < 1e-5);
    for i in 2..6 {
        let got = model
            .step(&tokens.narrow(1, i, 1).unwrap(), &mut cache)
            .unwrap();
        let want = full.narrow(1, i, 1).unwrap().squeeze(1).unwrap();
        let d = rel_diff(&got, &want);
        assert!(d < 1e-5, "step {i}: relative diff {d}");
    }
    assert_eq!(cache.len(), 6);
}

#[test]
fn cross_attention_cache_equals_recomputation_and_follows_rows() {
    let (_vm, model) = tiny_decoder();
    let image = rand(&[3, 4, 12], 2);
    let enc = EncoderStates {
        hidden_states: &image,
        attention_mask: None,
    };
    let mut cache = model.new_cache(Some(enc)).unwrap();
    for (layer, c) in model.bert.layer.iter().zip(&cache.cross) {
        let (k, v) = layer
            .crossattention
            .as_ref()
            .unwrap()
            .self_
            .key_value(&image)
            .unwrap();
        let (ck, cv) = c.get().unwrap();
        assert!(max_diff(&k, ck) < 1e-7 && max_diff(&v, cv) < 1e-7);
    }

    // Expand the batch into beams (rows 2, 0, 0) after a prefill, as beam search does,
    // and check the continuation against a full pass over the reordered inputs.
    let tokens = ids(&[&[3, 7, 9], &[5, 1, 8], &[6, 6, 2]]);
    model
        .step(&tokens.narrow(1, 0, 2).unwrap(), &mut cache)
        .unwrap();
    let rows = Tensor::new(&[2u32, 0, 0], &Device::Cpu).unwrap();
    cache.select_rows(&rows).unwrap();
    let got = model.step(&ids(&[&[9], &[9], &[4]]), &mut cache).unwrap();

    let image_r = image.index_select(&rows, 0).unwrap();
    let tokens_r = ids(&[&[6, 6, 9], &[3, 7, 9], &[3, 7, 4]]);
    let enc_r = EncoderStates {
        hidden_states: &image_r,
        attention_mask: None,
    };
    let full = model.forward(&tokens_r, None, Some(enc_r), false).unwrap();
    let want = full.narrow(1, 2, 1).unwrap().squeeze(1).unwrap();
    assert!(rel_diff(&got, &want) < 1e-5);
}

#[test]
fn encoder_padding_does_not_change_real_tokens() {
    let (_vm, model) = tiny_decoder();
    let image = rand(&[1, 4, 12], 3);
    let short = ids(&[&[3, 7, 9]]);
    let padded = ids(&[&[3, 7, 9, 0, 0]]);
    let mask = ids(&[&[1, 1, 1, 0, 0]]);
    for encoder in [
        None,
        Some(EncoderStates {
            hidden_states: &image,
            attention_mask: None,
        }),
    ] {
        let a = model
            .bert
            .forward(&short, None, encoder, SelfMask::Bidirectional, false)
            .unwrap();
        let b = model
            .bert
            .forward(
                &padded,
                Some(&mask),
                encoder,
                SelfMask::Bidirectional,
                false,
            )
            .unwrap();
        assert!(rel_diff(&a, &b.narrow(1, 0, 3).unwrap()) < 1e-5);
    }
    // Bidirectional and causal differ: the first token sees later ones only in the encoder.
    let enc = model
        .bert
        .forward(&short, None, None, SelfMask::Bidirectional, false)
        .unwrap();
    let dec = model
        .bert
        .forward(&short, None, None, SelfMask::Causal, false)
        .unwrap();
    assert!(max_diff(&enc.narrow(1, 0, 1).unwrap(), &dec.narrow(1, 0, 1).unwrap()) > 1e-4);
}

#[test]
fn train_forward_matches_inference_and_every_weight_gets_a_gradient() {
    let (varmap, model) = tiny_decoder();
    let image = rand(&[2, 4, 12], 4);
    let enc = EncoderStates {
        hidden_states: &image,
        attention_mask: None,
    };
    let tokens = ids(&[&[3, 7, 9, 0], &[5, 1, 8, 2]]);
    let mask = ids(&[&[1, 1, 1, 0], &[1, 1, 1, 1]]);
    let infer = model
        .forward(&tokens, Some(&mask), Some(enc), false)
        .unwrap();
    let train = model
        .forward(&tokens, Some(&mask), Some(enc), true)
        .unwrap();
    assert!(max_diff(&infer, &train) < 1e-4);

    let weights = rand(train.dims(), 5);
    let loss = (train * weights).unwrap().sum_all().unwrap();
    let grads = loss.backward().unwrap();
    let data = varmap.data().lock().unwrap();
    assert!(!data.is_empty());
    for (name, var) in data.iter() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("no gradient for {name}"));
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0, "zero gradient for {name}");
    }
}

/// The tiny decoder with its weights detached from the VarMap, as a loaded checkpoint
/// is: inference on it takes the fused CPU kernels.
fn frozen_decoder() -> BertLMHeadModel {
    let (varmap, _) = tiny_decoder();
    let tensors: std::collections::HashMap<String, Tensor> = varmap
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(name, var)| (name.clone(), var.as_tensor().detach()))
        .collect();
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    BertLMHeadModel::new(&tiny_cfg(), vb).unwrap()
}

#[test]
fn beams_of_one_image_share_its_cross_attention_keys() {
    let model = frozen_decoder();
    let image = rand(&[1, 4, 12], 5);
    let enc = EncoderStates {
        hidden_states: &image,
        attention_mask: None,
    };
    let mut cache = model.new_cache(Some(enc)).unwrap();
    model.step(&ids(&[&[3, 7]]), &mut cache).unwrap();
    let expand = Tensor::new(&[0u32, 0, 0], &Device::Cpu).unwrap();
    cache.select_rows(&expand).unwrap();
    assert_eq!(cache.row_images(), &[0, 0, 0]);
    let (k, _) = cache.cross[0].get().unwrap();
    assert_eq!(k.dim(0).unwrap(), 3);
    if crate::kernels::enabled() {
        // One copy of the image's keys, read by every beam (a stride-0 batch).
        assert_eq!(k.stride()[0], 0);
    }
    model.step(&ids(&[&[9], &[4], &[5]]), &mut cache).unwrap();
    let follow = Tensor::new(&[2u32, 0, 0], &Device::Cpu).unwrap();
    cache.select_rows(&follow).unwrap();
    let got = model.step(&ids(&[&[1], &[2], &[3]]), &mut cache).unwrap();

    let image_r = image
        .index_select(&Tensor::new(&[0u32, 0, 0], &Device::Cpu).unwrap(), 0)
        .unwrap();
    let tokens_r = ids(&[&[3, 7, 5, 1], &[3, 7, 9, 2], &[3, 7, 9, 3]]);
    let enc_r = EncoderStates {
        hidden_states: &image_r,
        attention_mask: None,
    };
    let full = model.forward(&tokens_r, None, Some(enc_r), false).unwrap();
    let want = full.narrow(1, 3, 1).unwrap().squeeze(1).unwrap();
    let d = rel_diff(&got, &want);
    assert!(d < 1e-5, "relative diff {d}");
}

#[test]
fn rows_of_two_images_gather_once_and_check_the_row_index() {
    let model = frozen_decoder();
    let image = rand(&[2, 4, 12], 6);
    let enc = EncoderStates {
        hidden_states: &image,
        attention_mask: None,
    };
    let mut cache = model.new_cache(Some(enc)).unwrap();
    model.step(&ids(&[&[3], &[4]]), &mut cache).unwrap();
    let expand = Tensor::new(&[0u32, 0, 1, 1], &Device::Cpu).unwrap();
    cache.select_rows(&expand).unwrap();
    assert_eq!(cache.row_images(), &[0, 0, 1, 1]);
    // Reordering within each image's beams keeps the gathered keys as they are.
    let before = cache.cross[1].get().unwrap().0.clone();
    let within = Tensor::new(&[1u32, 0, 3, 2], &Device::Cpu).unwrap();
    cache.select_rows(&within).unwrap();
    let after = cache.cross[1].get().unwrap().0;
    assert_eq!(before.id(), after.id());
    let err = cache
        .select_rows(&Tensor::new(&[4u32], &Device::Cpu).unwrap())
        .unwrap_err();
    assert!(err.to_string().contains("row 4"), "{err}");
}

/// Rows that join a running batch (left-padded, masked, at their own positions) and
/// rows that leave it give every row the logits it has when decoded alone.
#[test]
fn rows_joining_and_leaving_a_running_batch_keep_their_logits() {
    let (_vm, model) = tiny_decoder();
    let images = rand(&[3, 4, 12], 5);
    let image = |i: usize| images.narrow(0, i, 1).unwrap();
    let seqs: [&[u32]; 3] = [&[3, 7, 9, 11, 2, 40, 8], &[5, 1, 8, 30, 31], &[6, 6, 2, 4]];
    // Each row alone: logits after every prefix.
    let alone = |i: usize| -> Vec<Tensor> {
        let img = image(i);
        let enc = EncoderStates {
            hidden_states: &img,
            attention_mask: None,
        };
        let mut cache = model.new_cache(Some(enc)).unwrap();
        let s = seqs[i];
        let mut out = vec![model.step(&ids(&[&s[..2]]), &mut cache).unwrap()];
        for t in 2..s.len() {
            out.push(model.step(&ids(&[&s[t..t + 1]]), &mut cache).unwrap());
        }
        out
    };
    let want: Vec<Vec<Tensor>> = (0..3).map(alone).collect();

    // Row 0 starts; after two of its steps rows 1 and 2 join (prefilled on their own);
    // row 0 then leaves, and rows 1 and 2 go on.
    let new = |rows: &[usize]| {
        let img = Tensor::cat(&rows.iter().map(|&i| image(i)).collect::<Vec<_>>(), 0).unwrap();
        let enc = EncoderStates {
            hidden_states: &img,
            attention_mask: None,
        };
        model.new_cache(Some(enc)).unwrap()
    };
    let mut cache = new(&[0]);
    model.step(&ids(&[&seqs[0][..2]]), &mut cache).unwrap();
    model.step(&ids(&[&seqs[0][2..3]]), &mut cache).unwrap();
    let got0 = model.step(&ids(&[&seqs[0][3..4]]), &mut cache).unwrap();
    assert!(rel_diff(&got0, &want[0][2]) < 1e-5);
    let mut joining = new(&[1, 2]);
    let first = model
        .step(&ids(&[&seqs[1][..2], &seqs[2][..2]]), &mut joining)
        .unwrap();
    assert!(rel_diff(&first.narrow(0, 0, 1).unwrap(), &want[1][0]) < 1e-5);
    cache.join(joining).unwrap();
    assert_eq!(cache.len(), 4);
    let step = model
        .step(
            &ids(&[&seqs[0][4..5], &seqs[1][2..3], &seqs[2][2..3]]),
            &mut cache,
        )
        .unwrap();
    for (row, (seq, at)) in [(0, 3), (1, 1), (2, 1)].into_iter().enumerate() {
        let d = rel_diff(&step.narrow(0, row, 1).unwrap(), &want[seq][at]);
        assert!(d < 1e-5, "row {row}: relative diff {d}");
    }
    // Row 0 leaves: the padding columns nobody attends to go with it.
    cache
        .select_rows(&Tensor::new(&[1u32, 2], &Device::Cpu).unwrap())
        .unwrap();
    assert_eq!(cache.len(), 3);
    assert_eq!(cache.row_images(), &[1, 2]);
    let step = model
        .step(&ids(&[&seqs[1][3..4], &seqs[2][3..4]]), &mut cache)
        .unwrap();
    for (row, seq) in [1, 2].into_iter().enumerate() {
        let d = rel_diff(&step.narrow(0, row, 1).unwrap(), &want[seq][2]);
        assert!(d < 1e-5, "row {row}: relative diff {d}");
    }
    // A row joins a batch that still holds images no row reads: they are dropped.
    cache
        .select_rows(&Tensor::new(&[1u32], &Device::Cpu).unwrap())
        .unwrap();
    let mut again = new(&[0]);
    model.step(&ids(&[&seqs[0][..2]]), &mut again).unwrap();
    cache.join(again).unwrap();
    assert_eq!(cache.row_images(), &[0, 1]);
}
