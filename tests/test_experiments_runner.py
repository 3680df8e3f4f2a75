"""The runner end to end on the CPU with tiny cnf2d runs: run directory contents, loss decrease
in fp32 and bf16, bit-identical resume, diverged / interrupted / skipped statuses, W&B offline,
logger=none, and a two-job multirun through submitit_local."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from experiments.common.combos import InvalidCombination
from experiments.common.rundir import RunDir, RunDirExists
from experiments.common.runner import MACHINE_COLUMNS, Training, run_experiment
from experiments.run import register_resolvers

REPO = Path(__file__).resolve().parents[1]
register_resolvers()

# A CNF small enough for seconds on a CPU, but big enough that its loss moves.
TINY = [
    "logger=none", "progress=lines", "threads=1", "train.batch_size=128", "task.n_grid=6", "task.width=32",
    "task.eval_batch_size=256", "task.mmd_samples=64", "task.figure_samples=300", "task.figure_bins=20",
    "task.density_grid=16",
]


def make_cfg(tmp_path: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose("config", overrides=[*TINY, f"run_root={tmp_path}", *overrides])


def run(tmp_path: Path, *overrides: str, multirun: bool = False, run_dir: Path | None = None):
    cfg = make_cfg(tmp_path, *overrides)
    return run_experiment(cfg, run_dir or tmp_path / cfg.run_id, multirun=multirun)


def model_columns(rows):
    return [{k: v for k, v in r.items() if k not in MACHINE_COLUMNS} for r in rows]


@pytest.mark.parametrize("setting", ["fp32", "bf16"])
def test_short_training_decreases_loss_and_fills_the_run_dir(tmp_path, setting):
    threads = torch.get_num_threads()
    out = run(tmp_path, f"setting={setting}", "train.iterations=40", "train.eval_every=10")
    assert out.status == "finished"
    assert torch.get_num_threads() == threads  # process-global settings are restored
    rd = RunDir(out.run_dir)
    rows = rd.read_metrics()
    assert [r["iteration"] for r in rows] == [10, 20, 30, 40]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] - 0.1
    assert rows[-1]["val_nll_fp32"] < rows[0]["val_nll_fp32"]
    summary = json.loads(rd.summary.read_text())
    assert summary["status"] == "finished" and summary["iteration"] == 40
    assert summary["precision"] == setting and summary["scheme"] == "rk4"
    assert summary["final"]["val_nll_fp32"] == rows[-1]["val_nll_fp32"]
    assert summary["best"]["val_nll_fp32"] == min(r["val_nll_fp32"] for r in rows)
    assert summary["time"]["forward_s_mean"] > 0 and summary["time"]["backward_s_mean"] > 0
    assert summary["memory"]["peak_bytes_max"] > 0  # CPU: measured on evaluation iterations
    assert all(r["peak_memory_bytes"] > 0 for r in rows)
    env = json.loads(rd.env.read_text())
    assert {"device_name", "torch", "cuda", "git_commit", "git_dirty", "hostname", "python"} <= set(env)
    assert env["threads"] == 1  # the run's setting (threads=1), not the process default
    assert "precision:" in rd.config.read_text() and rd.checkpoint.exists()
    assert (rd.figures / "density.png").stat().st_size > 1000
    if setting == "bf16":  # training and fp32 evaluation both logged; they differ by rounding only
        assert rows[-1]["val_nll"] != rows[-1]["val_nll_fp32"]
        assert abs(rows[-1]["val_nll"] - rows[-1]["val_nll_fp32"]) < 0.05


def test_resume_after_a_stop_matches_the_uninterrupted_run_bit_for_bit(tmp_path):
    common = ["train.iterations=20", "train.eval_every=5", "train.checkpoint_every=5"]
    full = run(tmp_path / "a", *common)
    # Stop at 8: between checkpoints and evaluations, so the carried window and RNG states matter.
    stopped = run(tmp_path / "b", *common, "stop_after=8")
    assert stopped.status == "interrupted" and "stop_after=8" in stopped.reason
    assert json.loads(RunDir(stopped.run_dir).summary.read_text())["iteration"] == 8
    resumed = run(tmp_path / "b", *common, "resume=true")
    assert resumed.status == "finished"
    a, b = RunDir(full.run_dir), RunDir(resumed.run_dir)
    assert model_columns(a.read_metrics()) == model_columns(b.read_metrics())  # exact equality
    final_a, final_b = a.load_checkpoint(), b.load_checkpoint()
    for name, tensor in final_a["model"].items():
        assert torch.equal(tensor, final_b["model"][name]), name
    summary_b = json.loads(b.summary.read_text())
    assert summary_b["resumed_at"] == [8]
    assert len(json.loads(b.env.read_text())["resumes"]) == 1
    # A finished run is not redone.
    assert run(tmp_path / "b", *common, "resume=true").status == "finished"


def test_resume_warns_only_about_typed_values_it_ignores(tmp_path, caplog):
    common = ["train.iterations=4", "train.eval_every=2", "train.checkpoint_every=2"]
    stopped = run(tmp_path, *common, "stop_after=2")
    # A bare resume: the command line's defaults differ from the saved run (iterations, eval_every),
    # but the user typed none of them, so there is nothing to warn about.
    cfg = make_cfg(tmp_path, "resume=true", "stop_after=3")
    with caplog.at_level("WARNING", logger="experiments.common.runner"):
        assert run_experiment(cfg, stopped.run_dir, overrides=["resume=true", "stop_after=3"]).status == "interrupted"
    assert "ignoring" not in caplog.text
    # A typed value the resume must ignore (it would change the experiment) is named.
    cfg = make_cfg(tmp_path, *common, "resume=true", "train.optimizer.lr=0.5")
    with caplog.at_level("WARNING", logger="experiments.common.runner"):
        outcome = run_experiment(cfg, stopped.run_dir, overrides=[*common, "resume=true", "train.optimizer.lr=0.5"])
    assert outcome.status == "finished"
    assert "ignoring different values for: train.optimizer.lr " in caplog.text
    assert RunDir(outcome.run_dir).read_metrics()[-1]["lr"] != 0.5


def test_fresh_run_refuses_an_existing_run_dir_unless_overwrite(tmp_path):
    run(tmp_path, "train.iterations=2", "train.eval_every=2")
    with pytest.raises(RunDirExists, match="resume=true"):
        run(tmp_path, "train.iterations=2", "train.eval_every=2")
    assert run(tmp_path, "train.iterations=2", "train.eval_every=2", "overwrite=true").status == "finished"


def test_overflow_in_fp16_without_scaling_ends_as_diverged(tmp_path):
    out = run(tmp_path, "setting=fp16-none", "task.init_scale=1e6", "train.iterations=5", "train.eval_every=5")
    assert out.status == "diverged"
    summary = json.loads(RunDir(out.run_dir).summary.read_text())
    assert summary["status"] == "diverged" and summary["diverged_at"] == 1
    assert "non-finite" in summary["reason"] and "iteration 1" in summary["reason"]


def test_invalid_combination_is_refused_or_skipped_in_a_sweep(tmp_path):
    bad = ["precision=bf16", "scaling=grad"]
    with pytest.raises(InvalidCombination, match="choose scaling=none"):
        run(tmp_path, *bad)
    out = run(tmp_path, *bad, multirun=True)
    assert out.status == "skipped"
    summary = json.loads(RunDir(out.run_dir).summary.read_text())
    assert summary["status"] == "skipped" and "scaling=none" in summary["reason"]
    assert not RunDir(out.run_dir).checkpoint.exists()


def test_ctrl_c_stops_at_the_iteration_boundary_with_a_checkpoint(tmp_path, monkeypatch):
    original = Training._train_step

    def step(self, i):
        if i == 3:
            signal.raise_signal(signal.SIGINT)  # handled by the runner: finish this iteration, stop
        return original(self, i)

    monkeypatch.setattr(Training, "_train_step", step)
    out = run(tmp_path, "train.iterations=10", "train.eval_every=5")
    assert out.status == "interrupted" and out.by_signal
    rd = RunDir(out.run_dir)
    assert json.loads(rd.summary.read_text())["status"] == "interrupted"
    assert rd.load_checkpoint()["iteration"] == 3


def test_hard_keyboard_interrupt_is_recorded_and_reraised(tmp_path, monkeypatch):
    original = Training._train_step

    def step(self, i):
        if i == 4:
            raise KeyboardInterrupt
        return original(self, i)

    monkeypatch.setattr(Training, "_train_step", step)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, "train.iterations=10", "train.eval_every=5", "train.checkpoint_every=2")
    rd = next(RunDir(p.parent) for p in tmp_path.rglob("summary.json"))
    summary = json.loads(rd.summary.read_text())
    assert summary["status"] == "interrupted" and "iteration 2" in summary["reason"]
    assert rd.load_checkpoint()["iteration"] == 2


def test_wandb_offline_run_holds_the_logged_metrics(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.delenv("WANDB_MODE", raising=False)  # offline must be the default
    out = run(tmp_path, "logger=wandb", "train.iterations=4", "train.eval_every=2")
    assert out.status == "finished"
    (offline_run,) = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    history, summary, config = read_wandb_run(next(offline_run.glob("run-*.wandb")))
    rows = RunDir(out.run_dir).read_metrics()
    assert [h["_step"] for h in history if "val_nll_fp32" in h] == [2, 4]
    assert [h["val_nll_fp32"] for h in history if "val_nll_fp32" in h] == pytest.approx([r["val_nll_fp32"] for r in rows])
    assert summary["status"] == "finished" and summary["final/val_nll_fp32"] == pytest.approx(rows[-1]["val_nll_fp32"])
    assert any(k.startswith("figures/density") for h in history for k in h)
    assert list((offline_run / "files" / "media" / "images").rglob("*.png"))
    assert config["precision"]["name"] == "fp32" and config["task"]["name"] == "cnf2d"


def read_wandb_run(path: Path) -> tuple[list[dict], dict, dict]:
    """History rows, merged summary and config of a W&B transaction log (.wandb). wandb ships no
    Python reader any more; the file is a LevelDB-style log of protobuf Records: a 7-byte file
    header (':W&B', magic, version), then 32 KiB blocks of chunks, each with a 7-byte header
    (crc32c, length, type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4)."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    block, pos, pending, raw_records = 32768, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if left < 7 or (kind == 0 and length == 0):  # block trailer padding
            pos += left
            continue
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            raw_records.append(pending)
    history, summary, config = [], {}, {}

    def items(entries):
        return {e.key or "/".join(e.nested_key): json.loads(e.value_json) for e in entries}

    for raw in raw_records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.append(items(record.history.item))
        elif kind == "summary":
            summary.update(items(record.summary.update))
        elif kind == "run":
            config.update({k: v.get("value", v) if isinstance(v, dict) else v for k, v in items(record.run.config.update).items()})
    return history, summary, config


SUBPROCESS_ENV = {**os.environ, "CI": "true", "WANDB_MODE": "offline"}


def test_logger_none_never_imports_wandb(tmp_path):
    code = f"""
import sys
from hydra import compose, initialize_config_dir
from experiments.run import register_resolvers
from experiments.common.runner import run_experiment
register_resolvers()
with initialize_config_dir(config_dir={str(REPO / 'conf')!r}, version_base="1.3"):
    cfg = compose("config", overrides={[*TINY, f'run_root={tmp_path}', 'train.iterations=2', 'train.eval_every=2']!r})
out = run_experiment(cfg, {str(tmp_path)!r} + "/" + cfg.run_id)
assert out.status == "finished", out
assert "wandb" not in sys.modules, "logger=none imported wandb"
print("OK")
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300, env=SUBPROCESS_ENV)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def test_two_job_multirun_through_submitit_local(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.run", "-m", "hydra/launcher=submitit_local",
         "task.dataset=2spirals,8gaussians", *TINY, f"run_root={tmp_path}",
         "train.iterations=2", "train.eval_every=2"],
        cwd=REPO, capture_output=True, text=True, timeout=600, env=SUBPROCESS_ENV,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for dataset in ("2spirals", "8gaussians"):
        summary = json.loads((tmp_path / f"cnf2d/{dataset}/quick/fp32-none-mpnode/seed42/summary.json").read_text())
        assert summary["status"] == "finished" and summary["iteration"] == 2
    assert list(tmp_path.glob(".submitit/*"))  # really went through submitit


@pytest.mark.slow
def test_paper_profile_runs_a_few_iterations(tmp_path):
    """The paper profile's real sizes (batch 1024, 128 grid points), two iterations, small figures."""
    cfg = make_cfg(tmp_path, "profile=paper", "train.iterations=2", "train.eval_every=2",
                   "task.figure_samples=1000", "task.density_grid=20")
    cfg.task.width = 128  # TINY shrinks it; the paper profile uses the reference width
    cfg.train.batch_size = 1024
    cfg.task.n_grid = 128
    out = run_experiment(cfg, tmp_path / cfg.run_id)
    assert out.status == "finished"


@pytest.mark.slow
def test_quick_profile_low_precision_ends_within_a_tenth_of_a_nat_of_fp32(tmp_path):
    """The issue's acceptance check (about 8 minutes on a 2-core CPU): quick profile, 2spirals,
    mpnode; fp32 reaches <= 2.97 nats (paper ~2.67 + 0.3); bf16 and fp16-dynamic end within 0.1
    nats of fp32 (fp32-evaluated validation NLL)."""
    final = {}
    for setting in ("fp32", "bf16", "fp16-dynamic"):
        with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
            cfg = compose("config", overrides=["logger=none", f"run_root={tmp_path}", f"setting={setting}"])
        out = run_experiment(cfg, tmp_path / cfg.run_id)
        assert out.status == "finished"
        final[setting] = json.loads(RunDir(out.run_dir).summary.read_text())["final"]["val_nll_fp32"]
    assert final["fp32"] <= 2.97, final
    assert abs(final["bf16"] - final["fp32"]) < 0.1, final
    assert abs(final["fp16-dynamic"] - final["fp32"]) < 0.1, final
