//! The toy language model of `tools/make_generate_fixtures.py`, as a [`Decoder`]:
//! logits are a pure function of the whole prefix, folded into a 64-bit state with
//! splitmix64; every logit is a 20-bit dyadic number, exact in f32, so Rust and
//! the reference see bit-identical logits.

#![allow(dead_code)]

use candle_core::{Device, Result, Tensor};
use glimpse_generate::Decoder;

pub const STATE0: u64 = 0x243F_6A88_85A3_08D3;
pub const VOCAB: usize = 48;

pub fn mix(x: u64) -> u64 {
    let x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    let x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

pub struct Toy {
    pub eos: Vec<u32>,
    pub eos_bias: f32,
}

/// Per row: the prefix seen so far (kept so tests can check beam reordering) and
/// its folded state.
#[derive(Default, Clone)]
pub struct ToyCache {
    pub prefixes: Vec<Vec<u32>>,
    pub states: Vec<u64>,
    pub steps: usize,
}

impl Toy {
    pub fn logits_of_state(&self, state: u64) -> Vec<f32> {
        let mut row: Vec<f32> = (0..VOCAB as u64)
            .map(|v| {
                let bits = (mix(state.wrapping_add(v + 1)) >> 44) as i64;
                (bits - (1 << 19)) as f32 / 65536.0
            })
            .collect();
        for &e in &self.eos {
            row[e as usize] += self.eos_bias;
        }
        row
    }

    pub fn logits_of(&self, prefix: &[u32]) -> Vec<f32> {
        let state = prefix.iter().fold(STATE0, |s, &t| mix(s ^ u64::from(t)));
        self.logits_of_state(state)
    }
}

impl Decoder for Toy {
    type Cache = ToyCache;

    fn step(&self, input_ids: &Tensor, cache: &mut ToyCache) -> Result<Tensor> {
        let ids = input_ids.to_vec2::<u32>()?;
        if cache.prefixes.is_empty() {
            cache.prefixes = vec![Vec::new(); ids.len()];
            cache.states = vec![STATE0; ids.len()];
        }
        if cache.prefixes.len() != ids.len() {
            candle_core::bail!(
                "cache has {} rows, input {}",
                cache.prefixes.len(),
                ids.len()
            );
        }
        cache.steps += 1;
        let mut out = Vec::with_capacity(ids.len() * VOCAB);
        for (r, row) in ids.iter().enumerate() {
            for &t in row {
                cache.states[r] = mix(cache.states[r] ^ u64::from(t));
                cache.prefixes[r].push(t);
            }
            out.extend(self.logits_of_state(cache.states[r]));
        }
        Tensor::from_vec(out, (ids.len(), VOCAB), &Device::Cpu)
    }

    fn select_rows(&self, cache: &mut ToyCache, rows: &Tensor) -> Result<()> {
        let rows = rows.to_vec1::<u32>()?;
        cache.prefixes = rows
            .iter()
            .map(|&r| cache.prefixes[r as usize].clone())
            .collect();
        cache.states = rows.iter().map(|&r| cache.states[r as usize]).collect();
        Ok(())
    }
}

pub fn prompt_tensor(rows: &[Vec<u32>]) -> Tensor {
    let t = rows[0].len();
    let flat: Vec<u32> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (rows.len(), t), &Device::Cpu).unwrap()
}
