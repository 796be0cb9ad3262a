"""Losses and holdout scores: the training loss per task, and the holdout loss plus the task's
metric (ROC AUC, accuracy, or RMSE in target units) computed after every epoch."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .network import PREDICT_BATCH

if TYPE_CHECKING:
    import numpy as np
    import torch

    from .data import TabularSpec


def roc_auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC AUC (Mann-Whitney, ties averaged); NaN when only one class is present."""
    import numpy as np

    positive = np.asarray(y) > 0.5
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(score, kind="mergesort")
    ordered = np.asarray(score)[order]
    group = np.cumsum(np.r_[True, ordered[1:] != ordered[:-1]]) - 1
    ranks = np.bincount(group, weights=np.arange(1, len(ordered) + 1)) / np.bincount(group)
    rank_sum = ranks[group][positive[order]].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def evaluate(
    net: torch.nn.Module,
    spec: TabularSpec,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
    autocast: Callable[[], contextlib.AbstractContextManager[Any]],
) -> tuple[float, str, float]:
    """Holdout mean loss and the task metric (roc_auc, accuracy or rmse in target units)."""
    import torch
    import torch.nn.functional as F  # noqa: N812

    x_num, x_cat, y = data
    net.eval()
    outs = []
    with torch.no_grad():
        for start in range(0, len(y), PREDICT_BATCH):
            with autocast():
                outs.append(
                    net(
                        x_num[start : start + PREDICT_BATCH], x_cat[start : start + PREDICT_BATCH]
                    ).float()
                )
        out = torch.cat(outs)
        if spec.task == "binary_classification":
            loss = F.binary_cross_entropy_with_logits(out[:, 0], y).item()
            metric = ("epoch_holdout_roc_auc", roc_auc(y.cpu().numpy(), out[:, 0].cpu().numpy()))
        elif spec.task == "multiclass_classification":
            loss = F.cross_entropy(out, y).item()
            metric = ("epoch_holdout_accuracy", (out.argmax(1) == y).float().mean().item())
        else:
            loss = F.mse_loss(out[:, 0], y).item()
            metric = ("epoch_holdout_rmse", math.sqrt(loss) * spec.target_std)
    net.train()
    return loss, metric[0], float(metric[1])


def loss_function(task: str, reduction: str) -> Callable[[Any, Any], Any]:
    """The training loss of a task on the network's raw output: BCE on logits, cross-entropy,
    or MSE on the standardised target."""
    import torch.nn.functional as F  # noqa: N812

    if task == "binary_classification":
        return lambda out, y: F.binary_cross_entropy_with_logits(out[:, 0], y, reduction=reduction)
    if task == "multiclass_classification":
        return lambda out, y: F.cross_entropy(out, y, reduction=reduction)
    return lambda out, y: F.mse_loss(out[:, 0], y, reduction=reduction)
