//! The one choice of the dtype the forward runs in and the matmul library that runs its linear
//! layers, with the reason `/info` and the start-up log give.

use candle_core::{DType, Device};

use super::backend::{CpuFeatures, CpuLibrary, DTypeSpec, LinearGemm};
use super::error::{ModelError, Result};

/// What the forward runs in.
pub(super) struct Precision {
    /// Of the weights as set (bf16 may be stored widened: `activations` says what runs).
    pub dtype: DType,
    /// Of the activations.
    pub activations: DType,
    pub gemm: LinearGemm,
    /// Why this dtype: as set, or what `auto` found (the CPU's bf16 instructions, a library).
    pub reason: String,
}

/// The dtype `spec` asks for on `device`, and the GEMM that runs it with the CPU libraries
/// `(f32 BLAS, bf16 GEMM)`. On the CPU, `auto`'s bf16 needs a bf16 GEMM library: without one
/// widened bf16 would be no faster than f32, only less exact, so `auto` runs f32. f16 is
/// refused on the CPU: there it would run the whole forward in f16 (norms and softmax
/// included) through candle's generic kernels, where bf16 gives the same memory, f32's range
/// and a native GEMM on CPUs with bf16 instructions.
pub(super) fn choose(
    spec: DTypeSpec,
    device: &Device,
    cpu: &CpuFeatures,
    libraries: (&CpuLibrary, &CpuLibrary),
) -> Result<Precision> {
    let (dtype, reason) = requested(spec, device, cpu)?;
    let (gemm, activations) = LinearGemm::open(device, dtype, libraries, cpu)?;
    if spec == DTypeSpec::Auto && device.is_cpu() && dtype == DType::BF16 && !gemm.multiplies_bf16()
    {
        let (gemm, activations) = LinearGemm::open(device, DType::F32, libraries, cpu)?;
        return Ok(Precision {
            dtype: DType::F32,
            activations,
            gemm,
            reason: format!(
                "auto: f32, this CPU has {} but no bf16 GEMM library loaded (MKL or oneDNN; README, Configuration)",
                cpu.bf16_instructions()
            ),
        });
    }
    Ok(Precision {
        dtype,
        activations,
        gemm,
        reason,
    })
}

/// The dtype `spec` asks for on `device`, before the libraries are known.
fn requested(spec: DTypeSpec, device: &Device, cpu: &CpuFeatures) -> Result<(DType, String)> {
    let instructions = cpu.bf16_instructions();
    Ok(match spec {
        DTypeSpec::Auto if !device.is_cpu() => (DType::BF16, "auto: bf16 on a GPU".into()),
        DTypeSpec::Auto if cpu.has_bf16_gemm() => (
            DType::BF16,
            format!("auto: bf16, this CPU has {instructions}"),
        ),
        DTypeSpec::Auto => (
            DType::F32,
            format!("auto: f32, this CPU has {instructions}, so bf16 would be no faster"),
        ),
        DTypeSpec::F32 => (DType::F32, "f32, as set".into()),
        DTypeSpec::Bf16 => (DType::BF16, "bf16, as set".into()),
        DTypeSpec::F16 if device.is_cpu() => {
            return Err(ModelError::UnsupportedConfig(
                "--dtype f16 is for GPUs; on the CPU use bf16 (half of f32's memory, as f16, \
                 with f32's range; multiplied natively where the CPU has AVX512-BF16 or AMX) \
                 or f32"
                    .into(),
            ));
        }
        DTypeSpec::F16 => (DType::F16, "f16, as set".into()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f16_is_refused_on_the_cpu_and_names_bf16() {
        let (cpu, features) = (Device::Cpu, CpuFeatures::default());
        assert_eq!(
            requested(DTypeSpec::Auto, &cpu, &features).unwrap().0,
            DType::F32
        );
        assert_eq!(
            requested(DTypeSpec::Bf16, &cpu, &features).unwrap().0,
            DType::BF16
        );
        let refused = requested(DTypeSpec::F16, &cpu, &features)
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("f16") && refused.contains("bf16"),
            "{refused}"
        );
    }

    #[test]
    fn auto_takes_bf16_on_a_cpu_with_bf16_instructions_and_f32_elsewhere() {
        let plain = CpuFeatures::default();
        let (dtype, why) = requested(DTypeSpec::Auto, &Device::Cpu, &plain).unwrap();
        assert_eq!(dtype, DType::F32);
        assert!(why.contains("neither AVX512-BF16 nor AMX"), "{why}");
        for cpu in [
            CpuFeatures {
                avx512_bf16: true,
                ..CpuFeatures::default()
            },
            CpuFeatures {
                amx_bf16: true,
                ..CpuFeatures::default()
            },
        ] {
            let (dtype, why) = requested(DTypeSpec::Auto, &Device::Cpu, &cpu).unwrap();
            assert_eq!(dtype, DType::BF16);
            assert!(why.contains(cpu.bf16_instructions()), "{why}");
        }
        // Set explicitly, a dtype is what it says whatever the CPU.
        let amx = CpuFeatures {
            amx_bf16: true,
            ..CpuFeatures::default()
        };
        assert_eq!(
            requested(DTypeSpec::F32, &Device::Cpu, &amx).unwrap().0,
            DType::F32
        );
        assert_eq!(
            requested(DTypeSpec::Bf16, &Device::Cpu, &plain).unwrap().0,
            DType::BF16
        );
    }
}
