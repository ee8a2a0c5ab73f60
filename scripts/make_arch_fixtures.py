#!/usr/bin/env python3
"""Regenerate the fixtures of the architectures beside Qwen3: Qwen2 (mxbai-rerank-v2's) and
Gemma (bge-reranker-v2-gemma's), and their goldens.

    pip install torch transformers tokenizers sentence-transformers==6.2.0
    python3 scripts/make_arch_fixtures.py   # needs tests/fixtures/tiny (make_fixtures.py)

Writes (tests/fixtures/tiny is only read):

- tests/fixtures/qwen2/         random-weight Qwen2ForCausalLM (q/k/v biases, no q/k norm,
                                head_dim = hidden / heads, tied embeddings, bf16) with tiny's Qwen
                                tokenizer and chat template: the legacy layout.
- tests/fixtures/native-qwen2/  the same weights in Sentence Transformers 6.2's native layout,
                                mxbai-rerank-v2-like: LogitScore(true "1", false "0"), Sigmoid, a
                                score template after mxbai-rerank's prompt.
- tests/fixtures/gemma/         random-weight GemmaForCausalLM (gemma-2b's structure: one KV head,
                                GeGLU, (1 + w) norms, scaled tied embeddings, rope theta 1e4) with a
                                small byte-fallback BPE tokenizer carrying Gemma's special tokens.
- tests/fixtures/arch_goldens.json

Goldens:
- `legacy.qwen2`: the zerank recipe's yes logit (transformers Qwen2ForCausalLM, float32, CPU) for
  goldens.json's prompts (the same tokenizer, so the same ids).
- `native-qwen2`: as make_native_fixtures.py's native goldens (ST `predict`, plain and with a prompt).
- `mxbai-rerank-recipe`: mxbai-rerank-v2's own prompt (`MxbaiRerankV2.prepare_inputs`,
  mxbai_rerank/mxbai_rerank_v2.py: chat prefix, "query: {query}" after "instruction: {i}\n"
  when given, "\n", "document: {document}", "\n", task prompt, chat suffix, each tokenized
  alone) on the qwen2 weights; raw = logit("1") - logit("0"), as its `predict` returns.
- `bge-gemma`: FlagEmbedding's decoder-only reranker (`BaseLLMReranker.compute_score_single_gpu`,
  FlagEmbedding/inference/reranker/decoder_only/base.py, and AbsReranker.get_detailed_inputs):
  query "A: {query}" and passage "B: {passage}" tokenized alone without special tokens,
  `prepare_for_model([bos] + query, sep + passage, truncation="only_second")`, then sep and the
  prompt (its default question, or `prompt=`, which the server takes as the instruction), all
  tokenized alone; the score is the raw logit of "Yes" (its first token) at the last position.
  Built here with the same tokenizer calls (FlagEmbedding itself pulls in peft and friends), with
  `max_length` 8192 so that nothing is cut; run through transformers GemmaForCausalLM (float32).
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors, trainers
from transformers import (AutoTokenizer, GemmaConfig, GemmaForCausalLM, PreTrainedTokenizerFast,
                          Qwen2Config, Qwen2ForCausalLM)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import make_native_fixtures as native  # noqa: E402
from make_fixtures import randomize  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
TINY = FIXTURES / "tiny"
QWEN2 = FIXTURES / "qwen2"
GEMMA = FIXTURES / "gemma"

# FlagEmbedding's defaults (BaseLLMReranker and DatasetForReranker).
BGE_QUERY_PREFIX, BGE_PASSAGE_PREFIX, BGE_SEP = "A: ", "B: ", "\n"
BGE_PROMPT = ("Given a query A and a passage B, determine whether the passage contains an answer to "
              "the query by providing a prediction of either 'Yes' or 'No'.")
# Over every fixture prompt (the longest is ~8,200 tokens with byte fallback), so that neither
# side cuts; the Gemma fixture's max_position_embeddings is the same.
BGE_MAX_LENGTH = 16_384

# mxbai-rerank-v2's prompt (mxbai_rerank/mxbai_rerank_v2.py: its chat prefix, "instruction: ",
# "query: ", "document: ", its task prompt and chat suffix), written as an ST score template.
MXBAI_TASK = ("You are a search relevance expert who evaluates how well documents match search queries. "
              "For each query-document pair, carefully analyze the semantic relationship between them, "
              "then provide your binary relevance judgment (0 for not relevant, 1 for relevant).\nRelevance:")
TEMPLATE_MXBAI = """\
{%- set system = messages | selectattr("role", "eq", "system") | map(attribute="content") | first -%}
{%- set query = messages | selectattr("role", "eq", "query") | map(attribute="content") | first -%}
{%- set document = messages | selectattr("role", "eq", "document") | map(attribute="content") | first -%}
<|im_start|>system
You are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>
<|im_start|>user
{% if system is defined %}instruction: {{ system }}
{% endif %}query: {{ query }}
document: {{ document }}
""" + MXBAI_TASK + """<|im_end|>
<|im_start|>assistant

"""

# Line breaks at the edges of a query and a passage: where FlagEmbedding's tokenizing each part
# alone differs from tokenizing the joined prompt ("\n" + "\n" is not "\n\n").
LINE_BREAK_PAIR = ("a question ending with a line break\n", "\n\na passage after two blank lines")

MXBAI_PREFIX = "<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
MXBAI_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"
MXBAI_MAX_LENGTH = 8192

GEMMA_SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "<start_of_turn>", "<end_of_turn>"]


def build_qwen2():
    shutil.rmtree(QWEN2, ignore_errors=True)
    config = Qwen2Config(
        vocab_size=151_936, hidden_size=8, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=16, max_position_embeddings=32_768,
        rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0},
        tie_word_embeddings=True, use_sliding_window=False, hidden_act="silu",
        bos_token_id=151_643, eos_token_id=151_645,
    )
    config.architectures = ["Qwen2ForCausalLM"]
    torch.manual_seed(3)
    model = Qwen2ForCausalLM(config)
    randomize(model, 3)
    with torch.no_grad():
        # At hidden size 8 the "1" - "0" margin comes out near 10; a quarter keeps the logits
        # O(1), as at the other fixtures' sizes.
        model.model.norm.weight.mul_(0.25)
    model.to(torch.bfloat16).save_pretrained(str(QWEN2))
    (QWEN2 / "generation_config.json").unlink(missing_ok=True)
    for f in ("tokenizer.json", "tokenizer_config.json"):
        (QWEN2 / f).symlink_to(os.path.relpath(TINY / f, QWEN2))


def corpus():
    texts = [q + " " + d for q, d in native.pairs()[:17]]  # not the long ones
    texts += [BGE_PROMPT, "Yes", "No", "Yes, it does.", "No, it does not.", "A: B: Yes"] * 20
    texts += native.LONG_SENTENCES * 3
    texts += ["one line\n\nanother line\n\n"] * 20  # so that "\n\n" is one token
    return texts


def build_gemma_tokenizer(out: Path):
    """A Gemma-style tokenizer: spaces as "▁", no pre-tokenizer, BPE with byte fallback, Gemma's
    special tokens first (pad 0, eos 1, bos 2, unk 3), then the 256 byte tokens, then merges
    learnt from the fixture texts."""
    trainer_tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    trainer_tok.normalizer = normalizers.Replace(" ", "▁")
    trainer = trainers.BpeTrainer(vocab_size=1200, special_tokens=[], show_progress=False,
                                  limit_alphabet=200)
    trainer_tok.train_from_iterator(corpus(), trainer=trainer)
    learnt = json.loads(trainer_tok.to_str())["model"]
    vocab = {t: i for i, t in enumerate(GEMMA_SPECIALS)}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for token, _ in sorted(learnt["vocab"].items(), key=lambda kv: kv[1]):
        vocab.setdefault(token, len(vocab))
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in learnt["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", byte_fallback=True,
                               fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in GEMMA_SPECIALS])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                       special_tokens=[("<bos>", 2)])
    out.mkdir(parents=True, exist_ok=True)
    tok.save(str(out / "tokenizer.json"), pretty=False)
    config = {
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<bos>", "eos_token": "<eos>",
        "pad_token": "<pad>", "unk_token": "<unk>", "model_max_length": 1_000_000_000_000_000_019_884_624_838_656,
        "clean_up_tokenization_spaces": False, "tokenizer_class": "PreTrainedTokenizerFast",
        "padding_side": "left",
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    hf = AutoTokenizer.from_pretrained(str(out))
    assert isinstance(hf, PreTrainedTokenizerFast)
    assert hf("Yes", add_special_tokens=False)["input_ids"] == [vocab["Yes"]], hf.tokenize("Yes")
    assert hf.bos_token_id == 2 and hf.pad_token_id == 0
    emoji = hf("🙂", add_special_tokens=False)["input_ids"]
    assert emoji == [vocab[f"<0x{b:02X}>"] for b in "🙂".encode()], emoji  # byte fallback
    return hf, len(vocab)


def build_gemma():
    shutil.rmtree(GEMMA, ignore_errors=True)
    hf, vocab_size = build_gemma_tokenizer(GEMMA)
    config = GemmaConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, intermediate_size=64, max_position_embeddings=BGE_MAX_LENGTH,
        rms_norm_eps=1e-6, rope_parameters={"rope_type": "default", "rope_theta": 10_000.0},
        hidden_act="gelu_pytorch_tanh", tie_word_embeddings=True,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    config.architectures = ["GemmaForCausalLM"]
    torch.manual_seed(4)
    model = GemmaForCausalLM(config)
    randomize(model, 4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.sub_(1.0)  # Gemma scales by (1 + w): w near 0
            if "embed_tokens" in name:
                p.div_(math.sqrt(config.hidden_size))  # the model scales them back up
    model.to(torch.bfloat16).save_pretrained(str(GEMMA))
    (GEMMA / "generation_config.json").unlink(missing_ok=True)
    return hf


def bge_ids(tok, query, passage, prompt, split_special):
    """FlagEmbedding's inputs for one pair; `split_special`: user text as plain text."""
    def encode(text, **kwargs):
        return tok(text, return_tensors=None, add_special_tokens=False,
                   split_special_tokens=split_special, **kwargs)["input_ids"]
    prompt_inputs = tok(prompt, return_tensors=None, add_special_tokens=False)["input_ids"]
    sep_inputs = tok(BGE_SEP, return_tensors=None, add_special_tokens=False)["input_ids"]
    query_inputs = encode(BGE_QUERY_PREFIX + query, max_length=BGE_MAX_LENGTH * 3 // 4, truncation=True)
    passage_inputs = encode(BGE_PASSAGE_PREFIX + passage, max_length=BGE_MAX_LENGTH, truncation=True)
    encode_max_length = BGE_MAX_LENGTH + len(sep_inputs) + len(prompt_inputs)
    assert tok.bos_token_id is not None and tok.bos_token_id != tok.pad_token_id
    first, second = [tok.bos_token_id] + query_inputs, sep_inputs + passage_inputs
    # prepare_for_model(first, second, truncation="only_second", max_length=encode_max_length,
    # add_special_tokens=False): transformers 5's fast tokenizers no longer have it; without
    # special tokens it is the two lists joined, the second cut from its end to fit.
    second = second[:max(0, encode_max_length - len(first))]
    return first + second + sep_inputs + prompt_inputs


def gemma_goldens(tok, pair_list, records):
    lm = GemmaForCausalLM.from_pretrained(str(GEMMA), dtype=torch.float32).eval()
    yes = tok("Yes", add_special_tokens=False)["input_ids"][0]
    entry = {"true_token_id": yes, "false_token_id": None, "max_length": BGE_MAX_LENGTH}
    for variant, prompt in (("plain", BGE_PROMPT), ("instructed", native.INSTRUCTION)):
        ids_out, raw_out, score_out = [], [], []
        for i, (q, d) in enumerate(pair_list):
            ids = bge_ids(tok, q, d, prompt, split_special=True)
            if (q, d) == LINE_BREAK_PAIR:
                joined = [tok.bos_token_id] + tok(f"A: {q}\nB: {d}\n{prompt}", add_special_tokens=False)["input_ids"]
                assert joined != ids, "the parts tokenized alone should differ from the joined prompt"
            differ = ids != bge_ids(tok, q, d, prompt, split_special=False)
            records[i]["reference_ids_differ"] |= differ
            raw = float(native.direct_logits(lm, ids)[yes])
            ids_out.append(ids)
            raw_out.append(raw)
            score_out.append(1 / (1 + math.exp(-raw)))  # FlagEmbedding's normalize=True
        entry[variant] = {"input_ids": ids_out, "raw": raw_out, "score": score_out}
    return entry


def mxbai_ids(tok, query, document, instruction, split_special):
    """mxbai-rerank-v2's `prepare_inputs` for one pair (mxbai_rerank/mxbai_rerank_v2.py);
    `split_special`: user text as plain text."""
    def get_input_ids(x):
        return tok(x, return_tensors=None, add_special_tokens=False)["input_ids"]
    task, sep = get_input_ids(MXBAI_TASK), get_input_ids("\n")
    prefix, suffix = get_input_ids(MXBAI_PREFIX), get_input_ids(MXBAI_SUFFIX)
    predefined = len(prefix) + len(task) + len(suffix) + len(sep)
    query_prompt = f"query: {query}"
    if instruction:
        query_prompt = "".join([f"instruction: {instruction}", "\n", query_prompt])
    query_inputs = tok(query_prompt, return_tensors=None, add_special_tokens=False,
                       max_length=MXBAI_MAX_LENGTH * 3 // 4, truncation=True,
                       split_special_tokens=split_special)["input_ids"]
    model_max_length = json.loads((QWEN2 / "config.json").read_text())["max_position_embeddings"]
    doc_maxlen = min(model_max_length - len(query_inputs) - predefined, MXBAI_MAX_LENGTH)
    document_inputs = tok(f"document: {document}", return_tensors=None, add_special_tokens=False,
                          max_length=doc_maxlen, truncation=True,
                          split_special_tokens=split_special)["input_ids"]
    # prepare_for_model(query, sep + document, truncation="only_second", max_length=MXBAI_MAX_LENGTH)
    second = (sep + document_inputs)[:max(0, MXBAI_MAX_LENGTH - len(query_inputs))]
    return prefix + query_inputs + second + sep + task + suffix


def mxbai_goldens(pair_list, records):
    tok = AutoTokenizer.from_pretrained(str(QWEN2))
    lm = Qwen2ForCausalLM.from_pretrained(str(QWEN2), dtype=torch.float32).eval()
    yes, no = (tok("1", add_special_tokens=False)["input_ids"][0],
               tok("0", add_special_tokens=False)["input_ids"][0])
    entry = {"true_token_id": yes, "false_token_id": no, "max_length": MXBAI_MAX_LENGTH}
    for variant, instruction in (("plain", None), ("instructed", native.INSTRUCTION)):
        ids_out, raw_out, score_out = [], [], []
        for i, (q, d) in enumerate(pair_list):
            ids = mxbai_ids(tok, q, d, instruction, split_special=True)
            records[i]["reference_ids_differ"] |= ids != mxbai_ids(tok, q, d, instruction, False)
            logits = native.direct_logits(lm, ids)
            raw = float(logits[yes] - logits[no])  # MxbaiRerankV2.predict without normalize
            ids_out.append(ids)
            raw_out.append(raw)
            score_out.append(1 / (1 + math.exp(-raw)))
        entry[variant] = {"input_ids": ids_out, "raw": raw_out, "score": score_out}
    return entry


def qwen2_legacy_goldens():
    goldens = json.loads((FIXTURES / "goldens.json").read_text())
    lm = Qwen2ForCausalLM.from_pretrained(str(QWEN2), dtype=torch.float32).eval()
    yes = goldens["yes_token_id"]
    yes_logits = [float(native.direct_logits(lm, p["input_ids"])[yes]) for p in goldens["pairs"]]
    return {"yes_logit": yes_logits, "score": [1 / (1 + math.exp(-x / 5)) for x in yes_logits]}


def main():
    assert (TINY / "model.safetensors").is_file(), "run scripts/make_fixtures.py first"
    build_qwen2()
    gemma_tok = build_gemma()
    native.EXPECTED_IDS.update({"1": 16, "0": 15})
    spec = dict(template=TEMPLATE_MXBAI, tokenizer_overrides={}, true_token="1", false_token="0",
                activation=torch.nn.Sigmoid(), prompts={}, default_prompt_name=None)
    native.build_native("native-qwen2", spec, base=QWEN2)

    pair_list = native.pairs() + [LINE_BREAK_PAIR]
    records = [{"query": q, "document": d, "reference_ids_differ": False} for q, d in pair_list]
    qwen2_lm = Qwen2ForCausalLM.from_pretrained(str(QWEN2), dtype=torch.float32).eval()
    models = {
        "native-qwen2": native.native_goldens("native-qwen2", spec, pair_list, qwen2_lm, records),
        "bge-gemma": gemma_goldens(gemma_tok, pair_list, records),
        "mxbai-rerank-recipe": mxbai_goldens(pair_list, records),
    }
    for r in records:
        r.pop("_truncated", None)
    goldens = {"instruction": native.INSTRUCTION, "pairs": records, "models": models,
               "legacy": {"qwen2": qwen2_legacy_goldens()}}
    (FIXTURES / "arch_goldens.json").write_text(json.dumps(goldens, ensure_ascii=False) + "\n")
    for name, m in models.items():
        print(name, "raw range", min(m["plain"]["raw"]), max(m["plain"]["raw"]), file=sys.stderr)
    print(subprocess.run(["du", "-shL", str(QWEN2), str(GEMMA), str(FIXTURES / "native-qwen2")],
                         capture_output=True, text=True).stdout, file=sys.stderr)


if __name__ == "__main__":
    main()
