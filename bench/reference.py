#!/usr/bin/env python3
"""The reference: HF transformers float32 with the zerank recipe, timed on the benchmark pairs.

    python3 bench/reference.py CHECKPOINT --pairs pairs.jsonl [--batch-sizes 1,4,10] [--predict] [--scores out.txt]

Prints one JSON line per batch size: pairs, tokens (prompt tokens, template included),
seconds, tokens/s. `--predict` also times zerank's own predict batching (~15,000 characters
per batch, as modeling_zeranker.py forms them)."""

import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer



def prompts(tokenizer, pairs):
    return [tokenizer.apply_chat_template(
        [{"role": "system", "content": q[:2000].strip()}, {"role": "user", "content": d[:10000].strip()}],
        tokenize=False, add_generation_prompt=True) for q, d in pairs]


def score(model, tokenizer, yes_id, texts):
    batch = tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        logits = model(**batch, use_cache=False).logits
    last = batch["attention_mask"].sum(dim=1) - 1
    raw = logits[torch.arange(len(texts)), last, yes_id] / 5.0  # the score is sigmoid(raw)
    return raw.tolist(), int(batch["attention_mask"].sum())


def run(model, tokenizer, yes_id, texts, batches, raw_scores):
    started, tokens = time.perf_counter(), 0
    for batch in batches:
        raw, n = score(model, tokenizer, yes_id, [texts[i] for i in batch])
        for i, r in zip(batch, raw):
            raw_scores[i] = r
        tokens += n
    seconds = time.perf_counter() - started
    return {"pairs": len(texts), "tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("--pairs", required=True, help="JSON lines of {query, document} (bench/workload.py)")
    parser.add_argument("--scores", help="write the raw scores (yes_logit / 5) of the batch-1 run here")
    parser.add_argument("--batch-sizes", default="1,4,10")
    parser.add_argument("--predict", action="store_true")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="as a user of the reference would load it (bfloat16: PyTorch's bf16 Linear, oneDNN with AMX where the CPU has it)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.checkpoint)
    tokenizer.padding_side = "right"
    model = AutoModelForCausalLM.from_pretrained(args.checkpoint, dtype=getattr(torch, args.dtype)).eval()
    yes_id = tokenizer.convert_tokens_to_ids("Yes")
    with open(args.pairs) as f:
        pairs = [(p["query"], p["document"]) for p in map(json.loads, f) if p]
    texts = prompts(tokenizer, pairs)
    score(model, tokenizer, yes_id, texts[:1])  # warm-up
    for size in [int(s) for s in args.batch_sizes.split(",")]:
        batches = [list(range(i, min(i + size, len(texts)))) for i in range(0, len(texts), size)]
        raw_scores = [None] * len(texts)
        print(json.dumps({"runner": "reference", "dtype": args.dtype, "batch_size": size, **run(model, tokenizer, yes_id, texts, batches, raw_scores)}), flush=True)
        if size == 1 and args.scores:
            with open(args.scores, "w") as f:
                f.writelines(f"{r}\n" for r in raw_scores)
    if args.predict:
        batches, current, chars = [], [], 0
        for i, t in enumerate(texts):
            if current and chars + len(t) > 15_000:
                batches.append(current)
                current, chars = [], 0
            current.append(i)
            chars += len(t)
        batches.append(current)
        print(json.dumps({"runner": "reference-predict", "dtype": args.dtype, "batches": len(batches), **run(model, tokenizer, yes_id, texts, batches, [None] * len(texts))}), flush=True)


if __name__ == "__main__":
    main()
