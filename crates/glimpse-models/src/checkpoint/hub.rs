//! Hub ids: the local Hugging Face cache, and (with the `download` feature) the hub.
//!
//! The cache layout is `<cache>/models--org--name/refs/main` holding a commit hash and
//! `<cache>/models--org--name/snapshots/<hash>/<files>`. `hf_hub::Cache` knows the
//! default location and `HF_HOME`; `HF_HUB_CACHE`, which takes precedence in the
//! reference, is read here.

use std::path::PathBuf;

use super::ModelFiles;
use crate::error::{Error, Result};

/// `name` or `org/name`, with the characters the hub allows; anything else is a path.
pub(super) fn looks_like_hub_id(s: &str) -> bool {
    let parts: Vec<&str> = s.split('/').collect();
    let part_ok = |p: &&str| {
        !p.is_empty()
            && !p.starts_with('.')
            && !p.ends_with('.')
            && !p.contains("..")
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    (1..=2).contains(&parts.len()) && parts.iter().all(part_ok)
}

/// The hub cache directory, as the reference picks it.
pub(super) fn cache_dir() -> PathBuf {
    match std::env::var_os("HF_HUB_CACHE").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => hf_hub::Cache::from_env().path().clone(),
    }
}

/// The cached snapshot of `model_id` at `refs/main`, if any.
fn cached_snapshot(model_id: &str) -> Option<PathBuf> {
    let repo = hf_hub::Repo::model(model_id.to_string());
    let root = cache_dir().join(repo.folder_name());
    let rev = std::fs::read_to_string(root.join("refs").join(repo.revision())).ok()?;
    let snapshot = root.join("snapshots").join(rev.trim());
    snapshot.is_dir().then_some(snapshot)
}

pub(super) fn resolve(model_id: &str) -> Result<ModelFiles> {
    let cached = cached_snapshot(model_id).map(|dir| ModelFiles::from_dir(&dir, model_id));
    match cached {
        Some(Ok(files)) => Ok(files),
        // A partial snapshot: fetch what is missing when we can, else report why.
        Some(Err(e)) => download(model_id).map_err(|d| Error::Model {
            model: model_id.to_string(),
            msg: format!("the cached copy is incomplete ({e}); {d}"),
        }),
        None => download(model_id).map_err(|d| Error::Model {
            model: model_id.to_string(),
            msg: format!(
                "not a local directory and not in the Hugging Face cache at {}; {d}",
                cache_dir().display()
            ),
        }),
    }
}

#[cfg(not(feature = "download"))]
fn download(_model_id: &str) -> std::result::Result<ModelFiles, String> {
    Err(
        "this build cannot download (built without the `download` feature); \
         pass a local directory holding config.json and model.safetensors"
            .into(),
    )
}

/// How long the first request may take before we call the hub unreachable.
#[cfg(feature = "download")]
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

#[cfg(feature = "download")]
fn download(model_id: &str) -> std::result::Result<ModelFiles, String> {
    use hf_hub::api::sync::ApiBuilder;

    // The reference's switch for "never touch the network" is honoured here too.
    if std::env::var("HF_HUB_OFFLINE")
        .is_ok_and(|v| matches!(v.trim(), "1" | "true" | "yes" | "ON" | "on"))
    {
        return Err(
            "HF_HUB_OFFLINE is set, so it is not downloaded; pass a local directory \
             holding config.json and model.safetensors"
                .into(),
        );
    }

    let api = ApiBuilder::new()
        .with_cache_dir(cache_dir())
        .with_progress(false)
        .build()
        .map_err(|e| format!("cannot start a hub client: {e}"))?;
    let repo = api.model(model_id.to_string());
    let unreachable = |e: String| {
        format!(
            "could not download it ({e}); pass a local directory holding config.json \
             and model.safetensors"
        )
    };
    // ureq has no timeout configured by hf-hub: probe with a small file on a thread we
    // can stop waiting for, so an unreachable hub fails fast instead of hanging.
    let (tx, rx) = std::sync::mpsc::channel();
    let probe = api.model(model_id.to_string());
    std::thread::spawn(move || {
        let _ = tx.send(probe.get(super::CONFIG).map_err(|e| e.to_string()));
    });
    let config = rx
        .recv_timeout(CONNECT_TIMEOUT)
        .map_err(|_| unreachable(format!("no answer from the hub in {CONNECT_TIMEOUT:?}")))?
        .map_err(unreachable)?;
    let dir = config
        .parent()
        .map(PathBuf::from)
        .ok_or_else(|| "the hub client returned a path without a directory".to_string())?;
    match repo.get(super::INDEX) {
        Ok(index) => {
            for shard in super::shard_paths(&index).map_err(|e| e.to_string())? {
                repo.get(&shard)
                    .map_err(|e| format!("shard {shard}: {e}"))?;
            }
        }
        Err(_) => {
            repo.get(super::SINGLE)
                .map_err(|e| format!("{}: {e}", super::SINGLE))?;
        }
    }
    // Optional files: a model without them is still usable for some commands.
    let _ = repo.get(super::TOKENIZER);
    let _ = repo.get(super::PREPROCESSOR);
    let _ = repo.get(super::PROCESSOR);
    for extra in [
        "tokenizer_config.json",
        "special_tokens_map.json",
        "chat_template.jinja",
        "generation_config.json",
    ] {
        let _ = repo.get(extra);
    }
    ModelFiles::from_dir(&dir, model_id).map_err(|e| e.to_string())
}
