"""Runs the grid: one fresh subprocess per (cell, case), memory predicted before anything runs."""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from . import system
from .cases import DESCRIPTIONS, MODEL_KINDS, PAPER_KWARGS, PEER_KWARGS, CASE_KINDS, fmt_bytes, model_shape, \
    model_tokens, peer_available, predict_bytes
from .worker import PREFIX

__all__ = ["GRIDS", "run_benchmark", "cells_of"]

GiB = 2**30

#: the grids: cells (N, K, D), model rows (K, D) of the VQ-VAE step.
GRIDS = {
    "full": dict(n=[4096, 32768], k=[512, 8192, 65536], d=[8, 64, 256], model=[(512, 64), (8192, 64)]),
    "quick": dict(n=[2048], k=[256, 4096], d=[16], model=[(256, 16)]),
}


def cells_of(grid: dict) -> list[tuple[int, int, int]]:
    return [(n, k, d) for n, k, d in itertools.product(grid["n"], grid["k"], grid["d"])]


def _spawn(spec: dict, timeout: float) -> dict:
    env = dict(os.environ)
    src = str(Path(__file__).resolve().parents[2])  # .../src, so an uninstalled checkout works too
    env["PYTHONPATH"] = src + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-m", "vqkit.bench.worker", json.dumps(spec)]
    t0 = time.time()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"spec": spec, "status": "timeout", "reason": f"ran past the {timeout:.0f} s limit"}
    for line in proc.stdout.splitlines():
        if line.startswith(PREFIX):
            out = json.loads(line[len(PREFIX):])
            out["status"] = "ok"
            out["process_s"] = time.time() - t0
            return out
    tail = (proc.stderr or proc.stdout)[-1500:]
    if proc.returncode in (-9, 137):
        reason = "killed (SIGKILL: most likely out of memory)"
    else:
        reason = f"exit status {proc.returncode}"
    return {"spec": spec, "status": "error", "reason": reason, "stderr_tail": tail}


def _key(spec: dict) -> str:
    return json.dumps({k: spec.get(k) for k in ("kind", "n", "k", "d", "model", "quick", "threads", "device")},
                      sort_keys=True)


def run_benchmark(args, log=print) -> dict:
    """Run every case of ``args.grid``; writes ``<out>/<tag>.json`` after each case and returns the data."""
    grid = GRIDS[args.grid]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{args.tag}.json"
    previous = {}
    if args.resume and json_path.exists():
        for r in json.loads(json_path.read_text()).get("results", []):
            if r.get("status") in ("ok", "skipped"):
                previous[_key(r["spec"])] = r

    kinds = [k for k in CASE_KINDS if k in args.kinds]
    have_peer = peer_available()
    quiet = None
    if args.wait_quiet:
        ok, waited = system.wait_until_quiet(args.wait_quiet, args.wait_timeout, log=log)
        quiet = {"threshold": args.wait_quiet, "reached": ok, "waited_s": round(waited)}
    data = {
        "command": args.command_line,
        "note": getattr(args, "note", None),
        "grid": args.grid,
        "machine": system.machine_info(),
        "load_at_start": system.loadavg(),
        "quiet_wait": quiet,
        "settings": {"threads": args.threads, "budget_s": args.budget, "min_reps": args.min_reps,
                     "max_others_cpu": args.max_others_cpu, "retries": args.retries,
                     "memory_limit_bytes": None},
        "descriptions": DESCRIPTIONS,
        "paper_kwargs": PAPER_KWARGS,
        "peer_kwargs": PEER_KWARGS,
        "model_shape": model_shape(args.grid == "quick"),
        "results": [],
    }

    def save() -> None:
        json_path.write_text(json.dumps(data, indent=1))

    specs = []
    cells = cells_of(grid)
    if getattr(args, "cells", None):
        try:
            cells = [tuple(int(v) for v in c.lower().split("x")) for c in args.cells]
            assert all(len(c) == 3 and min(c) > 0 for c in cells)
        except (ValueError, AssertionError):
            raise SystemExit(f"--cells: expected NxKxD with positive ints, e.g. 4096x512x64, got {args.cells}")
    for n, k, d in cells:
        for kind in kinds:
            specs.append({"kind": kind, "n": n, "k": k, "d": d})
    if not args.no_model:
        quick = args.grid == "quick"
        for k, d in grid["model"]:
            for kind in MODEL_KINDS:
                if kind in args.kinds:
                    specs.append({"kind": kind, "k": k, "d": d, "model": True, "quick": quick,
                                  "n": model_tokens(quick)})
    t_start = time.time()
    for i, spec in enumerate(specs, 1):
        spec = dict(spec, seed=0, threads=args.threads, budget_s=args.budget, min_reps=args.min_reps,
                    device=args.device)
        label = (f"[{i}/{len(specs)}] {'model ' if spec.get('model') else ''}{spec['kind']:<15} "
                 f"N={spec['n']:<6} K={spec['k']:<6} D={spec['d']:<4}")
        if _key(spec) in previous:
            data["results"].append(previous[_key(spec)])
            log(f"{label} (kept from the previous run)")
            continue
        avail = system.mem_available()
        limit = min(args.max_memory_gb * GiB, 0.85 * avail) if avail else args.max_memory_gb * GiB
        data["settings"]["memory_limit_bytes"] = int(limit)
        predicted = predict_bytes(spec["kind"], spec["n"], spec["k"], spec["d"], bool(spec.get("model")))
        if spec["kind"].startswith("peer") and not have_peer:
            res = {"spec": spec, "status": "skipped", "reason": "vector-quantize-pytorch is not installed "
                   "(pip install 'vqkit[bench]')"}
        elif predicted > limit:
            res = {"spec": spec, "status": "skipped", "predicted_bytes": predicted,
                   "reason": f"predicted peak {fmt_bytes(predicted)} > limit {fmt_bytes(limit)}"}
        else:
            res = None
            for attempt in range(1 + args.retries):
                r = _spawn(spec, args.timeout)
                r["attempt"] = attempt + 1
                r["predicted_bytes"] = predicted
                if res is None or (r["status"] == "ok" and (res["status"] != "ok" or r["others_cpu"] < res["others_cpu"])):
                    res = r
                if r["status"] != "ok" or r["others_cpu"] <= args.max_others_cpu or attempt == args.retries:
                    break
                log(f"{label} other processes used {r['others_cpu']:.0%} of the CPUs: measuring again")
        data["results"].append(res)
        save()
        if res["status"] == "ok":
            log(f"{label} {res['median_s'] * 1e3:10.1f} ms  x{res['reps']}  peak +{fmt_bytes(res['peak_extra'])}"
                f"  others {res['others_cpu']:.0%}")
        else:
            log(f"{label} {res['status']}: {res['reason']}")
    if args.gpu_kernel:
        from .gpu import kernel_benchmark

        data["gpu_kernel"] = kernel_benchmark(quick=args.grid == "quick", log=log)
    data["load_at_end"] = system.loadavg()
    data["wall_s"] = round(time.time() - t_start)
    save()
    return data
