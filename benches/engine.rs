//! The scoring engine on a checkpoint of a real shape, decoder or encoder: tokens/s with
//! query-prefix sharing on and off (an encoder runs once, without: the engine turns sharing off
//! for it), the peak of the engine's own GEMM (f32 or bf16, measured in the same run on the
//! model's linear shapes and the same threads), the fraction of it the forward reaches without
//! sharing (the roofline line of BENCHMARKS.md), the time per token inside and outside the
//! matmul libraries, and peak resident memory.
//!
//!     python3 bench/workload.py --documents 100 > /tmp/pairs.jsonl
//!     cargo bench --bench engine -- --model /tmp/zerank-0.6b --pairs /tmp/pairs.jsonl
//!     # an encoder: BERT, RoBERTa, XLM-RoBERTa or ModernBERT (bench/encoders.py's
//!     # make_checkpoint writes random-weight ones of the real shapes)
//!     cargo bench --bench engine -- --model /tmp/minilm-ckpt --pairs /tmp/pairs.jsonl
//!
//! Prints one JSON object per line.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use candle_core::{DType, Device, Tensor};
use clap::Parser;
use serde::Deserialize;
use serde_json::json;
use zerank_server::model::{
    BatchBudget, CpuFeatures, CpuLibrary, DTypeSpec, DeviceSpec, Engine, LinearGemm, LoadOptions,
    ModelError, ModelSource, NetworkConfig, NetworkShape, Score, TokenLimits, matmul_time,
};

#[derive(Parser)]
struct Args {
    /// Checkpoint directory (see bench/make_checkpoint.py).
    #[arg(long)]
    model: String,
    /// JSON lines of {"query", "document"} (see bench/workload.py).
    #[arg(long)]
    pairs: PathBuf,
    /// Prefix sharing settings to run, in order (an encoder runs once, without).
    #[arg(long, value_delimiter = ',', default_value = "off,on")]
    sharing: Vec<String>,
    #[arg(long, default_value_t = 16_384)]
    max_batch_tokens: usize,
    #[arg(long, default_value_t = 64)]
    max_batch_pairs: usize,
    /// Rows of the GEMM peak probe (tokens per matmul); 0 skips it.
    #[arg(long, default_value_t = 1024)]
    gemm_rows: usize,
    /// A name for the pairs, carried into every result line (bench/plot.py groups by it).
    #[arg(long, default_value = "pairs")]
    workload: String,
    /// Compute dtype: f32, or bf16 (bf16 weights; oneDNN where the CPU has AVX512-BF16 or AMX).
    #[arg(long, default_value = "f32")]
    dtype: DTypeSpec,
    /// Write the last run's raw scores here, one per line in the order of the pairs
    /// (bench/fidelity.py compares two dtypes' files).
    #[arg(long)]
    scores: Option<PathBuf>,
    /// `cargo bench` passes this to every bench binary.
    #[arg(long, hide = true)]
    bench: bool,
}

#[derive(Deserialize)]
struct Pair {
    query: String,
    document: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.pairs)
        .with_context(|| format!("reading {}", args.pairs.display()))?;
    let pairs: Vec<Pair> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let budget = BatchBudget {
        max_tokens: args.max_batch_tokens,
        max_sequences: args.max_batch_pairs,
    };

    let config =
        NetworkConfig::from_file(&ModelSource::parse(&args.model, None)?.locate()?.config)?;
    let shape = config.shape();
    let mut sharing = args
        .sharing
        .iter()
        .map(|setting| match setting.as_str() {
            "on" => Ok(true),
            "off" => Ok(false),
            other => anyhow::bail!("--sharing takes on and off, not `{other}`"),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if config.architecture().is_encoder() {
        // The engine turns sharing off for an encoder: every setting would run the same.
        sharing = vec![false];
    }
    let mut peak = None;
    let mut unshared: Option<Vec<f32>> = None;
    for (run, requested) in sharing.into_iter().enumerate() {
        let engine = Engine::load(&LoadOptions {
            model: args.model.clone(),
            device: DeviceSpec::Cpu,
            dtype: args.dtype,
            prefix_sharing: requested,
            ..LoadOptions::default()
        })?;
        let prefix_sharing = engine.info().prefix_sharing;
        let rss_after_load = rss_mib("VmRSS:");
        // The first load's peak, before anything else ran: the target is at most 1.1x the
        // resident memory after it.
        let load_peak = (run == 0).then(|| rss_mib("VmHWM:")).flatten();
        if peak.is_none() && args.gemm_rows > 0 {
            let dtype = match engine.info().dtype.as_str() {
                "bf16" => DType::BF16,
                _ => DType::F32,
            };
            peak = Some(gemm_peak(&shape, args.gemm_rows, dtype)?);
        }
        let tokens: usize = pairs
            .iter()
            .map(|p| {
                engine
                    .encoder()
                    .encode(&p.query, &p.document, None, TokenLimits::default())
                    .map(|e| e.ids.len())
            })
            .sum::<Result<_, _>>()?;
        // Warm-up with the whole workload, as a server's steady state: first touches of the
        // weights and of the allocator's memory (the kernel zeroing every page a batch's
        // tensors first land on, a tenth of a bf16 run) stay out of the timing.
        score_pairs(&engine, &pairs, budget)?;
        let (started, matmul_before) = (Instant::now(), matmul_time());
        let scores = score_pairs(&engine, &pairs, budget)?;
        let seconds = started.elapsed().as_secs_f64();
        let matmul_seconds = (matmul_time() - matmul_before).as_secs_f64();
        let us_per_token = |seconds: f64| round(seconds * 1e6 / tokens as f64, 1);
        let raw: Vec<f32> = scores.iter().map(|s| s.raw).collect();
        if let Some(path) = &args.scores {
            let lines: String = raw.iter().map(|r| format!("{r}\n")).collect();
            std::fs::write(path, lines).with_context(|| format!("writing {}", path.display()))?;
        }
        let max_diff = unshared.as_ref().map(|base| {
            base.iter()
                .zip(&raw)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max)
        });
        if !prefix_sharing {
            unshared = Some(raw);
        }
        let flops = forward_flops(&shape, &pairs, &engine)?;
        println!(
            "{}",
            json!({
                "runner": "engine",
                "workload": args.workload,
                "architecture": engine.info().architecture,
                "dtype": engine.info().dtype,
                "prefix_sharing": prefix_sharing,
                "pairs": pairs.len(),
                "tokens": tokens,
                "seconds": round(seconds, 2),
                "tokens_per_s": round(tokens as f64 / seconds, 1),
                "pairs_per_s": round(pairs.len() as f64 / seconds, 2),
                // Wall time inside the matmul libraries' calls (the attention kernel's block
                // products summed over the threads and divided by them), its share, and the
                // rest (candle's own gemm, under --cpu-blas off, counts as the rest).
                "matmul_us_per_token": us_per_token(matmul_seconds),
                "outside_matmul_us_per_token": us_per_token(seconds - matmul_seconds),
                "matmul_share": round(matmul_seconds / seconds, 3),
                "model_gflop_per_token": round(flops / tokens as f64 / 1e9, 3),
                "model_gflops_per_s": round(flops / seconds / 1e9, 1),
                // Only without sharing: with it, `flops` counts the shared prefixes once per pair,
                // work the engine skips, and the rate is an effective one.
                "fraction_of_gemm_peak": peak
                    .filter(|_| !prefix_sharing)
                    .map(|p| round(flops / seconds / 1e9 / p, 3)),
                "max_abs_diff_raw_vs_unshared": max_diff,
                "matmul": engine.info().matmul,
                "rss_after_load_mib": rss_after_load,
                "load_peak_rss_mib": load_peak,
                "load_peak_over_after_load": load_peak
                    .zip(rss_after_load)
                    .map(|(peak, after)| round(peak / after, 3)),
                "rss_after_scoring_mib": rss_mib("VmRSS:"),
            })
        );
    }
    println!(
        "{}",
        json!({ "peak_rss_mib": rss_mib("VmHWM:"), "f32_weights_mib": f32_weight_mib(&shape) })
    );
    Ok(())
}

/// Bytes of the weights at f32: what the resident set cannot go below on CPU.
fn f32_weight_mib(shape: &NetworkShape) -> f64 {
    round(shape.parameters() as f64 * 4.0 / (1 << 20) as f64, 1)
}

/// The best GFLOP/s of the matmul the engine runs at its dtype (the bf16 GEMM library under
/// bf16, the BLAS that `cpu_blas = auto` finds under f32, else candle's gemm) over the
/// model's linear shapes, `rows` tokens at a time (`x @ w^T` with inputs already in the
/// matmul's dtype, as the forward gives them), on the same rayon threads as the forward.
fn gemm_peak(shape: &NetworkShape, rows: usize, dtype: DType) -> anyhow::Result<f64> {
    let libraries = (&CpuLibrary::Auto, &CpuLibrary::Auto);
    let (gemm, _) = LinearGemm::open(&Device::Cpu, dtype, libraries, &CpuFeatures::detect())?;
    let inputs = if gemm.multiplies_bf16() {
        DType::BF16
    } else {
        DType::F32
    };
    let mut best: f64 = 0.0;
    let mut probed = Vec::new();
    for &(k, n) in &shape.layer_linears {
        if probed.contains(&(k, n)) {
            continue;
        }
        probed.push((k, n));
        let x = Tensor::randn(0f32, 1.0, (rows, k), &Device::Cpu)?.to_dtype(inputs)?;
        let w = Tensor::randn(0f32, 0.02, (n, k), &Device::Cpu)?.to_dtype(inputs)?;
        let wt = w.t()?;
        gemm.matmul(&x, &wt)?;
        let repeats = 5;
        let started = Instant::now();
        for _ in 0..repeats {
            gemm.matmul(&x, &wt)?;
        }
        let gflops = (2 * rows * k * n * repeats) as f64 / started.elapsed().as_secs_f64() / 1e9;
        println!(
            "{}",
            json!({"gemm": format!("{rows}x{k}x{n}"), "dtype": format!("{inputs:?}").to_lowercase(), "gflops": round(gflops, 1)})
        );
        best = best.max(gflops);
    }
    println!(
        "{}",
        json!({ "gemm_peak_gflops": round(best, 1), "matmul": gemm.description() })
    );
    Ok(best)
}

/// Scores of the pairs in their order, tokenizing included, batched within `budget` as
/// offline scoring does.
fn score_pairs(engine: &Engine, pairs: &[Pair], budget: BatchBudget) -> anyhow::Result<Vec<Score>> {
    let encoded = pairs
        .iter()
        .map(|p| {
            engine
                .encoder()
                .encode(&p.query, &p.document, None, TokenLimits::default())
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

/// Matmul FLOPs of scoring every pair alone (no sharing; see [`NetworkShape::forward_flops`]).
fn forward_flops(shape: &NetworkShape, pairs: &[Pair], engine: &Engine) -> anyhow::Result<f64> {
    let mut total = 0.0;
    for pair in pairs {
        let encoded =
            engine
                .encoder()
                .encode(&pair.query, &pair.document, None, TokenLimits::default())?;
        total += shape.forward_flops(encoded.ids.len());
    }
    Ok(total)
}

/// A memory figure of this process from /proc/self/status (`VmRSS:`, `VmHWM:` for the peak).
fn rss_mib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(round(kib / 1024.0, 1))
}

fn round(x: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (x * scale).round() / scale
}
