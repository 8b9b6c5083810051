//! VQA exact-match accuracy: a prediction scores 1 when, after normalisation, it
//! equals one of the accepted answers.
//!
//! Normalisation (a simplified form of the VQA v2 evaluation's): lowercase; delete
//! ASCII punctuation, except a `.` between two digits (so "1.5" survives and "two."
//! does not keep its full stop); split on whitespace; drop the articles "a", "an",
//! "the"; write the number words "zero".."ten" as digits; join with single spaces. It
//! does not do the VQA script's contraction fixes ("dont" -> "don't") or its
//! 10-annotator soft score (min(1, matches / 3)).

use super::{check_len, invalid, MetricsError, Result, NUMBER_WORDS};

/// The normalised form of an answer; see the module doc. "The Two Circles." ->
/// "2 circles"; an answer that is only articles and punctuation becomes "".
pub fn normalize_answer(answer: &str) -> String {
    let lower: Vec<char> = answer.to_lowercase().chars().collect();
    let kept: String = lower
        .iter()
        .enumerate()
        .filter(|&(i, &c)| {
            let decimal_point = c == '.'
                && i > 0
                && lower[i - 1].is_ascii_digit()
                && lower.get(i + 1).is_some_and(char::is_ascii_digit);
            !c.is_ascii_punctuation() || decimal_point
        })
        .map(|(_, &c)| c)
        .collect();
    kept.split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .map(|w| match NUMBER_WORDS.iter().position(|n| *n == w) {
            Some(d) => d.to_string(),
            None => w.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether `prediction` matches any of `accepted` after [`normalize_answer`] on both
/// sides. No accepted answers: `false`.
pub fn vqa_exact_match<S: AsRef<str>>(prediction: &str, accepted: &[S]) -> bool {
    let p = normalize_answer(prediction);
    accepted.iter().any(|a| normalize_answer(a.as_ref()) == p)
}

/// The fraction of questions whose prediction matches (in [0, 1]).
///
/// Errors: no questions, `accepted` of another length than `predictions`, a question
/// with no accepted answer (it could never be answered right).
pub fn vqa_accuracy<P, A, S>(predictions: &[P], accepted: &[A]) -> Result<f64>
where
    P: AsRef<str>,
    A: AsRef<[S]>,
    S: AsRef<str>,
{
    if predictions.is_empty() {
        return Err(MetricsError::Empty {
            what: "predictions",
        });
    }
    check_len(
        "accepted answers (one list per prediction)",
        predictions.len(),
        accepted.len(),
    )?;
    if let Some(i) = accepted.iter().position(|a| a.as_ref().is_empty()) {
        return Err(invalid(
            "accepted answers",
            format!("question {i} has no accepted answer"),
        ));
    }
    let hits = predictions
        .iter()
        .zip(accepted)
        .filter(|(p, a)| vqa_exact_match(p.as_ref(), a.as_ref()))
        .count();
    Ok(hits as f64 / predictions.len() as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation() {
        assert_eq!(normalize_answer("The Two Circles."), "2 circles");
        assert_eq!(normalize_answer("  an apple, please!"), "apple please");
        assert_eq!(normalize_answer("ten"), "10");
        assert_eq!(normalize_answer("1.5"), "1.5");
        assert_eq!(normalize_answer("5."), "5");
        assert_eq!(normalize_answer("it's red"), "its red");
        assert_eq!(normalize_answer("The"), "");
        assert_eq!(normalize_answer(""), "");
        // Articles are dropped only as whole words.
        assert_eq!(normalize_answer("theater"), "theater");
    }

    #[test]
    fn matching_and_mean() {
        assert!(vqa_exact_match("Two.", &["2"]));
        assert!(vqa_exact_match("a red one", &["blue", "red 1"]));
        assert!(!vqa_exact_match("red", &["dark red"]));
        assert!(!vqa_exact_match::<&str>("red", &[]));
        let acc = vqa_accuracy(
            &["yes", "Three", "blue"],
            &[vec!["yes"], vec!["3"], vec!["red"]],
        )
        .unwrap();
        assert_eq!(acc, 2.0 / 3.0);
    }

    #[test]
    fn bad_inputs_are_errors() {
        let none: [&str; 0] = [];
        let no_answers: [Vec<&str>; 0] = [];
        assert!(matches!(
            vqa_accuracy(&none, &no_answers),
            Err(MetricsError::Empty { .. })
        ));
        assert!(matches!(
            vqa_accuracy(&["a"], &[vec!["a"], vec!["b"]]),
            Err(MetricsError::Length { .. })
        ));
        let e = vqa_accuracy(&["a", "b"], &[vec!["a"], vec![]]).unwrap_err();
        assert!(e.to_string().contains("question 1 has no accepted"), "{e}");
    }
}
