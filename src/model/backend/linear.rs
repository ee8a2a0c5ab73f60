//! Linear layers, and the choice of what multiplies them: candle's matmul, the system's BLAS
//! (`blas.rs`) or the bf16 GEMM (`bf16.rs`).

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;

use super::bf16::Bf16Matmul;
use super::blas::{Blas, CpuLibrary, matmul};
use super::device::CpuFeatures;
use crate::model::error::Result;

/// What multiplies a linear layer's input by its weight, chosen once per model.
#[derive(Clone)]
pub enum LinearGemm {
    /// candle's matmul at the model's dtype (GPUs; the CPU without a BLAS).
    Candle,
    /// f32 weights through a BLAS.
    Blas(Arc<Blas>),
    /// bf16 weights with f32 activations: the CPU under `--dtype bf16`.
    Bf16(Arc<Bf16Matmul>),
}

impl LinearGemm {
    /// The linear layers' matmul for `dtype` on `device`, and the dtype of the activations.
    pub fn open(
        device: &Device,
        dtype: DType,
        (blas, bf16_gemm): (&CpuLibrary, &CpuLibrary),
        cpu: &CpuFeatures,
    ) -> Result<(LinearGemm, DType)> {
        if !device.is_cpu() {
            return Ok((LinearGemm::Candle, dtype));
        }
        Ok(match dtype {
            DType::F32 => (
                Blas::open(blas)?.map_or(LinearGemm::Candle, LinearGemm::Blas),
                DType::F32,
            ),
            DType::BF16 => (
                LinearGemm::Bf16(Arc::new(Bf16Matmul::open(
                    bf16_gemm,
                    cpu,
                    Blas::open(blas)?,
                )?)),
                DType::F32,
            ),
            // f16 on the CPU stays candle's, activations included.
            _ => (LinearGemm::Candle, dtype),
        })
    }

    /// The f32 matmul, where a BLAS runs it.
    fn blas(&self) -> Option<&Blas> {
        match self {
            LinearGemm::Blas(blas) => Some(blas),
            _ => None,
        }
    }

    /// Whether the matmuls take bf16 inputs (a bf16 GEMM library on the CPU), so that the
    /// kernels before them write bf16.
    pub fn multiplies_bf16(&self) -> bool {
        matches!(self, LinearGemm::Bf16(bf16) if bf16.multiplies_bf16())
    }

    /// `a @ b` for the attention (rank 2 or 3), f32 out: in bf16 where the linear layers
    /// multiply in bf16, else in f32 as the linear layers do.
    pub fn matmul(&self, a: &Tensor, b: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            LinearGemm::Bf16(bf16) => bf16.matmul(a, b),
            gemm => matmul(gemm.blas(), a, b),
        }
    }

    /// The dtype weights are stored in, for activations of `activations`.
    pub fn weight_dtype(&self, activations: DType) -> DType {
        match self {
            LinearGemm::Bf16(_) => DType::BF16,
            _ => activations,
        }
    }

    /// What multiplies, as `/info` and the start-up log name it.
    pub fn description(&self) -> String {
        match self {
            LinearGemm::Candle => "candle".into(),
            LinearGemm::Blas(blas) => blas.description().to_owned(),
            LinearGemm::Bf16(bf16) => bf16.description(),
        }
    }
}

/// `x @ w^T + b` over the last dimension of a (tokens, in) input.
pub struct Linear {
    weight: Tensor,
    bias: Option<Tensor>,
    gemm: LinearGemm,
}

impl Linear {
    pub fn load(
        in_dim: usize,
        out_dim: usize,
        bias: bool,
        vb: VarBuilder,
        gemm: &LinearGemm,
    ) -> candle_core::Result<Self> {
        let weight = vb
            .clone()
            .set_dtype(gemm.weight_dtype(vb.dtype()))
            .get((out_dim, in_dim), "weight")?;
        let bias = bias.then(|| vb.get(out_dim, "bias")).transpose()?;
        Ok(Linear {
            weight,
            bias,
            gemm: gemm.clone(),
        })
    }

    /// Layers that take one input (q, k and v) as one: their weights stacked into one
    /// (sum of `out_dims`, in) product, so that the input is read and rounded once.
    pub fn load_stacked(
        in_dim: usize,
        out_dims: &[usize],
        bias: bool,
        vbs: &[VarBuilder],
        gemm: &LinearGemm,
    ) -> candle_core::Result<Self> {
        let parts = out_dims
            .iter()
            .zip(vbs)
            .map(|(&out_dim, vb)| Linear::load(in_dim, out_dim, bias, vb.clone(), gemm))
            .collect::<candle_core::Result<Vec<_>>>()?;
        let weights: Vec<&Tensor> = parts.iter().map(|part| &part.weight).collect();
        let biases: Option<Vec<&Tensor>> = parts.iter().map(|part| part.bias.as_ref()).collect();
        Ok(Linear {
            weight: Tensor::cat(&weights, 0)?,
            bias: biases.map(|biases| Tensor::cat(&biases, 0)).transpose()?,
            gemm: gemm.clone(),
        })
    }

    pub fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let y = self.product(x)?;
        match &self.bias {
            Some(bias) => y.broadcast_add(bias),
            None => Ok(y),
        }
    }

    /// `x @ w^T` without the bias, for a kernel that adds it on its way.
    pub fn product(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        match &self.gemm {
            LinearGemm::Bf16(bf16) => bf16.linear(x, &self.weight),
            gemm => matmul(gemm.blas(), x, &self.weight.t()?),
        }
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }
}
