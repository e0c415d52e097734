"""Train the tiny Llama-style decoder on standard-library docstrings and save it as a Hugging Face folder.

Run from the repository root after ``make_corpus.py``::

    python examples/tiny_llama/train.py            # options: --steps, --max-minutes, --out

Writes ``config.json``, ``model.safetensors``, ``generation_config.json``, ``tokenizer.json`` and
``tokenizer_config.json`` next to this file (or into ``--out``), and prints the losses the README quotes.
The exporter needs real weights to judge lossy work: random weights have no outlier channels, and a
quantized random decoder that keeps its greedy tokens says little about a trained one.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

HERE = Path(__file__).resolve().parent
VOCAB = 4096
SEQ = 128
BATCH = 16
EVAL_CHUNKS = 96
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]


def read_docs(path: Path) -> list[str]:
    """The docstrings of one corpus file (blocks separated by a blank line)."""
    return [d.strip() for d in path.read_text(encoding="utf-8").split("\n\n") if d.strip()]


def train_tokenizer(docs: list[str]) -> PreTrainedTokenizerFast:
    """A byte-level BPE on the training docstrings, wrapped as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(docs, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=256,
    )


def chunks(tokenizer: PreTrainedTokenizerFast, docs: list[str]) -> torch.Tensor:
    """Every docstring's tokens followed by ``</s>``, concatenated and cut into rows of ``SEQ`` tokens."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for row in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        ids.extend(row)
        ids.append(eos)
    rows = len(ids) // SEQ
    return torch.tensor(ids[: rows * SEQ], dtype=torch.long).view(rows, SEQ)


def build_model(vocab: int) -> LlamaForCausalLM:
    """Llama-style: grouped-query attention (4 heads, 2 key/value heads), rotary positions, tied
    embeddings; about 1.3 M parameters, 5 MB in float32."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=3,
    )
    return LlamaForCausalLM(config)


@torch.no_grad()
def mean_loss(model: LlamaForCausalLM, rows: torch.Tensor) -> float:
    """Mean next-token cross-entropy over ``rows`` (nats per token)."""
    model.eval()
    batches = [rows[i : i + BATCH] for i in range(0, len(rows), BATCH)]
    losses = [model(input_ids=b, labels=b).loss for b in batches]
    return float(torch.stack(losses).mean())


def train(
    model: LlamaForCausalLM, rows: torch.Tensor, steps: int, *, max_minutes: float, lr: float, stop: int
) -> tuple[int, float]:
    """AdamW with linear warm-up and cosine decay over ``steps``, stopping early at ``max_minutes`` (the
    machine is shared, so the bound is wall time) or after step ``stop`` (a run the bound cut short is
    repeated exactly with ``--stop-step``). Returns (steps run, seconds)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1, betas=(0.9, 0.95))
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps)))),
    )
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    model.train()
    step = 0
    for step in range(1, steps + 1):
        batch = rows[torch.randint(len(rows), (BATCH,), generator=generator)]
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        elapsed = time.perf_counter() - start
        if step % 50 == 0:
            print(f"step {step:5d}  loss {loss.item():.3f}  {elapsed:6.1f} s", flush=True)
        if step == stop:
            break
        if elapsed > max_minutes * 60:
            print(f"stopped at step {step}: the {max_minutes} minute bound")
            break
    return step, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--max-minutes", type=float, default=8.0)
    parser.add_argument("--stop-step", type=int, default=0, help="stop after this step (0: --steps)")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--corpus", type=Path, default=HERE / "corpus")
    parser.add_argument("--out", type=Path, default=HERE)
    args = parser.parse_args()
    from transformers import GenerationConfig

    torch.set_num_threads(1)
    torch.manual_seed(0)
    train_docs, heldout_docs = read_docs(args.corpus / "train.txt"), read_docs(args.corpus / "heldout.txt")
    tokenizer = train_tokenizer(train_docs)
    train_rows, heldout_rows = chunks(tokenizer, train_docs), chunks(tokenizer, heldout_docs)
    print(f"tokens: train {train_rows.numel()}, held out {heldout_rows.numel()}; vocab {len(tokenizer)}")
    model = build_model(len(tokenizer))
    print(f"parameters: {sum(p.numel() for p in model.parameters())}")
    probe = torch.randperm(len(train_rows), generator=torch.Generator().manual_seed(1))[:EVAL_CHUNKS]
    train_probe, heldout_probe = train_rows[probe], heldout_rows[:EVAL_CHUNKS]
    before = mean_loss(model, train_probe), mean_loss(model, heldout_probe)
    steps, seconds = train(
        model, train_rows, args.steps, max_minutes=args.max_minutes, lr=args.lr, stop=args.stop_step
    )
    after = mean_loss(model, train_probe), mean_loss(model, heldout_probe)
    for name, (tr, ho) in (("before", before), ("after", after)):
        print(f"{name}: train loss {tr:.3f} (ppl {math.exp(tr):.1f}), ", end="")
        print(f"held out {ho:.3f} (ppl {math.exp(ho):.1f})")
    print(f"trained {steps} steps x {BATCH} x {SEQ} tokens in {seconds:.0f} s")
    model.eval()
    ids = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 3}
    model.generation_config = GenerationConfig(**ids, do_sample=False)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)


if __name__ == "__main__":
    main()
