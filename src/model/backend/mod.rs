//! The CPU and GPU arithmetic under the network: where it runs and in which dtype, the
//! linear layers' matmuls (a BLAS library loaded at run time, a bf16 GEMM library, or
//! candle's), and the fused kernels of the forward.

mod attention;
mod bf16;
mod blas;
mod buffers;
mod device;
mod kernels;
mod linear;

pub use attention::{Mask, Span, attend};
pub use blas::{Blas, CpuLibrary, matmul_time};
pub use device::{CpuFeatures, DTypeSpec, DeviceSpec};
pub use kernels::{Gelu, Kernels};
pub use linear::{Linear, LinearGemm};

#[cfg(test)]
pub(crate) mod testing {
    use candle_core::{DType, Device, Tensor};

    use super::{Mask, Span};

    /// The largest element-wise |a - b| of two tensors of one shape, in f32.
    pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        assert_eq!(a.dims(), b.dims());
        let f32 = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        (f32(a) - f32(b))
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Each span's attention in candle's ops: its keys gathered, the mask as -∞, one softmax.
    pub fn attention_reference(
        (q, k, v): (&Tensor, &Tensor, &Tensor),
        spans: &[Span],
        mask: Mask,
    ) -> Tensor {
        let (heads, _, head_dim) = q.dims3().unwrap();
        let group = heads / k.dim(0).unwrap();
        let widen = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let (q, k, v) = (widen(q), widen(k), widen(v));
        let rows: Vec<Tensor> = spans
            .iter()
            .map(|span| {
                let context = span.context.clone().unwrap_or(0..0);
                let (before, len) = (context.len(), span.tokens.len());
                let gather = |t: &Tensor| {
                    let own = t.narrow(1, span.tokens.start, len).unwrap();
                    let earlier = t.narrow(1, context.start, before).unwrap();
                    let keys = Tensor::cat(&[&earlier, &own], 1)
                        .unwrap()
                        .contiguous()
                        .unwrap();
                    // Each query head's key/value head.
                    let index: Vec<u32> = (0..heads).map(|h| (h / group) as u32).collect();
                    keys.index_select(&Tensor::new(index.as_slice(), &Device::Cpu).unwrap(), 0)
                        .unwrap()
                };
                let (keys, values) = (gather(&k), gather(&v));
                let mask: Vec<f32> = (0..len)
                    .flat_map(|i| {
                        (0..before + len).map(move |j| {
                            let at = before + i;
                            let seen = match mask {
                                Mask::Causal => j <= at,
                                Mask::Bidirectional { window } => {
                                    window.is_none_or(|w| at.abs_diff(j) <= w)
                                }
                            };
                            if seen { 0.0 } else { f32::NEG_INFINITY }
                        })
                    })
                    .collect();
                let mask = Tensor::from_vec(mask, (len, before + len), &Device::Cpu).unwrap();
                let scores = q
                    .narrow(1, span.tokens.start, len)
                    .unwrap()
                    .matmul(&keys.t().unwrap())
                    .unwrap()
                    .affine(1.0 / (head_dim as f64).sqrt(), 0.0)
                    .unwrap()
                    .broadcast_add(&mask)
                    .unwrap();
                candle_nn::ops::softmax_last_dim(&scores)
                    .unwrap()
                    .matmul(&values)
                    .unwrap()
                    .transpose(0, 1)
                    .unwrap()
                    .reshape((len, heads * head_dim))
                    .unwrap()
            })
            .collect();
        Tensor::cat(&rows, 0).unwrap()
    }
}
