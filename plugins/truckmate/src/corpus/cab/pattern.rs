//! Patterns with alternatives: `(take|get) me to {dest}` stands for two phrasings. Groups are
//! not nested; an empty alternative (`(please|)`) makes a group optional.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// One piece of a pattern.
#[derive(Debug, Clone, PartialEq)]
enum Piece<'a> {
    Text(&'a str),
    Choice(Vec<&'a str>),
}

fn pieces(pattern: &str) -> Vec<Piece<'_>> {
    let mut out = Vec::new();
    let mut rest = pattern;
    while let Some(open) = rest.find('(') {
        let Some(len) = rest[open..].find(')') else { break };
        out.push(Piece::Text(&rest[..open]));
        out.push(Piece::Choice(rest[open + 1..open + len].split('|').collect()));
        rest = &rest[open + len + 1..];
    }
    out.push(Piece::Text(rest));
    out
}

fn tidy(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// One phrasing of `pattern`, each group's alternative drawn uniformly.
pub fn realise(rng: &mut ChaCha8Rng, pattern: &str) -> String {
    let mut text = String::new();
    for piece in pieces(pattern) {
        match piece {
            Piece::Text(t) => text.push_str(t),
            Piece::Choice(alternatives) => {
                text.push(' ');
                text.push_str(alternatives[rng.gen_range(0..alternatives.len())]);
                text.push(' ');
            }
        }
    }
    tidy(&text)
}

/// Every phrasing of `pattern`, in order, without duplicates.
pub fn expand(pattern: &str) -> Vec<String> {
    let mut partial = vec![String::new()];
    for piece in pieces(pattern) {
        partial = match piece {
            Piece::Text(t) => partial.into_iter().map(|p| format!("{p}{t}")).collect(),
            Piece::Choice(alternatives) => partial
                .iter()
                .flat_map(|p| alternatives.iter().map(move |a| format!("{p} {a} ")))
                .collect(),
        };
    }
    let mut out: Vec<String> = Vec::new();
    for p in partial {
        let p = tidy(&p);
        if !out.contains(&p) {
            out.push(p);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn groups_expand_to_every_combination() {
        assert_eq!(
            expand("(take|get) me to {dest} (please|)"),
            vec![
                "take me to {dest} please",
                "take me to {dest}",
                "get me to {dest} please",
                "get me to {dest}"
            ]
        );
        assert_eq!(expand("no groups here"), vec!["no groups here"]);
        assert_eq!(expand("(a|a) b"), vec!["a b"]);
    }

    #[test]
    fn a_realised_phrasing_is_one_of_the_expansions() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let pattern = "(what's|whats|what is) my (eta|e t a) (to {dest}|)";
        let all = expand(pattern);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..400 {
            let r = realise(&mut rng, pattern);
            assert!(all.contains(&r), "{r}");
            seen.insert(r);
        }
        assert_eq!(seen.len(), all.len());
    }
}
