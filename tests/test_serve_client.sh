#!/usr/bin/env bash
# `lorac serve` through the official OpenAI client for Node (the `openai`
# npm package): models.list, completions and chat completions, whole and
# streamed (with include_usage), and the SDK's error objects for a 404 and a
# 400 -- everything must parse as the SDK expects. The package is installed
# once into a cache outside the repository ($LORAC_NPM_CACHE, default
# ~/.cache/lorac-npm). Without npm the test is skipped, saying so, except
# in CI (CI=true, where `make test` installs npm): there it fails.
set -euo pipefail
: "${LORAC_BIN:?}" "${LORAC_FIXTURES:?LORAC_FIXTURES must point at the shared fixtures}"
if ! command -v npm >/dev/null || ! command -v node >/dev/null; then
  if [ "${CI:-}" = true ]; then
    echo "npm/node not installed, but CI requires the OpenAI Node client test"
    echo "0 passed, 1 failed"
    exit 1
  fi
  echo "SKIP: npm/node not installed (apt-get install npm); the OpenAI Node client test did not run"
  echo "0 passed, 0 failed"
  exit 0
fi
cache="${LORAC_NPM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lorac-npm}"
if [ ! -f "$cache/node_modules/openai/package.json" ]; then
  mkdir -p "$cache"
  npm install --prefix "$cache" --no-audit --no-fund --silent openai@4 >&2
fi

. "$(dirname "$0")/testlib.sh" serve_client
mkdir -p "$tmp/adapters"
spid=""
cleanup() {
  [ -n "$spid" ] && kill "$spid" 2>/dev/null && wait "$spid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

fx="$LORAC_FIXTURES/llama2c"
"$LORAC_BIN" convert --from llama2c "$fx/stories260K.bin" --tokenizer "$fx/tok512.bin" -o "$tmp/model" >/dev/null 2>&1
# TinyLlama's (zephyr) chat template, so /v1/chat/completions works
cat > "$tmp/model/tokenizer_config.json" <<'EOF'
{"bos_token": "<s>", "eos_token": "</s>", "chat_template": "{% for message in messages %}\n{% if message['role'] == 'user' %}\n{{ '<|user|>\n' + message['content'] + eos_token }}\n{% elif message['role'] == 'assistant' %}\n{{ '<|assistant|>\n' + message['content'] + eos_token }}\n{% endif %}\n{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}"}
EOF
# one random r=8 adapter on q/v
PYTHONPATH="$LORAC_SRC/tests/reference" /usr/bin/python3 - "$tmp" <<'EOF'
import json, os, sys
import peft_ref
tmp = sys.argv[1]
c = json.load(open(os.path.join(tmp, "model", "config.json")))
mods = {p: 8 for p in peft_ref.projection_names(c) if p.endswith(("q_proj", "v_proj"))}
peft_ref.write_adapter(os.path.join(tmp, "adapters", "story"), {"r": 8, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"]},
                       peft_ref.lora_tensors(peft_ref.random_lora(c, mods, seed=5)))
EOF

# generate prints the prompt, the text and a newline ("x" keeps $(...) from eating the text's own newlines)
expected=$("$LORAC_BIN" generate -m "$tmp/model" --adapter "$tmp/adapters/story" -p "Once upon a time" --temp 0 -n 24 -t 1 2>/dev/null; printf x)
expected="${expected%$'\n'x}"
expected="${expected#Once upon a time}"

tl_serve "$tmp/serve" -m "$tmp/model" --adapters "$tmp/adapters" -t 1
[ -n "$port" ] || { echo "server did not start"; cat "$tmp/serve.err"; echo "0 passed, 1 failed"; exit 1; }

cat > "$tmp/client.js" <<'EOF'
const path = require("path");
const OpenAI = require(path.join(process.env.NPM_CACHE, "node_modules", "openai"));
const client = new OpenAI({ baseURL: `http://127.0.0.1:${process.env.PORT}/v1`, apiKey: "unused", maxRetries: 0 });
let pass = 0, fail = 0;
function check(cond, what) { if (cond) pass++; else { fail++; console.log("FAIL:", what); } }

(async () => {
  const models = await client.models.list();
  const ids = models.data.map((m) => m.id);
  check(ids[0] === "model" && ids.includes("story"), `models.list: ${ids}`);
  check(models.data.find((m) => m.id === "story").parent === "model", "adapter parent");

  const want = process.env.EXPECTED;
  const c = await client.completions.create({ model: "story", prompt: "Once upon a time", max_tokens: 24, temperature: 0 });
  check(c.object === "text_completion" && c.id.startsWith("cmpl-") && c.model === "story", "completion shape");
  check(c.choices[0].text === want, `completion text ${JSON.stringify(c.choices[0].text)} vs generate ${JSON.stringify(want)}`);
  check(c.usage.total_tokens === c.usage.prompt_tokens + c.usage.completion_tokens, "completion usage");

  let streamed = "", finish = null;
  const s = await client.completions.create({ model: "story", prompt: "Once upon a time", max_tokens: 24, temperature: 0, stream: true });
  for await (const chunk of s) {
    streamed += chunk.choices[0].text;
    if (chunk.choices[0].finish_reason) finish = chunk.choices[0].finish_reason;
  }
  check(streamed === want && (finish === "length" || finish === "stop"), `streamed completion ${JSON.stringify(streamed)} (${finish})`);

  const messages = [{ role: "system", content: "You tell stories." }, { role: "user", content: "Tell me one." }];
  const chat = await client.chat.completions.create({ model: "model", messages, max_tokens: 16, temperature: 0 });
  check(chat.object === "chat.completion" && chat.choices[0].message.role === "assistant" &&
        typeof chat.choices[0].message.content === "string", "chat shape");
  let text = "", usage = null, role = null;
  const cs = await client.chat.completions.create({ model: "model", messages, max_tokens: 16, temperature: 0, stream: true,
                                                    stream_options: { include_usage: true } });
  for await (const chunk of cs) {
    if (chunk.choices.length) {
      if (chunk.choices[0].delta.role) role = chunk.choices[0].delta.role;
      text += chunk.choices[0].delta.content ?? "";
    }
    if (chunk.usage) usage = chunk.usage;
  }
  check(role === "assistant" && text === chat.choices[0].message.content, `streamed chat ${JSON.stringify(text)}`);
  check(usage && usage.completion_tokens === chat.usage.completion_tokens, "streamed chat usage");

  // log-probabilities and the penalties, in the client's own types
  const lc = await client.completions.create({ model: "story", prompt: "Once upon a time", max_tokens: 8, temperature: 0,
                                               logprobs: 2, frequency_penalty: 0.5, presence_penalty: 0.5 });
  const lp = lc.choices[0].logprobs;
  check(lp && lp.tokens.length === 8 && lp.token_logprobs.every((x) => x <= 0) && lp.top_logprobs.length === 8 &&
        lp.tokens.join("") === lc.choices[0].text, `completion logprobs ${JSON.stringify(lp)}`);
  const lchat = await client.chat.completions.create({ model: "model", messages, max_tokens: 8, temperature: 0,
                                                       logprobs: true, top_logprobs: 2 });
  const content = lchat.choices[0].logprobs?.content ?? [];
  check(content.length === lchat.usage.completion_tokens && content.every((x) => x.top_logprobs.length === 2 &&
        Array.isArray(x.bytes)), `chat logprobs ${JSON.stringify(lchat.choices[0].logprobs)}`);

  try {
    await client.completions.create({ model: "no-such-adapter", prompt: "x" });
    check(false, "unknown model accepted");
  } catch (e) {
    check(e instanceof OpenAI.NotFoundError && e.status === 404 && e.code === "model_not_found", `404: ${e}`);
  }
  try {
    await client.chat.completions.create({ model: "model", messages, temperature: 5 });
    check(false, "temperature 5 accepted");
  } catch (e) {
    check(e instanceof OpenAI.BadRequestError && e.status === 400 && e.param === "temperature", `400: ${e}`);
  }
  console.log(`${pass} passed, ${fail} failed`);
  process.exit(fail ? 1 : 0);
})().catch((e) => { console.log("FAIL:", e); console.log(`${pass} passed, ${fail + 1} failed`); process.exit(1); });
EOF
rc=0
NPM_CACHE="$cache" PORT="$port" EXPECTED="$expected" node "$tmp/client.js" || rc=$?
kill -TERM "$spid"
src=0
wait "$spid" || src=$?
spid=""
if [ "$src" -ne 0 ]; then echo "FAIL: lorac serve exited $src on SIGTERM"; cat "$tmp/serve.err"; rc=1; fi
exit "$rc"
