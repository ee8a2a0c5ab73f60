#!/usr/bin/env python3
"""Random-weight checkpoints of the real shapes, for benchmarks (never committed).

    python3 bench/make_checkpoint.py qwen3-0.6b /tmp/zerank-0.6b
    python3 bench/make_checkpoint.py zerank-1-small /tmp/zerank-1-small
    python3 bench/make_checkpoint.py mxbai-rerank-base-v2 /tmp/mxbai-base   # Qwen2
    python3 bench/make_checkpoint.py bge-reranker-v2-gemma /tmp/bge-gemma   # Gemma (gemma-2b)

The tokenizer files are copied from tests/fixtures/tiny (the real Qwen3 tokenizer; Qwen2's is
the same), or for Gemma from tests/fixtures/gemma (a small byte-fallback tokenizer with Gemma's
special tokens: its ids fall inside the 256k vocabulary, its token counts are not Gemma's).
"""

import shutil
import sys
from pathlib import Path

import torch
from transformers import (GemmaConfig, GemmaForCausalLM, Qwen2Config, Qwen2ForCausalLM, Qwen3Config,
                          Qwen3ForCausalLM)

QWEN3 = dict(vocab_size=151_936, head_dim=128, max_position_embeddings=40_960, rms_norm_eps=1e-6,
             rope_theta=1_000_000.0, tie_word_embeddings=True)
SHAPES = {
    "qwen3-0.6b": (Qwen3Config, Qwen3ForCausalLM, "tiny", dict(
        QWEN3, hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
        intermediate_size=3072)),
    "zerank-1-small": (Qwen3Config, Qwen3ForCausalLM, "tiny", dict(
        QWEN3, hidden_size=2048, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8,
        intermediate_size=6144)),
    "zerank-1": (Qwen3Config, Qwen3ForCausalLM, "tiny", dict(
        QWEN3, hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8,
        intermediate_size=9728)),
    # Qwen2.5-0.5B.
    "mxbai-rerank-base-v2": (Qwen2Config, Qwen2ForCausalLM, "tiny", dict(
        vocab_size=151_936, hidden_size=896, num_hidden_layers=24, num_attention_heads=14,
        num_key_value_heads=2, intermediate_size=4864, max_position_embeddings=32_768,
        rms_norm_eps=1e-6, rope_theta=1_000_000.0, tie_word_embeddings=True)),
    # gemma-2b.
    "bge-reranker-v2-gemma": (GemmaConfig, GemmaForCausalLM, "gemma", dict(
        vocab_size=256_000, hidden_size=2048, num_hidden_layers=18, num_attention_heads=8,
        num_key_value_heads=1, head_dim=256, intermediate_size=16_384, max_position_embeddings=8192,
        rms_norm_eps=1e-6, rope_theta=10_000.0, hidden_act="gelu_pytorch_tanh", tie_word_embeddings=True,
        pad_token_id=0, eos_token_id=1, bos_token_id=2)),
}

ROOT = Path(__file__).resolve().parent.parent


def main():
    shape, out = sys.argv[1], Path(sys.argv[2])
    config_class, model_class, tokenizer, fields = SHAPES[shape]
    config = config_class(**fields)
    config.architectures = [model_class.__name__]
    torch.manual_seed(0)
    with torch.device("meta"):
        model = model_class(config)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    gemma = config_class is GemmaConfig
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(0.0 if gemma else 1.0)  # Gemma scales by (1 + w)
            elif name != "lm_head.weight":
                p.normal_(0.0, 0.02)
    # to_empty() untied the head: tie it again, so that the checkpoint holds embed_tokens only,
    # as the real ones do.
    model.lm_head.weight = model.model.embed_tokens.weight
    model.save_pretrained(str(out), max_shard_size="2GB")
    (out / "generation_config.json").unlink(missing_ok=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ROOT / "tests" / "fixtures" / tokenizer / f, out / f)
    print(out)


if __name__ == "__main__":
    main()
