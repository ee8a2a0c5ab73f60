#!/usr/bin/env python3
"""Drives the /docs page of the server that scripts/with_server.sh started, in headless
Chromium: ranks three documents typed into the playground (and the same three from a .jsonl
file) and checks that the order, scores and token count it shows are the API's answer to the
same request; checks that the API reference is rendered from /openapi.json and that the page
asks for nothing but this server. With PLAYGROUND_API_KEY, the server has that key: the page
must ask for it, and work once it is typed in. Saves a screenshot to the path given.

    scripts/with_server.sh python3 scripts/check_playground.py SCREENSHOT.png
"""

import json
import os
import sys
import urllib.error
import urllib.request

from playwright.sync_api import sync_playwright

BASE = os.environ["ZERANK_URL"]
KEY = os.environ.get("PLAYGROUND_API_KEY")
QUERY = "What is the capital of France?"
DOCUMENTS = [
    "Berlin is the capital of Germany.",
    "Paris is the capital and largest city of France.",
    "The Eiffel Tower was finished in 1889.",
]
INSTRUCTION = "Given a question about geography, find passages that answer it"
# Debian's Chromium on a closed network: no background connections, no sandbox as root.
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def api(path, body=None, key=KEY):
    headers = {"content-type": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(BASE + path, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def expected(model, instruction):
    body = {"model": model, "query": QUERY, "documents": DOCUMENTS, "raw_scores": True}
    if instruction:
        body["instruction"] = instruction
    status, answer = api("/v1/rerank", body)
    assert status == 200, answer
    return answer


def rank_in_page(page):
    """Clicks Rank and reads what the page shows: (index, score, raw) per row, and stats."""
    page.evaluate("document.getElementById('results').replaceChildren()")
    page.click("#rank")
    page.wait_for_function(
        "() => document.querySelectorAll('#results li').length > 0 && !document.getElementById('rank').disabled")
    rows = page.eval_on_selector_all("#results li", """rows => rows.map(row => [
        Number(row.dataset.index),
        row.querySelector('.score').textContent,
        row.querySelector('.raw').textContent])""")
    return rows, page.inner_text("#stats")


def check_rows(rows, stats, answer, what):
    shown = [index for index, _, _ in rows]
    order = [r["index"] for r in answer["results"]]
    assert shown == order, f"{what}: the page shows {shown}, the API ranks {order}"
    for (index, score, raw), result in zip(rows, answer["results"]):
        assert score == f"{result['relevance_score']:.4f}", f"{what}: document {index}: {score} vs {result}"
        assert raw == f"raw {result['raw_score']:.4f}", f"{what}: document {index}: {raw} vs {result}"
    tokens = answer["usage"]["total_tokens"]
    assert f"tokens {tokens}" in stats, f"{what}: stats {stats!r} lack {tokens} tokens"
    assert "round trip" in stats and "inference" in stats, stats
    print(f"{what}: the page ranks {shown} with the API's scores, {tokens} tokens")


def main():
    screenshot = sys.argv[1]
    status, models = api("/v1/models")
    assert status == 200, models
    names = [m["id"] for m in models["data"]]
    _, spec = api("/openapi.json")
    operations = sum(len(item) for item in spec["paths"].values())
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        problems, elsewhere = [], []
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("request", lambda request: None if request.url.startswith(BASE) or request.url.startswith("data:")
                else elsewhere.append(request.url))
        page.goto(BASE + "/docs")

        if KEY:
            status, _ = api("/v1/models", key=None)
            assert status == 401, "the server should need its key"
            page.wait_for_function("() => !document.getElementById('message').hidden")
            message = page.inner_text("#message")
            assert "API key" in message, f"the page should ask for the key: {message!r}"
            page.fill("#api-key", KEY)
        page.wait_for_function(f"() => document.getElementById('model').value === {json.dumps(names[0])}")
        page.wait_for_function("() => document.getElementById('reference-message').hidden")
        rendered = page.locator("#operations details.op").count()
        assert rendered == operations, f"the reference shows {rendered} routes, openapi.json has {operations}"

        page.fill("#query", QUERY)
        page.fill("#documents", "\n".join(DOCUMENTS))
        rows, stats = rank_in_page(page)
        check_rows(rows, stats, expected(names[0], None), f"typed, {names[0]}")

        lines = [json.dumps(DOCUMENTS[0]), json.dumps({"text": DOCUMENTS[1]}), "", json.dumps({"text": DOCUMENTS[2]})]
        page.set_input_files("#file", files=[{
            "name": "documents.jsonl", "mimeType": "application/x-ndjson", "buffer": "\n".join(lines).encode()}])
        page.wait_for_function("() => !document.getElementById('file-box').hidden")
        assert page.inner_text("#file-count") == "3 documents", page.inner_text("#file-count")
        rows, stats = rank_in_page(page)
        check_rows(rows, stats, expected(names[0], None), "from a .jsonl file")
        page.click("#file-clear")

        # A model that takes an instruction, when the server has one.
        instructed = next((n for n in names if n == "qwen3-reranker"), None)
        if instructed:
            page.select_option("#model", instructed)
            page.fill("#instruction", INSTRUCTION)
            rows, stats = rank_in_page(page)
            check_rows(rows, stats, expected(instructed, INSTRUCTION), f"{instructed} with an instruction")
        page.screenshot(path=screenshot, full_page=True)
        if KEY:
            page.reload()
            assert page.input_value("#api-key") == KEY, "the key should stay for the session"
        browser.close()
    assert not problems, f"script errors in the page: {problems}"
    assert not elsewhere, f"the page asked for something elsewhere: {elsewhere}"
    print(f"playground checked; screenshot in {screenshot}")


if __name__ == "__main__":
    main()
