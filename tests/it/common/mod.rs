//! Shared by the integration tests: the committed fixtures and their goldens.

pub mod native;
pub mod server;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use zerank_server::model::{
    BatchBudget, DTypeSpec, DeviceSpec, Engine, LoadOptions, ModelConfig, ModelError, Score,
    TokenLimits,
};

pub fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
        .join(name)
}

#[derive(Deserialize)]
pub struct Goldens {
    pub yes_token_id: u32,
    pub pairs: Vec<GoldenPair>,
    pub models: std::collections::HashMap<String, GoldenScores>,
}

#[derive(Deserialize)]
pub struct GoldenPair {
    pub query: String,
    pub document: String,
    pub input_ids: Vec<u32>,
    pub reference_ids_differ: bool,
}

#[derive(Deserialize)]
pub struct GoldenScores {
    pub yes_logit: Vec<f32>,
    pub score: Vec<f32>,
}

pub fn goldens() -> Goldens {
    let text = std::fs::read_to_string(fixture("goldens.json")).expect("goldens.json");
    serde_json::from_str(&text).expect("goldens.json parses")
}

pub fn load(dir: &Path) -> Engine {
    Engine::load(&options(dir)).unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
}

pub fn options(dir: &Path) -> LoadOptions {
    LoadOptions {
        model: dir.to_string_lossy().into_owned(),
        device: DeviceSpec::Cpu,
        dtype: DTypeSpec::F32,
        ..LoadOptions::default()
    }
}

/// The architecture settings of a fixture's `config.json`.
pub fn model_config(dir: &Path) -> ModelConfig {
    ModelConfig::from_file(&dir.join("config.json")).unwrap()
}

/// One pair to score offline, with its own instruction (`None`: the model's default).
pub struct PairText<'a> {
    pub query: &'a str,
    pub document: &'a str,
    pub instruction: Option<&'a str>,
}

/// Scores of the pairs in their order, batched within `budget`, as offline scoring runs.
pub fn score_offline(
    engine: &Engine,
    pairs: &[PairText<'_>],
    budget: BatchBudget,
) -> Result<Vec<Score>, ModelError> {
    let encoded = pairs
        .iter()
        .map(|p| {
            engine
                .encoder()
                .encode(p.query, p.document, p.instruction, TokenLimits::default())
                .map(|e| e.ids)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut scores = Vec::with_capacity(pairs.len());
    engine.score_sequences(&encoded, budget, |batch| {
        scores.extend_from_slice(batch);
        Ok::<_, ModelError>(())
    })?;
    Ok(scores)
}

/// Set in the process [`in_a_process_of_its_own`] starts.
const ALONE: &str = "ZERANK_TEST_ALONE";

/// Runs the test `name` (its path in this binary, e.g. `memory::peak`) again in a process of
/// its own, where no other test allocates memory or starts processes. True inside that
/// process, where the test does its work; false in the calling one, once the test passed there.
pub fn in_a_process_of_its_own(name: &str) -> bool {
    if std::env::var_os(ALONE).is_some() {
        return true;
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--test-threads", "1", "--nocapture"])
        .env(ALONE, "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprint!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(
        output.status.success(),
        "{name} failed in a process of its own"
    );
    // A name that matches no test passes too: one must have run.
    assert!(
        stdout.contains("test result: ok. 1 passed"),
        "{name} did not run"
    );
    false
}

/// A copy of a directory's files, folders included and symlinks followed.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let source = std::fs::canonicalize(entry.path()).unwrap();
        let target = to.join(entry.file_name());
        if source.is_dir() {
            copy_dir(&source, &target);
        } else {
            std::fs::copy(&source, &target).unwrap();
        }
    }
}

/// Runs an offline scoring command that must succeed; its scores, one per output line.
pub fn offline_scores(command: &mut std::process::Command) -> Vec<f32> {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}
