//! The record beside a `score --output` file (`<output>.settings.json`): the settings that
//! decide its scores, and a digest of the input lines scored, so that `--resume` goes on
//! only with the same settings on the same input.

use std::fs::File;
use std::io::{BufRead, BufReader, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::{PairLines, ScoreFiles, ScoringSettings, batch_budget};
use crate::model::LoadOptions;

/// The record's key for the input scored so far.
const INPUT_KEY: &str = "input scored";

/// Settings that may differ on `--resume`: they decide which pairs share a forward pass,
/// not a pair's score.
const BATCH_KEYS: [&str; 2] = ["--batch-tokens", "--max-batch-pairs"];

/// A running SHA-256 of the input's non-blank lines, each without its line ending and
/// trailing blanks.
#[derive(Clone, Default)]
pub(super) struct InputDigest {
    hasher: Sha256,
    pairs: usize,
}

impl InputDigest {
    pub fn add(&mut self, line: &[u8]) {
        self.hasher.update(line.trim_ascii_end());
        self.hasher.update(b"\n");
        self.pairs += 1;
    }

    fn hex(&self) -> String {
        format!("{:x}", self.hasher.clone().finalize())
    }
}

/// The output of an interrupted run, opened to append to, the scores it keeps and the
/// digest of their input lines. It keeps its complete chunks whose input lines the record
/// vouches for, skipping their pairs in `input`; what follows (a chunk cut short, a partial
/// line) is cut away, to be scored again in the same batches. Refused, untouched, when it
/// holds scores of other settings than `settings`, of other input lines, or more scores than
/// the input has pairs.
pub(super) fn resume<R: BufRead>(
    path: &Path,
    input: &mut PairLines<R>,
    chunk: usize,
    settings: &Map<String, Value>,
) -> anyhow::Result<(Box<dyn Write>, usize, InputDigest)> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("cannot open {}", path.display()))?;
    // An empty output keeps nothing, whatever wrote it.
    let recorded = match file.metadata()?.len() {
        0 => None,
        _ => Some(check_record(path, settings)?),
    };
    let vouched = recorded.as_ref().map_or(0, |(pairs, _)| *pairs);
    let (lines, kept, kept_bytes) = complete_chunks(&file, path, chunk, vouched)?;
    let mut digest = InputDigest::default();
    while digest.pairs < kept && input.advance()? {
        digest.add(&input.line);
    }
    // The pairs past the kept chunks are scored again; they are read ahead only to be sure
    // there are as many, and that the ones the record vouches for are the same.
    let pairs = digest.pairs + input.look_ahead(lines.max(vouched) - digest.pairs)?;
    if pairs < lines {
        bail!(
            "--resume: {} holds {lines} scores, but the input only {pairs} pairs: it is not this input's output",
            path.display()
        );
    }
    if let Some((vouched, sha256)) = &recorded {
        let mut scored = digest.clone();
        for (_, line) in input.read_ahead.iter().take(vouched - digest.pairs) {
            scored.add(line);
        }
        if scored.pairs < *vouched || scored.hex() != *sha256 {
            bail!(
                "--resume: the input's first {vouched} pairs are not those whose scores {} holds (their SHA-256 is not the one in {}): resume with the input that run read, or score again without --resume",
                path.display(),
                record_path(path).display()
            );
        }
    }
    file.set_len(kept_bytes)
        .with_context(|| format!("cannot truncate {}", path.display()))?;
    file.seek(SeekFrom::End(0))?;
    write_record(path, settings, &digest)?;
    Ok((Box::new(file), kept, digest))
}

/// The output's complete score lines, and of them the most that fill whole chunks within
/// the `vouched` first, with their length in bytes.
fn complete_chunks(
    file: &File,
    path: &Path,
    chunk: usize,
    vouched: usize,
) -> anyhow::Result<(usize, usize, u64)> {
    let (mut lines, mut offset) = (0, 0u64);
    let (mut kept, mut kept_bytes) = (0, 0u64);
    let mut reader = BufReader::new(file);
    let mut line = Vec::new();
    loop {
        line.clear();
        let read = reader
            .read_until(b'\n', &mut line)
            .with_context(|| format!("reading {}", path.display()))?;
        if read == 0 || line.last() != Some(&b'\n') {
            return Ok((lines, kept, kept_bytes));
        }
        lines += 1;
        offset += read as u64;
        let score = std::str::from_utf8(&line)
            .ok()
            .and_then(|text| text.trim().parse::<f32>().ok());
        if score.is_none() {
            bail!(
                "--resume: line {lines} of {} is not a score; is it the --output of an earlier run?",
                path.display()
            );
        }
        if lines % chunk == 0 && lines <= vouched {
            (kept, kept_bytes) = (lines, offset);
        }
    }
}

/// What decides the scores of a run, keyed by the flag that sets each: the model and how it
/// scores, the truncation, `--raw`; and the batches, which may change (see [`BATCH_KEYS`]).
pub(super) fn scoring_record(
    files: &ScoreFiles,
    settings: &ScoringSettings,
    model: &LoadOptions,
) -> Map<String, Value> {
    let budget = batch_budget(files, settings);
    let record = json!({
        "--model": model.model,
        "--revision": model.revision,
        "--recipe": model.recipe.to_string(),
        "--instruction": model.instruction,
        "--score-temperature": model.score_temperature,
        "--dtype": model.dtype.to_string(),
        "--device": model.device.to_string(),
        "--max-length": model.max_length,
        "--max-tokens-per-doc": settings.max_tokens_per_doc,
        "--prefix-sharing": model.prefix_sharing,
        "--cpu-blas": model.cpu_blas.to_string(),
        "--cpu-bf16-gemm": model.cpu_bf16_gemm.to_string(),
        "--batch-tokens": budget.max_tokens,
        "--max-batch-pairs": budget.max_sequences,
        "--raw": files.raw,
    });
    let Value::Object(record) = record else {
        unreachable!("a JSON object literal")
    };
    record
}

/// Where the record of `output`'s settings is kept.
fn record_path(output: &Path) -> PathBuf {
    let mut path = output.as_os_str().to_owned();
    path.push(".settings.json");
    path.into()
}

/// Replaces the record of `output` whole, its settings and the input `scored` so far:
/// written aside, then renamed over, so that an interrupted run leaves the old record or
/// the new one.
pub(super) fn write_record(
    output: &Path,
    settings: &Map<String, Value>,
    scored: &InputDigest,
) -> anyhow::Result<()> {
    let path = record_path(output);
    let mut aside = path.as_os_str().to_owned();
    aside.push(".partial");
    let mut record = settings.clone();
    record.insert(
        INPUT_KEY.into(),
        json!({ "pairs": scored.pairs, "sha256": scored.hex() }),
    );
    let text = serde_json::to_string_pretty(&record)? + "\n";
    std::fs::write(&aside, text).with_context(|| format!("cannot write {}", path.display()))?;
    std::fs::rename(&aside, &path).with_context(|| format!("cannot write {}", path.display()))
}

/// The pairs and the digest of the input the record of `output` vouches for; refuses to add
/// to `output` when its record says other settings wrote it, naming each.
fn check_record(output: &Path, settings: &Map<String, Value>) -> anyhow::Result<(usize, String)> {
    let path = record_path(output);
    let text = match std::fs::read_to_string(&path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => bail!(
            "--resume: {} holds scores, but there is no {} to say which settings wrote them; score it again without --resume",
            output.display(),
            path.display()
        ),
        Err(err) => return Err(err).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut written: Map<String, Value> = serde_json::from_str(&text)
        .with_context(|| format!("--resume: {} is not a settings record", path.display()))?;
    let scored = written.remove(INPUT_KEY);
    let shown = |value: Option<&Value>| match value {
        None | Some(Value::Null) => "not set".to_owned(),
        Some(value) => value.to_string(),
    };
    let differences: Vec<String> = settings
        .keys()
        .chain(written.keys().filter(|key| !settings.contains_key(*key)))
        .filter(|key| !BATCH_KEYS.contains(&key.as_str()))
        .filter(|key| written.get(*key) != settings.get(*key))
        .map(|key| {
            format!(
                "{key} was {} there and is {} now",
                shown(written.get(key)),
                shown(settings.get(key))
            )
        })
        .collect();
    if !differences.is_empty() {
        bail!(
            "--resume: {} was written with other settings ({}): {}. Resume with its settings, or score again without --resume",
            output.display(),
            path.display(),
            differences.join("; ")
        );
    }
    let pairs = scored.as_ref().and_then(|s| s["pairs"].as_u64());
    let sha256 = scored.as_ref().and_then(|s| s["sha256"].as_str());
    match (pairs, sha256) {
        (Some(pairs), Some(sha256)) => Ok((pairs as usize, sha256.to_owned())),
        _ => bail!(
            "--resume: {} does not say which input lines were scored (`{INPUT_KEY}`); score again without --resume",
            path.display()
        ),
    }
}
