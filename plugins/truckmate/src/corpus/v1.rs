//! `templates-v1`, the first TruckMate generator: 9 to 12 listed templates per intent, filled
//! from the slot pools and roughened by a few kinds of noise. Kept unchanged (its output is
//! byte-identical to what it produced before the `cab` generator existed) so that experiments
//! can compare the two corpora.

use super::pools::*;
use super::{Example, Word, digits, number_words, pick, words};
use rand::Rng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
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
    let mut said = Vec::new();
    for token in templates[template].split_whitespace() {
        match token.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
            Some(name) => {
                let spoken = fill_slot(rng, name, &mut slots);
                w.extend(words(&spoken, true));
                said.push((name.to_string(), spoken));
            }
            None => w.push(Word { text: token.to_string(), slot: false }),
        }
    }
    let w = roughen(rng, intent, w);
    let utterance = w.iter().map(|x| x.text.as_str()).collect::<Vec<_>>().join(" ");
    let phrasing = templates[template].to_string();
    Example { intent, template, utterance, slots, spoken: said, phrasing }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

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
