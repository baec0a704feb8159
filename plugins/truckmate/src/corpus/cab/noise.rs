//! How a driver talks and how speech recognition hears it, applied to the words that are not
//! slots: contractions and run-together words ("gonna", "gimme"), dropped articles, sound-alike
//! slips ("root" for "route"), lost apostrophes, fillers ("uh", "you know") and stutters. Each
//! example draws a speaking style, from clean to sloppy, that sets how much of each it gets.

use super::super::{Word, pick};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Two words said as one.
const CONTRACTIONS: &[(&str, &str, &str)] = &[
    ("going", "to", "gonna"),
    ("want", "to", "wanna"),
    ("got", "to", "gotta"),
    ("have", "to", "hafta"),
    ("give", "me", "gimme"),
    ("let", "me", "lemme"),
    ("what", "is", "what's"),
    ("where", "is", "where's"),
    ("how", "is", "how's"),
    ("when", "is", "when's"),
    ("i", "am", "i'm"),
    ("do", "not", "don't"),
    ("let", "us", "let's"),
    ("there", "is", "there's"),
    ("we", "are", "we're"),
    ("kind", "of", "kinda"),
    ("out", "of", "outta"),
];

/// Words said shorter.
const SHORT_FORMS: &[(&str, &str)] = &[
    ("until", "till"),
    ("because", "cause"),
    ("about", "bout"),
    ("going", "goin"),
    ("okay", "ok"),
    ("you", "ya"),
    ("them", "em"),
    ("nothing", "nothin"),
    ("something", "somethin"),
    ("starting", "startin"),
    ("running", "runnin"),
    ("heading", "headin"),
    ("looking", "lookin"),
    ("getting", "gettin"),
    ("rolling", "rollin"),
    ("driving", "drivin"),
    ("hauling", "haulin"),
    ("pulling", "pullin"),
];

/// Sound-alike slips of speech recognition (never numbers: they would look like slots).
const SLIPS: &[(&str, &str)] = &[
    ("route", "root"),
    ("start", "star"),
    ("avoid", "a void"),
    ("highways", "high ways"),
    ("there", "their"),
    ("break", "brake"),
    ("hours", "ours"),
    ("to", "too"),
    ("for", "fer"),
    ("right", "write"),
    ("where", "wear"),
    ("your", "you're"),
    ("next", "necks"),
    ("load", "lode"),
    ("find", "fine"),
    ("stop", "stock"),
    ("trip", "trap"),
    ("eta", "eat a"),
    ("hos", "hoss"),
    ("log", "lock"),
    ("clock", "clack"),
    ("miles", "mile"),
    ("receiver", "receive her"),
    ("finish", "finnish"),
];

/// Pairs that recognition runs together.
const JOINS: &[(&str, &str)] = &[
    ("whats", "my"),
    ("how", "much"),
    ("how", "long"),
    ("next", "stop"),
    ("to", "do"),
    ("find", "me"),
    ("take", "me"),
    ("truck", "stop"),
    ("check", "my"),
    ("drive", "time"),
    ("any", "more"),
    ("get", "me"),
    ("start", "trip"),
];

const DROPPABLE: &[&str] = &["the", "a", "an", "my", "to", "is", "me", "for"];

/// Auxiliaries that a driver speaking English as a second language often leaves out ("how many
/// hour i can still drive"). Not "have" or "has": in the cores they are mostly "have to" or a
/// main verb ("do i have time"), which no speaker drops (revision 5 did: "before i to take my
/// break").
const AUXILIARIES: &[&str] = &["do", "does", "did", "am", "is", "are", "will"];

/// Past tenses and plurals said in their base form by the same speakers ("i pay 38 dollar").
const BASE_FORMS: &[(&str, &str)] = &[
    ("paid", "pay"),
    ("spent", "spend"),
    ("delivered", "deliver"),
    ("finished", "finish"),
    ("loaded", "load"),
    ("unloaded", "unload"),
    ("dropped", "drop"),
    ("started", "start"),
    ("hours", "hour"),
    ("dollars", "dollar"),
    ("minutes", "minute"),
    ("miles", "mile"),
    ("bucks", "buck"),
];

/// Hesitations put between words.
pub const FILLERS: &[&str] =
    &["uh", "um", "uh", "um", "like", "you know", "i mean", "uh uh", "er", "umm", "so uh"];

/// How much noise an example gets.
#[derive(Debug, Clone, Copy)]
struct Style {
    contraction: f64,
    short: f64,
    slip: f64,
    apostrophe: f64,
    join: f64,
    drop: f64,
    filler: f64,
    stutter: f64,
    /// English as a second language: auxiliaries left out, base forms, a closing "please".
    learner: f64,
}

fn style(rng: &mut ChaCha8Rng) -> Style {
    match rng.gen_range(0..11) {
        // Clean: read off a card.
        0..=2 => Style {
            contraction: 0.1,
            short: 0.0,
            slip: 0.0,
            apostrophe: 0.0,
            join: 0.0,
            drop: 0.0,
            filler: 0.05,
            stutter: 0.0,
            learner: 0.0,
        },
        // Casual speech.
        3..=7 => Style {
            contraction: 0.5,
            short: 0.3,
            slip: 0.08,
            apostrophe: 0.15,
            join: 0.05,
            drop: 0.25,
            filler: 0.3,
            stutter: 0.05,
            learner: 0.0,
        },
        // A second-language speaker, careful otherwise.
        10 => Style {
            contraction: 0.2,
            short: 0.0,
            slip: 0.08,
            apostrophe: 0.1,
            join: 0.0,
            drop: 0.3,
            filler: 0.2,
            stutter: 0.05,
            learner: 0.6,
        },
        // Sloppy speech through a noisy microphone.
        _ => Style {
            contraction: 0.7,
            short: 0.5,
            slip: 0.35,
            apostrophe: 0.5,
            join: 0.2,
            drop: 0.45,
            filler: 0.5,
            stutter: 0.12,
            learner: 0.0,
        },
    }
}

fn plain(w: &Word) -> bool {
    !w.slot
}

fn word(text: &str) -> Word {
    Word { text: text.to_string(), slot: false }
}

/// With probability `p`, says `x` the way `forms` (word, spoken form) has it, if it has it.
fn say_as(rng: &mut ChaCha8Rng, x: &mut Word, forms: &[(&str, &str)], p: f64) {
    if let Some((_, to)) = forms.iter().find(|(from, _)| *from == x.text)
        && rng.gen_bool(p)
    {
        x.text = to.to_string();
    }
}

/// Applies one drawn speaking style to `w`; slot words are never changed, split or joined.
pub(super) fn roughen(rng: &mut ChaCha8Rng, mut w: Vec<Word>) -> Vec<Word> {
    let s = style(rng);
    let mut i = 0;
    while i + 1 < w.len() {
        // "going to dallas" is not "gonna dallas": a "to" before a slot stays.
        let before_slot = w.get(i + 2).is_some_and(|x| x.slot) && w[i + 1].text == "to";
        if plain(&w[i]) && plain(&w[i + 1]) && !before_slot {
            let pair = (w[i].text.as_str(), w[i + 1].text.as_str());
            if let Some((_, _, one)) = CONTRACTIONS.iter().find(|(a, b, _)| (*a, *b) == pair)
                && rng.gen_bool(s.contraction)
            {
                w[i] = word(one);
                w.remove(i + 1);
            }
        }
        i += 1;
    }
    for x in w.iter_mut().filter(|x| plain(x)) {
        say_as(rng, x, SHORT_FORMS, s.short);
        if x.text.contains('\'') && rng.gen_bool(s.apostrophe) {
            x.text = x.text.replace('\'', "");
        }
    }
    if rng.gen_bool(s.slip) {
        let candidates: Vec<usize> = (0..w.len())
            .filter(|&i| plain(&w[i]) && SLIPS.iter().any(|(from, _)| *from == w[i].text))
            .collect();
        if !candidates.is_empty() {
            let i = candidates[rng.gen_range(0..candidates.len())];
            if let Some((_, to)) = SLIPS.iter().find(|(from, _)| *from == w[i].text) {
                w[i].text = to.to_string();
            }
        }
    }
    if rng.gen_bool(s.join) {
        let found = (0..w.len().saturating_sub(1)).find(|&i| {
            plain(&w[i])
                && plain(&w[i + 1])
                && JOINS.contains(&(w[i].text.as_str(), w[i + 1].text.as_str()))
        });
        if let Some(i) = found {
            let next = w.remove(i + 1);
            w[i].text.push_str(&next.text);
        }
    }
    if rng.gen_bool(s.drop) && w.len() > 3 {
        let droppable: Vec<usize> = (0..w.len())
            .filter(|&i| plain(&w[i]) && DROPPABLE.contains(&w[i].text.as_str()))
            .collect();
        if !droppable.is_empty() {
            w.remove(droppable[rng.gen_range(0..droppable.len())]);
        }
    }
    if s.learner > 0.0 {
        for x in w.iter_mut().filter(|x| plain(x)) {
            say_as(rng, x, BASE_FORMS, s.learner);
        }
        let mut i = 0;
        while i < w.len() {
            if w.len() > 2
                && plain(&w[i])
                && AUXILIARIES.contains(&w[i].text.as_str())
                && rng.gen_bool(s.learner)
            {
                w.remove(i);
            } else {
                i += 1;
            }
        }
        if rng.gen_bool(s.learner / 3.0) && w.last().is_some_and(|x| x.text != "please") {
            w.push(word("please"));
        }
    }
    if rng.gen_bool(s.stutter) && !w.is_empty() {
        let i = rng.gen_range(0..w.len());
        if plain(&w[i]) {
            let dup = w[i].clone();
            w.insert(i, dup);
        }
    }
    if rng.gen_bool(s.filler) && w.len() > 1 {
        let i = rng.gen_range(1..w.len());
        if !(w[i - 1].slot && w[i].slot) {
            w.insert(i, word(pick::<&str>(rng, FILLERS)));
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn slot_words_come_through_unchanged_and_in_order() {
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let slot = ["going", "to", "the", "route"];
        for _ in 0..2000 {
            let mut w: Vec<Word> =
                "i want to find the route to".split(' ').map(word).collect::<Vec<_>>();
            w.extend(slot.iter().map(|t| Word { text: t.to_string(), slot: true }));
            w.push(word("please"));
            let out = roughen(&mut rng, w);
            let kept: Vec<&str> = out.iter().filter(|x| x.slot).map(|x| x.text.as_str()).collect();
            assert_eq!(kept, slot);
            let at = out.iter().position(|x| x.slot).expect("slot words");
            assert!(out[at..at + 4].iter().all(|x| x.slot), "slot words stay together");
        }
    }

    #[test]
    fn second_language_speech_drops_auxiliaries_and_inflections_but_never_have_or_slot_words() {
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        let (mut base_forms, mut dropped) = (0, 0);
        for _ in 0..3000 {
            let mut w: Vec<Word> = "how many hours do i have i paid".split(' ').map(word).collect();
            // A slot that says "dollars" and "is": slot words keep their forms.
            w.extend(
                ["42", "dollars", "is"].iter().map(|t| Word { text: t.to_string(), slot: true }),
            );
            let out = roughen(&mut rng, w);
            let text: Vec<&str> = out.iter().map(|x| x.text.as_str()).collect();
            base_forms += usize::from(text.contains(&"hour") && text.contains(&"pay"));
            dropped += usize::from(!text.contains(&"do"));
            // "have" is a main verb or "have to" for these speakers, never left out.
            assert!(text.contains(&"have"), "{text:?}");
            let kept: Vec<&str> = out.iter().filter(|x| x.slot).map(|x| x.text.as_str()).collect();
            assert_eq!(kept, ["42", "dollars", "is"], "{text:?}");
        }
        // One style in eleven is a second-language speaker's (and "do" is never dropped otherwise).
        assert!((50..500).contains(&base_forms), "{base_forms}");
        assert!((50..600).contains(&dropped), "{dropped}");
    }
}
