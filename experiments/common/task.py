"""The contract between the runner and a task (cnf2d now; otflow and stl10 plug in the same way).

A task is a class named by `task.cls` ("package.module:Class") in the task config, built as
`Class(cfg.task, ctx)`. The runner owns the loop, the precision policy, the optimizer, timing,
checkpoints and logging; the task owns its data, model, loss, metrics and figures.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol

import torch
from torch import nn

from .integrate import Integrator
from .precision import RunPrecision


@dataclass(frozen=True)
class TaskContext:
    device: torch.device
    precision: RunPrecision
    integrator: Integrator
    seed: int
    batch_size: int


class Task(Protocol):
    # The metric that picks the "best" evaluation in summary.json, and whether lower is better.
    primary_metric: str
    primary_mode: str  # "min" or "max"

    def build_model(self) -> nn.Module:
        """The model on ctx.device, in fp32 (the runner never casts parameters)."""

    def next_batch(self) -> Any:
        """The next training batch, from generators the task owns (reproducible per seed)."""

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        """Scalar fp32 training loss. Called inside the run's training autocast."""

    def evaluate(self, model: nn.Module) -> dict[str, float]:
        """Metrics on fresh evaluation data, called under torch.no_grad() with model.eval().
        Use ctx.precision.autocast() for training-precision numbers and
        experiments.common.precision.full_precision() for fp32 ones."""

    def figures(self, model: nn.Module, directory: Path) -> list[Path]:
        """Write PNG figures into directory (called under no_grad at the end); return their paths."""

    def state_dict(self) -> dict[str, Any]:
        """The data generators' states (for bit-identical resumes)."""

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


def load_task_class(spec: str) -> type:
    module_name, _, class_name = spec.partition(":")
    if not class_name:
        raise ValueError(f"task.cls={spec!r} must look like 'package.module:ClassName'")
    return getattr(importlib.import_module(module_name), class_name)
