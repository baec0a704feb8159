//! How sure the model is of the intent it decoded, from its own token probabilities.
//!
//! Greedy decoding picks the most likely token at each step; [`decode_with_probabilities`] also
//! keeps the softmax probability of each picked token. The **intent confidence** of an answer is
//! the product of the probabilities of the tokens that spell the intent's name (the value of
//! `"intent"`), i.e. the model's probability of that intent given the prompt and the JSON
//! prefix `{"intent":"` it wrote before it (which it writes with near certainty).
//!
//! Why this and not the geometric mean over all generated tokens: abstaining is a decision about
//! the *intent*. The mean mixes in the slot values (a rare city name is uncertain for a reason
//! unrelated to what the driver wants) and the structural tokens (`{`, `"slots"`, `}`), which
//! are near 1 whatever the input and dilute the one choice that matters. The product over the
//! name's tokens is a probability in its own right, in [0, 1], and for a single-token name it is
//! exactly the model's softmax probability of that intent.

use crate::eval::{EvalError, argmax, prompt_ids};
use bitnet_framework::model::InferenceModel;
use bitnet_framework::tokenizer::Tokenizer;

/// The softmax probability of `index` under `logits`, computed stably in f64
/// (`exp(l_i - max) / sum_j exp(l_j - max)`). NaN logits count as impossible; an index out of
/// range, a NaN at `index` or logits with no finite value give 0.
pub fn softmax_probability(logits: &[f32], index: usize) -> f64 {
    let Some(&chosen) = logits.get(index) else { return 0.0 };
    if chosen.is_nan() {
        return 0.0;
    }
    let max = logits.iter().copied().filter(|v| !v.is_nan()).fold(f32::NEG_INFINITY, f32::max);
    if !max.is_finite() {
        // All -inf (or an inf among the logits): no meaningful distribution.
        return if max == f32::INFINITY && chosen == f32::INFINITY {
            1.0 / logits.iter().filter(|&&v| v == f32::INFINITY).count() as f64
        } else {
            0.0
        };
    }
    let max = f64::from(max);
    let sum: f64 = logits.iter().filter(|v| !v.is_nan()).map(|&v| (f64::from(v) - max).exp()).sum();
    (f64::from(chosen) - max).exp() / sum
}

/// A greedy decode with the probability of every generated token.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    /// The decoded answer text (the tokens after `[INTENT]`, without `[EOS]`).
    pub text: String,
    /// The generated token ids, without `[EOS]`.
    pub tokens: Vec<u32>,
    /// The softmax probability of each generated token when it was chosen; one more entry than
    /// `tokens` when decoding ended on `[EOS]` (its probability is the last).
    pub probabilities: Vec<f64>,
}

/// Greedy decoding after `[INTENT]` until `[EOS]` or `max_len` tokens in all, keeping the
/// probability of each chosen token. The text is the same as [`crate::eval::greedy_decode`]'s.
pub fn decode_with_probabilities(
    model: &mut dyn InferenceModel,
    tok: &dyn Tokenizer,
    utterance: &str,
    max_len: usize,
) -> Result<Decoded, EvalError> {
    decode_alone(model, tok, prompt_ids(tok, utterance)?, max_len)
}

/// [`decode_prompts`] for one prompt: its decode, or the model's or the tokenizer's error.
pub fn decode_alone(
    model: &mut dyn InferenceModel,
    tok: &dyn Tokenizer,
    prompt: Vec<u32>,
    max_len: usize,
) -> Result<Decoded, EvalError> {
    let mut decoded = decode_prompts(model, tok, vec![prompt], max_len)?;
    decoded.pop().unwrap_or_else(|| unreachable!("one prompt, one decode"))
}

/// [`decode_with_probabilities`] for several prompts (token ids, as [`prompt_ids`] makes them)
/// decoded together with a [`BatchDecoder`]: each step asks the model for the next token of
/// every unfinished prompt in one call, so a model with a batched form reads its weights once
/// per step for all of them; at most [`InferenceModel::slots`] prompts decode at once, the next
/// one starting as soon as a slot frees. Each decode is the one its prompt gets alone. An error
/// of the model fails the whole call; the per-prompt results only carry the tokenizer's errors.
pub fn decode_prompts(
    model: &mut dyn InferenceModel,
    tok: &dyn Tokenizer,
    prompts: Vec<Vec<u32>>,
    max_len: usize,
) -> Result<Vec<Result<Decoded, EvalError>>, EvalError> {
    let mut decoder = BatchDecoder::new(&*model, tok, max_len);
    let mut out: Vec<Option<Result<Decoded, EvalError>>> =
        (0..prompts.len()).map(|_| None).collect();
    // Which prompt each slot decodes.
    let mut owner = vec![usize::MAX; decoder.capacity()];
    let mut prompts = prompts.into_iter().enumerate().peekable();
    loop {
        while decoder.free() > 0 {
            let Some((i, prompt)) = prompts.next() else { break };
            owner[decoder.add(prompt).unwrap_or_else(|_| unreachable!("a slot is free"))] = i;
        }
        if decoder.is_idle() {
            break;
        }
        for (slot, decoded) in decoder.step(model, tok)? {
            out[owner[slot]] = Some(decoded);
        }
    }
    Ok(out.into_iter().map(|d| d.unwrap_or_else(|| unreachable!("every prompt decoded"))).collect())
}

/// A sequence [`BatchDecoder::step`] finished: its slot and its decode (or the tokenizer's
/// error decoding its text).
pub type Finished = (usize, Result<Decoded, EvalError>);

/// Greedy decoders of several prompts sharing a model's batched calls, each in a slot of the
/// model's ([`InferenceModel::next_token_logits_batch`]); prompts can join between steps
/// (continuous batching). Each decode is the one its prompt gets from
/// [`decode_with_probabilities`] alone: the same greedy choices on the same logits, ending at
/// `[EOS]`, at a step with no finite logit, or at `max_len` tokens in all.
#[derive(Debug)]
pub struct BatchDecoder {
    eos: u32,
    max_len: usize,
    /// Per slot, the sequence decoding there.
    slots: Vec<Option<Decoding>>,
}

#[derive(Debug)]
struct Decoding {
    ids: Vec<u32>,
    /// The prompt's length.
    start: usize,
    probabilities: Vec<f64>,
    done: bool,
}

impl BatchDecoder {
    /// A decoder with one slot per sequence `model` keeps cached at once.
    pub fn new(model: &dyn InferenceModel, tok: &dyn Tokenizer, max_len: usize) -> Self {
        Self {
            eos: tok.special_tokens().eos,
            max_len,
            slots: (0..model.slots().max(1)).map(|_| None).collect(),
        }
    }

    /// How many sequences it decodes at once.
    pub fn capacity(&self) -> usize {
        self.slots.len()
    }

    /// Slots free for [`BatchDecoder::add`].
    pub fn free(&self) -> usize {
        self.slots.iter().filter(|s| s.is_none()).count()
    }

    /// No sequence decoding.
    pub fn is_idle(&self) -> bool {
        self.slots.iter().all(Option::is_none)
    }

    /// Starts decoding after `prompt` in a free slot, returned; the prompt back when none is
    /// free.
    pub fn add(&mut self, prompt: Vec<u32>) -> Result<usize, Vec<u32>> {
        let Some(slot) = self.slots.iter().position(Option::is_none) else { return Err(prompt) };
        let start = prompt.len();
        let done = start >= self.max_len;
        self.slots[slot] = Some(Decoding { ids: prompt, start, probabilities: Vec::new(), done });
        Ok(slot)
    }

    /// One token for every unfinished sequence, in one call of the model; returns the sequences
    /// that finished (their slots free again), by slot. On an error of the model every sequence
    /// is dropped (each slot free) and the error returned.
    pub fn step(
        &mut self,
        model: &mut dyn InferenceModel,
        tok: &dyn Tokenizer,
    ) -> Result<Vec<Finished>, EvalError> {
        let active: Vec<usize> = (0..self.slots.len())
            .filter(|&i| self.slots[i].as_ref().is_some_and(|d| !d.done))
            .collect();
        if !active.is_empty() {
            let call: Vec<(usize, &[u32])> = active
                .iter()
                .filter_map(|&i| self.slots[i].as_ref().map(|d| (i, d.ids.as_slice())))
                .collect();
            let logits = match model.next_token_logits_batch(&call) {
                Ok(logits) => logits,
                Err(e) => {
                    self.slots.iter_mut().for_each(|s| *s = None);
                    return Err(e.into());
                }
            };
            for (&i, logits) in active.iter().zip(&logits) {
                let Some(d) = self.slots[i].as_mut() else { continue };
                let Some(next) = argmax(logits) else {
                    d.done = true;
                    continue;
                };
                d.probabilities.push(softmax_probability(logits, next));
                let next = next as u32;
                if next == self.eos {
                    d.done = true;
                    continue;
                }
                d.ids.push(next);
                d.done = d.ids.len() >= self.max_len;
            }
        }
        let mut finished = Vec::new();
        for (slot, s) in self.slots.iter_mut().enumerate() {
            if s.as_ref().is_some_and(|d| d.done) {
                let Some(Decoding { mut ids, start, probabilities, .. }) = s.take() else {
                    continue;
                };
                let tokens = ids.split_off(start);
                let decoded = tok
                    .decode(&tokens)
                    .map(|text| Decoded { text, tokens, probabilities })
                    .map_err(EvalError::from);
                finished.push((slot, decoded));
            }
        }
        Ok(finished)
    }
}

/// The byte range of the intent name in an answer text: the characters between the quotes of
/// the value of the first `"intent"` key. `None` when the text is not a JSON object with a
/// string `"intent"`.
pub fn intent_value_span(text: &str) -> Option<(usize, usize)> {
    let value: serde_json::Value = serde_json::from_str(text.trim()).ok()?;
    value.get("intent")?.as_str()?;
    // The text parsed, so after the key come optional spaces, `:`, optional spaces, `"`.
    let key = text.find("\"intent\"")?;
    let mut at = key + "\"intent\"".len();
    let rest = &text[at..];
    let skipped = rest.len() - rest.trim_start().len();
    at += skipped;
    if !text[at..].starts_with(':') {
        return None;
    }
    at += 1;
    let rest = &text[at..];
    at += rest.len() - rest.trim_start().len();
    if !text[at..].starts_with('"') {
        return None;
    }
    let start = at + 1;
    let mut escaped = false;
    for (i, c) in text[start..].char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' => escaped = true,
            '"' => return Some((start, start + i)),
            _ => {}
        }
    }
    None
}

/// The intent confidence of a decode (see the module doc): the product of the probabilities of
/// the generated tokens whose text overlaps the intent name. 0 when the answer has no intent
/// name (not a JSON object with a string `"intent"`, or an empty name).
///
/// Which characters a token wrote is found by decoding growing prefixes of the generated ids;
/// should a tokenizer's decoding of a prefix not be a prefix of the whole text, the tokens
/// cannot be attributed and the geometric mean over every generated token is used instead.
pub fn intent_confidence(tok: &dyn Tokenizer, decoded: &Decoded) -> Result<f64, EvalError> {
    let Some((start, end)) = intent_value_span(&decoded.text) else { return Ok(0.0) };
    if start == end {
        return Ok(0.0);
    }
    let mut product = 1.0;
    let mut before = 0usize;
    for (k, &p) in decoded.probabilities.iter().enumerate().take(decoded.tokens.len()) {
        let prefix = tok.decode(&decoded.tokens[..=k])?;
        if !decoded.text.starts_with(&prefix) {
            return Ok(geometric_mean(&decoded.probabilities));
        }
        let after = prefix.len();
        if before.max(start) < after.min(end) {
            product *= p;
        }
        if after >= end {
            break;
        }
        before = after;
    }
    Ok(product.clamp(0.0, 1.0))
}

/// The geometric mean of probabilities (1 for none); 0 if any is 0.
pub fn geometric_mean(probabilities: &[f64]) -> f64 {
    if probabilities.is_empty() {
        return 1.0;
    }
    if probabilities.iter().any(|&p| p <= 0.0 || p.is_nan()) {
        return 0.0;
    }
    let mean_log = probabilities.iter().map(|p| p.ln()).sum::<f64>() / probabilities.len() as f64;
    mean_log.exp().clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_matches_a_hand_computed_case() {
        // logits [1, 2, 3]: e^1 + e^2 + e^3 = 2.718281828 + 7.389056099 + 20.085536923
        // = 30.192874850; p(2) = 20.085536923 / 30.192874850 = 0.665240956.
        let logits = [1.0f32, 2.0, 3.0];
        assert!((softmax_probability(&logits, 2) - 0.665_240_955_774_821_6).abs() < 1e-12);
        assert!((softmax_probability(&logits, 0) - 0.090_030_573_170_380_46).abs() < 1e-12);
        let total: f64 = (0..3).map(|i| softmax_probability(&logits, i)).sum();
        assert!((total - 1.0).abs() < 1e-12);
        // Shifting every logit changes nothing; large logits do not overflow.
        let shifted = [1001.0f32, 1002.0, 1003.0];
        assert!((softmax_probability(&shifted, 2) - 0.665_240_955_774_821_6).abs() < 1e-9);
        // NaN is impossible, never chosen; out of range is 0.
        assert_eq!(softmax_probability(&[f32::NAN, 0.0], 1), 1.0);
        assert_eq!(softmax_probability(&[f32::NAN, 0.0], 0), 0.0);
        assert_eq!(softmax_probability(&[0.0], 3), 0.0);
        assert_eq!(softmax_probability(&[f32::NEG_INFINITY; 2], 0), 0.0);
        assert_eq!(softmax_probability(&[f32::INFINITY, 0.0, f32::INFINITY], 0), 0.5);
    }

    #[test]
    fn intent_span_finds_the_name() {
        let t = r#"{"intent":"find_poi","slots":{"poi_type":"fuel"}}"#;
        let (s, e) = intent_value_span(t).expect("span");
        assert_eq!(&t[s..e], "find_poi");
        let spaced = r#"{ "intent" : "navigate" , "slots" : { } }"#;
        let (s, e) = intent_value_span(spaced).expect("span");
        assert_eq!(&spaced[s..e], "navigate");
        let escaped = r#"{"intent":"a\"b","slots":{}}"#;
        let (s, e) = intent_value_span(escaped).expect("span");
        assert_eq!(&escaped[s..e], r#"a\"b"#);
        for bad in [r#"{"intent":"#, r#"{"intent":3}"#, r#"{"slots":{}}"#, "", "[1]"] {
            assert_eq!(intent_value_span(bad), None, "{bad}");
        }
    }

    #[test]
    fn geometric_mean_cases() {
        assert_eq!(geometric_mean(&[]), 1.0);
        assert!((geometric_mean(&[0.25, 1.0]) - 0.5).abs() < 1e-12);
        assert_eq!(geometric_mean(&[0.5, 0.0]), 0.0);
    }
}
