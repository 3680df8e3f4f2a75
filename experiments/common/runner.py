"""The task-agnostic runner: one configuration in, one self-describing run directory out.

Order of work: resolve the run directory (fresh or resumed) -> refuse invalid combinations
before any work -> write config.yaml and env.json -> seed, precision policy, task, model,
optimizer -> training loop with timed forward/backward, evaluations, checkpoints -> figures ->
summary.json. Every ending is recorded: finished, diverged (step and reason; the process still
exits 0 so sweeps go on), interrupted (Ctrl-C or stop_after; resumable), skipped (invalid
combination in a sweep), failed (an unexpected exception, re-raised after recording).
"""
from __future__ import annotations

import contextlib
import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from .combos import DeviceCaps, InvalidCombination, check_combination, resolve_device
from .environment import describe_environment
from .integrate import Integrator
from .loggers import Progress, make_tracker
from .optim import build_optimizer, build_scheduler
from .precision import RunPrecision
from .rundir import RunDir
from .seeding import global_rng_state, seed_everything, set_global_rng_state
from .task import TaskContext, load_task_class

log = logging.getLogger(__name__)

# Keys a resume may change; everything else comes from the run's saved config.yaml, because a
# resumed run must be the same experiment.
RESUME_OVERRIDABLE = ("resume", "stop_after", "logger", "progress", "threads")
# Metric columns that measure the machine, not the model (excluded when comparing runs).
MACHINE_COLUMNS = ("time_forward_s", "time_backward_s", "peak_memory_bytes", "elapsed_s")


@dataclass(frozen=True)
class Outcome:
    status: str
    reason: str | None
    run_dir: Path
    by_signal: bool = False


def run_experiment(
    cfg: DictConfig, run_dir: str | Path, *, multirun: bool = False, overrides: Sequence[str] | None = None
) -> Outcome:
    """`overrides`: the command line's explicit `key=value` overrides (Hydra's task overrides). A
    resume warns only about those of them it ignores; None (a programmatic call) warns about every
    value of `cfg` that differs from the saved run."""
    rd = RunDir(run_dir)
    resuming = _wants_resume(cfg, rd)
    if resuming:
        cfg = _config_for_resume(rd, cfg, overrides)
        previous = rd.read_json(rd.summary) if rd.summary.exists() else {}
        if previous.get("status") in ("finished", "diverged"):
            log.info("%s: already %s at iteration %s; nothing to resume", rd.path, previous["status"], previous.get("iteration"))
            return Outcome(previous["status"], previous.get("reason"), rd.path)

    device = resolve_device(str(cfg.device))
    try:
        check_combination(cfg.precision.name, cfg.scaling.name, cfg.solver.name, DeviceCaps.probe(device))
    except InvalidCombination as err:
        if not multirun:
            raise
        _record_skip(rd, cfg, str(err))
        return Outcome("skipped", str(err), rd.path)

    with _restored_process_settings():
        if cfg.threads:
            torch.set_num_threads(int(cfg.threads))  # before env.json, which records it
        if resuming:
            checkpoint = rd.load_checkpoint()
            env = rd.read_json(rd.env) if rd.env.exists() else {}
            env.setdefault("resumes", []).append({"iteration": checkpoint["iteration"], **describe_environment(device)})
            rd.write_json(rd.env, env)
            log.info("resuming %s from iteration %d", rd.path, checkpoint["iteration"])
        else:
            checkpoint = None
            rd.prepare_fresh(bool(cfg.overwrite))
            rd.config.write_text(OmegaConf.to_yaml(cfg, resolve=True))
            rd.write_json(rd.env, describe_environment(device))
        return Training(cfg, rd, device, checkpoint).run()


@contextlib.contextmanager
def _restored_process_settings():
    """A run sets process-global knobs (threads, TF32 flags); put them back afterwards, so that
    runs made in-process (tests, notebooks) do not change what runs after them."""
    threads = torch.get_num_threads()
    tf32 = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def _wants_resume(cfg: DictConfig, rd: RunDir) -> bool:
    if cfg.resume in (False, None):
        return False
    if not rd.checkpoint.exists():
        if cfg.resume is True:
            return False  # nothing to continue yet: start fresh (lets `resume=true` sweeps fill gaps)
        raise FileNotFoundError(f"resume={cfg.resume}: no checkpoint.pt in {rd.path}; pass the run dir of a run that wrote one")
    return True


def _config_for_resume(rd: RunDir, cfg: DictConfig, overrides: Sequence[str] | None) -> DictConfig:
    saved = OmegaConf.load(rd.config)
    given = OmegaConf.to_container(cfg, resolve=True)
    for key in RESUME_OVERRIDABLE:
        if key in given:
            OmegaConf.update(saved, key, given[key], merge=False)
    differing = _differences(OmegaConf.to_container(saved, resolve=True), given)
    if overrides is not None:
        # A bare `resume=DIR` differs from the saved run in every default of the command line
        # (profile, run_root, ...): not worth a warning. What the user typed and we ignore is.
        typed = [_override_key(o) for o in overrides]
        differing = [d for d in differing if any(d == k or d.startswith(k + ".") for k in typed)]
    if differing:
        log.warning(
            "resume continues the run as saved in %s; ignoring different values for: %s "
            "(to change them, start a new run instead)", rd.config, ", ".join(differing))
    return saved


def _override_key(override: str) -> str:
    """'task.dataset=moons' -> 'task.dataset'; '+x=1', '~x', 'precision@foo=fp16' -> 'x', 'x', 'precision'."""
    key = override.split("=", 1)[0].lstrip("+~")
    return key.split("@", 1)[0]


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b)):
            out += _differences(a.get(key), b.get(key), f"{prefix}{key}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _record_skip(rd: RunDir, cfg: DictConfig, reason: str) -> None:
    log.warning("skipped: %s", reason)
    previous = rd.read_json(rd.summary) if rd.summary.exists() else {}
    if rd.holds_run() and previous.get("status") != "skipped":
        return  # a real run lives here (e.g. made on another device): leave it alone
    rd.path.mkdir(parents=True, exist_ok=True)
    rd.config.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    rd.write_summary({"status": "skipped", "reason": reason, **_identity(cfg)})


def _identity(cfg: DictConfig) -> dict[str, Any]:
    return {
        "task": cfg.task.name,
        "run_id": cfg.run_id,
        "variant": str(cfg.task.run_name),  # e.g. cnf2d/2spirals: the task and its dataset
        "precision": cfg.precision.name,
        "scaling": cfg.scaling.name,
        "solver": cfg.solver.name,
        "profile": cfg.profile.name,
        "seed": int(cfg.seed),
    }


class _GracefulStop:
    """First Ctrl-C: finish the current iteration, checkpoint, stop (state stays consistent).
    A second Ctrl-C raises KeyboardInterrupt at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread (some launchers): keep the default behaviour
            self._previous = None
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("interrupt received: stopping after this iteration (Ctrl-C again to abort at once)")

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


class _Diverged(Exception):
    pass


class Training:
    def __init__(self, cfg: DictConfig, rd: RunDir, device: torch.device, checkpoint: dict | None):
        self.cfg, self.rd, self.device = cfg, rd, device
        self.train_cfg = cfg.train
        self.total = int(cfg.train.iterations)
        seed_everything(int(cfg.seed))
        self.precision = RunPrecision(cfg.precision.name, cfg.scaling.name, device)
        self.precision.apply_backend_flags()
        self.integrator = Integrator(
            cfg.solver.name,
            cfg.task.method,
            cfg.scaling.name,
            method_map=cfg.solver.get("method_map"),
            scaler_options=OmegaConf.to_container(cfg.scaling.options) if "options" in cfg.scaling else None,
        )
        ctx = TaskContext(device, self.precision, self.integrator, int(cfg.seed), int(cfg.train.batch_size))
        self.task = load_task_class(cfg.task.cls)(cfg.task, ctx)
        self.model = self.task.build_model()
        self.optimizer = build_optimizer(cfg.train.optimizer, self.model.parameters())
        self.scheduler = build_scheduler(cfg.train.get("lr_schedule"), self.optimizer, self.total)
        self.grad_scaler = self.precision.make_grad_scaler(
            float(cfg.scaling.get("init_scale", 65536.0)), int(cfg.scaling.get("growth_interval", 2000))
        )
        self.iteration = 0
        self.window = _Window()
        self.totals = {"forward_s": 0.0, "backward_s": 0.0, "iterations_timed": 0, "peak_memory_bytes": None}
        self.elapsed_before = 0.0
        self.last_row: dict | None = None
        self.best_row: dict | None = None
        self.resumed_at: list[int] = []
        self.tracker_id: str | None = None
        self.last_checkpoint = 0
        if checkpoint is not None:
            self._load(checkpoint)

    # ------------------------------------------------------------------------------- loop
    def run(self) -> Outcome:
        self._segment_start = time.perf_counter()
        self._warm = False
        config = OmegaConf.to_container(self.cfg, resolve=True)
        self.tracker = make_tracker(self.cfg.logger, config, self.rd.path, self.cfg.run_id, self.tracker_id)
        self.tracker_id = self.tracker.run_id
        progress = Progress(self.total, self.iteration, str(self.cfg.progress), int(self.train_cfg.eval_every))
        stop_after = self.cfg.stop_after
        try:
            with _GracefulStop() as stop:
                while self.iteration < self.total:
                    i = self.iteration + 1
                    try:
                        loss = self._train_step(i)
                    except _Diverged as err:
                        return self._finish("diverged", str(err), i)
                    self.iteration = i
                    progress.update(i, loss)
                    if self._is_eval_iteration(i):
                        self._evaluate(i)
                    if stop.requested or (stop_after is not None and i >= int(stop_after) and i < self.total):
                        self._checkpoint()
                        reason = "interrupted by signal" if stop.requested else f"stop_after={stop_after}"
                        return self._finish("interrupted", reason, i, by_signal=stop.requested)
                    if i % int(self.train_cfg.checkpoint_every) == 0:
                        self._checkpoint()
            self._checkpoint()
            self._figures()
            return self._finish("finished", None, self.iteration)
        except KeyboardInterrupt:
            self._finish("interrupted", f"KeyboardInterrupt in iteration {self.iteration + 1}; resume restarts "
                         f"from the last checkpoint (iteration {self.last_checkpoint})", self.iteration)
            raise
        except Exception as err:
            self._finish("failed", f"{type(err).__name__}: {err}", self.iteration)
            raise
        finally:
            progress.close()

    def _is_eval_iteration(self, i: int) -> bool:
        return i % int(self.train_cfg.eval_every) == 0 or i == self.total

    def _train_step(self, i: int) -> float:
        from mpnode.profiling import DeviceTimer, PeakMemoryMeter

        batch = self.task.next_batch()
        self.optimizer.zero_grad(set_to_none=True)
        # CPU memory metering goes through the profiler (slow): only on evaluation iterations.
        measure = self.device.type == "cuda" or self._is_eval_iteration(i)
        meter = PeakMemoryMeter(self.device) if measure else contextlib.nullcontext()
        with meter:
            with DeviceTimer(self.device) as forward:
                with self.precision.autocast():
                    loss = self.task.loss(self.model, batch)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise _Diverged(f"non-finite loss ({loss_value}) at iteration {i}")
            with DeviceTimer(self.device) as backward:
                try:
                    (self.grad_scaler.scale(loss) if self.grad_scaler else loss).backward()
                except FloatingPointError as err:  # e.g. mpnode.AdjointScalingError
                    raise _Diverged(f"{type(err).__name__} in the backward pass at iteration {i}: {err}") from err
        self._step_optimizer(i)
        # CPU iterations under the profiler-based memory meter are slowed by it: keep them out of
        # the timings. The first iteration of a process pays one-off costs: out of the summary.
        timed = not (measure and self.device.type == "cpu")
        self.window.add(loss_value, forward.seconds if timed else None, backward.seconds if timed else None,
                        meter.peak_bytes if measure else None)
        if timed and self._warm:
            self.totals["forward_s"] += forward.seconds
            self.totals["backward_s"] += backward.seconds
            self.totals["iterations_timed"] += 1
        self._warm = True
        if measure:
            previous = self.totals["peak_memory_bytes"] or 0
            self.totals["peak_memory_bytes"] = max(previous, meter.peak_bytes)
        return loss_value

    def _step_optimizer(self, i: int) -> None:
        params = [p for p in self.model.parameters() if p.grad is not None]
        if self.grad_scaler is not None:
            self.grad_scaler.unscale_(self.optimizer)  # before clipping: clip the true gradient
        clip = self.train_cfg.get("clip_grad_norm")
        if clip:
            norm = torch.nn.utils.clip_grad_norm_(params, float(clip))
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if self.grad_scaler is not None:
            # Non-finite gradients are the GradScaler's business: it skips the step and backs off.
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            if not torch.isfinite(norm):
                raise _Diverged(f"non-finite gradients (norm {norm.item()}) at iteration {i}")
            self.optimizer.step()
        self.scheduler.step()
        bound = self.train_cfg.get("clamp_params")
        if bound:
            with torch.no_grad():
                for p in self.model.parameters():
                    p.clamp_(-float(bound), float(bound))

    # ------------------------------------------------------------------------- evaluation
    def _evaluate(self, i: int) -> None:
        self.model.eval()
        try:
            with torch.no_grad():
                metrics = self.task.evaluate(self.model)
        finally:
            self.model.train()
        row = {"iteration": i, "lr": self.optimizer.param_groups[0]["lr"], **self.window.means(), **metrics}
        row.update(self.integrator.summary())
        if self.grad_scaler is not None:
            row["grad_scale"] = float(self.grad_scaler.get_scale())
        row["elapsed_s"] = self._elapsed()
        self.window = _Window()
        self.rd.append_metrics(row)
        self.tracker.log_metrics(row, step=i)
        self.last_row = row
        if self._is_better(row):
            self.best_row = row

    def _is_better(self, row: dict) -> bool:
        key = self.task.primary_metric
        value = row.get(key)
        if value is None or not math.isfinite(value):
            return False
        if self.best_row is None:
            return True
        best = self.best_row[key]
        return value < best if self.task.primary_mode == "min" else value > best

    def _figures(self) -> None:
        self.model.eval()
        with torch.no_grad():
            paths = self.task.figures(self.model, self.rd.figures)
        self.tracker.log_figures(paths, step=self.iteration)

    # -------------------------------------------------------------------- state & summary
    def _elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self._segment_start

    def _checkpoint(self) -> None:
        self.rd.save_checkpoint({
            "iteration": self.iteration,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "grad_scaler": self.grad_scaler.state_dict() if self.grad_scaler else None,
            "integrator": self.integrator.state_dict(),
            "task": self.task.state_dict(),
            "rng": global_rng_state(),
            "window": self.window.__dict__.copy(),
            "totals": dict(self.totals),
            "elapsed_s": self._elapsed(),
            "last_row": self.last_row,
            "best_row": self.best_row,
            "resumed_at": list(self.resumed_at),
            "tracker_id": self.tracker_id,
        })
        self.last_checkpoint = self.iteration
        self.rd.write_summary(self._summary("running", None))

    def _load(self, state: dict) -> None:
        self.iteration = int(state["iteration"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.grad_scaler is not None and state["grad_scaler"] is not None:
            self.grad_scaler.load_state_dict(state["grad_scaler"])
        self.integrator.load_state_dict(state["integrator"])
        self.task.load_state_dict(state["task"])
        set_global_rng_state(state["rng"])
        self.window.__dict__.update(state["window"])
        self.totals.update(state["totals"])
        self.elapsed_before = float(state["elapsed_s"])
        self.last_row, self.best_row = state["last_row"], state["best_row"]
        self.resumed_at = list(state["resumed_at"]) + [self.iteration]
        self.tracker_id = state["tracker_id"]
        self.last_checkpoint = self.iteration
        # Rows written after this checkpoint (by a killed run) will be produced again.
        self.rd.truncate_metrics(self.iteration)

    def _summary(self, status: str, reason: str | None) -> dict[str, Any]:
        n = self.totals["iterations_timed"]
        mean = (lambda x: x / n) if n else (lambda x: None)
        return {
            "status": status,
            "reason": reason,
            "iteration": self.iteration,
            "iterations": self.total,
            **_identity(self.cfg),
            "device": str(self.device),
            "scheme": self.integrator.scheme,
            "final": self.last_row,
            "best": self.best_row,
            "primary_metric": self.task.primary_metric,
            "time": {
                "wall_s": self._elapsed(),
                "forward_s_mean": mean(self.totals["forward_s"]),
                "backward_s_mean": mean(self.totals["backward_s"]),
                "iteration_s_mean": mean(self.totals["forward_s"] + self.totals["backward_s"]),
                "iterations_timed": n,
            },
            "memory": {"peak_bytes_max": self.totals["peak_memory_bytes"], "measured_on": "every iteration" if self.device.type == "cuda" else "evaluation iterations"},
            "scalers": self.integrator.summary(),
            "grad_scale": float(self.grad_scaler.get_scale()) if self.grad_scaler else None,
            "resumed_at": self.resumed_at,
            "run_dir": str(self.rd.path),
        }

    def _finish(self, status: str, reason: str | None, iteration: int, by_signal: bool = False) -> Outcome:
        summary = self._summary(status, reason)
        if status == "diverged":
            summary["diverged_at"] = iteration
            log.warning("diverged: %s", reason)
        self.rd.write_summary(summary)
        tracker = getattr(self, "tracker", None)
        if tracker is not None:
            flat = {"status": status, "reason": reason or "", "iteration": self.iteration}
            flat.update({f"final/{k}": v for k, v in (self.last_row or {}).items()})
            flat.update({f"best/{k}": v for k, v in (self.best_row or {}).items()})
            tracker.finish(flat, failed=status in ("failed",))
        log.info("%s: %s%s", self.rd.path, status, f" ({reason})" if reason else "")
        return Outcome(status, reason, self.rd.path, by_signal)


class _Window:
    """Means over the iterations since the last evaluation row (timings over the timed ones)."""

    def __init__(self):
        self.n = 0
        self.n_timed = 0
        self.loss = self.forward = self.backward = 0.0
        self.peak: int | None = None

    def add(self, loss: float, forward: float | None, backward: float | None, peak: int | None) -> None:
        self.n += 1
        self.loss += loss
        if forward is not None and backward is not None:
            self.n_timed += 1
            self.forward += forward
            self.backward += backward
        if peak is not None:
            self.peak = max(self.peak or 0, peak)

    def means(self) -> dict[str, float | None]:
        timed = self.n_timed > 0
        return {
            "train_loss": self.loss / max(self.n, 1),
            "time_forward_s": self.forward / self.n_timed if timed else None,
            "time_backward_s": self.backward / self.n_timed if timed else None,
            "peak_memory_bytes": self.peak,
        }
