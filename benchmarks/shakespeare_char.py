"""nanoGPT's CPU "baby GPT" on Tiny Shakespeare, characters as bytes.

The run of nanoGPT's README (`config/train_shakespeare_char.py` with
`--device=cpu --block_size=64 --batch_size=12 --n_layer=4 --n_head=4
--n_embd=128 --max_iters=2000 --lr_decay_iters=2000 --dropout=0.0
--eval_iters=20`): the first 90% of the text for training and the last 10%
for validation (split by position), learning rate 1e-3 warming up over 100
steps and decaying (cosine) to 1e-4, AdamW betas (0.9, 0.99), weight decay
0.1, gradient clip 1.0. Every 250 steps the validation loss is estimated on
20 batches, as nanoGPT does; at the end the whole validation split is
scored. nanoGPT reports a validation loss of about 1.88 nats per character.

With `--torch` (needs the `bench` extra), a nanoGPT-style PyTorch model of
the same configuration (random-offset batches, as nanoGPT samples them) is
trained on the same machine afterwards, for the wall-time comparison.

Prints one JSON object.

    python benchmarks/shakespeare_char.py [--torch] [--steps 2000]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import hostinfo

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "..", "..", "shared", "data", "tinyshakespeare.txt")
TARGET = 1.88
RUN = dict(
    steps=2000,
    batch=12,
    context=64,
    layers=4,
    heads=4,
    width=128,
    lr=1e-3,
    min_lr=1e-4,
    warmup=100,
    beta2=0.99,
    weight_decay=0.1,
    clip=1.0,
    eval_every=250,
    eval_batches=20,
)


def split_by_position(path: str, folder: str) -> tuple[str, str]:
    """Writes the first 90% and the last 10% of `path` to two files."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    cut = int(len(text) * 0.9)
    paths = []
    for name, part in (("train.txt", text[:cut]), ("val.txt", text[cut:])):
        paths.append(os.path.join(folder, name))
        with open(paths[-1], "w", encoding="utf-8") as f:
            f.write(part)
    return paths[0], paths[1]


def run_tflm(train_path: str, val_path: str, folder: str, steps: int) -> dict:
    from tflm.train import config as config_lib
    from tflm.train import evaluate
    from tflm.train import fit
    from tflm.train import state

    out = os.path.join(folder, "model")
    config = config_lib.TrainConfig(
        data=(train_path,),
        validation_data=(val_path,),
        out=out,
        preset="nano-char",
        tokenizer="byte",
        steps=steps,
        batch_size=RUN["batch"],
        sequence_length=RUN["context"],
        learning_rate=RUN["lr"],
        min_learning_rate=RUN["min_lr"],
        warmup_steps=RUN["warmup"],
        beta_2=RUN["beta2"],
        weight_decay=RUN["weight_decay"],
        clip_norm=RUN["clip"],
        dropout=0.0,
        checkpoint_every=RUN["eval_every"],
        validate_every=RUN["eval_every"],
        eval_batches=RUN["eval_batches"],
        seed=1337,
    )
    start = time.perf_counter()
    fit.train(config, verbose=0)
    wall = time.perf_counter() - start
    records = state.read_log(out)
    curve = [
        [r["step"], round(r["val_loss"], 4)] for r in records if "val_loss" in r
    ]
    rates = [r["tokens_per_second"] for r in records if "loss" in r]
    final = evaluate.evaluate(
        out, val_path, batch_size=64, sequence_length=RUN["context"]
    )
    return {
        "val_loss_curve": curve,
        "final_val_loss": round(final["loss"], 4),
        "final_val_bits_per_character": round(final["bits_per_character"], 4),
        "wall_seconds": round(wall, 1),
        "median_tokens_per_second": round(sorted(rates)[len(rates) // 2]),
    }


def run_torch(train_path: str, val_path: str, steps: int) -> dict:
    """nanoGPT's model and loop, in PyTorch (eager, as on CPU)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    torch.manual_seed(1337)

    def load(path):
        with open(path, "rb") as f:
            return torch.tensor(list(f.read()), dtype=torch.long) + 3

    train, val = load(train_path), load(val_path)
    T, B, D, L = RUN["context"], RUN["batch"], RUN["width"], RUN["layers"]

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1, self.ln_2 = nn.LayerNorm(D), nn.LayerNorm(D)
            self.c_attn, self.c_proj = nn.Linear(D, 3 * D), nn.Linear(D, D)
            self.fc, self.proj = nn.Linear(D, 4 * D), nn.Linear(4 * D, D)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.c_attn(self.ln_1(x)).split(D, dim=2)
            q, k, v = (
                z.view(b, t, RUN["heads"], -1).transpose(1, 2)
                for z in (q, k, v)
            )
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.c_proj(y.transpose(1, 2).reshape(b, t, D))
            return x + self.proj(F.gelu(self.fc(self.ln_2(x))))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(259, D), nn.Embedding(T, D)
            self.blocks = nn.ModuleList(Block() for _ in range(L))
            self.ln_f = nn.LayerNorm(D)
            self.head = nn.Linear(D, 259, bias=False)
            self.head.weight = self.wte.weight
            for name, p in self.named_parameters():
                if p.dim() == 2:
                    std = 0.02 / math.sqrt(2 * L) if "proj" in name else 0.02
                    nn.init.normal_(p, 0.0, std)
                elif "bias" in name:
                    nn.init.zeros_(p)

        def forward(self, idx, targets):
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
            for block in self.blocks:
                x = block(x)
            logits = self.head(self.ln_f(x))
            return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def batch(data, offsets=None):
        if offsets is None:
            offsets = torch.randint(len(data) - T - 1, (B,))
        x = torch.stack([data[i : i + T] for i in offsets])
        y = torch.stack([data[i + 1 : i + 1 + T] for i in offsets])
        return x, y

    def lr_at(it):
        if it < RUN["warmup"]:
            return RUN["lr"] * (it + 1) / (RUN["warmup"] + 1)
        ratio = min((it - RUN["warmup"]) / (steps - RUN["warmup"]), 1.0)
        coeff = 0.5 * (1.0 + math.cos(math.pi * ratio))
        return RUN["min_lr"] + coeff * (RUN["lr"] - RUN["min_lr"])

    @torch.no_grad()
    def val_loss(batches=None):
        model.eval()
        if batches is None:  # The whole split, non-overlapping windows.
            starts = torch.arange(0, len(val) - T - 1, T + 1)
            chunks = [starts[i : i + 64] for i in range(0, len(starts), 64)]
            losses = [model(*batch(val, c)) * len(c) for c in chunks]
            result = float(sum(losses) / len(starts))
        else:
            result = float(
                sum(model(*batch(val)) for _ in range(batches)) / batches
            )
        model.train()
        return result

    start = time.perf_counter()
    model = GPT()
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": RUN["weight_decay"]},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=RUN["lr"],
        betas=(0.9, RUN["beta2"]),
    )
    curve = []
    for it in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(it)
        loss = model(*batch(train))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), RUN["clip"])
        optimizer.step()
        if (it + 1) % RUN["eval_every"] == 0:
            curve.append([it + 1, round(val_loss(RUN["eval_batches"]), 4)])
    wall = time.perf_counter() - start
    return {
        "val_loss_curve": curve,
        "final_val_loss": round(val_loss(), 4),
        "wall_seconds": round(wall, 1),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=RUN["steps"])
    parser.add_argument("--data", default=DATA)
    parser.add_argument(
        "--torch", action="store_true", help="also run the PyTorch comparator"
    )
    parser.add_argument(
        "--torch-only", action="store_true", help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if not os.path.exists(args.data):
        print(
            json.dumps({"skipped": f"{args.data} not found (../shared/data)"})
        )
        return
    with tempfile.TemporaryDirectory() as folder:
        train_path, val_path = split_by_position(args.data, folder)
        if args.torch_only:
            print(json.dumps(run_torch(train_path, val_path, args.steps)))
            return
        result = {
            "config": dict(RUN, steps=args.steps),
            "target_val_loss": TARGET,
        }
        result["load_average_before"] = os.getloadavg()[0]
        result["host"] = hostinfo.describe()
        result["tflm"] = run_tflm(train_path, val_path, folder, args.steps)
        result["meets_target"] = result["tflm"]["final_val_loss"] <= TARGET
    if args.torch:
        child = subprocess.run(
            [
                sys.executable,
                __file__,
                "--torch-only",
                "--steps",
                str(args.steps),
                "--data",
                args.data,
            ],
            capture_output=True,
            text=True,
        )
        if child.returncode:
            result["torch"] = {"error": child.stderr.strip().splitlines()[-1:]}
        else:
            result["torch"] = json.loads(child.stdout.strip().splitlines()[-1])
            result["faster_than_torch"] = (
                result["tflm"]["wall_seconds"] < result["torch"]["wall_seconds"]
            )
    # Other processes on the machine skew both wall times.
    result["load_average_after"] = os.getloadavg()[0]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
