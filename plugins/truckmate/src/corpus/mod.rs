//! The TruckMate corpus generator.
//!
//! Each example is one line:
//! `[USER] <utterance> [INTENT] {"intent":"<name>","slots":{...}}` with slot keys sorted and
//! every slot value a string in canonical form (`"city":"el paso"`, `"state":"tx"`,
//! `"highway":"i-40"`, `"amount":"45.50"`, `"time":"15:30"`, `"weight_lbs":"42000"`).
//!
//! An utterance comes from one of many templates of its intent, filled from the slot pools of
//! [`pools`] in one of several spoken forms (numbers in digits or words, state names or
//! nothing, digit-by-digit reference numbers), then roughened the way a driver talks and speech
//! recognition hears: fillers, politeness, dropped function words, stutters and sound-alike
//! slips. Slot words are never damaged, so the answer is always recoverable.
//!
//! **Splits.** Every example's *combination* is its template plus its canonical slot values
//! (or, without slots, its template plus its final utterance). A combination is assigned to
//! train, validation or test by hashing it with the seed (90/5/5), so the held-out splits consist
//! of template and slot combinations training never saw, while every template and every slot
//! value is still seen in training. The generator draws examples until each split has its share
//! of `count` (90/5/5). The output is byte-identical for the same `(count, seed)`.

pub mod pools;

use pools::*;
use rand::Rng;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// Every intent, with its templates. `{name}` placeholders are slots (see `fill_slot`).
pub const INTENTS: &[(&str, &[&str])] = &[
    (
        "start_trip",
        &[
            "start the trip to {dest}",
            "start my trip",
            "let's start the trip",
            "begin trip to {dest}",
            "start a new trip to {dest}",
            "i'm heading out to {dest} start the trip",
            "start navigation for the load to {dest}",
            "kick off the trip to {dest}",
            "go ahead and start the trip",
            "starting my run to {dest}",
            "let's roll start trip to {dest}",
            "log the trip start",
        ],
    ),
    (
        "stop_trip",
        &[
            "stop the trip",
            "end the trip",
            "end my trip",
            "trip is done",
            "we're delivered end the trip",
            "finish the trip",
            "close out the trip",
            "stop trip i'm at the receiver",
            "i'm done end this trip",
            "cancel the trip",
            "mark the trip complete",
        ],
    ),
    (
        "navigate",
        &[
            "navigate to {dest}",
            "take me to {dest}",
            "get me to {dest}",
            "directions to {dest}",
            "route me to {dest}",
            "how do i get to {dest}",
            "navigate to {dest} by way of {highway}",
            "take {highway} to {dest}",
            "i need to get to {dest}",
            "set destination {dest}",
            "head to {dest}",
            "drive to {dest} using {highway}",
        ],
    ),
    (
        "find_poi",
        &[
            "find {poi} near exit {exit}",
            "where's the nearest {chain}",
            "find me {poi}",
            "is there {poi} coming up",
            "any {poi} on {highway}",
            "find a {chain} near exit {exit} on {highway}",
            "i need {poi}",
            "look for {poi} near {dest}",
            "where can i find {poi} around exit {exit}",
            "show me {chain} locations on {highway}",
            "how far to the next {chain}",
            "find {poi} off {highway} exit {exit}",
        ],
    ),
    (
        "route_preference",
        &[
            "{pref}",
            "{pref} please",
            "route option {pref}",
            "update route settings {pref}",
            "for this trip {pref}",
            "from now on {pref}",
            "set preference {pref}",
            "change routing to {pref}",
            "i want the route to {pref}",
            "routing setting {pref} on this load",
        ],
    ),
    (
        "hos_status",
        &[
            "what's my hos status",
            "how are my hours",
            "check my hours of service",
            "what does my clock look like",
            "how many hours do i have on my clock",
            "hours of service status",
            "show my logs",
            "where am i on my hours",
            "what's my duty status",
            "am i legal right now",
        ],
    ),
    (
        "hos_break_check",
        &[
            "do i need a break",
            "when is my break due",
            "when do i need to take my thirty minute break",
            "am i due for a break",
            "how long until my break",
            "do i have to stop for my break soon",
            "check my break time",
            "when's my thirty due",
            "how long can i go before a break",
        ],
    ),
    (
        "hos_drive_remaining",
        &[
            "how much drive time do i have left",
            "how many hours can i still drive",
            "what's my drive time remaining",
            "how long can i drive today",
            "how much time left on my eleven",
            "how many driving hours left",
            "drive clock remaining",
            "how far can i go before i'm out of hours",
            "when do i run out of hours",
        ],
    ),
    (
        "add_todo",
        &[
            "remind me to {task}",
            "add {task} to my list",
            "add a to do {task}",
            "remind me to {task} at {time}",
            "put {task} on my to do list",
            "don't let me forget to {task}",
            "new task {task}",
            "at {time} remind me to {task}",
            "make a note to {task}",
            "add reminder {task} for {time}",
        ],
    ),
    (
        "add_expense",
        &[
            "add {category} expense {amount}",
            "log {amount} for {category}",
            "i spent {amount} on {category}",
            "record a {category} expense of {amount}",
            "expense {amount} {category}",
            "add {amount} {category} receipt",
            "paid {amount} for {category}",
            "log an expense {category} {amount}",
            "put {amount} down for {category}",
        ],
    ),
    (
        "eta_query",
        &[
            "what's my eta",
            "when will i get there",
            "when will i get to {dest}",
            "how long until i reach {dest}",
            "eta to {dest}",
            "what time will i arrive",
            "how far out am i",
            "when am i getting to {dest}",
            "arrival time please",
            "how long till i get to the receiver",
        ],
    ),
    (
        "next_stop_query",
        &[
            "where's my next stop",
            "what's the next stop",
            "next stop please",
            "where am i going next",
            "what's my next delivery",
            "where do i pick up next",
            "tell me the next stop",
            "what's after this stop",
            "show the next stop on the route",
        ],
    ),
    (
        "trip_status",
        &[
            "how's the trip going",
            "trip status",
            "what's the trip status",
            "how many miles left on this trip",
            "am i on schedule",
            "give me a trip update",
            "how far along is the trip",
            "status of my trip",
            "am i running late",
            "trip progress",
        ],
    ),
    (
        "reroute",
        &[
            "reroute",
            "reroute around {highway}",
            "find another way there's {reason}",
            "reroute me there's {reason} ahead",
            "avoid {highway} there's {reason}",
            "get me off {highway}",
            "detour around {reason}",
            "new route please {reason} on {highway}",
            "there's {reason} up ahead find a way around",
            "recalculate the route",
            "reroute because of {reason}",
        ],
    ),
    (
        "update_load",
        &[
            "update load weight to {weight}",
            "the bol number is {bol}",
            "po number {po}",
            "i'm hauling {commodity}",
            "load is {commodity} {weight}",
            "set the commodity to {commodity}",
            "bill of lading {bol}",
            "update the po to {po}",
            "i'm loaded with {weight} of {commodity}",
            "log bol {bol} po {po}",
            "scaled at {weight}",
            "change load weight {weight}",
        ],
    ),
];

/// Intents whose utterances are commands (politeness prefixes fit them).
const COMMANDS: &[&str] = &[
    "start_trip",
    "stop_trip",
    "navigate",
    "find_poi",
    "route_preference",
    "add_todo",
    "add_expense",
    "reroute",
    "update_load",
];

const FILLERS: &[&str] = &[
    "uh",
    "um",
    "hey truckmate",
    "okay truckmate",
    "ok",
    "so",
    "alright",
    "yeah",
    "hey",
    "truckmate",
];
const POLITE: &[&str] = &["can you", "could you", "please", "i need you to", "go ahead and"];
const SUFFIXES: &[&str] =
    &["please", "thanks", "thank you", "over", "real quick", "for me", "when you get a chance"];
const INNER_FILLERS: &[&str] = &["uh", "um", "like", "uh huh"];
const DROPPABLE: &[&str] = &["the", "a", "to", "me", "my", "for", "is", "of", "i"];
const SLIPS: &[(&str, &str)] = &[
    ("route", "root"),
    ("the", "da"),
    ("for", "fer"),
    ("what's", "whats"),
    ("where's", "wheres"),
    ("to", "too"),
    ("you", "ya"),
    ("going", "goin"),
    ("there", "their"),
    ("break", "brake"),
    ("hours", "ours"),
    ("trip", "trap"),
    ("next", "necks"),
    ("find", "fine"),
    ("my", "mah"),
    ("please", "pleas"),
    ("remind", "rewind"),
    ("load", "lode"),
    ("stop", "stock"),
];

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
}

impl Example {
    /// The answer JSON: `{"intent":"...","slots":{...}}` with sorted keys.
    pub fn answer_json(&self) -> String {
        let value = serde_json::json!({ "intent": self.intent, "slots": self.slots });
        value.to_string()
    }

    /// The corpus line.
    pub fn line(&self) -> String {
        format!("[USER] {} [INTENT] {}", self.utterance, self.answer_json())
    }
}

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

/// Fills placeholder `name`: the spoken words, and the slots it sets.
fn fill_slot(rng: &mut ChaCha8Rng, name: &str, slots: &mut BTreeMap<String, String>) -> String {
    let mut set = |k: &str, v: String| {
        slots.insert(k.to_string(), v);
    };
    match name {
        "dest" => {
            let (city, state) = *pick(rng, CITIES);
            set("city", city.to_string());
            if rng.gen_bool(0.65) {
                set("state", state.to_string());
                format!("{city} {}", state_name(state))
            } else {
                city.to_string()
            }
        }
        "highway" => {
            let n = *pick(rng, INTERSTATES);
            set("highway", format!("i-{n}"));
            match rng.gen_range(0..5) {
                0 => format!("i-{n}"),
                1 => format!("i {n}"),
                2 => format!("interstate {n}"),
                3 => format!("i {}", spell(n)),
                _ => format!("interstate {}", spell(n)),
            }
        }
        "exit" => {
            let n = rng.gen_range(1..400u32);
            set("exit", n.to_string());
            number_words(rng, n, 0.4)
        }
        "poi" => {
            let (v, spoken) = *pick(rng, POI_TYPES);
            set("poi_type", v.to_string());
            pick(rng, spoken).to_string()
        }
        "chain" => {
            let (v, spoken) = *pick(rng, CHAINS);
            set("chain", v.to_string());
            pick(rng, spoken).to_string()
        }
        "pref" => {
            let (v, spoken) = *pick(rng, PREFERENCES);
            set("preference", v.to_string());
            pick(rng, spoken).to_string()
        }
        "task" => {
            let t = *pick(rng, TASKS);
            set("task", t.to_string());
            t.to_string()
        }
        "time" => {
            let h12 = rng.gen_range(1..13u32);
            let m = *pick(rng, &[0u32, 15, 30, 45]);
            let pm = rng.gen_bool(0.5);
            let h24 = (h12 % 12) + if pm { 12 } else { 0 };
            set("time", format!("{h24:02}:{m:02}"));
            let ampm = if pm { "pm" } else { "am" };
            match (rng.gen_range(0..3), m) {
                (0, 0) => format!("{h12} {ampm}"),
                (1, 0) => format!("{} {ampm}", spell(h12)),
                (2, 0) => format!("{} o'clock {ampm}", spell(h12)),
                (0, _) => format!("{h12}:{m:02} {ampm}"),
                _ => format!("{} {} {ampm}", spell(h12), spell(m)),
            }
        }
        "amount" => {
            let d = rng.gen_range(3..900u32);
            let c = if rng.gen_bool(0.5) { 0 } else { rng.gen_range(1..100u32) };
            set("amount", format!("{d}.{c:02}"));
            match (rng.gen_range(0..3), c) {
                (0, _) => format!("{d}.{c:02}"),
                (1, 0) => format!("{} dollars", number_words(rng, d, 0.5)),
                (1, _) => format!("{d} dollars and {c} cents"),
                (_, 0) => format!("{} bucks", number_words(rng, d, 0.3)),
                (_, _) => format!("${d}.{c:02}"),
            }
        }
        "category" => {
            let (v, spoken) = *pick(rng, EXPENSE_CATEGORIES);
            set("category", v.to_string());
            pick(rng, spoken).to_string()
        }
        "weight" => {
            let thousands = rng.gen_range(10..46u32);
            let hundreds = if rng.gen_bool(0.6) { 0 } else { rng.gen_range(1..10u32) };
            let w = thousands * 1000 + hundreds * 100;
            set("weight_lbs", w.to_string());
            match (rng.gen_range(0..3), hundreds) {
                (0, 0) => format!("{thousands} thousand pounds"),
                (1, 0) => format!("{} thousand pounds", spell(thousands)),
                (2, _) => format!("{w} lbs"),
                _ => format!("{w} pounds"),
            }
        }
        "commodity" => {
            let c = *pick(rng, COMMODITIES);
            set("commodity", c.to_string());
            c.to_string()
        }
        "bol" | "po" => {
            let len = if name == "bol" { rng.gen_range(6..10) } else { rng.gen_range(5..9) };
            let n = digits(rng, len);
            set(name, n.clone());
            if rng.gen_bool(0.35) {
                n.chars().map(|c| c.to_string()).collect::<Vec<_>>().join(" ")
            } else {
                n
            }
        }
        "reason" => {
            let (v, spoken) = *pick(rng, REROUTE_REASONS);
            set("reason", v.to_string());
            pick(rng, spoken).to_string()
        }
        other => other.to_string(),
    }
}

fn roughen(rng: &mut ChaCha8Rng, intent: &str, mut w: Vec<Word>) -> Vec<Word> {
    if rng.gen_bool(0.15) {
        let plain: Vec<usize> = (0..w.len()).filter(|&i| !w[i].slot).collect();
        if let Some(&i) = plain.as_slice().choose(rng) {
            let text = w[i].text.clone();
            if let Some((_, to)) = SLIPS.iter().find(|(from, _)| *from == text) {
                w[i].text = to.to_string();
            }
        }
    }
    if rng.gen_bool(0.2) {
        let droppable: Vec<usize> = (0..w.len())
            .filter(|&i| !w[i].slot && DROPPABLE.contains(&w[i].text.as_str()))
            .collect();
        if let Some(&i) = droppable.as_slice().choose(rng)
            && w.len() > 2
        {
            w.remove(i);
        }
    }
    if rng.gen_bool(0.05) && !w.is_empty() {
        let i = rng.gen_range(0..w.len());
        if !w[i].slot {
            let dup = w[i].clone();
            w.insert(i, dup);
        }
    }
    if rng.gen_bool(0.12) && w.len() > 1 {
        let i = rng.gen_range(1..w.len());
        if !(w[i - 1].slot && w[i].slot) {
            w.insert(i, Word { text: pick(rng, INNER_FILLERS).to_string(), slot: false });
        }
    }
    if COMMANDS.contains(&intent) && rng.gen_bool(0.2) {
        let mut p = words(pick::<&str>(rng, POLITE), false);
        p.append(&mut w);
        w = p;
    }
    if rng.gen_bool(0.3) {
        let mut p = words(pick::<&str>(rng, FILLERS), false);
        p.append(&mut w);
        w = p;
    }
    if rng.gen_bool(0.15) {
        w.extend(words(pick::<&str>(rng, SUFFIXES), false));
    }
    w
}

/// Generates one example of intent number `intent_index`.
pub fn generate_example(rng: &mut ChaCha8Rng, intent_index: usize) -> Example {
    let (intent, templates) = INTENTS[intent_index % INTENTS.len()];
    let template = rng.gen_range(0..templates.len());
    let mut slots = BTreeMap::new();
    let mut w = Vec::new();
    for token in templates[template].split_whitespace() {
        match token.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
            Some(name) => {
                let spoken = fill_slot(rng, name, &mut slots);
                w.extend(words(&spoken, true));
            }
            None => w.push(Word { text: token.to_string(), slot: false }),
        }
    }
    let w = roughen(rng, intent, w);
    let utterance = w.iter().map(|x| x.text.as_str()).collect::<Vec<_>>().join(" ");
    Example { intent, template, utterance, slots }
}

/// Which split an example's combination belongs to (0 = train, 1 = validation, 2 = test).
pub fn combination_split(seed: u64, ex: &Example) -> usize {
    let mut h = Sha256::new();
    h.update(b"truckmate-split-v1");
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

/// Generates `count` examples with `seed`, as `[train, validation, test]`.
pub fn generate_examples(count: usize, seed: u64) -> [Vec<Example>; 3] {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let want = split_sizes(count);
    let mut out: [Vec<Example>; 3] = Default::default();
    let mut filled = 0;
    // Each held-out split gets ~5% of the draws and needs 5% of `count`: about `count` draws.
    while filled < count {
        let intent = rng.gen_range(0..INTENTS.len());
        let ex = generate_example(&mut rng, intent);
        let s = combination_split(seed, &ex);
        if out[s].len() < want[s] {
            out[s].push(ex);
            filled += 1;
        }
    }
    out
}

/// Generates `count` examples with `seed` (byte-identical for the same arguments).
pub fn generate(count: usize, seed: u64) -> Corpus {
    let [train, validation, test] =
        generate_examples(count, seed).map(|v| v.iter().map(Example::line).collect());
    Corpus { train, validation, test }
}

/// Splits a corpus line into its utterance and answer JSON text.
pub fn parse_line(line: &str) -> Option<(&str, &str)> {
    let rest = line.trim().strip_prefix("[USER]")?;
    let (utterance, answer) = rest.split_once("[INTENT]")?;
    Some((utterance.trim(), answer.trim()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn byte_identical_for_a_seed_and_different_across_seeds() {
        assert_eq!(generate(500, 42), generate(500, 42));
        assert_ne!(generate(500, 42).train, generate(500, 43).train);
    }

    #[test]
    fn sizes_intents_and_line_format() {
        let c = generate(3000, 7);
        assert_eq!([c.train.len(), c.validation.len(), c.test.len()], split_sizes(3000));
        assert_eq!(split_sizes(3000), [2700, 150, 150]);
        let mut intents = HashSet::new();
        for line in c.train.iter().chain(&c.validation).chain(&c.test) {
            let (utt, answer) = parse_line(line).expect("line format");
            assert!(!utt.is_empty(), "{line}");
            assert_eq!(utt, utt.to_lowercase(), "utterances are lower case");
            assert!(!utt.contains(['{', '}', '"', ',', '[', ']']), "{line}");
            let v: serde_json::Value = serde_json::from_str(answer).expect("answer is JSON");
            let intent = v["intent"].as_str().expect("intent").to_string();
            assert!(v["slots"].is_object());
            intents.insert(intent);
        }
        assert_eq!(intents.len(), INTENTS.len());
        assert!(INTENTS.len() >= 15);
    }

    #[test]
    fn held_out_combinations_never_occur_in_training() {
        let [train, validation, test] = generate_examples(6000, 3);
        type Combo = (&'static str, usize, BTreeMap<String, String>, String);
        let combo = |e: &Example| -> Combo {
            let text = if e.slots.is_empty() { e.utterance.clone() } else { String::new() };
            (e.intent, e.template, e.slots.clone(), text)
        };
        let seen: HashSet<Combo> = train.iter().map(combo).collect();
        let templates: HashSet<(&str, usize)> =
            train.iter().map(|e| (e.intent, e.template)).collect();
        let values: HashSet<(&String, &String)> =
            train.iter().flat_map(|e| e.slots.iter()).collect();
        let mut value_hits = 0;
        let mut value_total = 0;
        for e in validation.iter().chain(&test) {
            assert!(!seen.contains(&combo(e)), "held-out combination seen in training: {e:?}");
            assert!(templates.contains(&(e.intent, e.template)), "template unseen: {e:?}");
            for kv in &e.slots {
                value_total += 1;
                value_hits += usize::from(values.contains(&kv));
            }
        }
        // Categorical values all occur in training; only random numbers (BOL, PO, amounts) may not.
        assert!(value_hits * 10 >= value_total * 7, "{value_hits}/{value_total}");
    }

    #[test]
    fn slot_words_survive_the_noise() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..3000 {
            let intent = rng.gen_range(0..INTENTS.len());
            let ex = generate_example(&mut rng, intent);
            for (k, v) in &ex.slots {
                let checkable = matches!(k.as_str(), "city" | "commodity" | "task");
                if checkable {
                    assert!(ex.utterance.contains(v.as_str()), "{k}={v} in {:?}", ex.utterance);
                }
            }
        }
    }
}
