"""The ``vqkit`` command line.

::

    vqkit train  [--recipe NAME|FILE] [--out DIR] [--set key=value ...] [--resume]
    vqkit report RUN_DIR
    vqkit ablate [--recipe NAME|FILE | --dataset NAME --model KIND] [--seeds 0 1 2] [--rungs ...]
                 [--fix key=value ...] [--set key=value ...] [--out DIR]
    vqkit recipes [NAME]
    vqkit bench ...          (the benchmark suite, :mod:`vqkit.bench`; ``vqkit bench --help``)

``vqkit train`` with no recipe trains the default (a VQ-VAE on the bundled 8x8 digits) into
``runs/<timestamp>`` and writes its report. Under ``torchrun --nproc_per_node=N`` it trains with DDP
(see :mod:`vqkit.training.trainer`). Errors in recipes, overrides or data paths print one clear message
and exit with status 2 (no traceback).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

__all__ = ["main", "build_parser"]


def _default_out(prefix: str = "") -> str:
    return str(Path("runs") / f"{prefix}{time.strftime('%Y%m%d-%H%M%S')}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vqkit", description="Train, ablate and report vqkit models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{train,report,ablate,recipes,bench}")

    p = sub.add_parser("train", help="train a model from a recipe", description="Train a model from a recipe "
                       "(default: a VQ-VAE on the bundled digits) and write logs, checkpoints and a report.")
    p.add_argument("--recipe", help="built-in recipe name (see `vqkit recipes`) or a .toml file")
    p.add_argument("--out", help="run directory (default: runs/<timestamp>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set steps=200 --set quantizer.codebook_size=512")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest checkpoint (recipe from --out/recipe.toml)")

    p = sub.add_parser("report", help="write report.md and plots for a run directory")
    p.add_argument("run_dir", metavar="RUN_DIR")

    p = sub.add_parser("ablate", help="run the paper's ladder over several seeds and write one table",
                       description="Train every rung of the ladder (plain STE, + k-means, + sync, + affine, "
                       "+ alternating, + replacement, and EMA / rotation / FSQ / vector-quantize-pytorch for "
                       "comparison) with the same data, model, seeds and budget.")
    p.add_argument("--recipe", help="base recipe (name or .toml); default: built-in <dataset>-<model>")
    p.add_argument("--dataset", help="dataset of the built-in base recipe (digits, fashion-mnist, mnist, cifar10)")
    p.add_argument("--model", help="model of the built-in base recipe (vqvae, alexnet, resnet18, vit)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--rungs", nargs="+", help="subset of rungs (default: all; peer only if installed)")
    p.add_argument("--fix", dest="fixes", action="append", default=[], metavar="KEY=VALUE",
                   help="explicit VectorQuantizer argument for the vqkit rungs using that fix, e.g. --fix alternating_lr=0.5")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of the base recipe")
    p.add_argument("--out", help="output directory (default: runs/ablate-<timestamp>)")

    p = sub.add_parser("recipes", help="list built-in recipes, or print one as TOML")
    p.add_argument("name", nargs="?")

    p = sub.add_parser("bench", help="speed / memory benchmarks (vqkit bench --help)", add_help=False)
    p.add_argument("bench_args", nargs=argparse.REMAINDER)
    return parser


def _cmd_train(args: argparse.Namespace) -> int:
    from .training import apply_overrides, load_recipe, train

    if args.resume:
        if args.out is None:
            raise ValueError("--resume: give the run directory to continue with --out DIR")
        if args.recipe is not None:
            raise ValueError("--resume: the run continues the recipe saved in --out/recipe.toml; drop --recipe "
                             "(use --set to change e.g. steps)")
        saved = Path(args.out) / "recipe.toml"
        if not saved.is_file():
            raise FileNotFoundError(f"--resume: {args.out} is not a run directory (no recipe.toml)")
        recipe = load_recipe(saved)
    else:
        recipe = load_recipe(args.recipe)
    recipe = apply_overrides(recipe, args.overrides)
    out = args.out or _default_out()
    result = train(recipe, out, resume=args.resume)
    if _is_main():
        shown = ", ".join(f"{k} {v:.4g}" for k, v in result.final.items())
        print(f"done: {result.step} steps in {result.wall_time_s:.1f} s; held-out {shown}")
        print(f"run directory: {result.run_dir}" + (f" (report: {result.run_dir / 'report.md'})"
                                                  if recipe.log.report else ""))
    return 0


def _is_main() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def _cmd_report(args: argparse.Namespace) -> int:
    from .training import write_report

    path = write_report(args.run_dir)
    print(f"wrote {path}")
    return 0


def _cmd_ablate(args: argparse.Namespace) -> int:
    from .training import apply_overrides, get_preset, load_recipe, run_ablation
    from .training.recipe import _arg_value, _parse_literal, parse_overrides

    if args.recipe is not None:
        if args.dataset or args.model:
            raise ValueError("--recipe: give either --recipe or --dataset/--model, not both")
        base = load_recipe(args.recipe)
    else:
        dataset, model = args.dataset or "digits", args.model or "vqvae"
        base = get_preset(f"{dataset}-{model}")
    base = apply_overrides(base, args.overrides)
    fixes = {k: _arg_value(_parse_literal(v)) for k, v in parse_overrides(args.fixes)}
    out = args.out or _default_out("ablate-")
    command = "vqkit " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["ablate"] else ""
    path = run_ablation(base, out, seeds=args.seeds, rungs=args.rungs, fixes=fixes, command=command)
    print(f"wrote {path}")
    return 0


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


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``vqkit`` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # everything after `bench` belongs to the benchmark suite's own parser
        return _cmd_bench(argparse.Namespace(command="bench", bench_args=argv[1:]))
    args = build_parser().parse_args(argv)
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
    except KeyboardInterrupt:
        print(f"vqkit {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
