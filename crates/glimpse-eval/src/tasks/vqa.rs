//! Visual question answering: exact-match accuracy after answer normalisation over
//! every question of every image.

use glimpse_models::pipeline::Pipeline;
use serde_json::Value;

use crate::metrics;
use crate::reader::{metric_error, nothing_usable, Reader};
use crate::records::qa_pairs;
use std::collections::BTreeMap;

use crate::evidence::{
    question_type, Evidence, QuestionTypeRow, TaskEvidence, Thumbnail, VqaEvidence, MAX_ITEMS,
};
use crate::report::MAX_EXAMPLES;
use crate::{EvalOptions, Metrics, Result, Task, VqaExample, VqaMetrics};

pub(crate) fn vqa(
    p: &Pipeline,
    reader: &mut Reader,
    opts: &EvalOptions,
) -> Result<(usize, Metrics, Option<Evidence>)> {
    let select = |meta: &Value| {
        let qa = qa_pairs(meta);
        if qa.is_empty() {
            Err("no question with an answer (`qa`, or `question` with `answer(s)`)".to_string())
        } else {
            Ok(qa)
        }
    };
    let gen = p.generation_config(opts.generation.clone());
    let (mut predictions, mut accepted, mut examples) = (Vec::new(), Vec::new(), Vec::new());
    let mut n_images = 0;
    let mut evidence = Evidence::default();
    let (mut by_type, mut wrong) = (BTreeMap::<&str, (usize, usize)>::new(), Vec::new());
    loop {
        let batch = reader.batch(opts.batch_size, select)?;
        if batch.is_empty() {
            break;
        }
        for (ex, pairs) in batch {
            // Wrong answers shown from this image: at most two, so the sample spreads
            // over several images.
            let mut shown_here = 0;
            for qa in pairs {
                let answer = p.ask(&ex.image, &qa.question, &gen)?.text;
                if opts.evidence {
                    let right = metrics::vqa_exact_match(&answer, &qa.answers);
                    let qtype = question_type(&qa.question);
                    let row = by_type.entry(qtype).or_default();
                    row.0 += usize::from(right);
                    row.1 += 1;
                    if !right && wrong.len() < MAX_ITEMS && shown_here < 2 {
                        shown_here += 1;
                        evidence
                            .images
                            .entry(ex.key.clone())
                            .or_insert_with(|| Thumbnail::of(&ex.image));
                        wrong.push(VqaEvidence {
                            key: ex.key.clone(),
                            question: qa.question.clone(),
                            question_type: qtype.to_string(),
                            prediction: answer.clone(),
                            answers: qa.answers.clone(),
                        });
                    }
                }
                if examples.len() < MAX_EXAMPLES {
                    examples.push(VqaExample {
                        key: ex.key.clone(),
                        question: qa.question,
                        correct: metrics::vqa_exact_match(&answer, &qa.answers),
                        prediction: answer.clone(),
                        answers: qa.answers.clone(),
                    });
                }
                predictions.push(answer);
                accepted.push(qa.answers);
            }
            n_images += 1;
        }
    }
    if n_images == 0 {
        return Err(nothing_usable(reader, "no image with a question"));
    }
    let accuracy =
        metrics::vqa_accuracy(&predictions, &accepted).map_err(metric_error(Task::Vqa))?;
    Ok((
        n_images,
        Metrics::Vqa(VqaMetrics {
            accuracy,
            n_questions: predictions.len(),
            n_images,
            examples,
        }),
        opts.evidence.then(|| Evidence {
            task: TaskEvidence::Vqa {
                by_type: by_type
                    .into_iter()
                    .map(|(t, (correct, total))| QuestionTypeRow {
                        question_type: t.to_string(),
                        correct,
                        total,
                    })
                    .collect(),
                wrong,
            },
            ..evidence
        }),
    ))
}
