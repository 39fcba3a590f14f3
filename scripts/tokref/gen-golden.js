#!/usr/bin/env node
// Generates reference token ids for lorac's tokenizer tests with an
// independent implementation: npm @huggingface/tokenizers (tokenizers.js),
// run offline on the fixture tokenizer.json files.
//
//   cd scripts/tokref && npm install && node gen-golden.js ../../../shared/fixtures
//
// Writes tests/data/tokenizer/golden-<name>.json. Each case holds the text,
// the ids without and with special tokens (add_special_tokens false/true),
// and decode(ids) with skip_special_tokens false and true. No tokenizer config
// is passed (clean_up_tokenization_spaces off) so decode is what the Rust
// `tokenizers` library's Tokenizer.decode returns.
// It also checks the llama.cpp test vectors it can (gpt-2, llama-spm) as a
// sanity check of the reference itself.
'use strict';
const fs = require('fs');
const path = require('path');
const { Tokenizer } = require('@huggingface/tokenizers');

const fixtures = path.resolve(process.argv[2] || path.join(__dirname, '../../../shared/fixtures'));
const outDir = path.resolve(__dirname, '../../tests/data/tokenizer');
const corpus = JSON.parse(fs.readFileSync(path.join(outDir, 'corpus.json'), 'utf8'));

const TOKENIZERS = {
  gpt2: 'tokenizers/gpt2/tokenizer.json',
  tinyllama: 'tokenizers/tinyllama-1.1b-chat-v1.0/tokenizer.json',
  smollm2: 'tokenizers/smollm2-360m-instruct-ft/tokenizer.json',
};

function load(rel) {
  const json = JSON.parse(fs.readFileSync(path.join(fixtures, rel), 'utf8'));
  return new Tokenizer(json, { clean_up_tokenization_spaces: false });
}

function checkVectors(tok, name) {
  const dir = path.join(fixtures, 'tokenizers/test-vectors');
  const inp = fs.readFileSync(path.join(dir, `ggml-vocab-${name}.gguf.inp`), 'utf8')
    .split('\n__ggml_vocab_test__\n');
  inp.pop(); // text after the last separator is empty
  const out = fs.readFileSync(path.join(dir, `ggml-vocab-${name}.gguf.out`), 'utf8').split('\n');
  let ok = 0;
  inp.forEach((s, i) => {
    const got = tok.encode(s, { add_special_tokens: false }).ids.join(' ');
    const want = out[i].trim();
    if (got === want) ok++; else console.error(`${name} vector ${i} differs: ${got} vs ${want}`);
  });
  console.log(`${name}: ${ok}/${inp.length} test vectors match`);
}

// SmolLM2's tokenizer with Qwen2's normalizer (NFC; Qwen's tokenizer.json
// is not among the fixtures), over the corpus and text that NFC changes
const nfcCorpus = JSON.parse(fs.readFileSync(path.join(outDir, 'corpus-nfc.json'), 'utf8'));
const VARIANTS = {
  'smollm2-nfc': { base: TOKENIZERS.smollm2, normalizer: { type: 'NFC' }, corpus: corpus.concat(nfcCorpus) },
};

function loadJson(json) {
  return new Tokenizer(json, { clean_up_tokenization_spaces: false });
}

const jobs = Object.entries(TOKENIZERS).map(([name, rel]) => [name, rel, load(rel), corpus]);
for (const [name, v] of Object.entries(VARIANTS)) {
  const json = JSON.parse(fs.readFileSync(path.join(fixtures, v.base), 'utf8'));
  json.normalizer = v.normalizer;
  jobs.push([name, `${v.base} with "normalizer": ${JSON.stringify(v.normalizer)}`, loadJson(json), v.corpus]);
}

for (const [name, rel, tok, texts] of jobs) {
  const cases = texts.map((text) => {
    const ids = tok.encode(text, { add_special_tokens: false }).ids;
    const ids_special = tok.encode(text, { add_special_tokens: true }).ids;
    const opts = (skip) => ({ skip_special_tokens: skip, clean_up_tokenization_spaces: false });
    const dec = (a, skip) => (a.length ? tok.decode(a, opts(skip)) : ''); // decode([]) throws here
    return {
      text, ids, ids_special,
      decoded: dec(ids, false),
      decoded_special_skipped: dec(ids_special, true),
    };
  });
  const doc = { generator: '@huggingface/tokenizers 0.2.0 (scripts/tokref/gen-golden.js)', tokenizer: rel, cases };
  fs.writeFileSync(path.join(outDir, `golden-${name}.json`), JSON.stringify(doc, null, 0) + '\n');
  console.log(`wrote golden-${name}.json (${cases.length} cases)`);
}
checkVectors(load(TOKENIZERS.gpt2), 'gpt-2');
checkVectors(load(TOKENIZERS.tinyllama), 'llama-spm');
