#!/usr/bin/env python3
"""Random-weight Qwen3 checkpoints of the real shapes, for benchmarks (never committed).

    python3 bench/make_checkpoint.py qwen3-0.6b /tmp/zerank-0.6b
    python3 bench/make_checkpoint.py zerank-1-small /tmp/zerank-1-small

The tokenizer files are copied from tests/fixtures/tiny (the real Qwen3 tokenizer).
"""

import shutil
import sys
from pathlib import Path

import torch
from transformers import Qwen3Config, Qwen3ForCausalLM

SHAPES = {
    "qwen3-0.6b": dict(hidden_size=1024, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, intermediate_size=3072),
    "zerank-1-small": dict(hidden_size=2048, num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, intermediate_size=6144),
    "zerank-1": dict(hidden_size=2560, num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, intermediate_size=9728),
}

ROOT = Path(__file__).resolve().parent.parent


def main():
    shape, out = sys.argv[1], Path(sys.argv[2])
    config = Qwen3Config(vocab_size=151_936, head_dim=128, max_position_embeddings=40_960, rms_norm_eps=1e-6,
                         rope_theta=1_000_000.0, tie_word_embeddings=True, **SHAPES[shape])
    config.architectures = ["Qwen3ForCausalLM"]
    torch.manual_seed(0)
    with torch.device("meta"):
        model = Qwen3ForCausalLM(config)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name != "lm_head.weight":
                p.normal_(0.0, 0.02)
    # to_empty() untied the head: tie it again, so that the checkpoint holds embed_tokens only,
    # as zerank's do.
    model.lm_head.weight = model.model.embed_tokens.weight
    model.save_pretrained(str(out), max_shard_size="2GB")
    (out / "generation_config.json").unlink(missing_ok=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(ROOT / "tests" / "fixtures" / "tiny" / f, out / f)
    print(out)


if __name__ == "__main__":
    main()
