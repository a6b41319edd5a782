"""One step's metrics, reduced over processes in a single collective.

The loss computes each metric from tensors local to its process and micro-batch: masked sums and counts, minima,
maxima, per-process scalars. `StepMetrics` collects them, gathers all of them across processes in one call, and
reduces each by its kind, with the same arithmetic as a separate reduce per metric would use.

Example:
    >>> import torch
    >>> from accelerate import Accelerator
    >>> metrics = StepMetrics()
    >>> metrics.masked_mean("entropy", torch.tensor([[1.0, 3.0, 9.0]]), torch.tensor([[1.0, 1.0, 0.0]]))
    >>> metrics.min("entropy_ratio/min", torch.tensor(0.5))
    >>> metrics.reduce(Accelerator(cpu=True))
    {'entropy': 2.0, 'entropy_ratio/min': 0.5}
"""

from __future__ import annotations

from typing import Any

import torch

# kind -> reduction over the gathered (processes, width) values of one metric
_REDUCTIONS = {
    "mean": lambda v: (v[:, 0].sum() / v[:, 1].sum().clamp(min=1.0)).item(),
    "sum": lambda v: v.sum(0),
    "min": lambda v: v.min().item(),
    "max": lambda v: v.max().item(),
    "nanmin": lambda v: _nan_or(v, torch.min),
    "nanmax": lambda v: _nan_or(v, torch.max),
    "nanmean": lambda v: v.nanmean().item(),
}


def _nan_or(values: torch.Tensor, reduce: Any) -> float:
    kept = values[~torch.isnan(values)]
    return float("nan") if kept.numel() == 0 else reduce(kept).item()


class StepMetrics:
    """Local metric values of one process, reduced over all processes at once by `reduce`.

    Every process must add the same names in the same order (the gather is collective).
    """

    def __init__(self) -> None:
        self._entries: list[tuple[str, str, torch.Tensor]] = []

    def _add(self, name: str, kind: str, local: torch.Tensor) -> None:
        self._entries.append((name, kind, local.detach().float().reshape(-1)))

    def masked_mean(self, name: str, x: torch.Tensor, mask: torch.Tensor) -> None:
        """The mean of `x` over the tokens in `mask`, all processes' tokens together; sequence-level `x` (B, 1)
        counts once per sequence."""
        if x.shape[1] == 1:
            local = torch.stack([x.sum(), torch.tensor(float(x.shape[0]), device=x.device)])
        else:
            local = torch.stack([(x * mask).sum(), mask.sum().float()])
        self._add(name, "mean", local)

    def sum(self, name: str, local: torch.Tensor) -> None:
        """A vector of sums, summed over processes and returned as a tensor."""
        self._add(name, "sum", local)

    def min(self, name: str, local: torch.Tensor, *, ignore_nan: bool = False) -> None:
        self._add(name, "nanmin" if ignore_nan else "min", local)

    def max(self, name: str, local: torch.Tensor, *, ignore_nan: bool = False) -> None:
        self._add(name, "nanmax" if ignore_nan else "max", local)

    def process_mean(self, name: str, local: torch.Tensor) -> None:
        """The mean over processes of a per-process scalar, NaN left out."""
        self._add(name, "nanmean", local)

    def reduce(self, accelerator: Any) -> dict[str, Any]:
        """Gather every entry in one call; name -> float, or tensor for `sum` entries. Collective."""
        if not self._entries:
            return {}
        widths = [local.numel() for _, _, local in self._entries]
        gathered = accelerator.gather(torch.cat([local for _, _, local in self._entries]))
        gathered = gathered.reshape(-1, sum(widths)).cpu()
        reduced, start = {}, 0
        for (name, kind, _), width in zip(self._entries, widths, strict=True):
            reduced[name] = _REDUCTIONS[kind](gathered[:, start : start + width])
            start += width
        return reduced
