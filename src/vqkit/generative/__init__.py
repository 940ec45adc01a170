"""The generative second stage on top of a trained tokenizer.

* :mod:`~vqkit.generative.layout`: :func:`index_layout` (a quantizer's index columns and vocabularies)
  and :class:`TokenSpec` (the token space a prior models).
* :mod:`~vqkit.generative.tokens`: encode a dataset split into token maps, save / load / validate them
  (safetensors), decode them back to images.
* :mod:`~vqkit.generative.schedule`: MaskGIT's cosine masking schedule (training and decoding).
* :mod:`~vqkit.generative.maskgit` / :mod:`~vqkit.generative.autoregressive`: the priors
  (:class:`MaskedTokenPrior`, :class:`AutoregressivePrior`; :func:`build_prior` by kind).
* :mod:`~vqkit.generative.trainer`: :func:`train_prior` (checkpoints, resume, ``metrics.jsonl``),
  :func:`load_prior`.
* :mod:`~vqkit.generative.images`: sample images from a prior, write PNG grids.
* :mod:`~vqkit.generative.features` / :mod:`~vqkit.generative.fid` / :mod:`~vqkit.generative.quality`:
  sample-quality metrics that need no download (a feature network trained here, Fréchet distance,
  precision / recall, conditional accuracy).

The toolkit layer (``vqkit encode / decode / prior / sample / genablate``):

* :mod:`~vqkit.generative.recipe`: :class:`PriorRecipe` (TOML, typed ``--set``, built-in ``maskgit`` /
  ``autoregressive``).
* :mod:`~vqkit.generative.pipeline`: tokenizers from ``vqkit train`` runs, token files in their run
  directories, :func:`run_prior` (train, measure, samples, report), :func:`sample_prior`.
* :mod:`~vqkit.generative.compare`: :func:`run_generative_comparison` (tokenizer rows x seeds -> one table).
"""

from .autoregressive import AutoregressivePrior
from .features import FeatureNet, load_feature_net, load_or_train_feature_net, save_feature_net, train_feature_net
from .fid import feature_frechet_distance, frechet_distance, gaussian_fit
from .images import sample_grid, sample_images, sample_tokens, save_image_grid
from .layout import TokenLayout, TokenSpec, index_layout
from .maskgit import MaskedTokenPrior
from .priors import PRIOR_KINDS, build_prior
from .quality import SampleQuality, precision_recall, sample_quality
from .schedule import cosine_mask_ratio, decoding_schedule, mask_counts, random_mask
from .tokens import TokenSet, decode_tokens, encode_dataset, load_tokens, save_tokens, tokenizer_fingerprint
from .trainer import PriorConfig, PriorRunResult, evaluate_prior, load_prior, train_prior
from .transformer import TokenPrior
from .recipe import PriorRecipe, apply_prior_overrides, get_prior_preset, load_prior_recipe
from .pipeline import Tokenizer, load_tokenizer, run_prior, sample_prior, write_prior_report
from .compare import GENERATIVE_ROWS, run_generative_comparison

__all__ = [
    "TokenLayout", "TokenSpec", "index_layout",
    "TokenSet", "encode_dataset", "decode_tokens", "save_tokens", "load_tokens", "tokenizer_fingerprint",
    "cosine_mask_ratio", "mask_counts", "random_mask", "decoding_schedule",
    "TokenPrior", "MaskedTokenPrior", "AutoregressivePrior", "PRIOR_KINDS", "build_prior",
    "PriorConfig", "PriorRunResult", "train_prior", "load_prior", "evaluate_prior",
    "sample_tokens", "sample_images", "save_image_grid", "sample_grid",
    "FeatureNet", "train_feature_net", "save_feature_net", "load_feature_net", "load_or_train_feature_net",
    "gaussian_fit", "frechet_distance", "feature_frechet_distance",
    "SampleQuality", "precision_recall", "sample_quality",
    "PriorRecipe", "load_prior_recipe", "get_prior_preset", "apply_prior_overrides",
    "Tokenizer", "load_tokenizer", "run_prior", "sample_prior", "write_prior_report",
    "GENERATIVE_ROWS", "run_generative_comparison",
]
