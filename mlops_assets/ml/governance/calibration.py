"""Calibration of a binary model's positive-class score: reliability curve, ECE, Brier."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    Frame = pd.DataFrame


def calibration_report(truth: np.ndarray, score: np.ndarray, bins: int) -> dict[str, Any]:
    """Reliability curve on equal-width bins, expected calibration error and Brier score for
    the positive-class score (`truth` is 0/1)."""
    import numpy as np

    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(score, edges[1:-1]), 0, bins - 1)
    curve, ece = [], 0.0
    for b in range(bins):
        rows = index == b
        if not rows.any():
            continue
        predicted, observed = float(score[rows].mean()), float(truth[rows].mean())
        ece += rows.sum() / len(score) * abs(observed - predicted)
        curve.append(
            {
                "bin": f"[{edges[b]:.2f}, {edges[b + 1]:.2f}{']' if b == bins - 1 else ')'}",
                "rows": int(rows.sum()),
                "mean_predicted": predicted,
                "fraction_positive": observed,
            }
        )
    return {
        "expected_calibration_error": float(ece),
        "brier": float(np.mean((score - truth) ** 2)),
        "curve": curve,
    }
