//! The fused CPU attention and the passes folded around it (`backend/attention.rs`,
//! `backend/fused.rs`) against the unfused path they replace, on every architecture's
//! fixture, with and without shared prefixes.

use std::path::PathBuf;

use super::*;
use crate::model::backend::{CpuFeatures, CpuLibrary};

const FIXTURES: [&str; 6] = [
    "tiny",
    "qwen2",
    "gemma",
    "native-qwen2",
    "native-yes",
    "native-yes-no",
];

/// The fixture's scorer, and its vocabulary size.
fn load(name: &str, gemm: &LinearGemm) -> (Scorer, u32) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    let config = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let weights = [dir.join("model.safetensors")];
    let tensors = SafetensorsFiles::open(&weights).unwrap();
    let backend = Box::new(SafetensorsFiles::open(&weights).unwrap());
    let vb = VarBuilder::from_backend(backend, DType::F32, Device::Cpu);
    let scorer = Scorer::load(&config, &tensors, vb, &[1, 2], gemm).unwrap();
    (scorer, config.vocab_size as u32)
}

/// Three sequences that share a 40-token prefix, one of 70 tokens alone: spans longer and
/// shorter than the kernel's query and key blocks.
fn sequences(vocab: u32) -> Vec<Vec<u32>> {
    let ids = |seed: u32, n: u32| {
        (0..n)
            .map(|i| (seed * 7919 + i * 104_729) % vocab)
            .collect::<Vec<_>>()
    };
    let prefix = ids(1, 40);
    let mut batch: Vec<Vec<u32>> = [(2, 30), (3, 3), (4, 1)]
        .iter()
        .map(|&(seed, n)| [prefix.clone(), ids(seed, n)].concat())
        .collect();
    batch.push(ids(5, 70));
    batch
}

/// Margins of the batch under the fused and the unfused attention.
fn both_ways((scorer, vocab): &mut (Scorer, u32), prefix_sharing: bool) -> (Vec<f32>, Vec<f32>) {
    let batch = sequences(*vocab);
    let batch: Vec<&[u32]> = batch.iter().map(|s| s.as_slice()).collect();
    let packing = Packing::new(&batch, prefix_sharing);
    assert!(scorer.kernels.fused_attention);
    let fused = scorer.logit_margins(&packing).unwrap();
    scorer.kernels.fused_attention = false;
    let unfused = scorer.logit_margins(&packing).unwrap();
    scorer.kernels.fused_attention = true;
    (fused, unfused)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max)
}

#[test]
fn fused_attention_scores_as_the_unfused_path_on_every_fixture() {
    for name in FIXTURES {
        let mut scorer = load(name, &LinearGemm::Candle);
        for prefix_sharing in [false, true] {
            let (fused, unfused) = both_ways(&mut scorer, prefix_sharing);
            let diff = max_diff(&fused, &unfused);
            assert!(
                diff <= 1e-5,
                "{name}, sharing {prefix_sharing}: {fused:?} against {unfused:?}"
            );
        }
    }
}

/// The CPU's bf16 path where a bf16 GEMM library loads (MKL or oneDNN): the unfused path
/// rounds q, k, v and the probabilities to bf16 for its attention matmuls, the fused kernel
/// keeps them f32, so the two differ by bf16 rounding.
#[test]
fn fused_attention_on_the_bf16_path_stays_within_the_bf16_bound() {
    let libraries = (&CpuLibrary::Auto, &CpuLibrary::Auto);
    let (gemm, _) =
        LinearGemm::open(&Device::Cpu, DType::BF16, libraries, &CpuFeatures::detect()).unwrap();
    if !gemm.multiplies_bf16() {
        eprintln!("no bf16 GEMM library loads here: the bf16 path widens to f32, tested above");
        return;
    }
    for name in FIXTURES {
        let mut scorer = load(name, &gemm);
        let (fused, unfused) = both_ways(&mut scorer, true);
        // One bf16 rounding (2^-8 relative) of the margin, plus the engine's bf16 bound on
        // the raw score.
        for (f, u) in fused.iter().zip(&unfused) {
            let bound = u.abs() * 2f32.powi(-8) + 0.01;
            assert!(
                (f - u).abs() <= bound,
                "{name}: {fused:?} against {unfused:?}"
            );
        }
    }
}
