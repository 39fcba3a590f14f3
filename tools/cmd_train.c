/* lorac train: LoRA (or --full) fine-tuning on a JSONL dataset. The loop is
 * here; the pieces are library calls: data (lorac/dataset.h), forward and
 * backward (lorac/model.h), adapter (lorac/lora.h), optimizer and
 * checkpoints (lorac/optim.h). */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "cli.h"
#include "lorac/dataset.h"
#include "lorac/kernels.h"
#include "lorac/lora.h"
#include "lorac/model.h"
#include "lorac/train.h"

static const char *k_usage =
    "usage: lorac train -m MODEL --data FILE.jsonl -o OUT [options]\n"
    "data:\n"
    "  --format F           auto|text|completion|alpaca|chat|tokens (default auto); chat reads ShareGPT too\n"
    "  --columns MAP        read the data's own keys as a format's, e.g. input=dialogue,output=summary\n"
    "  --chat-template T    " LORAC_CHAT_TEMPLATES " (default: from tokenizer_config.json)\n"
    "  --eval-data FILE     held-out data: loss and perplexity before, every --eval-every steps, at the end\n"
    "  --eval-split X       instead of --eval-data, hold out X of the data: a fraction (0.05) or a count (200)\n"
    "  --seq L              sequence length (default 256); longer examples are truncated\n"
    "  --pack               pack short examples into one sequence (attention stays inside each)\n"
    "  --train-on-inputs    loss on prompts too, not only responses\n"
    "  --skip-bad           skip malformed lines (counted) instead of failing\n"
    "  --no-shuffle         keep file order\n"
    "LoRA:\n"
    "  --r R (8)  --alpha A (16)  --dropout P (0)  --rslora  --init gaussian\n"
    "  --targets LIST       q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj or all-linear (default q_proj,v_proj);\n"
    "                       Phi-3's qkv_proj,o_proj,gate_up_proj,down_proj (default qkv_proj)\n"
    "  --layers SPEC        only these layers, e.g. 0-3,7\n"
    "  --init-adapter DIR   start from an existing PEFT adapter\n"
    "  --full               train every weight instead (f32 master weights); OUT is a model directory\n"
    "  --quantize nf4       QLoRA: the frozen base's projections in 4-bit NormalFloat (NF4), as\n"
    "                       bitsandbytes' load_in_4bit holds them: about 3.5x less memory than BF16\n"
    "optimisation:\n"
    "  --lr LR (2e-4)  --schedule constant|linear|cosine (linear)  --warmup N (0)\n"
    "  --steps N | --epochs E (default 1 epoch)  --batch B (4)  --grad-accum G (1)\n"
    "  --clip C (1.0, 0 = off)  --weight-decay W (0)  --beta1 (0.9) --beta2 (0.999) --eps (1e-8)\n"
    "  --seed S (42)\n"
    "checkpoints and logs:\n"
    "  --save-every N       write OUT/checkpoint-N every N steps (atomically)\n"
    "  --eval-every N       evaluate every N steps\n"
    "  --resume             continue from the latest whole checkpoint in OUT\n"
    "  --profile            at the end, print where a step's time went, by phase\n"
    "  -t, --threads N      compute threads\n";

int cmd_train(int argc, char **argv) {
    lorac_train_params_t o = lorac_train_default_params();
    o.log = stderr;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
#define VAL() cli_value(argc, argv, &i, "train")
        if (cli_is_help(a)) { fputs(k_usage, stdout); return 0; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) o.model_dir = VAL();
        else if (!strcmp(a, "--data")) o.data = VAL();
        else if (!strcmp(a, "--eval-data")) o.eval_data = VAL();
        else if (!strcmp(a, "--eval-split")) o.eval_split = cli_float("train", a, VAL(), 1e-9, 1e15);
        else if (!strcmp(a, "-o") || !strcmp(a, "--output")) o.out_dir = VAL();
        else if (!strcmp(a, "--format")) o.format = VAL();
        else if (!strcmp(a, "--chat-template")) o.chat_template = VAL();
        else if (!strcmp(a, "--columns")) o.columns = VAL();
        else if (!strcmp(a, "--seq")) o.seq = (int32_t)cli_int("train", a, VAL(), 2, 1 << 20);
        else if (!strcmp(a, "--pack")) o.pack = true;
        else if (!strcmp(a, "--train-on-inputs")) o.train_on_inputs = true;
        else if (!strcmp(a, "--skip-bad")) o.skip_bad = true;
        else if (!strcmp(a, "--profile")) o.profile = true;
        else if (!strcmp(a, "--no-shuffle")) o.shuffle = false;
        else if (!strcmp(a, "--r")) o.lora.r = (int32_t)cli_int("train", a, VAL(), 1, 65536);
        else if (!strcmp(a, "--alpha")) o.lora.alpha = (float)cli_float("train", a, VAL(), -1e6, 1e6);
        else if (!strcmp(a, "--dropout")) o.lora.dropout = (float)cli_float("train", a, VAL(), 0.0, 0.999);
        else if (!strcmp(a, "--rslora")) o.lora.rslora = true;
        else if (!strcmp(a, "--init")) {
            const char *v = VAL();
            if (!strcmp(v, "gaussian")) o.lora.init = LORAC_LORA_INIT_GAUSSIAN;
            else if (!strcmp(v, "kaiming")) o.lora.init = LORAC_LORA_INIT_KAIMING;
            else cli_usage_error("train", "--init must be kaiming or gaussian");
        }
        else if (!strcmp(a, "--targets")) o.targets = VAL();
        else if (!strcmp(a, "--layers")) o.layers = VAL();
        else if (!strcmp(a, "--init-adapter")) o.init_adapter = VAL();
        else if (!strcmp(a, "--full")) o.full = true;
        else if (!strcmp(a, "--quantize")) o.quantize_nf4 = cli_quantize_flag("train", a, VAL());
        else if (!strcmp(a, "--lr")) o.lr = cli_float("train", a, VAL(), 0.0, 10.0);
        else if (!strcmp(a, "--schedule")) o.schedule = VAL();
        else if (!strcmp(a, "--warmup")) o.warmup = cli_int("train", a, VAL(), 0, INT32_MAX);
        else if (!strcmp(a, "--steps")) o.steps = cli_int("train", a, VAL(), 1, INT32_MAX);
        else if (!strcmp(a, "--epochs")) o.epochs = cli_float("train", a, VAL(), 1e-6, 1e6);
        else if (!strcmp(a, "--batch")) o.batch = (int32_t)cli_int("train", a, VAL(), 1, 1 << 16);
        else if (!strcmp(a, "--grad-accum")) o.grad_accum = (int32_t)cli_int("train", a, VAL(), 1, 1 << 16);
        else if (!strcmp(a, "--clip")) o.clip = cli_float("train", a, VAL(), 0.0, 1e9);
        else if (!strcmp(a, "--weight-decay")) o.weight_decay = cli_float("train", a, VAL(), 0.0, 1e3);
        else if (!strcmp(a, "--beta1")) o.beta1 = cli_float("train", a, VAL(), 0.0, 0.999999);
        else if (!strcmp(a, "--beta2")) o.beta2 = cli_float("train", a, VAL(), 0.0, 0.999999999);
        else if (!strcmp(a, "--eps")) o.eps = cli_float("train", a, VAL(), 0.0, 1.0);
        else if (!strcmp(a, "--seed")) o.seed = (uint64_t)cli_int("train", a, VAL(), 0, INT64_MAX);
        else if (!strcmp(a, "--save-every")) o.save_every = cli_int("train", a, VAL(), 1, INT32_MAX);
        else if (!strcmp(a, "--eval-every")) o.eval_every = cli_int("train", a, VAL(), 1, INT32_MAX);
        else if (!strcmp(a, "--resume")) o.resume = true;
        else if (!strcmp(a, "--debug-inject-nan")) o.inject_nan_step = cli_int("train", a, VAL(), 1, INT64_MAX);
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) lorac_kernels_set_threads((int)cli_int("train", a, VAL(), 1, 1024));
        else cli_usage_error("train", "unknown option '%s'", a);
#undef VAL
    }
    if (!o.model_dir || !o.data || !o.out_dir) cli_usage_error("train", "-m MODEL, --data FILE and -o OUT are required");
    if (o.steps && o.epochs > 0) cli_usage_error("train", "give --steps or --epochs, not both");
    if (o.full && o.init_adapter) cli_usage_error("train", "--full trains the whole model; --init-adapter does not apply");
    if (o.full && o.quantize_nf4) cli_usage_error("train", "--full trains every weight; --quantize freezes a quantized base for LoRA");
    lorac_train_result_t r;
    cli_check(lorac_train_run(&o, &r));
    return 0;
}
