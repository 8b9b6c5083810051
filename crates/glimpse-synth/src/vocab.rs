//! The world's vocabulary: every word list its captions, questions and records draw
//! from. Evaluation and training read them to check or build text about the world;
//! an index into one of these lists is how the generator names a shape, colour, size
//! or cell.

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

/// The vocabulary as the manifest records it.
pub(crate) fn to_json() -> serde_json::Value {
    serde_json::json!({
        "shapes": SHAPES.iter().map(|s| s.0).collect::<Vec<_>>(),
        "colors": COLORS.iter().map(|c| serde_json::json!({"name": c.0, "rgb": c.1})).collect::<Vec<_>>(),
        "sizes": SIZES.iter().map(|s| s.0).collect::<Vec<_>>(),
        "positions": POSITIONS,
        "relations": RELATIONS,
        "background_styles": BACKGROUND_STYLES,
        "corruptions": CORRUPTIONS,
        "counts": [1, 2, 3, 4],
    })
}
