# bench/train_lib.sh — shared by the training benchmarks (bench_train.sh,
# bench_qlora.sh); sourced, not run.

# write_tokens FILE T: 64 rows of T + 1 random token ids below 32000, as
# --format tokens reads them (the same rows every run: seed 0).
write_tokens() {
  /usr/bin/python3 -c "
import json, random, sys
random.seed(0)
with open(sys.argv[1], 'w') as f:
    for i in range(64): f.write(json.dumps({'input_ids': [random.randrange(32000) for _ in range(int(sys.argv[2]) + 1)]}) + '\n')" "$1" "$2"
}

# rss FILE: peak RSS in KB from /usr/bin/time -v's report in FILE.
rss() { sed -n 's/.*Maximum resident set size (kbytes): \([0-9]*\).*/\1/p' "$1"; }

# steady_rate METRICS: tokens/s of the median step after the first, from
# lorac's metrics.jsonl (elapsed there is cumulative), the statistic
# torch_train.py reports.
steady_rate() {
  /usr/bin/python3 -c "
import json, sys
m = [json.loads(l) for l in open(sys.argv[1])]
tokens = [r['tokens_per_second'] * r['elapsed'] for r in m]
d = sorted((m[i]['elapsed'] - m[i - 1]['elapsed'], tokens[i] - tokens[i - 1]) for i in range(1, len(m)))
n = len(d)
t = d[n // 2] if n % 2 else ((d[n // 2 - 1][0] + d[n // 2][0]) / 2, d[n // 2][1])
print('%.1f' % (t[1] / t[0]))" "$1"
}
