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
    use candle_core::{DType, Tensor};

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
}
