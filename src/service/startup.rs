//! Start-up: loading and warming each model, then starting its batcher.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use super::cache::ScoreCache;
use super::served::{ServedModel, typical_request_secs};
use super::{RequestLimits, Service};
use crate::batcher::{Batcher, Throughput, WorkModel};
use crate::metrics::Metrics;
use crate::model::Engine;
use crate::settings::{ModelSettings, Settings};

/// A model loaded and warmed up, not yet serving.
pub struct LoadedModel {
    settings: ModelSettings,
    engine: Engine,
    throughput: Arc<Throughput>,
}

impl Service {
    /// Loads every model of `settings` and runs a warm-up batch on each, so that a model
    /// that does not fit shows at boot rather than on the first user. Blocking: call off the
    /// async runtime.
    pub fn load_models(settings: &Settings, metrics: &Metrics) -> anyhow::Result<Vec<LoadedModel>> {
        let budget = settings.scoring.batch_budget();
        settings
            .models()?
            .into_iter()
            .map(|model| {
                let started = Instant::now();
                let engine = Engine::load(&model.load)
                    .map_err(|err| anyhow::anyhow!("model `{}`: {err}", model.load.model))?;
                let window = engine.info().max_length;
                anyhow::ensure!(
                    settings.server.chunk_overlap_tokens.saturating_mul(2) < window,
                    "chunk_overlap_tokens = {} is not under half of model `{}`'s longest chunk window, {window} tokens (its max_length): windows must advance by at least half a window",
                    settings.server.chunk_overlap_tokens,
                    model.load.model
                );
                let warmup = engine.warm_up(budget)?;
                metrics
                    .for_model(&model.served_names[0])
                    .model_load_seconds
                    .set(started.elapsed().as_secs_f64());
                let info = engine.info();
                let work = WorkModel::of(info.hidden_size, info.prefix_sharing);
                let throughput = Arc::new(Throughput::new(work));
                throughput.observe(
                    work.batch(warmup.computed_tokens, warmup.tokens(), warmup.pairs),
                    warmup.seconds,
                );
                if let Some(rate) = throughput.tokens_per_sec() {
                    metrics
                        .for_model(&model.served_names[0])
                        .estimated_tokens_per_second
                        .set(rate);
                }
                let tokens_per_sec = throughput.tokens_per_sec().unwrap_or(f64::INFINITY);
                let typical_secs = typical_request_secs(&work, tokens_per_sec);
                tracing::info!(
                    model = %model.load.model,
                    names = ?model.served_names,
                    seconds = started.elapsed().as_secs_f64(),
                    warmup_pairs = warmup.pairs,
                    warmup_tokens = warmup.tokens_each,
                    tokens_per_sec,
                    typical_request_secs = typical_secs,
                    request_timeout_secs = settings.server.request_timeout_secs,
                    info = ?engine.info(),
                    "model ready"
                );
                if typical_secs > settings.server.request_timeout_secs {
                    tracing::warn!(
                        model = %model.load.model,
                        "a request of 100 documents of 400 tokens would take about {typical_secs:.0} s at the measured {:.0} units of work/s, over request_timeout_secs = {}; such requests will be refused with 413 unless real batches run faster (raise the timeout, or use a GPU or a smaller model)",
                        tokens_per_sec,
                        settings.server.request_timeout_secs
                    );
                }
                Ok(LoadedModel {
                    settings: model,
                    engine,
                    throughput,
                })
            })
            .collect()
    }

    /// Starts a batcher per model; call inside a Tokio runtime.
    pub fn start(models: Vec<LoadedModel>, settings: &Settings, metrics: Arc<Metrics>) -> Self {
        // KiB: the semaphore counts in u32, and a request's estimate is never that fine.
        let tokenizing_budget_kib =
            (settings.server.tokenizing_memory_bytes / 1024).clamp(1, u32::MAX as usize);
        let models = models
            .into_iter()
            .map(|loaded| {
                let engine = Arc::new(loaded.engine);
                let model_metrics = metrics.for_model(&loaded.settings.served_names[0]);
                let batcher = Batcher::spawn(
                    engine.clone(),
                    settings.scoring.batch_budget(),
                    settings.server.max_queued_tokens,
                    loaded.throughput,
                    model_metrics.clone(),
                );
                ServedModel {
                    names: loaded.settings.served_names,
                    engine,
                    batcher,
                    cache: ScoreCache::new(
                        settings.server.score_cache_bytes,
                        model_metrics.clone(),
                    ),
                    metrics: model_metrics,
                }
            })
            .collect();
        Service {
            models,
            limits: RequestLimits {
                max_documents: settings.server.max_documents_per_request,
                timeout: Duration::from_secs_f64(settings.server.request_timeout_secs),
                max_tokens_per_doc: settings.scoring.max_tokens_per_doc,
                max_request_tokens: settings.server.max_queued_tokens,
            },
            admission: Arc::new(Semaphore::new(settings.server.max_concurrent_requests)),
            max_concurrent: settings.server.max_concurrent_requests,
            tokenizing_memory: Arc::new(Semaphore::new(tokenizing_budget_kib)),
            tokenizing_budget_kib,
            model_name_policy: settings.server.model_name_policy,
            long_documents: settings.server.long_documents,
            chunking: settings.server.chunking(),
            metrics,
        }
    }
}
