//! Supervised pretraining of a vision tower on attribute records: the step BLIP takes
//! with an ImageNet-trained ViT, made from the synthetic world's ground truth.
//!
//! A ViT trained from scratch inside BLIP or CLIP learns colours, backgrounds and
//! layout first and shapes hardly at all within a short run, while the same tower
//! trained on shape labels learns them in a few hundred updates. This module trains
//! `vision_model` (in the BLIP or the CLIP layout, with the names of their
//! checkpoints) plus a linear `attribute_head` on the pooled class token to predict,
//! for every cell of the 3×3 grid, the shape, colour and size of the object there (or
//! none), and the background colour. A BLIP or CLIP recipe then starts its tower from
//! the result with `model.init_vision`.
//!
//! The CLIP tower leaves its patch tokens unnormalised (its `post_layernorm` sees only
//! the class token), so the head normalises each patch token (`token_norm`) before the
//! cells pool them, as the BLIP tower's own `post_layernorm` does.
//!
//! The targets come from records in the synthetic world's format (`objects: [{shape,
//! color, size, position}]`, `background: {color}`); a sample without such a record,
//! or with a name outside the world's vocabulary, is skipped and counted.
//! [`AttributesObjective`] trains the tower in the loop of [`crate::trainer`].

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Linear, Module, VarMap};
use glimpse_data::dataset::Example;
use glimpse_models::blip::BlipConfig;
use glimpse_models::clip::ClipConfig;
use glimpse_nn::layers::LayerNorm;
use glimpse_nn::vit::{VisionTransformer, VitConfig};
use glimpse_synth::vocab::{COLORS, POSITIONS, SHAPES, SIZES};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::losses::cross_entropy;
use crate::objective::{scalar, Losses, Objective, Split, Step};
use crate::params::{init_weights, SharedVars};
use crate::recipe::Recipe;
use crate::samples::Inputs;
use crate::{Error, Result};

/// Which checkpoint layout the tower has, so its weights fit that model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tower {
    /// BLIP's ViT (fused `qkv`, no `pre_layrnorm`).
    #[default]
    Blip,
    /// CLIP's ViT (`q_proj`/`k_proj`/`v_proj`, `pre_layrnorm`).
    Clip,
}

/// One softmax of a head: a named attribute and its classes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub name: String,
    pub classes: Vec<String>,
}

/// What the heads predict. The cell head reads the mean of each grid cell's patch
/// tokens and predicts, per cell (row-major), the shape, colour and size there, each
/// with a leading `none` class. The image head reads the pooled class token and
/// predicts the background colour and, per shape, whether one is present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttributeSpace {
    /// Per cell, in this order.
    pub cell: Vec<Group>,
    /// Once per image.
    pub image: Vec<Group>,
}

/// The attributes predicted per cell, in group order.
const CELL_ATTRIBUTES: [&str; 3] = ["shape", "color", "size"];
/// The world's grid is `GRID × GRID` cells.
const GRID: usize = 3;

fn width(groups: &[Group]) -> usize {
    groups.iter().map(|g| g.classes.len()).sum()
}

impl AttributeSpace {
    /// The synthetic world's vocabulary.
    pub fn synth() -> Self {
        let with_none = |names: Vec<&str>| -> Vec<String> {
            std::iter::once("none")
                .chain(names)
                .map(String::from)
                .collect()
        };
        let cell = vec![
            Group {
                name: "shape".into(),
                classes: with_none(SHAPES.iter().map(|s| s.0).collect()),
            },
            Group {
                name: "color".into(),
                classes: with_none(COLORS.iter().map(|c| c.0).collect()),
            },
            Group {
                name: "size".into(),
                classes: with_none(SIZES.iter().map(|s| s.0).collect()),
            },
        ];
        let mut image = vec![Group {
            name: "background".into(),
            classes: COLORS.iter().map(|c| c.0.to_string()).collect(),
        }];
        for (shape, _) in SHAPES {
            image.push(Group {
                name: format!("has {shape}"),
                classes: vec!["no".into(), "yes".into()],
            });
        }
        Self { cell, image }
    }

    /// Targets per image: `cells() * cell.len()` cell targets, then the image targets.
    pub fn targets_per_image(&self) -> usize {
        POSITIONS.len() * self.cell.len() + self.image.len()
    }

    /// The class index of every target for `meta` (layout of
    /// [`Self::targets_per_image`]), or why there is none.
    pub fn targets(&self, meta: &Value) -> std::result::Result<Vec<u32>, String> {
        let objects = meta
            .get("objects")
            .and_then(|o| o.as_array())
            .ok_or("no `objects` list")?;
        let bg = meta
            .get("background")
            .and_then(|b| b.get("color"))
            .and_then(|c| c.as_str())
            .ok_or("no `background.color`")?;
        let k = self.cell.len();
        let mut out = vec![0u32; self.targets_per_image()];
        for o in objects {
            let field = |name: &str| -> std::result::Result<&str, String> {
                o.get(name)
                    .and_then(|v| v.as_str())
                    .ok_or_else(|| format!("an object without `{name}`"))
            };
            let pos = field("position")?;
            let cell = POSITIONS
                .iter()
                .position(|p| *p == pos)
                .ok_or_else(|| format!("unknown position {pos:?}"))?;
            for (a, attr) in CELL_ATTRIBUTES.iter().enumerate() {
                let value = field(attr)?;
                let class = self.cell[a]
                    .classes
                    .iter()
                    .position(|c| c == value)
                    .filter(|&i| i > 0)
                    .ok_or_else(|| format!("unknown {attr} {value:?}"))?;
                out[cell * k + a] = class as u32;
            }
        }
        let base = POSITIONS.len() * k;
        out[base] = self.image[0]
            .classes
            .iter()
            .position(|c| c == bg)
            .ok_or_else(|| format!("unknown background colour {bg:?}"))? as u32;
        for (s, _) in SHAPES.iter().enumerate() {
            let present = (0..POSITIONS.len()).any(|c| out[c * k] == s as u32 + 1);
            out[base + 1 + s] = u32::from(present);
        }
        Ok(out)
    }
}

/// A vision tower with the attribute heads, on trainable variables named as in the
/// BLIP or CLIP checkpoint (`vision_model.*`) plus `attribute_head.*`.
pub struct VisionAttributesTrain {
    pub vars: SharedVars,
    pub vit: VisionTransformer,
    /// CLIP tower only: normalises each patch token before the cells pool them, as the
    /// BLIP tower's `post_layernorm` does inside the tower (CLIP applies its own only
    /// to the class token).
    pub token_norm: Option<LayerNorm>,
    /// Normalises each cell's mean patch token.
    pub cell_norm: LayerNorm,
    pub cell_head: Linear,
    pub image_head: Linear,
    pub space: AttributeSpace,
    pub tower: Tower,
    /// Patches per grid cell along each side.
    cell_patches: usize,
}

/// The heads' outputs.
pub struct AttributeLogits {
    /// `[B, cells, cell width]`
    pub cell: Tensor,
    /// `[B, image width]`
    pub image: Tensor,
}

/// Accuracy counts over a set of images.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AttributeCounts {
    /// Occupied cells, and how many of them got shape / colour / size right.
    pub objects: usize,
    pub shape: usize,
    pub color: usize,
    pub size: usize,
    /// Empty cells, and how many were predicted empty (shape `none`).
    pub empty: usize,
    pub empty_right: usize,
    pub images: usize,
    pub background: usize,
    /// Shape-presence answers (images × shapes) right.
    pub presence: usize,
    /// Images whose every target is right.
    pub exact: usize,
}

impl AttributeCounts {
    pub fn add(&mut self, other: &AttributeCounts) {
        self.objects += other.objects;
        self.shape += other.shape;
        self.color += other.color;
        self.size += other.size;
        self.empty += other.empty;
        self.empty_right += other.empty_right;
        self.images += other.images;
        self.background += other.background;
        self.presence += other.presence;
        self.exact += other.exact;
    }

    /// Shares as JSON (`shape_acc` etc.).
    pub fn report(&self) -> Value {
        let r = |a: usize, n: usize| a as f64 / n.max(1) as f64;
        serde_json::json!({
            "images": self.images,
            "objects": self.objects,
            "shape_acc": r(self.shape, self.objects),
            "color_acc": r(self.color, self.objects),
            "size_acc": r(self.size, self.objects),
            "empty_acc": r(self.empty_right, self.empty),
            "background_acc": r(self.background, self.images),
            "presence_acc": r(self.presence, self.images * SHAPES.len()),
            "exact": r(self.exact, self.images),
        })
    }
}

fn identity(name: &str) -> String {
    name.to_string()
}

/// The vision tower's config in a full BLIP or CLIP `config.json`.
pub fn vit_config(tower: Tower, config: &Value) -> Result<VitConfig> {
    let bad = |e: String| Error::Train(format!("model/config.json: {e}"));
    Ok(match tower {
        Tower::Blip => {
            let cfg: BlipConfig =
                serde_json::from_value(config.clone()).map_err(|e| bad(e.to_string()))?;
            cfg.vision_config.vit().map_err(bad)?
        }
        Tower::Clip => {
            let cfg: ClipConfig =
                serde_json::from_value(config.clone()).map_err(|e| bad(e.to_string()))?;
            let cfg = cfg.resolved().map_err(|e| bad(e.to_string()))?;
            (&cfg.vision_config).into()
        }
    })
}

/// The mean over `groups` (laid side by side in the last axis of `logits`) of each
/// group's cross-entropy against the matching column of `targets`.
///
/// # Shapes
/// * `logits`: `[n, width(groups)]`, `targets`: `[n, groups]` u32 -> (sum of the group
///   losses, number of groups)
fn group_losses(logits: &Tensor, targets: &Tensor, groups: &[Group]) -> Result<Tensor> {
    let mut total: Option<Tensor> = None;
    let mut off = 0;
    for (g, group) in groups.iter().enumerate() {
        let n = group.classes.len();
        let l = cross_entropy(
            &logits.narrow(D::Minus1, off, n)?,
            &targets.narrow(1, g, 1)?.squeeze(1)?.contiguous()?,
        )?;
        total = Some(match total {
            None => l,
            Some(t) => (t + l)?,
        });
        off += n;
    }
    total.ok_or_else(|| Error::Train("no attribute groups".into()))
}

/// Every group's argmax, group-major: `out[g][row]`.
fn group_argmax(logits: &Tensor, groups: &[Group]) -> Result<Vec<Vec<u32>>> {
    let mut out = Vec::new();
    let mut off = 0;
    for group in groups {
        let n = group.classes.len();
        out.push(
            logits
                .narrow(D::Minus1, off, n)?
                .argmax(D::Minus1)?
                .to_dtype(DType::U32)?
                .to_vec1::<u32>()?,
        );
        off += n;
    }
    Ok(out)
}

impl VisionAttributesTrain {
    /// Fresh variables (initialise or load them afterwards).
    pub fn new(tower: Tower, config: &Value, device: &Device) -> Result<Self> {
        let vit_cfg = vit_config(tower, config)?;
        let g = vit_cfg.image_size / vit_cfg.patch_size;
        if g % GRID != 0 {
            return Err(Error::Train(format!(
                "model/config.json: the {g}x{g} patch grid (image_size {} / patch_size {}) does not split into the world's {GRID}x{GRID} cells",
                vit_cfg.image_size, vit_cfg.patch_size
            )));
        }
        let space = AttributeSpace::synth();
        let vars = SharedVars::new(VarMap::new(), identity);
        let vb = vars.var_builder(device);
        let vit = VisionTransformer::new(&vit_cfg, vb.pp("vision_model"))?;
        let d = vit_cfg.hidden_size;
        let hb = vb.pp("attribute_head");
        let token_norm = match tower {
            Tower::Clip => Some(glimpse_nn::layers::layer_norm(
                d,
                vit_cfg.layer_norm_eps,
                hb.pp("token_norm"),
            )?),
            Tower::Blip => None,
        };
        Ok(Self {
            vars,
            vit,
            token_norm,
            cell_norm: glimpse_nn::layers::layer_norm(d, 1e-5, hb.pp("cell_norm"))?,
            cell_head: candle_nn::linear(d, width(&space.cell), hb.pp("cell"))?,
            image_head: candle_nn::linear(d, width(&space.image), hb.pp("image"))?,
            space,
            tower,
            cell_patches: g / GRID,
        })
    }

    /// # Shapes
    /// * `pixel_values`: `[B, 3, S, S]`
    pub fn logits(&self, pixel_values: &Tensor, train: bool) -> Result<AttributeLogits> {
        let out = self.vit.forward(pixel_values, false, train)?;
        let h = out.last_hidden_state; // [B, 1 + g*g, d]
        let (b, n, d) = h.dims3()?;
        let (c, g) = (self.cell_patches, GRID * self.cell_patches);
        let patches = h.narrow(1, 1, n - 1)?; // [B, g*g, d]
        let patches = match &self.token_norm {
            Some(ln) => ln.forward(&patches, train)?,
            None => patches,
        };
        let cells = patches
            .reshape((b, GRID, c, GRID, c, d))?
            .mean(4)?
            .mean(2)? // [B, GRID, GRID, d]
            .reshape((b, GRID * GRID, d))?;
        debug_assert_eq!(g * g, n - 1);
        let cells = self.cell_norm.forward(&cells, train)?;
        Ok(AttributeLogits {
            cell: self.cell_head.forward(&cells)?,
            image: self.image_head.forward(&out.pooler_output)?,
        })
    }

    /// The mean over every target (9 cells × cell groups, and the image groups) of its
    /// cross-entropy, and the logits.
    ///
    /// # Shapes
    /// * `targets`: `[B, targets_per_image]` u32
    pub fn loss(
        &self,
        pixel_values: &Tensor,
        targets: &Tensor,
        train: bool,
    ) -> Result<(Tensor, AttributeLogits)> {
        let logits = self.logits(pixel_values, train)?;
        let (b, cells, w) = logits.cell.dims3()?;
        let k = self.space.cell.len();
        let cell_targets = targets.narrow(1, 0, cells * k)?.reshape((b * cells, k))?;
        let image_targets = targets.narrow(1, cells * k, self.space.image.len())?;
        // Each cell group's loss is already the mean over the B × cells rows; weigh it
        // by `cells` so each cell counts as much as one image group.
        let cell = group_losses(
            &logits.cell.reshape((b * cells, w))?,
            &cell_targets,
            &self.space.cell,
        )?;
        let image = group_losses(&logits.image, &image_targets, &self.space.image)?;
        let n = (cells * k + self.space.image.len()) as f64;
        let total = (((cell * cells as f64)? + image)? / n)?;
        Ok((total, logits))
    }

    /// Counts right predictions of `logits` against `targets`.
    pub fn counts(&self, logits: &AttributeLogits, targets: &Tensor) -> Result<AttributeCounts> {
        let (b, cells, w) = logits.cell.dims3()?;
        let cell = group_argmax(&logits.cell.reshape((b * cells, w))?, &self.space.cell)?;
        let image = group_argmax(&logits.image, &self.space.image)?;
        let targets = targets.to_vec2::<u32>()?;
        let k = self.space.cell.len();
        let mut c = AttributeCounts::default();
        for (i, t) in targets.iter().enumerate() {
            c.images += 1;
            let mut all = true;
            for p in 0..cells {
                let row = i * cells + p;
                let right = |a: usize| cell[a][row] == t[p * k + a];
                if t[p * k] == 0 {
                    c.empty += 1;
                    c.empty_right += usize::from(right(0));
                } else {
                    c.objects += 1;
                    c.shape += usize::from(right(0));
                    c.color += usize::from(right(1));
                    c.size += usize::from(right(2));
                }
                all &= (0..k).all(right);
            }
            let base = cells * k;
            for (g, pred) in image.iter().enumerate() {
                let right = pred[i] == t[base + g];
                if g == 0 {
                    c.background += usize::from(right);
                } else {
                    c.presence += usize::from(right);
                }
                all &= right;
            }
            c.exact += usize::from(all);
        }
        Ok(c)
    }
}

/// An example and its targets (layout of [`AttributeSpace::targets_per_image`]).
pub struct AttributeSample {
    pub example: Example,
    pub targets: Vec<u32>,
}

/// Images and their targets.
pub struct AttributeBatch {
    /// `[B, 3, S, S]`
    pub pixel_values: Tensor,
    /// `[B, targets_per_image]` u32
    pub targets: Tensor,
}

/// Vision-attribute pretraining as a training [`Objective`].
pub struct AttributesObjective {
    pub train: VisionAttributesTrain,
    inputs: Inputs,
}

impl AttributesObjective {
    /// The tower of the recipe's layout in the run's `config.json`, initialised from the
    /// recipe's seed.
    pub fn new(recipe: &Recipe, inputs: Inputs) -> Result<Self> {
        let tower = recipe.model.tower.unwrap_or_default();
        let train = VisionAttributesTrain::new(tower, &inputs.files.config, &inputs.device)?;
        let m = &recipe.model;
        init_weights(
            &train.vars.map,
            m.seed,
            m.init_std,
            m.position_init_scale as f32,
        )?;
        Ok(Self { train, inputs })
    }
}

impl Objective for AttributesObjective {
    type Sample = AttributeSample;
    type Batch = AttributeBatch;

    fn sample(
        &self,
        example: Example,
        _split: Split,
    ) -> std::result::Result<AttributeSample, String> {
        match self.train.space.targets(&example.meta) {
            Ok(targets) => Ok(AttributeSample { example, targets }),
            Err(why) => Err(format!("sample {}: {why}", example.key)),
        }
    }

    fn batch(&self, samples: &[AttributeSample], _split: Split) -> Result<AttributeBatch> {
        let per = self.train.space.targets_per_image();
        let rows: Vec<u32> = samples
            .iter()
            .flat_map(|s| s.targets.iter().copied())
            .collect();
        let targets = Tensor::from_vec(rows, (samples.len(), per), &self.inputs.device)?;
        let pixel_values = self.inputs.pixels(samples.iter().map(|s| &s.example))?;
        Ok(AttributeBatch {
            pixel_values,
            targets,
        })
    }

    fn losses(&mut self, b: &AttributeBatch, _at: Step) -> Result<Losses> {
        let (l, _) = self.train.loss(&b.pixel_values, &b.targets, true)?;
        Ok(Losses::total(l))
    }

    /// Accuracy per attribute ([`AttributeCounts::report`]) and the mean loss.
    fn validate(&self, batches: &[AttributeBatch]) -> Result<Value> {
        let mut loss = 0.0;
        let mut counts = AttributeCounts::default();
        for b in batches {
            let (l, logits) = self.train.loss(&b.pixel_values, &b.targets, false)?;
            loss += scalar(&l)? / batches.len() as f64;
            counts.add(&self.train.counts(&logits, &b.targets)?);
        }
        let mut report = counts.report();
        report["loss"] = loss.into();
        Ok(report)
    }

    fn vars(&self) -> &VarMap {
        &self.train.vars.map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_place_each_object_in_its_cell() {
        let space = AttributeSpace::synth();
        assert_eq!(space.targets_per_image(), 9 * 3 + 1 + 7);
        let meta = serde_json::json!({
            "objects": [
                {"shape": "heart", "color": "cyan", "size": "large", "position": "bottom right"},
                {"shape": "circle", "color": "red", "size": "small", "position": "top left"},
            ],
            "background": {"style": "solid", "color": "pink"},
        });
        let t = space.targets(&meta).unwrap();
        // top left: circle (1), red (1), small (1)
        assert_eq!(&t[0..3], &[1, 1, 1]);
        // bottom right (cell 8): heart (7), cyan (8), large (3)
        assert_eq!(&t[24..27], &[7, 8, 3]);
        // every other cell is empty
        assert!(t[3..24].iter().all(|&v| v == 0));
        // background pink is colour 6; circle and heart are present, nothing else
        assert_eq!(t[27], 6);
        assert_eq!(&t[28..35], &[1, 0, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn records_outside_the_vocabulary_are_refused_with_the_reason() {
        let space = AttributeSpace::synth();
        let e = space
            .targets(&serde_json::json!({"caption": "a dog"}))
            .unwrap_err();
        assert!(e.contains("objects"), "{e}");
        let e = space
            .targets(&serde_json::json!({
                "objects": [{"shape": "hexagon", "color": "red", "size": "small", "position": "center"}],
                "background": {"color": "blue"},
            }))
            .unwrap_err();
        assert!(e.contains("hexagon"), "{e}");
    }

    fn tiny(image_size: usize) -> Value {
        serde_json::from_str::<Value>(&format!(
            r#"{{"text_config": {{"hidden_size": 16, "intermediate_size": 32,
                "num_hidden_layers": 1, "num_attention_heads": 2}},
               "vision_config": {{"hidden_size": 16, "intermediate_size": 32,
                "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": {image_size},
                "patch_size": 4}}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn a_patch_grid_that_does_not_split_into_cells_is_refused() {
        let e = VisionAttributesTrain::new(Tower::Blip, &tiny(16), &Device::Cpu)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("4x4 patch grid"), "{e}");
    }

    fn log_softmax_pick(s: &[f32], class: u32) -> f64 {
        let max = s.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let lse = max + s.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
        lse - s[class as usize] as f64
    }

    #[test]
    fn loss_is_the_mean_target_cross_entropy_and_cells_pool_their_patches() {
        check_loss_and_pooling(Tower::Blip);
    }

    /// The CLIP tower's patch tokens go through the head's `token_norm` first.
    #[test]
    fn clip_tower_cells_pool_normalised_patch_tokens() {
        check_loss_and_pooling(Tower::Clip);
    }

    fn check_loss_and_pooling(tower: Tower) {
        let device = Device::Cpu;
        let m = VisionAttributesTrain::new(tower, &tiny(24), &device).unwrap();
        assert_eq!(m.token_norm.is_some(), tower == Tower::Clip);
        crate::params::init_weights(&m.vars.map, 3, 0.02, 1.0).unwrap();
        let px = Tensor::randn(0f32, 1.0, (2, 3, 24, 24), &device).unwrap();
        let space = &m.space;
        let per = space.targets_per_image();
        let rows: Vec<u32> = [
            serde_json::json!({"objects": [{"shape": "star", "color": "blue", "size": "medium",
                "position": "center"}], "background": {"color": "white"}}),
            serde_json::json!({"objects": [], "background": {"color": "black"}}),
        ]
        .iter()
        .flat_map(|m| space.targets(m).unwrap())
        .collect();
        let targets = Tensor::from_vec(rows.clone(), (2, per), &device).unwrap();
        let (loss, logits) = m.loss(&px, &targets, false).unwrap();

        // The cell features are the means of each cell's 2x2 patches: recompute the
        // centre cell of image 0 from the tower's tokens.
        let h = m.vit.forward(&px, false, false).unwrap().last_hidden_state;
        let tok = |r: usize, c: usize| {
            let t = h.get(0).unwrap().get(1 + r * 6 + c).unwrap();
            match &m.token_norm {
                Some(ln) => ln.forward(&t, false).unwrap(),
                None => t,
            }
        };
        let mean = ((tok(2, 2) + tok(2, 3)).unwrap() + (tok(3, 2) + tok(3, 3)).unwrap())
            .unwrap()
            .affine(0.25, 0.0)
            .unwrap();
        let want = m
            .cell_head
            .forward(
                &m.cell_norm
                    .forward(&mean.unsqueeze(0).unwrap(), false)
                    .unwrap(),
            )
            .unwrap()
            .squeeze(0)
            .unwrap();
        let got = logits.cell.get(0).unwrap().get(4).unwrap();
        let diff = (got - &want)
            .unwrap()
            .abs()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-5, "centre cell differs by {diff}");

        // The loss by hand: every target's cross-entropy, averaged.
        let cell = logits.cell.to_vec3::<f32>().unwrap();
        let image = logits.image.to_vec2::<f32>().unwrap();
        let mut want = 0.0f64;
        for i in 0..2 {
            let t = &rows[i * per..(i + 1) * per];
            for p in 0..9 {
                let mut off = 0;
                for (a, g) in space.cell.iter().enumerate() {
                    let n = g.classes.len();
                    want += log_softmax_pick(&cell[i][p][off..off + n], t[p * 3 + a]);
                    off += n;
                }
            }
            let mut off = 0;
            for (g, group) in space.image.iter().enumerate() {
                let n = group.classes.len();
                want += log_softmax_pick(&image[i][off..off + n], t[27 + g]);
                off += n;
            }
        }
        want /= 2.0 * per as f64;
        let got = loss.to_scalar::<f32>().unwrap() as f64;
        assert!((got - want).abs() < 1e-5, "{got} vs {want}");

        let c = m.counts(&logits, &targets).unwrap();
        assert_eq!((c.images, c.objects, c.empty), (2, 1, 17));
        // The count agrees with a hand argmax of the centre cell's shape group.
        let s = &cell[0][4][0..8];
        let arg = (0..8).max_by(|&a, &b| s[a].total_cmp(&s[b])).unwrap();
        assert_eq!(c.shape, usize::from(arg == 4));
    }
}
