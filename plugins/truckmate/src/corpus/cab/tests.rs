//! Labels follow what the utterance says: every spoken placeholder is in the utterance, and its
//! words give back the canonical value of the label.

use super::super::pools::{STATES, spell};
use super::*;
use rand::SeedableRng;

/// A number said in digits, words or digit pairs ("one twenty three", "two oh five").
fn number(words: &[&str]) -> Option<u32> {
    if let [w] = words
        && let Ok(n) = w.parse()
    {
        return Some(n);
    }
    let small = |w: &str| (0..100u32).find(|&n| spell(n) == w);
    // Groups below 100: "twenty three", "oh five", "seven".
    let mut groups: Vec<u32> = Vec::new();
    let mut i = 0;
    let mut hundreds = None;
    while i < words.len() {
        if words[i] == "hundred" {
            hundreds = Some(groups.pop()? * 100);
            i += 1;
            continue;
        }
        if words[i] == "thousand" {
            let t = hundreds.take().unwrap_or(0) + groups.pop().unwrap_or(0);
            return Some(t * 1000 + number(&words[i + 1..]).unwrap_or(0));
        }
        if let Ok(n) = words[i].parse::<u32>() {
            groups.push(n);
            i += 1;
            continue;
        }
        if words[i] == "oh" {
            groups.push(small(words.get(i + 1)?)?);
            i += 2;
            continue;
        }
        if i + 1 < words.len()
            && let Some(n) = small(&format!("{} {}", words[i], words[i + 1]))
        {
            groups.push(n);
            i += 2;
            continue;
        }
        groups.push(small(words[i])?);
        i += 1;
    }
    match (hundreds, groups.as_slice()) {
        (Some(h), []) => Some(h),
        (Some(h), [r]) => Some(h + r),
        (None, [n]) => Some(*n),
        (None, [h, r]) => Some(h * 100 + r),
        _ => None,
    }
}

fn split(s: &str) -> Vec<&str> {
    s.split_whitespace().collect()
}

/// The canonical value a numeric placeholder's words say.
fn numeric_value(name: &str, said: &str) -> Option<String> {
    let w = split(said);
    match name {
        "highway" => {
            let rest: Vec<&str> = match w.as_slice() {
                [first, rest @ ..] if ["i", "interstate", "the"].contains(first) => rest.to_vec(),
                [one] => vec![one.trim_start_matches("i-").trim_start_matches('i')],
                _ => return None,
            };
            Some(format!("i-{}", number(&rest)?))
        }
        "exit" => Some(number(&w)?.to_string()),
        "bol" | "po" => {
            let digits: String = w
                .iter()
                .map(|d| {
                    if *d == "oh" {
                        "0".to_string()
                    } else {
                        number(&[d]).map(|n| n.to_string()).unwrap_or_default()
                    }
                })
                .collect();
            Some(digits)
        }
        "weight" => {
            let n = match w.as_slice() {
                [k] if k.ends_with('k') => k.trim_end_matches('k').parse::<u32>().ok()? * 1000,
                [n, "lbs" | "pounds"] => n.parse().ok()?,
                _ => {
                    let end = w.iter().position(|x| *x == "pounds").unwrap_or(w.len());
                    let w = &w[..end];
                    // "forty two five": thousands, then one digit of hundreds.
                    let hundreds = w.last().and_then(|x| (1..10u32).find(|&n| spell(n) == *x));
                    match (w.contains(&"thousand"), hundreds) {
                        (false, Some(h)) if w.len() > 1 => {
                            number(&w[..w.len() - 1])? * 1000 + h * 100
                        }
                        _ => number(w)?,
                    }
                }
            };
            Some(n.to_string())
        }
        "amount" => {
            let text = said.trim_start_matches('$');
            if let Some((d, c)) = text.split_once('.') {
                return Some(format!("{d}.{c}"));
            }
            let money: Vec<&str> = w
                .iter()
                .copied()
                .filter(|x| !["and", "cents"].contains(x))
                .map(|x| if x == "a" { "one" } else { x })
                .collect();
            if let Some(at) = money.iter().position(|x| ["dollars", "bucks"].contains(x)) {
                let d = number(&money[..at])?;
                let c = if at + 1 < money.len() { number(&money[at + 1..])? } else { 0 };
                return Some(format!("{d}.{c:02}"));
            }
            // "eighty seven fifty": dollars then cents (10 to 99), the dollars below 100.
            let pair = |small: bool| {
                (1..money.len()).find_map(|k| {
                    let (d, c) = (number(&money[..k])?, number(&money[k..])?);
                    ((d < 100) == small && (10..100).contains(&c)).then_some((d, c))
                })
            };
            // Then a bare number of dollars, then "two twelve forty" (dollars in digit pairs).
            let (d, c) =
                pair(true).or_else(|| number(&money).map(|d| (d, 0))).or_else(|| pair(false))?;
            Some(format!("{d}.{c:02}"))
        }
        "time" => time_value(&w),
        _ => None,
    }
}

fn time_value(w: &[&str]) -> Option<String> {
    let pm_words = ["pm", "afternoon", "evening", "tonight"];
    let pm =
        w.iter().any(|x| pm_words.contains(x)) || (w.contains(&"night") && !w.contains(&"twelve"));
    let h24 = |h12: u32| (h12 % 12) + if pm { 12 } else { 0 };
    let hm = match w {
        ["noon"] => (12, 0),
        ["midnight"] => (0, 0),
        ["quarter", "after", h @ .., _] => (h24(number(h)?), 15),
        ["half", "past", h @ .., _] => (h24(number(h)?), 30),
        ["quarter", "to", h @ .., _] => (h24(number(h)?.checked_sub(1)?), 45),
        [h @ .., "hundred"] => (number(h)?, 0),
        [one, ..] if one.ends_with("am") || one.ends_with("pm") => {
            (h24(one.trim_end_matches("am").trim_end_matches("pm").parse().ok()?), 0)
        }
        [one, ..] if one.contains(':') => {
            let (h, m) = one.split_once(':')?;
            (h24(h.parse().ok()?), m.parse().ok()?)
        }
        _ => {
            let end = w
                .iter()
                .position(|x| ["am", "pm", "o'clock", "in", "at", "tonight"].contains(x))?;
            let n = &w[..end];
            match (0..n.len()).find_map(|k| Some((number(&n[..=k])?, number(&n[k + 1..]))))? {
                (h, Some(m)) if [15, 30, 45].contains(&m) => (h24(h), m),
                (h, _) if n.len() <= 1 => (h24(h), 0),
                _ => return None,
            }
        }
    };
    Some(format!("{:02}:{:02}", hm.0, hm.1))
}

fn contains_words(utterance: &str, said: &str) -> bool {
    let u = split(utterance);
    let s = split(said);
    !s.is_empty() && u.windows(s.len()).any(|win| win == s.as_slice())
}

#[test]
fn the_number_reader_reads_what_the_generator_says() {
    assert_eq!(number(&split("one twenty three")), Some(123));
    assert_eq!(number(&split("two oh five")), Some(205));
    assert_eq!(number(&split("three hundred five")), Some(305));
    assert_eq!(number(&split("forty two")), Some(42));
    assert_eq!(numeric_value("amount", "eighty seven fifty").as_deref(), Some("87.50"));
    assert_eq!(numeric_value("time", "quarter after three pm").as_deref(), Some("15:15"));
    assert_eq!(numeric_value("time", "three fifteen in the afternoon").as_deref(), Some("15:15"));
    assert_eq!(numeric_value("weight", "forty two thousand").as_deref(), Some("42000"));
    assert_eq!(numeric_value("time", "quarter to four pm").as_deref(), Some("15:45"));
    assert_eq!(
        numeric_value("amount", "six hundred and twelve dollars").as_deref(),
        Some("612.00")
    );
    assert_eq!(numeric_value("highway", "95").as_deref(), Some("i-95"));
}

#[test]
fn every_slot_label_is_said_in_the_utterance() {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut checked = 0;
    for i in 0..20_000 {
        let ex = in_domain(&mut rng, i);
        let mut keys = std::collections::BTreeSet::new();
        for (name, said) in &ex.spoken {
            assert!(
                contains_words(&ex.utterance, said),
                "{name}={said:?} not in {:?}",
                ex.utterance
            );
            let key = match name.as_str() {
                "dest" => "city",
                "highway" => "highway",
                "exit" => "exit",
                "poi" | "poi_cause" => "poi_type",
                "chain" => "chain",
                "pref" | "pref_allow" | "pref_cause" | "pref_have" | "pref_object"
                | "pref_fastest" | "pref_shortest" => "preference",
                "task" => "task",
                "time" => "time",
                "amount" => "amount",
                "category" | "payee" => "category",
                "weight" => "weight_lbs",
                "commodity" => "commodity",
                "bol" => "bol",
                "po" => "po",
                "reason" | "reason_state" | "reason_cause" => "reason",
                other => panic!("unexpected placeholder {other}"),
            };
            keys.insert(key);
            let label = ex.slots.get(key).map(String::as_str).unwrap_or_default();
            match name.as_str() {
                "dest" => {
                    let city = ex.slots["city"].as_str();
                    let expected = match ex.slots.get("state") {
                        Some(code) => {
                            let state = STATES.iter().find(|(c, _)| c == code).map(|(_, n)| *n);
                            format!("{city} {}", state.unwrap_or_default())
                        }
                        None => city.to_string(),
                    };
                    let said = said.replace("saint ", "st ");
                    let code = ex.slots.get("state").map(|c| format!("{city} {c}"));
                    assert!(said == expected || Some(&said) == code.as_ref(), "{ex:?}");
                }
                "task" | "commodity" => assert_eq!(said, label),
                "highway" | "exit" | "bol" | "po" | "weight" | "amount" | "time" => {
                    let value = numeric_value(name, said);
                    assert_eq!(value.as_deref(), Some(label), "{name}: {said:?} in {ex:?}");
                }
                _ => {
                    let forms = slots::forms(name, label);
                    assert!(forms.contains(&said.as_str()), "{name}: {said:?} is not {label}");
                }
            }
            checked += 1;
        }
        let mut labelled: std::collections::BTreeSet<&str> =
            ex.slots.keys().map(String::as_str).collect();
        labelled.remove("state");
        assert_eq!(labelled, keys, "every label comes from a spoken placeholder: {ex:?}");
    }
    assert!(checked > 10_000, "{checked}");
}

#[test]
fn out_of_domain_examples_have_no_slots_and_some_are_empty() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let examples: Vec<Example> = (0..3000).map(|_| out_of_domain(&mut rng)).collect();
    assert!(examples.iter().all(|e| e.intent == NONE_INTENT && e.slots.is_empty()));
    assert!(examples.iter().all(|e| e.answer_json() == r#"{"intent":"none","slots":{}}"#));
    let empty = examples.iter().filter(|e| e.utterance.is_empty()).count();
    assert!((40..250).contains(&empty), "{empty}");
    let distinct: std::collections::BTreeSet<&str> =
        examples.iter().map(|e| e.utterance.as_str()).collect();
    assert!(distinct.len() > 1000, "{}", distinct.len());
}
