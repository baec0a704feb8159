//! The TruckMate corpus generators.
//!
//! Each example is one line:
//! `[USER] <utterance> [INTENT] {"intent":"<name>","slots":{...}}` with slot keys sorted and
//! every slot value a string in canonical form (`"city":"el paso"`, `"state":"tx"`,
//! `"highway":"i-40"`, `"amount":"45.50"`, `"time":"15:30"`, `"weight_lbs":"42000"`).
//!
//! Two generators, chosen by [`Generator`] (`data.corpus_generator` in a run config):
//!
//! - [`cab`] (the default): utterances *composed* from a request core per intent (written as
//!   patterns with alternatives, so each expands to many phrasings) and independent layers: a
//!   wake word or CB opener, politeness or curtness, a restart, a context clause, fillers,
//!   contractions, run-together words and sound-alike slips; slots are spoken in many forms
//!   (numbers as digits, words or digit pairs, jargon for places, causes for reasons). A share of
//!   the examples ([`CorpusOptions::none_share`]) is out of domain, labelled
//!   `{"intent":"none","slots":{}}`.
//! - [`v1`] (`templates-v1`): the first generator, 9 to 12 listed templates per intent with a
//!   little noise, kept byte-identical for comparison.
//!
//! Noise never touches slot words, so the answer is always recoverable from the utterance.
//!
//! **Splits.** Every example's *combination* is its template plus its canonical slot values
//! (or, without slots, its template plus its final utterance); for `cab` (revision 4 on) the
//! template is the phrasing its pattern was realised as, so a pattern whose slot has one value
//! still has many combinations. A combination is assigned to train, validation or test by
//! hashing it with the seed (90/5/5), so the held-out splits consist of template and slot
//! combinations training never saw, while every template and every slot value is still seen in
//! training (an empty utterance, a single combination, always trains). The generator draws
//! examples until each split has its share of `count` (90/5/5).
//! The output is byte-identical for the same options.

pub mod cab;
pub mod extra;
pub mod pools;
pub mod v1;

use pools::spell;
use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::str::FromStr;

pub use v1::{INTENTS, generate_example};

/// The intent of an utterance that is none of the assistant's intents.
pub const NONE_INTENT: &str = "none";

/// Share of out-of-domain (`none`) examples the `cab` generator makes by default.
pub const DEFAULT_NONE_SHARE: f64 = 0.10;

/// Largest accepted [`CorpusOptions::none_share`].
pub const MAX_NONE_SHARE: f64 = 0.5;

/// Why corpus options were refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CorpusError {
    /// The generator name is not one of [`Generator::NAMES`].
    #[error("unknown corpus generator `{0}`; the generators are: cab, templates-v1")]
    UnknownGenerator(String),
    /// The out-of-domain share is outside `0..=MAX_NONE_SHARE`.
    #[error("corpus_none_share must be between 0 and {MAX_NONE_SHARE}, got {0}")]
    NoneShare(f64),
}

/// Revision of the `cab` generator's phrasings, recorded in the data directory's manifest: a
/// corpus an older revision wrote is refused instead of silently reused. Raise it whenever a
/// change makes `cab` write different examples for the same options.
pub const CAB_REVISION: u32 = 6;

/// Which generator writes the corpus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Generator {
    /// The composed generator of [`cab`], with out-of-domain examples.
    #[default]
    Cab,
    /// The first generator, [`v1`], unchanged.
    TemplatesV1,
}

impl Generator {
    /// Every generator name, as configs spell it.
    pub const NAMES: [&'static str; 2] = ["cab", "templates-v1"];

    /// The name configs use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Cab => "cab",
            Self::TemplatesV1 => "templates-v1",
        }
    }
}

impl FromStr for Generator {
    type Err = CorpusError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cab" => Ok(Self::Cab),
            "templates-v1" => Ok(Self::TemplatesV1),
            other => Err(CorpusError::UnknownGenerator(other.to_string())),
        }
    }
}

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CorpusOptions {
    /// The generator.
    pub generator: Generator,
    /// Examples in all splits together.
    pub count: usize,
    /// Seed; the output is byte-identical per options.
    pub seed: u64,
    /// Share of out-of-domain (`none`) examples drawn by `cab` (`templates-v1` has none).
    pub none_share: f64,
}

impl CorpusOptions {
    /// The default generator with its default out-of-domain share.
    pub fn new(count: usize, seed: u64) -> Self {
        Self { generator: Generator::default(), count, seed, none_share: DEFAULT_NONE_SHARE }
    }

    /// Options from a config's names and numbers, checked.
    pub fn parse(
        generator: &str,
        count: usize,
        seed: u64,
        none_share: f64,
    ) -> Result<Self, CorpusError> {
        let options = Self { generator: generator.parse()?, count, seed, none_share };
        options.validate()?;
        Ok(options)
    }

    /// Refuses an out-of-domain share outside `0..=MAX_NONE_SHARE` (or not a number).
    pub fn validate(&self) -> Result<(), CorpusError> {
        if (0.0..=MAX_NONE_SHARE).contains(&self.none_share) {
            Ok(())
        } else {
            Err(CorpusError::NoneShare(self.none_share))
        }
    }

    /// One line describing the options, as `generate-corpus` prints and the manifest stores.
    pub fn describe(&self) -> String {
        match self.generator {
            Generator::Cab => format!(
                "generator {} revision {CAB_REVISION} count {} seed {} none_share {}",
                self.generator.name(),
                self.count,
                self.seed,
                self.none_share
            ),
            Generator::TemplatesV1 => format!(
                "generator {} count {} seed {}",
                self.generator.name(),
                self.count,
                self.seed
            ),
        }
    }

    /// Generates the examples as `[train, validation, test]`.
    pub fn examples(&self) -> Result<[Vec<Example>; 3], CorpusError> {
        self.validate()?;
        Ok(match self.generator {
            Generator::TemplatesV1 => fill_splits(
                self.count,
                self.seed,
                |rng| {
                    let intent = rng.gen_range(0..INTENTS.len());
                    v1::generate_example(rng, intent)
                },
                combination_split,
            ),
            Generator::Cab => {
                let share = self.none_share;
                fill_splits(self.count, self.seed, |rng| cab::draw(rng, share), phrasing_split)
            }
        })
    }

    /// Generates the corpus lines.
    pub fn generate(&self) -> Result<Corpus, CorpusError> {
        let [train, validation, test] =
            self.examples()?.map(|v| v.iter().map(Example::line).collect());
        Ok(Corpus { train, validation, test })
    }
}

/// One generated example.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    /// Intent name.
    pub intent: &'static str,
    /// Index of the template within its intent.
    pub template: usize,
    /// The utterance.
    pub utterance: String,
    /// Canonical slot values, by key.
    pub slots: BTreeMap<String, String>,
    /// Each filled placeholder of the template with the words it was spoken as, in order.
    pub spoken: Vec<(String, String)>,
    /// The request as phrased before frames and noise, placeholders unfilled: the normalised
    /// template (`templates-v1`: the template itself; `cab`: one expansion of its pattern).
    pub phrasing: String,
}

impl Example {
    /// The answer JSON: `{"intent":"...","slots":{...}}` with sorted keys.
    pub fn answer_json(&self) -> String {
        let value = serde_json::json!({ "intent": self.intent, "slots": self.slots });
        value.to_string()
    }

    /// The corpus line ([`corpus_line`]).
    pub fn line(&self) -> String {
        corpus_line(&self.utterance, &self.answer_json())
    }

    /// The utterance with each spoken placeholder replaced by `{name}` and fillers removed: the
    /// phrasing, independent of the slot values (used to count distinct phrasings).
    pub fn skeleton(&self) -> String {
        let mut words: Vec<String> = self.utterance.split_whitespace().map(String::from).collect();
        for (name, said) in &self.spoken {
            let said: Vec<&str> = said.split_whitespace().collect();
            if said.is_empty() {
                continue;
            }
            let found = (0..words.len())
                .find(|&i| words.len() - i >= said.len() && words[i..i + said.len()] == said[..]);
            if let Some(i) = found {
                words.splice(i..i + said.len(), [format!("{{{name}}}")]);
            }
        }
        words.retain(|w| !SKELETON_FILLERS.contains(&w.as_str()));
        words.join(" ")
    }
}

/// Words that [`Example::skeleton`] ignores: hesitations that change no phrasing.
const SKELETON_FILLERS: &[&str] = &["uh", "um", "uhh", "umm", "er", "like", "huh", "hmm"];

/// A word of an utterance; slot words are never touched by the noise.
#[derive(Debug, Clone)]
struct Word {
    text: String,
    slot: bool,
}

fn words(text: &str, slot: bool) -> Vec<Word> {
    text.split_whitespace().map(|w| Word { text: w.to_string(), slot }).collect()
}

fn pick<'a, T>(rng: &mut ChaCha8Rng, items: &'a [T]) -> &'a T {
    // Pools are non-empty constants.
    &items[rng.gen_range(0..items.len())]
}

fn number_words(rng: &mut ChaCha8Rng, n: u32, spell_prob: f64) -> String {
    if n < 1000 && rng.gen_bool(spell_prob) { spell(n) } else { n.to_string() }
}

fn digits(rng: &mut ChaCha8Rng, len: usize) -> String {
    let mut s = rng.gen_range(1..10u32).to_string();
    for _ in 1..len {
        s.push(char::from(b'0' + rng.gen_range(0..10u8)));
    }
    s
}

/// Which split an example's combination belongs to (0 = train, 1 = validation, 2 = test), the
/// combination being its template index and slots (`templates-v1`, whose output must not
/// change).
pub fn combination_split(seed: u64, ex: &Example) -> usize {
    let mut h = Sha256::new();
    h.update(b"truckmate-split-v1");
    split_of(h, seed, ex)
}

/// [`combination_split`] with the phrasing in the combination (`cab`): a pattern whose one slot
/// has a single value (`...give me {pref_shortest}`) has as many combinations as phrasings, so
/// training sees the pattern; with the pattern index alone, revision 3 held such a pattern out
/// whole and the generated test split measured the model on a construction it never saw.
///
/// An empty utterance is one combination (every empty example is the same), so it always trains:
/// held out, the model would never learn that silence is `none` (revision 5's new patterns moved
/// it into the held-out splits for some seeds).
pub fn phrasing_split(seed: u64, ex: &Example) -> usize {
    if ex.utterance.is_empty() {
        return 0;
    }
    let mut h = Sha256::new();
    h.update(b"truckmate-split-v2");
    h.update(ex.phrasing.as_bytes());
    h.update([0]);
    split_of(h, seed, ex)
}

fn split_of(mut h: Sha256, seed: u64, ex: &Example) -> usize {
    h.update(seed.to_le_bytes());
    h.update(ex.intent.as_bytes());
    h.update((ex.template as u64).to_le_bytes());
    if ex.slots.is_empty() {
        h.update(ex.utterance.as_bytes());
    } else {
        for (k, v) in &ex.slots {
            h.update(k.as_bytes());
            h.update([0]);
            h.update(v.as_bytes());
            h.update([0]);
        }
    }
    let d = h.finalize();
    match u16::from_le_bytes([d[0], d[1]]) % 20 {
        0 => 2,
        1 => 1,
        _ => 0,
    }
}

/// The three splits, as corpus lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Corpus {
    /// Training lines.
    pub train: Vec<String>,
    /// Validation lines.
    pub validation: Vec<String>,
    /// Test lines.
    pub test: Vec<String>,
}

/// Sizes of the splits for `count` examples (90/5/5, at least one each when `count >= 3`).
pub fn split_sizes(count: usize) -> [usize; 3] {
    let held = if count >= 3 { (count / 20).max(1) } else { 0 };
    [count - 2 * held, held, held]
}

/// Draws examples with `draw` until each split holds its share of `count`.
fn fill_splits(
    count: usize,
    seed: u64,
    mut draw: impl FnMut(&mut ChaCha8Rng) -> Example,
    split: fn(u64, &Example) -> usize,
) -> [Vec<Example>; 3] {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let want = split_sizes(count);
    let mut out: [Vec<Example>; 3] = Default::default();
    let mut filled = 0;
    // Each held-out split gets ~5% of the draws and needs 5% of `count`: about `count` draws.
    while filled < count {
        let ex = draw(&mut rng);
        let s = split(seed, &ex);
        if out[s].len() < want[s] {
            out[s].push(ex);
            filled += 1;
        }
    }
    out
}

/// Generates `count` examples with `seed` and the default generator, as
/// `[train, validation, test]`.
pub fn generate_examples(count: usize, seed: u64) -> [Vec<Example>; 3] {
    CorpusOptions::new(count, seed).examples().unwrap_or_default()
}

/// Generates `count` examples with `seed` and the default generator (byte-identical for the
/// same arguments).
pub fn generate(count: usize, seed: u64) -> Corpus {
    CorpusOptions::new(count, seed).generate().unwrap_or_default()
}

/// A corpus line: `[USER] utterance [INTENT] answer` (an empty utterance gives
/// `[USER] [INTENT] answer`).
pub fn corpus_line(utterance: &str, answer: &str) -> String {
    if utterance.is_empty() {
        format!("[USER] [INTENT] {answer}")
    } else {
        format!("[USER] {utterance} [INTENT] {answer}")
    }
}

/// Splits a corpus line into its utterance and answer JSON text.
pub fn parse_line(line: &str) -> Option<(&str, &str)> {
    let rest = line.trim().strip_prefix("[USER]")?;
    let (utterance, answer) = rest.split_once("[INTENT]")?;
    Some((utterance.trim(), answer.trim()))
}

#[cfg(test)]
mod tests;
