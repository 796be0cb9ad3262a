"""The networks: category embeddings + numeric inputs -> MLP (``TabularNet``), and the
one-input wrapper that ``torch.export`` sees (``ExportedTabularNet``).

They subclass ``torch.nn.Module``, so they are defined on first use (``network_classes``):
importing the package does not import torch. The package's ``__getattr__`` hands them out by
name, which is how pickle finds them.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .data import TabularSpec

if TYPE_CHECKING:
    import torch

PREDICT_BATCH = 65536  # rows per forward pass when predicting or evaluating


@functools.cache
def network_classes() -> tuple[type, type]:
    """(TabularNet, ExportedTabularNet), defined once per process."""
    import torch
    from torch import nn

    class TabularNet(nn.Module):
        """Category embeddings concatenated with numeric inputs, then an MLP."""

        def __init__(
            self,
            n_numeric: int,
            cardinalities: Sequence[int],
            embedding_dims: Sequence[int],
            hidden_sizes: Sequence[int],
            output_dim: int,
        ) -> None:
            super().__init__()
            self.embeddings = nn.ModuleList(
                nn.Embedding(c, d) for c, d in zip(cardinalities, embedding_dims, strict=True)
            )
            layers: list[nn.Module] = []
            width = n_numeric + sum(embedding_dims)
            for size in hidden_sizes:
                layers += [nn.Linear(width, size), nn.ReLU()]
                width = size
            layers.append(nn.Linear(width, output_dim))
            self.mlp = nn.Sequential(*layers)

        def forward(self, x_num: torch.Tensor, x_cat: torch.Tensor) -> torch.Tensor:
            parts = [x_num] + [emb(x_cat[:, i]) for i, emb in enumerate(self.embeddings)]
            return self.mlp(torch.cat(parts, dim=1))

    class ExportedTabularNet(nn.Module):
        """One float input [numeric | category indices] -> probabilities or predictions."""

        def __init__(self, net: nn.Module, spec_json: str) -> None:
            super().__init__()
            spec = TabularSpec.from_json(spec_json)
            self.net = net
            self.n_numeric = len(spec.numeric)
            self.task = spec.task
            self.target_mean = spec.target_mean
            self.target_std = spec.target_std

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.net(x[:, : self.n_numeric], x[:, self.n_numeric :].long())
            if self.task == "binary_classification":
                p = torch.sigmoid(out)
                return torch.cat([1 - p, p], dim=1)
            if self.task == "multiclass_classification":
                return torch.softmax(out, dim=1)
            return out * self.target_std + self.target_mean

    for cls in (TabularNet, ExportedTabularNet):
        cls.__module__ = __package__  # pickle looks them up through the package's __getattr__
        cls.__qualname__ = cls.__name__
    return TabularNet, ExportedTabularNet


def build_network(spec: TabularSpec) -> torch.nn.Module:
    """A freshly initialised network for a spec (uses torch's global RNG)."""
    tabular_net = network_classes()[0]
    return tabular_net(
        len(spec.numeric),
        spec.cardinalities,
        spec.embedding_dims,
        spec.hidden_sizes,
        spec.output_dim,
    )
