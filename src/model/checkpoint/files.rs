//! Where a checkpoint's files are: a local directory, or a Hugging Face Hub repository
//! (downloaded into the `HF_HOME` cache, read from it alone when offline).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Cache, Repo, RepoType};
use serde::Deserialize;

use crate::model::error::{ModelError, Result};

const CONFIG: &str = "config.json";
const TOKENIZER: &str = "tokenizer.json";
const TOKENIZER_CONFIG: &str = "tokenizer_config.json";
const CHAT_TEMPLATE: &str = "chat_template.jinja";
const SINGLE_WEIGHTS: &str = "model.safetensors";
const SHARD_INDEX: &str = "model.safetensors.index.json";
/// PyTorch's pickle format, which the server does not read (it can run code when loaded).
const PICKLE_WEIGHTS: &str = "pytorch_model.bin";
const MODULES: &str = "modules.json";
const SENTENCE_BERT_CONFIG: &str = "sentence_bert_config.json";
const ST_MODEL_CONFIG: &str = "config_sentence_transformers.json";

/// The files a checkpoint is made of, all on local disk.
#[derive(Debug, Clone)]
pub struct CheckpointFiles {
    pub config: PathBuf,
    pub tokenizer: PathBuf,
    pub tokenizer_config: Option<PathBuf>,
    pub chat_template: Option<PathBuf>,
    pub weights: Vec<PathBuf>,
    /// Sentence Transformers' native layout: the LogitScore module's `config.json`, when
    /// `modules.json` lists one, and the two model-level files beside it.
    pub logit_score_config: Option<PathBuf>,
    pub sentence_bert_config: Option<PathBuf>,
    pub config_sentence_transformers: Option<PathBuf>,
}

/// What `--model` names.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    Local(PathBuf),
    Hub {
        repo: String,
        revision: Option<String>,
    },
}

impl ModelSource {
    /// An existing directory is local; `owner/name` is a Hub id; anything else is an error.
    pub fn parse(model: &str, revision: Option<&str>) -> Result<Self> {
        let path = Path::new(model);
        if path.is_dir() {
            return Ok(ModelSource::Local(path.to_owned()));
        }
        // The Hub's names: letters, digits, `-`, `_` and `.`, not leading.
        let hub_name = |part: &str| {
            !part.is_empty()
                && !part.starts_with('.')
                && part
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        let mut parts = model.split('/');
        let is_hub_id = matches!(
            (parts.next(), parts.next(), parts.next()),
            (Some(owner), Some(name), None) if hub_name(owner) && hub_name(name) && !path.exists()
        );
        if is_hub_id {
            Ok(ModelSource::Hub {
                repo: model.to_owned(),
                revision: revision.map(str::to_owned),
            })
        } else {
            Err(ModelError::ModelNotFound {
                model: model.to_owned(),
                cwd: working_directory(),
            })
        }
    }

    pub fn locate(&self) -> Result<CheckpointFiles> {
        match self {
            ModelSource::Local(dir) => locate_with(&LocalDir(dir.clone())),
            ModelSource::Hub { repo, revision } => HubRepo::new(repo, revision)
                .and_then(|hub| locate_with(&hub))
                .map_err(|err| match err {
                    hub @ ModelError::Hub { .. } => ModelError::NeitherDirectoryNorHub {
                        model: repo.clone(),
                        cwd: working_directory(),
                        hub: Box::new(hub),
                    },
                    other => other,
                }),
        }
    }
}

/// Where a relative `--model` was looked for.
fn working_directory() -> PathBuf {
    std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."))
}

/// One way of turning a file name of the checkpoint into a local path.
trait FileSource {
    /// The local path of `file`, or why it could not be had.
    fn fetch(&self, file: &str) -> std::result::Result<PathBuf, String>;
    fn missing(&self, file: &str, why: String) -> ModelError;
    /// Whether `file` is there, without downloading it.
    fn holds(&self, file: &str) -> bool;
}

struct LocalDir(PathBuf);

impl FileSource for LocalDir {
    fn fetch(&self, file: &str) -> std::result::Result<PathBuf, String> {
        let path = self.0.join(file);
        if path.is_file() {
            Ok(path)
        } else {
            Err("not found".into())
        }
    }

    fn missing(&self, file: &str, _why: String) -> ModelError {
        ModelError::MissingFile {
            dir: self.0.clone(),
            file: file.to_owned(),
        }
    }

    fn holds(&self, file: &str) -> bool {
        self.fetch(file).is_ok()
    }
}

struct HubRepo {
    name: String,
    repo: Repo,
    cache: Cache,
    api: Option<hf_hub::api::sync::Api>,
}

impl HubRepo {
    fn new(name: &str, revision: &Option<String>) -> Result<Self> {
        let repo = Repo::with_revision(
            name.to_owned(),
            RepoType::Model,
            revision.clone().unwrap_or_else(|| "main".into()),
        );
        let cache = Cache::from_env();
        let api = if offline() {
            None
        } else {
            let token = std::env::var("HF_TOKEN")
                .ok()
                .filter(|t| !t.is_empty())
                .or_else(|| cache.token());
            let api = ApiBuilder::from_env()
                .with_token(token)
                .with_progress(false)
                .build()
                .map_err(|err| ModelError::Hub {
                    repo: name.to_owned(),
                    revision: revision.clone().unwrap_or_else(|| "main".into()),
                    file: String::new(),
                    message: err.to_string(),
                })?;
            Some(api)
        };
        Ok(HubRepo {
            name: name.to_owned(),
            repo,
            cache,
            api,
        })
    }
}

/// How long a download locked by another process (a replica on the same cache volume) is
/// waited for: a multi-GB checkpoint on a slow link.
const LOCKED_DOWNLOAD_WAIT: std::time::Duration = std::time::Duration::from_secs(30 * 60);

fn offline() -> bool {
    std::env::var("HF_HUB_OFFLINE")
        .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
        .unwrap_or(false)
}

impl FileSource for HubRepo {
    fn fetch(&self, file: &str) -> std::result::Result<PathBuf, String> {
        // A warm cache answers without touching the network.
        if let Some(path) = self.cache.repo(self.repo.clone()).get(file) {
            return Ok(path);
        }
        // A pinned commit has its snapshot folder but no ref naming it.
        let revision = self.repo.revision();
        if revision.len() == 40 && revision.bytes().all(|b| b.is_ascii_hexdigit()) {
            let pinned = self
                .cache
                .path()
                .join(self.repo.folder_name())
                .join("snapshots")
                .join(revision)
                .join(file);
            if pinned.is_file() {
                return Ok(pinned);
            }
        }
        let Some(api) = &self.api else {
            return Err("not in the local cache and HF_HUB_OFFLINE is set".into());
        };
        // Replicas that share a cache volume start together: one downloads a file under a lock
        // while the others wait for it, rather than fail and restart.
        let waiting_since = std::time::Instant::now();
        loop {
            match api.repo(self.repo.clone()).get(file) {
                Err(hf_hub::api::sync::ApiError::LockAcquisition(lock))
                    if waiting_since.elapsed() < LOCKED_DOWNLOAD_WAIT =>
                {
                    tracing::info!(file, lock = %lock.display(), "another process is downloading this file into the shared cache; waiting for it");
                    std::thread::sleep(std::time::Duration::from_secs(5));
                }
                fetched => return fetched.map_err(|err| err.to_string()),
            }
        }
    }

    fn holds(&self, file: &str) -> bool {
        self.cache.repo(self.repo.clone()).get(file).is_some()
            || self.api.as_ref().is_some_and(|api| {
                api.repo(self.repo.clone())
                    .info()
                    .is_ok_and(|info| info.siblings.iter().any(|s| s.rfilename == file))
            })
    }

    fn missing(&self, file: &str, why: String) -> ModelError {
        ModelError::Hub {
            repo: self.name.clone(),
            revision: self.repo.revision().to_owned(),
            file: file.to_owned(),
            message: why,
        }
    }
}

fn locate_with(source: &dyn FileSource) -> Result<CheckpointFiles> {
    let required = |file: &str| source.fetch(file).map_err(|why| source.missing(file, why));
    let config = required(CONFIG)?;
    let tokenizer = required(TOKENIZER)?;
    let tokenizer_config = source.fetch(TOKENIZER_CONFIG).ok();
    let chat_template = source.fetch(CHAT_TEMPLATE).ok();
    let weights = match source.fetch(SHARD_INDEX) {
        Ok(index) => shard_names(&index)?
            .iter()
            .map(|shard| required(shard))
            .collect::<Result<Vec<_>>>()?,
        Err(index_why) => match source.fetch(SINGLE_WEIGHTS) {
            Ok(single) => vec![single],
            Err(_) if source.holds(PICKLE_WEIGHTS) => {
                return Err(ModelError::PickleWeights);
            }
            Err(single_why) => {
                return Err(source.missing(
                    &format!("{SINGLE_WEIGHTS} (or {SHARD_INDEX})"),
                    format!("{single_why}; {index_why}"),
                ));
            }
        },
    };
    let modules = source.fetch(MODULES).ok();
    let logit_score_config = match modules.clone() {
        Some(modules) => match logit_score_folder(&modules)? {
            Some(folder) => {
                let folder = folder.trim_matches('/');
                if folder.contains("..") {
                    return Err(ModelError::InvalidFile {
                        path: modules,
                        message: format!("bad module path `{folder}`"),
                    });
                }
                Some(required(&if folder.is_empty() {
                    CONFIG.to_owned()
                } else {
                    format!("{folder}/{CONFIG}")
                })?)
            }
            None => None,
        },
        None => None,
    };
    // Any Sentence Transformers layout: a LogitScore reranker's or a saved CrossEncoder's.
    let (sentence_bert_config, config_sentence_transformers) = match modules {
        Some(_) => (
            source.fetch(SENTENCE_BERT_CONFIG).ok(),
            source.fetch(ST_MODEL_CONFIG).ok(),
        ),
        None => (None, None),
    };
    Ok(CheckpointFiles {
        config,
        tokenizer,
        tokenizer_config,
        chat_template,
        weights,
        logit_score_config,
        sentence_bert_config,
        config_sentence_transformers,
    })
}

/// The distinct shard files an index's `weight_map` points at, in name order.
fn shard_names(index: &Path) -> Result<Vec<String>> {
    let invalid = |message: String| ModelError::InvalidFile {
        path: index.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(index).map_err(|err| invalid(err.to_string()))?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|err| invalid(format!("not valid JSON: {err}")))?;
    let map = value
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| invalid("no `weight_map` object".into()))?;
    let mut shards = BTreeSet::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .filter(|f| !f.contains("..") && !f.starts_with('/'))
            .ok_or_else(|| invalid(format!("bad shard name for tensor `{tensor}`")))?;
        shards.insert(file.to_owned());
    }
    if shards.is_empty() {
        return Err(invalid("`weight_map` is empty".into()));
    }
    Ok(shards.into_iter().collect())
}

#[derive(Deserialize)]
struct ModuleEntry {
    #[serde(default)]
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

const LOGIT_SCORE_TYPE: &str = "LogitScore";

/// The folder of the LogitScore module that `modules.json` lists, if it lists one.
fn logit_score_folder(modules: &Path) -> Result<Option<String>> {
    let entries: Vec<ModuleEntry> = read_json(modules)?;
    Ok(entries
        .into_iter()
        .find(|m| m.kind.rsplit('.').next() == Some(LOGIT_SCORE_TYPE))
        .map(|m| m.path))
}

/// Reads a JSON file of the checkpoint, naming the file in the error.
pub(super) fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T> {
    let invalid = |message: String| ModelError::InvalidFile {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|err| invalid(err.to_string()))?;
    serde_json::from_str(&text).map_err(|err| invalid(err.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_and_bad_names() {
        assert_eq!(
            ModelSource::parse("zeroentropy/zerank-1-small", Some("abc")).unwrap(),
            ModelSource::Hub {
                repo: "zeroentropy/zerank-1-small".into(),
                revision: Some("abc".into())
            }
        );
        for bad in [
            "no-such-dir",
            "./no/such",
            "a/b/c",
            "/abs/missing",
            "owner/",
            "~/models/zerank",
        ] {
            let err = ModelSource::parse(bad, None).unwrap_err();
            assert!(
                matches!(err, ModelError::ModelNotFound { .. }),
                "{bad}: {err}"
            );
            assert!(err.to_string().starts_with("no directory"), "{err}");
        }
    }
}
