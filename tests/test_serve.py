"""`lorac serve` end to end, over HTTP, against `lorac generate`.

The real stories260K model (converted from the fixtures with `lorac convert`,
plus a tokenizer_config.json whose chat template is TinyLlama's zephyr one)
and eight random PEFT adapters of ranks 4..32 written from Python
(tests/reference/peft_ref.py) under an adapters directory. One server with
--allow-admin, 4 KV slots and --max-loras 8 (a ninth adapter, added while
serving, evicts one), then:

  1. 16 concurrent greedy requests, streaming and not, over the 8 adapters and
     the base: each text equals `lorac generate --temp 0` with that adapter
     alone; usage and finish_reason agree; streamed chunks have the OpenAI
     shapes and end with [DONE];
  2. n=2 with include_usage, stop strings, token-id prompts, chat (rendered
     with the recognised template: equal to /v1/completions on the rendered
     ids), /v1/models, /health;
  3. every class of bad request (malformed/empty JSON, wrong types, invalid
     UTF-8, ids outside the vocabulary, each numeric out of range, prompt +
     max_tokens past the context, unknown model, a path as model, body over
     --max-body with and without Content-Length, queue full, unknown path,
     wrong method, a broken adapter) sent while long streams are in flight:
     each gets its status and an OpenAI error object, and the streams finish
     whole;
  4. clients that hang up mid-stream or while waiting have their requests
     cancelled (metrics count them);
  5. load / use / unload / reload adapters while requests run; lora_path
     outside the adapters directory refused;
  6. a few seconds of random and mutated requests, then /health still
     answers; /metrics is consistent;
  7. SIGTERM exits 0; a second server without --allow-admin or a chat
     template answers 404 / 400 for those, and exits 0 on SIGINT.

Run alone: LORAC_BIN=build/lorac LORAC_FIXTURES=../shared/fixtures /usr/bin/python3 tests/test_serve.py
"""

import concurrent.futures
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference"))
import hf_model  # noqa: E402
import peft_ref  # noqa: E402
import torch  # noqa: E402

BIN = os.environ.get("LORAC_BIN")
FIX = os.environ.get("LORAC_FIXTURES")
TMP = os.path.join(os.environ.get("LORAC_TEST_TMP", "/tmp"), f"serve.{os.getpid()}")
SANITIZED = bool(os.environ.get("LORAC_SANITIZED"))
PROMPTS = ["Once upon a time", "Lily wanted to", "The big dog", "One day, a little", "Tom and Sam went",
           "The sun was", "She saw a bird", "He liked to play"]
ZEPHYR = ("{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + "
          "eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n' + message['content'] + "
          "eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n"
          "{% endfor %}")

passed = failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
    else:
        failed += 1
        print("FAIL:", what, flush=True)
    return cond


# ---- HTTP ------------------------------------------------------------------------

class Server:
    def __init__(self, args, log):
        self.log = open(log, "w")
        self.proc = subprocess.Popen([BIN, "serve", "--port", "0", "-t", "1"] + args, stdout=subprocess.PIPE,
                                     stderr=self.log, text=True)
        line = self.proc.stdout.readline()
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if not m:
            self.proc.kill()
            raise SystemExit(f"server did not start: {line!r}; see {log}")
        self.port = int(m.group(1))

    def stop(self, sig=signal.SIGTERM, timeout=30):
        self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = "timeout"
        self.log.close()
        return rc


def request(port, method, path, body=None, headers=None, timeout=120):
    """(status, headers dict, body bytes); body: dict (JSON), bytes or str."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode()
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    try:
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, data
    finally:
        c.close()


def post(port, path, body, **kw):
    return request(port, "POST", path, body, **kw)


def sse_events(data):
    """The JSON events of an SSE body and whether it ended with [DONE]."""
    events, done = [], False
    for block in data.decode().split("\n\n"):
        if not block:
            continue
        if not block.startswith("data: "):
            raise ValueError(f"not an SSE event: {block!r}")
        payload = block[6:]
        if payload == "[DONE]":
            done = True
            continue
        events.append(json.loads(payload))
    return events, done


def complete(port, body):
    """Text, finish_reason, usage (or the error) of a completion, streamed or not."""
    chat = "messages" in body
    st, hdr, data = post(port, "/v1/chat/completions" if chat else "/v1/completions", body)
    if st != 200:
        return {"status": st, "error": json.loads(data)}
    if not body.get("stream"):
        o = json.loads(data)
        c = o["choices"][0]
        return {"status": st, "text": c["message"]["content"] if chat else c["text"],
                "finish": c["finish_reason"], "usage": o["usage"], "object": o, "content_type": hdr.get("content-type")}
    events, done = sse_events(data)
    texts, finish, errors = {}, {}, []
    for e in events:
        if "error" in e:
            errors.append(e)
            continue
        for c in e["choices"]:
            i = c["index"]
            piece = (c["delta"].get("content") or "") if chat else c["text"]
            texts[i] = texts.get(i, "") + piece
            if c["finish_reason"]:
                finish[i] = c["finish_reason"]
    return {"status": st, "text": texts.get(0, ""), "texts": texts, "finish": finish.get(0), "finishes": finish,
            "done": done, "events": events, "errors": errors, "content_type": hdr.get("content-type")}


def in_threads(fns):
    out = [None] * len(fns)

    def run(i):
        try:
            out[i] = fns[i]()
        except Exception as e:  # noqa: BLE001
            out[i] = e

    ts = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out


def generate(model, adapter, prompt, n, flags=()):
    args = [BIN, "generate", "-m", model, "-p", prompt, "--temp", "0", "-n", str(n), "-t", "1", *flags]
    if adapter:
        args += ["--adapter", adapter]
    out = subprocess.run(args, capture_output=True, check=True).stdout.decode()
    assert out.startswith(prompt) and out.endswith("\n"), out
    return out[len(prompt):-1]


def metrics(port):
    st, _, data = request(port, "GET", "/metrics")
    vals = {}
    for line in data.decode().splitlines():
        if line and not line.startswith("#"):
            k, v = line.rsplit(" ", 1)
            vals[k] = float(v)
    return st, vals


def is_error_object(data, status):
    try:
        e = json.loads(data)["error"]
        return isinstance(e["message"], str) and e["message"] and isinstance(e["type"], str) and "param" in e and \
            "code" in e
    except (ValueError, KeyError, TypeError):
        return False


# ---- setup ----------------------------------------------------------------------------

def setup():
    shutil.rmtree(TMP, ignore_errors=True)
    os.makedirs(TMP)
    model = os.path.join(TMP, "model")
    fx = os.path.join(FIX, "llama2c")
    subprocess.run([BIN, "convert", "--from", "llama2c", os.path.join(fx, "stories260K.bin"), "--tokenizer",
                    os.path.join(fx, "tok512.bin"), "-o", model], check=True, capture_output=True)
    with open(os.path.join(model, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "chat_template": ZEPHYR}, f)
    with open(os.path.join(model, "config.json")) as f:
        c = json.load(f)
    adapters = os.path.join(TMP, "adapters")
    os.makedirs(adapters)
    names = []
    projections = peft_ref.projection_names(c)
    for k, r in enumerate([4, 8, 16, 32, 4, 8, 16, 32]):
        kinds = ["q_proj", "v_proj"] if k % 3 == 0 else ["q_proj", "k_proj", "v_proj", "o_proj"] if k % 3 == 1 else \
            list(peft_ref.PROJ_BLOCK)
        modules = {p: r for p in projections if p.rsplit(".", 1)[1] in kinds}
        ab = peft_ref.random_lora(c, modules, seed=100 + k)
        name = f"a{k}-r{r}"
        peft_ref.write_adapter(os.path.join(adapters, name), {"r": r, "lora_alpha": 2 * r, "target_modules": kinds},
                               peft_ref.lora_tensors(ab))
        names.append(name)
    # one that parses as a directory but does not load
    os.makedirs(os.path.join(adapters, "broken"))
    with open(os.path.join(adapters, "broken", "adapter_config.json"), "w") as f:
        f.write("{not json")
    # an adapter kept aside, copied in while the server runs
    ab = peft_ref.random_lora(c, {p: 8 for p in projections if p.endswith("q_proj")}, seed=999)
    peft_ref.write_adapter(os.path.join(TMP, "late"), {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj"]},
                           peft_ref.lora_tensors(ab))
    return model, adapters, names, c


# ---- the checks -------------------------------------------------------------------------

def test_concurrent(port, model, adapters, names):
    jobs, expected = [], []
    for i in range(16):
        a = ([None] + names)[i % 9]
        prompt = PROMPTS[i % len(PROMPTS)]
        n = 24 + 8 * (i % 4)
        expected.append(generate(model, a and os.path.join(adapters, a), prompt, n))
        body = {"model": a or "model", "prompt": prompt, "max_tokens": n, "temperature": 0, "stream": i % 2 == 1}
        jobs.append(lambda body=body: complete(port, body))
    results = in_threads(jobs)
    for i, (r, want) in enumerate(zip(results, expected)):
        if not check(isinstance(r, dict) and r["status"] == 200, f"request {i}: {r}"):
            continue
        check(r["text"] == want, f"request {i} ({'stream' if i % 2 else 'whole'}): {r['text']!r} != generate {want!r}")
        n = 24 + 8 * (i % 4)
        check(r["finish"] in ("stop", "length"), f"request {i} finish {r['finish']}")
        if i % 2:
            check(r["done"] and not r["errors"], f"request {i}: stream not closed with [DONE]")
            check(r["content_type"] == "text/event-stream", f"request {i}: content type {r['content_type']}")
            ev = r["events"]
            check(all(e["object"] == "text_completion" and e["id"] == ev[0]["id"] and e["id"].startswith("cmpl-")
                      for e in ev), f"request {i}: chunk shapes")
            check(ev[-1]["choices"][0]["finish_reason"] is not None and
                  all(e["choices"][0]["finish_reason"] is None for e in ev[:-1]), f"request {i}: finish only last")
        else:
            o = r["object"]
            check(o["object"] == "text_completion" and o["id"].startswith("cmpl-") and isinstance(o["created"], int),
                  f"request {i}: response shape")
            check(o["model"] == (([None] + names)[i % 9] or "model"), f"request {i}: model {o['model']}")
            u = r["usage"]
            check(u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] and
                  (u["completion_tokens"] == n) == (r["finish"] == "length") and u["completion_tokens"] <= n,
                  f"request {i}: usage {u} finish {r['finish']}")
    # the adapters make a difference (else the test proves little)
    differ = sum(expected[i] != generate(model, None, PROMPTS[i % len(PROMPTS)], 24 + 8 * (i % 4)) for i in range(1, 9))
    check(differ >= 6, f"only {differ} of 8 adapters change the output")


def test_features(port, model, names):
    base = "model"
    # n = 2 with seeds, stream and usage
    r = complete(port, {"model": names[0], "prompt": PROMPTS[0], "max_tokens": 12, "n": 2, "temperature": 0.9,
                        "seed": 11, "stream": True, "stream_options": {"include_usage": True}})
    check(r["status"] == 200 and sorted(r["texts"]) == [0, 1] and sorted(r["finishes"]) == [0, 1], f"n=2 stream: {r}")
    last = r["events"][-1]
    check(last["choices"] == [] and last["usage"]["completion_tokens"] >= 2 and
          all(e["usage"] is None for e in r["events"][:-1]), "include_usage: usage chunk last, null before")
    again = complete(port, {"model": names[0], "prompt": PROMPTS[0], "max_tokens": 12, "n": 2, "temperature": 0.9,
                            "seed": 11})
    check(again["status"] == 200 and [c["text"] for c in again["object"]["choices"]] == [r["texts"][0], r["texts"][1]],
          "the same seed gives the same choices, streamed or not")
    # stop strings end the text before the match
    full = complete(port, {"model": base, "prompt": PROMPTS[1], "max_tokens": 40, "temperature": 0})
    stop = full["text"][len(full["text"]) // 2:][:3]
    cut = complete(port, {"model": base, "prompt": PROMPTS[1], "max_tokens": 40, "temperature": 0,
                          "stop": ["\u00e9never", stop]})
    check(cut["status"] == 200 and cut["text"] == full["text"][:full["text"].index(stop)] and cut["finish"] == "stop",
          f"stop {stop!r}: {cut.get('text')!r} from {full['text']!r}")
    # the penalties and min-p (vLLM's fields): greedy with penalties equals `lorac generate` with them
    # (itself checked against a torch loop in test_generate_penalties.py), and differs from plain greedy
    pen = complete(port, {"model": names[1], "prompt": PROMPTS[1], "max_tokens": 40, "temperature": 0,
                          "repetition_penalty": 1.3, "frequency_penalty": 0.4, "presence_penalty": 0.5,
                          "min_p": 0.1})
    want = generate(model, os.path.join(TMP, "adapters", names[1]), PROMPTS[1], 40,
                    ["--repeat-penalty", "1.3", "--frequency-penalty", "0.4", "--presence-penalty", "0.5"])
    plain = generate(model, os.path.join(TMP, "adapters", names[1]), PROMPTS[1], 40)
    check(pen["status"] == 200 and pen["text"] == want and want != plain, f"penalties: {pen} vs {want!r}")
    test_logprobs(port, model, names)
    # a batch of prompts: n choices per prompt, prompt by prompt, each what the prompt alone gives (seeded
    # sampling too); usage counts each prompt once; streamed the same; lm-eval's batched echo request
    batch = PROMPTS[:3]
    body = {"model": names[1], "prompt": batch, "max_tokens": 8, "temperature": 0.9, "seed": 5, "n": 2}
    for stream in (False, True):
        b = complete(port, dict(body, stream=stream, stream_options={"include_usage": True}) if stream else body)
        texts = [b["texts"].get(i) for i in range(6)] if stream and b["status"] == 200 else \
            [c_["text"] for c_ in b["object"]["choices"]] if b["status"] == 200 else []
        alone = []
        for p_ in batch:
            one = complete(port, dict(body, prompt=p_))
            alone += [c_["text"] for c_ in one["object"]["choices"]]
        check(b["status"] == 200 and texts == alone, f"batch of prompts (stream={stream}): {texts} vs {alone}")
        if not stream and b["status"] == 200:
            want_prompt = sum(len(subprocess.run([BIN, "tokenize", "-m", model, "-p", p_], capture_output=True,
                                                 text=True, check=True).stdout.split()) for p_ in batch)
            check(b["usage"]["prompt_tokens"] == want_prompt and [c_["index"] for c_ in b["object"]["choices"]] ==
                  list(range(6)), f"batch usage {b['usage']} (prompts {want_prompt})")
    ids = [[int(x) for x in subprocess.run([BIN, "tokenize", "-m", model, "-p", p_], capture_output=True, text=True,
                                           check=True).stdout.split()] for p_ in batch]
    eb = {"model": "model", "prompt": ids, "max_tokens": 1, "temperature": 0, "logprobs": 1, "echo": True}
    whole = complete(port, eb)
    alone = [complete(port, dict(eb, prompt=[x]))["object"]["choices"][0]["logprobs"] for x in ids]
    check(whole["status"] == 200 and [c_["logprobs"] for c_ in whole["object"]["choices"]] == alone,
          "batched echo logprobs equal each prompt's alone")
    check(complete(port, {"model": base, "prompt": ["a", [1, 2]]})["status"] == 400, "a mixed batch is refused")
    # logit_bias: +100 makes greedy decoding repeat one token; -100 on what greedy picks first changes it
    there = int(subprocess.run([BIN, "tokenize", "-m", model, "-p", " there", "--no-special"], capture_output=True,
                               text=True, check=True).stdout.split()[-1])
    forced = complete(port, {"model": base, "prompt": PROMPTS[1], "max_tokens": 5, "temperature": 0,
                             "logit_bias": {str(there): 100}})
    check(forced["status"] == 200 and forced["text"] == " there" * 5, f"logit_bias +100: {forced}")
    ids = [int(x) for x in subprocess.run([BIN, "tokenize", "-m", model, "-p", PROMPTS[1]], capture_output=True,
                                          text=True, check=True).stdout.split()]
    c, w = hf_model.load_model(model)
    top2 = torch.topk(hf_model.llama_forward(w, c, torch.tensor(ids))[-1], 2).indices.tolist()
    first = complete(port, {"model": base, "prompt": ids, "max_tokens": 1, "temperature": 0, "logprobs": 0})
    other = complete(port, {"model": base, "prompt": ids, "max_tokens": 1, "temperature": 0, "logprobs": 0,
                            "logit_bias": {str(top2[0]): -100}})
    texts = [subprocess.run([BIN, "tokenize", "-m", model, "--decode", f"1 {t}"], capture_output=True, text=True,
                            check=True).stdout.rstrip("\n")[3:] for t in top2]  # "<s>" + the token
    got = [r["object"]["choices"][0]["logprobs"]["tokens"][0] if r["status"] == 200 else None for r in (first, other)]
    check(got == texts, f"logit_bias -100 on the greedy token: {got} vs torch's two best {texts}")
    check(complete(port, {"model": base, "prompt": "x", "logit_bias": {"512": 1}})["status"] == 400,
          "logit_bias outside the vocabulary")
    # token ids as the prompt give what the text gives
    ids = subprocess.run([BIN, "tokenize", "-m", model, "-p", PROMPTS[1]], capture_output=True, text=True,
                         check=True).stdout.split()
    by_ids = complete(port, {"model": base, "prompt": [int(x) for x in ids], "max_tokens": 40, "temperature": 0})
    check(by_ids["status"] == 200 and by_ids["text"] == full["text"], "prompt as token ids")
    # chat: rendered with the recognised template (+ generation prompt), tokenized without BOS
    msgs = [{"role": "user", "content": "Tell me a story."}]
    rendered = "<|user|>\nTell me a story.</s>\n<|assistant|>\n"
    ids = subprocess.run([BIN, "tokenize", "-m", model, "-p", rendered, "--no-special"], capture_output=True,
                         text=True, check=True).stdout.split()
    ref = complete(port, {"model": names[2], "prompt": [int(x) for x in ids], "max_tokens": 20, "temperature": 0})
    for stream in (False, True):
        chat = complete(port, {"model": names[2], "messages": msgs, "max_tokens": 20, "temperature": 0, "stream": stream})
        check(chat["status"] == 200 and chat["text"] == ref["text"], f"chat (stream={stream}): {chat} vs {ref}")
        if stream and chat["status"] == 200:
            ev = chat["events"]
            check(ev[0]["object"] == "chat.completion.chunk" and ev[0]["choices"][0]["delta"] == {"role": "assistant",
                                                                                                 "content": ""},
                  "chat stream: the role first")
            check(ev[-1]["choices"][0]["delta"] == {} and ev[-1]["choices"][0]["finish_reason"], "chat stream: last")
        elif chat["status"] == 200:
            o = chat["object"]
            check(o["object"] == "chat.completion" and o["id"].startswith("chatcmpl-") and
                  o["choices"][0]["message"]["role"] == "assistant", "chat response shape")
    # chat without max_tokens runs to the end of the context or EOS
    r = complete(port, {"model": base, "messages": msgs, "temperature": 0})
    check(r["status"] == 200 and r["usage"]["prompt_tokens"] + r["usage"]["completion_tokens"] <= 512, "chat default")
    # models, health
    st, _, data = request(port, "GET", "/v1/models")
    o = json.loads(data)
    ids = [m["id"] for m in o["data"]]
    check(st == 200 and o["object"] == "list" and ids[0] == base and set(names) <= set(ids), f"models {ids}")
    check(all(m["parent"] == base for m in o["data"][1:]) and o["data"][0]["parent"] is None, "models: parent")
    st, _, data = request(port, "GET", "/health")
    check(st == 200 and json.loads(data) == {"status": "ok"}, "health")
    # vLLM's /tokenize, /detokenize, /tokenizer_info: what `lorac tokenize` gives; a chat's ids are its prompt's
    want = [int(x) for x in subprocess.run([BIN, "tokenize", "-m", model, "-p", PROMPTS[3]], capture_output=True,
                                           text=True, check=True).stdout.split()]
    st, _, data = post(port, "/tokenize", {"model": names[0], "prompt": PROMPTS[3]})
    o = json.loads(data)
    check(st == 200 and o["tokens"] == want and o["count"] == len(want) and o["max_model_len"] == 512, f"tokenize {o}")
    st, _, data = post(port, "/tokenize", {"prompt": PROMPTS[3], "add_special_tokens": False})
    check(st == 200 and json.loads(data)["tokens"] == want[1:], "tokenize without BOS")
    st, _, data = post(port, "/tokenize", {"messages": msgs})
    chat_prompt = complete(port, {"model": base, "messages": msgs, "max_tokens": 1})["usage"]["prompt_tokens"]
    check(st == 200 and json.loads(data)["count"] == chat_prompt, "tokenize messages: the chat prompt's count")
    st, _, data = post(port, "/detokenize", {"tokens": want})
    check(st == 200 and json.loads(data) == {"prompt": "<s> " + PROMPTS[3]}, f"detokenize {data}")
    st, _, data = request(port, "GET", "/tokenizer_info")
    o = json.loads(data)
    check(st == 200 and o["bos_token"] == "<s>" and o["eos_token"] == "</s>" and o["model_max_length"] == 512,
          f"tokenizer_info {o}")
    for path, body, status in (("/tokenize", {"model": "nope", "prompt": "x"}, 404), ("/tokenize", {"prompt": 1}, 400),
                               ("/detokenize", {"tokens": [1, 512]}, 400), ("/detokenize", {"tokens": "1"}, 400)):
        st, _, data = post(port, path, body)
        check(is_error_object(data, st) and st == status, f"{path} {body}: {st} {data}")


def test_logprobs(port, model, names):
    """logprobs: the values against torch's log_softmax of the reference forward pass (tests/reference/hf_model.py)
    over the prompt and the generated tokens; the texts join into the answer; a stream's pieces join into the whole
    answer's; chat's entries, one per completion token (the end of turn too), with their bytes."""
    c, w = hf_model.load_model(model)
    prompt_ids = [int(x) for x in subprocess.run([BIN, "tokenize", "-m", model, "-p", PROMPTS[0]], capture_output=True,
                                                 text=True, check=True).stdout.split()]
    body = {"model": "model", "prompt": prompt_ids, "max_tokens": 10, "temperature": 0, "logprobs": 5}
    r = complete(port, body)
    lp = r["object"]["choices"][0]["logprobs"] if r["status"] == 200 else None
    check(lp is not None and len(lp["tokens"]) == 10 and "".join(lp["tokens"]) == r["text"], f"logprobs shape: {lp}")
    if lp is None:
        return
    # the generated ids: the greedy choice at each step is the reference's argmax (checked below)
    ids, worst = list(prompt_ids), 0.0
    for i in range(10):
        ref = torch.log_softmax(hf_model.llama_forward(w, c, torch.tensor(ids))[-1], -1)
        top = torch.topk(ref, 5)
        got_top = sorted(lp["top_logprobs"][i].values(), reverse=True)
        worst = max(worst, abs(lp["token_logprobs"][i] - top.values[0].item()),
                    max(abs(a - b) for a, b in zip(got_top, top.values.tolist())))
        check(len(lp["top_logprobs"][i]) >= 4, f"top_logprobs {i}: {lp['top_logprobs'][i]}")
        ids.append(int(top.indices[0]))
    print(f"logprobs against torch: max diff {worst:.2e}", flush=True)
    check(worst < 1e-4, f"logprobs against torch's log_softmax: max |diff| {worst:.2e}")
    offsets = [sum(len(t) for t in lp["tokens"][:i]) for i in range(10)]
    check(lp["text_offset"] == offsets, f"text_offset {lp['text_offset']} vs {offsets}")
    # streamed, with a stop string: the chunks' logprobs join into the whole answer's
    for extra in ({}, {"stop": [r["text"][-6:-2]]}):
        whole = complete(port, dict(body, **extra))
        st = complete(port, dict(body, stream=True, **extra))
        joined = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
        for e in st.get("events", []):
            for ch in e.get("choices", []):
                for k in joined:
                    joined[k] += (ch.get("logprobs") or {}).get(k, [])
        wl = whole["object"]["choices"][0]["logprobs"]
        check(joined == wl and st["text"] == whole["text"], f"stream logprobs {extra}: {joined} vs {wl}")
    # an adapter's logprobs are its own
    a = complete(port, dict(body, model=names[0]))
    check(a["status"] == 200 and a["object"]["choices"][0]["logprobs"]["token_logprobs"] != lp["token_logprobs"],
          "adapter logprobs differ from the base's")
    # chat: one entry per completion token (the reply's end of turn included), bytes are the token's text
    msgs = [{"role": "user", "content": "Tell me a story."}]
    for stream in (False, True):
        ch = complete(port, {"model": "model", "messages": msgs, "max_tokens": 200, "temperature": 0, "logprobs": True,
                             "top_logprobs": 3, "stream": stream, "stream_options": {"include_usage": True}}
                      if stream else {"model": "model", "messages": msgs, "max_tokens": 200, "temperature": 0,
                                      "logprobs": True, "top_logprobs": 3})
        if stream:
            content = [x for e in ch["events"] for c_ in e.get("choices", []) for x in
                       ((c_.get("logprobs") or {}).get("content") or [])]
            n_completion = ch["events"][-1]["usage"]["completion_tokens"]
        else:
            content = ch["object"]["choices"][0]["logprobs"]["content"]
            n_completion = ch["usage"]["completion_tokens"]
        check(len(content) == n_completion and all(len(x["top_logprobs"]) == 3 for x in content) and
              all(bytes(x["bytes"]).decode("utf-8", "replace") == x["token"] for x in content) and
              all(x["logprob"] <= 1e-6 and x["top_logprobs"][0]["logprob"] >= x["logprob"] - 1e-6 for x in content),
              f"chat logprobs (stream={stream}): {len(content)} entries for {n_completion} tokens")
    # echo (lm-evaluation-harness's loglikelihood request: the context and continuation as ids, max_tokens 1,
    # logprobs 1, echo): every prompt token's log-probability given the ones before it, against torch
    cont = [int(x) for x in subprocess.run([BIN, "tokenize", "-m", model, "-p", " there was a dog", "--no-special"],
                                           capture_output=True, text=True, check=True).stdout.split()]
    # a long context too: more prompt tokens than a step scores (64), two such requests at once
    long_ctx = [int(x) for x in subprocess.run([BIN, "tokenize", "-m", model, "-p", " ".join(PROMPTS) * 3],
                                               capture_output=True, text=True, check=True).stdout.split()]
    cases = [(prompt_ids, False), (prompt_ids, True), (long_ctx, False)]
    bodies = [{"model": "model", "prompt": [ctx + cont], "max_tokens": 1, "temperature": 0, "logprobs": 1,
               "echo": True, "seed": 1234, "stream": stream} for ctx, stream in cases]
    answers = in_threads([lambda b=b: complete(port, b) for b in bodies] +
                         [lambda: complete(port, bodies[2])])
    check(answers[3]["status"] == 200 and answers[3]["object"]["choices"][0]["logprobs"] ==
          answers[2]["object"]["choices"][0]["logprobs"], "two long echo requests at once agree")
    for (ctx, stream), e in zip(cases, answers):
        full = ctx + cont
        ref = torch.log_softmax(hf_model.llama_forward(w, c, torch.tensor(full)), -1)
        want = [ref[p - 1, full[p]].item() for p in range(1, len(full))]
        greedy_ref = [int(ref[p - 1].argmax()) == full[p] for p in range(1, len(full))]
        if stream:
            lp = {"token_logprobs": [], "top_logprobs": [], "tokens": []}
            for ev in e.get("events", []):
                for ch in ev.get("choices", []):
                    for k in lp:
                        lp[k] += (ch.get("logprobs") or {}).get(k, [])
        else:
            lp = e["object"]["choices"][0]["logprobs"] if e["status"] == 200 else None
        ok = lp is not None and len(lp["token_logprobs"]) == len(full) + 1 and lp["token_logprobs"][0] is None and \
            lp["top_logprobs"][0] is None
        diff = max(abs(a - b) for a, b in zip(lp["token_logprobs"][1:len(full)], want)) if ok else 1.0
        # lm-eval's parse_logprobs: the continuation's sum, and whether each token was the greedy one
        ctxlen = len(ctx)
        total = sum(lp["token_logprobs"][ctxlen:-1]) if ok else 0.0
        greedy = [t == max(top.values()) for t, top in zip(lp["token_logprobs"][1:-1], lp["top_logprobs"][1:-1])] \
            if ok else []
        check(ok and diff < 1e-4 and abs(total - sum(want[ctxlen - 1:])) < 1e-3 and greedy == greedy_ref,
              f"echo logprobs ({len(full)} tokens, stream={stream}): max |diff| {diff:.2e}")
        check(stream or e["text"].startswith(PROMPTS[0]), f"echo text {e.get('text')!r}")
    # refused shapes
    check(complete(port, dict(body, logprobs=21))["status"] == 400, "logprobs 21 refused")
    check(complete(port, {"model": "model", "messages": msgs, "top_logprobs": 2})["status"] == 400,
          "top_logprobs without logprobs refused")


def long_stream(port, model, adapter="model"):
    return complete(port, {"model": adapter, "prompt": PROMPTS[2], "max_tokens": 300, "temperature": 0.8,
                           "ignore_eos": True, "stream": True})


BAD = [
    # (what, path, body, status, code or None)
    ("malformed JSON", "/v1/completions", '{"model": "model", "prompt": ', 400, None),
    ("empty body", "/v1/completions", "", 400, None),
    ("not an object", "/v1/completions", "[1]", 400, None),
    ("trailing data", "/v1/completions", '{"model": "model", "prompt": "x"}]', 400, None),
    ("prompt wrong type", "/v1/completions", {"model": "model", "prompt": {"a": 1}}, 400, None),
    ("model wrong type", "/v1/completions", {"model": 7, "prompt": "x"}, 400, None),
    ("no model", "/v1/completions", {"prompt": "x"}, 400, None),
    ("max_tokens a string", "/v1/completions", {"model": "model", "prompt": "x", "max_tokens": "9"}, 400, None),
    ("stream a string", "/v1/completions", {"model": "model", "prompt": "x", "stream": "yes"}, 400, None),
    ("invalid UTF-8", "/v1/completions", b'{"model": "model", "prompt": "\xff\xfe"}', 400, None),
    ("NUL escape", "/v1/completions", '{"model": "model", "prompt": "a\\u0000b"}', 400, None),
    ("id outside vocab", "/v1/completions", {"model": "model", "prompt": [1, 512]}, 400, None),
    ("negative id", "/v1/completions", {"model": "model", "prompt": [1, -1]}, 400, None),
    ("temperature -1", "/v1/completions", {"model": "model", "prompt": "x", "temperature": -1}, 400, None),
    ("temperature 2.5", "/v1/completions", {"model": "model", "prompt": "x", "temperature": 2.5}, 400, None),
    ("temperature huge", "/v1/completions", '{"model": "model", "prompt": "x", "temperature": 1e999}', 400, None),
    ("top_p 0", "/v1/completions", {"model": "model", "prompt": "x", "top_p": 0}, 400, None),
    ("top_p 2", "/v1/completions", {"model": "model", "prompt": "x", "top_p": 2}, 400, None),
    ("max_tokens 0", "/v1/completions", {"model": "model", "prompt": "x", "max_tokens": 0}, 400, None),
    ("max_tokens past ctx", "/v1/completions", {"model": "model", "prompt": "x", "max_tokens": 600}, 400, None),
    ("prompt past ctx", "/v1/completions", {"model": "model", "prompt": [1] * 520, "max_tokens": 1}, 400, None),
    ("n 0", "/v1/completions", {"model": "model", "prompt": "x", "n": 0}, 400, None),
    ("n 1000", "/v1/completions", {"model": "model", "prompt": "x", "n": 1000}, 400, None),
    ("empty stop", "/v1/completions", {"model": "model", "prompt": "x", "stop": [""]}, 400, None),
    ("5 stops", "/v1/completions", {"model": "model", "prompt": "x", "stop": list("abcde")}, 400, None),
    ("seed fractional", "/v1/completions", {"model": "model", "prompt": "x", "seed": 0.5}, 400, None),
    ("logprobs 21", "/v1/completions", {"model": "model", "prompt": "x", "logprobs": 21}, 400, None),
    ("echo in chat", "/v1/chat/completions", {"model": "model", "messages": [{"role": "user", "content": "x"}],
                                               "echo": True}, 400, None),
    ("echo not boolean", "/v1/completions", {"model": "model", "prompt": "x", "echo": 1}, 400, None),
    ("repetition_penalty 0", "/v1/completions", {"model": "model", "prompt": "x", "repetition_penalty": 0}, 400, None),
    ("unknown model", "/v1/completions", {"model": "gpt-4", "prompt": "x"}, 404, "model_not_found"),
    ("path as model", "/v1/completions", {"model": "../adapters/a0-r4", "prompt": "x"}, 404, "model_not_found"),
    ("broken adapter", "/v1/completions", {"model": "broken", "prompt": "x"}, 500, None),
    ("bad role", "/v1/chat/completions", {"model": "model", "messages": [{"role": "x", "content": "y"}]}, 400, None),
    ("empty messages", "/v1/chat/completions", {"model": "model", "messages": []}, 400, None),
    # 2 prompts x n = 9: 18 choices, past 4 slots + 12 waiting whatever else is running (n = 16 alone
    # relied on the three long streams still holding slots, which a faster build did not)
    ("queue full", "/v1/completions", {"model": "model", "prompt": ["x", "y"], "n": 9, "max_tokens": 400,
                                       "ignore_eos": True}, 429, None),
    ("unknown path", "/v1/nothing", {"model": "model"}, 404, None),
    ("load: missing name", "/v1/load_lora_adapter", {"lora_path": "/tmp"}, 400, None),
    ("load: unknown", "/v1/load_lora_adapter", {"lora_name": "nope"}, 404, None),
    ("load: bad name", "/v1/load_lora_adapter", {"lora_name": "../x"}, 400, None),
    ("load: broken", "/v1/load_lora_adapter", {"lora_name": "broken"}, 400, None),
    ("unload: not loaded", "/v1/unload_lora_adapter", {"lora_name": "nope"}, 404, None),
]


def test_bad_requests(port, model):
    streams = [threading.Thread(target=lambda i=i: results.__setitem__(i, long_stream(port, model))) for i in range(3)]
    results = [None] * 3
    for t in streams:
        t.start()
    time.sleep(0.05)
    for what, path, body, status, code in BAD:
        st, _, data = post(port, path, body)
        ok = check(st == status and is_error_object(data, st), f"{what}: {st} {data[:200]!r} (want {status})")
        if ok and code:
            check(json.loads(data)["error"]["code"] == code, f"{what}: code")
    # wrong method
    st, hdr, data = request(port, "GET", "/v1/completions")
    check(st == 405 and hdr.get("allow") == "POST" and is_error_object(data, st), f"GET /v1/completions: {st}")
    st, hdr, data = request(port, "DELETE", "/health")
    check(st == 405 and hdr.get("allow") == "GET", f"DELETE /health: {st}")
    # over --max-body (64 KiB): declared, and streamed in chunks without a length
    big = json.dumps({"model": "model", "prompt": "x" * 70000})
    try:
        st, _, data = post(port, "/v1/completions", big)
        check(st == 413 and is_error_object(data, st), f"body over the cap: {st}")
    except (ConnectionError, BrokenPipeError) as e:
        check(False, f"body over the cap: connection error {e}")
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.putrequest("POST", "/v1/completions")
    c.putheader("Transfer-Encoding", "chunked")
    c.endheaders()
    for _ in range(20):
        c.send(b"1000\r\n" + b"y" * 0x1000 + b"\r\n")
    c.send(b"0\r\n\r\n")
    r = c.getresponse()
    check(r.status == 413 and is_error_object(r.read(), 413), f"chunked body over the cap: {r.status}")
    c.close()
    for t in streams:
        t.join()
    for i, r in enumerate(results):
        check(isinstance(r, dict) and r["status"] == 200 and r["done"] and r["finish"] == "length" and
              not r["errors"], f"stream {i} in flight during the bad requests: {str(r)[:300]}")
    st, _, _ = request(port, "GET", "/health")
    check(st == 200, "health after the bad requests")


def hang_up(port, path, body, stream):
    """Sends a request, reads (the first event when streaming) and closes."""
    s = socket.create_connection(("127.0.0.1", port))
    data = json.dumps(body).encode()
    s.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
              .encode() + data)
    if stream:
        got = b""
        while b"data: " not in got:
            chunk = s.recv(4096)
            if not chunk:
                break
            got += chunk
    else:
        time.sleep(0.02)
    s.close()


def test_hang_ups(port):
    _, before = metrics(port)
    body = {"model": "model", "prompt": PROMPTS[3], "max_tokens": 480, "ignore_eos": True}
    in_threads([lambda: hang_up(port, "/v1/completions", dict(body, stream=True), True),
                lambda: hang_up(port, "/v1/completions", dict(body, stream=True), True),
                lambda: hang_up(port, "/v1/completions", body, False),
                lambda: hang_up(port, "/v1/chat/completions", {"model": "model", "ignore_eos": True, "stream": True,
                                                               "messages": [{"role": "user", "content": "Hi"}]}, True)])
    deadline = time.time() + 30
    while time.time() < deadline:
        _, m = metrics(port)
        if m["lorac_running"] == 0 and m["lorac_queue_depth"] == 0:
            break
        time.sleep(0.05)
    key = 'lorac_requests_finished_total{reason="cancelled"}'
    cancelled = m[key] - before[key]
    length = m['lorac_requests_finished_total{reason="length"}'] - before['lorac_requests_finished_total{reason="length"}']
    check(cancelled == 4 and length == 0, f"hung-up clients: {cancelled} cancelled, {length} ran to the end")
    check(m["lorac_running"] == 0, "no request left running after the hang-ups")


def test_admin(port, model, adapters, names):
    victim = names[5]
    want = generate(model, os.path.join(adapters, victim), PROMPTS[4], 200)
    body = {"model": victim, "prompt": PROMPTS[4], "max_tokens": 200, "temperature": 0}
    runs = [None] * 4
    ts = [threading.Thread(target=lambda i=i: runs.__setitem__(i, complete(port, dict(body, stream=i % 2 == 0))))
          for i in range(4)]
    for t in ts:
        t.start()
    time.sleep(0.02)
    st, _, data = post(port, "/v1/unload_lora_adapter", {"lora_name": victim})
    unloaded = st == 200 and data.decode() == f"Success: LoRA adapter '{victim}' removed successfully."
    # not loaded any more (or the requests had not loaded it yet): 404 either way the second time
    st2, _, _ = post(port, "/v1/unload_lora_adapter", {"lora_name": victim})
    check(st2 == 404 or not unloaded, f"unload twice: {st2}")
    for t in ts:
        t.join()
    check(all(r["status"] == 200 and r["text"] == want for r in runs),
          f"requests using an adapter unloaded under them finish with it ({unloaded=})")
    again = complete(port, body)
    check(again["status"] == 200 and again["text"] == want, "an unloaded adapter loads again on use")
    st, _, data = post(port, "/v1/load_lora_adapter", {"lora_name": victim})
    check(st == 200 and data.decode() == f"Success: LoRA adapter '{victim}' added successfully.", f"load: {st} {data}")
    st, _, data = post(port, "/v1/load_lora_adapter",
                       {"lora_name": victim, "lora_path": os.path.join(adapters, ".", victim)})
    check(st == 200, f"load with lora_path = ADAPTERS/name: {st} {data}")
    for bad_path in ["/tmp", os.path.join(adapters, names[0]), os.path.join(TMP, "late"), "relative/x"]:
        st, _, data = post(port, "/v1/load_lora_adapter", {"lora_name": victim, "lora_path": bad_path})
        check(st == 400 and json.loads(data)["error"]["param"] == "lora_path", f"lora_path {bad_path}: {st}")
    # a new adapter copied in while serving: load by name, use, unload
    shutil.copytree(os.path.join(TMP, "late"), os.path.join(adapters, "late"))
    st, _, _ = post(port, "/v1/load_lora_adapter", {"lora_name": "late"})
    check(st == 200, "load a new adapter")
    r = complete(port, {"model": "late", "prompt": PROMPTS[5], "max_tokens": 30, "temperature": 0})
    check(r["status"] == 200 and r["text"] == generate(model, os.path.join(adapters, "late"), PROMPTS[5], 30),
          "the new adapter answers as generate does")
    st, _, data = request(port, "GET", "/v1/models")
    check("late" in [m["id"] for m in json.loads(data)["data"]], "the new adapter is listed")
    st, _, _ = post(port, "/v1/unload_lora_adapter", {"lora_name": "late"})
    check(st == 200, "unload the new adapter")


def mutate(rng, s):
    b = bytearray(s)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(5)
        if op == 0 and b:
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 1 and b:
            del b[rng.randrange(len(b)):]
        elif op == 2:
            b[rng.randrange(len(b) + 1):0] = rng.choice([b'"', b"{", b"[", b"]", b"}", b",", b":", b"null", b"-1",
                                                          b"1e308", b"\\u", b"\xff", b"\xc3", b"true", b"9" * 30])
        elif op == 3 and len(b) > 2:
            i = rng.randrange(len(b))
            b[i:i] = b[rng.randrange(len(b)):][:rng.randint(1, 20)]
        else:
            b = bytearray(rng.randbytes(rng.randint(0, 64)))
    return bytes(b)


def test_fuzz(port, seconds):
    rng = random.Random(1234)
    seeds = [json.dumps(b).encode() for b in [
        {"model": "model", "prompt": "Once", "max_tokens": 4, "temperature": 0},
        {"model": "a1-r8", "prompt": [1, 2, 3], "max_tokens": 3, "stream": True, "n": 2},
        {"model": "model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stop": ["x"]},
        {"lora_name": "a0-r4"}]]
    paths = ["/v1/completions", "/v1/chat/completions", "/v1/models", "/health", "/metrics", "/v1/load_lora_adapter",
             "/v1/unload_lora_adapter", "/", "/v1", "/v1/completions/x", "/%00", "/" + "a" * 300, "/v1/models?x=1"]
    end, n, statuses, bad = time.time() + seconds, 0, {}, []
    while time.time() < end:
        method = rng.choice(["POST"] * 6 + ["GET", "PUT", "DELETE", "OPTIONS"])
        path = rng.choice(paths)
        body = mutate(rng, rng.choice(seeds))
        try:
            st, _, data = request(port, method, path, body, timeout=60)
        except (ConnectionError, http.client.HTTPException, socket.timeout) as e:
            bad.append((method, path, body, repr(e)))
            continue
        n += 1
        statuses[st] = statuses.get(st, 0) + 1
        if st >= 400 and method != "HEAD" and not is_error_object(data, st):
            bad.append((method, path, body, st, data[:200]))
    check(not bad, f"fuzz: {len(bad)} bad answers, e.g. {bad[:3]}")
    check(n > 20, f"fuzz: only {n} requests")
    print(f"fuzz: {n} requests in {seconds}s, statuses {dict(sorted(statuses.items()))}", flush=True)
    st, _, _ = request(port, "GET", "/health")
    check(st == 200, "health after the fuzz loop")


def test_metrics(port):
    st, m = metrics(port)
    check(st == 200, "metrics")
    fin = sum(v for k, v in m.items() if k.startswith("lorac_requests_finished_total"))
    check(m["lorac_requests_total"] >= 30 and fin == m["lorac_requests_total"], f"finished {fin} of {m['lorac_requests_total']}")
    check(m['lorac_request_latency_seconds_bucket{le="+Inf"}'] == m["lorac_request_latency_seconds_count"] == fin,
          "latency histogram counts every finished request")
    buckets = [v for k, v in m.items() if k.startswith("lorac_request_latency_seconds_bucket")]
    check(buckets == sorted(buckets), "histogram buckets are cumulative")
    check(m["lorac_requests_rejected_total"] >= 1 and m["lorac_completion_tokens_total"] > 0 and
          m["lorac_prompt_tokens_total"] > 0, "counters")
    check(m['lorac_http_responses_total{code="400"}'] >= len([b for b in BAD if b[3] == 400]), "HTTP status counts")


def test_second_server(model):
    plain = os.path.join(TMP, "plain-model")
    shutil.copytree(model, plain)
    os.remove(os.path.join(plain, "tokenizer_config.json"))
    # this one keeps its KV cache in bf16: its greedy completions are generate's with the same cache
    s = Server(["-m", plain, "--served-model-name", "tiny", "--kv-cache-dtype", "bf16"], os.path.join(TMP, "server2.log"))
    try:
        r = complete(s.port, {"model": "tiny", "prompt": PROMPTS[1], "max_tokens": 24, "temperature": 0})
        want = generate(plain, None, PROMPTS[1], 24, ["--kv-cache-dtype", "bf16"])
        check(r["status"] == 200 and r["text"] == want, f"bf16 KV cache: serve {r.get('text')!r}, generate {want!r}")
        check(re.search(r"KV cache [0-9.]+ MB, BF16", open(os.path.join(TMP, "server2.log")).read()) is not None,
              "the start line names the KV cache's size and dtype")
        st, _, data = post(s.port, "/v1/load_lora_adapter", {"lora_name": "x"})
        check(st == 404 and is_error_object(data, st), f"admin endpoints off without --allow-admin: {st}")
        st, _, data = post(s.port, "/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "x"}]})
        check(st == 400 and "chat template" in json.loads(data)["error"]["message"], f"chat without a template: {st}")
        r = complete(s.port, {"model": "tiny", "prompt": "Once", "max_tokens": 5})
        check(r["status"] == 200 and r["object"]["model"] == "tiny", "--served-model-name")
        st, _, data = post(s.port, "/v1/completions", {"model": "model", "prompt": "Once"})
        check(st == 404, "the directory name is not the served name")
        check(len(json.loads(request(s.port, "GET", "/v1/models")[2])["data"]) == 1, "no adapters, one model")
    finally:
        rc = s.stop(signal.SIGINT)
    check(rc == 0, f"SIGINT: exit {rc}")


def test_qwen3_server():
    """A random Qwen3-architecture model with SmolLM2's tokenizer (the same
    <|im_start|> and <|im_end|>) served with the qwen3 template and
    --chat-template-kwargs '{"enable_thinking": false}': requests that do
    not say get the closed empty thinking block after the generation
    prompt, chat_template_kwargs overrides it, a malformed one is 400."""
    d = os.path.join(TMP, "qwen3")
    tok = os.path.join(FIX, "tokenizers", "smollm2-360m-instruct-ft", "tokenizer.json")
    hf_model.make_random_model(d, dict(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=4,
                                       num_key_value_heads=2, head_dim=16, vocab_size=49168), arch="qwen3", tie=True,
                               seed=5, tokenizer_json=tok)
    s = Server(["-m", d, "--served-model-name", "q3", "--chat-template", "qwen3", "--chat-template-kwargs",
                '{"enable_thinking": false}'], os.path.join(TMP, "server3.log"))
    try:
        msgs = [{"role": "user", "content": "Hi there"}]
        head = "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
        for kwargs, text in ((None, head + "<think>\n\n</think>\n\n"), ({"enable_thinking": True}, head),
                             ({"enable_thinking": False, "other": 1}, head + "<think>\n\n</think>\n\n")):
            want = [int(x) for x in subprocess.run([BIN, "tokenize", "-m", d, "--no-special", "-p", text],
                                                   capture_output=True, text=True, check=True).stdout.split()]
            body = {"messages": msgs}
            if kwargs is not None:
                body["chat_template_kwargs"] = kwargs
            st, _, data = post(s.port, "/tokenize", body)
            check(st == 200 and json.loads(data)["tokens"] == want, f"qwen3 /tokenize with {kwargs}: {data[:200]}")
            r = complete(s.port, dict(body, model="q3", max_tokens=3, temperature=0))
            check(r["status"] == 200 and r["object"]["usage"]["prompt_tokens"] == len(want),
                  f"qwen3 chat with {kwargs}: {r.get('status')} {r.get('object')}")
        st, _, data = post(s.port, "/v1/chat/completions",
                           {"model": "q3", "messages": msgs, "chat_template_kwargs": {"enable_thinking": "no"}})
        check(st == 400 and json.loads(data)["error"]["param"] == "chat_template_kwargs", f"bad kwargs: {st} {data}")
    finally:
        rc = s.stop()
    check(rc == 0, f"qwen3 server: exit {rc}")


def test_gemma3_server():
    """A random Gemma 3 model with SmolLM2's tokenizer plus Gemma's <bos>,
    <eos>, <start_of_turn> and <end_of_turn> as special tokens, and a
    tokenizer_config.json holding Gemma 3's chat template: the server
    recognises the template itself, folds the system message into the first
    user turn as Gemma 3's Jinja does, and answers."""
    d = os.path.join(TMP, "gemma3")
    hf_model.make_random_model(d, dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=1, head_dim=16, vocab_size=49168, sliding_window=8,
                                       sliding_window_pattern=2), arch="gemma3", tie=True, seed=6)
    with open(os.path.join(FIX, "tokenizers", "smollm2-360m-instruct-ft", "tokenizer.json"), encoding="utf-8") as f:
        tj = json.load(f)
    for i, t in enumerate(["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"]):
        tj["added_tokens"].append({"id": 49153 + i, "content": t, "single_word": False, "lstrip": False,
                                   "rstrip": False, "normalized": False, "special": True})
    with open(os.path.join(d, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False)
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "data", "chat", "templates", "gemma3.jinja"), encoding="utf-8") as f:
        template = f.read()
    with open(os.path.join(d, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump({"bos_token": "<bos>", "eos_token": "<eos>", "chat_template": template}, f)
    s = Server(["-m", d, "--served-model-name", "g3"], os.path.join(TMP, "server-gemma3.log"))
    try:
        msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hi there "}]
        text = "<bos><start_of_turn>user\nBe brief.\n\nHi there<end_of_turn>\n<start_of_turn>model\n"
        want = [int(x) for x in subprocess.run([BIN, "tokenize", "-m", d, "--no-special", "-p", text],
                                               capture_output=True, text=True, check=True).stdout.split()]
        check(want[0] == 49153 and want.count(49155) == 2 and 49156 in want, f"gemma3 prompt ids {want}")
        st, _, data = post(s.port, "/tokenize", {"messages": msgs})
        check(st == 200 and json.loads(data)["tokens"] == want, f"gemma3 /tokenize: {st} {data[:300]}")
        r = complete(s.port, {"model": "g3", "messages": msgs, "max_tokens": 3, "temperature": 0})
        check(r["status"] == 200 and r["object"]["usage"]["prompt_tokens"] == len(want),
              f"gemma3 chat: {r.get('status')} {r.get('object')}")
        st, _, data = post(s.port, "/v1/chat/completions",
                           {"model": "g3", "messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]})
        check(st == 400 and b"alternate" in data, f"gemma3 two user turns: {st} {data[:300]}")
    finally:
        rc = s.stop()
    check(rc == 0, f"gemma3 server: exit {rc}")


def test_prefix_cache(model, adapters, names):
    """The prefix cache: a request whose prompt starts as a finished one's did takes that slot and decodes only
    the rest (lorac_prompt_tokens_cached_total counts the tokens it did not decode), and its reply is still what
    `lorac generate` gives for the whole prompt (itself checked against PyTorch). Not reused: a cache made on
    another adapter, or on the same adapter unloaded and loaded again (its files may have changed), or for a
    request that wants every prompt token's log-probabilities; and nothing with --no-prefix-cache."""
    def cached(port):
        return metrics(port)[1].get("lorac_prompt_tokens_cached_total", -1)

    s = Server(["-m", model, "--adapters", adapters, "--allow-admin", "--max-seqs", "2", "--batch", "16"],
               os.path.join(TMP, "server-prefix.log"))
    try:
        first = complete(s.port, {"model": "model", "prompt": PROMPTS[0], "max_tokens": 24, "temperature": 0})
        c0 = cached(s.port)
        check(first["status"] == 200 and c0 == 0, f"prefix cache: a fresh server reuses nothing ({c0})")
        turn = PROMPTS[0] + first["text"] + " Then"  # the conversation goes on: the previous prompt and reply first
        n_first = first["usage"]["prompt_tokens"]
        r = complete(s.port, {"model": "model", "prompt": turn, "max_tokens": 16, "temperature": 0})
        c1 = cached(s.port)
        check(r["status"] == 200 and r["text"] == generate(model, None, turn, 16),
              f"prefix cache: the next turn {r.get('text')!r} is generate's")
        check(c1 - c0 >= n_first, f"prefix cache: {c1 - c0} tokens reused, at least the first prompt's {n_first}")
        # the same prompt again: all but its last token are reused
        again = complete(s.port, {"model": "model", "prompt": turn, "max_tokens": 16, "temperature": 0})
        c2 = cached(s.port)
        check(again.get("text") == r["text"] and c2 - c1 == r["usage"]["prompt_tokens"] - 1,
              f"prefix cache: the same prompt again reuses {c2 - c1} of {r['usage']['prompt_tokens']} tokens")
        # OpenAI's usage.prompt_tokens_details.cached_tokens says so too, whole and streamed
        streamed = complete(s.port, {"model": "model", "prompt": turn, "max_tokens": 16, "temperature": 0,
                                     "stream": True, "stream_options": {"include_usage": True}})
        c2 = cached(s.port)
        details = [first["usage"]["prompt_tokens_details"]["cached_tokens"],
                   again["usage"]["prompt_tokens_details"]["cached_tokens"],
                   streamed["events"][-1]["usage"]["prompt_tokens_details"]["cached_tokens"]]
        n_turn = r["usage"]["prompt_tokens"]
        check(details == [0, n_turn - 1, n_turn - 1] and streamed["text"] == r["text"],
              f"prefix cache: cached_tokens in usage {details}, want [0, {n_turn - 1}, {n_turn - 1}]")
        # on an adapter: none of the base model's caches
        a = complete(s.port, {"model": names[2], "prompt": turn, "max_tokens": 16, "temperature": 0})
        c3 = cached(s.port)
        check(a["status"] == 200 and a["text"] == generate(model, os.path.join(adapters, names[2]), turn, 16) and
              c3 == c2, f"prefix cache: another adapter reuses {c3 - c2} tokens of the base model's")
        b = complete(s.port, {"model": names[2], "prompt": turn, "max_tokens": 16, "temperature": 0})
        c4 = cached(s.port)
        check(b.get("text") == a["text"] and c4 > c3, f"prefix cache: the same adapter's prompt again reuses {c4 - c3}")
        # unloaded and loaded again: a new adapter as far as the cache knows
        st, _, _ = post(s.port, "/v1/unload_lora_adapter", {"lora_name": names[2]})
        st2, _, _ = post(s.port, "/v1/load_lora_adapter", {"lora_name": names[2]})
        b2 = complete(s.port, {"model": names[2], "prompt": turn, "max_tokens": 16, "temperature": 0})
        c5 = cached(s.port)
        check(st == 200 and st2 == 200 and b2.get("text") == a["text"] and c5 == c4,
              f"prefix cache: a reloaded adapter reuses {c5 - c4} tokens of its earlier load's cache")
        # two choices of one new prompt: the second waits for the first's prefill and copies it (all but the
        # prompt's last 8 tokens at most); both are generate's text
        fresh = PROMPTS[3] + " " + first["text"] + PROMPTS[4] + first["text"]
        c_before = cached(s.port)
        two = complete(s.port, {"model": "model", "prompt": fresh, "max_tokens": 12, "temperature": 0, "n": 2})
        c_after = cached(s.port)
        n_fresh = two["usage"]["prompt_tokens"] if two["status"] == 200 else 0
        texts = [c_["text"] for c_ in two["object"]["choices"]] if two["status"] == 200 else []
        want2 = generate(model, None, fresh, 12)
        check(texts == [want2, want2] and c_after - c_before >= n_fresh - 8 and n_fresh > 40,
              f"prefix cache, n=2: {c_after - c_before} of {n_fresh} reused, texts {texts} vs {want2!r}")
        # every prompt token's log-probabilities: the prompt is decoded whole
        c5 = cached(s.port)
        e = complete(s.port, {"model": "model", "prompt": turn, "max_tokens": 1, "temperature": 0, "echo": True,
                              "logprobs": 1})
        c6 = cached(s.port)
        check(e["status"] == 200 and c6 == c5, f"prefix cache: an echo request with logprobs reused {c6 - c5}")
    finally:
        rc = s.stop()
    check(rc == 0, f"prefix cache server: exit {rc}")
    s = Server(["-m", model, "--max-seqs", "2", "--no-prefix-cache"], os.path.join(TMP, "server-noprefix.log"))
    try:
        for _ in range(2):
            r2 = complete(s.port, {"model": "model", "prompt": turn, "max_tokens": 16, "temperature": 0})
            check(r2.get("text") == r["text"], f"--no-prefix-cache: {r2.get('text')!r}")
        r3 = complete(s.port, {"model": "model", "prompt": turn, "max_tokens": 16, "temperature": 0, "n": 2})
        check(r3["status"] == 200 and [c_["text"] for c_ in r3["object"]["choices"]] == [r["text"], r["text"]],
              f"--no-prefix-cache, n=2: {r3}")
        check(cached(s.port) == 0, "--no-prefix-cache: nothing reused, nor copied")
    finally:
        rc = s.stop()
    check(rc == 0, f"--no-prefix-cache server: exit {rc}")


def test_phi3_server():
    """A random Phi-3 model with longrope switching past 8 positions, TinyLlama's tokenizer and Phi-3.5's chat
    template: greedy replies equal the reference recomputing the whole sequence at each step, whose factors follow
    the sequence's length, as transformers' generate gives them (it recomputes the cache when the sequence grows
    past the switch; so does the engine, for that one sequence, while others decode beside it): a prompt of 5
    tokens with 6 more crosses the switch, and differs from the long factors throughout (what the server gave
    before it recomputed) and from the short ones throughout; with 2 more it stays within. Two requests crossing
    at different steps run side by side, one of them beside a long prompt fed in pieces (--batch 4)."""
    import torch  # noqa: F401 (hf_model's forward)
    d = os.path.join(TMP, "phi3")
    c, w = hf_model.make_random_model(d, dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                              num_attention_heads=4, num_key_value_heads=2, vocab_size=32000,
                                              partial_rotary_factor=0.5, max_position_embeddings=64,
                                              original_max_position_embeddings=8,
                                              rope_scaling={"type": "longrope", "short_factor": [1.0, 1.7],
                                                            "long_factor": [3.0, 8.0]}),
                                      arch="phi3", seed=8,
                                      tokenizer_json=os.path.join(FIX, "tokenizers", "tinyllama-1.1b-chat-v1.0",
                                                                  "tokenizer.json"))

    def ids_of(text):
        return [int(x) for x in subprocess.run([BIN, "tokenize", "-m", d, "-p", text], capture_output=True,
                                               text=True, check=True).stdout.split()]

    def greedy(prompt, n, rope_len=None):
        ids = list(prompt)
        for _ in range(n):
            ids.append(int(hf_model.llama_forward(w, c, ids, rope_len=rope_len)[-1].argmax()))
        return ids[len(prompt):]

    def text_of(ids):
        return subprocess.run([BIN, "tokenize", "-m", d, "--decode", " ".join(map(str, ids))], capture_output=True,
                              text=True, check=True).stdout.rstrip("\n")

    prompt, other = ids_of("Once upon a time"), ids_of("The little dog")
    check(len(prompt) == 5, f"phi3: prompt of {len(prompt)} tokens")
    check(greedy(prompt, 6) != greedy(prompt, 6, 1000) and greedy(prompt, 6) != greedy(prompt, 6, 1),
          "phi3 longrope: the switch must change this reply")
    s = Server(["-m", d, "--served-model-name", "phi", "--batch", "4"], os.path.join(TMP, "server-phi3.log"))
    try:
        for n in (6, 2):  # 5 + 6 > 8: across the switch; 5 + 2 <= 8: within it
            r = complete(s.port, {"model": "phi", "prompt": prompt, "max_tokens": n, "temperature": 0})
            got = r["object"]["choices"][0]["text"] if r["status"] == 200 else None
            want = text_of(greedy(prompt, n))
            # a reply decoded alone loses SentencePiece's leading space
            check(got is not None and got.lstrip(" ") == want, f"phi3 longrope, max_tokens {n}: {got!r}, the reference {want!r}")
        # side by side: prompts of 5 and 4 tokens cross at different steps, a 12-token prompt (past the switch
        # from the start) is fed 4 tokens a step beside them
        long_prompt = (prompt + other + prompt)[:12]
        jobs = [(prompt, 7), (other, 8), (long_prompt, 3)]
        with concurrent.futures.ThreadPoolExecutor(len(jobs)) as ex:
            futs = [ex.submit(complete, s.port, {"model": "phi", "prompt": p, "max_tokens": n, "temperature": 0})
                    for p, n in jobs]
            got = [f.result() for f in futs]
        for (p, n), r in zip(jobs, got):
            text = r["object"]["choices"][0]["text"] if r["status"] == 200 else None
            want = text_of(greedy(p, n))
            check(text is not None and text.lstrip(" ") == want,
                  f"phi3 longrope side by side ({len(p)} + {n} tokens): {text!r}, the reference {want!r}")
    finally:
        rc = s.stop()
    check(rc == 0, f"phi3 server: exit {rc}")


def main():
    if not BIN or not FIX:
        print("LORAC_BIN and LORAC_FIXTURES must be set")
        return 1
    t0 = time.time()
    model, adapters, names, _ = setup()
    srv = Server(["-m", model, "--adapters", adapters, "--allow-admin", "--max-seqs", "4", "--max-queue", "12",
                  "--max-loras", "8", "--max-body", "65536", "--batch", "64"], os.path.join(TMP, "server.log"))
    try:
        for name, fn in [("concurrent", lambda: test_concurrent(srv.port, model, adapters, names)),
                         ("features", lambda: test_features(srv.port, model, names)),
                         ("bad requests", lambda: test_bad_requests(srv.port, model)),
                         ("hang-ups", lambda: test_hang_ups(srv.port)),
                         ("admin", lambda: test_admin(srv.port, model, adapters, names)),
                         ("fuzz", lambda: test_fuzz(srv.port, 2 if SANITIZED else 4)),
                         ("metrics", lambda: test_metrics(srv.port))]:
            t = time.time()
            fn()
            print(f"{name}: {time.time() - t:.1f}s", flush=True)
    finally:
        t = time.time()
        rc = srv.stop()
        check(rc == 0, f"SIGTERM: exit {rc}")
        print(f"shutdown: {time.time() - t:.1f}s", flush=True)
    test_second_server(model)
    test_prefix_cache(model, adapters, names)
    test_qwen3_server()
    test_gemma3_server()
    test_phi3_server()
    print(f"total {time.time() - t0:.1f}s")
    print(f"{passed} passed, {failed} failed")
    if failed:
        for log in ("server.log", "server2.log", "server3.log", "server-gemma3.log", "server-phi3.log",
                    "server-prefix.log", "server-noprefix.log"):
            path = os.path.join(TMP, log)
            if os.path.exists(path):
                lines = open(path, errors="replace").read().splitlines()
                print(f"---- {path} (last 80 lines) ----\n" + "\n".join(lines[-80:]))
    else:
        shutil.rmtree(TMP, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
