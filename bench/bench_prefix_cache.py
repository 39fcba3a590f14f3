#!/usr/bin/python3
"""bench/bench_prefix_cache.py — what serve's prefix cache saves a conversation.

Starts `lorac serve` on MODEL twice, with the prefix cache (the default) and
with --no-prefix-cache, and has the same conversation with each: a long first
prompt (a TinyStories passage, about 700 tokens), then TURNS turns, each
sending the whole conversation so far (the previous prompt, the model's
greedy reply and a new line of text) as a /v1/completions request of 32
tokens, streamed. Per turn it prints the prompt's tokens, the tokens the
cache reused (lorac_prompt_tokens_cached_total), the time to the first
streamed token with and without the cache (the median over ROUNDS rounds,
the two servers taking turns, so that drift hits both) and their ratio, and
checks that both servers wrote the same replies. Then one request for 4
greedy choices of a new ~700-token prompt on each: the choices after the
first wait for its prefill and copy it. Not a test: timings depend on the
machine and what else runs on it.

Usage: bench/bench_prefix_cache.py [MODEL] (default bench/out/s110m-BF16, written by
       bench/bench_generate.sh) after `make build`.
Env:   TURNS (6), ROUNDS (3), THREADS (2)
"""
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "build", "lorac")
FIX = os.environ.get("LORAC_FIXTURES", os.path.join(ROOT, "..", "shared", "fixtures"))
TURNS = int(os.environ.get("TURNS", "6"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
THREADS = os.environ.get("THREADS", "2")


def start(model, flags):
    p = subprocess.Popen([BIN, "serve", "-m", model, "--port", "0", "-t", THREADS, "--max-seqs", "4",
                          "--ctx", "2048", "--served-model-name", "m", *flags],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    m = re.search(r":(\d+)\s*$", p.stdout.readline())
    if not m:
        p.kill()
        sys.exit("the server did not start")
    return p, int(m.group(1))


def cached(port):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    c.request("GET", "/metrics")
    for line in c.getresponse().read().decode().splitlines():
        if line.startswith("lorac_prompt_tokens_cached_total "):
            return int(float(line.split()[1]))
    return 0


def turn(port, prompt):
    """(reply text, prompt tokens, seconds to the first streamed token)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    body = json.dumps({"model": "m", "prompt": prompt, "max_tokens": 32, "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}})
    t0 = time.perf_counter()
    c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    r = c.getresponse()
    text, first, usage, buf = "", None, None, b""
    while True:
        chunk = r.read1(65536)
        if not chunk:
            break
        buf += chunk
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            data = event.decode()[len("data: "):]
            if data == "[DONE]":
                continue
            o = json.loads(data)
            if o.get("usage"):
                usage = o["usage"]
            for ch in o.get("choices", []):
                if ch["text"] and first is None:
                    first = time.perf_counter() - t0
                text += ch["text"]
    return text, usage["prompt_tokens"], first if first is not None else time.perf_counter() - t0


def choices(port, n):
    """(seconds for one request of n greedy choices of the first prompt, prompt tokens reused)."""
    story = open(os.path.join(FIX, "datasets", "tinystories", "tinystories_train_head.txt")).read()
    before = cached(port)
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    body = json.dumps({"model": "m", "prompt": story[3000:6000], "max_tokens": 32, "temperature": 0, "n": n})
    t0 = time.perf_counter()
    c.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    texts = [ch["text"] for ch in json.loads(c.getresponse().read())["choices"]]
    took = time.perf_counter() - t0
    if len(set(texts)) != 1:
        sys.exit("greedy choices differ")
    return took, cached(port) - before


def conversation(port):
    """Per turn: (prompt tokens, tokens reused, seconds to the first token, reply)."""
    story = open(os.path.join(FIX, "datasets", "tinystories", "tinystories_train_head.txt")).read()
    prompt = story[:3000]
    lines = [line for line in story[3000:].splitlines() if line.strip()]
    out = []
    for k in range(TURNS):
        before = cached(port)
        reply, n_prompt, ttft = turn(port, prompt)
        out.append((n_prompt, cached(port) - before, ttft, reply))
        prompt += reply + "\n" + lines[k % len(lines)][:200]
    return out


def main():
    model = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "bench", "out", "s110m-BF16")
    if not os.path.exists(BIN):
        sys.exit("run 'make build' first")
    if not os.path.exists(os.path.join(model, "model.safetensors")):
        sys.exit(f"{model}: no model (bench/bench_generate.sh writes bench/out/s110m-BF16)")
    print(f"# {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, {os.cpu_count()} CPUs, {model}, "
          f"{THREADS} threads, {TURNS} turns, {ROUNDS} rounds")
    runs = {"on": [], "off": [], "n4-on": [], "n4-off": []}
    for rnd in range(ROUNDS):
        for name in (("on", "off") if rnd % 2 == 0 else ("off", "on")):
            p, port = start(model, [] if name == "on" else ["--no-prefix-cache"])
            try:
                runs[name].append(conversation(port))
                runs["n4-" + name].append(choices(port, 4))
            finally:
                p.terminate()
                p.wait()
    replies = {name: [[t[3] for t in conv] for conv in runs[name]] for name in ("on", "off")}
    same = all(r == replies["on"][0] for r in replies["on"] + replies["off"])
    print("| turn | prompt tokens | reused | first token, cache (ms) | first token, no cache (ms) | no cache / cache |")
    print("|---:|---:|---:|---:|---:|---:|")
    for k in range(TURNS):
        on = statistics.median(conv[k][2] for conv in runs["on"]) * 1e3
        off = statistics.median(conv[k][2] for conv in runs["off"]) * 1e3
        n_prompt, reused = runs["on"][0][k][0], runs["on"][0][k][1]
        print(f"| {k + 1} | {n_prompt} | {reused} | {on:.1f} | {off:.1f} | {off / on:.2f}x |")
    print(f"replies the same with and without the cache, every round: {'yes' if same else 'NO'}")
    on = statistics.median(t for t, _ in runs["n4-on"])
    off = statistics.median(t for t, _ in runs["n4-off"])
    print(f"n=4 greedy choices of one new prompt (32 tokens each): {on * 1e3:.1f} ms with the cache "
          f"({runs['n4-on'][0][1]} prompt tokens copied), {off * 1e3:.1f} ms without: {off / on:.2f}x")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
