//! `bitnet classify`: utterances in, the model's intent, slots and confidence out, one JSON
//! line each.

use super::inference::ModelArgs;
use anyhow::Context;
use bitnet_framework::model::InferenceModel;
use bitnet_framework::tokenizer::Tokenizer;
use bitnet_truckmate::answer::{DEFAULT_ABSTAIN_THRESHOLD, classify};
use bitnet_truckmate::eval_set::MAX_UTTERANCE_CHARS;
use std::io::{BufRead, Write};

/// Longest stdin line read, in bytes: [`MAX_UTTERANCE_CHARS`] characters of up to 4 UTF-8 bytes.
pub const MAX_LINE_BYTES: usize = 4 * MAX_UTTERANCE_CHARS;

/// Decode the intent and slots of utterances with the packed-ternary inference model of a
/// checkpoint (or export) and print `{"intent", "slots", "confidence", "abstained"}`, one JSON
/// line per utterance. Below the abstention threshold the answer is `{"intent":"none"}` with
/// `"abstained": true`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// What the driver said. Without it, or with `-`, one utterance per line is read from stdin.
    utterance: Option<String>,
    #[command(flatten)]
    model: ModelArgs,
    /// Abstain (answer intent `none`) below this intent confidence, in [0, 1].
    #[arg(long, default_value_t = DEFAULT_ABSTAIN_THRESHOLD, value_parser = parse_threshold)]
    threshold: f64,
}

/// A probability in [0, 1].
pub fn parse_threshold(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&v) { Ok(v) } else { Err(format!("{v} is not in [0, 1]")) }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let source = args.model.load()?;
    let mut models = source.models(1)?;
    let model = models.first_mut().context("no model")?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match args.utterance.as_deref() {
        Some(u) if u != "-" => {
            let answer = classify(
                model.as_mut(),
                source.tokenizer.as_ref(),
                u,
                source.seq_len,
                args.threshold,
            )?;
            writeln!(out, "{}", serde_json::to_string(&answer)?)?;
            Ok(())
        }
        _ => classify_lines(
            std::io::stdin().lock(),
            &mut out,
            model.as_mut(),
            source.tokenizer.as_ref(),
            source.seq_len,
            args.threshold,
        ),
    }
}

/// Classifies every line of `input` (one utterance a line; a blank line abstains) and writes
/// one JSON answer a line to `out`, flushing after each so a pipe sees answers as they come.
/// Stops at the first line longer than [`MAX_LINE_BYTES`], not UTF-8, or too long for the
/// model, naming its line number.
pub fn classify_lines(
    mut input: impl BufRead,
    out: &mut dyn Write,
    model: &mut dyn InferenceModel,
    tok: &dyn Tokenizer,
    seq_len: usize,
    threshold: f64,
) -> anyhow::Result<()> {
    let mut line_no = 0usize;
    while let Some(line) = read_bounded_line(&mut input, MAX_LINE_BYTES)
        .with_context(|| format!("stdin line {}", line_no + 1))?
    {
        line_no += 1;
        let answer = classify(model, tok, &line, seq_len, threshold)
            .with_context(|| format!("stdin line {line_no}"))?;
        writeln!(out, "{}", serde_json::to_string(&answer)?)?;
        out.flush()?;
    }
    Ok(())
}

/// The next line of `input` without its `\n` (or `\r\n`), or `None` at the end. A line of more
/// than `max_bytes` bytes is refused without reading more than `max_bytes + 1` of it.
pub fn read_bounded_line(
    input: &mut impl BufRead,
    max_bytes: usize,
) -> anyhow::Result<Option<String>> {
    let mut buf = Vec::new();
    let limit = u64::try_from(max_bytes).unwrap_or(u64::MAX).saturating_add(1);
    let n = std::io::Read::take(&mut *input, limit).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
    }
    anyhow::ensure!(buf.len() <= max_bytes, "longer than {max_bytes} bytes");
    String::from_utf8(buf).map(Some).map_err(|_| anyhow::anyhow!("not valid UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_lines() {
        let mut input = std::io::Cursor::new(b"one\r\ntwo\n\nthree".to_vec());
        let mut lines = Vec::new();
        while let Some(l) = read_bounded_line(&mut input, 8).expect("line") {
            lines.push(l);
        }
        assert_eq!(lines, ["one", "two", "", "three"]);
        // Exactly at the limit passes; one byte more fails.
        let mut at = std::io::Cursor::new(b"12345678\n123456789\n".to_vec());
        assert_eq!(read_bounded_line(&mut at, 8).expect("fits").as_deref(), Some("12345678"));
        let err = read_bounded_line(&mut at, 8).expect_err("too long");
        assert!(err.to_string().contains("longer than 8 bytes"), "{err}");
        let mut bad = std::io::Cursor::new(vec![0xff, b'\n']);
        assert!(read_bounded_line(&mut bad, 8).is_err());
        assert_eq!(parse_threshold("0.25"), Ok(0.25));
        assert!(parse_threshold("1.5").is_err() && parse_threshold("x").is_err());
    }
}
