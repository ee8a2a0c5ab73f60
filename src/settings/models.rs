//! Per-model settings: one value for every model, or one per model in the order of `model`.

use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

use super::{ScoringSettings, Settings};
use crate::model::LoadOptions;

/// One served model: what to load, and the names requests may use for it.
#[derive(Debug, Clone)]
pub struct ModelSettings {
    pub load: LoadOptions,
    pub served_names: Vec<String>,
}

/// One model's served names: `a,b` on the command line, a list in the settings file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct NameList(pub Vec<String>);

impl FromStr for NameList {
    type Err = String;

    fn from_str(list: &str) -> Result<Self, String> {
        Ok(NameList(
            list.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
        ))
    }
}

impl ScoringSettings {
    /// What to load for each model, in order.
    pub fn loads(&self) -> anyhow::Result<Vec<LoadOptions>> {
        let count = self.model.len();
        anyhow::ensure!(count > 0, "no model to serve: `model` is empty");
        let revisions = per_model("revision", &self.revision, count)?;
        let recipes = per_model("recipe", &self.recipe, count)?;
        let instructions = per_model("instruction", &self.instruction, count)?;
        let temperatures = per_model("score_temperature", &self.score_temperature, count)?;
        let mut loads = Vec::with_capacity(count);
        for (i, model) in self.model.iter().enumerate() {
            if let Some(t) = temperatures[i] {
                anyhow::ensure!(
                    t.is_finite() && t > 0.0,
                    "score_temperature must be a positive number; got {t}"
                );
            }
            loads.push(LoadOptions {
                model: model.clone(),
                revision: revisions[i].clone(),
                device: self.device,
                dtype: self.dtype,
                max_length: self.max_length,
                prefix_sharing: self.prefix_sharing,
                cpu_blas: self.cpu_blas.clone(),
                cpu_bf16_gemm: self.cpu_bf16_gemm.clone(),
                recipe: recipes[i].unwrap_or_default(),
                score_temperature: temperatures[i],
                instruction: instructions[i].clone().filter(|s| !s.is_empty()),
            });
        }
        Ok(loads)
    }
}

impl Settings {
    /// Every served model with its own settings, in order.
    pub fn models(&self) -> anyhow::Result<Vec<ModelSettings>> {
        let loads = self.scoring.loads()?;
        let given_names = &self.server.served_model_names;
        anyhow::ensure!(
            given_names.len() <= loads.len(),
            "served_model_names has {} lists of names for {} models",
            given_names.len(),
            loads.len()
        );
        let models: Vec<ModelSettings> = loads
            .into_iter()
            .enumerate()
            .map(|(i, load)| {
                let served_names = match given_names.get(i) {
                    Some(NameList(names)) if !names.is_empty() => names.clone(),
                    _ => default_names(&load.model),
                };
                ModelSettings { load, served_names }
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        for name in models.iter().flat_map(|m| &m.served_names) {
            anyhow::ensure!(
                seen.insert(name.as_str()),
                "the served model name `{name}` is given to two models; set served_model_names to tell them apart"
            );
        }
        Ok(models)
    }
}

/// The names a model answers to by default: a Hub id and its last component
/// (`zeroentropy/zerank-1-small`, `zerank-1-small`); for a local directory only its name, so
/// that no path shows in responses.
pub(super) fn default_names(model: &str) -> Vec<String> {
    let short = model
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|s| !s.is_empty())
        .unwrap_or(model)
        .to_owned();
    if std::path::Path::new(model).is_dir() || short == model {
        vec![short]
    } else {
        vec![model.to_owned(), short]
    }
}

/// A per-model setting: none, one for every model, or one per model.
fn per_model<T: Clone>(name: &str, values: &[T], count: usize) -> anyhow::Result<Vec<Option<T>>> {
    match values.len() {
        0 => Ok(vec![None; count]),
        1 => Ok(vec![Some(values[0].clone()); count]),
        n if n == count => Ok(values.iter().cloned().map(Some).collect()),
        n => anyhow::bail!(
            "`{name}` has {n} values for {count} models: give one for every model, or one per model"
        ),
    }
}

/// A single value or a list.
pub(super) fn one_or_many<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany<T> {
        One(T),
        Many(Vec<T>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(value) => vec![value],
        OneOrMany::Many(values) => values,
    })
}

/// A list of names (the first model's), or a list of lists (one per model).
pub(super) fn name_groups<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<NameList>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Groups {
        One(Vec<String>),
        Many(Vec<Vec<String>>),
    }
    Ok(match Groups::deserialize(d)? {
        Groups::One(names) if names.is_empty() => Vec::new(),
        Groups::One(names) => vec![NameList(names)],
        Groups::Many(groups) => groups.into_iter().map(NameList).collect(),
    })
}
