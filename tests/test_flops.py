"""FLOPs accounting: the analytic ``exact`` convention against a dispatch-mode matmul counter, the
``paper`` convention's defining ratios, and flops.py staying torch-free."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import pytest
import torch

from ebt_scaling.config import RECIPE_OVERRIDES, ModelConfig
from ebt_scaling.errors import ConfigError
from ebt_scaling.models import build_model
from ebt_scaling.models.flop_counter import MatmulFlopCounter
from ebt_scaling.models.flops import expected_train_steps, flops_per_token, param_counts

SHAPES = [dict(n_layer=2, n_embd=32, n_head=2, vocab_size=41, sequence_len=16),
          dict(n_layer=3, n_embd=48, n_head=4, vocab_size=29, sequence_len=12, ffn_hidden=40)]
# Descent settings without randomness, so the counted run has the configured structure.
S2_FIXED = dict(RECIPE_OVERRIDES["ebt_s2"], randomize_num_steps=0, step_size_random_scale=1.0,
                replay_buffer_size=0, mcmc_num_steps=3)
B = 2


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py


def _count(fn) -> int:
    with MatmulFlopCounter() as c:
        fn()
    return c.total


def _within(counted: float, predicted: float, tol: float = 1e-3) -> None:
    # The issue asks for 2%; the analytic count is meant to be exact, so hold it to 0.1%.
    assert abs(counted - predicted) <= tol * predicted, (counted, predicted, counted / predicted)


@pytest.mark.parametrize("shape", SHAPES)
def test_exact_tpp_matches_counter(shape):
    cfg = ModelConfig(family="transformer_pp", **shape)
    m = build_model(cfg)
    m.attn_impl = "math"  # fused SDPA kernels are invisible to a matmul counter
    t = cfg.sequence_len
    idx = torch.randint(0, cfg.vocab_size, (B, t))

    def train():
        loss, _ = m.loss(idx, idx)
        loss.backward()

    _within(_count(train) / (B * t), flops_per_token(cfg, "exact"))
    with torch.no_grad():
        _within(_count(lambda: m(idx)) / (B * t), flops_per_token(cfg, "exact", mode="eval"))


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("opts", [dict(RECIPE_OVERRIDES["ebt_s1"]), S2_FIXED,
                                  dict(S2_FIXED, truncate_steps=False, step_embedding=False),
                                  dict(RECIPE_OVERRIDES["ebt_s1"], descent_wrt="logits", mcmc_num_steps=3),
                                  dict(S2_FIXED, step_size_learnable=True)],
                         ids=["s1", "s2-fixed", "s2-untruncated-nostep", "s1-logits-3", "s2-learnable-alpha"])
def test_exact_ebt_matches_counter(shape, opts):
    cfg = ModelConfig(family="ebt", **shape, **opts)
    m = build_model(cfg).train()
    t = cfg.sequence_len
    idx = torch.randint(0, cfg.vocab_size, (B, t))

    def train():
        loss, _ = m.loss(idx, idx)
        loss.backward()

    _within(_count(train) / (B * t), flops_per_token(cfg, "exact"))
    m.eval()
    with torch.no_grad():
        _within(_count(lambda: m(idx)) / (B * t), flops_per_token(cfg, "exact", mode="eval"))
        _within(_count(lambda: m.think(idx, steps=4, samples=2)) / (B * t),
                flops_per_token(cfg, "exact", mode="think", steps=4, samples=2))


def test_exact_counts_the_explicit_step_count():
    cfg = ModelConfig(family="ebt", **SHAPES[0], **RECIPE_OVERRIDES["ebt_s1"])
    m = build_model(cfg).train()
    idx = torch.randint(0, cfg.vocab_size, (B, cfg.sequence_len))
    with torch.no_grad():
        m.eval()
        counted = _count(lambda: m.descend(idx, torch.randn(B, cfg.sequence_len, cfg.vocab_size), [0, 1, 1, 1, 1],
                                           alpha=m.alpha_value(), sigma=0.0, need_graph=False))
    _within(counted / (B * cfg.sequence_len), flops_per_token(cfg, "exact", mode="eval", steps=5))


def test_paper_convention_ratios():
    shape = dict(n_layer=6, n_embd=384, n_head=6, vocab_size=50277, sequence_len=256)
    tpp = ModelConfig(family="transformer_pp", **shape)
    s1 = ModelConfig(family="ebt", **shape, **RECIPE_OVERRIDES["ebt_s1"])
    n = param_counts(tpp)["non_embedding"]
    assert flops_per_token(tpp, "paper") == 6 * n
    assert flops_per_token(tpp, "paper", mode="eval") == 2 * n
    assert flops_per_token(s1, "paper") / flops_per_token(tpp, "paper") == pytest.approx(20 / 3)
    # One graph step without step doubling would be 10N; two steps are 40N.
    assert flops_per_token(s1, "paper", steps=1) == 20 * n
    # S2: 2.5 expected steps, only the last with a graph, a 1.5x batch from the replay buffer.
    s2 = ModelConfig(family="ebt", **shape, **RECIPE_OVERRIDES["ebt_s2"])
    assert expected_train_steps(s2) == 2.5
    assert flops_per_token(s2, "paper") == pytest.approx((20 * n + 1.5 * 8 * n) * 1.5)
    # Exact at xxs with the GPT-NeoX vocabulary: below the paper's 6.66x (scaling-fits.md section 9 measures
    # 4.4-5.8x for the paper's code; ours skips two kinds of dead work, see the module docstring).
    ratio = flops_per_token(s1, "exact") / flops_per_token(tpp, "exact")
    assert 3.5 < ratio < 6.66


def test_param_counts_keys_and_presets():
    cfg = ModelConfig(family="ebt", n_layer=6, n_embd=384, n_head=6, vocab_size=50277, sequence_len=256)
    c = param_counts(cfg)
    assert {"embedding", "non_embedding", "vocab_projection", "energy_head", "step_embedding", "total"} <= set(c)
    assert c["non_embedding"] == pytest.approx(6.18e6, rel=0.01)  # paper Table D.1, xxs
    assert c["vocab_projection"] == c["embedding"] == 50277 * 384
    assert c["energy_head"] == 384 and c["step_embedding"] == 2 * 384


def test_bad_arguments():
    cfg = ModelConfig(family="transformer_pp", **SHAPES[0])
    with pytest.raises(ConfigError, match="convention"):
        flops_per_token(cfg, "kaplan")
    with pytest.raises(ConfigError, match="mode"):
        flops_per_token(cfg, "exact", mode="infer")
    with pytest.raises(ConfigError, match="think"):
        flops_per_token(cfg, "exact", mode="think")
    with pytest.raises(ConfigError, match="steps"):
        flops_per_token(cfg, "exact", steps=0)


def test_flops_module_is_pure_python():
    code = ("import sys; import ebt_scaling.models.flops as f; from ebt_scaling.config import ModelConfig;"
            "c = ModelConfig(family='ebt', n_layer=1, n_embd=8, n_head=2, vocab_size=5, sequence_len=4);"
            "f.flops_per_token(c, 'exact'); f.param_counts(c); assert 'torch' not in sys.modules")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       cwd=pathlib.Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr


def test_exact_with_random_step_count_and_replay():
    cfg = ModelConfig(family="ebt", **SHAPES[0], **dict(RECIPE_OVERRIDES["ebt_s2"], step_size_random_scale=2.0,
                                                        replay_buffer_size=0))
    m = build_model(cfg).train()
    t = cfg.sequence_len
    idx = torch.randint(0, cfg.vocab_size, (B, t))
    seen = {}
    torch.manual_seed(0)
    for _ in range(8):
        with MatmulFlopCounter() as c:
            loss, info = m.loss(idx, idx)
            loss.backward()
        seen[int(info["inner_steps"])] = c.total / (B * t)
    assert set(seen) == {2, 3}
    for n, counted in seen.items():
        _within(counted, flops_per_token(cfg, "exact", steps=n))
    assert flops_per_token(cfg, "exact") == pytest.approx((seen[2] + seen[3]) / 2, rel=1e-3)
    replay = ModelConfig(family="ebt", **SHAPES[0], **RECIPE_OVERRIDES["ebt_s2"])
    assert flops_per_token(replay, "exact") == pytest.approx(1.5 * flops_per_token(cfg, "exact"))
