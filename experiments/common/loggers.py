"""Experiment trackers (W&B or none) and the console progress display.

`logger=none` must not import wandb at all (it is slow to import and some clusters lack it), so
wandb is imported inside WandbLogger only.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping, Protocol

log = logging.getLogger(__name__)


class Tracker(Protocol):
    run_id: str | None

    def log_metrics(self, row: Mapping[str, Any], step: int) -> None: ...
    def log_figures(self, paths: list[Path], step: int) -> None: ...
    def finish(self, summary: Mapping[str, Any], failed: bool) -> None: ...


class NullTracker:
    run_id = None

    def log_metrics(self, row, step):
        pass

    def log_figures(self, paths, step):
        pass

    def finish(self, summary, failed):
        pass


class WandbTracker:
    """One W&B run per run directory; a resumed run continues the same W&B run id."""

    def __init__(self, cfg: Mapping[str, Any], config: dict, run_dir: Path, name: str, run_id: str | None):
        import wandb

        mode = cfg.get("mode") or "offline"
        directory = Path(cfg.get("dir") or run_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self._wandb = wandb
        self._run = wandb.init(
            project=cfg.get("project"),
            entity=cfg.get("entity"),
            group=cfg.get("group"),
            tags=list(cfg.get("tags") or []),
            name=name,
            id=run_id,
            resume="allow" if run_id else None,
            mode=mode,
            dir=str(directory),
            config=config,
            settings=wandb.Settings(console="off", silent=True),
        )
        self.run_id = self._run.id
        self._log_figures = bool(cfg.get("log_figures", True))

    def log_metrics(self, row, step):
        self._run.log({k: v for k, v in row.items() if v is not None}, step=step)

    def log_figures(self, paths, step):
        if self._log_figures and paths:
            self._run.log({f"figures/{p.stem}": self._wandb.Image(str(p)) for p in paths}, step=step)

    def finish(self, summary, failed):
        for key, value in summary.items():
            if isinstance(value, (int, float, str, bool)) or value is None:
                self._run.summary[key] = value
        self._run.finish(exit_code=1 if failed else 0)


def make_tracker(cfg: Mapping[str, Any], config: dict, run_dir: Path, name: str, run_id: str | None) -> Tracker:
    kind = cfg.get("name", "none")
    if kind == "none":
        return NullTracker()
    if kind == "wandb":
        return WandbTracker(cfg, config, run_dir, name, run_id)
    raise ValueError(f"logger={kind} is unknown; choose logger=wandb or logger=none")


class Progress:
    """A tqdm bar in a terminal; otherwise (pipe, CI=true) a plain log line every `line_every`
    iterations, so that logs of batch jobs stay readable."""

    def __init__(self, total: int, start: int, mode: str = "auto", line_every: int = 50):
        use_bar = mode == "bar" or (mode == "auto" and sys.stderr.isatty() and os.environ.get("CI", "").lower() not in ("1", "true"))
        self._bar = None
        self._line_every = max(1, line_every)
        self._total = total
        self._t0 = time.perf_counter()
        self._start = start
        if use_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=start, dynamic_ncols=True, leave=True)

    def update(self, iteration: int, loss: float) -> None:
        if self._bar is not None:
            self._bar.update(1)
            self._bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            return
        if iteration % self._line_every == 0 or iteration == self._total:
            rate = (iteration - self._start) / max(time.perf_counter() - self._t0, 1e-9)
            log.info("iter %d/%d  loss %.4f  %.2f it/s", iteration, self._total, loss, rate)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
