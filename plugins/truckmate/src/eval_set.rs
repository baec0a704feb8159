//! Hand-written evaluation sets: utterances written the way drivers speak, one JSON object a
//! line, `{"utterance": "...", "intent": "...", "slots": {...}}` (intent `none` for an utterance
//! that is none of the intents). They are never trained on; `bitnet eval --set FILE` decodes
//! each utterance with a checkpoint's model and scores it like a held-out split, with per-intent
//! figures, a confusion matrix and the list of misses, and how often `bitnet classify` would
//! abstain on its in-domain and out-of-domain utterances.
//!
//! The file is untrusted input: its size, line count and utterance length are bounded, and every
//! malformed line is refused with its line number.

use crate::answer::Answer;
use crate::confidence::{decode_prompts, intent_confidence};
use crate::eval::{Outcome, Tally, clean_utterance, prompt_ids, reads_nothing, score};
use bitnet_framework::model::InferenceModel;
use bitnet_framework::tokenizer::Tokenizer;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Largest eval-set file read, in bytes.
pub const MAX_FILE_BYTES: usize = 16 << 20;
/// Most lines in one set.
pub const MAX_LINES: usize = 100_000;
/// Longest utterance, in characters.
pub const MAX_UTTERANCE_CHARS: usize = 1_000;
/// The intent of an utterance that is none of the assistant's intents.
pub const NONE_INTENT: &str = "none";

/// Why an eval set was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum EvalSetError {
    /// The file is larger than [`MAX_FILE_BYTES`] or has more than [`MAX_LINES`] lines.
    #[error("the eval set is too large ({0}); limits: {MAX_FILE_BYTES} bytes, {MAX_LINES} lines")]
    TooLarge(String),
    /// A line is not a labelled utterance.
    #[error("line {line}: {message}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// The set has no utterance.
    #[error("the eval set holds no utterance")]
    Empty,
}

/// One line of an eval set as written.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    utterance: String,
    intent: String,
    #[serde(default)]
    slots: BTreeMap<String, String>,
}

/// A labelled utterance of an eval set.
#[derive(Debug, Clone, PartialEq)]
pub struct LabelledUtterance {
    /// 1-based line in the file.
    pub line: usize,
    /// The utterance as written.
    pub utterance: String,
    /// Expected intent (`none` for out of domain).
    pub intent: String,
    /// Expected slots, canonical values.
    pub slots: BTreeMap<String, String>,
}

impl LabelledUtterance {
    /// The expected answer JSON, in the corpus' form (sorted keys).
    pub fn answer_json(&self) -> String {
        serde_json::json!({ "intent": self.intent, "slots": self.slots }).to_string()
    }
}

/// Parses an eval set. Blank lines are skipped; every other line must be one labelled
/// utterance. (An empty utterance is written as `"utterance": ""`.)
pub fn parse_eval_set(text: &str) -> Result<Vec<LabelledUtterance>, EvalSetError> {
    if text.len() > MAX_FILE_BYTES {
        return Err(EvalSetError::TooLarge(format!("{} bytes", text.len())));
    }
    let mut items = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        if line > MAX_LINES {
            return Err(EvalSetError::TooLarge(format!("more than {MAX_LINES} lines")));
        }
        if raw.trim().is_empty() {
            continue;
        }
        let bad = |message: String| EvalSetError::Line { line, message };
        let r: Record = serde_json::from_str(raw).map_err(|e| bad(e.to_string()))?;
        if r.utterance.chars().count() > MAX_UTTERANCE_CHARS {
            return Err(bad(format!("utterance longer than {MAX_UTTERANCE_CHARS} characters")));
        }
        let intent = r.intent.trim();
        if intent.is_empty() || !intent.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            return Err(bad(format!("intent `{}` is not a lower-case name", r.intent)));
        }
        if intent == NONE_INTENT && !r.slots.is_empty() {
            return Err(bad("an utterance of intent `none` has no slots".into()));
        }
        items.push(LabelledUtterance {
            line,
            utterance: r.utterance,
            intent: intent.to_string(),
            slots: r.slots,
        });
    }
    if items.is_empty() {
        return Err(EvalSetError::Empty);
    }
    Ok(items)
}

/// An utterance the model got wrong (intent or slots).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Miss {
    /// Line in the set.
    pub line: usize,
    /// The utterance.
    pub utterance: String,
    /// The expected answer.
    pub expected: String,
    /// What the model wrote.
    pub predicted: String,
}

/// What the model decoded for one utterance.
#[derive(Debug, Clone, PartialEq)]
pub struct SetOutput {
    /// The answer text (what accuracy is scored on).
    pub text: String,
    /// The model's confidence in the intent it wrote ([`intent_confidence`]).
    pub confidence: f64,
    /// The utterance had no token once cleaned and encoded, so `classify` would not decode it.
    pub empty: bool,
}

impl SetOutput {
    /// Whether `bitnet classify` answers `none` at `threshold`: the model's own `none`, an
    /// intent below the threshold, an unreadable answer or an empty utterance
    /// ([`Answer::from_decoded`]).
    pub fn abstains(&self, threshold: f64) -> bool {
        self.empty
            || Answer::from_decoded(&self.text, self.confidence, threshold).intent == NONE_INTENT
    }
}

/// Answers of `none` (`abstained`) among `of` utterances.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct AbstainCount {
    /// Utterances answered `none`.
    pub abstained: u64,
    /// Utterances counted.
    pub of: u64,
    /// `abstained / of` (0 when there are none).
    pub rate: f64,
}

impl AbstainCount {
    fn add(&mut self, abstained: bool) {
        self.abstained += u64::from(abstained);
        self.of += 1;
        self.rate = self.abstained as f64 / self.of as f64;
    }
}

/// How often `classify` at `threshold` answers `none`, by the utterance's expected intent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Abstention {
    /// The confidence threshold (`bitnet classify --threshold`).
    pub threshold: f64,
    /// Utterances of the assistant's intents (abstaining on them is a miss).
    pub in_domain: AbstainCount,
    /// Utterances of intent `none` (abstaining on them is right).
    pub out_of_domain: AbstainCount,
}

/// Everything `bitnet eval --set` reports.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SetReport {
    /// Overall and per-intent counts.
    pub tally: Tally,
    /// Expected intent -> predicted intent (`(invalid)` for unparseable output) -> count.
    pub confusion: BTreeMap<String, BTreeMap<String, u64>>,
    /// Every utterance with a wrong intent or wrong slots, in file order.
    pub misses: Vec<Miss>,
    /// What `classify` would abstain on.
    pub abstention: Abstention,
}

/// The intent a model output names, or `(invalid)`.
fn predicted_intent(output: &str) -> String {
    serde_json::from_str::<serde_json::Value>(output.trim())
        .ok()
        .and_then(|v| v.get("intent").and_then(|s| s.as_str()).map(str::to_string))
        .unwrap_or_else(|| "(invalid)".to_string())
}

/// Scores model outputs (`outputs[i]` for `items[i]`), counting abstentions at `threshold`.
pub fn score_outputs(
    items: &[LabelledUtterance],
    outputs: &[SetOutput],
    threshold: f64,
) -> SetReport {
    let mut report = SetReport::default();
    report.abstention.threshold = threshold;
    for (item, out) in items.iter().zip(outputs) {
        let abstains = out.abstains(threshold);
        if item.intent == NONE_INTENT {
            report.abstention.out_of_domain.add(abstains);
        } else {
            report.abstention.in_domain.add(abstains);
        }
        let output = &out.text;
        let expected = item.answer_json();
        let outcome: Outcome = score(&expected, output);
        report.tally.add(&item.intent, outcome);
        *report
            .confusion
            .entry(item.intent.clone())
            .or_default()
            .entry(predicted_intent(output))
            .or_default() += 1;
        if !(outcome.intent_correct && outcome.slots_exact) {
            report.misses.push(Miss {
                line: item.line,
                utterance: item.utterance.clone(),
                expected,
                predicted: output.trim().to_string(),
            });
        }
    }
    report
}

/// Decodes every utterance (cleaned the way corpus utterances are) greedily, with the model's
/// intent confidence, one thread per model, each on a contiguous share decoded
/// [`crate::eval::DECODE_BATCH`] at a time (together, each answer the one it gets alone);
/// `progress` is called after each utterance. Outputs are in the order of `items`.
pub fn decode_all(
    models: &mut [Box<dyn InferenceModel>],
    tok: &dyn Tokenizer,
    items: &[LabelledUtterance],
    max_len: usize,
    progress: &(dyn Fn() + Sync),
) -> Result<Vec<SetOutput>, crate::eval::EvalError> {
    if items.is_empty() || models.is_empty() {
        return Ok(Vec::new());
    }
    let share = items.len().div_ceil(models.len());
    let parts: Vec<Result<Vec<SetOutput>, crate::eval::EvalError>> = std::thread::scope(|s| {
        let handles: Vec<_> = models
            .iter_mut()
            .zip(items.chunks(share))
            .map(|(model, chunk)| {
                s.spawn(move || {
                    let mut out = Vec::with_capacity(chunk.len());
                    for batch in chunk.chunks(crate::eval::DECODE_BATCH) {
                        let prompts = batch
                            .iter()
                            .map(|item| prompt_ids(tok, &clean_utterance(&item.utterance)))
                            .collect::<Result<Vec<_>, _>>()?;
                        let empty: Vec<bool> = prompts.iter().map(|p| reads_nothing(p)).collect();
                        let decoded = decode_prompts(model.as_mut(), tok, prompts, max_len)?;
                        for (decoded, empty) in decoded.into_iter().zip(empty) {
                            let decoded = decoded?;
                            out.push(SetOutput {
                                confidence: intent_confidence(tok, &decoded)?,
                                text: decoded.text,
                                empty,
                            });
                            progress();
                        }
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    });
    let mut outputs = Vec::with_capacity(items.len());
    for part in parts {
        outputs.extend(part?);
    }
    Ok(outputs)
}

/// The development sets (the sets that train), with the least utterances each holds per intent
/// and out of domain: the tests' one list of them.
#[cfg(test)]
pub(crate) const DEVELOPMENT_SETS: &[(&str, &str, usize, usize)] = &[
    ("handwritten-dev", include_str!("../data/handwritten-dev.jsonl"), 15, 40),
    ("handwritten-dev2", include_str!("../data/handwritten-dev2.jsonl"), 16, 35),
    ("handwritten-dev3", include_str!("../data/handwritten-dev3.jsonl"), 20, 40),
    ("handwritten-dev4", include_str!("../data/handwritten-dev4.jsonl"), 20, 50),
    ("handwritten-dev5", include_str!("../data/handwritten-dev5.jsonl"), 50, 100),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines_and_refuses_bad_ones_by_number() {
        let text = "{\"utterance\": \"fuel at exit 12\", \"intent\": \"find_poi\", \"slots\": \
                    {\"exit\": \"12\", \"poi_type\": \"fuel\"}}\n\n\
                    {\"utterance\": \"how about them cowboys\", \"intent\": \"none\"}\n";
        let items = parse_eval_set(text).expect("parses");
        assert_eq!(items.len(), 2);
        assert_eq!((items[0].line, items[1].line), (1, 3));
        assert_eq!(
            items[0].answer_json(),
            r#"{"intent":"find_poi","slots":{"exit":"12","poi_type":"fuel"}}"#
        );
        assert_eq!(items[1].answer_json(), r#"{"intent":"none","slots":{}}"#);

        let cases = [
            ("not json", 1, "expected"),
            ("{\"utterance\": \"x\"}", 1, "missing field `intent`"),
            ("{\"utterance\": \"x\", \"intent\": \"a\", \"extra\": 1}", 1, "unknown field"),
            ("{\"utterance\": \"x\", \"intent\": \"Navigate!\"}", 1, "not a lower-case name"),
            (
                "{\"utterance\": \"x\", \"intent\": \"none\", \"slots\": {\"a\": \"b\"}}",
                1,
                "no slots",
            ),
            ("{\"utterance\": 5, \"intent\": \"a\"}", 1, "invalid type"),
        ];
        for (line, n, want) in cases {
            let text = format!("{{\"utterance\": \"ok\", \"intent\": \"a\"}}\n{line}\n");
            match parse_eval_set(&text) {
                Err(EvalSetError::Line { line, message }) => {
                    assert_eq!(line, n + 1, "{message}");
                    assert!(message.contains(want), "{message} lacks {want}");
                }
                other => panic!("{line}: {other:?}"),
            }
        }
        let long = format!("{{\"utterance\": \"{}\", \"intent\": \"a\"}}", "a".repeat(1001));
        assert!(matches!(parse_eval_set(&long), Err(EvalSetError::Line { .. })));
        assert_eq!(parse_eval_set("\n \n"), Err(EvalSetError::Empty));
    }

    #[test]
    fn scoring_counts_confusions_and_lists_misses() {
        let items = parse_eval_set(
            "{\"utterance\": \"a\", \"intent\": \"stop_trip\"}\n\
             {\"utterance\": \"b\", \"intent\": \"navigate\", \"slots\": {\"city\": \"reno\"}}\n\
             {\"utterance\": \"c\", \"intent\": \"none\"}\n\
             {\"utterance\": \"d\", \"intent\": \"none\"}\n",
        )
        .expect("parses");
        let outputs = [
            (r#"{"intent":"stop_trip","slots":{}}"#, 0.4),
            (r#"{"intent":"navigate","slots":{"city":"elko"}}"#, 0.9),
            (r#"{"intent":"navigate","slots":{}}"#, 0.8),
            ("garbage", 0.0),
        ]
        .map(|(text, confidence)| SetOutput {
            text: text.into(),
            confidence,
            empty: false,
        });
        let r = score_outputs(&items, &outputs, 0.5);
        // Line 1 abstains below the threshold (still scored on what the model wrote), line 4 on
        // an unreadable answer; line 3 answers navigate confidently.
        let count =
            |abstained, of| AbstainCount { abstained, of, rate: abstained as f64 / of as f64 };
        assert_eq!(r.abstention.in_domain, count(1, 2));
        assert_eq!(r.abstention.out_of_domain, count(1, 2));
        let strict = score_outputs(&items, &outputs, 0.95);
        assert_eq!(strict.abstention.in_domain, count(2, 2));
        assert_eq!(strict.abstention.out_of_domain, count(2, 2));
        let empty = SetOutput { text: outputs[1].text.clone(), confidence: 1.0, empty: true };
        assert!(empty.abstains(0.0) && !outputs[1].abstains(0.0));
        assert_eq!(r.tally.examples, 4);
        assert_eq!(r.tally.intent_correct, 2, "stop_trip and navigate");
        // Slots are scored on their own: line 3 wrote the right (empty) slots, wrong intent.
        assert_eq!(r.tally.slots_exact, 2, "lines 1 and 3");
        assert_eq!(r.confusion["none"]["navigate"], 1);
        assert_eq!(r.confusion["none"]["(invalid)"], 1);
        assert_eq!(r.confusion["navigate"]["navigate"], 1);
        assert_eq!(r.misses.iter().map(|m| m.line).collect::<Vec<_>>(), vec![2, 3, 4]);
    }

    /// Parses a shipped set and checks that it names known intents, with at least `per_intent`
    /// utterances of each and `none` of the out-of-domain ones.
    fn check_shipped(text: &str, per_intent: usize, none: usize) -> Vec<LabelledUtterance> {
        let items = parse_eval_set(text).expect("the shipped set parses");
        let intents: std::collections::BTreeSet<&str> =
            crate::corpus::INTENTS.iter().map(|(name, _)| *name).collect();
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for item in &items {
            assert!(
                item.intent == NONE_INTENT || intents.contains(item.intent.as_str()),
                "line {}: unknown intent {}",
                item.line,
                item.intent
            );
            *counts.entry(item.intent.as_str()).or_default() += 1;
        }
        for name in &intents {
            assert!(counts.get(name).copied().unwrap_or(0) >= per_intent, "{name}: {counts:?}");
        }
        assert!(counts.get(NONE_INTENT).copied().unwrap_or(0) >= none, "{counts:?}");
        items
    }

    #[test]
    fn the_shipped_hand_written_set_is_well_formed() {
        let items = check_shipped(include_str!("../data/handwritten-eval.jsonl"), 20, 50);
        assert!(items.len() >= 350, "{}", items.len());
    }

    /// The slot keys each intent may carry, as the generators write them.
    const SLOT_KEYS: &[(&str, &[&str])] = &[
        ("start_trip", &["city", "state"]),
        ("stop_trip", &[]),
        ("navigate", &["city", "highway", "state"]),
        ("find_poi", &["chain", "city", "exit", "highway", "poi_type"]),
        ("route_preference", &["preference"]),
        ("hos_status", &[]),
        ("hos_break_check", &[]),
        ("hos_drive_remaining", &[]),
        ("add_todo", &["task", "time"]),
        ("add_expense", &["amount", "category"]),
        ("eta_query", &["city", "state"]),
        ("next_stop_query", &[]),
        ("trip_status", &[]),
        ("reroute", &["highway", "reason"]),
        ("update_load", &["bol", "commodity", "po", "weight_lbs"]),
        ("none", &[]),
    ];

    /// Why a hand-written label is not in the generators' canonical form, if it is not.
    fn label_problem(item: &LabelledUtterance) -> Option<String> {
        use crate::corpus::pools::{
            CHAINS, EXPENSE_CATEGORIES, POI_TYPES, PREFERENCES, REROUTE_REASONS,
        };
        let Some((_, keys)) = SLOT_KEYS.iter().find(|(i, _)| *i == item.intent) else {
            return Some(format!("unknown intent {}", item.intent));
        };
        let digits = |v: &str| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
        let named = |pool: &[(&str, &[&str])], v: &str| pool.iter().any(|(name, _)| *name == v);
        for (key, value) in &item.slots {
            let v = value.as_str();
            let ok = keys.contains(&key.as_str())
                && match key.as_str() {
                    "chain" => named(CHAINS, v),
                    "poi_type" => named(POI_TYPES, v),
                    // The generators write the two negations beside the pool's preferences.
                    "preference" => {
                        named(PREFERENCES, v) || v == "allow_tolls" || v == "allow_highways"
                    }
                    "category" => named(EXPENSE_CATEGORIES, v),
                    "reason" => named(REROUTE_REASONS, v),
                    "state" => v.len() == 2 && v.bytes().all(|b| b.is_ascii_lowercase()),
                    "highway" => v.strip_prefix("i-").is_some_and(digits),
                    "exit" | "weight_lbs" | "po" | "bol" => digits(v),
                    "amount" => v
                        .split_once('.')
                        .is_some_and(|(d, c)| digits(d) && c.len() == 2 && digits(c)),
                    "time" => v.split_once(':').is_some_and(|(h, m)| {
                        h.len() == 2
                            && m.len() == 2
                            && h.parse::<u32>().is_ok_and(|h| h < 24)
                            && m.parse::<u32>().is_ok_and(|m| m < 60)
                    }),
                    _ => {
                        !v.is_empty() && v == v.trim() && !v.bytes().any(|b| b.is_ascii_uppercase())
                    }
                };
            if !ok {
                return Some(format!("{}: slot {key} = {v:?}", item.intent));
            }
        }
        None
    }

    #[test]
    fn the_sets_that_train_label_in_the_generators_canonical_form() {
        for (name, text, _, _) in DEVELOPMENT_SETS {
            for item in parse_eval_set(text).expect("the shipped set parses") {
                assert_eq!(label_problem(&item), None, "{name} line {}", item.line);
            }
        }
        // The check itself refuses what it should.
        let bad = parse_eval_set(concat!(
            r#"{"utterance":"a","intent":"add_expense","slots":{"amount":"42"}}"#,
            "\n",
            r#"{"utterance":"b","intent":"stop_trip","slots":{"city":"reno"}}"#,
            "\n",
            r#"{"utterance":"c","intent":"add_todo","slots":{"time":"3 pm"}}"#,
            "\n",
            r#"{"utterance":"d","intent":"find_poi","slots":{"chain":"wawa"}}"#,
        ))
        .expect("parses");
        assert!(bad.iter().all(|item| label_problem(item).is_some()), "{bad:?}");
    }

    #[test]
    fn the_development_sets_are_well_formed_and_share_no_utterance_with_the_test_set() {
        let test = check_shipped(include_str!("../data/handwritten-eval.jsonl"), 20, 50);
        let normalise = |u: &str| u.split_whitespace().collect::<Vec<_>>().join(" ");
        let test: std::collections::BTreeSet<String> =
            test.iter().map(|i| normalise(&i.utterance)).filter(|u| !u.is_empty()).collect();
        for (name, text, per_intent, none) in DEVELOPMENT_SETS {
            for item in check_shipped(text, *per_intent, *none) {
                let u = normalise(&item.utterance);
                assert!(!test.contains(&u), "{name} line {} is in the test set: {u:?}", item.line);
            }
        }
    }
}
