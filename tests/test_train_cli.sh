#!/usr/bin/env bash
# lorac train end to end on the real TinyStories stories260K model:
# held-out loss goes down; the saved adapter, loaded back by `lorac logits`
# and by `lorac eval`, gives the loss training reported; resume is
# bit-identical (mid-epoch, with dropout); kill -9 at random moments always
# leaves a loadable checkpoint; an injected NaN step is skipped with weights
# and moments unchanged; malformed data gives FILE:LINE errors; --eval-split
# holds out part of the data; --columns reads SAMSum.
set -uo pipefail
. "$(dirname "$0")/testlib.sh" train-cli
cd "$tmp"

"$L" convert --from llama2c "$LORAC_FIXTURES/llama2c/stories260K.bin" --tokenizer "$LORAC_FIXTURES/llama2c/tok512.bin" -o m 2>/dev/null || bad convert
# paragraphs of real TinyStories text: the first 400 to train on, the last 50 held out
$PY - "$LORAC_FIXTURES/datasets/tinystories/tinystories_train_head.txt" <<'PYEOF'
import json, sys
paras = [p.strip() for p in open(sys.argv[1], encoding="utf-8").read().split("\n\n") if p.strip()]
with open("train.jsonl", "w") as f:
    for p in paras[:400]: f.write(json.dumps({"text": p}) + "\n")
with open("eval.jsonl", "w") as f:
    for p in paras[-50:]: f.write(json.dumps({"text": p}) + "\n")
with open("one.jsonl", "w") as f:
    f.write(json.dumps({"text": paras[-1]}) + "\n")
open("one.txt", "w").write(paras[-1])
PYEOF

# 1. LoRA training lowers the held-out loss
"$L" train -m m --data train.jsonl --eval-data eval.jsonl -o lora --steps 40 --batch 8 --seq 128 --lr 5e-3 \
  --targets all-linear -t 2 2> lora.log || bad "train failed: $(tail -3 lora.log)"
before=$(sed -n 's/^eval before training: loss \([0-9.]*\).*/\1/p' lora.log)
after=$(sed -n 's/^eval after training: loss \([0-9.]*\).*/\1/p' lora.log)
if [ -n "$before" ] && [ -n "$after" ] && $PY -c "import sys; sys.exit(0 if $after < $before - 0.1 else 1)"; then ok
else bad "held-out loss did not go down: before '$before' after '$after'"; fi
for f in adapter_config.json adapter_model.safetensors metrics.jsonl README.md; do [ -s "lora/$f" ] && ok || bad "no lora/$f"; done
$PY - lora/adapter_config.json <<'PYEOF' && ok || bad "adapter_config.json is not PEFT's"
import json, sys
c = json.load(open(sys.argv[1]))
assert c["peft_type"] == "LORA" and c["r"] == 8 and c["lora_alpha"] == 16 and c["task_type"] == "CAUSAL_LM"
assert sorted(c["target_modules"]) == sorted(["q_proj","k_proj","v_proj","o_proj","gate_proj","up_proj","down_proj"])
assert c["bias"] == "none" and c["use_rslora"] is False
PYEOF
[ "$(wc -l < lora/metrics.jsonl)" -eq 40 ] && ok || bad "metrics.jsonl should have 40 lines"

# 2. the adapter loads back and gives the loss training measured: train a few
# steps with the one held-out example as eval data, then recompute its loss
# from `lorac logits --adapter` (BOS + text + EOS, as the text format builds it)
"$L" train -m m --data train.jsonl --eval-data one.jsonl -o one --steps 5 --batch 4 --seq 256 --lr 5e-3 \
  --targets q_proj,v_proj,down_proj -t 2 2> one.log || bad "train (one) failed"
want=$(sed -n 's/^eval after training: loss \([0-9.]*\).*/\1/p' one.log)
ids="1 $("$L" tokenize -m m -f one.txt --no-special) 2"
"$L" logits -m m --adapter one --ids "$ids" -o one.npy || bad "logits --adapter failed"
got=$($PY - "$ids" <<'PYEOF'
import sys, numpy as np
ids = [int(x) for x in sys.argv[1].split()]
lg = np.load("one.npy").astype(np.float64)
lse = np.log(np.exp(lg - lg.max(1, keepdims=True)).sum(1)) + lg.max(1)
print(np.mean([lse[t] - lg[t, ids[t + 1]] for t in range(len(ids) - 1)]))
PYEOF
)
if [ -n "$want" ] && $PY -c "import sys; sys.exit(0 if abs($got - $want) < 2e-4 else 1)"; then ok
else bad "loss from logits --adapter $got differs from training's eval $want"; fi

# 2a. lorac eval (the inference forward pass) gives the held-out losses that
# training measured (its training pass) for the base and for the adapter
for side in before after; do
  want=$(sed -n "s/^eval $side training: loss \([0-9.]*\).*/\1/p" lora.log)
  adapter=(); [ $side = after ] && adapter=(--adapter lora)
  got=$("$L" eval -m m "${adapter[@]}" --data eval.jsonl --seq 128 --json 2> eval-$side.log \
        | $PY -c "import json, sys; print(json.load(sys.stdin)['loss'])")
  if [ -n "$want" ] && [ -n "$got" ] && $PY -c "import sys; sys.exit(0 if abs($got - $want) < 2e-4 else 1)"; then ok
  else bad "lorac eval $side training: $got, training's eval $want ($(cat eval-$side.log))"; fi
done
# ... and on Alpaca data, whose loss is on the responses only (eval asks
# for no logits at the prompts' positions) or, with --train-on-inputs, on
# every token: training's held-out loss before its one step each time
$PY -c "import json, sys; d = json.load(open(sys.argv[1])); json.dump(d[:40], open('alp-train.json', 'w'));
json.dump(d[40:70], open('alp-eval.json', 'w'))" "$LORAC_FIXTURES/datasets/alpaca/alpaca_data_1k.json"
for inputs in "" --train-on-inputs; do
  "$L" train -m m --data alp-train.json --eval-data alp-eval.json $inputs -o alp --steps 1 --batch 4 --seq 256 \
    2> alp.log || bad "alpaca train $inputs: $(tail -2 alp.log)"
  want=$(sed -n "s/^eval before training: loss \([0-9.]*\).*/\1/p" alp.log)
  got=$("$L" eval -m m --data alp-eval.json $inputs --seq 256 --json 2> alp-eval.log \
        | $PY -c "import json, sys; print(json.load(sys.stdin)['loss'])")
  if [ -n "$want" ] && [ -n "$got" ] && $PY -c "import sys; sys.exit(0 if abs($got - $want) < 2e-4 else 1)"; then ok
  else bad "lorac eval of Alpaca data ${inputs:-(responses)}: $got, training's eval $want ($(cat alp-eval.log))"; fi
done
out=$("$L" eval -m m --data eval.jsonl --format chat --chat-template zephyr 2>&1 >/dev/null); rc=$?
[ $rc -eq 1 ] && [[ "$out" == *"eval.jsonl:1: missing \"messages\""* ]] && ok || bad "eval of text as chat: $rc '$out'"

# 2b. lorac merge: the merged model's logits equal base + adapter unmerged
"$L" merge -m m --adapter lora -o merged 2> merge.log || bad "merge failed: $(cat merge.log)"
for f in config.json model.safetensors tokenizer.json; do [ -s "merged/$f" ] && ok || bad "merge wrote no $f"; done
"$L" logits -m merged --ids "$ids" -o merged.npy && "$L" logits -m m --adapter lora --ids "$ids" -o unmerged.npy || bad "logits"
$PY -c "
import numpy as np, sys
a, b = np.load('merged.npy'), np.load('unmerged.npy')
d = np.abs(a - b).max() / np.abs(b).max()
print('merged vs unmerged max rel diff %.2e' % d)
sys.exit(0 if d <= 1e-5 else 1)" && ok || bad "merged logits differ from unmerged"
grep -q "largest |dW| per module kind: q_proj" merge.log && ok || bad "merge did not report |dW|"

# 3. resume is bit-identical, mid-epoch (400 examples / batch 4 = 100 batches), with dropout
A="-m m --data train.jsonl --steps 30 --batch 4 --seq 64 --lr 5e-3 --targets all-linear --dropout 0.1 --save-every 10 -t 2"
"$L" train $A -o ra 2>/dev/null || bad "train ra"
"$L" train $A -o rb 2>/dev/null || bad "train rb"
rm -rf rb/checkpoint-20 rb/checkpoint-30 rb/adapter_model.safetensors
"$L" train $A -o rb --resume 2> rb.log || bad "resume failed"
grep -q "continuing from rb/checkpoint-10" rb.log && ok || bad "did not resume from checkpoint-10: $(cat rb.log | head -3)"
cmp -s ra/adapter_model.safetensors rb/adapter_model.safetensors && ok || bad "resumed adapter differs"
diff <(cut -d, -f1-3 ra/metrics.jsonl) <(cut -d, -f1-3 rb/metrics.jsonl) >/dev/null && ok || bad "resumed losses differ"

# 4. kill -9 at random moments (many land inside checkpoint writes): the
# latest checkpoint is always whole and training resumes from it
K="-m m --data train.jsonl --steps 400 --batch 2 --seq 32 --lr 1e-3 --save-every 1 -t 1"
kills=0; resumed=0
for i in $(seq 1 12); do
  "$L" train $K -o kk --resume >/dev/null 2>&1 &
  pid=$!
  sleep "0.$((RANDOM % 9 + 1))"
  kill -9 $pid 2>/dev/null && kills=$((kills + 1))
  wait $pid 2>/dev/null
done
"$L" train ${K/--steps 400/--steps 1} -o kk --resume > /dev/null 2> kk.log
# with --steps 1 and checkpoints beyond it, resume loads the latest and stops at once
if grep -q "continuing from kk/checkpoint-" kk.log && ! grep -q "skipping" kk.log; then ok
else bad "after $kills kills the latest checkpoint did not load: $(head -3 kk.log)"; fi

# 5. an injected NaN gradient: the step is skipped, weights and moments untouched
"$L" train -m m --data train.jsonl -o nan --steps 3 --batch 2 --seq 32 --save-every 1 --debug-inject-nan 3 -t 1 2> nan.log \
  || bad "train with NaN failed"
grep -q "step 3: non-finite gradient, step skipped" nan.log && ok || bad "NaN step not reported: $(cat nan.log | tail -3)"
cmp -s nan/checkpoint-2/params.safetensors nan/checkpoint-3/params.safetensors && ok || bad "weights changed on a skipped step"
cmp -s nan/checkpoint-2/optimizer.safetensors nan/checkpoint-3/optimizer.safetensors && ok || bad "moments changed on a skipped step"
tail -1 nan/metrics.jsonl | grep -q '"skipped": 1' && ok || bad "metrics do not count the skipped step"

# 5b. --profile: every phase in the table, shares summing to the step, the
# base's dw only with --full, and the same adapter as a run without it
P="-m m --data train.jsonl --steps 3 --batch 4 --seq 64 --targets all-linear -t 2"
"$L" train $P -o prof --profile 2> prof.log > /dev/null || bad "train --profile failed"
"$L" train $P -o noprof 2> /dev/null > /dev/null || bad "train without --profile failed"
"$L" train -m m --data train.jsonl --steps 3 --batch 4 --seq 64 --full -t 2 -o proffull --profile 2> proffull.log > /dev/null \
  || bad "train --full --profile failed"
cmp -s prof/adapter_model.safetensors noprof/adapter_model.safetensors && ok || bad "--profile changed the adapter"
$PY - prof.log proffull.log <<'PYEOF' && ok || bad "--profile table: $(grep -A 16 '^profile:' prof.log)"
import re, sys
phases = ["base forward", "base dx", "base dw", "lora", "attention", "rope", "rmsnorm", "swiglu", "embed/add/zero",
          "loss", "optimizer", "data", "other"]
for path, full in ((sys.argv[1], False), (sys.argv[2], True)):
    lines = open(path).read().splitlines()
    i = next(k for k, l in enumerate(lines) if l.startswith("profile: 2 steps after the first"))
    rows = {}
    for l in lines[i + 2:i + 2 + len(phases)]:
        m = re.match(r"  (\S.*?)\s{2,}(-?[\d.]+)\s+(-?[\d.]+)%", l)
        rows[m.group(1)] = (float(m.group(2)), float(m.group(3)))
    assert list(rows) == phases, list(rows)
    assert abs(sum(share for _, share in rows.values()) - 100.0) < 1.0
    assert all(rows[p][0] > 0 for p in ("base forward", "base dx", "attention", "loss"))
    assert (rows["base dw"][0] > 0) == full and (rows["lora"][0] > 0) != full
    assert rows["other"][0] > -0.5
PYEOF

# 6. malformed data: FILE:LINE errors, exit 1; --skip-bad counts instead
printf '{"text": "a fine line"}\n{"text": 5}\n' > bad1.jsonl
printf '{"text": "ok"}\n{"text": "broken\n' > bad2.jsonl
printf '{"text": "ok"}\n{"text": "\xff\xfe"}\n' > bad3.jsonl
: > empty.jsonl
printf '{"nothing": "here"}\n' > bad4.jsonl
printf '{"input_ids": [1, 2, 3], "labels": [1, 2]}\n' > bad5.jsonl
printf '{"input_ids": [1, 2, 99999]}\n' > bad6.jsonl
check_err() { # FILE SUBSTRING [FORMAT]
  local out rc
  out=$("$L" train -m m --data "$1" -o e --steps 1 --format "${3:-auto}" 2>&1 >/dev/null); rc=$?
  if [ $rc -eq 1 ] && [[ "$out" == *"lorac: error: "*"$2"* ]]; then ok; else bad "$1: exit $rc, '$out' (want '$2')"; fi
}
check_err bad1.jsonl "bad1.jsonl:2: \"text\" must be a string"
check_err bad2.jsonl "bad2.jsonl:2: not valid JSON"
check_err bad3.jsonl "bad3.jsonl:2: not valid UTF-8"
check_err empty.jsonl "empty.jsonl: no examples"
check_err bad4.jsonl "bad4.jsonl:1: cannot tell the format"
check_err bad5.jsonl "bad5.jsonl:1: \"labels\" must be an array as long as"
check_err bad6.jsonl "bad6.jsonl:1: input_ids must be integers in 0..511"
check_err bad1.jsonl "bad1.jsonl:1: missing \"prompt\"" completion
"$L" train -m m --data bad1.jsonl -o e --steps 1 --skip-bad 2> skip.log && grep -q "1 malformed lines skipped" skip.log && ok \
  || bad "--skip-bad: $(cat skip.log | head -2)"

# 7. --eval-split holds out part of the data instead of --eval-data
"$L" train -m m --data train.jsonl --eval-split 0.1 -o split --steps 2 --seq 64 2> split.log \
  && grep -q "data: 360 examples (text).*eval: 40 examples held out from the data" split.log \
  && grep -q "^eval after training: loss" split.log && ok || bad "--eval-split: $(grep -m1 data: split.log)"
# lorac eval of the same split gives the same held-out loss
want=$(sed -n 's/^eval after training: loss \([0-9.]*\).*/\1/p' split.log)
got=$("$L" eval -m m --adapter split --data train.jsonl --eval-split 0.1 --seed 42 --seq 64 --json 2>/dev/null \
      | $PY -c "import json, sys; d = json.load(sys.stdin); assert d['examples'] == 40; print(d['loss'])")
if [ -n "$want" ] && [ -n "$got" ] && $PY -c "import sys; sys.exit(0 if abs($got - $want) < 2e-4 else 1)"; then ok
else bad "lorac eval --eval-split: $got, training's $want"; fi
out=$("$L" train -m m --data train.jsonl --eval-split 0.1 --eval-data eval.jsonl -o e --steps 1 2>&1 >/dev/null); rc=$?
[ $rc -eq 1 ] && [[ "$out" == *"give --eval-data or --eval-split, not both"* ]] && ok || bad "--eval-split with --eval-data: $rc '$out'"

# 8. a dataset with its own keys: SAMSum's {instruction, dialogue, summary}
# read as alpaca through --columns; a bad map is an error naming it
"$L" train -m m --data "$LORAC_FIXTURES/datasets/samsum/validation.json" --columns input=dialogue,output=summary \
  -o sam --steps 1 --seq 64 2> sam.log && grep -q "818 examples (alpaca)" sam.log \
  && grep -q "format alpaca, columns input=dialogue,output=summary" sam/README.md && ok \
  || bad "--columns on SAMSum: $(tail -2 sam.log)"
out=$("$L" train -m m --data bad1.jsonl --columns outpt=summary -o e --steps 1 2>&1 >/dev/null); rc=$?
[ $rc -eq 1 ] && [[ "$out" == "lorac: error: column map \"outpt=summary\": \"outpt\" is not a field"* ]] && ok \
  || bad "--columns outpt=summary: exit $rc, '$out'"

# 8b. tokens count every position; the summary says how many were padding: two
# 10-token examples in rows of 16 (no --pack) are 12 padding positions of 32
printf '{"input_ids": [1, 5, 6, 7, 8, 9, 10, 11, 12, 13]}\n{"input_ids": [1, 15, 16, 17, 18, 19, 20, 21, 22, 23]}\n' > ten.jsonl
"$L" train -m m --data ten.jsonl -o ten --steps 1 --batch 2 --seq 16 --no-shuffle 2> ten.log \
  && grep -q "^train: 1 steps, 32 tokens (37.5% of them padding)" ten.log && ok || bad "padding count: $(tail -1 ten.log)"
"$L" train -m m --data ten.jsonl -o ten --steps 1 --batch 1 --seq 9 2> ten.log \
  && grep -q "^train: 1 steps, 9 tokens, " ten.log && ok || bad "no padding: $(tail -1 ten.log)"

# 8c. a batch without a target (the response past --seq) is skipped, not taken on
# momentum; training goes on; metrics.jsonl stays JSON (loss null)
long=$(printf 'word %.0s' $(seq 40))
printf '{"prompt": "%s", "completion": " end"}\n{"prompt": "Hi", "completion": " there you are"}\n' "$long" > cut.jsonl
"$L" train -m m --data cut.jsonl -o cut --steps 2 --batch 1 --seq 16 --no-shuffle 2> cut.log \
  && grep -q "1 with nothing to learn" cut.log && grep -q "^step 1: no targets in the batch" cut.log \
  && grep -q "^step 2/2 loss [0-9]" cut.log && grep -q "(1 so far)" cut.log \
  && $PY -c "
import json, sys
rows = [json.loads(l) for l in open('cut/metrics.jsonl')]
assert rows[0]['loss'] is None and rows[0]['skipped'] == 1 and rows[1]['loss'] > 0, rows
" && ok || bad "a batch without targets: $(grep -m2 'step' cut.log)"

# 9. chat data in ShareGPT's shape: the adapter's README names the template it learned
printf '{"conversations": [{"from": "human", "value": "Tell me a story."}, {"from": "gpt", "value": "Once upon a time."}]}\n' > sg.jsonl
"$L" train -m m --data sg.jsonl --chat-template zephyr -o sg --steps 1 --seq 64 2> sg.log \
  && grep -q "data: 1 examples (chat)" sg.log && grep -q "format chat, template zephyr" sg/README.md && ok \
  || bad "ShareGPT training: $(tail -2 sg.log)"

tl_finish
