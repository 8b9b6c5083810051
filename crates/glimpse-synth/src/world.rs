//! The world model: a scene's objects and background, drawn from per-sample RNG
//! streams, and the relations between objects.
//!
//! Every sample is a pure function of `(seed, index)`: its scene, its rendering and
//! its captions come from RNG streams derived from those two numbers alone, so the
//! output does not depend on the shard size, the split fractions or the order in
//! which samples are produced.

use glimpse_data::rng::SplitMix64;
use serde::{Deserialize, Serialize};

use crate::vocab::{COLORS, POSITIONS, SHAPES, SIZES};

/// Version of the generator; recorded in the manifest and bumped whenever the same
/// `(seed, index)` would produce different bytes.
pub const GENERATOR_VERSION: u32 = 2;

/// Independent RNG streams of one sample.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stream {
    Scene = 1,
    Noise = 2,
    Split = 3,
    Text = 4,
}

impl Stream {
    /// This stream of sample `index` under `seed`.
    pub(crate) fn rng(self, seed: u64, index: u64) -> SplitMix64 {
        SplitMix64::salted(0x6a09_e667_f3bc_c908, seed, index, self as u64)
    }
}

/// An index drawn with the given integer weights (percentages, say).
fn weighted(rng: &mut SplitMix64, weights: &[u32]) -> usize {
    let total: u32 = weights.iter().sum();
    let mut x = rng.below_from_high_bits(total as usize) as u32;
    for (i, &w) in weights.iter().enumerate() {
        if x < w {
            return i;
        }
        x -= w;
    }
    weights.len() - 1
}

/// What a group of identical objects looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Kind {
    pub shape: usize,
    pub color: usize,
    pub size: usize,
}

/// One object of a scene: its kind and its grid cell, plus a sub-cell jitter.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Object {
    pub kind: Kind,
    pub cell: usize,
    /// Offset of the centre from the cell centre, as a fraction of the free room.
    pub jitter: (f32, f32),
}

/// A group of `count` identical objects, as captions describe them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Group {
    pub kind: Kind,
    pub count: usize,
}

/// A sampled scene: objects (grouped by kind, groups in order) and background.
#[derive(Debug, Clone)]
pub(crate) struct Scene {
    pub groups: Vec<Group>,
    pub objects: Vec<Object>,
    pub bg_color: usize,
    pub bg_style: usize,
    /// Seed for background texture (noise style).
    pub bg_seed: u64,
}

impl Scene {
    pub fn count(&self) -> usize {
        self.objects.len()
    }
}

/// Draws a scene. Counts are mostly 1 and 2; a scene is one of: a single object, two
/// different objects, a same-kind group of 2–4, or a mix of 3–4 in 2–3 kinds.
pub(crate) fn sample_scene(rng: &mut SplitMix64) -> Scene {
    // Total count: 1: 40%, 2: 35%, 3: 15%, 4: 10%.
    let total = 1 + weighted(rng, &[40, 35, 15, 10]);
    let group_counts: Vec<usize> = match total {
        1 => vec![1],
        2 => {
            if rng.below_from_high_bits(10) < 6 {
                vec![1, 1]
            } else {
                vec![2]
            }
        }
        3 => match weighted(rng, &[40, 35, 25]) {
            0 => vec![3],
            1 => vec![2, 1],
            _ => vec![1, 1, 1],
        },
        _ => match weighted(rng, &[40, 20, 15, 25]) {
            0 => vec![4],
            1 => vec![3, 1],
            2 => vec![2, 2],
            _ => vec![2, 1, 1],
        },
    };
    // Distinct kinds (shape and colour pair differ between groups).
    let mut groups: Vec<Group> = Vec::new();
    while groups.len() < group_counts.len() {
        let kind = Kind {
            shape: rng.below_from_high_bits(SHAPES.len()),
            color: rng.below_from_high_bits(COLORS.len()),
            size: rng.below_from_high_bits(SIZES.len()),
        };
        if groups
            .iter()
            .any(|g| g.kind.shape == kind.shape && g.kind.color == kind.color)
        {
            continue;
        }
        groups.push(Group {
            kind,
            count: group_counts[groups.len()],
        });
    }
    let mut cells: Vec<usize> = (0..POSITIONS.len()).collect();
    rng.shuffle(&mut cells);
    let mut objects = Vec::with_capacity(total);
    for g in &groups {
        for _ in 0..g.count {
            let cell = cells[objects.len()];
            let jitter = (rng.unit() as f32 * 2.0 - 1.0, rng.unit() as f32 * 2.0 - 1.0);
            objects.push(Object {
                kind: g.kind,
                cell,
                jitter,
            });
        }
    }
    // Background: never the colour of an object.
    let bg_color = loop {
        let c = rng.below_from_high_bits(COLORS.len());
        if !groups.iter().any(|g| g.kind.color == c) {
            break c;
        }
    };
    let bg_style = weighted(rng, &[40, 25, 20, 15]);
    let bg_seed = rng.next_u64();
    Scene {
        groups,
        objects,
        bg_color,
        bg_style,
        bg_seed,
    }
}

/// Relations between objects `i < j` from their grid cells.
pub(crate) fn relations_between(a: &Object, b: &Object) -> Vec<&'static str> {
    let (ra, ca) = (a.cell / 3, a.cell % 3);
    let (rb, cb) = (b.cell / 3, b.cell % 3);
    let mut out = Vec::new();
    if ca < cb {
        out.push("left of");
    } else if ca > cb {
        out.push("right of");
    }
    if ra < rb {
        out.push("above");
    } else if ra > rb {
        out.push("below");
    }
    out
}

/// A relation stated in the record: `objects[subject] RELATION objects[object]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelationRecord {
    pub subject: usize,
    pub relation: String,
    pub object: usize,
}
