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
        "best": {"val_nll_fp32": 2.78}, "time": {"forward_s_mean": 0.1, "backward_s_mean": 0.3},
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
    assert float(rows[0]["val_nll_fp32"]) == 2.79 and float(rows[0]["peak_mib"]) == 2.0
    assert rows[0]["commit"] == "abcdef1234+dirty" and rows[0]["device"] == "Some GPU"
    assert rows[1]["reason"] == "choose solver=mpnode"
    assert "| 2spirals | fp16-dynamic | mpnode |" in (tmp_path / "results" / "cnf2d" / "runs.md").read_text()
    assert "\\begin{tabular}" in (tmp_path / "results" / "cnf2d" / "runs.tex").read_text()
