use super::super::testing::max_abs_diff;
use super::*;
use candle_core::{DType, Device};

const CPU: Kernels = Kernels {
    cpu_f32: true,
    bf16_matmul_inputs: false,
    fused_attention: true,
};
const BF16_OUT: Kernels = Kernels {
    bf16_matmul_inputs: true,
    ..CPU
};

fn random(shape: (usize, usize), seed: u64) -> Tensor {
    let values: Vec<f32> = (0..shape.0 * shape.1)
        .map(|i| ((i as u64 * 2_654_435_761 + seed * 97) % 1000) as f32 / 250.0 - 2.0)
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

fn rms_norm(size: usize, seed: u64) -> RmsNorm {
    RmsNorm::new(random((1, size), seed).squeeze(0).unwrap(), 1e-6)
}

#[test]
fn norm_rope_equals_candle_norms_then_rotary() {
    use candle_nn::Module;
    let (tokens, q_heads, k_heads, dim) = (7, 4, 2, 8);
    let width = (q_heads + 2 * k_heads) * dim;
    let qkv = random((tokens, width), 3);
    let (cos, sin) = (random((tokens, dim / 2), 4), random((tokens, dim / 2), 5));
    let (q_norm, k_norm) = (rms_norm(dim, 1), rms_norm(dim, 2));
    let norms = (
        RmsWeights::new(&q_norm).unwrap(),
        RmsWeights::new(&k_norm).unwrap(),
    );
    for with_norms in [false, true] {
        let heads = |start: usize, n: usize| {
            qkv.narrow(1, start * dim, n * dim)
                .unwrap()
                .reshape((tokens, n, dim))
                .unwrap()
        };
        let rotate = |x: Tensor, norm: &RmsNorm| {
            let x = match with_norms {
                true => norm.forward(&x).unwrap(),
                false => x,
            };
            let x = x.unsqueeze(0).unwrap().contiguous().unwrap();
            candle_nn::rotary_emb::rope_thd(&x, &cos, &sin)
                .unwrap()
                .reshape((tokens, ()))
                .unwrap()
        };
        let expected = Tensor::cat(
            &[
                rotate(heads(0, q_heads), &q_norm),
                rotate(heads(q_heads, k_heads), &k_norm),
                heads(q_heads + k_heads, k_heads)
                    .reshape((tokens, ()))
                    .unwrap(),
            ],
            1,
        )
        .unwrap();
        let got = qkv.copy().unwrap();
        let op = NormRope {
            q_heads,
            k_heads,
            head_dim: dim,
            norms: with_norms.then_some(&norms),
        };
        CPU.norm_rope_in_place(&got, &op, (&cos, &sin)).unwrap();
        let diff = max_abs_diff(&got, &expected);
        assert!(diff < 1e-5, "norms {with_norms}: {diff}");
    }
}

#[test]
fn add_norm_equals_an_add_then_the_norm() {
    use candle_nn::Module;
    let (x, delta) = (random((9, 32), 1), random((9, 32), 2));
    let norm = rms_norm(32, 3);
    let weights = RmsWeights::new(&norm).unwrap();
    let sum = (&x + &delta).unwrap();
    let expected = norm.forward(&sum).unwrap();
    for (kernels, bound) in [(CPU, 1e-5), (BF16_OUT, 2f32.powi(-8) * 8.0)] {
        let (got_sum, normed) = kernels
            .add_norm(&x, delta.copy().unwrap(), &weights)
            .unwrap();
        assert_eq!(max_abs_diff(&got_sum, &sum), 0.0);
        let dtype = if kernels.bf16_matmul_inputs {
            DType::BF16
        } else {
            DType::F32
        };
        assert_eq!(normed.dtype(), dtype);
        let diff = max_abs_diff(&normed, &expected);
        assert!(diff <= bound, "{kernels:?}: {diff}");
    }
}

#[test]
fn gated_halves_equal_the_gated_activation_of_two_products() {
    let gate_up = random((5, 2 * 24), 9);
    let (gate, up) = (
        gate_up.narrow(1, 0, 24).unwrap(),
        gate_up.narrow(1, 24, 24).unwrap(),
    );
    for kernels in [CPU, BF16_OUT] {
        let pairs = [
            (kernels.swiglu_halves(&gate_up), kernels.swiglu(&gate, &up)),
            (kernels.geglu_halves(&gate_up), kernels.geglu(&gate, &up)),
        ];
        for (fused, separate) in pairs {
            let (fused, separate) = (fused.unwrap(), separate.unwrap());
            assert_eq!(fused.dtype(), separate.dtype());
            assert_eq!(max_abs_diff(&fused, &separate), 0.0, "{kernels:?}");
        }
    }
}
