"""The run directory: every file a run leaves behind, written so that a crash loses nothing.

    config.yaml    resolved configuration (written once, at the first start)
    env.json       machine and code of the first start, plus one entry per resume
    metrics.csv    one row per evaluation, appended and flushed as it is produced
    summary.json   status, final/best metrics, time and memory figures (atomic: temp file + rename)
    checkpoint.pt  everything needed to resume (atomic as well)
    figures/       PNG figures
"""
from __future__ import annotations

import csv
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

OWN_FILES = ("config.yaml", "env.json", "metrics.csv", "summary.json", "checkpoint.pt")
OWN_DIRS = ("figures", "wandb")


class RunDirExists(RuntimeError):
    """A fresh run was asked for in a directory that already holds a run."""


class RunDir:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).resolve()
        self.config = self.path / "config.yaml"
        self.env = self.path / "env.json"
        self.metrics = self.path / "metrics.csv"
        self.summary = self.path / "summary.json"
        self.checkpoint = self.path / "checkpoint.pt"
        self.figures = self.path / "figures"

    def holds_run(self) -> bool:
        return self.summary.exists() or self.checkpoint.exists() or self.metrics.exists()

    def prepare_fresh(self, overwrite: bool) -> None:
        if self.holds_run():
            if not overwrite:
                raise RunDirExists(
                    f"run dir {self.path} already holds a run; pass resume=true to continue it, "
                    "overwrite=true to replace it, or run_name=<other> for a new one"
                )
            self.remove_own_files()
        self.path.mkdir(parents=True, exist_ok=True)

    def remove_own_files(self) -> None:
        """Delete only what a run writes (never Hydra's or the user's other files)."""
        for name in OWN_FILES:
            (self.path / name).unlink(missing_ok=True)
        for name in OWN_DIRS:
            shutil.rmtree(self.path / name, ignore_errors=True)

    # --- JSON / text -------------------------------------------------------------------------
    def write_json(self, path: Path, data: Mapping[str, Any]) -> None:
        atomic_write_text(path, json.dumps(_jsonable(data), indent=2, sort_keys=True) + "\n")

    def read_json(self, path: Path) -> dict[str, Any]:
        return json.loads(path.read_text())

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        self.write_json(self.summary, summary)

    # --- metrics.csv ----------------------------------------------------------------------------
    def append_metrics(self, row: Mapping[str, Any]) -> None:
        """Append one row; when a row brings new columns the file is rewritten with the wider
        header (rare: the columns of a task are fixed after its first evaluation)."""
        rows = self.read_metrics() if self.metrics.exists() else []
        columns = list(rows[0].keys()) if rows else []
        new = [k for k in row if k not in columns]
        if new or not rows:
            rows.append(dict(row))
            self._rewrite_metrics(rows, columns + new)
            return
        with self.metrics.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=columns).writerow({k: _csv_value(row.get(k)) for k in columns})
            f.flush()
            os.fsync(f.fileno())

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.exists():
            return []
        with self.metrics.open(newline="") as f:
            return [{k: _parse(v) for k, v in r.items()} for r in csv.DictReader(f)]

    def truncate_metrics(self, last_iteration: int) -> None:
        """Drop rows written after the checkpoint a resume starts from (they will be redone)."""
        rows = self.read_metrics()
        if not rows:
            return
        kept = [r for r in rows if r["iteration"] <= last_iteration]
        self._rewrite_metrics(kept, list(rows[0].keys()))

    def _rewrite_metrics(self, rows: Iterable[Mapping[str, Any]], columns: list[str]) -> None:
        tmp = self.metrics.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for r in rows:
                writer.writerow({k: _csv_value(r.get(k)) for k in columns})
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.metrics)

    # --- checkpoint -------------------------------------------------------------------------------
    def save_checkpoint(self, state: Mapping[str, Any]) -> None:
        tmp = self.checkpoint.with_suffix(".pt.tmp")
        torch.save(dict(state), tmp)
        os.replace(tmp, self.checkpoint)

    def load_checkpoint(self) -> dict[str, Any]:
        # Our own file: it holds RNG states and Python objects, so weights_only=False is needed.
        return torch.load(self.checkpoint, map_location="cpu", weights_only=False)


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _csv_value(v: Any) -> Any:
    return "" if v is None else v


def _parse(v: str) -> Any:
    if v == "":
        return None
    try:
        x = float(v)
    except ValueError:
        return v
    return int(x) if x.is_integer() and "." not in v and "e" not in v.lower() and "n" not in v.lower() else x


def _jsonable(x: Any) -> Any:
    """JSON has no NaN/inf: write them as strings so the file stays standard JSON."""
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, torch.Tensor) and x.numel() == 1:
        return _jsonable(x.item())
    return x
