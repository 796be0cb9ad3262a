"""Training throughput of the Torch executor vs a plain hand-written torch loop.

Same synthetic data, same architecture, same batch size, epochs and optimizer, in the same
process. Runs come in pairs (executor then plain, then plain then executor, ...) so background
load hits both sides; the verdict uses the median of the per-pair throughput ratios.
Both sides are timed end to end: preprocessing, per-epoch holdout evaluation and training. The
executor additionally computes ROC AUC, keeps the best weights and writes a checkpoint every
epoch; that is the overhead measured. Target: executor throughput >= 95% of the plain loop.

    .venv/bin/python benchmarks/bench_torch_executor.py            # CPU, or CUDA if present
    .venv/bin/python benchmarks/bench_torch_executor.py --device cuda   # + AMP rows on CUDA
    .venv/bin/python benchmarks/bench_torch_executor.py --threads 1 --repeats 9  # busy host
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from mlops_resources.torch_executor import TabularColumns, TorchExecutorResource, select_device

NUMERIC = [f"x{i}" for i in range(8)]
CATEGORICAL = ["shop", "region"]
HIDDEN = [64, 32]
EMBEDDING_DIM = 4


def make_data(rows: int, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    rng = np.random.default_rng(seed)
    df = pd.DataFrame(rng.normal(size=(rows, len(NUMERIC))), columns=NUMERIC)
    df["shop"] = rng.integers(0, 50, rows).astype(str)
    df["region"] = rng.choice(["n", "s", "e", "w", "c"], rows)
    logit = df["x0"] - 0.5 * df["x1"] + 0.3 * df["x2"] * df["x3"] + (df["region"] == "n")
    df["label"] = np.where(rng.random(rows) < 1 / (1 + np.exp(-logit)), "yes", "no")
    df.loc[rng.random(rows) < 0.02, "x4"] = np.nan
    cut = int(rows * 0.8)
    return df.iloc[:cut].reset_index(drop=True), df.iloc[cut:].reset_index(drop=True)


class PlainNet(nn.Module):
    """The same architecture as the executor's network, written by hand."""

    def __init__(self, cardinalities: list[int]) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(c, EMBEDDING_DIM) for c in cardinalities)
        width = len(NUMERIC) + EMBEDDING_DIM * len(cardinalities)
        layers: list[nn.Module] = []
        for size in HIDDEN:
            layers += [nn.Linear(width, size), nn.ReLU()]
            width = size
        self.mlp = nn.Sequential(*layers, nn.Linear(width, 1))

    def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
        parts = [x_num] + [emb(x_cat[:, i]) for i, emb in enumerate(self.embeddings)]
        return self.mlp(torch.cat(parts, dim=1))


def plain_loop(
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    *,
    device: torch.device,
    precision: str,
    epochs: int,
    batch_size: int,
    seed: int,
) -> float:
    """A typical hand-written loop; returns wall seconds."""
    sync(device)
    start = time.perf_counter()
    medians = train[NUMERIC].median()
    filled = train[NUMERIC].fillna(medians)
    mean, std = filled.mean(), filled.std(ddof=0).replace(0, 1)
    vocab = [pd.Index(sorted(train[c].unique())) for c in CATEGORICAL]

    def encode(df: pd.DataFrame) -> tuple[torch.Tensor, ...]:
        x_num = ((df[NUMERIC].fillna(medians) - mean) / std).to_numpy(np.float32)
        x_cat = np.stack(
            [v.get_indexer(df[c]) + 1 for v, c in zip(vocab, CATEGORICAL, strict=True)], axis=1
        )
        y = (df["label"] == "yes").to_numpy(np.float32)
        return tuple(
            torch.from_numpy(np.ascontiguousarray(a)).to(device)
            for a in (x_num, x_cat.astype(np.int64), y)
        )

    x_num, x_cat, y = encode(train)
    h_num, h_cat, h_y = encode(holdout)
    torch.manual_seed(seed)
    model = PlainNet([len(v) + 1 for v in vocab]).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(y), device=device)
        for begin in range(0, len(y), batch_size):
            idx = perm[begin : begin + batch_size]
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = loss_fn(model(x_num[idx], x_cat[idx])[:, 0].float(), y[idx])
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        model.eval()
        with torch.no_grad():
            holdout_loss = loss_fn(model(h_num, h_cat)[:, 0], h_y).item()
    assert np.isfinite(holdout_loss)
    sync(device)
    return time.perf_counter() - start


def executor_fit(
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    *,
    device: torch.device,
    precision: str,
    epochs: int,
    batch_size: int,
    seed: int,
) -> float:
    resource = TorchExecutorResource(
        device=device.type,
        device_index=device.index or 0,
        precision=precision,
        max_epochs=epochs,
        patience=epochs + 1,
        batch_size=batch_size,
        checkpoint_every=1,
        hidden_sizes=HIDDEN,
        embedding_dim=EMBEDDING_DIM,
    )
    quiet = logging.getLogger("bench.executor")
    quiet.setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        sync(device)
        start = time.perf_counter()
        resource.fit(
            train,
            holdout,
            TabularColumns(NUMERIC, CATEGORICAL, "label", "binary_classification", ["no", "yes"]),
            seed=seed,
            checkpoint_dir=Path(tmp),
            log=quiet,
            log_metric=lambda *_: None,
        )
        sync(device)
        return time.perf_counter() - start


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare(
    train: pd.DataFrame,
    holdout: pd.DataFrame,
    *,
    device: torch.device,
    precision: str,
    epochs: int,
    batch_size: int,
    repeats: int,
) -> dict[str, float]:
    kwargs = {"device": device, "precision": precision, "batch_size": batch_size}
    executor_fit(train.head(2000), holdout.head(500), epochs=1, seed=0, **kwargs)  # warm up
    plain_loop(train.head(2000), holdout.head(500), epochs=1, seed=0, **kwargs)
    times: dict[str, list[float]] = {"executor": [], "plain": []}
    runners = {"executor": executor_fit, "plain": plain_loop}
    for rep in range(repeats):  # pairs, order alternating, so load drift hits both sides
        for name in ("executor", "plain") if rep % 2 == 0 else ("plain", "executor"):
            times[name].append(runners[name](train, holdout, epochs=epochs, seed=rep, **kwargs))
    samples = len(train) * epochs
    print(
        f"  {precision} seconds per run: "
        + "; ".join(
            f"{name} " + ", ".join(f"{v:.2f}" for v in values) for name, values in times.items()
        )
    )
    row = {}
    for name, values in times.items():
        row[f"{name}_best_sps"] = samples / min(values)
        row[f"{name}_median_sps"] = samples / statistics.median(values)
    paired = [p / e for e, p in zip(times["executor"], times["plain"], strict=True)]
    row["ratio_paired_median"] = statistics.median(paired)
    row["ratio_best"] = row["executor_best_sps"] / row["plain_best_sps"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=250_000, help="rows (80%% train)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto", help="auto|cpu|cuda|mps")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch CPU threads (0 = torch default); 1 is steadier on busy hosts",
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = select_device(args.device)
    train, holdout = make_data(args.rows)
    precisions = ["fp32"]
    if device.type == "cuda":
        precisions += ["bf16", "fp16"] if torch.cuda.is_bf16_supported() else ["fp16"]
    print(
        f"torch {torch.__version__} on {device} ({torch.get_num_threads()} threads); "
        f"train rows {len(train)}, holdout {len(holdout)}, epochs {args.epochs}, "
        f"batch {args.batch_size}, repeats {args.repeats}"
    )
    print(
        "| precision | executor samples/s (best / median) | plain loop samples/s "
        "(best / median) | executor / plain: median of pairs (best / best) |"
    )
    print("|---|---|---|---|")
    for precision in precisions:
        row = compare(
            train,
            holdout,
            device=device,
            precision=precision,
            epochs=args.epochs,
            batch_size=args.batch_size,
            repeats=args.repeats,
        )
        print(
            f"| {precision} | {row['executor_best_sps']:,.0f} / {row['executor_median_sps']:,.0f}"
            f" | {row['plain_best_sps']:,.0f} / {row['plain_median_sps']:,.0f}"
            f" | {row['ratio_paired_median']:.3f} ({row['ratio_best']:.3f}) |"
        )
        overhead = 1 - row["ratio_paired_median"]
        verdict = "meets" if overhead <= 0.05 else "MISSES"
        print(
            f"  -> {precision}: executor overhead {100 * overhead:+.1f}% (median of paired "
            f"runs), {verdict} the <=5% target"
        )


if __name__ == "__main__":
    main()
