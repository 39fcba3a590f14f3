#!/usr/bin/env bash
# lorac generate --chat: the prompt becomes a user message rendered with the
# model's chat template (SmolLM2's real tokenizer files), the prompt's ids
# equal those of the rendering written out here by hand (as SmolLM2's Jinja
# template renders it) and tokenized on its own, only the reply is printed,
# and the reply stops at the template's end of turn (<|im_end|>) although
# the model's EOS is another token, in generate and in serve's chat
# completions. The model is random except that its
# head always predicts <|im_end|>: every residual stream carries a large
# constant in dimension 0, and only <|im_end|>'s row of the head reads it.
# --chat -i (a conversation on stdin) answers its first turn as generate
# --chat does and its second as serve does for the same messages, and
# reuses only the cached prefix that the re-rendered conversation shares.
set -uo pipefail
ref="$(cd "$(dirname "$0")/reference" && pwd)"
. "$(dirname "$0")/testlib.sh" generate-chat
cd "$tmp"
smol="$LORAC_FIXTURES/tokenizers/smollm2-360m-instruct-ft"

PYTHONPATH="$ref" $PY - "$smol" <<'PYEOF' || { echo "model setup failed"; echo "0 passed, 1 failed"; exit 1; }
import json, os, shutil, sys, torch
import hf_model as hm
smol = sys.argv[1]
cfg = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=49153,
           bos_token_id=1, eos_token_id=0)  # EOS <|endoftext|>, not the end of turn <|im_end|> (2)
c = hm.make_config(cfg)
w = hm.random_weights(c, seed=3)
w["model.embed_tokens.weight"][:, 0] = 50.0   # a constant the layers cannot cancel
w["model.norm.weight"][:] = 1.0
head = 0.01 * torch.randn(49153, 16, generator=torch.Generator().manual_seed(4))
head[:, 0] = 0.0
head[2, 0] = 1.0                              # only <|im_end|> reads it
w["lm_head.weight"] = head
os.makedirs("m")
json.dump(c, open("m/config.json", "w"))
hm.save_safetensors("m/model.safetensors", w, metadata={"format": "pt"})
shutil.copyfile(os.path.join(smol, "tokenizer.json"), "m/tokenizer.json")
shutil.copyfile(os.path.join(smol, "chat_template.jinja"), "m/chat_template.jinja")
tc = json.load(open(os.path.join(smol, "tokenizer_config.json")))
tc["eos_token"] = "<|endoftext|>"
json.dump(tc, open("m/tokenizer_config.json", "w"))
# m2: the same, but its head always predicts two spaces ("ĠĠ"), whose run
# re-tokenizes otherwise once rendered back into the conversation
vocab = json.load(open(os.path.join(smol, "tokenizer.json")))["model"]["vocab"]
shutil.copytree("m", "m2")
head2 = head.clone()
head2[2, 0] = 0.0
head2[vocab["\u0120\u0120"], 0] = 1.0
w["lm_head.weight"] = head2
hm.save_safetensors("m2/model.safetensors", w, metadata={"format": "pt"})
PYEOF

prompt_tokens() { sed -n 's/^prompt: \([0-9]*\) tokens.*/\1/p' "$1"; }
count_ids() { "$L" tokenize -m "$1" --no-special -p "$2" | wc -w; }

# 1. the reply stops at <|im_end|> at once: nothing printed, stop reason named
out=$("$L" generate -m m --chat -p "Hi" --temp 0 -n 5 2> e1.log); rc=$?
[ $rc -eq 0 ] && [ -z "$out" ] && grep -q "generate: 1 tokens.*stop: end of turn" e1.log && ok \
  || bad "--chat: exit $rc, stdout '$out', $(tail -1 e1.log)"
# the prompt is SmolLM2's rendering with its default system message and the generation prompt
want=$(count_ids m $'<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n')
[ "$(prompt_tokens e1.log)" = "$want" ] && [ "$want" -gt 20 ] && ok || bad "--chat prompt: $(prompt_tokens e1.log) tokens, want $want"
# --system replaces the default one
"$L" generate -m m --chat --system "Be brief." -p "Hi" --temp 0 -n 5 > /dev/null 2> e2.log || bad "--system failed"
want=$(count_ids m $'<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n')
[ "$(prompt_tokens e2.log)" = "$want" ] && ok || bad "--system prompt: $(prompt_tokens e2.log) tokens, want $want"

# 2. without --chat the end-of-turn token is text like any other: only -n stops it
out=$("$L" generate -m m -p "Hi" --temp 0 -n 3 2> e3.log); rc=$?
[ $rc -eq 0 ] && [ "$out" = "Hi<|im_end|><|im_end|><|im_end|>" ] && grep -q "stop: length" e3.log && ok \
  || bad "plain generate: exit $rc, stdout '$out', $(tail -1 e3.log)"
[ "$(prompt_tokens e3.log)" = "$(count_ids m Hi)" ] && ok || bad "plain prompt: $(prompt_tokens e3.log) tokens"
# --ignore-eos goes past the end of turn too
"$L" generate -m m --chat -p "Hi" --temp 0 -n 3 --ignore-eos > /dev/null 2> e4.log && grep -q "generate: 3 tokens.*stop: length" e4.log \
  && ok || bad "--chat --ignore-eos: $(tail -1 e4.log)"

# 3. errors
expect() { # CODE SUBSTRING ARGS...
  local code=$1 substr=$2; shift 2
  local out rc
  out=$("$L" generate "$@" 2>&1 >/dev/null); rc=$?
  [ $rc -eq "$code" ] && [[ "$out" == *"$substr"* ]] && ok || bad "generate $*: exit $rc, '$out' (want $code, '$substr')"
}
expect 2 "unknown --chat-template 'bogus'" -m m --chat --chat-template bogus -p Hi
expect 2 "--system, --chat-template, --chat-template-kwargs and --interactive go with --chat" -m m --system x -p Hi
expect 2 "--chat-template-kwargs: chat template variables must be a JSON object" -m m --chat --chat-template-kwargs enable_thinking=false -p Hi
expect 2 "\"enable_thinking\" must be true or false" -m m --chat --chat-template-kwargs '{"enable_thinking": "no"}' -p Hi
# qwen3 with thinking turned off (llama.cpp's --chat-template-kwargs): the generation prompt closes an
# empty thinking block, which chatml ignores
"$L" generate -m m --chat --chat-template qwen3 --chat-template-kwargs '{"enable_thinking": false}' -p "Hi" --temp 0 -n 2 \
  > /dev/null 2> e7.log || bad "qwen3 --chat-template-kwargs failed: $(tail -1 e7.log)"
want=$(count_ids m $'<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n')
[ "$(prompt_tokens e7.log)" = "$want" ] && ok || bad "qwen3 no-thinking prompt: $(prompt_tokens e7.log) tokens, want $want"
"$L" generate -m m --chat --chat-template chatml --chat-template-kwargs '{"enable_thinking": false}' --system "Be brief." \
  -p "Hi" --temp 0 -n 2 > /dev/null 2> e8.log || bad "chatml --chat-template-kwargs failed: $(tail -1 e8.log)"
[ "$(prompt_tokens e8.log)" = "$(prompt_tokens e2.log)" ] && ok || bad "chatml ignores enable_thinking: $(prompt_tokens e8.log) tokens"
expect 1 "lorac: error: chat template llama-3 writes \"<|start_header_id|>\", which is not a single token" -m m --chat --chat-template llama-3 -p Hi
"$L" convert --from llama2c "$LORAC_FIXTURES/llama2c/stories260K.bin" --tokenizer "$LORAC_FIXTURES/llama2c/tok512.bin" -o s 2>/dev/null \
  || bad convert
expect 1 "no tokenizer_config.json to find the chat template in; pass --chat-template" -m s --chat -p Hi
# stories260K with zephyr: the reply alone, greedy, as many tokens as asked
out=$("$L" generate -m s --chat --chat-template zephyr -p "Tell me a story." --temp 0 -n 12 2> e5.log); rc=$?
[ $rc -eq 0 ] && [ -n "$out" ] && [[ "$out" != *"<|"* ]] && [[ "$out" != " "* ]] && ok || bad "zephyr on stories260K: exit $rc, '$out'"
want=$(count_ids s $'<|user|>\nTell me a story.</s>\n<|assistant|>\n')
[ "$(prompt_tokens e5.log)" = "$want" ] && ok || bad "zephyr prompt: $(prompt_tokens e5.log) tokens, want $want"
# Mistral's later [INST] template recognised from a tokenizer_config.json, the
# system message folded into the first turn as its Jinja folds it
$PY -c 'import json, sys; json.dump({"chat_template": open(sys.argv[1]).read(), "bos_token": "<s>", "eos_token": "</s>"}, open("s/tokenizer_config.json", "w"))' \
  "$LORAC_SRC/tests/data/chat/templates/mistral-instruct-v1.jinja"
out=$("$L" generate -m s --chat --system "Be kind." -p "Tell me a story." --temp 0 -n 6 2> e6.log); rc=$?
want=$(count_ids s $'<s> [INST] Be kind.\n\nTell me a story. [/INST]')
[ $rc -eq 0 ] && [ "$(prompt_tokens e6.log)" = "$want" ] && ok \
  || bad "mistral-v1 from tokenizer_config.json: exit $rc, $(prompt_tokens e6.log) prompt tokens, want $want: $(cat e6.log)"
rm s/tokenizer_config.json

# 4. lorac serve ends a chat reply at the same token; a completion goes on
# unless its stop_token_ids name it
tl_serve serve -m m -t 1
if [ -z "$port" ]; then bad "serve did not start: $(cat serve.err)"
else
  $PY - "$port" <<'PYEOF' && ok || bad "serve chat end of turn"
import json, sys, urllib.request
def post(path, body):
    r = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}{path}", json.dumps(body).encode(),
                               {"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(r))
c = post("/v1/chat/completions", {"model": "m", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 5, "temperature": 0})
ch = c["choices"][0]
assert ch["finish_reason"] == "stop" and ch["message"]["content"] == "" and c["usage"]["completion_tokens"] == 1, c
c = post("/v1/completions", {"model": "m", "prompt": "Hi", "max_tokens": 3, "temperature": 0})
ch = c["choices"][0]
assert ch["finish_reason"] == "length" and ch["text"] == "<|im_end|>" * 3, c
# vLLM's stop_token_ids end a completion the same way
c = post("/v1/completions", {"model": "m", "prompt": "Hi", "max_tokens": 3, "temperature": 0, "stop_token_ids": [2]})
ch = c["choices"][0]
assert ch["finish_reason"] == "stop" and ch["text"] == "" and c["usage"]["completion_tokens"] == 1, c
PYEOF
fi
kill "$spid" 2>/dev/null; wait "$spid" 2>/dev/null

# 5. --chat -i: a conversation on stdin. The first reply is generate --chat's;
# the second, decoded after the cached prefix of the re-rendered
# conversation, is what serve answers for the same three messages.
printf 'Tell me a story.\nAnd then?\n' | "$L" generate -m s --chat --chat-template zephyr -i -n 16 --temp 0 > conv.out 2> conv.err \
  || bad "--chat -i failed: $(tail -2 conv.err)"
"$L" generate -m s --chat --chat-template zephyr -p "Tell me a story." -n 16 --temp 0 > one.out 2>/dev/null
grep -q "(0 cached)" conv.err && grep -Eq "prompt [0-9]+ tokens \([1-9][0-9]* cached\)" conv.err && ok \
  || bad "the second turn reused no cache: $(cat conv.err)"
tl_serve serve2 -m s --chat-template zephyr -t 1
$PY - "$port" <<'PYEOF' && ok || bad "--chat -i vs generate --chat and serve"
import json, sys, urllib.request
one = open("one.out", encoding="utf-8").read()
assert one.endswith("\n"), one
reply1 = one[:-1]
body = {"model": "s", "max_tokens": 16, "temperature": 0, "messages": [
    {"role": "user", "content": "Tell me a story."}, {"role": "assistant", "content": reply1},
    {"role": "user", "content": "And then?"}]}
r = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/v1/chat/completions", json.dumps(body).encode(),
                           {"Content-Type": "application/json"})
reply2 = json.load(urllib.request.urlopen(r))["choices"][0]["message"]["content"]
conv = open("conv.out", encoding="utf-8").read()
assert conv == reply1 + "\n" + reply2 + "\n", (conv, reply1, reply2)
PYEOF
kill "$spid" 2>/dev/null; wait "$spid" 2>/dev/null
# a reply that re-tokenizes otherwise: the next turn keeps only the prefix
# the cache and the new rendering share (at most the first turn's prompt)
printf 'Hi\nHo\n' | "$L" generate -m m2 --chat -i -n 4 --temp 0 > sp.out 2> sp.err || bad "m2 -i failed"
first=$(sed -n 's/^> \[prompt \([0-9]*\) tokens (0 cached).*/\1/p' sp.err | head -1)
kept=$(sed -n 's/.*\[prompt [0-9]* tokens (\([0-9]*\) cached).*/\1/p' sp.err | sed -n 2p)
[ "$(cat sp.out)" = $'        \n        ' ] && [ -n "$first" ] && [ -n "$kept" ] && [ "$kept" -le "$first" ] && [ "$kept" -gt 0 ] && ok \
  || bad "re-tokenized reply: first prompt '$first', kept '$kept', stdout '$(cat sp.out)'"
# usage errors
expect 2 "--chat-template-kwargs and --interactive go with --chat" -m s -i
expect 2 "give -p TEXT or -f FILE" -m s --chat

tl_finish
