#!/usr/bin/env python3
"""zerank-server against llama.cpp's `llama-server --rerank` on one random-weight Qwen3
checkpoint, the same pairs, the same machine: tokens/s of each, alternated, and each score's
difference from llama.cpp's f32 without flash attention, its clean f32 (as a logit: llama.cpp returns P(yes) = sigmoid(margin) of
Qwen3-Reranker's prompt, the service's `qwen3-reranker` recipe the margin itself).

    python3 bench/make_checkpoint.py qwen3-0.6b /tmp/qwen3-reranker-0.6b
    cargo build --release --bin zerank-server
    python3 bench/llama_cpp.py --checkpoint /tmp/qwen3-reranker-0.6b [--work /tmp/llama-cpp]

Steps, each skipped when its output exists under --work:
1. llama.cpp's source: the PyPI sdist of llama-cpp-python (its vendor/llama.cpp), fetched with
   pip; built with cmake (on PATH, or `pip install cmake`), Release, GGML_NATIVE, no curl or
   OpenSSL, targets llama-server and llama-bench, under `nice`. `--no-amx` builds it without
   AMX under --work/build-noamx (where ggml's AMX q8_0 kernels die with SIGILL).
2. GGUFs (f32, bf16, q8_0) by its convert_hf_to_gguf.py, which makes a rank-pooling reranker
   of a Qwen3 checkpoint whose directory name contains `qwen3-reranker` (a link to
   --checkpoint of that name). This python needs torch, transformers and sentencepiece; gguf
   comes from the vendored gguf-py.
3. For each round: one request of all pairs to each server (llama-server per GGUF, then
   zerank-server per --service-dtypes), after a warm-up request. One JSON line per timing.

MKL for the service's bf16 GEMM: set MKL_LIB to the lib directory of PyPI's `mkl`.
"""

import argparse
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SDIST = "llama-cpp-python==0.3.36"


def run(command, **kwargs):
    print("+", " ".join(str(c) for c in command), file=sys.stderr)
    subprocess.run(command, check=True, **kwargs)


def build(work: Path, jobs: int, amx: bool) -> Path:
    build_dir = work / ("build" if amx else "build-noamx")
    binaries = build_dir / "bin"
    if (binaries / "llama-server").exists():
        return binaries
    sdist_dir = work / "sdist"
    if not sdist_dir.exists():
        run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python",
             SDIST, "-d", sdist_dir])
    archive = next(sdist_dir.glob("llama_cpp_python-*.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(work, filter="data")
    source = next(work.glob("llama_cpp_python-*/vendor/llama.cpp"))
    (work / "llama.cpp").unlink(missing_ok=True)
    (work / "llama.cpp").symlink_to(source.resolve())
    cmake = shutil.which("cmake") or str(Path(sys.executable).parent / "cmake")
    configure = [cmake, "-S", source, "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release", "-DGGML_NATIVE=ON",
                 "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF"]
    if not amx:
        # The native build without AMX (GCC keeps an explicit -mno-* over what -march=native
        # implies): ggml's AMX int8 kernels, which its q8_0 matmuls use, die with SIGILL on
        # a KVM guest (tileloadd on a thread whose tiles were never configured).
        no_amx = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
        configure += [f"-DCMAKE_C_FLAGS={no_amx}", f"-DCMAKE_CXX_FLAGS={no_amx}"]
    run(["nice", *configure])
    run(["nice", cmake, "--build", build_dir, "-j", str(jobs), "--target", "llama-server", "llama-bench"])
    return binaries


def convert(work: Path, checkpoint: Path, outtype: str) -> Path:
    gguf = work / f"{checkpoint.name}-{outtype}.gguf"
    if gguf.exists():
        return gguf
    # The converter recognises a Qwen3 reranker by its directory's name.
    named = work / f"qwen3-reranker-{checkpoint.name}"
    if not named.exists():
        named.symlink_to(checkpoint.resolve())
    source = work / "llama.cpp"
    env = dict(os.environ, PYTHONPATH=str(source / "gguf-py"))
    run([sys.executable, source / "convert_hf_to_gguf.py", named, "--outtype", outtype, "--outfile", gguf],
        env=env)
    return gguf


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=3600) as response:
        return json.load(response)


class Server:
    """A server process on a free port, up until `close`."""

    def __init__(self, command, port, log):
        self.port, self.log = port, open(log, "w")
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        for _ in range(3000):
            if self.process.poll() is not None:
                raise RuntimeError(f"{command[0]} exited: see {log}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                return
            except OSError:
                time.sleep(0.2)
        raise RuntimeError(f"{command[0]} never became healthy: see {log}")

    def close(self):
        self.process.terminate()
        self.process.wait()
        self.log.close()


def logit(p: float) -> float:
    p = min(max(p, 1e-12), 1 - 1e-12)
    return math.log(p / (1 - p))


def rerank(server: Server, query: str, documents: list, llama: bool):
    """(seconds, logits by document index, prompt tokens or None) of one request."""
    body = {"query": query, "documents": documents, "top_n": len(documents)}
    if not llama:
        body["raw_scores"] = True
    started = time.perf_counter()
    answer = post(f"http://127.0.0.1:{server.port}/v1/rerank", body)
    seconds = time.perf_counter() - started
    logits = [0.0] * len(documents)
    for result in answer["results"]:
        score = logit(result["relevance_score"]) if llama else result["raw_score"]
        logits[result["index"]] = score
    tokens = (answer.get("usage") or {}).get("prompt_tokens") or (answer.get("usage") or {}).get("total_tokens")
    return seconds, logits, tokens


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/llama-cpp"))
    parser.add_argument("--documents", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--llama-variants", default="f32,f32-fa,bf16,q8_0",
                        help="GGUF types for llama-server; f32-fa is f32 with its flash attention")
    parser.add_argument("--service-dtypes", default="f32,bf16")
    parser.add_argument("--service-binary", type=Path,
                        default=Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release/zerank-server")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--no-amx", action="store_true",
                        help="build llama.cpp natively but without AMX (its q8_0 kernels die with SIGILL on some "
                             "guests); under --work/build-noamx")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    binaries = build(args.work, args.threads, amx=not args.no_amx)
    variants = args.llama_variants.split(",")
    ggufs = {t: convert(args.work, args.checkpoint, t) for t in {v.partition("-")[0] for v in variants}}
    workload = subprocess.run([sys.executable, ROOT / "bench/workload.py", "--documents", str(args.documents)],
                              check=True, capture_output=True, text=True).stdout
    pairs = [json.loads(line) for line in workload.splitlines() if line.strip()]
    query, documents = pairs[0]["query"], [p["document"] for p in pairs]

    def llama_server(variant):
        outtype, _, flash = variant.partition("-")
        port = free_port()
        # One slot per document, each with room for its prompt; one batch for them all.
        slots = len(documents)
        command = [binaries / "llama-server", "-m", ggufs[outtype], "--rerank", "--port", str(port),
                   "-t", str(args.threads), "-np", str(slots), "-c", str(2048 * slots), "-b", "8192",
                   "-ub", "8192", "--no-webui"]
        if outtype == "f32":
            # f32 throughout: llama-server keeps its KV cache in f16 unless told, and its flash
            # attention (on by default where the CPU runs it) casts K and V to f16 and, on
            # short chunks, sums in f16: 4.1e-3 logit from HF's f32 where `-fa off` is 2.5e-6.
            # `f32` is that clean f32 (the scores' reference); `f32-fa` its default attention.
            command += ["-ctk", "f32", "-ctv", "f32", "-fa", "on" if flash == "fa" else "off"]
        return Server([str(c) for c in command], port, args.work / f"llama-server-{variant}.log")

    def service(dtype):
        port = free_port()
        env_lib = os.environ.get("MKL_LIB")
        if env_lib:
            os.environ["LD_LIBRARY_PATH"] = env_lib + os.pathsep + os.environ.get("LD_LIBRARY_PATH", "")
        command = [args.service_binary, "--model", args.checkpoint, "--recipe", "qwen3-reranker", "--device", "cpu",
                   "--dtype", dtype, "--host", "127.0.0.1", "--port", str(port), "--score-cache-bytes", "0"]
        return Server([str(c) for c in command], port, args.work / f"zerank-server-{dtype}.log")

    runners = [("llama-server", v, lambda v=v: llama_server(v), True) for v in variants]
    runners += [("zerank-server", d, lambda d=d: service(d), False) for d in args.service_dtypes.split(",") if d]
    reference = None
    tokens = None
    for round_ in range(args.rounds):
        for name, dtype, start, llama in runners:
            try:
                server = start()
            except RuntimeError as err:
                # A server that dies at start (llama-server's q8_0 AMX kernels under SIGILL,
                # see --no-amx) is reported, and the others still run.
                print(json.dumps({"runner": name, "dtype": dtype, "round": round_, "error": str(err)}), flush=True)
                continue
            try:
                rerank(server, query, documents[:1], llama)  # warm-up
                seconds, logits, counted = rerank(server, query, documents, llama)
            finally:
                server.close()
            tokens = counted or tokens
            if llama and dtype == "f32" and reference is None:
                reference = logits
            diff = None if reference is None else max(abs(a - b) for a, b in zip(logits, reference))
            print(json.dumps({
                "runner": name, "dtype": dtype, "round": round_, "documents": len(documents),
                "prompt_tokens": tokens, "seconds": round(seconds, 3),
                "tokens_per_s": round(tokens / seconds, 1) if tokens else None,
                "max_abs_logit_diff_vs_llama_f32": diff,
                "load_average": open("/proc/loadavg").read().split()[:3],
            }), flush=True)


if __name__ == "__main__":
    main()
