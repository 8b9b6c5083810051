//! The synthetic world's shards read back through the general dataset reader.

use std::path::PathBuf;

use glimpse_data::dataset::{resolve_sources, Loader, LoaderConfig, LoaderStats, Source};
use glimpse_synth::SynthConfig;

fn run(loader: &Loader, epoch: u64, skip: u64) -> (Vec<String>, LoaderStats) {
    let mut it = loader.epoch(epoch, skip);
    let keys: Vec<String> = it.by_ref().map(|r| r.unwrap().key).collect();
    (keys, it.stats())
}

#[test]
fn directories_globs_and_files_resolve_to_sorted_sources() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("synth");
    let cfg = SynthConfig {
        count: 16,
        shard_size: 4,
        image_size: 16,
        val_fraction: 0.2,
        test_fraction: 0.2,
        ..Default::default()
    };
    let report = glimpse_synth::generate(&cfg, &out, |_, _| {}).unwrap();
    let m = &report.manifest;
    let mut expected: Vec<PathBuf> = [&m.test, &m.train, &m.val]
        .iter()
        .flat_map(|s| s.shards.iter().map(|r| out.join(r)))
        .collect();
    expected.sort();

    let dir = resolve_sources(out.to_str().unwrap()).unwrap();
    let paths: Vec<PathBuf> = dir.iter().map(|s| s.path().to_path_buf()).collect();
    assert_eq!(paths, expected);
    assert!(dir.iter().all(|s| matches!(s, Source::Shard(_))));

    let pattern = format!("{}/train/shard-*.tar", out.display());
    let train = resolve_sources(&pattern).unwrap();
    assert_eq!(train.len(), m.train.shards.len());
    assert!(train.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(
        resolve_sources(&format!("{}/**/*.tar", out.display())).unwrap(),
        dir
    );

    let one = out.join(&m.train.shards[0]);
    assert_eq!(
        resolve_sources(one.to_str().unwrap()).unwrap(),
        vec![Source::Shard(one.clone())]
    );

    // The whole dataset reads back, every sample once, matching the manifest.
    let loader = Loader::new(dir, LoaderConfig::default());
    assert_eq!(loader.count().unwrap(), 16);
    let (mut got, stats) = run(&loader, 0, 0);
    got.sort();
    assert_eq!(got, (0..16).map(glimpse_synth::key_of).collect::<Vec<_>>());
    assert_eq!(stats.skipped_corrupt, 0);
}
