"""CUDA checks: marked ``gpu`` (not in the default run) and skipped where torch sees no CUDA device.

    python -m pytest -m gpu tests/test_cuda.py          # on a machine with a GPU

They cover what the CPU suite cannot: the EBT's double backward on the GPU with only the fused SDPA
kernels enabled (its observed stream, differentiated once, runs on them; its prediction stream must not),
CPU/CUDA numerical agreement of the descent and of every parameter gradient in fp32, bf16 autocast
training end to end through ``train``, and thinking on the GPU. This module imports only torch and the
model/training code (no database, no Ray), so it runs on a bare GPU image with ``PYTHONPATH=.``.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from ebt_scaling.config import DataConfig, RunSpec, TrainConfig, model_config
from ebt_scaling.models import build_model
from ebt_scaling.records import ListSink
from ebt_scaling.train import train

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch")]

V, T, B = 64, 16, 3
CFGS = {
    "tpp": dict(family="transformer_pp"),
    "ebt_s1": dict(family="ebt", recipe="ebt_s1"),
    "ebt_s2": dict(family="ebt", recipe="ebt_s2"),
}


@pytest.fixture(autouse=True)
def _strict_fp32():
    # CPU and CUDA are compared in true fp32: no TF32 matmuls on the GPU.
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def model(name: str, **kw):
    c = CFGS[name]
    cfg = model_config(c["family"], "nano", vocab_size=V, sequence_len=T, recipe=c.get("recipe"), **kw)
    torch.manual_seed(0)
    return build_model(cfg)


def tokens(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, V, (B, T), generator=g)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return (a - b).abs().max().item() / max(b.abs().max().item(), 1e-12)


def descent_loss(m, idx: torch.Tensor, tgt: torch.Tensor, z0: torch.Tensor) -> torch.Tensor:
    """The EBT's training-style objective from a given start (no random draws), so that CPU and CUDA
    compute the same function: a second-order descent over every landscape, then the CE of every step."""
    landscapes = m.landscapes(train=False)
    zs, _ = m.descend(idx, z0, landscapes, alpha=m.alpha_value(), sigma=0.0, need_graph=True)
    ces = [torch.nn.functional.cross_entropy(z.flatten(0, 1).float(), tgt.flatten()) for z in zs]
    return torch.stack(ces).mean()


@pytest.mark.parametrize("name", ["ebt_s1", "ebt_s2"])
def test_ebt_descent_and_gradients_match_cpu_in_fp32(name):
    cpu = model(name)
    with torch.no_grad():  # a non-trivial step embedding and alpha, so that the landscapes differ
        for p in cpu.parameters():
            p.add_(0.01 * torch.randn_like(p))
    gpu = copy.deepcopy(cpu).cuda()
    idx, tgt = tokens(0), tokens(1)
    z0 = torch.randn(B, T, V, generator=torch.Generator().manual_seed(2))
    lc = descent_loss(cpu, idx, tgt, z0)
    lg = descent_loss(gpu, idx.cuda(), tgt.cuda(), z0.cuda())
    lc.backward()
    lg.backward()
    assert rel_err(lg, lc) < 1e-4, (lg.item(), lc.item())
    for (n, pc), (_, pg) in zip(cpu.named_parameters(), gpu.named_parameters(), strict=True):
        assert pg.grad is not None and torch.isfinite(pg.grad).all(), n
        assert rel_err(pg.grad, pc.grad) < 2e-3, (n, rel_err(pg.grad, pc.grad))


@pytest.mark.parametrize("name", ["ebt_s1", "ebt_s2"])
def test_ebt_double_backward_never_uses_the_fused_sdpa_kernels(name):
    """With only the flash / memory-efficient SDPA kernels allowed (neither supports double backward),
    the EBT still trains: its observed stream (differentiated once) uses them, its prediction stream's
    attention is explicit. The T++ forward runs on those kernels fine."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    idx, tgt = tokens(0).cuda(), tokens(1).cuda()
    m = model(name).cuda().train()
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss, _ = m.loss(idx, tgt)
        loss.backward()
        tpp = model("tpp").cuda()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            tpp_loss, _ = tpp.loss(idx, tgt)
        tpp_loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(tpp_loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


@pytest.mark.parametrize("name", ["tpp", "ebt_s1", "ebt_s2"])
def test_train_bf16_on_cuda_learns_the_synthetic_source(name):
    """``train`` on CUDA: bf16 autocast by default ("auto"), losses finite and falling below the unigram
    entropy of the synthetic Markov source, run record says cuda."""
    c = CFGS[name]
    recipe = c.get("recipe")
    m = model_config(c["family"], "nano", vocab_size=32, sequence_len=32, recipe=recipe)
    lr, steps = (1e-2, 100) if c["family"] == "transformer_pp" else (3e-2, 120)
    tc = TrainConfig(steps=steps, batch_size=16, lr=lr, warmup_steps=15, eval_interval=0, eval_batches=4,
                     log_interval=10, seed=0, device="cuda")
    spec = RunSpec(model=m, train=tc, data=DataConfig(source="synthetic", vocab_size=32), recipe=recipe)
    sink = ListSink()
    r = train(spec, sink)
    assert r.status == "completed" and r.steps == steps, (r.status, r.reason)
    assert str(r.device).startswith("cuda")
    losses = [v for _, v in sink.series("train_loss")]
    assert all(math.isfinite(v) for v in losses)
    unigram = r.extra["unigram_loss"]
    assert r.final_val_loss < unigram - 0.5, (r.final_val_loss, unigram)


def test_think_on_cuda_best_of_n_and_more_steps():
    m = model("ebt_s2").cuda().eval()
    idx = tokens(0).cuda()
    g = torch.Generator(device="cuda")
    g.manual_seed(0)
    z1, e1 = m.think(idx, steps=3, samples=1, generator=g)
    g.manual_seed(0)
    z4, e4 = m.think(idx, steps=3, samples=4, generator=g)
    assert z1.shape == (B, T, V) and e1.shape == (B, T) and z1.device.type == "cuda"
    assert torch.isfinite(z4).all() and torch.isfinite(e4).all()
    assert (e4 <= e1 + 1e-5).all()  # sample 0 equals the one-sample run; best-of-4 never scores worse


def _graph_spec(name: str, ckpt=None, **train_kw) -> RunSpec:
    c = CFGS[name]
    recipe = c.get("recipe")
    m = model_config(c["family"], "nano", vocab_size=32, sequence_len=32, recipe=recipe)
    kw = dict(steps=10, batch_size=4, lr=3e-3, warmup_steps=2, eval_interval=5, eval_batches=2, log_interval=1,
              seed=0, device="cuda", precision="fp32")
    kw.update(train_kw)
    return RunSpec(model=m, train=TrainConfig(**kw), data=DataConfig(source="synthetic", vocab_size=32),
                   recipe=recipe, checkpoint_dir=str(ckpt) if ckpt else None)


def _close(a: list[tuple[int, float]], b: list[tuple[int, float]], tol: float = 1e-5) -> bool:
    return [s for s, _ in a] == [s for s, _ in b] and all(
        abs(x - y) <= tol * max(1.0, abs(y)) for (_, x), (_, y) in zip(a, b, strict=True))


@pytest.mark.parametrize("name", ["tpp", "ebt_s1"])
def test_cuda_graph_training_equals_eager_in_fp32(name):
    """``TrainConfig.cuda_graph``: 3 eager warm-up steps, then replays of the captured forward + backward +
    clipping; the run (losses, gradient norms, validation, the EBT's step size) equals eager training."""
    eager, graphed = ListSink(), ListSink()
    r_e = train(_graph_spec(name), eager)
    r_g = train(_graph_spec(name, cuda_graph=True), graphed)
    assert r_e.status == r_g.status == "completed", (r_e.reason, r_g.reason)
    assert r_g.extra["cuda_graph_replays"] == 10 - 3 and "cuda_graph_replays" not in r_e.extra
    for key in ("train_loss", "grad_norm", "val_loss") + (("alpha", "train_ce_initial") if name != "tpp" else ()):
        assert _close(graphed.series(key), eager.series(key)), (key, graphed.series(key), eager.series(key))


def test_cuda_graph_bf16_training_learns_and_resumes(tmp_path):
    """bf16 autocast (the CUDA default) with graph replay learns the synthetic source; a graphed fp32 T++ run
    resumed from its step-6 checkpoint (warm-up and capture again) ends where the uninterrupted one ends."""
    full = ListSink()
    r = train(_graph_spec("ebt_s1", steps=120, batch_size=16, lr=3e-2, warmup_steps=15, eval_interval=0,
                          log_interval=10, precision="auto", cuda_graph=True), full)
    assert r.status == "completed" and r.extra["cuda_graph_replays"] == 117, (r.status, r.reason)
    assert r.final_val_loss < r.extra["unigram_loss"] - 0.5, (r.final_val_loss, r.extra["unigram_loss"])

    one, rest = ListSink(), ListSink()
    spec = _graph_spec("tpp", ckpt=tmp_path / "a", steps=12, checkpoint_interval=6, cuda_graph=True)
    train(spec, one)
    assert [s for _, s in one.checkpoints] == [6, 12]
    resumed = train(spec.with_(checkpoint_dir=str(tmp_path / "b")), rest, resume_from=one.checkpoints[0][0])
    assert resumed.status == "completed" and resumed.steps == 12
    assert _close(rest.series("train_loss"), one.series("train_loss")[6:], tol=1e-4)


def test_compiled_tpp_training_on_cuda_follows_eager():
    """``TrainConfig.compile`` on CUDA (Inductor's Triton kernels, SDPA inside the compiled graph): fp32 losses
    follow the eager run's to rounding, and a bf16 autocast compiled run learns the synthetic source."""
    eager, comp = ListSink(), ListSink()
    r_e = train(_graph_spec("tpp"), eager)
    r_c = train(_graph_spec("tpp", compile=True), comp)
    assert r_e.status == r_c.status == "completed", (r_e.reason, r_c.reason)
    assert _close(comp.series("train_loss"), eager.series("train_loss"), tol=1e-4)
    r = train(_graph_spec("tpp", steps=120, batch_size=16, lr=1e-2, warmup_steps=15, eval_interval=0,
                          log_interval=10, precision="auto", compile=True), ListSink())
    assert r.status == "completed" and r.final_val_loss < r.extra["unigram_loss"] - 0.5, r.final_val_loss
