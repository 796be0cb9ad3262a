"""The fitted model, ``TorchTabularModel``: scikit-learn's prediction interface on raw feature
DataFrames, and its safe two-file form (``model.json`` + weights-only ``state_dict.pt``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .checkpoint import atomic_torch_save, atomic_write_text, cpu_state
from .data import TabularSpec
from .network import PREDICT_BATCH, build_network, network_classes

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch

    from .loop import TrainOutcome

MODEL_JSON = "model.json"
STATE_DICT_FILE = "state_dict.pt"


class TorchTabularModel:
    """A fitted tabular network with the scikit-learn prediction interface (CPU inference).

    ``predict(df)`` returns class labels (strings) or floats, ``predict_proba(df)`` returns
    ``(n, n_classes)`` probabilities in the order of ``classes_``. Input: the raw feature
    DataFrame; numeric NaN is imputed with train medians, unseen categories map to 'unknown'.
    """

    def __init__(
        self,
        spec: TabularSpec,
        state_dict: dict[str, Any],
        *,
        history: list[dict[str, float]] | None = None,
        best_epoch: int | None = None,
        stop_reason: str | None = None,
    ) -> None:
        import numpy as np
        import torch

        self.spec = spec
        with torch.random.fork_rng(devices=[]):  # building initialises weights: keep caller RNG
            self.network = build_network(spec)
        self.network.load_state_dict(state_dict)
        self.network.eval()
        self.history = list(history or [])
        self.best_epoch = best_epoch
        self.stop_reason = stop_reason
        self.feature_names_in_ = np.asarray(spec.features, dtype=object)
        self.n_features_in_ = len(spec.features)
        if spec.task != "regression":
            self.classes_ = np.asarray(spec.classes)

    @classmethod
    def from_outcome(cls, spec: TabularSpec, outcome: TrainOutcome) -> TorchTabularModel:
        """The model ``run_training`` produced: its best weights and training summary."""
        return cls(
            spec,
            outcome.state_dict,
            history=outcome.history,
            best_epoch=outcome.best_epoch,
            stop_reason=outcome.stop_reason,
        )

    @property
    def _estimator_type(self) -> str:
        return "regressor" if self.spec.task == "regression" else "classifier"

    @property
    def task(self) -> str:
        return self.spec.task

    def _raw(self, df: pd.DataFrame) -> np.ndarray:
        import numpy as np
        import torch

        x_num, x_cat = self.spec.encode_features(df)
        outs = []
        with torch.no_grad():
            for start in range(0, len(x_num), PREDICT_BATCH):
                stop = start + PREDICT_BATCH
                out = self.network(
                    torch.from_numpy(x_num[start:stop]), torch.from_numpy(x_cat[start:stop])
                )
                outs.append(out.float().numpy())
        if not outs:
            return np.zeros((0, self.spec.output_dim), dtype=np.float32)
        return np.concatenate(outs)

    def predict_proba(self, df: pd.DataFrame) -> np.ndarray:
        """Class probabilities, columns in the order of ``classes_``."""
        import numpy as np

        if self.spec.task == "regression":
            raise AttributeError("predict_proba is only available for classification")
        raw = self._raw(df).astype(np.float64)
        if self.spec.task == "binary_classification":
            p = 1.0 / (1.0 + np.exp(-raw[:, 0]))
            return np.stack([1.0 - p, p], axis=1)
        raw -= raw.max(axis=1, keepdims=True)
        e = np.exp(raw)
        return e / e.sum(axis=1, keepdims=True)

    def predict(self, df: pd.DataFrame) -> np.ndarray:
        """Class labels (strings) for classification, floats for regression."""
        import numpy as np

        if self.spec.task == "regression":
            raw = self._raw(df)[:, 0].astype(np.float64)
            return raw * self.spec.target_std + self.spec.target_mean
        return self.classes_[self.predict_proba(df).argmax(axis=1)]

    def state_dict(self) -> dict[str, Any]:
        """The network weights (CPU tensors)."""
        return cpu_state(self.network)

    def exportable_module(self) -> torch.nn.Module:
        """The network behind one float input [numeric | category indices] (torch.export-able)."""
        exported_cls = network_classes()[1]
        return exported_cls(self.network, self.spec.to_json()).eval()

    def describe(self) -> dict[str, Any]:
        """JSON-serialisable description: spec plus training summary."""
        return {
            "spec": json.loads(self.spec.to_json()),
            "history": self.history,
            "best_epoch": self.best_epoch,
            "stop_reason": self.stop_reason,
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``model.json`` (spec, history) and ``state_dict.pt`` (weights only)."""
        directory = Path(directory)
        atomic_torch_save(self.state_dict(), directory / STATE_DICT_FILE)
        atomic_write_text(
            json.dumps(self.describe(), indent=1, allow_nan=True), directory / MODEL_JSON
        )
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> TorchTabularModel:
        """Safe load: JSON for the spec, ``torch.load(weights_only=True)`` for the weights."""
        return cls.from_files(Path(directory) / MODEL_JSON, Path(directory) / STATE_DICT_FILE)

    @classmethod
    def from_files(cls, model_json: Path, state_dict_file: Path) -> TorchTabularModel:
        """Rebuild from a model.json and a state_dict file, unpickling nothing but tensors."""
        import torch

        described = json.loads(Path(model_json).read_text())
        spec = TabularSpec.from_json(json.dumps(described["spec"]))
        state = torch.load(state_dict_file, map_location="cpu", weights_only=True)
        return cls(
            spec,
            state,
            history=described.get("history"),
            best_epoch=described.get("best_epoch"),
            stop_reason=described.get("stop_reason"),
        )

    def __repr__(self) -> str:
        return (
            f"TorchTabularModel(task={self.spec.task!r}, features={len(self.spec.features)}, "
            f"hidden={self.spec.hidden_sizes}, best_epoch={self.best_epoch})"
        )


# Pickles (IO managers store fitted models) name the package, not this file: stored objects
# keep loading when files inside the package move.
TorchTabularModel.__module__ = __package__
