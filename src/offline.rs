//! `zerank-server score`: the (query, document) pairs of a JSONL file scored with the first
//! model, without a server, one score per line of output.
//!
//! - Blank input lines are skipped and give no output line: output line N is the score of
//!   the N-th non-blank input line.
//! - Pairs are read and scored in chunks of four full batches, so that a file of any size
//!   streams through; every batch's scores are written as soon as it has run.
//! - `--resume` keeps the complete chunks already in `--output` and scores the rest. Batches
//!   are planned within chunks from the start of the input, so a resumed run with the same
//!   batch settings forms the same batches as an uninterrupted one and writes the same bytes.
//! - The settings that decide the scores, and a SHA-256 of the input lines scored, are kept
//!   beside the output in `<output>.settings.json` (see [`record`]), so that the output stays
//!   one score per line for its readers; a resumed run with other settings, or on other input
//!   lines, is refused before anything is cut or appended. The batch settings may change.
//! - On a terminal, stderr shows the pairs done, the rate and the time left; otherwise a
//!   line per chunk, and a closing line. Ctrl-C says how to resume.

mod record;

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, IsTerminal, Write};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use serde_json::Value;

use crate::json::json_kind;
use crate::model::{BatchBudget, Engine, ModelError, Score, TokenLimits};
use crate::settings::{ScoreFiles, ScoringSettings};
use record::{InputDigest, resume, scoring_record, write_record};

/// Full batches of pairs per chunk: the last batch of a chunk may be short, and with four
/// that costs little.
const BATCHES_PER_CHUNK: usize = 4;

/// Scores every pair of `files.input` with the first model of `settings`.
pub fn score_file(files: &ScoreFiles, settings: &ScoringSettings) -> anyhow::Result<()> {
    if files.resume && files.output.is_none() {
        bail!(
            "--resume continues the scores of an earlier run in --output FILE; give --output (scores written to stdout cannot be resumed)"
        );
    }
    let budget = batch_budget(files, settings);
    let chunk = BATCHES_PER_CHUNK * budget.max_sequences;
    let stdin = files.input.as_os_str() == "-";
    let mut input = PairLines::new(if stdin {
        Box::new(std::io::stdin().lock()) as Box<dyn BufRead>
    } else {
        Box::new(BufReader::new(open(&files.input)?))
    });
    let model = settings.loads()?.swap_remove(0);
    let record = scoring_record(files, settings, &model);
    let (output, done, mut digest) = match &files.output {
        Some(path) if files.resume => resume(path, &mut input, chunk, &record)?,
        Some(path) => {
            // Emptied before the record is replaced: a run killed in between leaves no
            // scores that the new record would misdescribe.
            let file =
                File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
            let digest = InputDigest::default();
            write_record(path, &record, &digest)?;
            (Box::new(file) as Box<dyn Write>, 0, digest)
        }
        None => (
            Box::new(std::io::stdout().lock()) as Box<dyn Write>,
            0,
            InputDigest::default(),
        ),
    };
    let output = &mut std::io::BufWriter::new(output);
    let written = Arc::new(AtomicUsize::new(done));
    say_how_to_resume_on_interrupt(files, written.clone());

    let engine = Engine::load(&model)?;
    let limits = TokenLimits {
        max_tokens_per_doc: settings.max_tokens_per_doc,
        ..TokenLimits::default()
    };
    // Counting the pairs costs a read of the file: only for a file, and a terminal to show it.
    let on_terminal = std::io::stderr().is_terminal();
    let progress = if on_terminal {
        let total = if stdin || !files.input.is_file() {
            None
        } else {
            Some(count_pairs(&files.input)?)
        };
        progress_bar(total.map(|total| total.saturating_sub(done as u64)), done)
    } else {
        ProgressBar::hidden()
    };
    let started = Instant::now();
    let log_line = |what: &str| {
        let pairs = written.load(Ordering::SeqCst) - done;
        let seconds = started.elapsed().as_secs_f64();
        let rate = pairs as f64 / seconds.max(1e-9);
        eprintln!("{what} {pairs} pairs in {seconds:.1} s ({rate:.1} pairs/s)");
    };
    let mut sequences: Vec<Vec<u32>> = Vec::with_capacity(chunk);
    let mut write_scores = |sequences: &mut Vec<Vec<u32>>, digest: &InputDigest| {
        engine.score_sequences(sequences, budget, |scores: &[Score]| {
            for score in scores {
                writeln!(
                    output,
                    "{}",
                    if files.raw { score.raw } else { score.score }
                )?;
            }
            output.flush()?;
            written.fetch_add(scores.len(), Ordering::SeqCst);
            progress.inc(scores.len() as u64);
            anyhow::Ok(())
        })?;
        // The record vouches for the input lines of the scores written.
        if let Some(path) = &files.output {
            write_record(path, &record, digest)?;
        }
        if !on_terminal && !sequences.is_empty() {
            log_line("scored");
        }
        sequences.clear();
        anyhow::Ok(())
    };
    while input.advance()? {
        digest.add(&input.line);
        let pair = parse_pair(input.number, &input.line)?;
        let ids = engine
            .encoder()
            .encode(
                &pair.query,
                &pair.document,
                pair.instruction.as_deref(),
                limits,
            )
            .map_err(|err| match err {
                ModelError::InstructionNotAccepted => anyhow!(
                    "line {}, field \"instruction\": the prompt of model {} has no place for an instruction",
                    input.number,
                    engine.info().model
                ),
                err => anyhow!("line {}: {err}", input.number),
            })?
            .ids;
        sequences.push(ids);
        if sequences.len() == chunk {
            write_scores(&mut sequences, &digest)?;
        }
    }
    write_scores(&mut sequences, &digest)?;
    progress.finish();
    let resumed = if done > 0 {
        format!(", resumed after {done} pairs")
    } else {
        String::new()
    };
    log_line(&format!("done{resumed}: scored"));
    Ok(())
}

/// On Ctrl-C (SIGINT), says how many pairs were written and how to go on, then exits: the
/// output and its record stay as `--resume` takes them (a partial line is cut away).
fn say_how_to_resume_on_interrupt(files: &ScoreFiles, written: Arc<AtomicUsize>) {
    let advice = match &files.output {
        Some(path) => format!(
            "{} keeps them; run the same command with --resume to score the rest",
            path.display()
        ),
        None => "scores written to stdout cannot be resumed; give --output FILE".to_owned(),
    };
    let watch = move || -> std::io::Result<()> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(tokio::signal::ctrl_c())?;
        let written = written.load(Ordering::SeqCst);
        eprintln!("interrupted after {written} pairs scored; {advice}");
        std::process::exit(130)
    };
    let _ = std::thread::Builder::new()
        .name("zerank-interrupt".into())
        .spawn(move || {
            if let Err(err) = watch() {
                tracing::warn!(error = %err, "Ctrl-C will stop without a message");
            }
        });
}

/// The server's batch budget, with `--batch-tokens` in place of `max_batch_tokens`.
fn batch_budget(files: &ScoreFiles, settings: &ScoringSettings) -> BatchBudget {
    BatchBudget {
        max_tokens: files.batch_tokens.unwrap_or(settings.max_batch_tokens),
        ..settings.batch_budget()
    }
}

fn open(path: &Path) -> anyhow::Result<File> {
    File::open(path).with_context(|| format!("cannot open {}", path.display()))
}

/// The non-blank lines of the input, one at a time, with their line numbers.
struct PairLines<R> {
    reader: R,
    /// The current line, its newline included.
    line: Vec<u8>,
    /// Its number, from 1, blank lines counted.
    number: usize,
    /// Lines read ahead by `look_ahead`, with their numbers, to be returned again.
    read_ahead: VecDeque<(usize, Vec<u8>)>,
}

impl<R: BufRead> PairLines<R> {
    fn new(reader: R) -> Self {
        PairLines {
            reader,
            line: Vec::new(),
            number: 0,
            read_ahead: VecDeque::new(),
        }
    }

    /// Moves to the next non-blank line; false at the end of the input.
    fn advance(&mut self) -> anyhow::Result<bool> {
        if let Some((number, line)) = self.read_ahead.pop_front() {
            (self.number, self.line) = (number, line);
            return Ok(true);
        }
        self.read_line()
    }

    /// Reads up to `count` more non-blank lines, which `advance` then returns in order; how
    /// many there were. For a stream, such as stdin, that cannot be read twice.
    fn look_ahead(&mut self, count: usize) -> anyhow::Result<usize> {
        while self.read_ahead.len() < count && self.read_line()? {
            self.read_ahead
                .push_back((self.number, std::mem::take(&mut self.line)));
        }
        Ok(self.read_ahead.len().min(count))
    }

    /// Reads the next non-blank line from the reader.
    fn read_line(&mut self) -> anyhow::Result<bool> {
        loop {
            self.line.clear();
            let read = self
                .reader
                .read_until(b'\n', &mut self.line)
                .with_context(|| format!("reading line {}", self.number + 1))?;
            if read == 0 {
                return Ok(false);
            }
            self.number += 1;
            if !self.line.trim_ascii().is_empty() {
                return Ok(true);
            }
        }
    }
}

/// The pairs (non-blank lines) of a file.
fn count_pairs(path: &Path) -> anyhow::Result<u64> {
    let mut lines = PairLines::new(BufReader::new(open(path)?));
    let mut count = 0;
    while lines.advance()? {
        count += 1;
    }
    Ok(count)
}

/// One input line.
struct PairLine {
    query: String,
    document: String,
    instruction: Option<String>,
}

/// A line's pair; what is wrong with it, named once with its line number and field.
/// Unknown fields are ignored and `"instruction": null` is no instruction, as in the API.
fn parse_pair(number: usize, line: &[u8]) -> anyhow::Result<PairLine> {
    let text =
        std::str::from_utf8(line).map_err(|err| anyhow!("line {number}: not UTF-8 ({err})"))?;
    // Without its line break, the errors' columns are the line's.
    let text = text.trim_end_matches(['\n', '\r']);
    let value: Value = serde_json::from_str(text).map_err(|err| {
        // serde_json says "at line 1 column N" of the one line it was given.
        let message = err.to_string();
        let position = format!(" at line {} column {}", err.line(), err.column());
        let message = message.strip_suffix(&position).unwrap_or(&message);
        anyhow!(
            "line {number}, column {}: invalid JSON: {message}",
            err.column()
        )
    })?;
    let Value::Object(mut fields) = value else {
        bail!(
            "line {number}: expected an object with \"query\" and \"document\", got {}",
            json_kind(&value)
        );
    };
    let mut text = |field: &str, required: bool| -> anyhow::Result<Option<String>> {
        match (fields.remove(field), required) {
            (Some(Value::String(text)), _) => Ok(Some(text)),
            (None, true) => bail!("line {number}: missing field \"{field}\""),
            (None | Some(Value::Null), false) => Ok(None),
            (Some(other), _) => bail!(
                "line {number}, field \"{field}\": expected a string, got {}",
                json_kind(&other)
            ),
        }
    };
    Ok(PairLine {
        query: text("query", true)?.expect("a required field is present"),
        document: text("document", true)?.expect("a required field is present"),
        instruction: text("instruction", false)?,
    })
}

/// Pairs done, their rate and the time left (`remaining` pairs, when known), redrawn while
/// a batch runs.
fn progress_bar(remaining: Option<u64>, done: usize) -> ProgressBar {
    let resumed = if done > 0 {
        format!("resumed after {done}: ")
    } else {
        String::new()
    };
    let (bar, template) = match remaining {
        Some(remaining) => (
            ProgressBar::new(remaining),
            "{prefix}{human_pos}/{human_len} pairs [{wide_bar}] {rate}, {elapsed} elapsed, ETA {eta}",
        ),
        None => (
            ProgressBar::no_length(),
            "{spinner} {prefix}{human_pos} pairs, {rate}, {elapsed} elapsed",
        ),
    };
    let style = ProgressStyle::with_template(template)
        .expect("the template is valid")
        .with_key(
            "rate",
            |state: &ProgressState, out: &mut dyn std::fmt::Write| {
                let _ = write!(out, "{:.1} pairs/s", state.per_sec());
            },
        )
        .progress_chars("=> ");
    let bar = bar.with_style(style).with_prefix(resumed);
    bar.enable_steady_tick(Duration::from_millis(250));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_tokens_replaces_the_servers_token_budget() {
        let settings = ScoringSettings {
            max_batch_tokens: 1000,
            max_batch_pairs: 7,
            ..ScoringSettings::default()
        };
        let mut files = ScoreFiles {
            input: "-".into(),
            output: None,
            raw: false,
            batch_tokens: None,
            resume: false,
        };
        assert_eq!(batch_budget(&files, &settings), settings.batch_budget());
        files.batch_tokens = Some(50);
        let budget = batch_budget(&files, &settings);
        assert_eq!((budget.max_tokens, budget.max_sequences), (50, 7));
    }

    #[test]
    fn blank_lines_are_skipped_and_counted() {
        let mut lines = PairLines::new(&b"\n a\n\r\n\t \nb"[..]);
        assert!(lines.advance().unwrap());
        assert_eq!((lines.number, &lines.line[..]), (2, &b" a\n"[..]));
        assert!(lines.advance().unwrap());
        assert_eq!((lines.number, &lines.line[..]), (5, &b"b"[..]));
        assert!(!lines.advance().unwrap());
    }
}
