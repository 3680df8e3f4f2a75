#!/usr/bin/env python
"""Core benchmark: mpnode.odeint vs torchdiffeq's fixed-grid odeint (direct backprop).

Same scheme on both sides: mpnode ``method="rk38"`` (the 3/8 rule) against torchdiffeq
``method="rk4"`` (its fixed-grid "rk4" *is* the 3/8 rule), the same number of equal steps
on [0, 1], the same MLP vector field and the same autocast. For fp32, bf16 and fp16 it
times the forward and the backward separately (median of ``--repeats`` runs after a
warm-up; runs of the two solvers alternate), measures the peak memory of forward+backward
in a separate, untimed run, and checks that both solvers agree within the precision.

Writes ``<out>/core-<device>.md`` and ``<out>/core-<device>.json``; prints the table and the
target checks. Exits 0 even when a check fails (it is a report); FAIL is shouted.

    python scripts/bench_core.py                      # CPU defaults (or GPU when present)
    python scripts/bench_core.py --device cuda        # bigger GPU defaults
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import shlex
import statistics
import sys
import traceback
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import nn

import mpnode
from experiments.common.environment import device_slug, git_state
from mpnode.profiling import DeviceTimer, PeakMemoryMeter, describe_device

REPO = Path(__file__).resolve().parent.parent

DEFAULTS = {
    # State-heavy on the CPU: the state (batch x state_dim) dominates memory, the MLP is thin;
    # small batch because bf16/fp16 matmul backward is very slow on CPUs without native bf16.
    # Width 16 keeps the parameters (and their gradients) at 1/8 of a state.
    "cpu": dict(state_dim=2048, width=16, batch=128, steps=64, repeats=2),
    # Big enough for meaningful GPU timings; torchdiffeq fp32 stays well under 40 GB.
    "cuda": dict(state_dim=4096, width=1024, batch=4096, steps=64, repeats=10),
}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
SOLVERS = ("torchdiffeq", "mpnode")
TARGETS = dict(mem_fp32=0.35, time_fp32=1.4, mem_bf16_vs_fp32=0.6)


class MLPField(nn.Module):
    """dy/dt = W2 tanh(W1 y + b1) + b2 (time-independent); counts its evaluations."""

    def __init__(self, state_dim: int, width: int) -> None:
        super().__init__()
        self.lin1 = nn.Linear(state_dim, width)
        self.lin2 = nn.Linear(width, state_dim)
        self.nfe = 0

    def forward(self, t, y):
        self.nfe += 1
        return self.lin2(torch.tanh(self.lin1(y)))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--state-dim", type=int, default=None, help="state size (default: per device, see DEFAULTS)")
    p.add_argument("--width", type=int, default=None, help="MLP hidden width")
    p.add_argument("--batch", type=int, default=None, help="batch size")
    p.add_argument("--steps", type=int, default=None, help="number of equal steps on [0, 1]")
    p.add_argument("--method", default="rk38", help="mpnode method; torchdiffeq gets the same scheme (rk38 <-> its 'rk4')")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per configuration (median reported)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--precisions", default="fp32,bf16,fp16", help="comma-separated subset of fp32,bf16,fp16")
    p.add_argument("--td-grid", default="constructor", choices=["constructor", "t"],
                   help="how torchdiffeq gets the grid: 'constructor' = t=[0,1] plus a grid_constructor giving "
                        "linspace(0,1,steps+1) (2 outputs, like mpnode); 't' = the full grid as t (stores all "
                        "steps+1 outputs, last one taken)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(REPO / "results" / "bench"), help="output directory")
    return p.parse_args(argv)


# torchdiffeq's fixed-grid name for each scheme mpnode knows.
TD_METHOD = {"rk38": "rk4", "euler": "euler", "midpoint": "midpoint"}


def _git() -> dict:
    state = git_state()
    return {"commit": state["git_commit"] or "unknown", "dirty": state["git_dirty"]}


class Runner:
    """One solver at one precision: run() does forward (+ loss) and backward, timed or not."""

    def __init__(self, solver, precision, field, y0, args, device):
        self.solver, self.precision, self.field, self.y0 = solver, precision, field, y0
        self.dtype = PRECISIONS[precision]
        self.device = device
        self.params = [p for p in field.parameters()]
        steps = args.steps
        if solver == "mpnode":
            self.t = torch.tensor([0.0, 1.0], device=device)
            self.kwargs = dict(method=args.method, options={"step_size": 1.0 / steps})  # scaler="auto"
        else:
            import torchdiffeq

            self._odeint = torchdiffeq.odeint
            grid = torch.linspace(0.0, 1.0, steps + 1, device=device)
            if args.td_grid == "t":
                self.t = grid
                self.kwargs = dict(method=TD_METHOD[args.method])
            else:
                self.t = torch.tensor([0.0, 1.0], device=device)
                self.kwargs = dict(method=TD_METHOD[args.method],
                                   options={"grid_constructor": lambda func, y0, t: grid.to(y0.dtype)})
        self.fwd_times, self.bwd_times = [], []
        self.stats = None

    def _autocast(self):
        if self.dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.dtype)

    def _forward(self):
        with self._autocast():
            if self.solver == "mpnode":
                self.stats = mpnode.SolveStats()
                sol = mpnode.odeint(self.field, self.y0, self.t, stats=self.stats, **self.kwargs)
            else:
                sol = self._odeint(self.field, self.y0, self.t, **self.kwargs)
            y1 = sol[-1]
        loss = y1.float().pow(2).sum()  # loss outside autocast, in fp32
        return y1, loss

    def run(self, timed: bool = False, keep: bool = False):
        for p in self.params:
            p.grad = None
        self.field.nfe = 0
        if timed:
            with DeviceTimer(self.device) as tf:
                y1, loss = self._forward()
            self.nfe_fwd = self.field.nfe
            with DeviceTimer(self.device) as tb:
                loss.backward()
            self.fwd_times.append(tf.seconds)
            self.bwd_times.append(tb.seconds)
        else:
            y1, loss = self._forward()
            self.nfe_fwd = self.field.nfe
            loss.backward()
        self.nfe_total = self.field.nfe
        if keep:
            self.y1 = y1.detach().float().clone()
            self.grads = torch.cat([p.grad.detach().float().flatten() for p in self.params])
            self.loss = float(loss.detach())
        del y1, loss

    def peak_memory(self) -> int:
        for p in self.params:
            p.grad = None
        gc.collect()
        with PeakMemoryMeter(self.device) as meter:
            self.run(timed=False)
        for p in self.params:
            p.grad = None
        return meter.peak_bytes


def rel_diff(a, b) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def fp64_reference(args, device, field, y0):
    """Final state and parameter gradients of the same scheme in float64: the yardstick of the
    'err vs fp64' columns (roundoff of each solver/precision, not discretization error)."""
    field64 = MLPField(args.state_dim, args.width).to(device).double()
    field64.load_state_dict(field.state_dict())
    y0_64 = y0.double()
    sol = mpnode.odeint(field64, y0_64, torch.tensor([0.0, 1.0], dtype=torch.float64, device=device),
                        method=args.method, options={"step_size": 1.0 / args.steps})
    loss = sol[-1].pow(2).sum()
    grads = torch.autograd.grad(loss, list(field64.parameters()))
    return sol[-1].detach().float(), torch.cat([g.float().flatten() for g in grads])


def bench_precision(precision, args, device, field, y0, log, reference=None):
    """Both solvers at one precision; returns {solver: result dict}."""
    results = {s: {"solver": s, "precision": precision} for s in SOLVERS}
    runners = {}
    for s in SOLVERS:
        try:
            runners[s] = Runner(s, precision, field, y0, args, device)
            runners[s].run(timed=False, keep=True)  # warm-up, and the final state / grads for the sanity check
            r = runners[s]
            finite = bool(torch.isfinite(r.y1).all() and torch.isfinite(r.grads).all())
            results[s].update(finite=finite, loss=r.loss, nfe_forward=r.nfe_fwd, nfe_total=r.nfe_total)
            if s == "mpnode" and r.stats is not None:
                results[s].update(checkpoint_bytes=r.stats.checkpoint_bytes, n_steps=r.stats.n_steps,
                                  eval_dtype=str(r.stats.eval_dtype), checkpoint_dtype=str(r.stats.checkpoint_dtype),
                                  scales=[min(r.stats.scales), max(r.stats.scales)] if r.stats.scales else None)
            if not finite:
                results[s]["note"] = "non-finite final state or gradients"
        except Exception as e:  # report, don't crash
            results[s]["error"] = f"{type(e).__name__}: {e}"
            log(f"  [{precision}/{s}] warm-up failed: {results[s]['error']}")
            traceback.print_exc(file=sys.stderr)
            runners.pop(s, None)

    # Timed runs, alternating between solvers so drifts hit both alike.
    for _ in range(args.repeats):
        for s in list(runners):
            try:
                runners[s].run(timed=True)
            except Exception as e:
                results[s]["error"] = f"{type(e).__name__}: {e} (timed run)"
                log(f"  [{precision}/{s}] timed run failed: {results[s]['error']}")
                runners.pop(s)
    for s, r in runners.items():
        results[s].update(fwd_s=statistics.median(r.fwd_times), bwd_s=statistics.median(r.bwd_times),
                          fwd_all_s=r.fwd_times, bwd_all_s=r.bwd_times)
        results[s]["total_s"] = results[s]["fwd_s"] + results[s]["bwd_s"]

    # Peak memory of forward+backward in a separate, untimed run per solver.
    for s in list(runners):
        try:
            results[s]["peak_bytes"] = runners[s].peak_memory()
        except Exception as e:
            results[s]["error"] = f"{type(e).__name__}: {e} (memory run)"
            log(f"  [{precision}/{s}] memory run failed: {results[s]['error']}")

    if reference is not None:
        for s, r in runners.items():
            results[s]["err_y1_vs_fp64"] = rel_diff(r.y1, reference[0])
            results[s]["err_grad_vs_fp64"] = rel_diff(r.grads, reference[1])
    if all(s in runners for s in SOLVERS):
        td, mp = runners["torchdiffeq"], runners["mpnode"]
        results["mpnode"]["rel_diff_y1"] = rel_diff(mp.y1, td.y1)
        results["mpnode"]["rel_diff_grad"] = rel_diff(mp.grads, td.grads)
    for r in runners.values():
        r.y1 = r.grads = None
    return results


def sci(x):
    return "—" if x is None else f"{x:.1e}"


def fmt_ratio(x):
    return "—" if x is None else f"{x:.2f}x"


def fmt_time(x):
    return "—" if x is None else (f"{x * 1e3:.1f} ms" if x < 10 else f"{x:.2f} s")


def fmt_mib(x):
    return "—" if x is None else f"{x / 2**20:.1f} MiB"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def build_table(rows, base):
    head = ("| precision | solver | fwd (ratio) | bwd (ratio) | fwd+bwd (ratio) | peak mem (ratio) | fwd | bwd | peak mem "
            "| rel diff y(1) vs td | rel diff grad vs td | err y(1) vs fp64 | err grad vs fp64 | NFE fwd | status |")
    sep = "|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|"
    lines = [head, sep]
    for r in rows:
        g = r.get
        status = g("error") or g("note") or "ok"
        rd = g("rel_diff_y1")
        rg = g("rel_diff_grad")
        lines.append(
            f"| {r['precision']} | {r['solver']} | {fmt_ratio(ratio(g('fwd_s'), base.get('fwd_s')))} "
            f"| {fmt_ratio(ratio(g('bwd_s'), base.get('bwd_s')))} | {fmt_ratio(ratio(g('total_s'), base.get('total_s')))} "
            f"| {fmt_ratio(ratio(g('peak_bytes'), base.get('peak_bytes')))} "
            f"| {fmt_time(g('fwd_s'))} | {fmt_time(g('bwd_s'))} | {fmt_mib(g('peak_bytes'))} "
            f"| {'—' if rd is None else f'{rd:.1e}'} | {'—' if rg is None else f'{rg:.1e}'} "
            f"| {sci(g('err_y1_vs_fp64'))} | {sci(g('err_grad_vs_fp64'))} "
            f"| {g('nfe_forward', '—')} | {status.replace('|', '/')} |"
        )
    return "\n".join(lines)


def checks(res):
    def get(p, s, k):
        return res.get(p, {}).get(s, {}).get(k)

    out = []

    def check(name, value, limit):
        ok = value is not None and value <= limit
        out.append(dict(name=name, value=value, limit=limit, passed=ok))

    check("mpnode fp32 peak memory / torchdiffeq fp32 peak memory",
          ratio(get("fp32", "mpnode", "peak_bytes"), get("fp32", "torchdiffeq", "peak_bytes")), TARGETS["mem_fp32"])
    check("mpnode fp32 time (fwd+bwd) / torchdiffeq fp32 time (fwd+bwd)",
          ratio(get("fp32", "mpnode", "total_s"), get("fp32", "torchdiffeq", "total_s")), TARGETS["time_fp32"])
    check("mpnode bf16 peak memory / mpnode fp32 peak memory",
          ratio(get("bf16", "mpnode", "peak_bytes"), get("fp32", "mpnode", "peak_bytes")), TARGETS["mem_bf16_vs_fp32"])
    return out


def fmt_checks(cs):
    lines = []
    for c in cs:
        v = "n/a" if c["value"] is None else f"{c['value']:.3f}x"
        verdict = "PASS" if c["passed"] else "**FAIL**"
        lines.append(f"- {verdict}: {c['name']} = {v} (target <= {c['limit']}x)")
    return "\n".join(lines)


def _jsonable(o):
    """Plain JSON: non-finite floats become null, unknown objects strings."""
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if o is None or isinstance(o, (bool, int, str)):
        return o
    return str(o)


def main(argv=None):
    args = parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda requested but CUDA is not available")
    defaults_used = []
    for k, v in DEFAULTS[device.type].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
            defaults_used.append(k)
    if args.method not in TD_METHOD:
        sys.exit(f"--method {args.method!r}: no torchdiffeq fixed-grid solver with the same scheme; use one of {sorted(TD_METHOD)}")
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    for p in precisions:
        if p not in PRECISIONS:
            sys.exit(f"unknown precision {p!r}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # honest fp32
        torch.backends.cudnn.allow_tf32 = False

    import torchdiffeq

    def log(msg):
        print(msg, flush=True)

    slug = device_slug(device)
    env = dict(
        device=describe_device(device), device_slug=slug, torch=torch.__version__,
        torchdiffeq=getattr(torchdiffeq, "__version__", "unknown"), mpnode=mpnode.__version__,
        python=platform.python_version(), platform=platform.platform(), threads=torch.get_num_threads(),
        cuda=torch.version.cuda if device.type == "cuda" else None, **_git(),
        command=" ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        date=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    params = dict(state_dim=args.state_dim, width=args.width, batch=args.batch, steps=args.steps,
                  mpnode_method=args.method, torchdiffeq_method=TD_METHOD[args.method], td_grid=args.td_grid,
                  repeats=args.repeats, seed=args.seed, threads=torch.get_num_threads(), precisions=precisions, defaults_used=defaults_used,
                  allow_tf32=bool(torch.backends.cuda.matmul.allow_tf32) if device.type == "cuda" else None)
    state_mib = args.batch * args.state_dim * 4 / 2**20
    log(f"device: {env['device']}  torch {env['torch']}  torchdiffeq {env['torchdiffeq']}  python {env['python']}")
    log(f"params: {params}  (one fp32 state = {state_mib:.1f} MiB)")

    torch.manual_seed(args.seed)
    field = MLPField(args.state_dim, args.width).to(device)
    y0 = torch.randn(args.batch, args.state_dim, device=device)

    log("[fp64 reference] running ...")
    reference = fp64_reference(args, device, field, y0)
    res = {}
    for p in precisions:
        log(f"[{p}] running ...")
        res[p] = bench_precision(p, args, device, field, y0, log, reference)
        for s in SOLVERS:
            r = res[p][s]
            log(f"  {s:12s} fwd {fmt_time(r.get('fwd_s'))}  bwd {fmt_time(r.get('bwd_s'))}  peak {fmt_mib(r.get('peak_bytes'))}"
                + (f"  rel diff {r['rel_diff_y1']:.1e}" if "rel_diff_y1" in r else "")
                + (f"  ERROR {r['error']}" if "error" in r else "") + (f"  NOTE {r['note']}" if "note" in r else ""))

    base = res.get("fp32", {}).get("torchdiffeq", {})
    rows = [res[p][s] for p in precisions for s in SOLVERS]
    table = build_table(rows, base)
    cs = checks(res)
    header = (f"## mpnode vs torchdiffeq (direct backprop) — {env['device']}\n\n"
              f"Same scheme: mpnode `method=\"{args.method}\"` vs torchdiffeq fixed-grid `method=\"{TD_METHOD[args.method]}\"`"
              + (" (torchdiffeq's fixed-grid \"rk4\" is the 3/8 rule)" if args.method == "rk38" else "")
              + f", {args.steps} equal steps on [0, 1], MLP field {args.state_dim} -> {args.width} -> {args.state_dim} (tanh), "
              f"batch {args.batch}, loss = sum(y(1)^2). Low precision = `torch.autocast({device.type!r}, dtype)` around the "
              f"forward only; mpnode fp16 uses scaler=\"auto\" (dynamic). Ratios are to torchdiffeq fp32. Times: median of "
              f"{args.repeats} runs after a warm-up; peak memory: forward+backward above the entry level, separate untimed run. "
              f"rel diff: ||mpnode - torchdiffeq|| / ||torchdiffeq|| at the same precision; err vs fp64: relative error "
              f"against the same scheme run by mpnode in float64 (pure roundoff of that solver and precision).\n")
    print()
    print(table)
    print()
    print("Target checks (speed claims only from CUDA):")
    print(fmt_checks(cs))
    if not all(c["passed"] for c in cs):
        print("\n!!! SOME TARGETS FAILED (see above) !!!")

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    md = [
        f"# Core benchmark: {slug}\n", header, table, "",
        "### Target checks" + (" (CPU: memory checks are meaningful; speed claims only from CUDA)" if device.type == "cpu" else ""),
        "", fmt_checks(cs), "",
        "### Environment", "",
        *(f"- {k}: `{v}`" for k, v in env.items()), "",
        "### Parameters", "",
        *(f"- {k}: `{v}`" for k, v in params.items()), "",
    ]
    md_path = out_dir / f"core-{slug}.md"
    md_path.write_text("\n".join(md))
    json_path = out_dir / f"core-{slug}.json"
    json_path.write_text(json.dumps(_jsonable(dict(env=env, params=params, targets=TARGETS, results=res, checks=cs)), indent=2))
    print(f"\nwrote {md_path} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
