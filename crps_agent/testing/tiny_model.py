"""A tiny random Llama causal LM with a locally trained tokenizer, built offline.

Integration tests need a real transformers model but may not download one. This builds one
from a config in well under a second of compute (~120K parameters: hidden size 64, 2 layers)
with a byte-level BPE tokenizer trained on the few KB of text below, a ChatML chat template
(with `{% generation %}` markers, so TRL's `assistant_only_loss` works), a pad token and left
padding. Its output is noise: use it to test plumbing, never reasoning quality.

    python -m crps_agent.testing.tiny_model DIR     # build (or reuse) the model in DIR

    from crps_agent.testing.tiny_model import build_tiny_model
    path = build_tiny_model(tmp_path / "tiny")     # -> Path, loadable with from_pretrained

Building is idempotent: a complete directory (with its stamp file, written last) built with
the same seed and format is reused as is.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

FORMAT_VERSION = 2
STAMP = "crps-tiny-model.json"
IM_START, IM_END, EOT = "<|im_start|>", "<|im_end|>", "<|endoftext|>"

CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

_PROBLEMS = [
    ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips "
     "in May. How many clips did Natalia sell altogether in April and May?",
     "In May she sold 48 / 2 = 24 clips. Altogether she sold 48 + 24 = 72 clips.", "72"),
    ("Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of "
     "babysitting. How much did she earn?",
     "She earns 12 / 60 = 0.2 dollars per minute, so 0.2 * 50 = 10 dollars.", "10"),
    ("Betty needs $100 for a wallet. She has half of the money, her parents give her $15 and "
     "her grandparents twice as much as her parents. How much more money does Betty need?",
     "She has 100 / 2 = 50. Grandparents give 15 * 2 = 30. 100 - 50 - 15 - 30 = 5.", "5"),
    ("James writes a 3-page letter to 2 different friends twice a week. How many pages does "
     "he write a year?", "Each week he writes 3 * 2 * 2 = 12 pages, so 12 * 52 = 624.", "624"),
    ("What is 17 + 25?", "17 + 25 = 42.", "42"),
    ("Compute 9 * 8 - 6.", "9 * 8 = 72 and 72 - 6 = 66.", "66"),
    ("Solve for x: 3x + 5 = 20.", "3x = 15, so x = 15 / 3 = 5.", "5"),
    ("What is the sum of the first 10 positive integers?",
     "The sum is 10 * 11 / 2 = 55.", "55"),
    ("A rectangle is 7 cm by 13 cm. What is its area?", "The area is 7 * 13 = 91.", "91"),
    ("What is 2^10?", "2^10 = 1024.", "1024"),
    ("Simplify \\frac{18}{24}.", "Divide by 6: \\frac{3}{4}.", "\\frac{3}{4}"),
    ("What is 0.5 + 0.25?", "0.5 + 0.25 = 0.75.", "0.75"),
]

_EXTRA = """\
Let's think step by step. First, we compute the total. Then we subtract what is left.
Check the answer: substitute x back into the equation. The result is correct.
Insight: when a problem says "half as many", divide by 2 before adding.
Insight: convert minutes to hours before multiplying by an hourly rate.
Mistake: the attempt added the numbers instead of multiplying them.
0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 25 30 40 50 60 70 80 90 100 1000
+ - * / = ( ) [ ] { } ^ % $ . , : ; ? ! ' " \\sqrt{2} \\frac{a}{b} x^2 + y^2 = z^2
def solve(n):\n    return sum(range(n + 1))\nprint(solve(10))
{"insight": "Read the question twice.", "applies_to": "word problems", "confidence": 0.8}
"""


def corpus() -> list[str]:
    """The training text of the tokenizer (a few KB, math-flavoured, ChatML-framed)."""
    texts = []
    for question, work, answer in _PROBLEMS:
        reply = f"{work} The answer is \\boxed{{{answer}}}."
        texts.append(f"{IM_START}system\nYou are a careful math solver.{IM_END}\n"
                     f"{IM_START}user\n{question}{IM_END}\n"
                     f"{IM_START}assistant\n{reply}{IM_END}\n")
        texts.append(f"Question: {question}\nAnswer: {reply}\n")
    texts.extend(_EXTRA.splitlines())
    return texts


def _is_complete(out: Path, seed: int) -> bool:
    try:
        stamp = json.loads((out / STAMP).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (stamp.get("format") == FORMAT_VERSION and stamp.get("seed") == seed
            and all((out / name).is_file() for name in _FILES))


_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
          "tokenizer_config.json", "chat_template.jinja")
HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS = 64, 128, 2, 4, 2


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def _weights(vocab: int, seed: int) -> dict[str, Any]:
    """Llama weights initialised like transformers does (normal(0, 0.02), norms at 1)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    head_dim = HIDDEN // HEADS

    def normal(*shape: int) -> Any:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    w: dict[str, Any] = {"model.embed_tokens.weight": normal(vocab, HIDDEN),
                         "model.norm.weight": np.ones(HIDDEN, dtype=np.float32)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = np.ones(HIDDEN, dtype=np.float32)
        w[p + "post_attention_layernorm.weight"] = np.ones(HIDDEN, dtype=np.float32)
        w[p + "self_attn.q_proj.weight"] = normal(HEADS * head_dim, HIDDEN)
        w[p + "self_attn.k_proj.weight"] = normal(KV_HEADS * head_dim, HIDDEN)
        w[p + "self_attn.v_proj.weight"] = normal(KV_HEADS * head_dim, HIDDEN)
        w[p + "self_attn.o_proj.weight"] = normal(HIDDEN, HEADS * head_dim)
        w[p + "mlp.gate_proj.weight"] = normal(INTERMEDIATE, HIDDEN)
        w[p + "mlp.up_proj.weight"] = normal(INTERMEDIATE, HIDDEN)
        w[p + "mlp.down_proj.weight"] = normal(HIDDEN, INTERMEDIATE)
    return w


def build_tiny_model(out_dir: str | Path, *, seed: int = 0, vocab_size: int = 512) -> Path:
    """Build (or reuse) the tiny model in `out_dir`; returns the directory.

    Written directly (tokenizers + numpy + safetensors, no torch or transformers import), so a
    build takes a fraction of a second; the files are what `save_pretrained` writes for a
    `LlamaForCausalLM` and a `PreTrainedTokenizerFast`.
    """
    out = Path(out_dir).expanduser().resolve()
    if _is_complete(out, seed):
        return out
    out.mkdir(parents=True, exist_ok=True)
    (out / STAMP).unlink(missing_ok=True)

    from safetensors.numpy import save_file
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    specials = [EOT, IM_START, IM_END]
    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    raw.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    raw.train_from_iterator(corpus(), trainer=trainer)
    raw.save(str(out / "tokenizer.json"))
    _write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": IM_END,
        "pad_token": EOT, "unk_token": None, "extra_special_tokens": [IM_START],
        "padding_side": "left", "model_max_length": 2048, "clean_up_tokenization_spaces": False,
    })
    (out / "chat_template.jinja").write_text(CHAT_TEMPLATE, encoding="utf-8")

    vocab = raw.get_vocab_size()
    eot, eos = raw.token_to_id(EOT), raw.token_to_id(IM_END)
    _write_json(out / "config.json", {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "dtype": "float32",
        "vocab_size": vocab, "hidden_size": HIDDEN, "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS, "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS, "head_dim": HIDDEN // HEADS, "hidden_act": "silu",
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "initializer_range": 0.02,
        "attention_bias": False, "attention_dropout": 0.0, "mlp_bias": False,
        "pretraining_tp": 1, "rope_theta": 10000.0,
        "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
        "tie_word_embeddings": True, "use_cache": True,
        "bos_token_id": eot, "eos_token_id": eos, "pad_token_id": eot,
    })
    _write_json(out / "generation_config.json",
                {"bos_token_id": eot, "eos_token_id": [eos, eot], "pad_token_id": eot})
    weights = _weights(vocab, seed)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    params = sum(int(a.size) for a in weights.values())
    _write_json(out / STAMP, {"format": FORMAT_VERSION, "seed": seed, "params": params})
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m crps_agent.testing.tiny_model DIR", file=sys.stderr)
        return 2
    print(build_tiny_model(args[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
