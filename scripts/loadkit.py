"""What the load scripts share: reading a running server's /metrics and memory, and the one
load generator (`drive`), used by the reliability check (scripts/loadtest.py) and the
benchmark (bench/loadgen.py). The server itself is started by scripts/with_server.sh, which
sets ZERANK_URL and ZERANK_PID."""

import concurrent.futures as futures
import json
import os
import time
import urllib.error
import urllib.request


def server_from_env():
    """The base URL and pid of the server scripts/with_server.sh started."""
    return os.environ["ZERANK_URL"].rstrip("/"), int(os.environ["ZERANK_PID"])


def metrics(base):
    """Every sample of /metrics, keyed by its name with labels (`name{label="v"}`)."""
    values = {}
    text = urllib.request.urlopen(f"{base}/metrics", timeout=10).read().decode()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def metric(base, name):
    """The sum of a metric over its label sets (0 when absent)."""
    return sum(v for k, v in metrics(base).items() if k.split("{")[0] == name)


def rss_kib(pid, field="VmRSS"):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    return 0


def rerank(base, body, timeout):
    """POSTs one rerank body; returns (status, seconds, JSON answer or None). Transport
    errors come back as a status string."""
    started = time.perf_counter()
    request = urllib.request.Request(f"{base}/rerank", data=body, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, time.perf_counter() - started, json.loads(response.read())
    except urllib.error.HTTPError as e:
        e.read()
        return e.code, time.perf_counter() - started, None
    except Exception as e:
        return f"transport: {e.__class__.__name__}", time.perf_counter() - started, None


def drive(base, bodies, clients, timeout=60, deadline=None, pid=None):
    """Sends every body with `clients` concurrent clients; returns each answer by its index,
    as (status, seconds, JSON answer), with "skipped" for those not sent before `deadline`,
    and the peak RSS (KiB) of `pid` seen meanwhile. Fails if a body is answered twice."""
    answers = {}
    peak = 0

    def one(i, body):
        if deadline is not None and time.time() > deadline:
            return i, ("skipped", 0.0, None)
        return i, rerank(base, body, timeout)

    with futures.ThreadPoolExecutor(max_workers=clients) as pool:
        pending = [pool.submit(one, i, body) for i, body in enumerate(bodies)]
        for done in futures.as_completed(pending):
            i, answer = done.result()
            if i in answers:
                raise SystemExit(f"request {i} answered twice")
            answers[i] = answer
            if pid is not None:
                peak = max(peak, rss_kib(pid))
    return answers, peak


if __name__ == "__main__":
    # `python3 scripts/loadkit.py rss`: the running server's memory, as a JSON line.
    import sys

    if sys.argv[1:] != ["rss"]:
        raise SystemExit("usage: loadkit.py rss  (under scripts/with_server.sh)")
    _, pid = server_from_env()
    print(json.dumps({"server_rss_mib": round(rss_kib(pid) / 1024, 1),
                      "server_peak_rss_mib": round(rss_kib(pid, "VmHWM") / 1024, 1)}))
