// llama.cpp as an independent reference for lorac's GGUF export: runs a GGUF
// model (and GGUF LoRA adapters) through the llama.cpp that the npm package
// node-llama-cpp ships prebuilt (CPU), and writes JSON.
//
//   node llama_cpp_ref.mjs NODE_MODULES_DIR probs --model M.gguf [--lora A.gguf --scale S]...
//        --tokens 1,2,3 --out OUT.json
//     next-token log-probabilities at every position: llama.cpp gives no raw
//     logits through this package, only the softmax of them (its greedy
//     sampler leaves the logits as they are), so the comparison is of
//     log_softmax(logits), which fixes the additive constant.
//   node llama_cpp_ref.mjs NODE_MODULES_DIR tokenize --model M.gguf --texts T.json --out OUT.json
//     llama.cpp's token ids for each string of T.json (a JSON list), with
//     its BOS when the file says add_bos_token, special tokens parsed.
//
// Precision: f32 KV cache and no flash attention (the package's defaults, an
// f16 cache and flash attention, move log-probabilities by ~7e-3).
import fs from "node:fs";
import path from "node:path";
import {pathToFileURL} from "node:url";

const [modulesDir, mode, ...rest] = process.argv.slice(2);
const o = {loras: []};
for (let i = 0; i < rest.length; i++) {
    const a = rest[i], v = () => rest[++i];
    if (a === "--model") o.model = v();
    else if (a === "--lora") o.loras.push({filePath: path.resolve(v()), scale: 1});
    else if (a === "--scale") o.loras.at(-1).scale = Number(v());
    else if (a === "--tokens") o.tokens = v().split(",").map(Number);
    else if (a === "--texts") o.texts = JSON.parse(fs.readFileSync(v(), "utf8"));
    else if (a === "--out") o.out = v();
    else throw new Error("unknown argument " + a);
}
process.env.NODE_LLAMA_CPP_SKIP_DOWNLOAD ??= "true";
const {getLlama} = await import(pathToFileURL(path.join(modulesDir, "node-llama-cpp", "dist", "index.js")).href);
const llama = await getLlama({gpu: false, build: "never", usePrebuiltBinaries: true, skipDownload: true,
                              progressLogs: false, maxThreads: 1, logLevel: "error"});
const model = await llama.loadModel({modelPath: path.resolve(o.model), gpuLayers: 0});
let result;
if (mode === "tokenize") {
    result = {ids: o.texts.map(t => Array.from(model.tokenize(t, true)))};
} else if (mode === "probs") {
    const n = o.tokens.length, ctx = Math.max(256, Math.ceil((n + 1) / 256) * 256);
    const context = await model.createContext({
        contextSize: ctx, batchSize: n, sequences: 1, threads: {ideal: 1, min: 1}, flashAttention: false,
        experimentalKvCacheKeyType: "F32", experimentalKvCacheValueType: "F32", ignoreMemorySafetyChecks: true,
        failedCreationRemedy: false, ...(o.loras.length ? {lora: {adapters: o.loras}} : {})});
    const res = await context.getSequence().controlledEvaluate(
        o.tokens.map(t => [t, {generateNext: {probabilities: true}}]));
    const nVocab = model.fileInfo.metadata.tokenizer.ggml.tokens.length;
    const logprobs = res.map(r => {
        const p = new Float64Array(nVocab);
        for (const [tok, pr] of r.next.probabilities) p[tok] = pr;
        return Array.from(p, x => (x > 0 ? Math.log(x) : null));
    });
    result = {vocab_size: nVocab, logprobs};
    await context.dispose();
} else {
    throw new Error("mode must be probs or tokenize");
}
fs.writeFileSync(o.out, JSON.stringify(result));
await model.dispose();
await llama.dispose();
