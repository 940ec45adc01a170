"""The ``vqkit`` command line (also ``python -m vqkit``).

::

    vqkit train  [--recipe NAME|FILE] [--out DIR] [--set key=value ...] [--resume] [--threads N|auto]
    vqkit report RUN_DIR [--threads N|auto]
    vqkit ablate [--recipe NAME|FILE | --dataset NAME --model KIND] [--seeds 0 1 2]
                 [--rungs ... | --table NAME] [--sweep key=v1,v2 ...] [--row 'name: key=value; ...' ...]
                 [--vary key=v1,v2 ...] [--fix key=value ...] [--set key=value ...] [--out DIR] [--threads N|auto]
    vqkit recipes [NAME]
    vqkit bench ...          (the benchmark suite, :mod:`vqkit.bench`; ``vqkit bench --help``)
    vqkit --version

``vqkit train`` with no recipe trains the default (a VQ-VAE on the bundled 8x8 digits) into
``runs/<timestamp>`` and writes its report. Under ``torchrun --nproc_per_node=N`` it trains with DDP
(see :mod:`vqkit.training.trainer`). Errors in recipes, overrides, data paths or run directories print
one clear message and exit with status 2 (no traceback); Ctrl-C / SIGTERM save a checkpoint and exit
with 130 / 143.

This module imports only the standard library at the top: ``vqkit --help`` and ``vqkit --version`` do
not load torch; each subcommand imports what it needs when it runs.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

from . import __version__

__all__ = ["main", "build_parser"]


def _default_out(prefix: str = "") -> str:
    return str(Path("runs") / f"{prefix}{time.strftime('%Y%m%d-%H%M%S')}")


def _threads_arg(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1 or 'auto', got {text!r}")
    return n


def _add_threads(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=_threads_arg, default="auto", metavar="N|auto",
                   help="intra-op CPU threads (default auto: the CPUs this process may use, minus cores other "
                        "processes keep busy; OMP_NUM_THREADS is honoured when set)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vqkit", description="Train, ablate and report vqkit models.")
    parser.add_argument("--version", action="version", version=f"vqkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,report,ablate,recipes,bench}")

    p = sub.add_parser("train", help="train a model from a recipe", description="Train a model from a recipe "
                       "(default: a VQ-VAE on the bundled digits) and write logs, checkpoints and a report. "
                       "Checkpoints are written periodically (log.checkpoint_every steps, log.checkpoint_minutes) "
                       "and on Ctrl-C / SIGTERM; --resume continues from the newest intact one.")
    p.add_argument("--recipe", help="built-in recipe name (see `vqkit recipes`) or a .toml file")
    p.add_argument("--out", help="run directory (default: runs/<timestamp>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set steps=200 --set quantizer.codebook_size=512")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest intact checkpoint (recipe from --out/recipe.toml; "
                        "a run without checkpoints restarts from step 0)")
    _add_threads(p)

    p = sub.add_parser("report", help="write report.md and plots for a run directory")
    p.add_argument("run_dir", metavar="RUN_DIR")
    _add_threads(p)

    p = sub.add_parser("ablate", help="train a table of configurations over seeds (ladder, rungs, sweeps, varied values)",
                       description="Train every row of a table with the same data, model, seeds and budget and write "
                       "one table (held-out usage, perplexity, MSE or accuracy, the lowest training usage after the "
                       "init, wall time; mean ± std over seeds). Rows: --rungs / --table (default: the ladder of "
                       "Huh et al. 2023 with EMA / rotation / FSQ / vector-quantize-pytorch for comparison), a "
                       "one-factor-at-a-time --sweep around the base recipe, and --row override sets; --vary trains "
                       "every row for every combination of recipe values. Finished runs in --out are reused, "
                       "interrupted ones resume; several processes running the same command share the runs.")
    p.add_argument("--recipe", help="base recipe (name or .toml); default: built-in <dataset>-<model>")
    p.add_argument("--dataset", help="dataset of the built-in base recipe (digits, fashion-mnist, mnist, cifar10)")
    p.add_argument("--model", help="model of the built-in base recipe (vqvae, alexnet, resnet18, vit)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rungs", nargs="+", help="rows by rung name (vqkit.training.RUNGS; peer needs its package)")
    p.add_argument("--table", help="a named row set (vqkit.training.TABLES, e.g. ladder)")
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="one-factor-at-a-time sweep around the base recipe: a 'base' row plus one row per value, e.g. "
                        "--sweep quantizer.dead_code_steps=1,5,20 --sweep 'quantizer.codebook={kind=\"affine\", lr=1},"
                        "{kind=\"affine\", lr=100}' (commas inside braces, brackets and quotes do not split)")
    p.add_argument("--row", dest="rows", action="append", default=[], metavar="'NAME: KEY=VALUE; ...'",
                   help="a row of explicit overrides of the base recipe, e.g. --row 'fast: quantizer.dead_code_steps=1; "
                        "quantizer.dead_code_threshold=2'")
    p.add_argument("--vary", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="train every row for every combination of these recipe values, e.g. --vary "
                        "quantizer.codebook_size=512,1024 --vary steps=600,3000 (step budgets share one run each: "
                        "the shorter ones are read from the longer run)")
    p.add_argument("--fix", dest="fixes", action="append", default=[], metavar="KEY=VALUE",
                   help="explicit VectorQuantizer argument for the vqkit rungs using that fix, e.g. --fix alternating_lr=0.5")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the base recipe")
    p.add_argument("--out", help="output directory (default: runs/ablate-<timestamp>)")
    _add_threads(p)

    p = sub.add_parser("recipes", help="list built-in recipes, or print one as TOML")
    p.add_argument("name", nargs="?")

    p = sub.add_parser("bench", help="speed / memory benchmarks (vqkit bench --help)", add_help=False)
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    return parser


def _set_threads(args: argparse.Namespace) -> str:
    """Set the intra-op thread count from ``--threads``; returns the line that says what was chosen."""
    from .training import set_threads

    n, why = set_threads(args.threads)
    return f"{n} intra-op thread(s) ({why})"


def _cmd_train(args: argparse.Namespace) -> int:
    from .training import RunDir, apply_overrides, load_recipe, resume_recipe, train, write_report

    notes: list[str] = []  # shown by the main rank once the run's checks pass
    if args.resume:
        if args.out is None:
            raise ValueError("--resume: give the run directory to continue with --out DIR")
        if args.recipe is not None:
            raise ValueError("--resume: the run continues the recipe saved in --out/recipe.toml; drop --recipe "
                             "(use --set to change e.g. steps)")
        recipe = resume_recipe(args.out, notes=notes)
    else:
        recipe = load_recipe(args.recipe)
    recipe = apply_overrides(recipe, args.overrides)
    notes.insert(0, _set_threads(args))
    result = train(recipe, args.out or _default_out(), resume=args.resume, notes=notes)
    if not result.is_main:
        return 0
    run = RunDir(result.run_dir)
    report = None
    if recipe.log.report and not (result.already_finished and run.report.is_file()):
        report = write_report(run.root, verbose=recipe.log.progress)
    shown = ", ".join(f"{k} {v:.4g}" for k, v in result.final.items())
    verb = "already finished" if result.already_finished else "done"
    print(f"{verb}: {result.step} steps in {result.wall_time_s:.1f} s; held-out {shown}")
    print(f"run directory: {run.root}" + (f" (report: {report})" if report is not None else ""))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .training import write_report

    print(f"vqkit: {_set_threads(args)}", file=sys.stderr)
    path = write_report(args.run_dir, verbose=True)
    print(f"wrote {path}")
    return 0


def _cmd_ablate(args: argparse.Namespace) -> int:
    from .training import apply_overrides, get_preset, load_recipe, run_ablation
    from .training.ablate import parse_axis, parse_row
    from .training.recipe import parse_arg_value, parse_overrides

    if args.recipe is not None:
        if args.dataset or args.model:
            raise ValueError("--recipe: give either --recipe or --dataset/--model, not both")
        base = load_recipe(args.recipe)
    else:
        dataset, model = args.dataset or "digits", args.model or "vqvae"
        base = get_preset(f"{dataset}-{model}")
    base = apply_overrides(base, args.overrides)
    fixes = {k: parse_arg_value(v) for k, v in parse_overrides(args.fixes)}
    vary = _axes(args.vary, "--vary", parse_axis)
    sweep = _axes(args.sweep, "--sweep", parse_axis)
    rows: dict[str, list[tuple[str, str]]] = {}
    for item in args.rows:
        name, pairs = parse_row(item)
        if name in rows:
            raise ValueError(f"--row: two rows are named {name!r}")
        rows[name] = pairs
    print(f"vqkit: {_set_threads(args)}", file=sys.stderr)
    out = args.out or _default_out("ablate-")
    command = "vqkit " + " ".join(shlex.quote(a) for a in args.argv) if getattr(args, "argv", None) else ""
    path = run_ablation(base, out, seeds=args.seeds, rungs=args.rungs, fixes=fixes, command=command,
                        table=args.table, vary=vary, sweep=sweep, rows=rows)
    print(f"wrote {path}")
    return 0


def _axes(items: list[str], option: str, parse) -> dict[str, list[str]]:
    axes: dict[str, list[str]] = {}
    for item in items:
        key, values = parse(item, option)
        if key in axes:
            raise ValueError(f"{option}: {key} given twice; list all its values in one {option} {key}=v1,v2,...")
        axes[key] = values
    return axes


def _cmd_recipes(args: argparse.Namespace) -> int:
    from .training import get_preset, preset_names, to_toml

    if args.name is None:
        print("\n".join(preset_names()))
    else:
        print(to_toml(get_preset(args.name)), end="")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    try:
        from .bench import main as bench_main
    except ImportError as e:
        raise ImportError(f"vqkit bench is not available in this installation ({e})") from e
    return bench_main(args.bench_args)


def _interrupted_status(error: BaseException) -> int:
    import signal

    return 128 + int(getattr(error, "signum", signal.SIGINT))


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vqkit`` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # everything after `bench` belongs to the benchmark suite's own parser
        return _cmd_bench(argparse.Namespace(command="bench", bench_args=argv[1:]))
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command line as given, recorded in ablation tables
    handler = {"train": _cmd_train, "report": _cmd_report, "ablate": _cmd_ablate, "recipes": _cmd_recipes,
               "bench": _cmd_bench}
    try:
        return handler[args.command](args)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
        message = str(e)
        if type(e).__name__ == "DatasetNotFoundError":
            message += "\nOn the command line: --set data.root=<that directory>."
        print(f"vqkit {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:
        print(f"vqkit {args.command}: interrupted", file=sys.stderr)
        return _interrupted_status(e)
    except Exception as e:
        if type(e).__name__ != "TrainingInterrupted":
            raise
        if getattr(e, "rank", 0) == 0:
            print(f"vqkit {args.command}: {e}", file=sys.stderr)
        return _interrupted_status(e)


if __name__ == "__main__":
    sys.exit(main())
