//! The world model: vocabularies, a small deterministic RNG, and scene sampling.
//!
//! Every sample is a pure function of `(seed, index)`: its scene, its rendering and
//! its captions come from RNG streams derived from those two numbers alone, so the
//! output does not depend on the shard size, the split fractions or the order in
//! which samples are produced.

use serde::{Deserialize, Serialize};

/// Shapes, in vocabulary order (singular, plural).
pub const SHAPES: [(&str, &str); 7] = [
    ("circle", "circles"),
    ("square", "squares"),
    ("triangle", "triangles"),
    ("star", "stars"),
    ("cross", "crosses"),
    ("diamond", "diamonds"),
    ("heart", "hearts"),
];

/// Colours with their RGB values; chosen far apart from each other.
pub const COLORS: [(&str, [u8; 3]); 10] = [
    ("red", [220, 30, 30]),
    ("green", [30, 160, 50]),
    ("blue", [30, 70, 225]),
    ("yellow", [245, 225, 30]),
    ("orange", [245, 135, 20]),
    ("purple", [135, 45, 185]),
    ("pink", [250, 130, 200]),
    ("cyan", [40, 210, 225]),
    ("white", [250, 250, 250]),
    ("black", [15, 15, 15]),
];

/// Sizes, smallest first, with the object radius as a fraction of a grid cell.
pub const SIZES: [(&str, f32); 3] = [("small", 0.26), ("medium", 0.36), ("large", 0.46)];

/// The 3x3 grid, row-major: index = row * 3 + column.
pub const POSITIONS: [&str; 9] = [
    "top left",
    "top center",
    "top right",
    "middle left",
    "center",
    "middle right",
    "bottom left",
    "bottom center",
    "bottom right",
];

/// Spatial relations between two objects ("subject RELATION object").
pub const RELATIONS: [&str; 4] = ["left of", "right of", "above", "below"];

/// Background styles; all are shades of one named colour.
pub const BACKGROUND_STYLES: [&str; 4] = ["solid", "gradient", "checker", "noise"];

/// Caption corruption kinds, chosen evenly when a caption is corrupted.
pub const CORRUPTIONS: [&str; 5] = [
    "wrong_color",
    "wrong_shape",
    "wrong_count",
    "unrelated",
    "truncated",
];

/// Number words for counts 0..=4.
pub const NUMBER_WORDS: [&str; 5] = ["zero", "one", "two", "three", "four"];

/// Version of the generator; recorded in the manifest and bumped whenever the same
/// `(seed, index)` would produce different bytes.
pub const GENERATOR_VERSION: u32 = 2;

/// SplitMix64: tiny, fast, and fixed forever (unlike library RNGs whose streams may
/// change between versions), which is what byte-identical datasets need.
#[derive(Debug, Clone)]
pub struct Rng(u64);

/// Independent RNG streams of one sample.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stream {
    Scene = 1,
    Noise = 2,
    Split = 3,
    Text = 4,
}

impl Rng {
    pub fn new(state: u64) -> Self {
        Rng(state)
    }

    /// The RNG of stream `stream` of sample `index` under `seed`.
    pub(crate) fn for_sample(seed: u64, index: u64, stream: Stream) -> Self {
        let mut r = Rng(seed ^ 0x6a09_e667_f3bc_c908);
        let a = r.next_u64();
        let mut r = Rng(a ^ index.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        let b = r.next_u64();
        Rng(b ^ (stream as u64).wrapping_mul(0xbf58_476d_1ce4_e5b9))
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in 0..n (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() >> 32) * n as u64 >> 32) as usize
    }

    /// Index drawn with the given weights.
    pub fn weighted(&mut self, weights: &[u32]) -> usize {
        let total: u32 = weights.iter().sum();
        let mut x = self.below(total as usize) as u32;
        for (i, &w) in weights.iter().enumerate() {
            if x < w {
                return i;
            }
            x -= w;
        }
        weights.len() - 1
    }

    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
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
pub(crate) fn sample_scene(rng: &mut Rng) -> Scene {
    // Total count: 1: 40%, 2: 35%, 3: 15%, 4: 10%.
    let total = 1 + rng.weighted(&[40, 35, 15, 10]);
    let group_counts: Vec<usize> = match total {
        1 => vec![1],
        2 => {
            if rng.below(10) < 6 {
                vec![1, 1]
            } else {
                vec![2]
            }
        }
        3 => match rng.weighted(&[40, 35, 25]) {
            0 => vec![3],
            1 => vec![2, 1],
            _ => vec![1, 1, 1],
        },
        _ => match rng.weighted(&[40, 20, 15, 25]) {
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
            shape: rng.below(SHAPES.len()),
            color: rng.below(COLORS.len()),
            size: rng.below(SIZES.len()),
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
        let c = rng.below(COLORS.len());
        if !groups.iter().any(|g| g.kind.color == c) {
            break c;
        }
    };
    let bg_style = rng.weighted(&[40, 25, 20, 15]);
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
