//! The matrices of a network's forward, from its settled config: what a benchmark counts
//! weights and FLOPs from and probes the GEMM on, for either family.

use super::decoder::{ModelConfig, NetworkConfig};
use super::encoder::EncoderConfig;

/// What each query of a layer's attention sees of its sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionReach {
    /// The tokens up to itself (a decoder).
    Causal,
    /// The whole sequence (an encoder's global attention).
    Bidirectional,
    /// The keys at most this far from it on either side (ModernBERT's local layers).
    Window(usize),
}

impl AttentionReach {
    /// The (query, key) pairs a sequence of `len` tokens scores.
    pub fn visible_pairs(self, len: usize) -> usize {
        match self {
            AttentionReach::Causal => len * (len + 1) / 2,
            AttentionReach::Window(reach) if reach + 1 < len => {
                // Every row's 2·reach + 1 keys, less those past either end.
                len * (2 * reach + 1) - reach * (reach + 1)
            }
            AttentionReach::Bidirectional | AttentionReach::Window(_) => len * len,
        }
    }
}

/// A network's matrices as its forward runs them; linears as (inputs, outputs).
#[derive(Debug, Clone, PartialEq)]
pub struct NetworkShape {
    /// One layer's linears, the same in every layer, each run at every token.
    pub layer_linears: Vec<(usize, usize)>,
    /// Each layer's attention, in order.
    pub layer_attention: Vec<AttentionReach>,
    /// Heads × head size: the inner size of q·kᵀ and of p·v.
    pub attention_width: usize,
    /// Run once a sequence, on the row it is scored from: a decoder's head row, an encoder's
    /// pooler (or head dense) and classifier.
    pub head_linears: Vec<(usize, usize)>,
    /// Elements of the token, position and token-type tables.
    pub embedding_parameters: usize,
}

impl NetworkShape {
    /// Elements of the matrices the engine holds; the vectors (norms, biases, under 0.2% of
    /// any of these networks) left out.
    pub fn parameters(&self) -> usize {
        let elements = |linears: &[(usize, usize)]| linears.iter().map(|(i, o)| i * o).sum();
        let per_layer: usize = elements(&self.layer_linears);
        self.embedding_parameters
            + self.layer_attention.len() * per_layer
            + elements(&self.head_linears)
    }

    /// Matmul FLOPs of scoring one sequence of `len` tokens alone: the linears at every
    /// token, q·kᵀ and p·v over the keys each query sees, and the head once.
    pub fn forward_flops(&self, len: usize) -> f64 {
        let flops = |linears: &[(usize, usize)]| -> f64 {
            linears.iter().map(|&(i, o)| 2.0 * (i * o) as f64).sum()
        };
        let attention: f64 = self
            .layer_attention
            .iter()
            .map(|reach| 2.0 * 2.0 * (self.attention_width * reach.visible_pairs(len)) as f64)
            .sum();
        let layers = self.layer_attention.len() as f64;
        len as f64 * layers * flops(&self.layer_linears) + attention + flops(&self.head_linears)
    }
}

impl NetworkConfig {
    pub fn shape(&self) -> NetworkShape {
        match self {
            NetworkConfig::Decoder(config) => decoder_shape(config),
            NetworkConfig::Encoder(EncoderConfig::Bert(config)) => {
                let (hidden, inner) = (config.hidden_size, config.intermediate_size);
                NetworkShape {
                    // query, key, value, attention output; intermediate and output dense.
                    layer_linears: vec![
                        (hidden, hidden),
                        (hidden, hidden),
                        (hidden, hidden),
                        (hidden, hidden),
                        (hidden, inner),
                        (inner, hidden),
                    ],
                    layer_attention: vec![AttentionReach::Bidirectional; config.num_hidden_layers],
                    attention_width: hidden,
                    head_linears: vec![(hidden, hidden), (hidden, 1)],
                    embedding_parameters: hidden
                        * (config.vocab_size
                            + config.max_position_embeddings
                            + config.type_vocab_size),
                }
            }
            NetworkConfig::Encoder(EncoderConfig::ModernBert(config)) => {
                let (hidden, inner) = (config.hidden_size, config.intermediate_size);
                NetworkShape {
                    // Wqkv, Wo; Wi (GeGLU's input and gate halves), the MLP's Wo.
                    layer_linears: vec![
                        (hidden, 3 * hidden),
                        (hidden, hidden),
                        (hidden, 2 * inner),
                        (inner, hidden),
                    ],
                    layer_attention: (0..config.num_hidden_layers)
                        .map(|layer| match config.attention_window(layer) {
                            Some(reach) => AttentionReach::Window(reach),
                            None => AttentionReach::Bidirectional,
                        })
                        .collect(),
                    attention_width: hidden,
                    head_linears: vec![(hidden, hidden), (hidden, 1)],
                    embedding_parameters: hidden * config.vocab_size,
                }
            }
        }
    }
}

fn decoder_shape(config: &ModelConfig) -> NetworkShape {
    let (hidden, inner) = (config.hidden_size, config.intermediate_size);
    let q = config.num_attention_heads * config.head_dim;
    let kv = config.num_key_value_heads * config.head_dim;
    NetworkShape {
        // q, k, v, o; gate, up, down.
        layer_linears: vec![
            (hidden, q),
            (hidden, kv),
            (hidden, kv),
            (q, hidden),
            (hidden, inner),
            (hidden, inner),
            (inner, hidden),
        ],
        layer_attention: vec![AttentionReach::Causal; config.num_hidden_layers],
        attention_width: q,
        // The scorer keeps the scoring token's head row beside the (maybe tied) table.
        head_linears: vec![(hidden, 1)],
        embedding_parameters: config.vocab_size * hidden,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn fixture(name: &str) -> (NetworkShape, usize) {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures")
            .join(name);
        let shape = NetworkConfig::from_file(&dir.join("config.json"))
            .unwrap()
            .shape();
        let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
        let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let matrix_elements = metadata
            .tensors()
            .values()
            .filter(|info| info.shape.len() == 2)
            .map(|info| info.shape.iter().product::<usize>())
            .sum();
        (shape, matrix_elements)
    }

    #[test]
    fn parameters_are_the_checkpoints_matrices() {
        for name in [
            "bert",
            "roberta",
            "xlm-roberta",
            "modernbert",
            "modernbert-cls",
        ] {
            let (shape, in_file) = fixture(name);
            assert_eq!(shape.parameters(), in_file, "{name}");
        }
        // A tied decoder: the table, and the head row the scorer copies out of it.
        let (shape, in_file) = fixture("tiny");
        assert_eq!(shape.parameters(), in_file + shape.layer_linears[0].0);
    }

    #[test]
    fn modernbert_alternates_global_and_windowed_layers() {
        // Global every second layer, a window of 8 tokens: 4 either side.
        let (shape, _) = fixture("modernbert");
        assert_eq!(
            shape.layer_attention,
            [
                AttentionReach::Bidirectional,
                AttentionReach::Window(4),
                AttentionReach::Bidirectional
            ]
        );
    }

    #[test]
    fn visible_pairs_count_what_each_reach_lets_through() {
        for len in 1..40 {
            let count = |sees: &dyn Fn(usize, usize) -> bool| {
                (0..len)
                    .flat_map(|i| (0..len).map(move |j| (i, j)))
                    .filter(|&(i, j)| sees(i, j))
                    .count()
            };
            assert_eq!(
                AttentionReach::Causal.visible_pairs(len),
                count(&|i, j| j <= i)
            );
            assert_eq!(AttentionReach::Bidirectional.visible_pairs(len), len * len);
            for reach in [0, 1, 4, 17, 64] {
                assert_eq!(
                    AttentionReach::Window(reach).visible_pairs(len),
                    count(&|i, j| i.abs_diff(j) <= reach),
                    "{len} tokens, reach {reach}"
                );
            }
        }
    }

    #[test]
    fn a_bert_layer_is_four_square_linears_and_the_mlp_and_full_attention() {
        // tests/fixtures/bert/config.json's sizes.
        let (hidden, inner, layers, len) = (32, 64, 2, 10);
        let (shape, _) = fixture("bert");
        let linear = 2 * len * layers * (4 * hidden * hidden + 2 * hidden * inner);
        let attention = layers * 2 * 2 * len * len * hidden;
        let head = 2 * (hidden * hidden + hidden);
        assert_eq!(shape.forward_flops(len), (linear + attention + head) as f64);
    }
}
