//! The committed examples (`examples/synth/`, held-out images of the dataset the
//! bundled models were trained on: `glimpse data synth --count 24000 --seed 0`) come
//! out of the generator again byte for byte, PNG and record.

use std::path::Path;

use glimpse_synth::{encode_sample, sample, SampleJson, SynthConfig};

#[test]
fn committed_examples_regenerate_bit_for_bit() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/synth");
    let cfg = SynthConfig {
        seed: 0,
        count: 24000,
        ..SynthConfig::default()
    };
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let committed: SampleJson = serde_json::from_str(&text).unwrap();
        let s = sample(&cfg, committed.index);
        assert_eq!(s.record, committed, "{}", path.display());
        let (png, _) = encode_sample(&s).unwrap();
        let png_path = path.with_extension("png");
        assert!(
            png == std::fs::read(&png_path).unwrap(),
            "{} differs from the generator's output",
            png_path.display()
        );
        checked += 1;
    }
    assert_eq!(checked, 5, "examples in {}", dir.display());
}
