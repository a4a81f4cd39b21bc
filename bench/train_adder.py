"""Train the adder: a small Qwen3ForCausalLM that adds two zero-padded numbers, on the CPU, in minutes.

The task has exact answers, so a checkpoint trained on it can show whether graph replay changes what
a model says (random weights cannot: their greedy outputs flip on tiny numeric differences).

Every number is zero-padded and written least significant digit first:

    42 + 917 = 959:   prompt "240+719="   answer "9590" + <eos>

Little-endian numbers train fastest: answer digit i depends only on operand digits i (always the
same distance back) and the carry out of digit i-1, which the digit just emitted reveals. About 1% of all problems (`is_held_out`) never appear in training; evaluation
(bench/eval_accuracy.py) draws only from them.

    python bench/train_adder.py --out tests/fixtures/adder --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
import zlib
from typing import Any

EOS = "<|endoftext|>"
UNK = "<unk>"
VOCAB = [EOS, UNK, *"0123456789+="]
VOCAB_SIZE = 16  # len(VOCAB) rounded up; the two spare rows are never predicted after training
HELD_OUT_PERCENT = 1
# Chat requests: the content of the last user message is the prompt (no roles, no special tokens).
CHAT_TEMPLATE = "{{ messages[-1]['content'] }}"


# ---- the task (imported by bench/eval_accuracy.py) ------------------------------------------------------


def is_held_out(a: int, b: int) -> bool:
    """True for the ~1% of problems that training never sees (a fixed hash, not the seed)."""
    return zlib.crc32(f"{a}+{b}".encode()) % 100 < HELD_OUT_PERCENT


def prompt_text(a: int, b: int, digits: int) -> str:
    """Both operands zero-padded to `digits`, least significant digit first."""
    return f"{a:0{digits}d}"[::-1] + "+" + f"{b:0{digits}d}"[::-1] + "="


def answer_text(a: int, b: int, digits: int) -> str:
    """The sum, zero-padded to digits+1 and reversed (least significant digit first)."""
    return f"{a + b:0{digits + 1}d}"[::-1]


def read_answer(text: str) -> int | None:
    """The number a reversed answer spells, or None when it is not digits only."""
    text = text.strip()
    return int(text[::-1]) if text.isdigit() else None


def sample_problems(n: int, digits: int, seed: int, held_out: bool) -> list[tuple[int, int]]:
    """n distinct problems from the held-out split (held_out=True) or the training split."""
    rng, top = random.Random(seed), 10**digits
    seen: set[tuple[int, int]] = set()
    out = []
    while len(out) < n:
        a, b = rng.randrange(top), rng.randrange(top)
        if is_held_out(a, b) == held_out and (a, b) not in seen:
            seen.add((a, b))
            out.append((a, b))
    return out


def load_task(model_dir: str) -> dict[str, Any]:
    """The task a checkpoint was trained on (task.json, written next to the weights)."""
    with open(os.path.join(model_dir, "task.json")) as f:
        return json.load(f)


# ---- tokenizer -----------------------------------------------------------------------------------------


def build_tokenizer() -> Any:
    """One token per character; decoding joins tokens without spaces and drops <|endoftext|>."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(EOS, special=True), AddedToken(UNK, special=True)])
    return tok


# ---- training ------------------------------------------------------------------------------------------


def build_model(args: argparse.Namespace, eos_id: int) -> Any:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=VOCAB_SIZE, hidden_size=args.hidden_size, intermediate_size=4 * args.hidden_size,
        num_hidden_layers=args.num_layers, num_attention_heads=args.num_heads,
        num_key_value_heads=args.num_heads // 2, head_dim=args.hidden_size // args.num_heads,
        max_position_embeddings=128, rope_theta=10000.0, tie_word_embeddings=True,
        bos_token_id=eos_id, eos_token_id=eos_id, pad_token_id=eos_id,
    )  # fmt: skip
    return Qwen3ForCausalLM(config)


def make_batch(rng: random.Random, batch_size: int, digits: int, tok: Any) -> tuple[Any, Any]:
    """Token ids [batch, seq] and labels with the prompt masked out (loss on answer + eos only)."""
    import torch

    top, rows, labels = 10**digits, [], []
    while len(rows) < batch_size:
        a, b = rng.randrange(top), rng.randrange(top)
        if is_held_out(a, b):
            continue
        p = tok.encode(prompt_text(a, b, digits)).ids
        ans = [*tok.encode(answer_text(a, b, digits)).ids, tok.token_to_id(EOS)]
        rows.append(p + ans)
        labels.append([-100] * len(p) + ans)
    return torch.tensor(rows), torch.tensor(labels)


def held_out_accuracy(model: Any, problems: list[tuple[int, int]], digits: int, tok: Any) -> float:
    """Exact-match rate of greedy answers (teacher-forced argmax: the same thing for fixed-length answers)."""
    import torch

    rows = [tok.encode(prompt_text(a, b, digits) + answer_text(a, b, digits)).ids for a, b in problems]
    ids = torch.tensor([[*r, tok.token_to_id(EOS)] for r in rows])
    num_prompt = len(prompt_text(0, 0, digits))
    model.eval()
    with torch.no_grad():
        pred = model(input_ids=ids).logits[:, num_prompt - 1 : -1].argmax(-1)
    model.train()
    return (pred == ids[:, num_prompt:]).all(-1).float().mean().item()


def train(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    tok = build_tokenizer()
    model = build_model(args, tok.token_to_id(EOS))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    warmup = max(1, args.steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, max(0.05, (args.steps - s) / (args.steps - warmup)))
    )
    check = sample_problems(2000, args.digits, seed=12345, held_out=True)
    start, acc, step = time.perf_counter(), 0.0, 0
    for step in range(1, args.steps + 1):
        ids, labels = make_batch(rng, args.batch_size, args.digits, tok)
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        if step % args.eval_every == 0 or step == args.steps:
            acc = held_out_accuracy(model, check, args.digits, tok)
            elapsed = time.perf_counter() - start
            print(json.dumps({"step": step, "loss": round(loss.item(), 4), "held_out_accuracy": acc,
                              "seconds": round(elapsed, 1)}), file=sys.stderr, flush=True)  # fmt: skip
            if acc >= args.target_accuracy:
                break
    save(model, tok, args)
    return {"out": args.out, "steps": step, "held_out_accuracy": acc, "seconds": round(time.perf_counter() - start, 1),
            "parameters": sum(p.numel() for p in model.parameters())}  # fmt: skip


def save(model: Any, tok: Any, args: argparse.Namespace) -> None:
    """config.json, generation_config.json, model.safetensors, tokenizer files and task.json."""
    os.makedirs(args.out, exist_ok=True)
    model.generation_config.eos_token_id = tok.token_to_id(EOS)
    model.generation_config.pad_token_id = tok.token_to_id(EOS)
    model.save_pretrained(args.out, safe_serialization=True)
    tok.save(os.path.join(args.out, "tokenizer.json"))
    _write_json(os.path.join(args.out, "tokenizer_config.json"), {
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS, "pad_token": EOS, "unk_token": UNK,
        "model_max_length": 128, "chat_template": CHAT_TEMPLATE,
    })  # fmt: skip
    _write_json(os.path.join(args.out, "task.json"), {
        "task": "addition", "digits": args.digits,
        "format": "operands zero-padded to digits, sum to digits+1, every number least significant digit first",
        "held_out": f"crc32('{{a}}+{{b}}') % 100 < {HELD_OUT_PERCENT}", "max_tokens": args.digits + 2,
        "seed": args.seed,
    })  # fmt: skip


def _write_json(path: str, data: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="checkpoint directory to write")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--digits", type=int, default=3)
    p.add_argument("--hidden-size", type=int, default=128)
    p.add_argument("--num-layers", type=int, default=2)
    p.add_argument("--num-heads", type=int, default=4)
    p.add_argument("--steps", type=int, default=3000, help="at most this many optimizer steps")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--eval-every", type=int, default=200)
    p.add_argument(
        "--target-accuracy", type=float, default=0.999, help="stop once held-out accuracy reaches it"
    )
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: the fastest on a shared machine)"
    )
    args = p.parse_args()
    print(json.dumps(train(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
