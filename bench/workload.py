"""The standard benchmark workload: one query and documents of ~200-460 tokens of real prose,
cut from Python standard-library docstrings (deterministic: same Python, same pairs).

    python3 bench/workload.py [--documents 100] [--query-words N] > pairs.jsonl

writes the pairs as JSON lines (`{"query", "document"}`), the input of `zerank-server score`
and of `cargo bench --bench engine`. `--query-words` replaces the short query by a long one
of N words (prose from the same source), for the query-prefix sharing figures."""

import argparse
import importlib
import json
import pydoc

MODULES = ["collections", "functools", "itertools", "json", "os", "pathlib", "re", "string", "textwrap",
           "typing", "argparse", "asyncio", "datetime", "decimal", "logging", "subprocess", "threading",
           "unittest", "urllib.parse", "email.message", "http.client", "csv", "sqlite3", "statistics"]
QUERY = "How do I parse command-line arguments and report errors to the user?"


def _docstrings():
    for name in MODULES:
        module = importlib.import_module(name)
        for attr in sorted(dir(module)):
            doc = pydoc.getdoc(getattr(module, attr, None)) or ""
            if len(doc.split()) >= 40:
                yield " ".join(doc.split())


def documents(count=100, min_words=150, max_words=330):
    """`count` passages of min_words..max_words words (~200-460 Qwen3 tokens)."""
    words, out, target = [], [], min_words
    for doc in _docstrings():
        words += doc.split()
        while len(words) >= target and len(out) < count:
            out.append(" ".join(words[:target]))
            words = words[target:]
            target = min_words + (len(out) * 37) % (max_words - min_words)
        if len(out) == count:
            return out
    raise RuntimeError(f"only {len(out)} passages")


def long_query(words):
    """A query of `words` words, taken from the end of the prose so it differs from every document."""
    text = " ".join(doc for doc in _docstrings()).split()
    return QUERY + " " + " ".join(text[-words:])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--documents", type=int, default=100)
    parser.add_argument("--query-words", type=int, default=0)
    parser.add_argument("--document-words", default="150,330", help="min,max words per document")
    args = parser.parse_args()
    query = long_query(args.query_words) if args.query_words else QUERY
    low, high = (int(n) for n in args.document_words.split(","))
    for document in documents(args.documents, low, high):
        print(json.dumps({"query": query, "document": document}))


if __name__ == "__main__":
    main()
