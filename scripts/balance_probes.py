"""Two probes that push a VQ codebook towards balanced code loads, for the perplexity study (not library options).

Each patches :class:`vqkit.VectorQuantizer` in this process only and then runs the ``vqkit`` command line
given after ``--`` (usually ``ablate`` with its own ``--out``). The runs record the vqkit version tagged with
the probe (e.g. ``0.4.0+assignment-bias-0.01``), so ``ablate`` never reuses a run of another probe or of the
unpatched library in the same output directory.

* ``assignment-bias``: the search subtracts a per-code bias ``b_k`` from the squared distances; after every
  training call ``b_k += eta * d * clip(1 - K m_k, -1, 1)``, with ``m_k`` the code's share of the call's
  vectors and ``d`` the mean squared distance to the selected codes, then ``b`` is centred. Codes used less
  than ``1 / K`` win ties they would lose. The bias is used in training only, or also in evaluation with
  ``--at-eval`` (then the evaluation does not quantize to the nearest code). Limits of a probe: single
  process, euclidean metric, no Gumbel sampling; the bias lives in the process, not in the checkpoints, so a
  resumed run starts it again from zero and a later evaluation of a checkpoint (the report, ``code_mass.py``)
  quantizes to the nearest code even for an ``--at-eval`` run.
* ``codebook-diversity``: the diversity regularizer (``diversity_weight``) with the encoder's vectors detached,
  so its gradient moves the codes only (the library's regularizer also moves the encoder).

Example (K = 1024, seed 0)::

    python scripts/balance_probes.py assignment-bias --eta 0.01 -- ablate --dataset fashion-mnist \\
        --model vqvae --seeds 0 --set quantizer.codebook_size=1024 --rungs defaults --out runs/bias-0.01
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch

from vqkit.quantizers import vector


#: what the probes replace, as it was when this module was loaded (patching twice wraps the originals again)
ORIGINALS = {"_assign": vector.VectorQuantizer._assign, "_bookkeep": vector.VectorQuantizer._bookkeep,
             "soft_assignment_entropy": vector.soft_assignment_entropy}


def patch_assignment_bias(eta: float, at_eval: bool) -> None:
    def bias(self: vector.VectorQuantizer, device: torch.device) -> torch.Tensor:
        b = self.__dict__.get("_probe_bias")
        if b is None:
            b = self.__dict__["_probe_bias"] = torch.zeros(self.codebook_size, device=device)
        return b

    nearest, bookkeep = ORIGINALS["_assign"], ORIGINALS["_bookkeep"]

    def assign(self, z: torch.Tensor, codes: torch.Tensor, training: bool) -> torch.Tensor:
        if self.metric != "euclidean" or not (training or at_eval):
            return nearest(self, z, codes, training)
        z, c = z.float(), codes.float()
        d = z.square().sum(1, keepdim=True) - 2 * z @ c.T + c.square().sum(1)
        return (d - bias(self, z.device)).argmin(1)

    def bookkeep_and_update(self, z: torch.Tensor, indices: torch.Tensor, weight):
        counts = bookkeep(self, z, indices, weight)
        with torch.no_grad():
            codes = self.effective_codes(True).detach().float()
            d = (z.float() - codes[indices]).square().sum(1).mean()
            load = counts.float() * self.codebook_size / counts.sum().clamp_min(1)
            b = bias(self, z.device)
            b.add_(eta * d * (1 - load).clamp(-1, 1))
            b.sub_(b.mean())
        return counts

    vector.VectorQuantizer._assign = assign
    vector.VectorQuantizer._bookkeep = bookkeep_and_update


def patch_codebook_diversity() -> None:
    entropy = ORIGINALS["soft_assignment_entropy"]
    vector.soft_assignment_entropy = lambda z, codes, *a, **k: entropy(z.detach(), codes, *a, **k)


def tag_version(tag: str) -> None:
    """Record ``<release>+<tag>`` as the version of the runs this process writes."""
    from vqkit import __version__ as release
    from vqkit.training import ablate, resume, trainer

    for module in (ablate, resume, trainer):
        module.__version__ = f"{release}+{tag}"


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--" not in argv:
        raise SystemExit("usage: balance_probes.py PROBE [options] -- VQKIT_COMMAND ...")
    cut = argv.index("--")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("probe", choices=("assignment-bias", "codebook-diversity"))
    p.add_argument("--eta", type=float, default=0.01, help="assignment-bias: step size of the bias")
    p.add_argument("--at-eval", action="store_true", help="assignment-bias: use the bias in evaluation too")
    args = p.parse_args(argv[:cut])
    if args.probe == "assignment-bias":
        patch_assignment_bias(args.eta, args.at_eval)
        tag_version(f"assignment-bias-{args.eta:g}" + ("-at-eval" if args.at_eval else ""))
    else:
        patch_codebook_diversity()
        tag_version("codebook-diversity")
    from vqkit.cli import main as vqkit_main

    inner = argv[cut + 1:]
    rc = vqkit_main(inner)
    if rc == 0 and inner[:1] == ["ablate"] and "--out" in inner:  # the table names the probe, not bare vqkit
        out = Path(inner[inner.index("--out") + 1])
        probe = "python scripts/balance_probes.py " + " ".join(shlex.quote(a) for a in argv)
        bare = "vqkit " + " ".join(shlex.quote(a) for a in inner)
        (out / "ablation.md").write_text((out / "ablation.md").read_text().replace(bare, probe, 1))
        summary = json.loads((out / "ablation.json").read_text())
        summary["command"] = probe
        (out / "ablation.json").write_text(json.dumps(summary, indent=1) + "\n")
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
