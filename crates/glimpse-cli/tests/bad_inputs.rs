//! The bad-input corpus (`tools/fixtures/bad`, written by `make_bad.py` there) through
//! every command each case applies to, with the built binary.
//!
//! Every case must end in an error, not a panic (exit 101), an abort (134, SIGABRT,
//! or SIGKILL from the out-of-memory killer) or a hang (killed after [`TIMEOUT`]); the
//! message must name the bad input; and an output directory must hold no half-written
//! file. All failures are collected and reported together, one line per case.
//!
//! `bad_inputs_peak_memory` runs the corpus' most expensive inputs and bounds the
//! child's peak resident set (`wait4`'s `ru_maxrss`).

mod common;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::root;

/// A command still running after this long is killed and counted as a hang.
const TIMEOUT: Duration = Duration::from_secs(60);
/// Children run at once; each is small, but the machine may have two cores.
const PARALLEL: usize = 3;
/// Peak resident memory allowed to any command on the worst inputs; the fixture models
/// are under a megabyte, so "1 GB beyond the model" is a flat bound.
const PEAK_LIMIT_KB: i64 = 1024 * 1024;

const BAD: &str = "tools/fixtures/bad";
const CLIP: &str = "tools/fixtures/clip";
const BLIP_CAPTION: &str = "tools/fixtures/blip_caption";
const BLIP_VQA: &str = "tools/fixtures/blip_vqa";
const LLAVA: &str = "tools/fixtures/llava";
const CAT: &str = "examples/images/cat.png";
const GOOD_TURNS: &str = "tools/fixtures/bad/turns/good.json";
const GOOD_DATA: &str = "tools/fixtures/bad/data/good.jsonl";

/// One run of the binary. `{bad}` in an argument is the corpus directory and `{out}`
/// a fresh output directory (checked for half-written files afterwards).
#[derive(Clone, Debug)]
struct Case {
    args: Vec<String>,
    /// The error must contain one of these (a file name, key or flag).
    names: Vec<&'static str>,
    /// A valid but costly input may also succeed; either way without a panic, an
    /// abort or a hang.
    may_succeed: bool,
}

/// Whether an image must be refused, or may also be processed within bounds.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    Refused,
    Bounded,
}
use Expect::{Bounded, Refused};

/// The commands an image or a model directory goes through.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Cmd {
    Embed,
    Match,
    Classify,
    Caption,
    Ask,
    Chat,
    Eval,
}

const IMAGE_COMMANDS: [Cmd; 6] = [
    Cmd::Embed,
    Cmd::Match,
    Cmd::Classify,
    Cmd::Caption,
    Cmd::Ask,
    Cmd::Chat,
];
const CLIP_COMMANDS: &[Cmd] = &[Cmd::Embed, Cmd::Match, Cmd::Classify, Cmd::Eval];

impl Cmd {
    /// The fixture model a command runs when the bad input is not the model.
    fn default_model(self) -> &'static str {
        match self {
            Cmd::Embed | Cmd::Match | Cmd::Classify | Cmd::Eval => CLIP,
            Cmd::Caption => BLIP_CAPTION,
            Cmd::Ask => BLIP_VQA,
            Cmd::Chat => LLAVA,
        }
    }

    fn args(self, model: &str, image: &str) -> Vec<String> {
        let v: Vec<&str> = match self {
            Cmd::Embed => vec![
                "embed", "--model", model, "--image", image, "--text", "a cat",
            ],
            Cmd::Match => vec![
                "match", "--model", model, "--image", image, "--text", "a cat",
            ],
            Cmd::Classify => vec![
                "classify", "--model", model, "--image", image, "--labels", "cat,dog",
            ],
            Cmd::Caption => vec!["caption", "--model", model, "--image", image],
            Cmd::Ask => vec![
                "ask",
                "--model",
                model,
                "--image",
                image,
                "--question",
                "what is it?",
            ],
            Cmd::Chat => vec![
                "chat",
                "--model",
                model,
                "--image",
                image,
                "--turns",
                GOOD_TURNS,
                "--json",
                "--max-new-tokens",
                "4",
            ],
            Cmd::Eval => vec![
                "eval", "--model", model, "--task", "zeroshot", "--data", GOOD_DATA, "--labels",
                "cat,dog",
            ],
        };
        v.into_iter().map(String::from).collect()
    }
}

/// Images under `{bad}/images`: every format corrupt, truncated and with huge
/// declared dimensions, and two valid but costly PNGs. The error must name the file.
#[rustfmt::skip]
const IMAGES: &[(&str, Expect)] = &[
    ("png_corrupt.png", Refused),
    ("png_truncated.png", Refused),
    ("png_huge_dimensions.png", Refused),
    ("png_bomb.png", Bounded),
    ("png_1x20000.png", Bounded),
    ("jpeg_corrupt.jpg", Refused),
    ("jpeg_truncated.jpg", Refused),
    ("jpeg_huge_dimensions.jpg", Refused),
    ("gif_corrupt.gif", Refused),
    ("gif_truncated.gif", Refused),
    ("gif_huge_dimensions.gif", Refused),
    ("bmp_corrupt.bmp", Refused),
    ("bmp_truncated.bmp", Refused),
    ("bmp_huge_dimensions.bmp", Refused),
    ("webp_corrupt.webp", Refused),
    ("webp_truncated.webp", Refused),
    ("webp_huge_dimensions.webp", Refused),
    ("tiff_corrupt.tif", Refused),
    ("tiff_truncated.tif", Refused),
    ("tiff_huge_dimensions.tif", Refused),
    ("no_such_image.png", Refused),
];

/// Model directories under `{bad}/models`, what the error must name (one of), and
/// the commands that load them.
#[rustfmt::skip]
const MODELS: &[(&str, &[&str], &[Cmd])] = &[
    ("clip_st_header_beyond_file", &["model.safetensors"], CLIP_COMMANDS),
    ("clip_st_invalid_json", &["model.safetensors"], CLIP_COMMANDS),
    ("clip_st_offsets_beyond_data", &["model.safetensors"], CLIP_COMMANDS),
    ("clip_st_dtype_shape_mismatch", &["model.safetensors"], CLIP_COMMANDS),
    ("clip_st_overlapping_ranges", &["model.safetensors"], CLIP_COMMANDS),
    ("clip_st_huge_header_len", &["model.safetensors"], CLIP_COMMANDS),
    ("clip_st_truncated", &["model.safetensors"], CLIP_COMMANDS),
    ("clip_index_invalid_json", &["model.safetensors.index.json"], CLIP_COMMANDS),
    ("clip_index_missing_shard", &["model-00001-of-00002.safetensors"], CLIP_COMMANDS),
    ("clip_index_wrong_type", &["model.safetensors.index.json"], CLIP_COMMANDS),
    ("clip_config_wrong_hidden_size", &["config.json"], CLIP_COMMANDS),
    ("clip_config_wrong_vocab", &["config.json", "vocab"], CLIP_COMMANDS),
    ("clip_config_invalid_json", &["config.json"], CLIP_COMMANDS),
    ("clip_processor_shortest_edge_100000", &["preprocessor_config.json", "shortest_edge"], CLIP_COMMANDS),
    ("clip_processor_224", &["preprocessor_config.json", "image_size", "crop"], CLIP_COMMANDS),
    ("clip_processor_invalid_json", &["preprocessor_config.json"], CLIP_COMMANDS),
    ("clip_tokenizer_garbage", &["tokenizer.json"], CLIP_COMMANDS),
    ("blip_caption_st_huge_header_len", &["model.safetensors"], &[Cmd::Caption]),
    ("blip_caption_tokenizer_garbage", &["tokenizer.json"], &[Cmd::Caption]),
    ("blip_vqa_st_truncated", &["model.safetensors"], &[Cmd::Ask]),
    ("llava_st_huge_header_len", &["model.safetensors"], &[Cmd::Chat]),
];

/// Whole command lines (recipes, data, runs, chat turns, flags) and what the error
/// must name (one of).
#[rustfmt::skip]
const LINES: &[(&[&str], &[&str])] = &[
    // Recipes.
    (&["train", "--recipe", "{bad}/recipes/syntax_error.toml", "--out", "{out}"], &["syntax_error.toml"]),
    (&["train", "--recipe", "{bad}/recipes/unknown_key.toml", "--out", "{out}"], &["learning_rat"]),
    (&["train", "--recipe", "{bad}/recipes/wrong_type.toml", "--out", "{out}"], &["batch_size"]),
    (&["train", "--recipe", "{bad}/recipes/negative_lr.toml", "--out", "{out}"], &["optim.lr"]),
    (&["train", "--recipe", "{bad}/recipes/max_steps_zero.toml", "--out", "{out}"], &["max_steps"]),
    (&["train", "--recipe", "{bad}/recipes/missing_config.toml", "--out", "{out}"], &["no_such.config.json"]),
    (&["train", "--recipe", "{bad}/recipes/no_such_recipe.toml", "--out", "{out}"], &["no_such_recipe.toml"]),
    (&["train", "--resume", "{bad}/runs/no_checkpoint", "--out", "{out}"], &["no_checkpoint"]),
    // Training data where no sample is usable.
    (&["train", "--recipe", "{bad}/recipes/garbage_png_shard.toml", "--out", "{out}"], &["garbage_png", "shard-000000"]),
    (&["train", "--recipe", "{bad}/recipes/bad_json_shard.toml", "--out", "{out}"], &["bad_json", "shard-000000"]),
    (&["train", "--recipe", "{bad}/recipes/truncated_shard.toml", "--out", "{out}"], &["truncated", "shard-000000"]),
    (&["train", "--recipe", "{bad}/recipes/huge_entry_shard.toml", "--out", "{out}"], &["huge_entry", "shard-000000"]),
    (&["train", "--recipe", "{bad}/recipes/missing_images.toml", "--out", "{out}"], &["missing_images", "missing_0.png"]),
    // Evaluation data where no sample is usable.
    (&["eval", "--model", CLIP, "--task", "zeroshot", "--labels", "a,b", "--data", "{bad}/data/garbage_png"], &["garbage_png", "shard-000000"]),
    (&["eval", "--model", CLIP, "--task", "zeroshot", "--labels", "a,b", "--data", "{bad}/data/bad_json"], &["bad_json", "shard-000000"]),
    (&["eval", "--model", CLIP, "--task", "zeroshot", "--labels", "a,b", "--data", "{bad}/data/truncated"], &["truncated", "shard-000000"]),
    (&["eval", "--model", CLIP, "--task", "zeroshot", "--labels", "a,b", "--data", "{bad}/data/huge_entry"], &["huge_entry", "shard-000000"]),
    (&["eval", "--model", CLIP, "--task", "zeroshot", "--labels", "a,b", "--data", "{bad}/data/missing_images.jsonl"], &["missing_images", "missing_0.png"]),
    (&["eval", "--model", CLIP, "--task", "zeroshot", "--labels", "a,b", "--data", "{bad}/data/no_such.jsonl"], &["no_such.jsonl"]),
    // Runs that cannot be exported.
    (&["export", "--run", "{bad}/runs/no_checkpoint", "--out", "{out}"], &["no_checkpoint"]),
    (&["export", "--run", "{bad}/runs/latest_names_missing", "--out", "{out}"], &["step-00000004"]),
    (&["export", "--run", "{bad}/runs/corrupt_weights", "--out", "{out}"], &["model.safetensors"]),
    (&["export", "--run", "{bad}/runs/weights_not_the_model", "--out", "{out}"], &["model.safetensors"]),
    (&["export", "--run", "{bad}/runs/no_such_run", "--out", "{out}"], &["no_such_run"]),
    // Chat turns.
    (&["chat", "--model", LLAVA, "--image", CAT, "--json", "--turns", "{bad}/turns/not_json.json"], &["not_json.json"]),
    (&["chat", "--model", LLAVA, "--image", CAT, "--json", "--turns", "{bad}/turns/not_a_list.json"], &["not_a_list.json"]),
    (&["chat", "--model", LLAVA, "--image", CAT, "--json", "--turns", "{bad}/turns/empty_list.json"], &["empty_list.json"]),
    (&["chat", "--model", LLAVA, "--image", CAT, "--json", "--turns", "{bad}/turns/bad_item.json"], &["bad_item.json"]),
    (&["chat", "--model", LLAVA, "--image", CAT, "--json", "--turns", "{bad}/turns/blank_message.json"], &["blank_message.json"]),
    (&["chat", "--model", LLAVA, "--image", CAT, "--json", "--turns", "{bad}/turns/no_such.json"], &["no_such.json"]),
    // data synth flags and output directories.
    (&["data", "synth", "--out", "{out}", "--count", "0"], &["--count"]),
    (&["data", "synth", "--out", "{out}", "--count", "4", "--image-size", "8"], &["--image-size"]),
    (&["data", "synth", "--out", "{out}", "--count", "4", "--noise", "2"], &["--noise"]),
    (&["data", "synth", "--out", "{out}", "--count", "4", "--shard-size", "0"], &["--shard-size"]),
    (&["data", "synth", "--out", "/dev/null/synth", "--count", "4"], &["/dev/null/synth"]),
    // Flags.
    (&["embed", "--model", CLIP, "--image", CAT, "--batch-size", "0"], &["--batch-size"]),
    (&["embed", "--model", CLIP, "--text", "x", "--device", "tpu"], &["tpu"]),
    (&["embed", "--model", CLIP, "--text", "x", "--no-such-flag"], &["--no-such-flag"]),
    (&["classify", "--model", CLIP, "--image", CAT, "--labels", "a,,b"], &["label #2"]),
    (&["caption", "--model", BLIP_CAPTION, "--image", CAT, "--max-new-tokens", "0"], &["--max-new-tokens"]),
    (&["caption", "--model", BLIP_CAPTION, "--image", CAT, "--top-p", "1.5"], &["top_p"]),
    (&["caption", "--model", BLIP_CAPTION, "--image", CAT, "--min-new-tokens", "5", "--max-new-tokens", "2"], &["--min-new-tokens"]),
    (&["caption", "--model", CLIP, "--image", CAT, "--quantize", "q4"], &["--quantize q4"]),
    (&["embed", "--model", CLIP, "--text", "x", "--quantize", "q3"], &["q3"]),
    (&["eval", "--model", CLIP, "--task", "zeroshot", "--data", GOOD_DATA, "--batch-size", "0"], &["batch"]),
    (&["embed", "--model", "{bad}/models/no_such_model", "--text", "x"], &["no_such_model"]),
    // data corpus and generate (text-only language models).
    (&["data", "corpus", "--out", "{out}", "--count", "0"], &["--count"]),
    (&["data", "corpus", "--out", "/dev/null/corpus", "--count", "4"], &["/dev/null/corpus"]),
    (&["generate", "--model", CLIP, "--prompt", "a red"], &["config.json", "causal language model"]),
    (&["generate", "--model", "{bad}/models/no_such_model", "--prompt", "a"], &["no_such_model"]),
    (&["generate", "--model", CLIP, "--prompt", "a", "--max-new-tokens", "0"], &["--max-new-tokens"]),
    (&["generate", "--model", CLIP], &["--prompt"]),
];

fn cases() -> Vec<Case> {
    let mut out = Vec::new();
    for &(file, expect) in IMAGES {
        let image = format!("{BAD}/images/{file}");
        for cmd in IMAGE_COMMANDS {
            out.push(Case {
                args: cmd.args(cmd.default_model(), &image),
                names: vec![file],
                may_succeed: expect == Bounded,
            });
        }
    }
    for &(dir, names, cmds) in MODELS {
        let model = format!("{BAD}/models/{dir}");
        for &cmd in cmds {
            out.push(Case {
                args: cmd.args(&model, CAT),
                names: names.to_vec(),
                may_succeed: false,
            });
        }
    }
    for &(args, names) in LINES {
        out.push(Case {
            args: args.iter().map(|a| a.to_string()).collect(),
            names: names.to_vec(),
            may_succeed: false,
        });
    }
    out
}

/// How a child ended.
struct Ended {
    /// `Some(code)` for a normal exit.
    code: Option<i32>,
    /// The terminating signal, if any.
    signal: Option<i32>,
    hung: bool,
    /// Peak resident set in KiB.
    max_rss_kb: i64,
    stdout: String,
    stderr: String,
    seconds: f64,
}

/// Runs the binary in the repository root, killing it after [`TIMEOUT`]; reaps it
/// with `wait4` to read its peak memory.
// The child is reaped by `wait4`, which clippy does not see.
#[allow(clippy::zombie_processes)]
fn run(args: &[String], scratch: &Path) -> Ended {
    let out_path = scratch.join("stdout");
    let err_path = scratch.join("stderr");
    let child = Command::new(env!("CARGO_BIN_EXE_glimpse"))
        .args(args)
        .current_dir(root())
        // As a user runs it: error messages without candle's captured backtraces.
        .env_remove("RUST_BACKTRACE")
        .env_remove("RUST_LIB_BACKTRACE")
        .env("HF_HUB_OFFLINE", "1")
        .env("HF_HUB_CACHE", scratch.join("hub"))
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).unwrap())
        .stderr(File::create(&err_path).unwrap())
        .spawn()
        .expect("the glimpse binary starts");
    let pid = child.id() as libc::pid_t;
    let start = Instant::now();
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut hung = false;
    loop {
        // SAFETY: `pid` is our child, not yet reaped; the pointers are to live locals.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if r == pid {
            break;
        }
        assert!(r == 0, "wait4 failed: {}", std::io::Error::last_os_error());
        if !hung && start.elapsed() > TIMEOUT {
            hung = true;
            // SAFETY: sending a signal to our own unreaped child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let read =
        |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned();
    Ended {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        signal: libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status)),
        hung,
        max_rss_kb: usage.ru_maxrss,
        stdout: read(&out_path),
        stderr: read(&err_path),
        seconds: start.elapsed().as_secs_f64(),
    }
}

/// What is wrong with how a run ended, whatever the case expects: a hang, a signal,
/// a panic or an abort.
fn crash(e: &Ended) -> Option<String> {
    if e.hung {
        return Some(format!("hung: killed after {} s", TIMEOUT.as_secs()));
    }
    if let Some(sig) = e.signal {
        return Some(format!("killed by signal {sig}"));
    }
    match e.code {
        Some(101) => Some("panicked (exit 101)".into()),
        Some(134) => Some("aborted (exit 134)".into()),
        _ if e.stderr.contains("panicked") => Some("stderr reports a panic".into()),
        _ if e.stderr.contains("memory allocation of") => {
            Some("stderr reports a failed allocation".into())
        }
        _ => None,
    }
}

/// Files under `dir` that a complete writer would not leave: temporary names, JSON
/// that does not parse, safetensors whose header or size is inconsistent, tar files
/// without their end-of-archive marker.
fn half_written(dir: &Path) -> Vec<String> {
    let mut bad = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            let bytes = std::fs::read(&p).unwrap_or_default();
            let problem = if name.contains(".tmp") || name.contains("partial") {
                Some("a temporary file")
            } else if name.ends_with(".json") {
                serde_json::from_slice::<serde_json::Value>(&bytes)
                    .err()
                    .map(|_| "JSON that does not parse")
            } else if name.ends_with(".jsonl") {
                bytes
                    .split(|&b| b == b'\n')
                    .filter(|l| !l.is_empty())
                    .any(|l| serde_json::from_slice::<serde_json::Value>(l).is_err())
                    .then_some("a JSONL line that does not parse")
            } else if name.ends_with(".safetensors") {
                (!safetensors_complete(&bytes)).then_some("an incomplete safetensors file")
            } else if name.ends_with(".tar") {
                let ends =
                    bytes.len() >= 1024 && bytes[bytes.len() - 1024..].iter().all(|&b| b == 0);
                (bytes.len() % 512 != 0 || !ends).then_some("a tar without its end marker")
            } else {
                None
            };
            if let Some(why) = problem {
                bad.push(format!("{}: {why}", p.display()));
            }
        }
    }
    bad
}

/// The header parses and the data ends exactly where its last tensor does.
fn safetensors_complete(bytes: &[u8]) -> bool {
    let Some(n) = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
    else {
        return false;
    };
    let Some(header) = usize::try_from(n).ok().and_then(|n| bytes.get(8..8 + n)) else {
        return false;
    };
    let Ok(serde_json::Value::Object(map)) = serde_json::from_slice(header) else {
        return false;
    };
    let end = map
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .filter_map(|(_, v)| v["data_offsets"][1].as_u64())
        .max()
        .unwrap_or(0);
    8 + n + end == bytes.len() as u64
}

/// Runs one case; `Err` says what it got wrong.
fn check(case: &Case, scratch: &Path) -> Result<f64, String> {
    let out_dir = scratch.join("out");
    let args: Vec<String> = case
        .args
        .iter()
        .map(|a| {
            a.replace("{bad}", BAD)
                .replace("{out}", out_dir.to_str().unwrap())
        })
        .collect();
    let e = run(&args, scratch);
    if let Some(c) = crash(&e) {
        return Err(format!("{c}; stderr: {}", tail(&e.stderr)));
    }
    let names = &case.names;
    if e.code == Some(0) {
        if !case.may_succeed {
            return Err(format!("exit 0; stdout: {}", tail(&e.stdout)));
        }
    } else if !names.iter().any(|n| e.stderr.contains(n)) {
        return Err(format!(
            "exit {:?}, but the message names none of {names:?}: {}",
            e.code,
            tail(&e.stderr)
        ));
    }
    let half = half_written(&out_dir);
    if !half.is_empty() {
        return Err(format!("left half-written output: {}", half.join("; ")));
    }
    Ok(e.seconds)
}

/// The `error:` line when there is one, else the end of the output.
fn tail(s: &str) -> String {
    if let Some(line) = s.lines().find(|l| l.starts_with("error")) {
        return line.chars().take(600).collect();
    }
    let s = s.trim();
    let start = s.len().saturating_sub(600);
    let start = (start..=s.len())
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    s[start..].replace('\n', " | ")
}

#[test]
fn bad_inputs() {
    let cases = cases();
    let next = AtomicUsize::new(0);
    let failures = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..PARALLEL {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::SeqCst);
                let Some(case) = cases.get(i) else { break };
                let scratch = tempfile::tempdir().unwrap();
                let line = format!("glimpse {}", case.args.join(" "));
                match check(case, scratch.path()) {
                    Ok(secs) => eprintln!("ok   {line} ({secs:.1} s)"),
                    Err(why) => {
                        eprintln!("FAIL {line}: {why}");
                        failures.lock().unwrap().push(format!("{line}\n    {why}"));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} bad-input cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// The corpus' most expensive inputs for the memory they make a command take.
#[rustfmt::skip]
const WORST: &[&[&str]] = &[
    &["embed", "--model", CLIP, "--image", "{bad}/images/png_bomb.png"],
    &["embed", "--model", CLIP, "--image", "{bad}/images/png_huge_dimensions.png"],
    &["embed", "--model", "{bad}/models/clip_processor_224", "--image", "{bad}/images/png_1x20000.png"],
    &["embed", "--model", CLIP, "--image", "{bad}/images/png_1x20000.png"],
    &["embed", "--model", "{bad}/models/clip_st_huge_header_len", "--text", "x"],
    &["embed", "--model", "{bad}/models/clip_processor_shortest_edge_100000", "--image", CAT],
];

#[test]
fn bad_inputs_peak_memory() {
    let mut failures = Vec::new();
    for args in WORST {
        let args: Vec<String> = args.iter().map(|a| a.replace("{bad}", BAD)).collect();
        let scratch = tempfile::tempdir().unwrap();
        let e = run(&args, scratch.path());
        let line = format!("glimpse {}", args.join(" "));
        eprintln!(
            "{line}: exit {:?}, peak {} MiB, {:.1} s",
            e.code,
            e.max_rss_kb / 1024,
            e.seconds
        );
        if let Some(c) = crash(&e) {
            failures.push(format!("{line}: {c}; stderr: {}", tail(&e.stderr)));
        } else if e.max_rss_kb > PEAK_LIMIT_KB {
            failures.push(format!(
                "{line}: peak resident memory {} MiB is over {} MiB",
                e.max_rss_kb / 1024,
                PEAK_LIMIT_KB / 1024
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// The corpus the cases name is there (a missing file would pass as "refused").
#[test]
fn corpus_is_complete() {
    let bad = root().join(BAD);
    let missing: Vec<PathBuf> = IMAGES
        .iter()
        .filter(|(f, _)| !f.starts_with("no_such"))
        .map(|(f, _)| bad.join("images").join(f))
        .chain(MODELS.iter().map(|(d, _, _)| bad.join("models").join(d)))
        .chain(LINES.iter().flat_map(|(args, _)| {
            args.iter()
                .filter(|a| a.starts_with("{bad}/") && !a.contains("no_such"))
                .map(|a| root().join(a.replace("{bad}", BAD)))
        }))
        .filter(|p| !p.exists())
        .collect();
    assert!(missing.is_empty(), "missing from the corpus: {missing:?}");
}
