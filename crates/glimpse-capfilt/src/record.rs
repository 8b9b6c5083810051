//! What CapFilt adds to a sample's JSON record, and how a sample's texts are judged.
//!
//! ```json
//! "capfilt": {
//!   "web": {"text": "...", "itm": 0.93, "kept": true},        (null: no web text)
//!   "synthetic": [{"text": "...", "itm": 0.12, "kept": false}],
//!   "texts": ["..."]                                          (kept texts, web first)
//! }
//! ```

use serde::{Deserialize, Serialize};

/// One text with its ITM match probability and the filter's verdict. `itm` is null
/// only for a blank synthetic caption, which is removed unscored. The probability is
/// the model's f32, held as the f64 with the same shortest decimal form (0.1, not
/// 0.10000000149) so that records read as the model's numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scored {
    pub text: String,
    pub itm: Option<f64>,
    pub kept: bool,
}

fn shortest_f64(p: f32) -> f64 {
    p.to_string().parse().unwrap_or(p as f64)
}

/// The `capfilt` field of an output record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CapfiltRecord {
    pub web: Option<Scored>,
    pub synthetic: Vec<Scored>,
    /// The texts that passed the filter: the web text first, then the synthetic ones.
    pub texts: Vec<String>,
}

/// The texts of a sample the filter must score, in order: the web text (if any), then
/// every non-blank synthetic caption.
pub fn texts_to_score<'a>(web: Option<&'a str>, synthetic: &'a [String]) -> Vec<&'a str> {
    web.into_iter()
        .chain(
            synthetic
                .iter()
                .map(String::as_str)
                .filter(|t| !t.trim().is_empty()),
        )
        .collect()
}

/// Builds the record from the ITM probabilities of [`texts_to_score`]'s texts; a text
/// is kept when its probability reaches `threshold`.
pub fn judge(
    web: Option<&str>,
    synthetic: &[String],
    itm: &[f32],
    threshold: f32,
) -> CapfiltRecord {
    let mut scores = itm.iter().copied();
    let mut score = |text: &str| -> Scored {
        let itm = (!text.trim().is_empty()).then(|| scores.next()).flatten();
        Scored {
            text: text.to_string(),
            itm: itm.map(shortest_f64),
            kept: itm.is_some_and(|p| p >= threshold),
        }
    };
    let web = web.map(&mut score);
    let synthetic: Vec<Scored> = synthetic.iter().map(|t| score(t)).collect();
    let texts = web
        .iter()
        .chain(&synthetic)
        .filter(|s| s.kept)
        .map(|s| s.text.clone())
        .collect();
    CapfiltRecord {
        web,
        synthetic,
        texts,
    }
}

/// The tar entry key of a sample key: WebDataset groups entries by the name up to the
/// first dot of the base name, so dots there become `_`. `None` when the entry names
/// would exceed the 100 bytes of a tar header.
pub fn entry_key(key: &str) -> Option<String> {
    let base_at = key.rfind('/').map_or(0, |i| i + 1);
    let out = format!("{}{}", &key[..base_at], key[base_at..].replace('.', "_"));
    // The longest entry written is `KEY.json` / `KEY.jpeg`.
    (!out.is_empty() && out.len() + 5 <= 100 && !out.ends_with('/')).then_some(out)
}

/// The extension the image is written under: its own when the shard reader knows it,
/// otherwise `image` (decoded by content).
pub fn image_ext(image_name: &str) -> &'static str {
    let ext = image_name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "png" => "png",
        "jpg" => "jpg",
        "jpeg" => "jpeg",
        "webp" => "webp",
        _ => "image",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn web_and_synthetic_meet_one_threshold() {
        let synthetic = vec!["a red circle".to_string(), "a blue square".to_string()];
        let texts = texts_to_score(Some("a red ball"), &synthetic);
        assert_eq!(texts, ["a red ball", "a red circle", "a blue square"]);
        let r = judge(Some("a red ball"), &synthetic, &[0.3, 0.9, 0.5], 0.5);
        assert!(!r.web.as_ref().unwrap().kept);
        assert_eq!(r.web.as_ref().unwrap().itm, Some(0.3f64));
        assert!(
            r.synthetic.iter().all(|s| s.kept),
            "0.5 reaches the threshold"
        );
        assert_eq!(r.texts, ["a red circle", "a blue square"]);
    }

    #[test]
    fn blank_synthetic_is_removed_unscored() {
        let synthetic = vec![" ".to_string(), "a green star".to_string()];
        let texts = texts_to_score(None, &synthetic);
        assert_eq!(texts, ["a green star"]);
        let r = judge(None, &synthetic, &[0.8], 0.5);
        assert_eq!(r.web, None);
        assert_eq!(r.synthetic[0].itm, None);
        assert!(!r.synthetic[0].kept);
        assert_eq!(r.synthetic[1].itm, Some(0.8f64));
        assert_eq!(r.texts, ["a green star"]);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["web"], serde_json::Value::Null);
        assert_eq!(json["synthetic"][1]["kept"], true);
    }

    #[test]
    fn entry_keys_keep_webdataset_grouping() {
        assert_eq!(entry_key("000001").as_deref(), Some("000001"));
        assert_eq!(
            entry_key("images/a.b.jpg").as_deref(),
            Some("images/a_b_jpg")
        );
        assert_eq!(entry_key(&"k".repeat(96)), None);
        assert_eq!(entry_key(""), None);
        assert_eq!(image_ext("x/000001.PNG"), "png");
        assert_eq!(image_ext("photo.bmp"), "image");
    }
}
