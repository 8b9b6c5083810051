//! Dynamic batching: one worker thread per model takes every request that is waiting
//! (up to `max_batch`, after a short window for more to arrive) and runs compatible
//! ones in one forward pass.
//!
//! - Text embeddings share one text-tower pass, image embeddings one vision pass.
//! - Greedy captions with the same prompt and settings share one batched decoding
//!   run; each row streams its own tokens to its request, and a row that ends leaves
//!   the batch (the decoder stops computing it, see `glimpse_generate`).
//! - Chat turns and answers of LLaVA and BLIP-2 (OPT), greedy or sampled, share a
//!   decoding batch when their settings agree (each keeps its own seed and token
//!   limit), see [`chat`].
//! - Sampled captions (a `seed` fixes each request's draws), beam search and the
//!   other per-image routes (match, classify) run one request at a time.
//!
//! The queue is bounded: a full queue is refused at once with 429, never grown. A
//! request whose client has gone is dropped before it runs, and a panic inside a
//! model answers its requests with 500 while the worker goes on.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use glimpse_generate::GenerationConfig;
use glimpse_models::pipeline::{Generated, MatchScores, Pipeline};
use image::RgbImage;
use tokio::sync::{mpsc, oneshot};

use crate::error::{ApiError, ApiResult};
use crate::metrics;

mod chat;
pub(crate) use chat::join_key;

/// Work for a model.
pub enum Task {
    /// At most `max_batch` texts (the handler splits longer inputs).
    EmbedTexts(Vec<String>),
    /// At most `max_batch` images.
    EmbedImages(Vec<RgbImage>),
    Caption {
        image: RgbImage,
        prompt: Option<String>,
        gen: GenerationConfig,
    },
    Ask {
        image: RgbImage,
        question: String,
        gen: GenerationConfig,
    },
    Chat {
        image: RgbImage,
        system: Option<String>,
        /// Earlier (user, assistant) exchanges, replayed as context.
        history: Vec<(String, String)>,
        user: String,
        gen: GenerationConfig,
    },
    Match {
        image: RgbImage,
        texts: Vec<String>,
    },
    Classify {
        image: RgbImage,
        labels: Vec<String>,
        template: String,
    },
}

impl Task {
    fn kind(&self) -> &'static str {
        match self {
            Task::EmbedTexts(_) => "embed_text",
            Task::EmbedImages(_) => "embed_image",
            Task::Caption { .. } => "caption",
            Task::Ask { .. } => "ask",
            Task::Chat { .. } => "chat",
            Task::Match { .. } => "match",
            Task::Classify { .. } => "classify",
        }
    }
}

/// What a task gives back.
#[derive(Debug)]
pub enum Output {
    /// One row per input, in order.
    Embeddings(Vec<Vec<f32>>),
    /// Generated text; `prompt_tokens` counts the model's input ids.
    Generated {
        out: Generated,
        prompt_tokens: usize,
    },
    Match(MatchScores),
    Classify(Vec<f32>),
}

struct Job {
    task: Task,
    /// Inputs of an embedding task (its rows of the batch's output).
    rows: usize,
    reply: oneshot::Sender<ApiResult<Output>>,
    /// Each new token id of a generating task, as it is chosen.
    tokens: Option<mpsc::UnboundedSender<u32>>,
}

impl Job {
    fn new(
        task: Task,
        reply: oneshot::Sender<ApiResult<Output>>,
        tokens: Option<mpsc::UnboundedSender<u32>>,
    ) -> Self {
        let rows = match &task {
            Task::EmbedTexts(t) => t.len(),
            Task::EmbedImages(i) => i.len(),
            _ => 1,
        };
        Self {
            task,
            rows,
            reply,
            tokens,
        }
    }
}

/// Settings of the batching loop.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    pub queue_capacity: usize,
    pub max_batch: usize,
    pub window: Duration,
    /// Captions that arrive while a caption batch decodes join it.
    pub join: bool,
}

/// The sending side of a model's queue.
#[derive(Clone)]
pub struct Worker {
    tx: mpsc::Sender<Job>,
    model: String,
    capacity: usize,
}

impl Worker {
    /// Starts the worker thread of `pipeline`, known to clients as `model`.
    pub fn spawn(model: String, pipeline: Arc<Pipeline>, policy: BatchPolicy) -> Self {
        let (tx, rx) = mpsc::channel(policy.queue_capacity.max(1));
        let name = model.clone();
        // The loop runs on a worker of its own pool of candle's thread count, so the
        // kernels' parallel loops start inside the pool (as the CLI runs its commands);
        // without a pool it runs on a plain thread.
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(candle_core::utils::get_num_threads())
            .stack_size(8 << 20)
            .thread_name(move |i| format!("model-{i}"))
            .build()
            .ok();
        let spawned = std::thread::Builder::new()
            .name(format!("model {model}"))
            .stack_size(8 << 20)
            .spawn(move || match pool {
                Some(pool) => pool.install(|| run(&name, &pipeline, rx, policy)),
                None => run(&name, &pipeline, rx, policy),
            });
        if let Err(e) = spawned {
            // Without its thread the model answers every request with 503 (the queue's
            // receiver is gone), and the error is in the log.
            tracing::error!(model, "cannot start the model's worker thread: {e}");
        }
        Self {
            tx,
            model,
            capacity: policy.queue_capacity,
        }
    }

    fn enqueue(&self, job: Job) -> ApiResult<()> {
        match self.tx.try_send(job) {
            Ok(()) => {
                metrics::queue_depth(&self.model, self.capacity - self.tx.capacity());
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::rejected(&self.model);
                Err(ApiError::queue_full(&self.model, self.capacity))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(ApiError::unavailable(format!(
                "model `{}` has stopped",
                self.model
            ))),
        }
    }

    /// Runs `task` and waits for its result.
    pub async fn run(&self, task: Task) -> ApiResult<Output> {
        let (reply, rx) = oneshot::channel();
        self.enqueue(Job::new(task, reply, None))?;
        rx.await.map_err(|_| self.lost())?
    }

    /// Queues a generating `task` whose tokens arrive on the returned receiver as they
    /// are chosen; the final result comes on the oneshot.
    pub fn run_streaming(
        &self,
        task: Task,
    ) -> ApiResult<(
        mpsc::UnboundedReceiver<u32>,
        oneshot::Receiver<ApiResult<Output>>,
    )> {
        let (reply, rx) = oneshot::channel();
        let (tokens, token_rx) = mpsc::unbounded_channel();
        self.enqueue(Job::new(task, reply, Some(tokens)))?;
        Ok((token_rx, rx))
    }

    pub fn lost(&self) -> ApiError {
        ApiError::internal(format!("model `{}` dropped the request", self.model))
    }
}

fn run(model: &str, pipeline: &Pipeline, mut rx: mpsc::Receiver<Job>, policy: BatchPolicy) {
    // A job taken from the queue while a caption batch was admitting, that could not
    // join it: it goes first in the next round.
    let mut carry: Vec<Job> = Vec::new();
    loop {
        let first = match carry.pop() {
            Some(job) => job,
            None => match rx.blocking_recv() {
                Some(job) => job,
                None => break,
            },
        };
        let mut jobs = vec![first];
        let deadline = Instant::now() + policy.window;
        while jobs.len() < policy.max_batch {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(mpsc::error::TryRecvError::Empty) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_micros(200));
                }
                Err(_) => break,
            }
        }
        metrics::queue_depth(model, rx.len());
        // A client that went away while waiting costs nothing more.
        jobs.retain(|j| !j.reply.is_closed());
        let mut queue = Queue {
            rx: &mut rx,
            carry: &mut carry,
            join: policy.join,
        };
        process(model, pipeline, jobs, policy.max_batch, &mut queue);
    }
}

/// The model's queue while a batch runs: captions that arrive may join it.
struct Queue<'a> {
    rx: &'a mut mpsc::Receiver<Job>,
    carry: &'a mut Vec<Job>,
    /// Whether captions may join a running caption batch.
    join: bool,
}

impl Queue<'_> {
    /// The requests that join a running batch now: `waiting` (taken already), then
    /// queued ones whose `key` is `batch_key`, until `running` plus them would pass
    /// `max_batch`. A request whose client left is dropped; one of another kind is
    /// carried to the next batch and clears `open`, so it waits only for this batch.
    /// Joins after the first group are counted in the metrics of `model`.
    #[allow(clippy::too_many_arguments)]
    fn admit(
        &mut self,
        mut jobs: Vec<Job>,
        open: &mut bool,
        running: usize,
        max_batch: usize,
        key: impl Fn(&Task) -> Option<String>,
        batch_key: &str,
        model: &str,
        first: bool,
    ) -> Vec<Job> {
        while *open && running + jobs.len() < max_batch {
            match self.rx.try_recv() {
                Ok(job) if job.reply.is_closed() => {}
                Ok(job) if key(&job.task).as_deref() == Some(batch_key) => jobs.push(job),
                Ok(job) => {
                    self.carry.push(job);
                    *open = false;
                }
                Err(_) => break,
            }
        }
        if !jobs.is_empty() && !first {
            metrics::joined(model, jobs.len());
            metrics::queue_depth(model, self.rx.len());
        }
        jobs
    }
}

/// Groups `jobs` into batches and runs them.
fn process(
    model: &str,
    pipeline: &Pipeline,
    jobs: Vec<Job>,
    max_batch: usize,
    queue: &mut Queue<'_>,
) {
    let mut texts = Vec::new();
    let mut images = Vec::new();
    let mut captions: Vec<(String, Vec<Job>)> = Vec::new();
    let mut replies: Vec<(String, Vec<Job>)> = Vec::new();
    let mut single = Vec::new();
    let add = |groups: &mut Vec<(String, Vec<Job>)>, key: String, job: Job| match groups
        .iter_mut()
        .find(|(k, _)| *k == key)
    {
        Some((_, group)) => group.push(job),
        None => groups.push((key, vec![job])),
    };
    for job in jobs {
        match &job.task {
            Task::EmbedTexts(_) => texts.push(job),
            Task::EmbedImages(_) => images.push(job),
            task => {
                if let Some(key) = caption_key(task) {
                    add(&mut captions, key, job);
                } else if let Some(key) = chat::reply_key(task) {
                    add(&mut replies, key, job);
                } else {
                    single.push(job);
                }
            }
        }
    }
    for group in chunks_by_rows(texts, max_batch) {
        guarded(model, "embed_text", group, |jobs| {
            embed_texts(pipeline, jobs)
        });
    }
    for group in chunks_by_rows(images, max_batch) {
        guarded(model, "embed_image", group, |jobs| {
            embed_images(pipeline, jobs)
        });
    }
    let last = captions.len().saturating_sub(1);
    for (i, (key, group)) in captions.into_iter().enumerate() {
        // The last caption group runs while the queue is watched: captions with the
        // same settings that arrive join it as it decodes (when the family can).
        let group = if queue.join
            && i == last
            && replies.is_empty()
            && single.is_empty()
            && carry_free(queue)
        {
            match caption_joining(model, pipeline, &key, group, max_batch, queue) {
                Some(rest) => rest,
                None => continue,
            }
        } else {
            group
        };
        for group in chunks(group, max_batch) {
            guarded(model, "caption", group, |jobs| {
                caption_batch(model, pipeline, jobs)
            });
        }
    }
    // Chat turns and answers decode in batches; the last one takes arrivals.
    let last = replies.len().saturating_sub(1);
    for (i, (key, group)) in replies.into_iter().enumerate() {
        let chunks = chunks(group, max_batch);
        let n = chunks.len();
        for (j, group) in chunks.into_iter().enumerate() {
            let open = queue.join && i == last && j + 1 == n && single.is_empty();
            let open = open && carry_free(queue);
            if let Some(back) =
                chat::reply_joining(model, pipeline, &key, group, max_batch, queue, open)
            {
                // The family cannot batch replies: one request at a time.
                single.extend(back);
            }
        }
    }
    for job in single {
        let kind = job.task.kind();
        guarded(model, kind, vec![job], |mut jobs| {
            let job = jobs.pop().expect("one job");
            let result = run_single(pipeline, &job);
            let _ = job
                .reply
                .send(result.map_err(|e| ApiError::from_model(model, &e)));
        });
    }
}

/// Greedy captions with the same prompt and settings share a batch.
fn caption_key(task: &Task) -> Option<String> {
    match task {
        Task::Caption { prompt, gen, .. } if !gen.do_sample && gen.num_beams == 1 => {
            Some(format!("{prompt:?} {gen:?}"))
        }
        _ => None,
    }
}

fn carry_free(queue: &Queue<'_>) -> bool {
    queue.carry.is_empty()
}

/// Runs `group` as a caption batch that later captions with the same `key` join while
/// it decodes. `None` when done; `Some(group)` back, untouched, when the model's
/// family cannot join rows (the caller batches it the usual way).
fn caption_joining(
    model: &str,
    pipeline: &Pipeline,
    key: &str,
    group: Vec<Job>,
    max_batch: usize,
    queue: &mut Queue<'_>,
) -> Option<Vec<Job>> {
    let (prompt, gen) = match &group[0].task {
        Task::Caption { prompt, gen, .. } => (prompt.clone(), gen.clone()),
        _ => unreachable!("grouped as captions"),
    };
    metrics::batch(model, "caption", group.len());
    let started = Instant::now();
    let mut live = Live {
        model,
        key,
        max_batch,
        prompt_tokens: caption_prompt_tokens(pipeline, prompt.as_deref()),
        waiting: group,
        admitted: std::collections::BTreeMap::new(),
        next_tag: 0,
        queue,
        open: true,
    };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        pipeline.caption_joining(prompt.as_deref(), &gen, &mut live)
    }));
    metrics::batch_seconds(model, "caption", started.elapsed());
    let failure = match outcome {
        Ok(Ok(true)) => None,
        Ok(Ok(false)) => return Some(std::mem::take(&mut live.waiting)),
        Ok(Err(e)) => Some(ApiError::from_model(model, &e)),
        Err(panic) => Some(model_panic(model, "caption", panic.as_ref())),
    };
    let left: Vec<Job> = std::mem::take(&mut live.admitted)
        .into_values()
        .chain(std::mem::take(&mut live.waiting))
        .collect();
    fail_left(model, failure, left);
    None
}

/// Answers the requests a joining batch left unfinished with its `failure`; a batch
/// that ended normally has none left.
fn fail_left(model: &str, failure: Option<ApiError>, left: Vec<Job>) {
    for job in left {
        let err = failure.clone().unwrap_or_else(|| {
            ApiError::internal(format!("model `{model}` gave no result for this request"))
        });
        let _ = job.reply.send(Err(err));
    }
}

/// The requests of a caption batch that others join while it decodes.
struct Live<'a, 'q> {
    model: &'a str,
    key: &'a str,
    max_batch: usize,
    prompt_tokens: usize,
    /// The batch's first requests, not yet handed to the model.
    waiting: Vec<Job>,
    /// Requests decoding now, by tag.
    admitted: std::collections::BTreeMap<u64, Job>,
    next_tag: u64,
    queue: &'a mut Queue<'q>,
    /// Still taking requests from the queue: a request of another kind stops it, so
    /// that request waits only until the running batch ends.
    open: bool,
}

impl glimpse_models::pipeline::ImageRows for Live<'_, '_> {
    fn admit(&mut self, running: usize) -> Option<Vec<(u64, RgbImage)>> {
        let first = running == 0 && self.admitted.is_empty();
        let jobs = self.queue.admit(
            std::mem::take(&mut self.waiting),
            &mut self.open,
            running,
            self.max_batch,
            caption_key,
            self.key,
            self.model,
            first,
        );
        if jobs.is_empty() {
            return None;
        }
        let mut group = Vec::with_capacity(jobs.len());
        for mut job in jobs {
            let image = match &mut job.task {
                Task::Caption { image, .. } => std::mem::take(image),
                _ => unreachable!("only captions join"),
            };
            let tag = self.next_tag;
            self.next_tag += 1;
            self.admitted.insert(tag, job);
            group.push((tag, image));
        }
        Some(group)
    }

    fn token(&mut self, tag: u64, token: u32) -> bool {
        let Some(job) = self.admitted.get(&tag) else {
            return false;
        };
        match &job.tokens {
            Some(stream) => stream.send(token).is_ok(),
            // A client that went away stops costing anything.
            None => !job.reply.is_closed(),
        }
    }

    fn finished(&mut self, tag: u64, caption: glimpse_models::Result<Generated>) {
        let Some(job) = self.admitted.remove(&tag) else {
            return;
        };
        let result = caption
            .map(|out| {
                metrics::tokens(self.model, out.token_ids.len());
                Output::Generated {
                    out,
                    prompt_tokens: self.prompt_tokens,
                }
            })
            .map_err(|e| ApiError::from_model(self.model, &e));
        let _ = job.reply.send(result);
    }
}

/// The 500 of every request of a batch whose model call panicked (logged once per
/// request).
fn model_panic(model: &str, kind: &str, panic: &(dyn std::any::Any + Send)) -> ApiError {
    let what = crate::error::panic_message(panic);
    tracing::error!(model, kind, "a model call panicked: {what}");
    ApiError::internal(format!(
        "model `{model}` failed on this request ({what}); the server goes on"
    ))
}

/// Embedding jobs in groups of at most `n` inputs (a job is never split).
fn chunks_by_rows(jobs: Vec<Job>, n: usize) -> Vec<Vec<Job>> {
    let rows = |j: &Job| match &j.task {
        Task::EmbedTexts(t) => t.len(),
        Task::EmbedImages(i) => i.len(),
        _ => 1,
    };
    let mut out: Vec<Vec<Job>> = Vec::new();
    let mut filled = 0;
    for job in jobs {
        let r = rows(&job);
        match out.last_mut() {
            Some(group) if filled + r <= n => group.push(job),
            _ => {
                filled = 0;
                out.push(vec![job]);
            }
        }
        filled += r;
    }
    out
}

fn chunks(mut jobs: Vec<Job>, n: usize) -> Vec<Vec<Job>> {
    let mut out = Vec::new();
    while !jobs.is_empty() {
        let rest = jobs.split_off(jobs.len().min(n));
        out.push(jobs);
        jobs = rest;
    }
    out
}

/// Runs `f` on a batch; a panic answers every request of the batch with 500 (the
/// replies are kept aside so that they survive the unwinding).
fn guarded(model: &str, kind: &str, jobs: Vec<Job>, f: impl FnOnce(Vec<Job>)) {
    metrics::batch(model, kind, jobs.len());
    let (replies, jobs): (Vec<_>, Vec<_>) = jobs
        .into_iter()
        .map(|j| {
            let (tx, rx) = oneshot::channel();
            let forward = j.reply;
            (
                (forward, rx),
                Job {
                    task: j.task,
                    rows: j.rows,
                    reply: tx,
                    tokens: j.tokens,
                },
            )
        })
        .unzip();
    let started = Instant::now();
    let outcome = catch_unwind(AssertUnwindSafe(move || f(jobs)));
    metrics::batch_seconds(model, kind, started.elapsed());
    for (forward, mut rx) in replies {
        let result = match (&outcome, rx.try_recv()) {
            (_, Ok(result)) => result,
            (Err(panic), _) => Err(model_panic(model, kind, panic.as_ref())),
            (Ok(()), Err(_)) => Err(ApiError::internal(format!(
                "model `{model}` gave no result for this request"
            ))),
        };
        let _ = forward.send(result);
    }
}

fn embed_texts(pipeline: &Pipeline, jobs: Vec<Job>) {
    let texts: Vec<&str> = jobs
        .iter()
        .flat_map(|j| match &j.task {
            Task::EmbedTexts(t) => t.iter().map(String::as_str),
            _ => unreachable!("grouped as texts"),
        })
        .collect();
    let result = pipeline
        .text_embeds(&texts)
        .and_then(|t| Ok(t.to_vec2::<f32>()?));
    reply_rows(jobs, result);
}

fn embed_images(pipeline: &Pipeline, mut jobs: Vec<Job>) {
    let images: Vec<RgbImage> = jobs
        .iter_mut()
        .flat_map(|j| match &mut j.task {
            Task::EmbedImages(imgs) => std::mem::take(imgs),
            _ => unreachable!("grouped as images"),
        })
        .collect();
    let result = pipeline
        .image_embeds(&images)
        .and_then(|t| Ok(t.to_vec2::<f32>()?));
    reply_rows(jobs, result);
}

/// Hands each job its rows of `result` (jobs in order, each its inputs' count).
fn reply_rows(jobs: Vec<Job>, result: glimpse_models::Result<Vec<Vec<f32>>>) {
    match result {
        Ok(rows) => {
            let mut rows = rows.into_iter();
            for job in jobs {
                let n = job.rows;
                let mine: Vec<Vec<f32>> = rows.by_ref().take(n).collect();
                let _ = job.reply.send(Ok(Output::Embeddings(mine)));
            }
        }
        Err(e) => {
            for job in jobs {
                let _ = job.reply.send(Err(ApiError::from_model("embedding", &e)));
            }
        }
    }
}

fn caption_batch(model: &str, pipeline: &Pipeline, mut jobs: Vec<Job>) {
    let (prompt, gen) = match &jobs[0].task {
        Task::Caption { prompt, gen, .. } => (prompt.clone(), gen.clone()),
        _ => unreachable!("grouped as captions"),
    };
    let images: Vec<RgbImage> = jobs
        .iter_mut()
        .map(|j| match &mut j.task {
            Task::Caption { image, .. } => std::mem::take(image),
            _ => unreachable!("grouped as captions"),
        })
        .collect();
    let streams: Vec<Option<mpsc::UnboundedSender<u32>>> =
        jobs.iter().map(|j| j.tokens.clone()).collect();
    let prompt_tokens = caption_prompt_tokens(pipeline, prompt.as_deref());
    let mut on_step = |step: &[Option<u32>]| {
        let mut listening = false;
        for (token, stream) in step.iter().zip(&streams) {
            if let (Some(t), Some(s)) = (token, stream) {
                listening |= s.send(*t).is_ok();
            } else if stream.as_ref().is_some_and(|s| !s.is_closed()) {
                listening = true;
            }
        }
        // Stop only when every request of the batch streams and all have gone.
        listening || streams.iter().any(Option::is_none)
    };
    let result = if streams.iter().any(Option::is_some) {
        match pipeline.caption_stream(&images, prompt.as_deref(), &gen, &mut on_step) {
            Ok(Some(out)) => Ok(out),
            Ok(None) => pipeline.caption(&images, prompt.as_deref(), &gen),
            Err(e) => Err(e),
        }
    } else {
        pipeline.caption(&images, prompt.as_deref(), &gen)
    };
    match result {
        Ok(outs) => {
            metrics::tokens(model, outs.iter().map(|o| o.token_ids.len()).sum());
            for (job, out) in jobs.into_iter().zip(outs) {
                let _ = job.reply.send(Ok(Output::Generated { out, prompt_tokens }));
            }
        }
        Err(e) => {
            for job in jobs {
                let _ = job.reply.send(Err(ApiError::from_model(model, &e)));
            }
        }
    }
}

/// A caption's input ids for usage counts: its prompt's, or the start token alone.
fn caption_prompt_tokens(pipeline: &Pipeline, prompt: Option<&str>) -> usize {
    prompt
        .and_then(|p| pipeline.tokenizer().encode(p, true).ok())
        .map_or(1, |ids| ids.len())
}

fn run_single(pipeline: &Pipeline, job: &Job) -> glimpse_models::Result<Output> {
    let stream = job.tokens.clone();
    let mut on_step = |step: &[Option<u32>]| match (&stream, step.first()) {
        (Some(s), Some(Some(t))) => s.send(*t).is_ok(),
        (Some(s), _) => !s.is_closed(),
        (None, _) => true,
    };
    Ok(match &job.task {
        Task::Caption { image, prompt, gen } => {
            let images = std::slice::from_ref(image);
            let mut outs = match &job.tokens {
                Some(_) => {
                    match pipeline.caption_stream(images, prompt.as_deref(), gen, &mut on_step)? {
                        Some(o) => o,
                        None => pipeline.caption(images, prompt.as_deref(), gen)?,
                    }
                }
                None => pipeline.caption(images, prompt.as_deref(), gen)?,
            };
            let prompt_tokens = caption_prompt_tokens(pipeline, prompt.as_deref());
            Output::Generated {
                out: outs.remove(0),
                prompt_tokens,
            }
        }
        Task::Ask {
            image,
            question,
            gen,
        } => {
            let out = match &job.tokens {
                Some(_) => match pipeline.ask_stream(image, question, gen, &mut on_step)? {
                    Some(o) => o,
                    None => pipeline.ask(image, question, gen)?,
                },
                None => pipeline.ask(image, question, gen)?,
            };
            let prompt_tokens = pipeline.tokenizer().encode(question, true)?.len();
            Output::Generated { out, prompt_tokens }
        }
        Task::Chat {
            image,
            system,
            history,
            user,
            gen,
        } => {
            let pixels = pipeline.pixel_values(std::slice::from_ref(image))?;
            let mut chat = pipeline.start_chat(&pixels, system.as_deref())?;
            for (u, a) in history {
                chat.push_turn(u, a)?;
            }
            let mut on_token = |t: u32| match &stream {
                Some(s) => s.send(t).is_ok(),
                None => true,
            };
            let turn = if gen.num_beams > 1 {
                chat.send(user, gen)?
            } else {
                chat.send_stream(user, gen, &mut on_token)?
            };
            Output::Generated {
                prompt_tokens: turn.input_ids.len(),
                out: Generated {
                    text: turn.answer,
                    token_ids: turn.token_ids,
                },
            }
        }
        Task::Match { image, texts } => {
            let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
            Output::Match(pipeline.match_scores(image, &texts)?)
        }
        Task::Classify {
            image,
            labels,
            template,
        } => {
            let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
            Output::Classify(pipeline.classify(image, &labels, template)?)
        }
        Task::EmbedTexts(_) | Task::EmbedImages(_) => unreachable!("batched"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_batch_answers_500_and_the_next_batch_runs() {
        let (reply, mut rx) = oneshot::channel();
        let job = Job::new(Task::EmbedTexts(vec!["x".into()]), reply, None);
        guarded("m", "embed_text", vec![job], |_jobs| {
            panic!("a broken kernel")
        });
        let err = rx.try_recv().unwrap().unwrap_err();
        assert_eq!(err.status.as_u16(), 500);
        assert!(err.message.contains("a broken kernel"), "{}", err.message);

        let (reply, mut rx) = oneshot::channel();
        let job = Job::new(Task::EmbedTexts(vec!["x".into()]), reply, None);
        guarded("m", "embed_text", vec![job], |jobs| {
            for j in jobs {
                let _ = j.reply.send(Ok(Output::Embeddings(vec![vec![1.0]])));
            }
        });
        assert!(matches!(rx.try_recv().unwrap(), Ok(Output::Embeddings(_))));
    }

    #[test]
    fn embedding_jobs_group_by_rows_without_splitting_a_job() {
        let job = |n: usize| {
            let (reply, _rx) = oneshot::channel();
            Job::new(Task::EmbedTexts(vec!["t".into(); n]), reply, None)
        };
        let groups = chunks_by_rows(vec![job(3), job(2), job(4), job(1), job(8)], 5);
        let sizes: Vec<Vec<usize>> = groups
            .iter()
            .map(|g| g.iter().map(|j| j.rows).collect())
            .collect();
        assert_eq!(sizes, vec![vec![3, 2], vec![4, 1], vec![8]]);
    }
}
