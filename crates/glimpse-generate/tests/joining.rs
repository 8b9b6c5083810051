//! Rows that join and leave a running batch decode exactly as they do alone.

mod common;

use std::collections::BTreeMap;

use common::{prompt_tensor, Toy, ToyCache};
use glimpse_generate::{generate, generate_joining, Decoder, GenerationConfig, Joining, Rows};

/// The toy cache keeps each row's own prefix, so joining is concatenating rows.
struct Joinable(Toy);

impl Decoder for Joinable {
    type Cache = ToyCache;

    fn step(
        &self,
        input_ids: &candle_core::Tensor,
        cache: &mut ToyCache,
    ) -> candle_core::Result<candle_core::Tensor> {
        self.0.step(input_ids, cache)
    }

    fn select_rows(
        &self,
        cache: &mut ToyCache,
        rows: &candle_core::Tensor,
    ) -> candle_core::Result<()> {
        self.0.select_rows(cache, rows)
    }

    fn join(&self, cache: &mut ToyCache, other: ToyCache) -> candle_core::Result<()> {
        cache.prefixes.extend(other.prefixes);
        cache.states.extend(other.states);
        Ok(())
    }
}

/// Hands over one prompt per call, after a given number of calls each.
struct Arrivals {
    pending: Vec<(usize, u64, Vec<u32>)>,
    calls: usize,
    tokens: BTreeMap<u64, Vec<u32>>,
    finished: BTreeMap<u64, Vec<u32>>,
    running: Vec<usize>,
    hang_up: Option<(u64, usize)>,
    /// Each row's own seed (`base + tag`) instead of the config's.
    seeds: Option<u64>,
    /// A row with its own, lower limit on new tokens.
    short: Option<(u64, usize)>,
}

impl Rows<ToyCache> for Arrivals {
    fn admit(&mut self, running: usize) -> Option<Joining<ToyCache>> {
        self.running.push(running);
        self.calls += 1;
        let now: Vec<_> = self
            .pending
            .iter()
            .filter(|(at, _, _)| *at == self.calls)
            .cloned()
            .collect();
        if now.is_empty() {
            return None;
        }
        // One group shares a prompt length; tests give same-length prompts per call.
        let rows: Vec<Vec<u32>> = now.iter().map(|(_, _, p)| p.clone()).collect();
        Some(Joining {
            cache: ToyCache::default(),
            prompt_ids: prompt_tensor(&rows),
            tags: now.iter().map(|(_, t, _)| *t).collect(),
        })
    }

    fn token(&mut self, tag: u64, token: u32) -> bool {
        let seen = self.tokens.entry(tag).or_default();
        seen.push(token);
        !matches!(self.hang_up, Some((t, n)) if t == tag && seen.len() >= n)
    }

    fn max_new_tokens(&self, tag: u64) -> Option<usize> {
        self.short.filter(|(t, _)| *t == tag).map(|(_, n)| n)
    }

    fn seed(&self, tag: u64) -> Option<u64> {
        self.seeds.map(|base| base + tag)
    }

    fn finished(&mut self, tag: u64, ids: Vec<u32>) {
        assert!(
            self.finished.insert(tag, ids).is_none(),
            "row {tag} ended twice"
        );
    }
}

fn alone(model: &Joinable, prompt: &[u32], cfg: &GenerationConfig, tag: u64) -> Vec<u32> {
    // A row alone with the seed a joining row of that tag uses (row index = tag).
    let mut rows = vec![prompt.to_vec(); tag as usize + 1];
    rows[tag as usize] = prompt.to_vec();
    let mut cache = ToyCache::default();
    let out = generate(model, &mut cache, &prompt_tensor(&rows), cfg).unwrap();
    out[tag as usize].clone()
}

fn check(cfg: GenerationConfig) {
    let model = Joinable(Toy {
        eos: vec![0],
        eos_bias: 2.0,
    });
    let prompts: Vec<Vec<u32>> = vec![vec![5, 9], vec![7, 1], vec![3, 3, 4], vec![11, 2, 8]];
    let mut arrivals = Arrivals {
        pending: vec![
            (2, 1, prompts[1].clone()),
            (4, 2, prompts[2].clone()),
            (4, 3, prompts[3].clone()),
        ],
        calls: 0,
        tokens: BTreeMap::new(),
        finished: BTreeMap::new(),
        running: Vec::new(),
        hang_up: None,
        seeds: None,
        short: None,
    };
    let first = Joining {
        cache: ToyCache::default(),
        prompt_ids: prompt_tensor(&prompts[..1]),
        tags: vec![0],
    };
    generate_joining(&model, first, &cfg, &mut arrivals).unwrap();
    assert_eq!(arrivals.finished.len(), 4);
    for (tag, prompt) in prompts.iter().enumerate() {
        let want = alone(&model, prompt, &cfg, tag as u64);
        assert_eq!(arrivals.finished[&(tag as u64)], want, "row {tag}");
        assert_eq!(arrivals.tokens[&(tag as u64)], want, "row {tag} streamed");
    }
    // Rows really shared the batch: three were running at once at some point.
    assert!(
        arrivals.running.iter().any(|&r| r >= 3),
        "{:?}",
        arrivals.running
    );
}

#[test]
fn greedy_rows_joining_later_decode_as_alone() {
    check(GenerationConfig {
        max_new_tokens: 12,
        eos_token_ids: vec![0],
        repetition_penalty: 1.3,
        min_new_tokens: 2,
        ..GenerationConfig::default()
    });
}

#[test]
fn sampled_rows_joining_later_draw_their_own_streams() {
    check(GenerationConfig {
        max_new_tokens: 12,
        eos_token_ids: vec![0],
        do_sample: true,
        top_p: 0.9,
        temperature: 0.8,
        seed: 7,
        ..GenerationConfig::default()
    });
}

#[test]
fn a_row_whose_client_leaves_ends_and_the_others_go_on() {
    let model = Joinable(Toy {
        eos: vec![0],
        eos_bias: -10.0,
    });
    let cfg = GenerationConfig {
        max_new_tokens: 6,
        eos_token_ids: vec![0],
        ..GenerationConfig::default()
    };
    let mut arrivals = Arrivals {
        pending: vec![(1, 1, vec![4, 4])],
        calls: 0,
        tokens: BTreeMap::new(),
        finished: BTreeMap::new(),
        running: Vec::new(),
        hang_up: Some((0, 2)),
        seeds: None,
        short: None,
    };
    let first = Joining {
        cache: ToyCache::default(),
        prompt_ids: prompt_tensor(&[vec![5, 9]]),
        tags: vec![0],
    };
    generate_joining(&model, first, &cfg, &mut arrivals).unwrap();
    assert_eq!(arrivals.finished[&0].len(), 2);
    assert_eq!(arrivals.finished[&1].len(), 6);
}

#[test]
fn beams_cannot_join() {
    let model = Joinable(Toy {
        eos: vec![0],
        eos_bias: 0.0,
    });
    let cfg = GenerationConfig {
        num_beams: 2,
        eos_token_ids: vec![0],
        ..GenerationConfig::default()
    };
    let first = Joining {
        cache: ToyCache::default(),
        prompt_ids: prompt_tensor(&[vec![1]]),
        tags: vec![0],
    };
    let mut arrivals = Arrivals {
        pending: vec![],
        calls: 0,
        tokens: BTreeMap::new(),
        finished: BTreeMap::new(),
        running: Vec::new(),
        hang_up: None,
        seeds: None,
        short: None,
    };
    let err = generate_joining(&model, first, &cfg, &mut arrivals).unwrap_err();
    assert!(err.to_string().contains("num_beams"), "{err}");
}

#[test]
fn rows_with_their_own_seeds_limits_and_prompt_lengths_sample_as_alone() {
    let model = Joinable(Toy {
        eos: vec![0],
        eos_bias: 2.0,
    });
    let cfg = GenerationConfig {
        max_new_tokens: 12,
        eos_token_ids: vec![0],
        do_sample: true,
        top_p: 0.9,
        temperature: 0.8,
        seed: 7,
        ..GenerationConfig::default()
    };
    let prompts: Vec<Vec<u32>> = vec![vec![5, 9], vec![7, 1, 6, 2], vec![3]];
    // Tags 1 and 2 are due at the second and third call: the second call's group makes
    // the source be asked again at once, so both join after the same step.
    let mut arrivals = Arrivals {
        pending: vec![(2, 1, prompts[1].clone()), (3, 2, prompts[2].clone())],
        calls: 0,
        tokens: BTreeMap::new(),
        finished: BTreeMap::new(),
        running: Vec::new(),
        hang_up: None,
        seeds: Some(40),
        short: Some((2, 3)),
    };
    let first = Joining {
        cache: ToyCache::default(),
        prompt_ids: prompt_tensor(&prompts[..1]),
        tags: vec![0],
    };
    generate_joining(&model, first, &cfg, &mut arrivals).unwrap();
    assert_eq!(arrivals.running[..3], [1, 1, 2], "{:?}", arrivals.running);
    for (tag, prompt) in prompts.iter().enumerate() {
        let own = GenerationConfig {
            seed: 40 + tag as u64,
            max_new_tokens: if tag == 2 { 3 } else { cfg.max_new_tokens },
            ..cfg.clone()
        };
        let mut cache = ToyCache::default();
        let want = generate(
            &model,
            &mut cache,
            &prompt_tensor(std::slice::from_ref(prompt)),
            &own,
        )
        .unwrap()
        .remove(0);
        assert_eq!(arrivals.finished[&(tag as u64)], want, "row {tag}");
    }
}
