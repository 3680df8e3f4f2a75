"""Optimizer and learning-rate schedule from the `train` config (stepped once per iteration)."""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch


def build_optimizer(cfg: Mapping[str, Any], params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    name = cfg["name"]
    lr = float(cfg["lr"])
    weight_decay = float(cfg.get("weight_decay", 0.0) or 0.0)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=float(cfg.get("momentum", 0.0)), weight_decay=weight_decay)
    raise ValueError(f"train.optimizer.name={name} is unknown; choose adam, adamw or sgd")


def build_scheduler(cfg: Mapping[str, Any] | None, optimizer: torch.optim.Optimizer, iterations: int):
    name = (cfg or {}).get("name", "none")
    if name == "none":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(cfg["step_size"]), gamma=float(cfg["gamma"]))
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=iterations, eta_min=float(cfg.get("eta_min", 0.0)))
    raise ValueError(f"train.lr_schedule.name={name} is unknown; choose none, step or cosine")
