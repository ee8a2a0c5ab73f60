#!/usr/bin/env python3
"""Encoder cross-encoders: the service against Sentence Transformers' `CrossEncoder.predict`
(PyTorch f32, batch 32) and ONNX Runtime (an export optimised by `onnxruntime.transformers`'
optimizer, batch 32 padded to the batch's longest), on random-weight checkpoints of real shapes,
one query and N documents of ~1,000 characters, alternated in one run on the same machine.

    cargo build --release
    python3 bench/encoders.py --shape minilm-l6 --server target/release/zerank-server
    python3 bench/encoders.py --shape bge-m3 --server target/release/zerank-server --rounds 1

Shapes: `minilm-l6` (BERT, 6 layers x 384, cross-encoder/ms-marco-MiniLM-L6-v2's) and `bge-m3`
(XLM-RoBERTa large, 24 x 1024, BAAI/bge-reranker-v2-m3's). Weights are random (the classes'
own initialisation); the tokenizer is built as the test fixtures' (scripts/make_encoder_fixtures.py:
WordPiece, or Unigram with XLM-R's special tokens), trained on the workload's prose with a
vocabulary of 8,000, so that a pair is about as many tokens as with the real ones (the count is
printed). Each engine runs the workload once untimed, then the rounds alternate. Prints one
JSON line per engine and round (pairs/s, tokens), then the largest |raw - predict's raw| of
each engine.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch
from sentence_transformers import CrossEncoder
from transformers import (BertConfig, BertForSequenceClassification, XLMRobertaConfig,
                          XLMRobertaForSequenceClassification)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT / "scripts"))
import make_encoder_fixtures as fixtures  # noqa: E402
import workload  # noqa: E402

SHAPES = {
    "minilm-l6": ("bert", lambda: BertForSequenceClassification(BertConfig(
        vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
        intermediate_size=1536, max_position_embeddings=512, num_labels=1,
        architectures=["BertForSequenceClassification"])), 12, 384),
    "bge-m3": ("xlm-roberta", lambda: XLMRobertaForSequenceClassification(XLMRobertaConfig(
        vocab_size=250002, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
        intermediate_size=4096, max_position_embeddings=8194, type_vocab_size=1, pad_token_id=1,
        num_labels=1, architectures=["XLMRobertaForSequenceClassification"])), 16, 1024),
}


def make_checkpoint(shape, out):
    kind, build, _, _ = SHAPES[shape]
    torch.manual_seed(0)
    build().eval().save_pretrained(str(out))
    corpus = list(workload._docstrings())
    if kind == "bert":
        fixtures.save_tokenizer(fixtures.wordpiece_tokenizer(corpus, 8000), out, "PreTrainedTokenizerFast", 512,
                                dict(unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                                     cls_token="[CLS]", mask_token="[MASK]"),
                                ["input_ids", "token_type_ids", "attention_mask"])
    else:
        fixtures.save_tokenizer(fixtures.unigram_tokenizer(corpus, 8000), out, "PreTrainedTokenizerFast", 512,
                                dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", sep_token="</s>",
                                     pad_token="<pad>", cls_token="<s>", mask_token="<mask>"),
                                ["input_ids", "attention_mask"])


def pairs_of(count, chars):
    docs = [d[:chars] for d in workload.documents(count=count)]
    return [(workload.QUERY, d) for d in docs]


def time_predict(model, pairs):
    started = time.perf_counter()
    raw = model.predict(pairs, batch_size=32, activation_fn=torch.nn.Identity())
    return time.perf_counter() - started, np.asarray(raw)


def export_onnx(model, shape, out):
    """The torch export, then `onnxruntime.transformers`' optimizer (fused attention, GELU,
    layer norms) for the model's heads and hidden size."""
    from onnxruntime.transformers import optimizer
    _, _, heads, hidden = SHAPES[shape]
    hf = model.model
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if shape == "minilm-l6" else [])
    sample = model.tokenizer([("a query", "a document")], return_tensors="pt")
    args = tuple(sample[n] for n in names)
    raw_path = out / "model.onnx"
    torch.onnx.export(hf, args, str(raw_path), input_names=names, output_names=["logits"],
                      dynamic_axes={n: {0: "batch", 1: "sequence"} for n in names} | {"logits": {0: "batch"}},
                      opset_version=17, dynamo=False)
    optimized = optimizer.optimize_model(str(raw_path), model_type="bert", num_heads=heads,
                                         hidden_size=hidden)
    optimized_path = out / "model.opt.onnx"
    # Past protobuf's 2 GB (XLM-R large in f32), the weights go to a file beside the graph.
    too_large = hf.num_parameters() * 4 > 1.8e9
    optimized.save_model_to_file(str(optimized_path), use_external_data_format=too_large)
    return optimized_path, names


def time_onnx(session, tokenizer, names, pairs):
    started = time.perf_counter()
    raw = []
    for start in range(0, len(pairs), 32):
        batch = tokenizer(pairs[start:start + 32], padding=True, truncation=True, return_tensors="np")
        feeds = {n: batch[n].astype(np.int64) for n in names}
        raw.extend(session.run(["logits"], feeds)[0][:, 0].tolist())
    return time.perf_counter() - started, np.asarray(raw)


def start_server(binary, checkpoint, port, dtype):
    process = subprocess.Popen([binary, "--model", str(checkpoint), "--device", "cpu", "--dtype", dtype,
                                "--host", "127.0.0.1", "--port", str(port), "--score-cache-bytes", "0"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health") as reply:
                if reply.status == 200:
                    return process
        except OSError:
            time.sleep(0.5)
    process.kill()
    raise SystemExit("the server did not become healthy")


def time_server(port, pairs):
    body = json.dumps({"query": pairs[0][0], "texts": [d for _, d in pairs], "raw_scores": True}).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/rerank", data=body,
                                     headers={"content-type": "application/json"})
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=3600) as reply:
        results = json.loads(reply.read())
    seconds = time.perf_counter() - started
    raw = np.zeros(len(pairs))
    for result in results:
        raw[result["index"]] = result["score"]
    return seconds, raw


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shape", choices=SHAPES, default="minilm-l6")
    parser.add_argument("--server", required=True, help="the zerank-server binary (a release build)")
    parser.add_argument("--documents", type=int, default=50)
    parser.add_argument("--chars", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--port", type=int, default=18400)
    parser.add_argument("--dtype", default="f32",
                        help="the service's dtype (bf16 takes MKL or oneDNN from LD_LIBRARY_PATH; /info's matmul says what ran)")
    args = parser.parse_args()
    import onnxruntime

    work = Path(tempfile.mkdtemp(prefix=f"zerank-{args.shape}-"))
    checkpoint = work / "checkpoint"
    make_checkpoint(args.shape, checkpoint)
    pairs = pairs_of(args.documents, args.chars)
    model = CrossEncoder(str(checkpoint), device="cpu")
    tokens = int(sum(model.tokenizer(pairs, truncation=True, padding=False, return_length=True)["length"]))
    onnx_path, names = export_onnx(model, args.shape, work)
    session = onnxruntime.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    server = start_server(args.server, checkpoint, args.port, args.dtype)
    with urllib.request.urlopen(f"http://127.0.0.1:{args.port}/info") as reply:
        served = json.loads(reply.read())["model"]
    print(json.dumps({"service_dtype": served.get("dtype"), "service_matmul": served.get("matmul")}), flush=True)
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    common = {"shape": args.shape, "pairs": len(pairs), "tokens": tokens, "cpu": cpu, "threads": torch.get_num_threads()}
    scores = {}
    try:
        engines = [("zerank-server", lambda: time_server(args.port, pairs)),
                   ("st-predict", lambda: time_predict(model, pairs)),
                   ("onnxruntime", lambda: time_onnx(session, model.tokenizer, names, pairs))]
        # One untimed run of the whole workload each: first touches of memory, allocator
        # growth and lazy initialisation stay out of every engine's rounds.
        for _, run in engines:
            run()
        for round_ in range(args.rounds):
            for engine, run in engines:
                seconds, raw = run()
                scores[engine] = raw
                print(json.dumps(common | {"engine": engine, "round": round_, "seconds": round(seconds, 3),
                                           "pairs_per_sec": round(len(pairs) / seconds, 2),
                                           "tokens_per_sec": round(tokens / seconds, 1)}), flush=True)
    finally:
        server.kill()
        server.wait()
    for engine in ["zerank-server", "onnxruntime"]:
        print(json.dumps({"shape": args.shape, "engine": engine,
                          "max_abs_raw_diff_vs_predict": float(np.abs(scores[engine] - scores["st-predict"]).max())}))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
