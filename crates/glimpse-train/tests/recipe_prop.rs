//! Property tests on recipe parsing (`Recipe::from_toml`): arbitrary text and real
//! recipes with values replaced give `Ok` or an `Err` naming the file, never a panic;
//! and a recipe that parses satisfies what the trainer relies on.

use std::path::Path;

use glimpse_train::recipe::Recipe;
use proptest::prelude::*;

fn recipe_text(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../recipes")
        .join(name);
    std::fs::read_to_string(p).unwrap()
}

const RECIPES: &[&str] = &[
    "clip-synth.toml",
    "blip-synth.toml",
    "blip-vqa-synth.toml",
    "vit-clip-synth.toml",
    "vit-blip-synth.toml",
];

/// TOML values of every type, and the numbers at the edges.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "0",
            "1",
            "-1",
            "2",
            "9223372036854775807",
            "-9223372036854775808",
            "18446744073709551615",
            "0.0",
            "-0.0",
            "1e-3",
            "-1e-3",
            "1e308",
            "nan",
            "inf",
            "-inf",
            "true",
            "false",
            "\"\"",
            "\"clip\"",
            "\"blip\"",
            "\"x\"",
            "[]",
            "[1, 2]",
            "{}",
            "{ a = 1 }",
            "1979-05-27",
            "\"runs/x\"",
            "0x10",
            "1_000",
        ])
        .prop_map(String::from),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|f| format!("{f:?}")),
    ]
}

/// Parses; an error must name the file, a success must hold what validation promises.
fn parse(text: &str) {
    match Recipe::from_toml(text, Path::new("prop.toml")) {
        Err(e) => assert!(e.to_string().contains("prop.toml"), "{e}"),
        Ok(r) => {
            assert!(r.optim.batch_size >= 1 && r.optim.accumulate >= 1);
            assert!(r.optim.lr > 0.0 && r.optim.lr.is_finite());
            assert!(r.optim.epochs.is_some() || r.optim.max_steps.is_some());
            assert!(r.run.checkpoint_every >= 1);
            assert!(r.optim.max_steps != Some(0) && r.optim.epochs != Some(0));
            assert!(r.run.log_every >= 1 && r.run.keep_checkpoints >= 1);
            assert!(r.data.max_text_len >= 3);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_text(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        parse(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn real_recipes_with_a_value_replaced(
        which in 0..RECIPES.len(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), toml_value()), 1..4),
    ) {
        let mut lines: Vec<String> = recipe_text(RECIPES[which]).lines().map(String::from).collect();
        for (at, value) in edits {
            let assignments: Vec<usize> = (0..lines.len())
                .filter(|&i| lines[i].contains(" = ") && !lines[i].trim_start().starts_with('#'))
                .collect();
            let i = assignments[at.index(assignments.len())];
            let key = lines[i].split(" = ").next().unwrap().to_string();
            lines[i] = format!("{key} = {value}");
        }
        parse(&lines.join("\n"));
    }

    #[test]
    fn real_recipes_cut_anywhere(which in 0..RECIPES.len(), cut in any::<prop::sample::Index>()) {
        let text = recipe_text(RECIPES[which]);
        let mut end = cut.index(text.len() + 1);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        parse(&text[..end]);
    }
}
