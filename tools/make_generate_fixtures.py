"""Writes the decoding parity fixtures for `glimpse-generate`.

The reference `generate` (transformers) drives a toy language model whose next-token
logits are a pure function of the whole prefix: the prefix is folded into a 64-bit
state with the splitmix64 finaliser, and the logit of token `v` is 20 bits of
`mix(state + v + 1)` scaled to [-8, 8). Every logit is a dyadic number with at most
20 significant bits, so it is exact in f32 and the Rust test model
(`crates/glimpse-generate/tests/toy.rs`) reproduces it bit for bit; nothing but the
decoding algorithm can make the two sides disagree. An optional bias on the eos
logit makes sequences end early, so eos, padding and finished-beam handling get
exercised.

Run from the repository root:

    tools/.venv/bin/python tools/make_generate_fixtures.py

Output: tools/fixtures/generate/cases.json (prompts, settings, and the ids the
reference returned after the prompt, raw and with the trailing fill removed).
"""

import json
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import GenerationMixin, PretrainedConfig, PreTrainedModel  # noqa: E402
from transformers.modeling_outputs import CausalLMOutputWithPast  # noqa: E402

MASK = (1 << 64) - 1
STATE0 = 0x243F6A8885A308D3
VOCAB = 48
OUT = Path(__file__).resolve().parent / "fixtures" / "generate"


def mix(x: int) -> int:
    """splitmix64: add the golden gamma, then the two xor-shift-multiply rounds."""
    x = (x + 0x9E3779B97F4A7C15) & MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def prefix_state(tokens) -> int:
    state = STATE0
    for t in tokens:
        state = mix(state ^ int(t))
    return state


def toy_logits(tokens, eos_ids, eos_bias: float) -> list:
    state = prefix_state(tokens)
    row = []
    for v in range(VOCAB):
        bits = mix((state + v + 1) & MASK) >> 44  # top 20 bits
        row.append((bits - (1 << 19)) / 65536.0)
    for e in eos_ids:
        row[e] += eos_bias
    return row


class ToyConfig(PretrainedConfig):
    model_type = "glimpse_toy"

    def __init__(self, vocab_size=VOCAB, eos_bias=0.0, toy_eos=(2,), **kwargs):
        self.vocab_size = vocab_size
        self.eos_bias = eos_bias
        self.toy_eos = list(toy_eos)
        super().__init__(**kwargs)


class ToyLM(PreTrainedModel, GenerationMixin):
    """Stateless: every call sees the whole prefix (generate runs with use_cache=False)."""

    config_class = ToyConfig
    main_input_name = "input_ids"

    def __init__(self, config):
        super().__init__(config)
        # One parameter so that device/dtype queries work; it takes no part in the logits.
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, return_dict=True, **kwargs):
        b, t = input_ids.shape
        logits = torch.zeros((b, t, self.config.vocab_size), dtype=torch.float32)
        for i in range(b):
            row = toy_logits(input_ids[i].tolist(), self.config.toy_eos, self.config.eos_bias)
            logits[i, -1] = torch.tensor(row, dtype=torch.float32)
        return CausalLMOutputWithPast(logits=logits)

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        return {"input_ids": input_ids, "attention_mask": attention_mask}


def trim(row, eos_ids):
    """Cut after the first eos: what follows is the reference's fill value."""
    for i, t in enumerate(row):
        if t in eos_ids:
            return row[: i + 1]
    return row


CASES = [
    # name, prompts, eos ids, eos bias, generate kwargs
    ("greedy", [[1, 7, 9]], [2], 0.0, dict(max_new_tokens=12)),
    ("greedy_eos_early", [[4, 4, 11]], [2], 6.0, dict(max_new_tokens=12)),
    ("greedy_batch2", [[1, 7, 9], [30, 3, 17]], [2], 4.0, dict(max_new_tokens=14)),
    ("greedy_rep_min", [[5, 6]], [2], 5.0, dict(max_new_tokens=16, repetition_penalty=1.3, min_new_tokens=4)),
    ("greedy_rep_batch", [[5, 6, 5], [8, 9, 10]], [2, 3], 4.0, dict(max_new_tokens=15, repetition_penalty=1.3, min_new_tokens=3)),
    ("greedy_two_eos_batch3", [[12], [13], [14]], [2, 3], 5.0, dict(max_new_tokens=10)),
]

for nb in (3, 4):
    for lp in (1.0, 0.6, 2.0):
        for es in (False, True, "never"):
            CASES.append((f"beam{nb}_lp{lp}_es{es}", [[1, 7, 9], [30, 3, 17]], [2], 2.5,
                          dict(max_new_tokens=12, num_beams=nb, length_penalty=lp, early_stopping=es)))
CASES += [
    ("beam4_never_lp0.6", [[21, 22]], [2], 2.0,
     dict(max_new_tokens=10, num_beams=4, length_penalty=0.6, early_stopping="never")),
    ("beam3_eos_heavy", [[4, 4, 11], [9, 1, 3]], [2], 4.0, dict(max_new_tokens=12, num_beams=3)),
    ("beam4_no_eos_hit", [[16, 17, 18]], [2], -4.0, dict(max_new_tokens=8, num_beams=4)),
    ("beam3_rep_min", [[5, 6], [40, 41]], [2], 3.0,
     dict(max_new_tokens=12, num_beams=3, repetition_penalty=1.3, min_new_tokens=3)),
    ("beam4_two_eos", [[12, 13], [14, 15]], [2, 3], 2.0, dict(max_new_tokens=10, num_beams=4)),
    ("beam4_return3", [[1, 7, 9], [30, 3, 17]], [2], 2.5,
     dict(max_new_tokens=12, num_beams=4, num_return_sequences=3)),
    ("beam2_lp0", [[26, 27, 28]], [2], 2.0, dict(max_new_tokens=9, num_beams=2, length_penalty=0.0)),
    ("beam5_es_true_batch3", [[2, 1], [19, 20], [44, 45]], [2], 2.5,
     dict(max_new_tokens=11, num_beams=5, early_stopping=True, length_penalty=1.5)),
    # The settings a model's generation_config.json may recommend against loops.
    ("greedy_ngram3", [[5, 6, 5], [8, 9, 10]], [2], -2.0, dict(max_new_tokens=24, no_repeat_ngram_size=3)),
    ("greedy_ngram2_rep", [[1, 7, 9]], [2], -2.0,
     dict(max_new_tokens=20, no_repeat_ngram_size=2, repetition_penalty=1.2)),
    ("greedy_decay", [[1, 7, 9], [30, 3, 17]], [2], -3.0,
     dict(max_new_tokens=24, exponential_decay_length_penalty=(6, 1.5))),
    ("greedy_ngram3_decay_min", [[5, 6]], [2], -3.0,
     dict(max_new_tokens=24, no_repeat_ngram_size=3, exponential_decay_length_penalty=(4, 1.8),
          min_new_tokens=6)),
    ("beam3_ngram3_decay", [[1, 7, 9], [30, 3, 17]], [2], -2.0,
     dict(max_new_tokens=20, num_beams=3, no_repeat_ngram_size=3,
          exponential_decay_length_penalty=(5, 1.5))),
]


def main():
    torch.manual_seed(0)
    records = []
    for name, prompts, eos, bias, kw in CASES:
        cfg = ToyConfig(eos_bias=bias, toy_eos=eos, eos_token_id=eos, pad_token_id=0)
        model = ToyLM(cfg).eval()
        ids = torch.tensor(prompts, dtype=torch.long)
        gen_kw = dict(kw)
        gen_kw.setdefault("num_beams", 1)
        with torch.no_grad():
            out = model.generate(
                input_ids=ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                use_cache=False,
                eos_token_id=eos,
                pad_token_id=0,
                **gen_kw,
            )
        raw = out[:, ids.shape[1]:].tolist()
        records.append({
            "name": name,
            "prompts": prompts,
            "eos_token_ids": eos,
            "eos_bias": bias,
            "pad_token_id": 0,
            "max_new_tokens": gen_kw["max_new_tokens"],
            "min_new_tokens": gen_kw.get("min_new_tokens", 0),
            "num_beams": gen_kw["num_beams"],
            "length_penalty": gen_kw.get("length_penalty", 1.0),
            "early_stopping": gen_kw.get("early_stopping", False),
            "repetition_penalty": gen_kw.get("repetition_penalty", 1.0),
            "num_return_sequences": gen_kw.get("num_return_sequences", 1),
            "no_repeat_ngram_size": gen_kw.get("no_repeat_ngram_size", 0),
            "exponential_decay_length_penalty": gen_kw.get("exponential_decay_length_penalty"),
            "raw": raw,
            "expected": [trim(r, eos) for r in raw],
        })
        print(name, [trim(r, eos) for r in raw])
    OUT.mkdir(parents=True, exist_ok=True)
    doc = {
        "about": "written by tools/make_generate_fixtures.py; toy model defined there",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "vocab_size": VOCAB,
        "state0": STATE0,
        "check_logits": {"prefix": [1, 7, 9], "logits": toy_logits([1, 7, 9], [2], 0.0)},
        "cases": records,
    }
    (OUT / "cases.json").write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
