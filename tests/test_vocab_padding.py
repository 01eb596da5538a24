"""Vocabulary padding (layers.padded_vocab): the models run their vocabulary-sized matmuls at a width
rounded up to a multiple of 64 for large odd vocabularies (GPT-NeoX's 50,277 -> 50,304), which GPU GEMM
kernels need for aligned rows. The padding must be invisible: the same parameters, outputs of width V,
and losses, logits and gradients equal to the unpadded path (``model.vocab_padded = V``). Models pad on
CUDA only by default (``pad_vocab_on``); these tests switch it on for the CPU too.

On the CPU the comparison runs in float64. Padding changes the matmul widths, so BLAS may sum in another
order (oneDNN/MKL pick kernels by processor): in fp32 that is ~1e-7 per op, and S2's chained descent
(Langevin noise, random step sizes, replay, alpha ~ 5) amplified it to 4.5e-4 relative on Intel CPUs while
AMD stayed under 1e-5. In float64 the same amplification stays below 1e-9, so the tolerances below test the
padding, not the processor. CUDA runs in fp32 with TF32 off."""

from __future__ import annotations

import copy

import pytest
import torch

from ebt_scaling.config import RECIPE_OVERRIDES, ModelConfig
from ebt_scaling.models import build_model
from ebt_scaling.models.layers import padded_vocab

V, T, B = 4100, 8, 2  # V >= 4096 and not a multiple of 64: padded to 4160
SHAPE = dict(n_layer=2, n_embd=32, n_head=2, vocab_size=V, sequence_len=T)
# CPU always; CUDA (marked gpu, with TF32 off) where a device is visible.
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device visible to torch")])]


@pytest.fixture(autouse=True)
def _one_thread_no_tf32():
    n, tf32 = torch.get_num_threads(), torch.backends.cuda.matmul.allow_tf32
    torch.set_num_threads(1)
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.set_num_threads(n)
    torch.backends.cuda.matmul.allow_tf32 = tf32


def test_padded_width():
    assert padded_vocab(50277) == 50304
    assert padded_vocab(4100) == 4160
    assert padded_vocab(50304) == 50304 and padded_vocab(2048) == 2048
    assert padded_vocab(37) == 37 and padded_vocab(4095) == 4095  # small vocabularies are left alone


def on(model: torch.nn.Module, device: str) -> torch.nn.Module:
    """float64 on the CPU (rounding-order independent, see the module doc); fp32 on CUDA. ``double()`` casts
    floating-point tensors only (the complex RoPE table stays complex)."""
    model = model.to(device)
    return model.double() if device == "cpu" else model


def pair(family: str, device: str = "cpu", **opts):
    torch.manual_seed(0)
    padded = on(build_model(ModelConfig(family=family, **SHAPE, **opts)), device)
    with torch.no_grad():  # non-trivial step embeddings, alpha and head
        for p in padded.parameters():
            p.add_(0.01 * torch.randn_like(p))
    ref = copy.deepcopy(padded)
    ref.vocab_padded = V  # the unpadded reference path
    assert padded.vocab_padded == 4160 and padded.pad_vocab_on == ("cuda",)
    padded.pad_vocab_on = ("cpu", "cuda")
    return padded, ref


def data(seed: int = 1, device: str = "cpu"):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randint(0, V, (B, T), generator=g), torch.randint(0, V, (B, T), generator=g)
    return x.to(device), y.to(device)


# Relative bound in float64 on the CPU: measured errors are 0 to 1e-14 (AMD EPYC), so 1e-9 leaves five orders
# of magnitude for another processor's summation order and still fails on any real difference.
F64_REL = 1e-9


def assert_close(a, b, rel=1e-5):
    """max |a - b| <= rel * max |b| (+ a tiny absolute floor); ``rel`` is the fp32 (CUDA) bound, float64
    tensors are held to ``F64_REL``."""
    f64 = a.dtype == torch.float64
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    assert a.shape == b.shape
    err = (a - b).abs().max().item()
    rel, floor = (F64_REL, 1e-15) if f64 else (rel, 1e-7)
    assert err <= rel * b.abs().max().item() + floor, err


def grads_match(m1, m2, rel=1e-4):
    for (n, p1), (_, p2) in zip(m1.named_parameters(), m2.named_parameters(), strict=True):
        assert p1.grad is not None and p2.grad is not None, n
        assert p1.grad.shape == p1.shape  # parameters keep the true V
        assert_close(p1.grad, p2.grad, rel)


@pytest.mark.parametrize("device", DEVICES)
def test_transformer_pp_padding_is_exact(device):
    padded, ref = pair("transformer_pp", device)
    assert padded.output.weight.shape == (V, 32)
    x, y = data(1, device)
    assert padded._logits(x).shape[-1] == 4160 and ref._logits(x).shape[-1] == V
    lp, _ = padded.loss(x, y)
    lr, _ = ref.loss(x, y)
    assert_close(lp, lr)
    lp.backward()
    lr.backward()
    grads_match(padded, ref)
    with torch.no_grad():
        out = padded(x)
        assert out.shape == (B, T, V)
        assert_close(out, ref(x))


CASES = {
    "s1": dict(RECIPE_OVERRIDES["ebt_s1"]),
    "s2": dict(RECIPE_OVERRIDES["ebt_s2"], replay_buffer_size=4),  # Langevin noise, random step sizes, replay
    "s1-logits": dict(RECIPE_OVERRIDES["ebt_s1"], descent_wrt="logits"),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("case", list(CASES))
def test_ebt_padding_is_exact(case, device):
    padded, ref = pair("ebt", device, **CASES[case])
    assert padded.vocab_to_embed.weight.shape == (32, V)
    assert set(padded.state_dict()) == set(ref.state_dict())  # the mask is not saved
    for step in range(2):  # the second step draws from the replay buffer (S2)
        x, y = data(step, device)
        torch.manual_seed(10 + step)
        lp, ip = padded.loss(x, y)
        torch.manual_seed(10 + step)
        lr, ir = ref.loss(x, y)
        assert_close(lp, lr, 1e-5)
        assert_close(ip["energy_final"], ir["energy_final"], 1e-5)
        padded.zero_grad()
        ref.zero_grad()
        lp.backward()
        lr.backward()
        grads_match(padded, ref)
    assert all(z.shape[-1] == V for _, _, z in padded.replay)
    padded.eval()
    ref.eval()
    x, _ = data(3, device)
    g1, g2 = torch.Generator(device).manual_seed(5), torch.Generator(device).manual_seed(5)
    zp, ep = padded.think(x, steps=3, samples=2, generator=g1)
    zr, er = ref.think(x, steps=3, samples=2, generator=g2)
    assert zp.shape == (B, T, V)
    assert_close(zp, zr, 1e-4)
    assert_close(ep, er, 1e-4)
    torch.manual_seed(7)
    fp = padded(x)
    torch.manual_seed(7)
    assert_close(fp, ref(x), 1e-4)


def test_cpu_runs_unpadded_by_default():
    torch.manual_seed(0)
    tpp = build_model(ModelConfig(family="transformer_pp", **SHAPE))
    ebt = build_model(ModelConfig(family="ebt", **SHAPE))
    x, _ = data()
    assert tpp._logits(x).shape[-1] == V
    assert ebt._width(x.device) == V
    if torch.cuda.is_available():  # pragma: no cover - GPU machines
        assert ebt._width(torch.device("cuda")) == 4160
