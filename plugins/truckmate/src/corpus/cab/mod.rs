//! `cab`, the default TruckMate generator: utterances composed the way drivers talk.
//!
//! An example is built in layers, each drawn independently:
//!
//! 1. a **request core** of the intent ([`cores::CORES`]), one of 18 to 31 patterns whose
//!    alternatives expand to hundreds of phrasings per intent: plain and curt requests, trucker
//!    jargon and CB slang, brand names of truck stops, indirect questions, a cause instead of a
//!    request ("the interstate's a parking lot"), a correction ("take me to dallas no wait
//!    houston"), negations ("don't avoid tolls anymore");
//! 2. **slots** spoken in many forms ([`slots`]), whose labels are the canonical values the
//!    `templates-v1` generator uses;
//! 3. **frames**: a wake word or opener, a neutral context clause ("dispatch just called so"), a
//!    false start and its repair ("find me a uh no wait"), politeness for commands or a lead-in
//!    for questions, a sign-off ("over", "thanks");
//! 4. **noise** ([`noise`]) in a drawn speaking style: contractions, run-together words, dropped
//!    articles and g's, sound-alike slips, lost apostrophes, fillers and stutters, and for a
//!    speaker of English as a second language auxiliaries left out and base forms. Noise and
//!    frames never touch slot words.
//!
//! A share of the examples is out of domain ([`ood`]), labelled `none` with no slots, a few of
//! them empty.

pub mod cores;
pub mod noise;
pub mod ood;
pub mod pattern;
pub mod slots;

use super::{Example, NONE_INTENT, Word, pick, words};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::BTreeMap;

/// Openers: wake words, CB habits and hesitations.
const LEADS: &[&str] = &[
    "hey truckmate",
    "ok truckmate",
    "okay truckmate",
    "truckmate",
    "yo truckmate",
    "alright truckmate",
    "hey",
    "hey buddy",
    "alright",
    "ok so",
    "so",
    "uh",
    "um",
    "listen",
    "yeah",
    "truckmate come in",
    "hey there",
];

/// Politeness before a command.
const POLITE: &[&str] = &[
    "can you",
    "could you",
    "can ya",
    "would you",
    "please",
    "i need you to",
    "go ahead and",
    "do me a favor and",
    "hey can you",
    "could you please",
    "can you please",
    "if you could",
    "i want you to",
];

/// Lead-ins before a question.
const ASK: &[&str] = &[
    "quick question",
    "hey real quick",
    "let me ask you",
    "tell me",
    "do you know",
    "can you tell me",
    "i was wondering",
];

/// Sign-offs.
const SUFFIXES: &[&str] = &[
    "please",
    "thanks",
    "thank you",
    "over",
    "copy",
    "real quick",
    "for me",
    "when you get a chance",
    "right now",
    "if you can",
    "appreciate it",
    "thanks buddy",
    "over and out",
    "now",
    "will ya",
];

/// Neutral context clauses that name no slot and ask for nothing.
const CONTEXT: &[&str] = &[
    "long day today",
    "just got back on the road",
    "dispatch just called",
    "finally out of the dock",
    "got a new load",
    "coffee's kicking in",
    "just woke up",
    "sun's in my eyes",
    "radio's acting up",
    "it's been a day",
    "just crossed the state line",
    "dog's asleep in the sleeper",
    "just got off the phone",
];
const CONNECTORS: &[&str] = &["so", "and", "anyway", "alright", "ok", "but", "hey"];

/// False starts (slot-free) and the words that repair them.
const FRAGMENTS: &[&str] = &[
    "take me to",
    "start the",
    "remind me",
    "find me a",
    "what's my",
    "how many",
    "log a",
    "where's the",
    "can you",
    "set a",
    "add a",
    "show me the",
    "how long",
    "when's my",
    "i need a",
    "update the",
];
const REPAIRS: &[&str] = &[
    "no",
    "wait",
    "scratch that",
    "i mean",
    "sorry",
    "hold on",
    "actually",
    "never mind",
    "no no",
    "let me start over",
];

/// First words of a command (politeness fits before them).
const IMPERATIVE: &[&str] = &[
    "take",
    "get",
    "bring",
    "find",
    "start",
    "begin",
    "kick",
    "fire",
    "open",
    "navigate",
    "route",
    "give",
    "gimme",
    "pull",
    "set",
    "make",
    "head",
    "go",
    "drive",
    "run",
    "use",
    "show",
    "plot",
    "plan",
    "look",
    "stop",
    "end",
    "finish",
    "close",
    "wrap",
    "shut",
    "mark",
    "cancel",
    "kill",
    "log",
    "add",
    "put",
    "record",
    "write",
    "remind",
    "change",
    "switch",
    "update",
    "reroute",
    "re",
    "recalculate",
    "recalc",
    "detour",
    "avoid",
    "stay",
    "keep",
    "check",
    "read",
    "tell",
    "charge",
    "expense",
    "note",
    "ping",
];

/// First words of a question (a lead-in fits before them).
const QUESTION: &[&str] = &[
    "what's", "whats", "what", "when", "when's", "whens", "where", "where's", "wheres", "how",
    "how's", "hows", "how're", "am", "are", "is", "do", "did", "can", "will", "who's", "whos",
    "have", "has", "should", "any", "where'm",
];

/// The longest utterance composed with frames, in words (held below the model's window).
const MAX_WORDS: usize = 30;

/// Share of out-of-domain examples that are empty.
const EMPTY_SHARE: f64 = 0.04;

/// Draws one example: out of domain with probability `none_share` (in `0..=1`), else an intent
/// drawn uniformly.
pub fn draw(rng: &mut ChaCha8Rng, none_share: f64) -> Example {
    if rng.gen_bool(none_share) {
        out_of_domain(rng)
    } else {
        let intent = rng.gen_range(0..cores::CORES.len());
        in_domain(rng, intent)
    }
}

/// A filled core: its words, its slots and its spoken placeholders.
type Filled = (Vec<Word>, BTreeMap<String, String>, Vec<(String, String)>);

/// Fills the placeholders of a realised core.
fn fill(rng: &mut ChaCha8Rng, text: &str) -> Filled {
    let tokens: Vec<&str> = text.split_whitespace().collect();
    let name = |t: &str| t.strip_prefix('{').and_then(|t| t.strip_suffix('}')).map(String::from);
    let mut slots = BTreeMap::new();
    let mut spoken = Vec::new();
    let mut filled: Vec<Option<String>> = vec![None; tokens.len()];
    for (i, t) in tokens.iter().enumerate() {
        if let Some(n) = name(t).filter(|n| !slots::is_distractor(n)) {
            let said = slots::fill(rng, &n, &mut slots);
            spoken.push((n, said.clone()));
            filled[i] = Some(said);
        }
    }
    for (i, t) in tokens.iter().enumerate() {
        if let Some(n) = name(t).filter(|n| slots::is_distractor(n)) {
            filled[i] = Some(slots::distractor(rng, &n, &slots));
        }
    }
    let mut w = Vec::new();
    for (t, f) in tokens.iter().zip(filled) {
        match f {
            Some(said) => w.extend(words(&said, true)),
            None => w.push(Word { text: t.to_string(), slot: false }),
        }
    }
    (w, slots, spoken)
}

fn join(w: &[Word]) -> String {
    w.iter().map(|x| x.text.as_str()).collect::<Vec<_>>().join(" ")
}

/// Wraps `core` in frames drawn for it; `command` allows politeness.
fn frame(rng: &mut ChaCha8Rng, core: Vec<Word>, in_domain: bool) -> Vec<Word> {
    let first = core.first().map(|w| w.text.as_str()).unwrap_or("");
    let command = in_domain && IMPERATIVE.contains(&first);
    let question = in_domain && QUESTION.contains(&first);
    let mut before: Vec<Word> = Vec::new();
    if rng.gen_bool(0.3) {
        before.extend(words(pick::<&str>(rng, LEADS), false));
    }
    if in_domain && rng.gen_bool(0.08) {
        before.extend(words(pick::<&str>(rng, CONTEXT), false));
        before.extend(words(pick::<&str>(rng, CONNECTORS), false));
    }
    if in_domain && rng.gen_bool(0.07) {
        before.extend(words(pick::<&str>(rng, FRAGMENTS), false));
        if rng.gen_bool(0.5) {
            before.extend(words(pick::<&str>(rng, &["uh", "um"]), false));
        }
        before.extend(words(pick::<&str>(rng, REPAIRS), false));
    }
    if command && rng.gen_bool(0.25) {
        before.extend(words(pick::<&str>(rng, POLITE), false));
    } else if question && rng.gen_bool(0.12) {
        before.extend(words(pick::<&str>(rng, ASK), false));
    }
    let mut after = Vec::new();
    if rng.gen_bool(if in_domain { 0.2 } else { 0.08 }) {
        after.extend(words(pick::<&str>(rng, SUFFIXES), false));
    }
    if before.len() + core.len() + after.len() > MAX_WORDS {
        return core;
    }
    before.extend(core);
    before.extend(after);
    before
}

/// One example of intent number `intent` of [`cores::CORES`].
pub fn in_domain(rng: &mut ChaCha8Rng, intent: usize) -> Example {
    let (name, patterns) = cores::CORES[intent % cores::CORES.len()];
    let template = rng.gen_range(0..patterns.len());
    let text = pattern::realise(rng, patterns[template]);
    let (core, slots, spoken) = fill(rng, &text);
    let framed = frame(rng, core, true);
    let w = noise::roughen(rng, framed);
    Example { intent: name, template, utterance: join(&w), slots, spoken, phrasing: text }
}

/// One out-of-domain example (intent `none`, no slots); its template is its pattern in
/// [`ood::OOD`], or `OOD.len()` for an empty utterance.
pub fn out_of_domain(rng: &mut ChaCha8Rng) -> Example {
    let empty = |template| Example {
        intent: NONE_INTENT,
        template,
        utterance: String::new(),
        slots: BTreeMap::new(),
        spoken: Vec::new(),
        phrasing: String::new(),
    };
    if rng.gen_bool(EMPTY_SHARE) {
        return empty(ood::OOD.len());
    }
    let template = rng.gen_range(0..ood::OOD.len());
    let text = pattern::realise(rng, ood::OOD[template]);
    let (core, _, _) = fill(rng, &text);
    let framed = frame(rng, core, false);
    let w = noise::roughen(rng, framed);
    Example { utterance: join(&w), phrasing: text, ..empty(template) }
}

#[cfg(test)]
mod tests;
