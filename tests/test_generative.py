"""The generative second stage: token files, masking schedule, priors, prior training + resume, metrics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from vqkit.data import load_dataset
from vqkit.generative import (
    AutoregressivePrior,
    TokenLayout,
    MaskedTokenPrior,
    PriorConfig,
    TokenSet,
    TokenSpec,
    decode_tokens,
    decoding_schedule,
    encode_dataset,
    feature_frechet_distance,
    frechet_distance,
    index_layout,
    load_or_train_feature_net,
    load_prior,
    load_tokens,
    precision_recall,
    random_mask,
    sample_grid,
    sample_quality,
    sample_tokens,
    save_tokens,
    tokenizer_fingerprint,
    train_feature_net,
    train_prior,
)
from vqkit.generative import features as features_module
from vqkit.models import build_model, build_quantizer
from vqkit.training import latest_checkpoint, read_metrics

pytest.importorskip("sklearn")  # the bundled digits

pytestmark = pytest.mark.usefixtures("one_thread")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _tokenizer(quantizer: dict, steps: int = 30, seed: int = 0):
    """A tiny digits VQ-VAE (4x4 tokens) trained for a few steps."""
    train_set = load_dataset("digits", "train")
    torch.manual_seed(seed)
    model = build_model("vqvae", train_set.image_shape, 10, quantizer, hidden=16, latent_dim=8, downsample=1)
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x, _ = train_set.get_batch(torch.randint(0, len(train_set), (64,), generator=gen))
        out = model(x)
        loss = F.mse_loss(out.output, x) + out.quant.loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def vq_tokens():
    torch.set_num_threads(1)
    model = _tokenizer({"kind": "vq", "codebook_size": 32})
    train = encode_dataset(model, load_dataset("digits", "train"), tokenizer_hash=tokenizer_fingerprint(model))
    test = encode_dataset(model, load_dataset("digits", "test"), tokenizer_hash=tokenizer_fingerprint(model))
    return model, train, test


# ----------------------------------------------------------------------------------------------
# masking schedule
# ----------------------------------------------------------------------------------------------


def test_random_mask_masks_at_least_one_and_follows_the_count():
    gen = torch.Generator().manual_seed(0)
    for length in (1, 2, 7, 49):
        mask, ratios = random_mask(256, length, generator=gen)
        assert mask.dtype == torch.bool and mask.shape == (256, length)
        assert bool((ratios > 0).all() and (ratios <= 1).all())
        counts = mask.sum(1)
        assert bool((counts >= 1).all() and (counts <= length).all())
        expected = torch.ceil(ratios.double() * length).long().clamp(1, length)
        assert torch.equal(counts, expected)


def test_mask_ratio_has_the_cosine_distribution():
    _, ratios = random_mask(20000, 4, generator=torch.Generator().manual_seed(1))
    ratios = ratios.double()
    for x in (0.1, 0.3, 0.5, 0.7, 0.9):  # P(cos(pi/2 u) <= x) = 1 - 2/pi * arccos(x)
        assert abs(float((ratios <= x).double().mean()) - (1 - 2 / math.pi * math.acos(x))) < 0.015
    assert abs(float(ratios.mean()) - 2 / math.pi) < 0.01  # E[cos(pi/2 u)] = 2/pi


def test_decoding_schedule_is_the_cosine_and_ends_at_zero():
    assert decoding_schedule(16, 8) == [15, 14, 13, 11, 8, 6, 3, 0]
    assert decoding_schedule(16, 1) == [0]
    assert decoding_schedule(3, 6) == [2, 1, 0, 0, 0, 0]
    for length, steps in ((49, 8), (49, 12), (256, 10)):
        counts = decoding_schedule(length, steps)
        cosine = [math.floor(length * math.cos(math.pi / 2 * (t + 1) / steps)) for t in range(steps - 1)] + [0]
        assert counts == cosine
    with pytest.raises(ValueError, match="steps"):
        decoding_schedule(4, 0)


# ----------------------------------------------------------------------------------------------
# index layouts and token files
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind,kwargs,expected", [
    ("vq", {"codebook_size": 32}, TokenLayout((32,), False)),
    ("grouped_vq", {"codebook_size": 16, "groups": 2}, TokenLayout((16, 16), True)),
    ("grouped_vq", {"codebook_size": 16, "groups": 2, "shared_codebook": True}, TokenLayout((16, 16), True)),
    ("residual_vq", {"codebook_size": 8, "num_levels": 3}, TokenLayout((8, 8, 8), True)),
    ("fsq", {"levels": [4, 4]}, TokenLayout((16,), False)),
    ("fsq", {"levels": [4, 4], "num_codebooks": 2}, TokenLayout((16, 16), True)),
    ("latent", {"values_per_dim": 3, "index_mode": "per_dim"}, TokenLayout((3,) * 8, True)),
])
def test_index_layout_of_every_quantizer_kind(kind, kwargs, expected):
    assert index_layout(build_quantizer(kind, 8, channel_dim=1, **kwargs)) == expected


def test_index_layout_refuses_a_codebook_too_large_to_enumerate():
    huge = build_quantizer("fsq", 8, channel_dim=1, levels=[8] * 7)  # 2^21 implicit codes
    with pytest.raises(ValueError, match=r"FSQ \(2097152 codes per index column\) is too large to model as tokens"):
        index_layout(huge)
    model = build_model("vqvae", (1, 8, 8), 10, {"kind": "fsq", "levels": [8] * 7}, hidden=8, latent_dim=7,
                        downsample=1)
    with pytest.raises(ValueError, match="too large to model as tokens"):
        encode_dataset(model, load_dataset("digits", "test"), tokenizer_hash="x")


def test_token_spec_sequences_round_trip():
    gen = torch.Generator().manual_seed(0)
    for layout in (TokenLayout((5,), False), TokenLayout((3,), True), TokenLayout((3, 4, 5), True)):
        spec = TokenSpec((2, 3), layout, 10, "h")
        maps = torch.randint(0, 3, (4, *spec.index_shape()), generator=gen)
        seqs = spec.to_sequences(maps)
        assert seqs.shape == (4, 6, layout.columns)
        assert torch.equal(seqs[:, 4], layout.to_columns(maps)[:, 1, 1])  # raster order: row 1, col 1 -> 4
        assert torch.equal(spec.to_maps(seqs), maps)
        assert TokenSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec


@pytest.mark.parametrize("quantizer", [
    {"kind": "residual_vq", "codebook_size": 16, "num_levels": 2},
    {"kind": "grouped_vq", "codebook_size": 16, "groups": 2},
    {"kind": "fsq", "levels": [4, 4], "num_codebooks": 2},
])
def test_multi_column_tokens_round_trip_to_the_reconstruction(tmp_path, quantizer):
    model = _tokenizer(quantizer, steps=5)
    data = load_dataset("digits", "test")
    tokens = encode_dataset(model, data, tokenizer_hash=tokenizer_fingerprint(model), limit=50)
    assert tokens.indices.shape == (50, 4, 4, 2) and tokens.spec.layout.trailing
    loaded = load_tokens(save_tokens(tokens, tmp_path / "t.safetensors"), tokenizer_hash=tokenizer_fingerprint(model))
    assert torch.equal(loaded.indices, tokens.indices) and torch.equal(loaded.labels, data.labels[:50])
    assert loaded.spec == tokens.spec and loaded.spec.source == "digits/test"
    x, _ = data.get_batch(torch.arange(50))
    with torch.no_grad():
        recon = model(x).output.clamp(0, 1)
    torch.testing.assert_close(decode_tokens(model, loaded.indices), recon)
    # the prior's view: (N, L, C) and back
    assert torch.equal(tokens.spec.to_maps(tokens.sequences()), tokens.indices)


def test_tokenizer_fingerprint_tracks_weights_and_recipe():
    model = _tokenizer({"kind": "vq", "codebook_size": 8}, steps=0)
    h = tokenizer_fingerprint(model, {"a": 1})
    assert h == tokenizer_fingerprint(model, {"a": 1}) and len(h) == 64
    assert h == tokenizer_fingerprint(dict(model.state_dict()), {"a": 1})  # a checkpoint's tensors as stored
    assert h != tokenizer_fingerprint(model, {"a": 2})
    with torch.no_grad():
        next(model.parameters())[0].view(-1)[0] += 1e-6
    assert h != tokenizer_fingerprint(model, {"a": 1})


def test_token_file_validation_errors(tmp_path, vq_tokens):
    _, tokens, _ = vq_tokens
    good = save_tokens(tokens, tmp_path / "good.safetensors")
    meta = {"format": "vqkit-tokens", "version": "1", "spec": json.dumps(tokens.spec.to_dict())}

    def write(name, tensors, metadata=meta):
        path = tmp_path / name
        save_file(tensors, str(path), metadata=metadata)
        return path

    with pytest.raises(FileNotFoundError, match="missing.safetensors: no such token file"):
        load_tokens(tmp_path / "missing.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="junk.safetensors: not a readable safetensors file"):
        load_tokens(tmp_path / "junk.safetensors")
    idx, lab = tokens.indices, tokens.labels
    with pytest.raises(ValueError, match="plain.safetensors: not a vqkit token file"):
        load_tokens(write("plain.safetensors", {"indices": idx, "labels": lab}, None))
    with pytest.raises(ValueError, match="nolabels.safetensors: missing tensor.*labels"):
        load_tokens(write("nolabels.safetensors", {"indices": idx}))
    with pytest.raises(TypeError, match="int32.safetensors: indices: expected dtype torch.int64"):
        load_tokens(write("int32.safetensors", {"indices": idx.int(), "labels": lab}))
    with pytest.raises(ValueError, match=r"shape.safetensors: indices: expected shape \(N, 4, 4\)"):
        load_tokens(write("shape.safetensors", {"indices": idx[:, :3].contiguous(), "labels": lab}))
    bad = idx.clone()
    bad[3, 1, 2] = 32
    with pytest.raises(ValueError, match=r"range.safetensors: indices: column 0 expected values in \[0, 32\)"):
        load_tokens(write("range.safetensors", {"indices": bad, "labels": lab}))
    with pytest.raises(ValueError, match=r"labels.safetensors: labels: expected shape \(1437,\)"):
        load_tokens(write("labels.safetensors", {"indices": idx, "labels": lab[:-1]}))
    with pytest.raises(ValueError, match=r"classes.safetensors: labels: expected values in \[0, 10\)"):
        load_tokens(write("classes.safetensors", {"indices": idx, "labels": lab + 1}))
    with pytest.raises(ValueError, match="good.safetensors: tokens come from tokenizer"):
        load_tokens(good, tokenizer_hash="0" * 64)
    with pytest.raises(ValueError, match="tokens: indices: column 0"):
        TokenSet(tokens.spec, bad, lab)


# ----------------------------------------------------------------------------------------------
# priors
# ----------------------------------------------------------------------------------------------


def test_maskgit_loss_is_cross_entropy_on_masked_positions_only():
    torch.manual_seed(0)
    prior = MaskedTokenPrior((5, 7), 6, num_classes=3, dim=16, depth=1, heads=2)
    tokens = torch.stack([torch.randint(0, 5, (4, 6)), torch.randint(0, 7, (4, 6))], -1)
    labels = torch.tensor([0, 1, 2, 1])
    loss, stats = prior.training_loss(tokens, labels, generator=torch.Generator().manual_seed(3))
    mask, _ = random_mask(4, 6, generator=torch.Generator().manual_seed(3))
    inputs = torch.where(mask[..., None], torch.tensor([5, 7]), tokens)  # a masked position masks every column
    logits = prior(inputs, labels)
    expected = torch.stack([F.cross_entropy(lg[mask], tokens[..., c][mask]) for c, lg in enumerate(logits)]).mean()
    torch.testing.assert_close(loss, expected)
    assert stats["mask_ratio"] == float(mask.float().mean())


@pytest.mark.parametrize("steps", [1, 4, 12, 20])
def test_maskgit_decoding_fills_every_position_following_the_schedule(steps):
    torch.manual_seed(0)
    prior = MaskedTokenPrior((3, 5), 12, num_classes=2, dim=16, depth=1, heads=2)
    labels = torch.tensor([0, 1, 1, 0, 1])
    out, history = prior.generate(labels, steps=steps, generator=torch.Generator().manual_seed(0),
                                  return_history=True)
    assert out.shape == (5, 12, 2) and out.dtype == torch.int64
    assert bool((out[..., 0] < 3).all() and (out[..., 1] < 5).all() and (out >= 0).all())
    counts = decoding_schedule(12, steps)
    assert len(history) == steps
    for t, masked in enumerate(history):
        assert masked.sum(1).tolist() == [counts[t]] * 5
        if t:
            assert not bool((masked & ~history[t - 1]).any())  # a revealed position is never re-masked
    again = prior.generate(labels, steps=steps, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    uncond = prior.generate(num_samples=3, steps=steps, temperature=0.0, confidence_noise=0.0, guidance=0.0)
    assert uncond.shape == (3, 12, 2)


def test_maskgit_guidance_and_unconditional_priors():
    torch.manual_seed(0)
    prior = MaskedTokenPrior((4,), 5, num_classes=2, dim=16, depth=1, heads=2, class_dropout=0.5)
    out = prior.generate(torch.tensor([0, 1]), steps=3, guidance=2.0, generator=torch.Generator().manual_seed(1))
    assert out.shape == (2, 5, 1)
    uncond = MaskedTokenPrior((4,), 5, dim=16, depth=1, heads=2)
    with pytest.raises(ValueError, match="labels: this prior is unconditional"):
        uncond.generate(torch.tensor([0]))
    with pytest.raises(ValueError, match=r"tokens: expected shape \(B, 5, 1\)"):
        uncond(torch.zeros(2, 4, 1, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"tokens: column 0 expected values in \[0, 4\)"):
        uncond.training_loss(torch.full((2, 5, 1), 4))


def test_autoregressive_prior_is_causal_in_the_flattened_order():
    torch.manual_seed(0)
    prior = AutoregressivePrior((3, 7), 5, num_classes=2, dim=16, depth=2, heads=2).eval()
    tokens = torch.stack([torch.randint(0, 3, (2, 5)), torch.randint(0, 7, (2, 5))], -1)
    labels = torch.tensor([0, 1])
    logits = prior(tokens, labels)
    assert [tuple(lg.shape) for lg in logits] == [(2, 5, 3), (2, 5, 7)]
    changed = tokens.clone()
    changed[:, 2, 1] = (changed[:, 2, 1] + 1) % 7  # flattened position 2 * 2 + 1 = 5
    other = prior(changed, labels)
    # logits of flattened positions <= 5 (rows 0..2 of column 0 and 0..1 of column 1 plus (2, 1)) are unchanged
    torch.testing.assert_close(other[0][:, :3], logits[0][:, :3])
    torch.testing.assert_close(other[1][:, :3], logits[1][:, :3])
    assert not torch.allclose(other[0][:, 3:], logits[0][:, 3:])
    loss, stats = prior.training_loss(tokens, labels)
    assert math.isfinite(stats["loss"]) and 0 <= stats["accuracy"] <= 1


def test_autoregressive_sampling_shapes_top_k_and_greedy():
    torch.manual_seed(0)
    prior = AutoregressivePrior((3, 7), 4, num_classes=2, dim=16, depth=1, heads=2)
    labels = torch.tensor([0, 1, 1])
    out = prior.generate(labels, temperature=1.0, top_k=2, generator=torch.Generator().manual_seed(0))
    assert out.shape == (3, 4, 2) and out.dtype == torch.int64
    assert bool((out[..., 0] < 3).all() and (out[..., 1] < 7).all())
    greedy = prior.generate(labels, temperature=0.0)
    assert torch.equal(greedy, prior.generate(labels, top_k=1, generator=torch.Generator().manual_seed(5)))
    assert prior.generate(num_samples=2).shape == (2, 4, 2)


# ----------------------------------------------------------------------------------------------
# prior training
# ----------------------------------------------------------------------------------------------


class Interrupt(Exception):
    pass


def _config(kind: str = "maskgit", **kw) -> PriorConfig:
    model = dict(dim=16, depth=1, heads=2, dropout=0.1, **({"class_dropout": 0.2} if kind == "maskgit" else {}))
    return PriorConfig(**{**dict(kind=kind, model=model, steps=12, batch_size=16, log_every=1, eval_every=5,
                                 checkpoint_every=5, warmup_steps=3), **kw})


@pytest.mark.parametrize("kind", ["maskgit", "autoregressive"])
def test_interrupted_and_resumed_prior_run_is_bit_identical(tmp_path, vq_tokens, kind):
    _, train_tokens, test_tokens = vq_tokens
    val = TokenSet(test_tokens.spec, test_tokens.indices[:64], test_tokens.labels[:64])
    full = train_prior(train_tokens, tmp_path / "full", _config(kind), val_tokens=val)

    def crash(step: int) -> None:
        if step == 8:  # after the checkpoint at 5
            raise Interrupt

    with pytest.raises(Interrupt):
        train_prior(train_tokens, tmp_path / "cut", _config(kind), val_tokens=val, on_step=crash)
    assert latest_checkpoint(tmp_path / "cut").name == "step_00000005"
    resumed = train_prior(train_tokens, tmp_path / "cut", _config(kind), val_tokens=val, resume=True)
    assert resumed.final == full.final and resumed.step == 12
    for name in ("model.safetensors", "optimizer.safetensors"):
        a = load_file(str(tmp_path / "full/checkpoints/step_00000012" / name))
        b = load_file(str(tmp_path / "cut/checkpoints/step_00000012" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert (tmp_path / "full/metrics.jsonl").read_bytes() == (tmp_path / "cut/metrics.jsonl").read_bytes()
    records = read_metrics(tmp_path / "full")
    assert [r["step"] for r in records if r["split"] == "train"] == list(range(1, 13))
    assert [r["step"] for r in records if r["split"] == "test"] == [5, 10, 12]
    assert {"loss", "accuracy", "lr", "grad_norm"} <= set(records[0])


def test_prior_run_guards(tmp_path, vq_tokens):
    _, tokens, _ = vq_tokens
    config = _config(steps=2, eval_every=0, checkpoint_every=0)
    train_prior(tokens, tmp_path / "run", config)
    with pytest.raises(FileExistsError, match="already holds a prior run"):
        train_prior(tokens, tmp_path / "run", config)
    with pytest.raises(FileNotFoundError, match="resume: no checkpoint found"):
        train_prior(tokens, tmp_path / "empty", config, resume=True)
    with pytest.raises(ValueError, match="resume: config differs from the run.*lr"):
        train_prior(tokens, tmp_path / "run", _config(steps=4, eval_every=0, checkpoint_every=0, lr=1e-3),
                    resume=True)
    fewer = TokenSet(tokens.spec, tokens.indices[:100], tokens.labels[:100])
    with pytest.raises(ValueError, match="resume: the tokens differ"):
        train_prior(fewer, tmp_path / "run", config, resume=True)
    longer = train_prior(tokens, tmp_path / "run", _config(steps=4, eval_every=0, checkpoint_every=0), resume=True)
    assert longer.step == 4 and latest_checkpoint(tmp_path / "run").name == "step_00000004"
    with pytest.raises(ValueError, match="come from the token file"):
        PriorConfig(model={"length": 3})


def test_end_to_end_tokenizer_prior_samples_metrics(tmp_path, vq_tokens):
    model, tokens, test_tokens = vq_tokens
    path = save_tokens(tokens, tmp_path / "train.safetensors")
    result = train_prior(path, tmp_path / "prior", _config(steps=10, eval_every=0, checkpoint_every=0))
    prior, info = load_prior(tmp_path / "prior")
    assert info["tokens"] == tokens.spec.to_dict() and info["prior"]["kind"] == "maskgit"
    png, images = sample_grid(prior, model, tokens.spec, tmp_path / "grid.png", per_class=3, scale=2, steps=4,
                              generator=torch.Generator().manual_seed(0))
    assert png.read_bytes()[:8] == PNG_MAGIC and images.shape == (30, 1, 8, 8)
    labels = torch.arange(10).repeat_interleave(3)
    reloaded = sample_tokens(prior, tokens.spec, labels=labels, steps=4, generator=torch.Generator().manual_seed(0))
    trained = result.prior.generate(labels, steps=4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(reloaded, tokens.spec.to_maps(trained))  # the checkpoint holds the trained prior
    torch.testing.assert_close(images, decode_tokens(model, reloaded))
    test_set = load_dataset("digits", "test")
    net, _ = train_feature_net(load_dataset("digits", "train"), steps=20)
    real, _ = test_set.get_batch(torch.arange(len(test_set)))
    quality = sample_quality(net, real, images, torch.arange(10).repeat_interleave(3))
    recon = sample_quality(net, real, decode_tokens(model, test_tokens.indices))
    for q in (quality, recon):
        assert all(math.isfinite(v) for v in (q.fd, q.precision, q.recall))
    assert 0 <= quality.accuracy <= 1 and recon.accuracy is None
    assert recon.fd < quality.fd  # reconstructions are closer to the data than 10 steps of prior training


# ----------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------


def test_frechet_distance_closed_forms():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2 with standard deviations s
    fd = frechet_distance(torch.tensor([1.0]), torch.tensor([[4.0]]), torch.tensor([-2.0]), torch.tensor([[9.0]]))
    assert fd == pytest.approx(9.0 + 1.0, rel=1e-12)
    # diagonal: ||mu1 - mu2||^2 + sum (s1 - s2)^2
    mu1, mu2 = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64), torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)
    s1, s2 = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64), torch.tensor([3.0, 2.0, 0.1], dtype=torch.float64)
    fd = frechet_distance(mu1, torch.diag(s1**2), mu2, torch.diag(s2**2))
    assert fd == pytest.approx(float((mu1 - mu2).square().sum() + (s1 - s2).square().sum()), rel=1e-12)
    # identical Gaussians, singular covariance
    x = torch.randn(5, 20, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert feature_frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_non_diagonal_against_fp64_reference():
    rng = np.random.default_rng(0)
    d = 16
    a, b = rng.standard_normal((d, d)), rng.standard_normal((d, d))
    s1, s2 = a @ a.T + 0.1 * np.eye(d), b @ b.T / d
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    # reference: the eigenvalues of S1 S2 are real and >= 0; tr sqrt(S1 S2) = sum of their square roots
    eig = np.linalg.eigvals(s1 @ s2).real.clip(min=0)
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(eig).sum()
    got = frechet_distance(*(torch.from_numpy(v) for v in (mu1, s1, mu2, s2)))
    assert got == pytest.approx(ref, rel=1e-9)
    # float32 inputs are promoted: same value within float32 rounding of the inputs
    got32 = frechet_distance(*(torch.from_numpy(v).float() for v in (mu1, s1, mu2, s2)))
    assert got32 == pytest.approx(ref, rel=1e-5)


def test_precision_recall_on_separated_clusters():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(200, 4, generator=gen)
    b = torch.randn(200, 4, generator=gen) + 100.0
    assert precision_recall(a, a) == (1.0, 1.0)
    assert precision_recall(a, b) == (0.0, 0.0)
    real = torch.cat([a, b])
    fake = torch.randn(200, 4, generator=gen) * 0.5  # inside the first cluster only
    precision, recall = precision_recall(real, fake, k=3)
    assert precision > 0.95 and 0 < recall < 0.5  # the second real cluster is never covered


def test_feature_network_training_is_deterministic_and_cached(tmp_path, monkeypatch):
    train_set, test_set = load_dataset("digits", "train"), load_dataset("digits", "test")
    rng = torch.get_rng_state()
    threads = torch.get_num_threads()
    a, _ = train_feature_net(train_set, steps=15, batch_size=32)
    b, _ = train_feature_net(train_set, steps=15, batch_size=32)
    assert torch.equal(torch.get_rng_state(), rng) and torch.get_num_threads() == threads  # no global side effects
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb), ka
    net, info = load_or_train_feature_net(tmp_path, train_set, test_set, steps=15, batch_size=32)
    assert 0 <= info["test_accuracy"] <= 1
    assert all(torch.equal(v, a.state_dict()[k]) for k, v in net.state_dict().items())

    def no_training(*args, **kwargs):
        raise AssertionError("the cached network must be reused")

    monkeypatch.setattr(features_module, "train_feature_net", no_training)
    cached, info2 = load_or_train_feature_net(tmp_path, train_set, steps=15, batch_size=32)
    assert info2 == info and all(torch.equal(v, a.state_dict()[k]) for k, v in cached.state_dict().items())
    with pytest.raises(ValueError, match="trained with other settings.*'steps': \\(15, 16\\)"):
        load_or_train_feature_net(tmp_path, train_set, steps=16, batch_size=32)
