"""The one entry point for every experiment:

    python -m experiments.run task=cnf2d precision=fp16 scaling=dynamic
    python -m experiments.run -m experiment=cnf2d_matrix hydra/launcher=local threads=1

See conf/README.md for the config groups. Exit codes: 0 for finished, diverged, skipped (so sweeps
go on) and stop_after; 2 for a refused configuration in a single run; 130 after Ctrl-C. In a
multirun, a job that fails unexpectedly is recorded (status "failed") and the sweep goes on.
"""
from __future__ import annotations

import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from experiments.common.combos import InvalidCombination
from experiments.common.rundir import RunDirExists
from experiments.common.runner import run_experiment

log = logging.getLogger("experiments.run")


def _run_dir_resolver(resume, default):
    """hydra.run.dir: a run resumed by path lives in that path, not in a new directory."""
    if resume is None or isinstance(resume, bool) or str(resume).lower() in ("true", "false", ""):
        return default
    return str(resume)


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("mpnode_run_dir"):
        OmegaConf.register_new_resolver("mpnode_run_dir", _run_dir_resolver)


register_resolvers()


@hydra.main(version_base="1.3", config_path="../conf", config_name="config")
def main(cfg: DictConfig) -> str:
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        outcome = run_experiment(
            cfg, hydra_cfg.runtime.output_dir, multirun=multirun, overrides=list(hydra_cfg.overrides.task))
    except (InvalidCombination, RunDirExists, FileNotFoundError) as err:
        if multirun:
            # One bad job must not stop the sweep; its reason is in the log.
            log.error("job refused: %s", err)
            return "refused"
        log.error("refused: %s", err)
        sys.exit(2)
    except Exception:
        if not multirun:
            raise
        # Recorded as status "failed" in the run's summary.json; the other jobs still run.
        log.exception("job failed")
        return "failed"
    if outcome.by_signal:
        sys.exit(130)  # Ctrl-C: stop the sweep too (the run itself is checkpointed and resumable)
    return outcome.status


if __name__ == "__main__":
    main()
