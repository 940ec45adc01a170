"""Markdown report of a benchmark run: the machine, the targets, the time and memory tables."""

from __future__ import annotations

import math

from .cases import fmt_bytes

__all__ = ["to_markdown", "evaluate_targets"]

GiB = 2**30


def _index(data: dict) -> dict:
    out = {}
    for r in data["results"]:
        s = r["spec"]
        out[(s["kind"], s["n"], s["k"], s["d"], bool(s.get("model")))] = r
    return out


def _ok(r: dict | None) -> bool:
    return r is not None and r.get("status") == "ok"


def _ms(r: dict | None) -> str:
    if r is None:
        return "-"
    if r.get("status") != "ok":
        return "skipped" if r.get("status") == "skipped" else r.get("status", "-")
    return f"{r['median_s'] * 1e3:,.1f}"


def _ratio(a: dict | None, b: dict | None) -> float | None:
    if _ok(a) and _ok(b) and b["median_s"] > 0:
        return a["median_s"] / b["median_s"]
    return None


def _fr(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _best_peer(idx: dict, n: int, k: int, d: int, model: bool = False) -> dict | None:
    peers = [idx.get((p, n, k, d, model)) for p in ("peer_ema", "peer_learnable")]
    peers = [p for p in peers if _ok(p)]
    return min(peers, key=lambda r: r["median_s"]) if peers else None


def _cells(data: dict) -> list[tuple[int, int, int]]:
    seen = []
    for r in data["results"]:
        s = r["spec"]
        if not s.get("model") and (s["n"], s["k"], s["d"]) not in seen:
            seen.append((s["n"], s["k"], s["d"]))
    return seen


def evaluate_targets(data: dict) -> list[dict]:
    """The issue's targets, each with the worst measured value and whether it is met."""
    idx = _index(data)
    cells = _cells(data)
    rows = []

    def worst(kind_ratio, cond, mode=max):
        vals = []
        for n, k, d in cells:
            if cond(n, k, d):
                v = kind_ratio(n, k, d)
                if v is not None:
                    vals.append((v, (n, k, d)))
        return mode(vals) if vals else None

    for variant in ("vqkit_paper", "vqkit_plain"):
        tag = "paper options" if variant == "vqkit_paper" else "plain flags"
        w = worst(lambda n, k, d: _ratio(idx.get((variant, n, k, d, False)), idx.get(("floor", n, k, d, False))),
                  lambda n, k, d: k >= 8192)
        rows.append(dict(target=f"vqkit step ({tag}) / bare floor, K >= 8192", bar="<= 1.00", worst=w,
                         met=None if w is None else w[0] <= 1.0))
        w = worst(lambda n, k, d: _ratio(idx.get((variant, n, k, d, False)), idx.get(("floor", n, k, d, False))),
                  lambda n, k, d: k <= 512)
        rows.append(dict(target=f"vqkit step ({tag}) / bare floor, K <= 512", bar="<= 1.15", worst=w,
                         met=None if w is None else w[0] <= 1.15))
        w = worst(lambda n, k, d: _ratio(idx.get((variant, n, k, d, False)),
                                         idx.get(("floor_chunked", n, k, d, False))), lambda n, k, d: True)
        rows.append(dict(target=f"vqkit step ({tag}) / chunked floor, all cells", bar="<= 1.30", worst=w,
                         met=None if w is None else w[0] <= 1.3))
    w = worst(lambda n, k, d: _ratio(_best_peer(idx, n, k, d), idx.get(("vqkit_paper", n, k, d, False))),
              lambda n, k, d: k >= 8192, mode=min)
    rows.append(dict(target="fastest peer / vqkit (paper options), K >= 8192 (cells where the peer ran)",
                     bar=">= 5.0", worst=w, met=None if w is None else w[0] >= 5.0))
    r = idx.get(("vqkit_paper", 32768, 65536, 64, False))
    if _ok(r):
        rows.append(dict(target="vqkit (paper) peak process memory, N=32768 K=65536 D=64", bar="< 1 GiB",
                         worst=(r["peak_rss"] / GiB, (32768, 65536, 64)), met=r["peak_rss"] < GiB, unit="GiB"))
    return rows


def _target_md(rows: list[dict]) -> list[str]:
    out = ["| target | bar | worst measured (cell N, K, D) | met |", "|---|---|---|---|"]
    for r in rows:
        w = r["worst"]
        val = "-" if w is None else f"{w[0]:.2f}{' ' + r.get('unit', '') if r.get('unit') else ''} ({w[1][0]}, {w[1][1]}, {w[1][2]})"
        met = "n/a" if r["met"] is None else ("yes" if r["met"] else "**no**")
        out.append(f"| {r['target']} | {r['bar']} | {val} | {met} |")
    return out


def to_markdown(data: dict) -> str:
    idx = _index(data)
    m = data["machine"]
    lines = [
        f"# vqkit benchmark: `{data['grid']}` grid",
        "",
        f"Command: `{data['command']}`  ",
        f"Date: {m['date']}; wall time {data.get('wall_s', '?')} s; vqkit commit {m.get('vqkit_commit')}.",
        "",
    ]
    if data.get("note"):
        lines += [f"**Note:** {data['note']}", ""]
    lines += [
        "## Machine",
        "",
        f"- CPU: {m['cpu_model']}, {m['cpus_usable']} usable cores ({m['cpu_count']} online); {m['caches']}",
        f"- memory: {fmt_bytes(m['mem_total_bytes'])}; {m['platform']}",
        f"- torch {m['torch']} ({m['torch_threads']} threads, MKL {m['mkl']}, {m['cpu_capability']}); "
        f"python {m['python']}; vector-quantize-pytorch {m['vector_quantize_pytorch']}",
        f"- GPU: {m['cuda'] or 'none'}",
        "",
        "## Load during the run",
        "",
    ]
    oth = [r["others_cpu"] for r in data["results"] if _ok(r) and not math.isnan(r["others_cpu"])]
    qw = data.get("quiet_wait")
    lines.append(f"- 1/5/15-min load average at start: {_fmt_load(data.get('load_at_start'))}, at end: "
                 f"{_fmt_load(data.get('load_at_end'))}"
                 + (f"; waited {qw['waited_s']} s for load < {qw['threshold']} (reached: {qw['reached']})" if qw else ""))
    if oth:
        srt = sorted(oth)
        lines.append(f"- CPU share used by *other* processes during the timed steps (from /proc/stat): median "
                     f"{srt[len(srt) // 2]:.0%}, max {srt[-1]:.0%} over {len(srt)} cases (cases above "
                     f"{data['settings']['max_others_cpu']:.0%} were re-measured up to {data['settings']['retries']} "
                     f"times, keeping the quietest)")
    lines += ["", "## Targets", ""] + _target_md(evaluate_targets(data))
    lines += [
        "",
        "## Time: forward + backward of one training step (median, ms)",
        "",
        "Ratios: `/floor` = to the bare `argmin(z @ C.T)`; `/chunk` = to the bare chunked matmul + argmin; "
        "`peer/vqkit` = fastest peer configuration over vqkit with the paper's options (higher is better "
        "for vqkit).",
        "",
        "| N | K | D | floor | chunked floor (/floor) | vqkit plain (/floor, /chunk) | vqkit paper (/floor, /chunk) "
        "| peer EMA | peer learnable | peer/vqkit |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n, k, d in _cells(data):
        g = lambda kind: idx.get((kind, n, k, d, False))  # noqa: E731
        fl, ch = g("floor"), g("floor_chunked")
        cells = [f"{n}", f"{k}", f"{d}", _ms(fl), f"{_ms(ch)} ({_fr(_ratio(ch, fl))})"]
        for v in ("vqkit_plain", "vqkit_paper"):
            cells.append(f"{_ms(g(v))} ({_fr(_ratio(g(v), fl))}, {_fr(_ratio(g(v), ch))})")
        cells += [_ms(g("peer_ema")), _ms(g("peer_learnable"))]
        bp = _best_peer(idx, n, k, d)
        cells.append(_fr(_ratio(bp, g("vqkit_paper")), 1) if bp else
                     ("peer skipped" if g("peer_ema") is not None else "-"))
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Peak memory above the baseline process (timed steps)",
        "",
        "Baseline: a fresh process that imported torch and allocated the inputs and the layer. Peak: `VmHWM` "
        "over the timed steps (reset after the warm-up, so one-off k-means init is excluded; its peak is in "
        "the JSON as `warmup_peak_extra`). Total = baseline + extra.",
        "",
        "| N | K | D | floor | chunked floor | vqkit plain | vqkit paper (total) | peer EMA | peer learnable |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n, k, d in _cells(data):
        g = lambda kind: idx.get((kind, n, k, d, False))  # noqa: E731
        row = [f"{n}", f"{k}", f"{d}"]
        for kind in ("floor", "floor_chunked", "vqkit_plain", "vqkit_paper", "peer_ema", "peer_learnable"):
            r = g(kind)
            if _ok(r):
                v = fmt_bytes(r["peak_extra"])
                if kind == "vqkit_paper":
                    v += f" ({fmt_bytes(r['peak_rss'])})"
            elif r is not None and r.get("status") == "skipped" and r.get("predicted_bytes"):
                v = f"skipped (predicted {fmt_bytes(r['predicted_bytes'])})"
            else:
                v = "-" if r is None else r.get("status", "-")
            row.append(v)
        lines.append("| " + " | ".join(row) + " |")
    model_rows = [r for r in data["results"] if r["spec"].get("model")]
    if model_rows:
        ks = []
        for r in model_rows:
            key = (r["spec"]["k"], r["spec"]["d"])
            if key not in ks:
                ks.append(key)
        s = data.get("model_shape", {})
        lines += [
            "",
            "## Model level: one VQ-VAE training step (forward, loss, backward, Adam step; median, ms)",
            "",
            f"Conv VQ-VAE on {s.get('batch')} x {s.get('channels')} x {s.get('size')} x {s.get('size')} images, "
            f"hidden {s.get('hidden')}, {s.get('downsample')} stride-2 stages, so "
            f"{model_rows[0]['spec']['n']} tokens per step; only the quantizer differs.",
            "",
            "| K | D | vqkit paper | vqkit plain | peer EMA | peer learnable | peer step / vqkit step |",
            "|---|---|---|---|---|---|---|",
        ]
        for k, d in ks:
            n = model_rows[0]["spec"]["n"]
            g = lambda kind: idx.get((kind, n, k, d, True))  # noqa: E731
            bp = _best_peer(idx, n, k, d, model=True)
            lines.append(f"| {k} | {d} | {_ms(g('vqkit_paper'))} | {_ms(g('vqkit_plain'))} | {_ms(g('peer_ema'))} | "
                         f"{_ms(g('peer_learnable'))} | {_fr(_ratio(bp, g('vqkit_paper')))} |")
    skipped = [r for r in data["results"] if r.get("status") != "ok"]
    if skipped:
        lines += ["", "## Not run", ""]
        for r in skipped:
            s = r["spec"]
            lines.append(f"- {'model ' if s.get('model') else ''}{s['kind']} N={s['n']} K={s['k']} D={s['d']}: "
                         f"{r.get('status')}: {r.get('reason')}")
    if data.get("gpu_kernel"):
        from .gpu import kernel_markdown

        lines += ["", "## CUDA kernel", ""] + kernel_markdown(data["gpu_kernel"])
    lines += ["", "## What each row measures", ""]
    for k, v in data["descriptions"].items():
        lines.append(f"- `{k}`: {v}")
    lines += [
        "",
        f"Repeats: median of >= {data['settings']['min_reps']} timed steps after warm-up (two warm-up steps when "
        f"the first takes < 30 s, else one), up to 9 for fast cells (about {data['settings']['budget_s']} s of "
        f"timing per case); only cells whose step takes over 15 s get fewer (down to 1); the JSON has every "
        f"timing.",
        "",
    ]
    return "\n".join(lines)


def _fmt_load(la) -> str:
    return "-" if not la else " / ".join(f"{v:.2f}" for v in la)
