"""Config composition for every task x profile x precision x scaling x solver, the refusal rules,
the presets and launchers (Hydra compose API; no training)."""
from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from experiments.common.combos import DeviceCaps, InvalidCombination, check_combination
from experiments.run import register_resolvers

REPO = Path(__file__).resolve().parents[1]
CONF = str(REPO / "conf")
TASKS = ["cnf2d"]
PRECISIONS = ["fp32", "tf32", "bf16", "fp16"]
SCALINGS = ["none", "grad", "dynamic"]
SOLVERS = ["mpnode", "torchdiffeq"]
CPU = DeviceCaps("cpu", tf32=False, fp16_autocast=True, bf16_autocast=True)
AMPERE = DeviceCaps("cuda", tf32=True, fp16_autocast=True, bf16_autocast=True)

register_resolvers()


@pytest.fixture(scope="module", autouse=True)
def experiments_hydra():
    """One Hydra initialization for the module (composing is what the tests are about)."""
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        yield


def compose_cfg(overrides, hydra_cfg=False):
    return compose("config", overrides=list(overrides), return_hydra_config=hydra_cfg)


def expected_valid(precision, scaling, solver, caps):
    """The rules, written independently of experiments.common.combos."""
    if scaling == "dynamic" and solver == "torchdiffeq":
        return False
    if scaling in ("grad", "dynamic") and precision != "fp16":
        return False
    if precision == "tf32" and not caps.tf32:
        return False
    return True


@pytest.mark.parametrize("task", TASKS)
def test_every_combination_composes_and_is_judged(task):
    # Profiles only size the task (test_profiles_size_the_task); one profile keeps this fast.
    profile = "quick"
    n_valid = {"cpu": 0, "cuda": 0}
    for precision, scaling, solver in itertools.product(PRECISIONS, SCALINGS, SOLVERS):
        cfg = compose_cfg([f"task={task}", f"profile={profile}", f"precision={precision}",
                           f"scaling={scaling}", f"solver={solver}"])
        assert (cfg.precision.name, cfg.scaling.name, cfg.solver.name) == (precision, scaling, solver)
        assert cfg.train.iterations > 0 and cfg.task.n_grid >= 2  # the profile filled the sizes
        for caps in (CPU, AMPERE):
            if expected_valid(precision, scaling, solver, caps):
                check_combination(precision, scaling, solver, caps)
                n_valid[caps.device_type] += 1
            else:
                with pytest.raises(InvalidCombination, match="choose"):
                    check_combination(precision, scaling, solver, caps)
    # fp32/bf16 (+tf32 on Ampere) x 2 solvers with scaling none; fp16: none, grad x 2 + dynamic x 1
    assert n_valid == {"cpu": 4 + 5, "cuda": 6 + 5}


def test_refusal_messages_name_the_fix():
    with pytest.raises(InvalidCombination, match="solver=mpnode"):
        check_combination("fp16", "dynamic", "torchdiffeq", CPU)
    with pytest.raises(InvalidCombination, match="scaling=none"):
        check_combination("bf16", "grad", "mpnode", CPU)
    with pytest.raises(InvalidCombination, match="precision=fp32"):
        check_combination("tf32", "none", "mpnode", CPU)
    no_fp16 = DeviceCaps("cpu", tf32=False, fp16_autocast=False, bf16_autocast=True)
    with pytest.raises(InvalidCombination, match="precision=bf16"):
        check_combination("fp16", "none", "mpnode", no_fp16)


def test_cpu_probe_sees_low_precision_autocast():
    import torch

    caps = DeviceCaps.probe(torch.device("cpu"))
    assert caps.fp16_autocast and caps.bf16_autocast and not caps.tf32


@pytest.mark.parametrize("setting,precision,scaling", [
    ("fp32", "fp32", "none"), ("tf32", "tf32", "none"), ("bf16", "bf16", "none"),
    ("fp16-none", "fp16", "none"), ("fp16-grad", "fp16", "grad"), ("fp16-dynamic", "fp16", "dynamic"),
])
def test_settings_set_precision_and_scaling(setting, precision, scaling):
    cfg = compose_cfg([f"setting={setting}"])
    assert (cfg.precision.name, cfg.scaling.name) == (precision, scaling)


def test_profiles_size_the_task():
    quick = compose_cfg(["profile=quick"])
    paper = compose_cfg(["profile=paper"])
    assert (paper.train.iterations, paper.train.batch_size, paper.task.n_grid) == (2000, 1024, 128)
    assert paper.train.optimizer.lr == 0.01 and paper.train.lr_schedule.step_size == 1000
    assert paper.train.eval_every == 20 and paper.seed == 42 and paper.task.figure_bins == 300
    assert quick.train.iterations < paper.train.iterations


def test_matrix_preset_sweeps_the_paper_matrix():
    cfg = compose_cfg(["experiment=cnf2d_matrix"], hydra_cfg=True)
    params = cfg.hydra.sweeper.params
    assert params["task.dataset"].split(",") == ["checkerboard", "8gaussians", "2spirals"]
    assert len(params["setting"].split(",")) == 6
    assert params["solver"].split(",") == ["mpnode", "torchdiffeq"]
    check = compose_cfg(["experiment=cnf2d_precision_check"], hydra_cfg=True)
    assert check.solver.name == "mpnode" and check.task.dataset == "2spirals"
    assert check.hydra.sweeper.params["setting"].split(",") == ["fp32", "bf16", "fp16-dynamic"]


def test_profile_sets_threads():
    assert compose_cfg(["profile=quick"]).threads == 1
    assert compose_cfg(["profile=paper"]).threads is None
    assert compose_cfg(["profile=quick", "threads=2"]).threads == 2


@pytest.mark.parametrize("launcher,target", [
    ("local", "JoblibLauncher"), ("slurm", "SlurmLauncher"), ("local_submitit", "LocalLauncher"),
    ("submitit_local", "LocalLauncher"),
])
def test_launchers_compose(launcher, target):
    cfg = compose_cfg([f"hydra/launcher={launcher}"], hydra_cfg=True)
    assert cfg.hydra.launcher._target_.endswith(target)


def test_run_dir_is_deterministic_and_resume_path_is_used():
    cfg = compose_cfg(["precision=fp16", "scaling=dynamic", "task.dataset=moons"], hydra_cfg=True)
    assert cfg.hydra.run.dir == "runs/cnf2d/moons/quick/fp16-dynamic-mpnode/seed42"
    assert cfg.hydra.sweep.subdir == "cnf2d/moons/quick/fp16-dynamic-mpnode/seed42"
    # quick and paper runs of one setting never share a directory
    assert compose_cfg(["profile=paper"]).run_id == "cnf2d/2spirals/paper/fp32-none-mpnode/seed42"
    resumed = compose_cfg(["resume=/somewhere/run"], hydra_cfg=True)
    assert resumed.hydra.run.dir == "/somewhere/run"


def test_single_run_refuses_invalid_combination_before_any_work(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.run", "precision=fp16", "scaling=dynamic", "solver=torchdiffeq",
         "logger=none", f"run_root={tmp_path}"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "choose solver=mpnode" in proc.stdout + proc.stderr
    run_dir = tmp_path / "cnf2d/2spirals/quick/fp16-dynamic-torchdiffeq/seed42"
    assert not (run_dir / "config.yaml").exists() and not list(tmp_path.rglob("summary.json"))
