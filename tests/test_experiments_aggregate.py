"""scripts/aggregate.py turns run directories into tables without hand-typed numbers."""
from __future__ import annotations

import csv
import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_aggregate():
    spec = importlib.util.spec_from_file_location("aggregate", REPO / "scripts" / "aggregate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_run(root: Path, run_id: str, summary: dict, env: dict | None = None) -> None:
    run_dir = root / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps({"run_id": run_id, **summary}))
    if env is not None:
        (run_dir / "env.json").write_text(json.dumps(env))


def test_aggregate_writes_one_row_per_run_with_its_provenance(tmp_path):
    runs = tmp_path / "runs"
    common = {"task": "cnf2d", "profile": "quick", "seed": 42, "solver": "mpnode"}
    common["variant"] = "cnf2d/2spirals"
    fake_run(runs, "cnf2d/2spirals/quick/fp16-dynamic-mpnode/seed42", {
        **common, "precision": "fp16", "scaling": "dynamic", "status": "finished", "iteration": 400,
        "scheme": "rk4", "final": {"val_nll_fp32": 2.79, "val_nll": 2.80, "mmd": 0.001},
        "best": {"val_nll_fp32": 2.78}, "time": {"forward_s_mean": 0.1, "backward_s_mean": 0.3, "wall_s": 95.5},
        "memory": {"peak_bytes_max": 2**21},
    }, env={"device_name": "Some GPU", "torch": "2.x", "git_commit": "abcdef1234567", "git_dirty": True})
    fake_run(runs, "cnf2d/2spirals/quick/fp16-dynamic-torchdiffeq/seed42", {
        **common, "solver": "torchdiffeq", "precision": "fp16", "scaling": "dynamic", "status": "skipped",
        "reason": "choose solver=mpnode",
    })
    assert load_aggregate().main(["--runs", str(runs), "--out", str(tmp_path / "results")]) == 0
    with (tmp_path / "results" / "cnf2d" / "runs.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["setting"], r["solver"], r["status"]) for r in rows] == [
        ("fp16-dynamic", "mpnode", "finished"), ("fp16-dynamic", "torchdiffeq", "skipped")]
    assert float(rows[0]["val_nll_fp32"]) == 2.79 and float(rows[0]["peak_mib"]) == 2.0 and float(rows[0]["wall_s"]) == 95.5
    assert rows[0]["commit"] == "abcdef1234+dirty" and rows[0]["device"] == "Some GPU"
    assert rows[1]["reason"] == "choose solver=mpnode"
    assert "| 2spirals | fp16-dynamic | mpnode |" in (tmp_path / "results" / "cnf2d" / "runs.md").read_text()
    assert "\\begin{tabular}" in (tmp_path / "results" / "cnf2d" / "runs.tex").read_text()


def test_copy_run_files_ships_each_rows_record_and_names_resumes(tmp_path):
    runs = tmp_path / "runs"
    run_id = "cnf2d/2spirals/paper/fp32-none-mpnode/seed42"
    fake_run(runs, run_id, {"task": "cnf2d", "variant": "cnf2d/2spirals", "precision": "fp32", "scaling": "none",
                            "status": "finished", "final": {"val_nll_fp32": 2.67}}, env={
        "git_commit": "1111111111aaaa", "resumes": [{"iteration": 600, "git_commit": "2222222222bbbb", "git_dirty": False}]})
    (runs / run_id / "metrics.csv").write_text("iteration,val_nll_fp32\n2000,2.67\n")
    (runs / run_id / "checkpoint.pt").write_bytes(b"weights")
    (runs / run_id / "figures").mkdir()
    (runs / run_id / "figures" / "density.png").write_bytes(b"png")
    out = tmp_path / "results"
    other = tmp_path / "other_root"  # a second root (e.g. the quick runs beside a long paper run)
    fake_run(other, "cnf2d/2spirals/quick/fp32-none-mpnode/seed42", {"task": "cnf2d", "variant": "cnf2d/2spirals",
                                                                     "precision": "fp32", "scaling": "none", "status": "finished"})
    args = ["--runs", str(runs), "--runs", str(other), "--out", str(out), "--copy-run-files"]
    assert load_aggregate().main(args) == 0
    copied = out / "cnf2d" / "runs/2spirals/paper/fp32-none-mpnode/seed42"
    assert sorted(p.name for p in copied.iterdir()) == ["env.json", "figures", "metrics.csv", "summary.json"]
    assert (copied / "figures" / "density.png").read_bytes() == b"png"
    with (out / "cnf2d" / "runs.csv").open() as f:
        rows = {r["run_dir"]: r for r in csv.DictReader(f)}
    row = rows["runs/2spirals/paper/fp32-none-mpnode/seed42"]
    assert "runs/2spirals/quick/fp32-none-mpnode/seed42" in rows
    assert (out / "cnf2d" / "runs/2spirals/quick/fp32-none-mpnode/seed42" / "summary.json").is_file()
    assert row["run_dir"] == "runs/2spirals/paper/fp32-none-mpnode/seed42"  # relative: no machine paths
    assert row["commit"] == "1111111111" and row["resumes"] == "600@2222222222"


def test_copy_run_files_replaces_stale_records_and_refuses_clashes(tmp_path):
    summary = {"task": "cnf2d", "variant": "cnf2d/moons", "precision": "fp32", "scaling": "none", "status": "finished"}
    runs, out = tmp_path / "runs", tmp_path / "results"
    fake_run(runs, "cnf2d/moons/quick/fp32-none-mpnode/seed1", summary)
    stale = out / "cnf2d" / "runs" / "moons/quick/fp32-none-mpnode/seed0"  # a row an earlier aggregation had
    stale.mkdir(parents=True)
    aggregate = load_aggregate()
    assert aggregate.main(["--runs", str(runs), "--out", str(out), "--copy-run-files"]) == 0
    assert not stale.exists()
    assert (out / "cnf2d" / "runs" / "moons/quick/fp32-none-mpnode/seed1" / "summary.json").is_file()
    # The same run id in two roots would overwrite one record with the other: refused, before any copy.
    fake_run(tmp_path / "elsewhere", "cnf2d/moons/quick/fp32-none-mpnode/seed1", summary)
    args = ["--runs", str(runs), "--runs", str(tmp_path / "elsewhere"), "--out", str(out), "--copy-run-files"]
    assert aggregate.main(args) == 2
    # A root inside the records folder would be deleted by the replacement: refused.
    assert aggregate.main(["--runs", str(out / "cnf2d" / "runs"), "--out", str(out), "--copy-run-files"]) == 2
    assert (out / "cnf2d" / "runs" / "moons/quick/fp32-none-mpnode/seed1" / "summary.json").is_file()
