"""Collect run directories into result tables: results/<task>/runs.{csv,md,tex}.

    python scripts/aggregate.py                      # every run under runs/
    python scripts/aggregate.py --runs runs --out results --task cnf2d
    python scripts/aggregate.py --runs runs --runs /scratch/paper --task cnf2d --copy-run-files

--copy-run-files also copies each run's record (summary.json, env.json, config.yaml, metrics.csv and
figures/; not the checkpoint or W&B files) to <out>/<task>/runs/<run_id>/, so that a committed table
keeps the evidence behind each of its rows.

One row per run directory (any status; skipped and diverged runs say why), stamped with the device,
torch version, commit and profile that produced it, read from the run's own summary.json and
env.json: nothing is typed by hand.
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path
from typing import Any

COLUMNS = [
    "task", "dataset", "setting", "solver", "scheme", "profile", "seed", "status", "iteration",
    "val_nll_fp32", "val_nll", "mmd", "best_val_nll_fp32", "forward_ms", "backward_ms", "peak_mib",
    "wall_s", "device", "torch", "commit", "resumes", "reason", "run_id", "run_dir",
]
# The run's record: what --copy-run-files copies next to the tables.
RUN_RECORD_FILES = ("summary.json", "env.json", "config.yaml", "metrics.csv")
RUN_RECORD_DIRS = ("figures",)


def setting_name(precision: str, scaling: str) -> str:
    return f"fp16-{scaling}" if precision == "fp16" else precision


def row_for(summary_path: Path) -> dict[str, Any]:
    summary = json.loads(summary_path.read_text())
    env_path = summary_path.with_name("env.json")
    env = json.loads(env_path.read_text()) if env_path.exists() else {}
    final, best = summary.get("final") or {}, summary.get("best") or {}
    time, memory = summary.get("time") or {}, summary.get("memory") or {}
    task = str(summary.get("task", ""))
    variant = str(summary.get("variant", task))  # "<task>/<dataset>" for tasks with datasets
    peak = memory.get("peak_bytes_max")
    return {
        "task": summary.get("task"),
        "dataset": variant[len(task) + 1:] if variant.startswith(task + "/") else "",
        "setting": setting_name(summary.get("precision", ""), summary.get("scaling", "")),
        "solver": summary.get("solver"),
        "scheme": summary.get("scheme", ""),
        "profile": summary.get("profile"),
        "seed": summary.get("seed"),
        "status": summary.get("status"),
        "iteration": summary.get("iteration", ""),
        "val_nll_fp32": final.get("val_nll_fp32", ""),
        "val_nll": final.get("val_nll", ""),
        "mmd": final.get("mmd", ""),
        "best_val_nll_fp32": best.get("val_nll_fp32", ""),
        "forward_ms": 1e3 * time["forward_s_mean"] if "forward_s_mean" in time else "",
        "backward_ms": 1e3 * time["backward_s_mean"] if "backward_s_mean" in time else "",
        "peak_mib": peak / 2**20 if peak else "",
        "wall_s": time.get("wall_s", ""),  # the whole run (evaluations included), summed over resumed segments
        "device": env.get("device_name", ""),
        "torch": env.get("torch", ""),
        "commit": _short_commit(env),
        # A resumed run may have continued on another commit or machine: say where and on what.
        "resumes": " ".join(f"{r.get('iteration')}@{_short_commit(r)}" for r in env.get("resumes", [])),
        "reason": summary.get("reason") or "",
        "run_id": summary.get("run_id") or summary_path.parent.name,
        "run_dir": str(summary_path.parent),
    }


def _short_commit(env: dict[str, Any]) -> str:
    commit = env.get("git_commit") or ""
    return (commit[:10] + ("+dirty" if env.get("git_dirty") else "")) if commit else ""


def copy_run_record(run_dir: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for name in RUN_RECORD_FILES:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, dest / name)
    for name in RUN_RECORD_DIRS:
        if (run_dir / name).is_dir():
            shutil.copytree(run_dir / name, dest / name, dirs_exist_ok=True)


def ship_run_records(rows: list[dict[str, Any]], task_out: Path, task: str) -> None:
    """Copy each row's run record to task_out/runs/<run_id without the task>/, replacing the records
    of an earlier aggregation so that the records shipped are exactly the table's rows, and point
    each row's run_dir at its copy (relative to the table: no machine paths)."""
    records = task_out / "runs"
    sources: dict[Path, Path] = {}  # copy (relative to task_out) -> run directory
    for row in rows:
        run_id, source = Path(str(row["run_id"])), Path(row["run_dir"])
        relative = Path("runs") / (run_id.relative_to(task) if run_id.parts[:1] == (task,) else run_id)
        if relative in sources:
            raise ValueError(f"--copy-run-files: run_id {row['run_id']} is both in {sources[relative]} and "
                             f"{source}; aggregate them into different --out folders")
        if records.resolve() in (source.resolve(), *source.resolve().parents):
            raise ValueError(f"--copy-run-files: {source} lies inside {records}, which the copy replaces; "
                             "pass --runs outside the results folder")
        sources[relative] = source
        row["run_dir"] = str(relative)  # the table points at the copy it ships with
    if records.exists():
        shutil.rmtree(records)
    for relative, source in sources.items():
        copy_run_record(source, task_out / relative)


def collect(roots: list[Path], task: str | None) -> dict[str, list[dict[str, Any]]]:
    tables: dict[str, list[dict[str, Any]]] = {}
    for root in roots:
        for path in sorted(root.rglob("summary.json")):
            if ".submitit" in path.parts:
                continue
            row = row_for(path)
            if task is None or row["task"] == task:
                tables.setdefault(str(row["task"]), []).append(row)
    for rows in tables.values():
        rows.sort(key=lambda r: (str(r["dataset"]), str(r["setting"]), str(r["solver"]), str(r["profile"]), str(r["seed"])))
    return tables


def fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.3e}"
    return str(value)


def write_tables(rows: list[dict[str, Any]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    with (out / "runs.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    shown = [c for c in COLUMNS if c not in ("run_id", "run_dir")]  # the other columns say what the run is
    lines = ["| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(fmt(r[c]).replace("|", "/") for c in shown) + " |" for r in rows]
    (out / "runs.md").write_text(f"Generated by scripts/aggregate.py from {len(rows)} run directories.\n\n" + "\n".join(lines) + "\n")
    tex_cols = ["dataset", "setting", "solver", "status", "val_nll_fp32", "mmd", "forward_ms", "backward_ms", "peak_mib"]
    body = [" & ".join(fmt(r[c]).replace("_", r"\_") for c in tex_cols) + r" \\" for r in rows]
    header = " & ".join(c.replace("_", r"\_") for c in tex_cols) + r" \\"
    (out / "runs.tex").write_text("\\begin{tabular}{" + "l" * len(tex_cols) + "}\n\\hline\n" + header + "\n\\hline\n" + "\n".join(body) + "\n\\hline\n\\end{tabular}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, action="append",
                        help="root of the run directories; repeat it to combine roots (default: runs)")
    parser.add_argument("--out", type=Path, default=Path("results"), help="results root (default: results)")
    parser.add_argument("--task", default=None, help="only this task (default: all)")
    parser.add_argument("--copy-run-files", action="store_true",
                        help="copy each run's summary, env, config, metrics and figures to <out>/<task>/runs/<run_id>/")
    args = parser.parse_args(argv)
    roots = args.runs or [Path("runs")]
    for root in roots:
        if not root.is_dir():
            print(f"--runs {root}: no such directory; run experiments first or pass --runs", file=sys.stderr)
            return 2
    tables = collect(roots, args.task)
    if not tables:
        print(f"no summary.json under {', '.join(map(str, roots))}", file=sys.stderr)
        return 1
    for task, rows in tables.items():
        if args.copy_run_files:
            try:
                ship_run_records(rows, args.out / task, task)
            except ValueError as err:
                print(err, file=sys.stderr)
                return 2
        write_tables(rows, args.out / task)
        print(f"{args.out / task}: {len(rows)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
