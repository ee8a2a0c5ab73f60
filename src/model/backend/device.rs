//! Where the model runs and in which dtype: the settings and what they resolve to.

use std::fmt;
use std::str::FromStr;

use candle_core::Device;
use serde_with::{DeserializeFromStr, SerializeDisplay};

use crate::choice::{Word, Words, spelled_as_words};
use crate::model::error::{ModelError, Result};

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, DeserializeFromStr, SerializeDisplay)]
pub enum DeviceSpec {
    /// CUDA 0 when built with CUDA and a GPU is present, else Metal when built with it, else CPU.
    #[default]
    Auto,
    Cpu,
    Cuda(usize),
    Metal(usize),
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim().to_ascii_lowercase();
        let ordinal = |rest: &str| -> std::result::Result<usize, String> {
            match rest {
                "" => Ok(0),
                _ => rest
                    .strip_prefix(':')
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| format!("bad device ordinal in `{s}`")),
            }
        };
        match s.as_str() {
            "auto" => Ok(DeviceSpec::Auto),
            "cpu" => Ok(DeviceSpec::Cpu),
            _ if s.starts_with("cuda") => Ok(DeviceSpec::Cuda(ordinal(&s[4..])?)),
            _ if s.starts_with("metal") => Ok(DeviceSpec::Metal(ordinal(&s[5..])?)),
            _ => Err(format!(
                "unknown device `{s}` (expected auto, cpu, cuda[:N] or metal[:N])"
            )),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => write!(f, "auto"),
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceSpec::Metal(n) => write!(f, "metal:{n}"),
        }
    }
}

impl DeviceSpec {
    pub(in crate::model) fn open(self) -> Result<(Device, DeviceSpec)> {
        let device_error = |err: candle_core::Error| ModelError::Device(err.to_string());
        match self {
            // A GPU build on a machine without one still runs, on the CPU.
            DeviceSpec::Auto => [DeviceSpec::Cuda(0), DeviceSpec::Metal(0)]
                .into_iter()
                .find_map(|gpu| gpu.open().ok())
                .map_or(Ok((Device::Cpu, DeviceSpec::Cpu)), Ok),
            DeviceSpec::Cpu => Ok((Device::Cpu, self)),
            DeviceSpec::Cuda(n) => Ok((Device::new_cuda(n).map_err(device_error)?, self)),
            DeviceSpec::Metal(n) => Ok((Device::new_metal(n).map_err(device_error)?, self)),
        }
    }
}

/// Compute dtype of weights and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, DeserializeFromStr, SerializeDisplay)]
pub enum DTypeSpec {
    /// bf16 on GPUs and on CPUs that multiply bf16 natively (AVX512-BF16 or AMX) where a bf16
    /// GEMM library loads; f32 on other CPUs, where bf16 would be no faster.
    #[default]
    Auto,
    F32,
    Bf16,
    F16,
}

impl Words for DTypeSpec {
    const WORDS: &'static [Word<Self>] = &[
        Word {
            value: DTypeSpec::Auto,
            name: "auto",
            aliases: &[],
            help: Some(
                "bf16 on GPUs and on CPUs that multiply bf16 natively (AVX512-BF16 or AMX) where a bf16 GEMM library loads; f32 on other CPUs, where bf16 would be no faster",
            ),
        },
        Word {
            value: DTypeSpec::F32,
            name: "f32",
            aliases: &["float32"],
            help: None,
        },
        Word {
            value: DTypeSpec::Bf16,
            name: "bf16",
            aliases: &["bfloat16"],
            help: None,
        },
        Word {
            value: DTypeSpec::F16,
            name: "f16",
            aliases: &["float16", "half"],
            help: None,
        },
    ];
}

spelled_as_words!(DTypeSpec, "dtype");

/// What the CPU offers the matmuls, read at run time: `/info` and the start-up log report it,
/// and `--dtype bf16` on the CPU multiplies in bf16 only where it has AVX512-BF16 or AMX.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CpuFeatures {
    /// The processor's brand string, where the CPU reports one.
    pub model: Option<String>,
    pub avx2: bool,
    pub avx512f: bool,
    pub avx512_bf16: bool,
    pub amx_bf16: bool,
}

impl CpuFeatures {
    #[cfg(target_arch = "x86_64")]
    pub fn detect() -> CpuFeatures {
        let cpuid = raw_cpuid::CpuId::new();
        let model = cpuid
            .get_processor_brand_string()
            .map(|brand| brand.as_str().trim().to_owned())
            .filter(|brand| !brand.is_empty());
        CpuFeatures {
            model,
            // std also checks that the OS saves the registers these use.
            avx2: std::is_x86_feature_detected!("avx2"),
            avx512f: std::is_x86_feature_detected!("avx512f"),
            avx512_bf16: std::is_x86_feature_detected!("avx512bf16"),
            // std's AMX detection is unstable; oneDNN asks the OS for the tile state itself.
            amx_bf16: cpuid
                .get_extended_feature_info()
                .is_some_and(|features| features.has_amx_bf16()),
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    pub fn detect() -> CpuFeatures {
        CpuFeatures::default()
    }

    /// Whether the CPU multiplies bf16 natively (AVX512-BF16 dot products or AMX tiles).
    pub fn has_bf16_gemm(&self) -> bool {
        self.avx512_bf16 || self.amx_bf16
    }

    /// `AMX-BF16`, `AVX512-BF16`, ... for logs: the best bf16 instructions, or none.
    pub fn bf16_instructions(&self) -> &'static str {
        match (self.amx_bf16, self.avx512_bf16) {
            (true, _) => "AMX-BF16",
            (false, true) => "AVX512-BF16",
            (false, false) => "neither AVX512-BF16 nor AMX",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_and_dtype_names() {
        assert_eq!("cuda:1".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(1)));
        assert_eq!("CUDA".parse::<DeviceSpec>(), Ok(DeviceSpec::Cuda(0)));
        assert_eq!("metal".parse::<DeviceSpec>(), Ok(DeviceSpec::Metal(0)));
        assert!("cuda:x".parse::<DeviceSpec>().is_err());
        assert!("tpu".parse::<DeviceSpec>().is_err());
        assert_eq!("bfloat16".parse::<DTypeSpec>(), Ok(DTypeSpec::Bf16));
        assert!("int8".parse::<DTypeSpec>().is_err());
    }

    /// The run-time detection agrees with the kernel's view of the CPU.
    #[test]
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    fn cpu_features_agree_with_proc_cpuinfo() {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        let flags: Vec<&str> = cpuinfo
            .lines()
            .find(|line| line.starts_with("flags"))
            .unwrap()
            .split_whitespace()
            .collect();
        let cpu = CpuFeatures::detect();
        for (name, detected) in [
            ("avx2", cpu.avx2),
            ("avx512f", cpu.avx512f),
            ("avx512_bf16", cpu.avx512_bf16),
            ("amx_bf16", cpu.amx_bf16),
        ] {
            assert_eq!(flags.contains(&name), detected, "{name}");
        }
        assert_eq!(cpu.has_bf16_gemm(), cpu.avx512_bf16 || cpu.amx_bf16);
        let brand = cpuinfo
            .lines()
            .find_map(|line| line.strip_prefix("model name"))
            .map(|rest| rest.trim_start_matches([' ', '\t', ':']).trim());
        assert_eq!(cpu.model.as_deref(), brand);
    }
}
