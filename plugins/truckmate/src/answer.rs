//! What `bitnet classify` and `bitnet serve` answer for an utterance: the decoded intent and
//! slots, the model's confidence in the intent, and whether it abstained.
//!
//! **Abstention.** An answer whose intent confidence ([`crate::confidence`]) is below the
//! threshold, or that is not a JSON object with a string `"intent"`, becomes
//! `{"intent":"none","slots":{}}` with `"abstained": true`; the confidence reported is still the
//! model's (0 for an unreadable answer). An utterance that is empty once cleaned (nothing but
//! spaces or punctuation) or once encoded (every word left out as unknown by the tokenizer) is
//! never decoded: it abstains with confidence 0, so an empty input can never produce a confident
//! in-domain intent. `none` is an ordinary intent for the model: a
//! model trained on out-of-domain examples may answer `none` itself, confidently, and that answer
//! is reported as it is (`abstained: false`).

use crate::confidence::{Decoded, decode_alone, decode_prompts, intent_confidence};
use crate::eval::{EvalError, clean_utterance, prompt_ids, reads_nothing};
use crate::eval_set::{MAX_UTTERANCE_CHARS, NONE_INTENT};
use bitnet_framework::model::InferenceModel;
use bitnet_framework::tokenizer::Tokenizer;
use serde::Serialize;

/// The default abstention threshold on the intent confidence: the smallest at which a kept
/// intent is certain to be the model's majority choice. The book's serving chapter has what it
/// does on the hand-written set (in-domain and out-of-domain abstention) for a measured model.
pub const DEFAULT_ABSTAIN_THRESHOLD: f64 = 0.5;

/// The answer for one utterance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Answer {
    /// The intent (`none` when abstaining).
    pub intent: String,
    /// The slots the model wrote (`{}` when abstaining).
    pub slots: serde_json::Map<String, serde_json::Value>,
    /// The model's probability of the intent it decoded, in [0, 1].
    pub confidence: f64,
    /// True when the model's answer was replaced by `none` (low confidence, unreadable answer
    /// or empty utterance).
    pub abstained: bool,
}

impl Answer {
    /// The abstention answer with the model's confidence.
    pub fn abstain(confidence: f64) -> Self {
        Self {
            intent: NONE_INTENT.to_string(),
            slots: serde_json::Map::new(),
            confidence,
            abstained: true,
        }
    }

    /// The answer for a decoded text with intent confidence `confidence` under `threshold`.
    pub fn from_decoded(text: &str, confidence: f64, threshold: f64) -> Self {
        let confidence = if confidence.is_nan() { 0.0 } else { confidence.clamp(0.0, 1.0) };
        let parsed = serde_json::from_str::<serde_json::Value>(text.trim()).ok();
        let Some(serde_json::Value::Object(mut obj)) = parsed else {
            return Self::abstain(0.0);
        };
        let Some(serde_json::Value::String(intent)) = obj.remove("intent") else {
            return Self::abstain(0.0);
        };
        if confidence < threshold {
            return Self::abstain(confidence);
        }
        let slots = match obj.remove("slots") {
            Some(serde_json::Value::Object(slots)) => slots,
            _ => serde_json::Map::new(),
        };
        Self { intent, slots, confidence, abstained: false }
    }
}

/// Why an utterance was not classified.
#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    /// More characters than [`MAX_UTTERANCE_CHARS`].
    #[error("the utterance has {chars} characters; at most {MAX_UTTERANCE_CHARS} are accepted")]
    TooManyChars {
        /// Its length in characters.
        chars: usize,
    },
    /// The prompt leaves too little of the model's context for the answer.
    #[error(
        "the utterance is {tokens} tokens with the prompt markers; at most {limit} fit the \
         model's context with room for the answer"
    )]
    TooManyTokens {
        /// Prompt tokens.
        tokens: usize,
        /// The most accepted.
        limit: usize,
    },
    /// Decoding failed.
    #[error(transparent)]
    Eval(#[from] EvalError),
}

/// The most prompt tokens accepted for a model of context `seq_len`: half of it, so the answer
/// has the other half (the corpus' answers take at most a few dozen tokens).
pub fn max_prompt_tokens(seq_len: usize) -> usize {
    seq_len / 2
}

/// Cleans `utterance` ([`clean_utterance`]), decodes it greedily and answers with abstention
/// below `threshold`. An utterance with no token once cleaned and encoded abstains without
/// decoding.
pub fn classify(
    model: &mut dyn InferenceModel,
    tok: &dyn Tokenizer,
    utterance: &str,
    seq_len: usize,
    threshold: f64,
) -> Result<Answer, ClassifyError> {
    let mut answers = classify_batch(model, tok, &[utterance], seq_len, threshold);
    answers.pop().unwrap_or_else(|| unreachable!("one utterance, one answer"))
}

/// [`classify`] for several utterances, decoded together ([`decode_prompts`]): every answer is
/// the one its utterance gets alone. Should the model fail on the batch, each utterance is tried
/// again alone, so that each gets its own answer or error.
pub fn classify_batch(
    model: &mut dyn InferenceModel,
    tok: &dyn Tokenizer,
    utterances: &[&str],
    seq_len: usize,
    threshold: f64,
) -> Vec<Result<Answer, ClassifyError>> {
    // What each utterance needs: an answer or error now, or a decode of its prompt.
    let mut answers: Vec<Option<Result<Answer, ClassifyError>>> = Vec::new();
    let mut prompts = Vec::new();
    for utterance in utterances {
        let prepared = prepare(tok, utterance, seq_len);
        match prepared {
            Ok(Some(prompt)) => {
                prompts.push(prompt);
                answers.push(None);
            }
            Ok(None) => answers.push(Some(Ok(Answer::abstain(0.0)))),
            Err(e) => answers.push(Some(Err(e))),
        }
    }
    let decoded = match decode_prompts(model, tok, prompts.clone(), seq_len) {
        Ok(decoded) => decoded,
        Err(_) if prompts.len() > 1 => {
            prompts.into_iter().map(|p| decode_alone(model, tok, p, seq_len)).collect()
        }
        Err(e) => vec![Err(e)],
    };
    let mut decoded = decoded.into_iter();
    answers
        .into_iter()
        .map(|answer| match answer {
            Some(done) => done,
            None => answer_decoded(
                tok,
                decoded.next().unwrap_or_else(|| unreachable!("one per prompt")),
                threshold,
            ),
        })
        .collect()
}

/// The answer for a decode of a prompt [`prepare`] gave: its intent confidence and abstention
/// below `threshold`.
pub fn answer_decoded(
    tok: &dyn Tokenizer,
    decoded: Result<Decoded, EvalError>,
    threshold: f64,
) -> Result<Answer, ClassifyError> {
    let decoded = decoded?;
    let confidence = intent_confidence(tok, &decoded)?;
    Ok(Answer::from_decoded(&decoded.text, confidence, threshold))
}

/// The prompt to decode for `utterance` (cleaned and encoded), `None` when it reads nothing
/// (abstain with confidence 0, without decoding), or why it is refused.
pub fn prepare(
    tok: &dyn Tokenizer,
    utterance: &str,
    seq_len: usize,
) -> Result<Option<Vec<u32>>, ClassifyError> {
    let chars = utterance.chars().count();
    if chars > MAX_UTTERANCE_CHARS {
        return Err(ClassifyError::TooManyChars { chars });
    }
    let prompt = prompt_ids(tok, &clean_utterance(utterance))?;
    if reads_nothing(&prompt) {
        return Ok(None);
    }
    let tokens = prompt.len();
    let limit = max_prompt_tokens(seq_len);
    if tokens > limit {
        return Err(ClassifyError::TooManyTokens { tokens, limit });
    }
    Ok(Some(prompt))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn abstention_rules() {
        let text = r#"{"intent":"navigate","slots":{"city":"dallas"}}"#;
        let sure = Answer::from_decoded(text, 0.9, 0.5);
        assert_eq!(
            (sure.intent.as_str(), sure.abstained, sure.confidence),
            ("navigate", false, 0.9)
        );
        assert_eq!(sure.slots.get("city"), Some(&serde_json::json!("dallas")));
        let unsure = Answer::from_decoded(text, 0.3, 0.5);
        assert_eq!(unsure, Answer::abstain(0.3));
        assert!(unsure.slots.is_empty() && unsure.intent == "none");
        // The model's own `none` is an ordinary answer.
        let none = Answer::from_decoded(r#"{"intent":"none","slots":{}}"#, 0.8, 0.5);
        assert_eq!((none.intent.as_str(), none.abstained), ("none", false));
        for bad in [r#"{"intent":"navigate","slots":{"#, r#"{"intent":1}"#, "[]", ""] {
            assert_eq!(Answer::from_decoded(bad, 0.99, 0.5), Answer::abstain(0.0), "{bad}");
        }
        // Threshold 0 never abstains on a readable answer; NaN confidence is 0.
        assert!(!Answer::from_decoded(text, 0.0, 0.0).abstained);
        assert_eq!(Answer::from_decoded(text, f64::NAN, 0.5).confidence, 0.0);
        let json = serde_json::to_value(Answer::abstain(0.25)).expect("json");
        assert_eq!(
            json,
            serde_json::json!({"intent":"none","slots":{},"confidence":0.25,"abstained":true})
        );
    }

    /// Replays `answer` (then `[EOS]`) whatever the prompt: the chosen token gets logit 0 and
    /// every other -inf (probability 1), except at step `uncertain_step`, where the chosen token
    /// gets 2 and token `rival` gets 1: probability e^2 / (e^2 + e) = 0.7310585786300049.
    struct HandMade {
        prompt_len: usize,
        answer: Vec<u32>,
        uncertain_step: usize,
        rival: usize,
        vocab: usize,
        calls: usize,
    }

    impl InferenceModel for HandMade {
        fn next_token_logits(
            &mut self,
            tokens: &[u32],
        ) -> Result<Vec<f32>, bitnet_framework::model::KernelError> {
            self.calls += 1;
            let step = tokens.len() - self.prompt_len;
            let next = self.answer.get(step).copied().unwrap_or(3) as usize;
            let mut logits = vec![f32::NEG_INFINITY; self.vocab];
            logits[next] = 0.0;
            if step == self.uncertain_step {
                logits[next] = 2.0;
                logits[self.rival] = 1.0;
            }
            Ok(logits)
        }
    }

    #[test]
    fn classify_reports_the_probability_of_the_intent_tokens() {
        use bitnet_tokenizer_word::{WordLevel, WordLevelConfig};
        let line =
            r#"[USER] take me to dallas [INTENT] {"intent":"navigate","slots":{"city":"dallas"}}"#;
        let mut tok =
            WordLevel::new(WordLevelConfig { max_vocab: 100, min_freq: 1, ..Default::default() });
        tok.train(&mut std::iter::once(line.to_string())).expect("train");
        let text = r#"{"intent":"navigate","slots":{"city":"dallas"}}"#;
        let answer = tok.encode(text).expect("encode");
        let name = tok.encode("navigate").expect("encode");
        assert_eq!(name.len(), 1, "one token spells the intent");
        let at = answer.iter().position(|&t| t == name[0]).expect("intent token");
        let dallas = tok.encode("dallas").expect("encode")[0];
        let at_slot = answer.iter().position(|&t| t == dallas).expect("slot token");
        let prompt_len = prompt_ids(&tok, "take me to dallas").expect("prompt").len();
        let expected = 2f64.exp() / (2f64.exp() + 1f64.exp());
        let model = |uncertain_step| HandMade {
            prompt_len,
            answer: answer.clone(),
            uncertain_step,
            rival: dallas as usize,
            vocab: tok.vocab_size(),
            calls: 0,
        };

        let mut m = model(at);
        let got = classify(&mut m, &tok, "Take me to Dallas!", 64, 0.5).expect("classify");
        assert_eq!((got.intent.as_str(), got.abstained), ("navigate", false));
        assert!((got.confidence - expected).abs() < 1e-9, "{}", got.confidence);
        assert_eq!(got.slots.get("city"), Some(&serde_json::json!("dallas")));
        // Above the threshold 0.8 it abstains, still reporting the model's confidence.
        let mut m = model(at);
        let got = classify(&mut m, &tok, "take me to dallas", 64, 0.8).expect("classify");
        assert!(got.abstained && got.intent == "none" && got.slots.is_empty());
        assert!((got.confidence - expected).abs() < 1e-9);
        // Uncertainty on a slot token does not lower the intent confidence.
        let mut m = model(at_slot);
        let got = classify(&mut m, &tok, "take me to dallas", 64, 0.8).expect("classify");
        assert_eq!((got.intent.as_str(), got.confidence), ("navigate", 1.0));

        // Empty and punctuation-only utterances, and those whose every word the tokenizer
        // leaves out as unknown, abstain without running the model.
        for empty in ["", "   ", "?!", "\t", "zyzzyva qwertz", "'..'"] {
            let mut m = model(at);
            let got = classify(&mut m, &tok, empty, 64, 0.0).expect("classify");
            assert_eq!((got, m.calls), (Answer::abstain(0.0), 0), "{empty:?}");
        }
        // Too long, in characters or in tokens.
        let mut m = model(at);
        let long = "dallas ".repeat(200);
        let err = classify(&mut m, &tok, &long, 64, 0.5).expect_err("too many chars");
        assert!(matches!(err, ClassifyError::TooManyChars { chars: 1400 }), "{err}");
        let err = classify(&mut m, &tok, &"dallas ".repeat(40), 64, 0.5).expect_err("tokens");
        assert!(matches!(err, ClassifyError::TooManyTokens { limit: 32, .. }), "{err}");
        assert_eq!(m.calls, 0);
    }
}
