"""Generates tests/data/chat/golden.json, the renderings that
tests/test_dataset.c compares lorac's chat templates with: the models' own
Jinja chat templates from the fixtures, rendered by jinja2 the way
HuggingFace transformers renders them (apply_chat_template: a sandboxed
environment with trim_blocks and lstrip_blocks, the loopcontrols extension,
raise_exception, and the tokenizer's special tokens as variables), over a
set of conversations, with and without the generation prompt (and with it
and enable_thinking false, Qwen3's template variable).

Each case: the template's source (a fixture path, or a path under tests/
for the templates of tests/data/chat/templates/, and for a
tokenizer_config.json the key), the bos/eos strings, the conversation,
add_generation_prompt, and the text jinja2 rendered. A conversation the
template refuses (raise_exception) is a case with "refused": true and no
text, which lorac must refuse too. Llama 3.2's template asks
for strftime_now, which transformers defines as today's date; it is not
defined here, so the template falls back to its own date (26 Jul 2024), the
one lorac writes.

jinja2 is not a test dependency (the output is committed): run once with a
python3 that has it (Debian: apt-get install python3-jinja2) and commit:
    LORAC_FIXTURES=../shared/fixtures python3 tests/reference/gen_chat_golden.py > tests/data/chat/golden.json
"""
import json
import os
import sys

from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

FX = os.environ.get("LORAC_FIXTURES", "../shared/fixtures")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (name, template source, key in a tokenizer_config.json or None, bos, eos)
TEMPLATES = [
    ("qwen2.5", "chat-templates/Qwen-Qwen2.5-7B-Instruct.jinja", None, None, "<|im_end|>"),
    ("smollm2", "tokenizers/smollm2-360m-instruct-ft/chat_template.jinja", None, "<|im_start|>", "<|im_end|>"),
    ("tinyllama", "tokenizers/tinyllama-1.1b-chat-v1.0/tokenizer_config.json", "chat_template", "<s>", "</s>"),
    ("llama-3.1", "chat-templates/meta-llama-Llama-3.1-8B-Instruct.jinja", None, "<|begin_of_text|>", "<|eot_id|>"),
    ("llama-3.2", "chat-templates/meta-llama-Llama-3.2-3B-Instruct.jinja", None, "<|begin_of_text|>", "<|eot_id|>"),
    ("mistral-nemo", "chat-templates/mistralai-Mistral-Nemo-Instruct-2407.jinja", None, "<s>", "</s>"),
    ("mistral-v0.1", "tests/data/chat/templates/mistral-7b-instruct-v0.1.jinja", None, "<s>", "</s>"),
    ("mistral-v0.2", "tests/data/chat/templates/mixtral-8x7b-instruct-v0.1.jinja", None, "<s>", "</s>"),
    ("mistral-v1", "tests/data/chat/templates/mistral-instruct-v1.jinja", None, "<s>", "</s>"),
    ("mistral-v3", "tests/data/chat/templates/mistral-7b-instruct-v0.3.jinja", None, "<s>", "</s>"),
    ("qwen3", "tests/data/chat/templates/qwen3.jinja", None, None, "<|im_end|>"),
    ("gemma-2", "chat-templates/google-gemma-2-2b-it.jinja", None, "<bos>", "<eos>"),
    ("gemma-3", "tests/data/chat/templates/gemma3.jinja", None, "<bos>", "<eos>"),
    ("phi-3.5", "chat-templates/microsoft-Phi-3.5-mini-instruct.jinja", None, "<s>", "<|endoftext|>"),
    ("phi-4", "tests/data/chat/templates/phi4.jinja", None, None, "<|im_end|>"),
    ("phi-4-unsloth", "tests/data/chat/templates/phi4-unsloth.jinja", None, None, "<|im_end|>"),
    ("phi-4-mini", "tests/data/chat/templates/phi4-mini.jinja", None, None, "<|endoftext|>"),
]

S = {"role": "system", "content": "You are a careful assistant."}
U1 = {"role": "user", "content": "What is 2 + 2?"}
A1 = {"role": "assistant", "content": "4."}
U2 = {"role": "user", "content": "And times 3?"}
A2 = {"role": "assistant", "content": "12, because 4 × 3 = 12."}
CONVERSATIONS = [
    ("one user turn", [U1]),
    ("one exchange", [U1, A1]),
    ("system and two exchanges", [S, U1, A1, U2, A2]),
    ("system and a pending question", [S, U1, A1, U2]),
    # contents with surrounding whitespace (llama 3 trims them, chatml keeps them), newlines, emoji
    ("whitespace and unicode", [{"role": "system", "content": "  Be brief.\n"},
                                {"role": "user", "content": "\n  Héllo 👋\n\nsecond line  "},
                                {"role": "assistant", "content": " Hi!\t"}]),
    ("empty contents", [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}]),
    # without a system message, which Mistral 7B v0.1's and Mixtral's first templates refuse
    ("two exchanges", [U1, A1, U2, A2]),
    ("unicode and a pending question", [{"role": "user", "content": "\n  Héllo 👋\n\nsecond line  "},
                                        {"role": "assistant", "content": " Hi!\t"}, U2]),
    # whitespace beyond ASCII around contents: Jinja's trim and str.strip() take Unicode spaces off too
    ("unicode spaces", [{"role": "system", "content": "\u3000Be brief.\u00a0"},
                        {"role": "user", "content": "\u2003Why?\u0085"},
                        {"role": "assistant", "content": "\u202fBecause.\u205f\u2028 \x1c"},
                        {"role": "user", "content": "Sure\u1680"}]),
    # replies that carry their reasoning, as Qwen3's template takes it apart (content.split('</think>')):
    # dropped before the last question, kept in a <think> block after it; newlines around it trimmed,
    # the reasoning before the first </think> (after its last <think>), the reply after the last </think>
    ("reasoning in replies", [U1, {"role": "assistant", "content": "<think>\nAdd them.\n</think>\n\n4."}, U2,
                              {"role": "assistant", "content": "\n\n<think>\n\nx<think>Multiply.\n\n</think>mid</think>\n12."}]),
    ("a tool response is not a question", [U1, {"role": "assistant", "content": "<think>Look it up.</think>Calling."},
                                           {"role": "user", "content": "<tool_response>4</tool_response>"},
                                           {"role": "assistant", "content": "<think>only an opening tag stays"}]),
    # refused by the templates that insist on alternating turns
    ("two user turns", [U1, U2]),
    ("reply first", [A1, U1]),
    # two replies after the question: the first keeps its reasoning only because it has some
    ("two replies in a row", [U1, {"role": "assistant", "content": "<think>\nHmm.\n</think>\n\nFour."}, A1,
                              {"role": "assistant", "content": "No reasoning here."}, A2]),
]


def raise_exception(message):
    raise ValueError(message)


def render(source, messages, bos, eos, generation, thinking=True):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.filters["tojson"] = lambda x, indent=None, **kw: json.dumps(x, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    kwargs = {"messages": messages, "add_generation_prompt": generation}
    if bos is not None:
        kwargs["bos_token"] = bos
    if eos is not None:
        kwargs["eos_token"] = eos
    if not thinking:  # vLLM's chat_template_kwargs={"enable_thinking": False}
        kwargs["enable_thinking"] = False
    return env.from_string(source).render(**kwargs)


def main():
    cases = []
    for name, path, key, bos, eos in TEMPLATES:
        root = REPO if path.startswith("tests/") else FX
        text = open(os.path.join(root, path), encoding="utf-8").read()
        source = json.loads(text)[key] if key else text
        for what, conv in CONVERSATIONS:
            # enable_thinking false: Qwen3's variable, which the other templates ignore
            for generation, thinking in ((False, True), (True, True), (True, False)):
                case = {"template": name, "file": path, "key": key, "bos": bos, "eos": eos,
                        "conversation": what, "messages": conv, "add_generation_prompt": generation}
                if not thinking:
                    case["enable_thinking"] = False
                try:
                    case["text"] = render(source, conv, bos, eos, generation, thinking)
                except ValueError:
                    case["refused"] = True
                cases.append(case)
    json.dump({"generator": "tests/reference/gen_chat_golden.py", "cases": cases}, sys.stdout, ensure_ascii=False,
              indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
