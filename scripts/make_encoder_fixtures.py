#!/usr/bin/env python3
"""Regenerate the encoder cross-encoder fixtures and their goldens.

    pip install torch transformers tokenizers sentence-transformers==6.2.0
    python3 scripts/make_encoder_fixtures.py

Writes tests/fixtures/<name>/ (random weights, tiny shapes, float32) and
tests/fixtures/encoder_goldens.json:

- bert/        BertForSequenceClassification, the Hub layout (config.json, model.safetensors,
               tokenizer.json): a WordPiece tokenizer with token types ([CLS] A [SEP] B:1 [SEP]:1),
               `model_max_length` 48 under 64 positions, `sbert_ce_default_activation_function`
               Identity in config.json (as ms-marco-MiniLM-L6-v2 has it).
- bert-st/     the same model as `CrossEncoder.save` writes it (modules.json,
               config_sentence_transformers.json with activation_fn Sigmoid).
- xlm-roberta/ XLMRobertaForSequenceClassification: a Unigram tokenizer with XLM-R's special
               tokens (<s> A </s></s> B </s>), positions offset past padding_idx 1, no
               `model_max_length` (ST's limit is then max_position_embeddings - 2... no: see
               `max_length` in the goldens), `sentence_transformers.activation_fn` in config.json.
- roberta/     RobertaForSequenceClassification: a byte-level BPE tokenizer (RobertaProcessing).
- modernbert/  ModernBertForSequenceClassification: byte-level BPE with [CLS] A [SEP] B [SEP],
               3 layers with global attention every 2 (layers 0 and 2) and a sliding window of
               `local_attention` 8 on layer 1, `classifier_pooling` mean.
- modernbert-cls/ the same weights (symlinked) with `classifier_pooling` cls.

Goldens, per fixture: `max_length` (ST's `max_seq_length`), and for each pair the `input_ids`
ST's `preprocess` builds, `raw` = `CrossEncoder.predict(..., activation_fn=Identity())` and
`transformers` = the logit of transformers' own class on those ids (float32, CPU, one pair per
batch, and `batched`: all pairs in one padded batch of `predict`).
"""

import json
import os
import shutil
from pathlib import Path

import torch
from sentence_transformers import CrossEncoder
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (AutoModelForSequenceClassification, BertConfig,
                          BertForSequenceClassification, ModernBertConfig,
                          ModernBertForSequenceClassification, PreTrainedTokenizerFast,
                          RobertaConfig, RobertaForSequenceClassification, XLMRobertaConfig,
                          XLMRobertaForSequenceClassification)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"

LONG_DOCUMENT = " ".join(
    f"Sentence {i} of a long document about the history of the treaty and its signatories."
    for i in range(40))
LONG_QUERY = " ".join(f"question word {i} about the treaty" for i in range(30))

PAIRS = [
    ("What is the capital of France?", "Paris is the capital and most populous city of France."),
    ("What is the capital of France?", "Berlin is the capital of Germany."),
    ("", "a document without a query"),
    ("query about nothing", ""),
    ("¿Dónde está la biblioteca?", "La biblioteca está en la calle Mayor, número 5."),
    ("北京的人口是多少？", "北京市常住人口约为2185万人。"),
    ("emoji 🎉 party", "Café and the café: 👍🏽 skin tones, naïve façade."),
    ("treaty history", LONG_DOCUMENT),
    (LONG_QUERY, LONG_DOCUMENT),
    ("a somewhat longer question about who signed the treaty and when", LONG_DOCUMENT),
]

CORPUS = [q for q, _ in PAIRS] + [d for _, d in PAIRS] + [
    "The quick brown fox jumps over the lazy dog.",
    "Rerankers score each retrieved document against the query.",
    "Le traité de Versailles fut signé en 1919.",
    "Die Hauptstadt von Deutschland ist Berlin.",
    "東京タワーの高さは333メートルです。",
] * 3


def seeded(seed):
    torch.manual_seed(seed)


def randomize(model, std=0.2):
    """Random weights large enough that every part of the network moves the logit."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name.lower() and name.endswith("weight"):
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
            else:
                p.copy_(std * torch.randn_like(p))


def wordpiece_tokenizer(corpus=CORPUS, vocab_size=400):
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.decoder = decoders.WordPiece()
    return tok


def unigram_tokenizer(corpus=CORPUS, vocab_size=300):
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok.train_from_iterator(corpus, trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=specials, unk_token="<unk>"))
    assert [tok.token_to_id(s) for s in specials[:4]] == [0, 1, 2, 3]
    # As bge-reranker-v2-m3's tokenizer.json has it.
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
        special_tokens=[("<s>", 0), ("</s>", 2)])
    tok.decoder = decoders.Metaspace()
    return tok


def byte_bpe_tokenizer(specials, post_processor):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = post_processor(tok)
    tok.decoder = decoders.ByteLevel()
    return tok


def save_tokenizer(tok, out, tokenizer_class, model_max_length, special, input_names):
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=model_max_length,
                                   model_input_names=input_names, **special)
    fast.save_pretrained(str(out))
    config_path = out / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["tokenizer_class"] = tokenizer_class
    if model_max_length is None:
        config.pop("model_max_length", None)
    config_path.write_text(json.dumps(config, indent=2) + "\n")


def fresh(out):
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)


def build_bert():
    out = FIXTURES / "bert"
    fresh(out)
    tok = wordpiece_tokenizer()
    save_tokenizer(tok, out, "PreTrainedTokenizerFast", 48,
                   dict(unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                        cls_token="[CLS]", mask_token="[MASK]"),
                   ["input_ids", "token_type_ids", "attention_mask"])
    seeded(31)
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                        type_vocab_size=2, num_labels=1, pad_token_id=0,
                        architectures=["BertForSequenceClassification"])
    model = BertForSequenceClassification(config)
    randomize(model)
    model.config.sbert_ce_default_activation_function = "torch.nn.modules.linear.Identity"
    model.save_pretrained(str(out))
    return out


def build_bert_st(bert):
    out = FIXTURES / "bert-st"
    shutil.rmtree(out, ignore_errors=True)
    model = CrossEncoder(str(bert), activation_fn=torch.nn.Sigmoid(), device="cpu")
    model.save(str(out))
    return out


def build_xlm_roberta():
    out = FIXTURES / "xlm-roberta"
    fresh(out)
    tok = unigram_tokenizer()
    save_tokenizer(tok, out, "PreTrainedTokenizerFast", 64,
                   dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", sep_token="</s>",
                        pad_token="<pad>", cls_token="<s>", mask_token="<mask>"),
                   ["input_ids", "attention_mask"])
    seeded(32)
    config = XLMRobertaConfig(vocab_size=tok.get_vocab_size(), hidden_size=48, num_hidden_layers=2,
                              num_attention_heads=4, intermediate_size=96,
                              max_position_embeddings=66, type_vocab_size=1, num_labels=1,
                              pad_token_id=1, bos_token_id=0, eos_token_id=2,
                              architectures=["XLMRobertaForSequenceClassification"])
    model = XLMRobertaForSequenceClassification(config)
    randomize(model)
    model.config.sentence_transformers = {"activation_fn": "torch.nn.modules.activation.Sigmoid"}
    model.save_pretrained(str(out))
    return out


def build_roberta():
    out = FIXTURES / "roberta"
    fresh(out)
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    tok = byte_bpe_tokenizer(specials, lambda t: processors.RobertaProcessing(
        ("</s>", 2), ("<s>", 0), trim_offsets=True, add_prefix_space=False))
    save_tokenizer(tok, out, "PreTrainedTokenizerFast", 40,
                   dict(bos_token="<s>", eos_token="</s>", unk_token="<unk>", sep_token="</s>",
                        pad_token="<pad>", cls_token="<s>", mask_token="<mask>"),
                   ["input_ids", "attention_mask"])
    seeded(33)
    config = RobertaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=64,
                           max_position_embeddings=42, type_vocab_size=1, num_labels=1,
                           pad_token_id=1, bos_token_id=0, eos_token_id=2,
                           architectures=["RobertaForSequenceClassification"])
    model = RobertaForSequenceClassification(config)
    randomize(model)
    model.save_pretrained(str(out))
    return out


def build_modernbert():
    out = FIXTURES / "modernbert"
    fresh(out)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

    def template(t):
        cls, sep = t.token_to_id("[CLS]"), t.token_to_id("[SEP]")
        return processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
            special_tokens=[("[CLS]", cls), ("[SEP]", sep)])

    tok = byte_bpe_tokenizer(specials, template)
    save_tokenizer(tok, out, "PreTrainedTokenizerFast", None,
                   dict(unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                        cls_token="[CLS]", mask_token="[MASK]"),
                   ["input_ids", "attention_mask"])
    seeded(34)
    config = ModernBertConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, num_hidden_layers=3,
                              num_attention_heads=4, intermediate_size=48,
                              max_position_embeddings=64, global_attn_every_n_layers=2,
                              local_attention=8, global_rope_theta=160000.0,
                              local_rope_theta=10000.0, classifier_pooling="mean",
                              pad_token_id=tok.token_to_id("[PAD]"),
                              cls_token_id=tok.token_to_id("[CLS]"),
                              sep_token_id=tok.token_to_id("[SEP]"), num_labels=1,
                              architectures=["ModernBertForSequenceClassification"])
    model = ModernBertForSequenceClassification(config)
    randomize(model)
    model.save_pretrained(str(out))
    cls_out = FIXTURES / "modernbert-cls"
    fresh(cls_out)
    for name in os.listdir(out):
        if name != "config.json":
            (cls_out / name).symlink_to(Path("..") / "modernbert" / name)
    config = json.loads((out / "config.json").read_text())
    config["classifier_pooling"] = "cls"
    (cls_out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def check_tokenizer_matches(path, model):
    """ST's tokenizer (transformers) must give what the raw tokenizers library gives: the
    server uses the latter."""
    raw = Tokenizer.from_file(str(path / "tokenizer.json"))
    for q, d in PAIRS[:7]:
        ids = model.preprocess([(q, d)])["input_ids"][0].tolist()
        if len(raw.encode(q, d).ids) > model.max_seq_length:
            continue
        assert ids == raw.encode(q, d).ids, (path, q, d, ids, raw.encode(q, d).ids)


def goldens_for(path):
    model = CrossEncoder(str(path), device="cpu")
    hf_model = AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    check_tokenizer_matches(path, model)
    identity = torch.nn.Identity()
    records = []
    for q, d in PAIRS:
        features = model.preprocess([(q, d)])
        ids = features["input_ids"][0].tolist()
        raw = float(model.predict([(q, d)], activation_fn=identity, batch_size=1)[0])
        kwargs = {k: v for k, v in features.items() if k in ("input_ids", "token_type_ids", "attention_mask")}
        with torch.no_grad():
            direct = float(hf_model(**kwargs).logits[0, 0])
        records.append({"query": q, "document": d, "input_ids": ids, "raw": raw,
                        "transformers": direct,
                        "token_type_ids": features.get("token_type_ids", torch.zeros(1, len(ids), dtype=torch.long))[0].tolist()})
    batched = model.predict(PAIRS, activation_fn=identity, batch_size=len(PAIRS)).tolist()
    predict = model.predict(PAIRS, batch_size=1).tolist()
    return {"max_length": model.max_seq_length, "activation": type(model.activation_fn).__name__,
            "pairs": records, "batched": batched, "predict": predict}


def main():
    bert = build_bert()
    build_bert_st(bert)
    build_xlm_roberta()
    build_roberta()
    build_modernbert()
    goldens = {name: goldens_for(FIXTURES / name)
               for name in ["bert", "bert-st", "xlm-roberta", "roberta", "modernbert", "modernbert-cls"]}
    (FIXTURES / "encoder_goldens.json").write_text(json.dumps(goldens, ensure_ascii=False) + "\n")
    for name, g in goldens.items():
        worst = max(abs(p["raw"] - p["transformers"]) for p in g["pairs"])
        lengths = [len(p["input_ids"]) for p in g["pairs"]]
        print(f"{name}: max_length {g['max_length']} activation {g['activation']} "
              f"ST vs transformers {worst:.2e} lengths {lengths} raw {[round(p['raw'], 3) for p in g['pairs']]}")


if __name__ == "__main__":
    main()
