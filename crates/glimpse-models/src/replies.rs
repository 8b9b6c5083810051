//! Replies of a batch that conversations join and leave while it decodes, for the
//! decoder-only families (LLaVA's chat, BLIP-2's answers with OPT).
//!
//! The caller's [`ChatRows`] hand over conversations with their images; here they
//! become `glimpse_generate`'s [`Rows`]: one vision pass for the images admitted
//! together, then the conversations grouped by prompt length (a group is prefilled
//! as one `[k, t]` batch; `generate_joining` asks again until every group has
//! joined), each with its own seed and limit on new tokens. A family says how its
//! prompt, image inputs, cache and reply text are made ([`Replies`]) and reuses
//! the code its requests alone run, so a joined reply equals the reply alone.

use std::collections::{BTreeMap, VecDeque};

use candle_core::Tensor;
use glimpse_generate::{Decoder, GenerationConfig, Joining, Rows};

use crate::capability::{ChatRequest, ChatRows, ChatTurn};
use crate::{Error, Result};

/// How one family makes the pieces of a reply.
pub(crate) trait Replies {
    type Decoder: Decoder;

    fn decoder(&self) -> &Self::Decoder;

    /// The family's name in error messages.
    fn name(&self) -> &'static str;

    /// The rendered prompt and the model's ids for `request`.
    fn prompt(&self, request: &ChatRequest) -> Result<(String, Vec<u32>)>;

    /// What the cache needs of each image, one row per image of `pixel_values`
    /// `[n, 3, H, W]` (image features, visual prompts).
    fn images(&self, pixel_values: &Tensor) -> Result<Tensor>;

    /// A cache for rows with the same prompt length: `images` `[k, ...]` (rows of
    /// [`Self::images`]), `ids` `[k, t]`.
    fn cache(&self, images: &Tensor, ids: &Tensor) -> Result<<Self::Decoder as Decoder>::Cache>;

    /// The new tokens a prompt of `len` ids may get under `gen` (as the family's
    /// generation alone fits them to its positions).
    fn limit(&self, len: usize, gen: &GenerationConfig) -> Result<usize> {
        let _ = len;
        Ok(gen.max_new_tokens)
    }

    /// The reply's text from its generated ids.
    fn text(&self, ids: &[u32], gen: &GenerationConfig) -> Result<String>;
}

/// Decodes the conversations `rows` hands over (first, and between steps) until none
/// is left; each reply goes to `rows.finished` when it ends.
pub(crate) fn reply_joining<R: Replies>(
    family: &R,
    gen: &GenerationConfig,
    rows: &mut dyn ChatRows,
) -> Result<()> {
    let mut joiner = Joiner {
        family,
        gen,
        rows,
        ready: VecDeque::new(),
        entries: BTreeMap::new(),
    };
    let Some(first) = joiner.admit(0) else {
        return Ok(());
    };
    glimpse_generate::generate_joining(family.decoder(), first, gen, &mut joiner).map_err(|e| {
        match e {
            glimpse_generate::GenerateError::Candle(e) => Error::Candle(e),
            other => Error::Model {
                model: family.name().into(),
                msg: other.to_string(),
            },
        }
    })
}

/// What a running reply keeps besides its ids.
struct Entry {
    user: String,
    prompt: String,
    input_ids: Vec<u32>,
    seed: Option<u64>,
    limit: usize,
}

/// Admitted conversations with one prompt length, in arrival order.
#[derive(Default)]
struct Group {
    len: usize,
    /// Their rows of the admitted images.
    image_rows: Vec<u32>,
    tags: Vec<u64>,
    /// Their prompts, `len` ids each, one after the other.
    ids: Vec<u32>,
}

struct Joiner<'a, R: Replies> {
    family: &'a R,
    gen: &'a GenerationConfig,
    rows: &'a mut dyn ChatRows,
    /// Groups prepared and not yet handed to the decoder.
    ready: VecDeque<Joining<<R::Decoder as Decoder>::Cache>>,
    entries: BTreeMap<u64, Entry>,
}

impl<R: Replies> Joiner<'_, R> {
    /// A request that cannot be prepared fails alone; the others go on.
    fn fail(&mut self, tag: u64, e: &Error) {
        self.entries.remove(&tag);
        self.rows.finished(
            tag,
            Err(Error::Model {
                model: self.family.name().into(),
                msg: e.to_string(),
            }),
        );
    }

    /// Turns admitted conversations into groups of equal prompt length.
    fn prepare(&mut self, pixels: &Tensor, requests: Vec<(u64, ChatRequest)>) {
        let images = match self.family.images(pixels) {
            Ok(images) => images,
            Err(e) => {
                for (tag, _) in requests {
                    self.fail(tag, &e);
                }
                return;
            }
        };
        let mut groups: Vec<Group> = Vec::new();
        for (row, (tag, request)) in requests.into_iter().enumerate() {
            let prepared = self.family.prompt(&request).and_then(|(prompt, ids)| {
                let own = GenerationConfig {
                    max_new_tokens: request
                        .max_new_tokens
                        .map_or(self.gen.max_new_tokens, |n| n.min(self.gen.max_new_tokens)),
                    ..self.gen.clone()
                };
                let limit = self.family.limit(ids.len(), &own)?;
                Ok((prompt, ids, limit))
            });
            let (prompt, ids, limit) = match prepared {
                Ok(p) => p,
                Err(e) => {
                    self.fail(tag, &e);
                    continue;
                }
            };
            let len = ids.len();
            let group = match groups.iter_mut().position(|g| g.len == len) {
                Some(i) => &mut groups[i],
                None => {
                    groups.push(Group {
                        len,
                        ..Group::default()
                    });
                    groups.last_mut().expect("pushed")
                }
            };
            group.image_rows.push(row as u32);
            group.tags.push(tag);
            group.ids.extend_from_slice(&ids);
            self.entries.insert(
                tag,
                Entry {
                    user: request.user,
                    prompt,
                    input_ids: ids,
                    seed: request.seed,
                    limit,
                },
            );
        }
        for Group {
            len,
            image_rows,
            tags,
            ids,
        } in groups
        {
            let built = (|| -> Result<_> {
                let device = images.device();
                let index = Tensor::new(image_rows.as_slice(), device)?;
                let mine = images.index_select(&index, 0)?; // [k, ...]
                let ids = Tensor::from_vec(ids, (tags.len(), len), device)?; // [k, t]
                let cache = self.family.cache(&mine, &ids)?;
                Ok((cache, ids))
            })();
            match built {
                Ok((cache, prompt_ids)) => self.ready.push_back(Joining {
                    cache,
                    prompt_ids,
                    tags,
                }),
                Err(e) => {
                    for tag in tags {
                        self.fail(tag, &e);
                    }
                }
            }
        }
    }
}

impl<R: Replies> Rows<<R::Decoder as Decoder>::Cache> for Joiner<'_, R> {
    fn admit(&mut self, running: usize) -> Option<Joining<<R::Decoder as Decoder>::Cache>> {
        if self.ready.is_empty() {
            let (pixels, requests) = self.rows.admit(running)?;
            self.prepare(&pixels, requests);
        }
        self.ready.pop_front()
    }

    fn seed(&self, tag: u64) -> Option<u64> {
        self.entries.get(&tag).and_then(|e| e.seed)
    }

    fn max_new_tokens(&self, tag: u64) -> Option<usize> {
        self.entries.get(&tag).map(|e| e.limit)
    }

    fn token(&mut self, tag: u64, token: u32) -> bool {
        self.rows.token(tag, token)
    }

    fn finished(&mut self, tag: u64, token_ids: Vec<u32>) {
        let Some(entry) = self.entries.remove(&tag) else {
            return;
        };
        let reply = self
            .family
            .text(&token_ids, self.gen)
            .map(|answer| ChatTurn {
                user: entry.user,
                prompt: entry.prompt,
                input_ids: entry.input_ids,
                reused: 0,
                token_ids,
                answer,
            });
        self.rows.finished(tag, reply);
    }
}
