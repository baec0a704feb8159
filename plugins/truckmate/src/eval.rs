//! Evaluation: does the model write the right intent and slots for utterances it has not seen?
//!
//! For each held-out line `[USER] u [INTENT] answer`, the model is given
//! `[BOS] [USER] u [INTENT]` and decodes greedily until `[EOS]` (or the context is full); the
//! decoded text is parsed as JSON and compared with the answer:
//! - *intent accuracy*: the `"intent"` string equals the reference;
//! - *slot exact match*: the `"slots"` object equals the reference exactly (same keys, same
//!   values; an intent without slots must produce `{}`);
//! - *invalid JSON*: the output does not parse as a JSON object with a string `"intent"`.
//!
//! Loss and perplexity come separately from [`mean_loss`]: the mean cross-entropy per counted
//! target over the split's packed windows, and `exp` of it.

use bitnet_framework::model::{InferenceModel, KernelError, ModelKernel};
use bitnet_framework::tokenizer::{Tokenizer, TokenizerError};
use bitnet_runtime::data::{BatchBuffer, DataError};
use serde::Serialize;
use std::collections::BTreeMap;

/// Errors while evaluating.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The model failed.
    #[error("model: {0}")]
    Kernel(#[from] KernelError),
    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] TokenizerError),
    /// Data could not be read.
    #[error("data: {0}")]
    Data(#[from] DataError),
    /// A corpus line is not `[USER] ... [INTENT] ...`.
    #[error("line {line}: not a TruckMate example (`[USER] ... [INTENT] {{...}}`)")]
    BadLine {
        /// 1-based line number.
        line: usize,
    },
}

/// How one prediction scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Outcome {
    /// The output parsed as a JSON object with a string `"intent"`.
    pub valid_json: bool,
    /// The intent matched.
    pub intent_correct: bool,
    /// The slots object matched exactly.
    pub slots_exact: bool,
}

/// Scores `predicted` text against the reference answer JSON.
pub fn score(expected_json: &str, predicted: &str) -> Outcome {
    let expected: serde_json::Value =
        serde_json::from_str(expected_json).unwrap_or(serde_json::Value::Null);
    let parsed = serde_json::from_str::<serde_json::Value>(predicted.trim())
        .ok()
        .filter(|v| v.get("intent").is_some_and(serde_json::Value::is_string));
    match parsed {
        None => Outcome { valid_json: false, intent_correct: false, slots_exact: false },
        Some(v) => Outcome {
            valid_json: true,
            intent_correct: v.get("intent") == expected.get("intent"),
            slots_exact: v.get("slots").is_some() && v.get("slots") == expected.get("slots"),
        },
    }
}

/// Running counts of outcomes, overall and per intent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    /// Examples scored.
    pub examples: u64,
    /// Correct intents.
    pub intent_correct: u64,
    /// Exact slot matches.
    pub slots_exact: u64,
    /// Invalid outputs.
    pub invalid_json: u64,
    /// Per reference intent: `[examples, intent correct, slots exact]`.
    pub per_intent: BTreeMap<String, [u64; 3]>,
}

impl Tally {
    /// Adds every count of `other`.
    pub fn merge(&mut self, other: &Tally) {
        self.examples += other.examples;
        self.intent_correct += other.intent_correct;
        self.slots_exact += other.slots_exact;
        self.invalid_json += other.invalid_json;
        for (intent, counts) in &other.per_intent {
            let e = self.per_intent.entry(intent.clone()).or_default();
            for (a, b) in e.iter_mut().zip(counts) {
                *a += b;
            }
        }
    }

    /// Adds one outcome for reference intent `intent`.
    pub fn add(&mut self, intent: &str, o: Outcome) {
        self.examples += 1;
        self.intent_correct += u64::from(o.intent_correct);
        self.slots_exact += u64::from(o.slots_exact);
        self.invalid_json += u64::from(!o.valid_json);
        let e = self.per_intent.entry(intent.to_string()).or_default();
        e[0] += 1;
        e[1] += u64::from(o.intent_correct);
        e[2] += u64::from(o.slots_exact);
    }

    fn rate(n: u64, d: u64) -> f64 {
        if d == 0 { 0.0 } else { n as f64 / d as f64 }
    }

    /// Fraction of correct intents.
    pub fn intent_accuracy(&self) -> f64 {
        Self::rate(self.intent_correct, self.examples)
    }

    /// Fraction of exact slot matches.
    pub fn slot_exact_match(&self) -> f64 {
        Self::rate(self.slots_exact, self.examples)
    }

    /// Fraction of invalid outputs.
    pub fn invalid_json_rate(&self) -> f64 {
        Self::rate(self.invalid_json, self.examples)
    }
}

/// The 95% Wilson score interval of a rate of `successes` in `trials` (`[0, 1]` for none): unlike
/// the normal approximation it stays inside `[0, 1]` and is not empty at 0% or 100%, where these
/// rates often sit. Computed here rather than with a statistics crate for one closed formula.
pub fn wilson_interval(successes: u64, trials: u64) -> [f64; 2] {
    if trials == 0 {
        return [0.0, 1.0];
    }
    // The 97.5th percentile of the standard normal.
    const Z: f64 = 1.959_963_984_540_054;
    let (n, p) = (trials as f64, successes.min(trials) as f64 / trials as f64);
    let z2 = Z * Z;
    let d = 1.0 + z2 / n;
    let centre = (p + z2 / (2.0 * n)) / d;
    let half = Z * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt() / d;
    // At 0% and 100% the bound is exactly 0 or 1 (rounding would leave 1 - 1e-16).
    let lo = if successes == 0 { 0.0 } else { (centre - half).max(0.0) };
    let hi = if successes >= trials { 1.0 } else { (centre + half).min(1.0) };
    [lo, hi]
}

/// The JSON summary `bitnet eval` prints.
#[derive(Debug, Clone, Serialize)]
pub struct EvalSummary {
    /// Split evaluated.
    pub split: String,
    /// Examples decoded.
    pub examples: u64,
    /// Intent accuracy.
    pub intent_accuracy: f64,
    /// 95% Wilson score interval of the intent accuracy: what one set of this size can tell
    /// apart (on 450 utterances about 3 points wide).
    pub intent_accuracy_ci95: [f64; 2],
    /// Slot exact-match rate.
    pub slot_exact_match: f64,
    /// 95% Wilson score interval of the slot exact-match rate.
    pub slot_exact_match_ci95: [f64; 2],
    /// Invalid-JSON rate.
    pub invalid_json_rate: f64,
    /// Mean cross-entropy per counted target (nats), if computed.
    pub loss: Option<f64>,
    /// `exp(loss)`.
    pub perplexity: Option<f64>,
    /// Targets the loss was averaged over.
    pub loss_targets: u64,
    /// Per intent: examples, intent accuracy, slot exact match.
    pub per_intent: BTreeMap<String, IntentSummary>,
}

/// Per-intent figures.
#[derive(Debug, Clone, Serialize)]
pub struct IntentSummary {
    /// Examples of this intent.
    pub examples: u64,
    /// Intent accuracy.
    pub intent_accuracy: f64,
    /// Slot exact-match rate.
    pub slot_exact_match: f64,
}

impl EvalSummary {
    /// Builds the summary from a tally and an optional `(loss, targets)`.
    pub fn new(split: &str, tally: &Tally, loss: Option<(f64, u64)>) -> Self {
        Self {
            split: split.to_string(),
            examples: tally.examples,
            intent_accuracy: tally.intent_accuracy(),
            intent_accuracy_ci95: wilson_interval(tally.intent_correct, tally.examples),
            slot_exact_match: tally.slot_exact_match(),
            slot_exact_match_ci95: wilson_interval(tally.slots_exact, tally.examples),
            invalid_json_rate: tally.invalid_json_rate(),
            loss: loss.map(|l| l.0),
            perplexity: loss.map(|l| l.0.exp()),
            loss_targets: loss.map(|l| l.1).unwrap_or(0),
            per_intent: tally
                .per_intent
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        IntentSummary {
                            examples: v[0],
                            intent_accuracy: Tally::rate(v[1], v[0]),
                            slot_exact_match: Tally::rate(v[2], v[0]),
                        },
                    )
                })
                .collect(),
        }
    }
}

/// Makes free text look like corpus utterances: lower case, JSON punctuation and commas
/// removed, whitespace collapsed.
pub fn clean_utterance(text: &str) -> String {
    text.to_lowercase()
        .chars()
        .map(|c| if matches!(c, '{' | '}' | '[' | ']' | '"' | ',' | '?' | '!') { ' ' } else { c })
        .collect::<String>()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// Index of the largest logit (first one on ties; NaN never wins).
pub fn argmax(logits: &[f32]) -> Option<usize> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in logits.iter().enumerate() {
        if v.is_nan() {
            continue;
        }
        if best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i)
}

/// Tokens of a prompt around its utterance: `[BOS] [USER]` and `[INTENT]`.
const PROMPT_MARKERS: usize = 3;

/// Whether a prompt from [`prompt_ids`] holds no utterance token: the utterance was blank, or
/// the tokenizer left out every word as unknown, so there is nothing for the model to read.
pub fn reads_nothing(prompt: &[u32]) -> bool {
    prompt.len() <= PROMPT_MARKERS
}

/// The prompt ids for `utterance`: `[BOS] [USER] utterance [INTENT]`.
pub fn prompt_ids(tok: &dyn Tokenizer, utterance: &str) -> Result<Vec<u32>, EvalError> {
    let mut ids = vec![tok.special_tokens().bos];
    ids.extend(tok.encode(&format!("[USER] {utterance} [INTENT]"))?);
    Ok(ids)
}

/// Greedy decoding after `[INTENT]` until `[EOS]` or `max_len` tokens in all; returns the
/// decoded answer text. ([`crate::confidence::decode_with_probabilities`] also returns the
/// probability of each token.)
pub fn greedy_decode(
    model: &mut dyn InferenceModel,
    tok: &dyn Tokenizer,
    utterance: &str,
    max_len: usize,
) -> Result<String, EvalError> {
    Ok(crate::confidence::decode_with_probabilities(model, tok, utterance, max_len)?.text)
}

/// Lines decoded together ([`crate::confidence::decode_prompts`]): a model with a batched form
/// reads its weights once per step for all of them. Each line's answer is the one it gets alone.
pub const DECODE_BATCH: usize = 16;

/// Decodes (together) and scores `lines`, the first of which is line `first` (zero-based, for
/// the errors): each line's reference intent and outcome.
fn score_lines(
    model: &mut dyn InferenceModel,
    tok: &dyn Tokenizer,
    first: usize,
    lines: &[String],
    max_len: usize,
) -> Result<Vec<(String, Outcome)>, EvalError> {
    let mut answers = Vec::with_capacity(lines.len());
    let mut prompts = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        let (utterance, answer) =
            crate::corpus::parse_line(line).ok_or(EvalError::BadLine { line: first + i + 1 })?;
        prompts.push(prompt_ids(tok, utterance)?);
        answers.push(answer);
    }
    let decoded = crate::confidence::decode_prompts(model, tok, prompts, max_len)?;
    answers
        .into_iter()
        .zip(decoded)
        .map(|(answer, predicted)| {
            let intent = serde_json::from_str::<serde_json::Value>(answer)
                .ok()
                .and_then(|v| v.get("intent").and_then(|s| s.as_str()).map(str::to_string))
                .unwrap_or_default();
            Ok((intent, score(answer, &predicted?.text)))
        })
        .collect()
}

/// Decodes and scores every line, [`DECODE_BATCH`] at a time, calling `progress` after each;
/// returns the tally.
pub fn evaluate_lines(
    model: &mut dyn InferenceModel,
    tok: &dyn Tokenizer,
    lines: &[String],
    max_len: usize,
    progress: &mut dyn FnMut(&Tally),
) -> Result<Tally, EvalError> {
    let mut tally = Tally::default();
    for (c, chunk) in lines.chunks(DECODE_BATCH).enumerate() {
        for (intent, outcome) in score_lines(model, tok, c * DECODE_BATCH, chunk, max_len)? {
            tally.add(&intent, outcome);
            progress(&tally);
        }
    }
    Ok(tally)
}

/// [`evaluate_lines`] with one thread per model (each decodes a contiguous share of the
/// lines); `progress` sees the running tally of all threads after each line. The tally is the
/// same as one model's: greedy decoding of a line does not depend on the lines before it.
pub fn evaluate_lines_parallel(
    models: &mut [Box<dyn InferenceModel>],
    tok: &dyn Tokenizer,
    lines: &[String],
    max_len: usize,
    progress: &(dyn Fn(&Tally) + Sync),
) -> Result<Tally, EvalError> {
    let several = models.len() > 1 && lines.len() > 1;
    let Some(first) = models.first_mut() else {
        return Ok(Tally::default());
    };
    if !several {
        return evaluate_lines(first.as_mut(), tok, lines, max_len, &mut |t| progress(t));
    }
    let share = lines.len().div_ceil(models.len());
    let total = std::sync::Mutex::new(Tally::default());
    let results: Vec<Result<(), EvalError>> = std::thread::scope(|s| {
        let handles: Vec<_> = models
            .iter_mut()
            .zip(lines.chunks(share).enumerate())
            .map(|(model, (part, chunk))| {
                let total = &total;
                s.spawn(move || {
                    for (c, lines) in chunk.chunks(DECODE_BATCH).enumerate() {
                        let first = part * share + c * DECODE_BATCH;
                        let scored = score_lines(model.as_mut(), tok, first, lines, max_len)?;
                        let mut t = total.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                        for (intent, outcome) in scored {
                            t.add(&intent, outcome);
                            progress(&t);
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)))
            .collect()
    });
    // The first failing share, in line order.
    results.into_iter().collect::<Result<(), _>>()?;
    Ok(total.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner))
}

/// Mean cross-entropy per counted target over `batches` (weighted by each batch's counted
/// targets), and the number of targets; calls `progress` after each batch.
pub fn mean_loss(
    kernel: &mut dyn ModelKernel,
    params: &[f32],
    batches: &[BatchBuffer],
    progress: &mut dyn FnMut(usize),
) -> Result<(f64, u64), EvalError> {
    let mut total = 0.0f64;
    let mut targets = 0u64;
    for (i, b) in batches.iter().enumerate() {
        let view = b.view();
        let n = view.counted_targets() as u64;
        if n > 0 {
            total += f64::from(kernel.forward_loss(params, &view)?) * n as f64;
            targets += n;
        }
        progress(i + 1);
    }
    Ok((if targets == 0 { 0.0 } else { total / targets as f64 }, targets))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bitnet_framework::tokenizer::Tokenizer;
    use bitnet_tokenizer_word::{WordLevel, WordLevelConfig};

    #[test]
    fn scoring_rules() {
        let exp = r#"{"intent":"navigate","slots":{"city":"dallas","state":"tx"}}"#;
        let all = score(exp, r#"{"intent":"navigate","slots":{"state":"tx","city":"dallas"}}"#);
        assert_eq!(all, Outcome { valid_json: true, intent_correct: true, slots_exact: true });
        let wrong_slot = score(exp, r#"{"intent":"navigate","slots":{"city":"dallas"}}"#);
        assert_eq!(
            wrong_slot,
            Outcome { valid_json: true, intent_correct: true, slots_exact: false }
        );
        let wrong_intent =
            score(exp, r#"{"intent":"eta_query","slots":{"city":"dallas","state":"tx"}}"#);
        assert!(
            wrong_intent.valid_json && !wrong_intent.intent_correct && wrong_intent.slots_exact
        );
        for bad in [r#"{"intent":"navigate","slots":{"#, "", "[1]", r#"{"slots":{}}"#, "null"] {
            assert!(!score(exp, bad).valid_json, "{bad}");
        }
        assert!(!score(r#"{"intent":"x","slots":{}}"#, r#"{"intent":"x"}"#).slots_exact);
    }

    /// A hand-made model that replays fixed token sequences, whatever it is given.
    struct Scripted {
        answers: Vec<Vec<u32>>,
        which: usize,
        prompt_len: usize,
        vocab: usize,
    }

    impl InferenceModel for Scripted {
        fn next_token_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>, KernelError> {
            let step = tokens.len() - self.prompt_len;
            let ans = &self.answers[self.which];
            let mut logits = vec![0.0; self.vocab];
            let next = ans.get(step).copied().unwrap_or(3);
            logits[next as usize] = 1.0;
            Ok(logits)
        }
    }

    /// A hand-made model whose answer depends only on its prompt (as a real model's does).
    struct ByPrompt {
        answers: Vec<(Vec<u32>, Vec<u32>)>,
        vocab: usize,
    }

    impl InferenceModel for ByPrompt {
        fn next_token_logits(&mut self, tokens: &[u32]) -> Result<Vec<f32>, KernelError> {
            let (prompt, answer) = self
                .answers
                .iter()
                .find(|(p, _)| tokens.starts_with(p))
                .ok_or_else(|| KernelError::Shape("unknown prompt".into()))?;
            let mut logits = vec![0.0; self.vocab];
            logits[answer.get(tokens.len() - prompt.len()).copied().unwrap_or(3) as usize] = 1.0;
            Ok(logits)
        }
    }

    #[test]
    fn parallel_decoding_gives_the_sequential_tally_and_line_numbers() {
        let intents = ["navigate", "eta_query", "find_poi"];
        let lines: Vec<String> = (0..9)
            .map(|i| {
                format!(
                    r#"[USER] request number {i} [INTENT] {{"intent":"{}","slots":{{}}}}"#,
                    intents[i % 3]
                )
            })
            .collect();
        let mut tok =
            WordLevel::new(WordLevelConfig { max_vocab: 1000, min_freq: 1, ..Default::default() });
        tok.train(&mut lines.iter().cloned()).expect("train");
        // Every third line decodes the wrong intent, every fourth broken JSON.
        let answers: Vec<(Vec<u32>, Vec<u32>)> = (0..9)
            .map(|i| {
                let (u, a) = crate::corpus::parse_line(&lines[i]).expect("line");
                let text = match i {
                    _ if i % 4 == 3 => r#"{"intent":"#.to_string(),
                    _ if i % 3 == 2 => r#"{"intent":"navigate","slots":{}}"#.to_string(),
                    _ => a.to_string(),
                };
                let mut ids = tok.encode(&text).expect("encode");
                ids.push(3);
                (prompt_ids(&tok, u).expect("prompt"), ids)
            })
            .collect();
        let model = || Box::new(ByPrompt { answers: answers.clone(), vocab: tok.vocab_size() });
        let mut one = model();
        let want = evaluate_lines(one.as_mut(), &tok, &lines, 64, &mut |_| {}).expect("sequential");
        assert_eq!(want.examples, 9);
        assert!(want.intent_correct < 9 && want.invalid_json > 0, "{want:?}");
        for threads in [1, 2, 4, 12] {
            let mut models: Vec<Box<dyn InferenceModel>> =
                (0..threads).map(|_| model() as Box<dyn InferenceModel>).collect();
            let calls = std::sync::atomic::AtomicUsize::new(0);
            let got = evaluate_lines_parallel(&mut models, &tok, &lines, 64, &|_| {
                calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            })
            .expect("parallel");
            assert_eq!(got, want, "{threads} threads");
            assert_eq!(calls.into_inner(), 9);
        }
        // A malformed line is reported by its number in the whole list.
        let mut bad = lines.clone();
        bad[7] = "no intent marker".into();
        let mut models: Vec<Box<dyn InferenceModel>> =
            (0..2).map(|_| model() as Box<dyn InferenceModel>).collect();
        let err =
            evaluate_lines_parallel(&mut models, &tok, &bad, 64, &|_| {}).expect_err("bad line");
        assert!(matches!(err, EvalError::BadLine { line: 8 }), "{err}");
    }

    #[test]
    fn metrics_on_a_hand_made_decode() {
        let lines = [
            r#"[USER] navigate to dallas texas [INTENT] {"intent":"navigate","slots":{"city":"dallas","state":"tx"}}"#,
            r#"[USER] what's my eta [INTENT] {"intent":"eta_query","slots":{}}"#,
        ];
        let mut tok =
            WordLevel::new(WordLevelConfig { max_vocab: 1000, min_freq: 1, ..Default::default() });
        tok.train(&mut lines.iter().map(|s| s.to_string())).expect("train");
        let enc = |s: &str| {
            let mut v = tok.encode(s).expect("encode");
            v.push(3);
            v
        };
        // Example 1 decodes right; example 2 decodes the wrong intent, then broken JSON.
        let outputs = [
            enc(r#"{"intent":"navigate","slots":{"city":"dallas","state":"tx"}}"#),
            enc(r#"{"intent":"navigate","slots":{}}"#),
            enc(r#"{"intent":"eta_query","slots":{"#),
        ];
        let mut tallies = Vec::new();
        for second in [1usize, 2] {
            let mut t = Tally::default();
            for (i, line) in lines.iter().enumerate() {
                let (u, a) = crate::corpus::parse_line(line).expect("line");
                let prompt_len = prompt_ids(&tok, u).expect("prompt").len();
                let which = if i == 0 { 0 } else { second };
                let mut m = Scripted {
                    answers: outputs.to_vec(),
                    which,
                    prompt_len,
                    vocab: tok.vocab_size(),
                };
                let text = greedy_decode(&mut m, &tok, u, 128).expect("decode");
                let intent: serde_json::Value = serde_json::from_str(a).expect("json");
                t.add(intent["intent"].as_str().expect("intent"), score(a, &text));
            }
            tallies.push(t);
        }
        assert_eq!(
            (tallies[0].examples, tallies[0].intent_correct, tallies[0].slots_exact),
            (2, 1, 2)
        );
        assert_eq!(tallies[0].invalid_json_rate(), 0.0);
        assert_eq!(
            (tallies[1].intent_correct, tallies[1].slots_exact, tallies[1].invalid_json),
            (1, 1, 1)
        );
        let s = EvalSummary::new("test", &tallies[1], Some((2.0, 10)));
        assert_eq!(s.intent_accuracy, 0.5);
        assert_eq!(s.invalid_json_rate, 0.5);
        assert!((s.perplexity.expect("ppl") - 2f64.exp()).abs() < 1e-12);
        assert_eq!(s.per_intent["eta_query"].intent_accuracy, 0.0);
    }

    #[test]
    fn greedy_decode_stops_at_max_len_and_argmax_skips_nan() {
        assert_eq!(argmax(&[f32::NAN, 1.0, 3.0, 3.0]), Some(2));
        assert_eq!(argmax(&[f32::NAN]), None);
        let mut tok = WordLevel::default();
        tok.train(&mut ["[USER] a [INTENT] {}".to_string()].into_iter()).expect("train");
        let prompt_len = prompt_ids(&tok, "a").expect("p").len();
        // Never emits EOS: decoding must stop at max_len.
        let mut m =
            Scripted { answers: vec![vec![6; 100]], which: 0, prompt_len, vocab: tok.vocab_size() };
        let out = greedy_decode(&mut m, &tok, "a", prompt_len + 5).expect("decode");
        assert_eq!(tok.encode(&out).expect("enc").len(), 5);
        assert_eq!(clean_utterance("Navigate to Dallas, Texas!"), "navigate to dallas texas");
    }

    #[test]
    fn wilson_intervals_match_the_formula_and_stay_in_bounds() {
        // 436 of 450 (96.9%): [94.85%, 98.14%], computed independently in Python.
        let [lo, hi] = wilson_interval(436, 450);
        assert!((lo - 0.948_461_2).abs() < 1e-6 && (hi - 0.981_378_9).abs() < 1e-6, "{lo} {hi}");
        // At the edges the interval is one-sided, never empty: 0 of 10 and 10 of 10.
        let [lo, hi] = wilson_interval(0, 10);
        assert!(lo == 0.0 && (hi - 0.277_532_8).abs() < 1e-6, "{lo} {hi}");
        let [lo, hi] = wilson_interval(10, 10);
        assert!((lo - 0.722_467_2).abs() < 1e-6 && hi == 1.0, "{lo} {hi}");
        assert_eq!(wilson_interval(0, 0), [0.0, 1.0]);
        for n in [1u64, 7, 450, 2500] {
            for k in 0..=n.min(60) {
                let [lo, hi] = wilson_interval(k, n);
                let p = k as f64 / n as f64;
                assert!((0.0..=p).contains(&lo) && (p..=1.0).contains(&hi), "{k}/{n}");
            }
        }
        let summary = EvalSummary::new(
            "set",
            &Tally { examples: 450, intent_correct: 436, ..Tally::default() },
            None,
        );
        assert_eq!(summary.intent_accuracy_ci95, wilson_interval(436, 450));
        assert_eq!(summary.slot_exact_match_ci95, wilson_interval(0, 450));
    }
}
