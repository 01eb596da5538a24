"""``train()`` in parts (issue 26 item 3).

- ``train()`` stays a readable page: at most 100 lines, and no part of the loop branches on the model family;
- the modules of ``ebt_scaling.train`` import each other without a circle (the launcher above the loop, the
  collectives below it) and never from inside a function (the package's lazy ``__getattr__`` aside);
- both families take ``loss(idx, targets, draws=None)`` and ``draw(...)``; the T++ draws nothing;
- ``TrainState.state_dict()`` -> ``load_state_dict()`` restores weights, optimizer, counters, every RNG state and
  the EBT's replay buffer (the end-to-end check, save -> resume -> continue equals the uninterrupted run bit for
  bit, is ``test_train.py::test_resume_reproduces_uninterrupted_run_exactly`` and, with micro-batches,
  ``test_accumulate.py::test_resume_with_micro_batches_is_exact``);
- micro-batches and data-parallel ranks combine a loss's info by one rule (token weights): two ranks holding rows
  of unequal real-token counts report the energies the micro-batched whole batch does.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import inspect
import pathlib
import random

import numpy as np
import pytest
import torch

from ebt_scaling.config import RECIPE_OVERRIDES, ModelConfig, TrainConfig
from ebt_scaling.models import build_model
from ebt_scaling.models.ebt import EBT
from ebt_scaling.models.transformer_pp import TransformerPP
from ebt_scaling.train import accumulate, distributed
from ebt_scaling.train.accumulate import forward_backward, step_rows
from ebt_scaling.train.schedule import Schedule
from ebt_scaling.train.state import TrainState, build_optimizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # conftest.py

TRAIN = pathlib.Path(__file__).resolve().parents[1] / "ebt_scaling" / "train"
V, T = 17, 8
SHAPE = dict(n_layer=1, n_embd=32, n_head=2, vocab_size=V, sequence_len=T)
S2 = dict(family="ebt", **dict(RECIPE_OVERRIDES["ebt_s2"], replay_buffer_size=16))
S1 = dict(family="ebt", **RECIPE_OVERRIDES["ebt_s1"])
NO_AUTOCAST = contextlib.nullcontext  # fp32 on CPU, as train() runs there


def _tree(name: str) -> ast.Module:
    return ast.parse((TRAIN / name).read_text())


def test_train_is_at_most_100_lines():
    fn = next(n for n in _tree("loop.py").body if isinstance(n, ast.FunctionDef) and n.name == "train")
    first = min([fn.lineno] + [d.lineno for d in fn.decorator_list])
    assert fn.end_lineno is not None and fn.end_lineno - first + 1 <= 100, fn.end_lineno - first + 1


@pytest.mark.parametrize("module", ["loop.py", "step.py", "accumulate.py", "evaluation.py", "state.py",
                                    "checkpoint.py", "distributed.py"])
def test_no_family_branch_in_the_loop(module):
    """The parts of the loop treat both families alike: no ``.family`` read, no family name."""
    tree = _tree(module)
    reads = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr == "family"]
    names = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in ("ebt", "transformer_pp")]
    assert not reads and not names, (module, reads, names)


def _train_imports(path: pathlib.Path) -> tuple[set[str], list[int]]:
    """The ``ebt_scaling.train`` modules ``path`` imports (anywhere in it) and the lines of such imports that sit
    inside a function."""
    subs = {p.stem for p in TRAIN.glob("*.py")}

    def targets(node: ast.AST) -> set[str]:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if node.module == "ebt_scaling.train" and a.name in subs
                     else node.module for a in node.names]
        else:
            return set()
        return {n for n in names if n.startswith("ebt_scaling.train")}

    tree = ast.parse(path.read_text())
    out = set().union(*(targets(n) for n in ast.walk(tree)))
    funcs = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)]
    inner = sorted({x.lineno for f in funcs for x in ast.walk(f) if targets(x)})
    return out, inner


def test_train_modules_have_no_import_circle_and_no_hidden_imports():
    graph: dict[str, set[str]] = {}
    for path in TRAIN.glob("*.py"):
        name = "ebt_scaling.train" if path.stem == "__init__" else f"ebt_scaling.train.{path.stem}"
        deps, inner = _train_imports(path)
        graph[name] = deps - {name}
        if path.stem != "__init__":  # the package's lazy __getattr__ keeps `import ebt_scaling.train` torch-free
            assert not inner, f"{path.name}: imports inside a function at lines {inner}"
    assert "ebt_scaling.train.loop" in graph["ebt_scaling.train.launch"]  # the launcher sits above the loop
    assert "ebt_scaling.train.loop" not in graph["ebt_scaling.train.distributed"]
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for m in sorted(graph.get(n, ())):
            assert state.get(m) != 1, "import circle: " + " -> ".join(path + [n, m])
            if m not in state:
                visit(m, path + [n])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [])


def test_both_families_share_the_loss_signature_and_the_tpp_draws_nothing():
    for cls in (TransformerPP, EBT):
        ps = inspect.signature(cls.loss).parameters
        assert list(ps) == ["self", "idx", "targets", "draws"] and ps["draws"].default is None, cls
        assert list(inspect.signature(cls.draw).parameters) == list(inspect.signature(EBT.draw).parameters)

    class Untouchable(list):
        def __getitem__(self, i):  # a model that draws nothing must not make a generator
            raise AssertionError("read a generator")

        def __iter__(self):
            raise AssertionError("read a generator")

    torch.manual_seed(0)
    m = build_model(ModelConfig(**SHAPE, family="transformer_pp")).train()
    assert m.landscapes(True) == [] and m.draw(Untouchable([None] * 4), T, [], "cpu", train=True) is None
    idx = torch.randint(0, V, (4, T), generator=torch.Generator().manual_seed(1))
    a, ia = m.loss(idx, idx)
    b, ib = m.loss(idx, idx, None)
    assert torch.equal(a, b) and torch.equal(ia["ce"], ib["ce"]) and TransformerPP.logged_metrics == {}
    assert set(EBT.logged_metrics) == {"ce", "ce_initial", "alpha"}


def _state(seed: int = 0) -> TrainState:
    torch.manual_seed(seed)
    model = build_model(ModelConfig(**SHAPE, **S2)).train()
    tcfg = TrainConfig(steps=10, batch_size=4, lr=1e-3, warmup_steps=2)
    sched = Schedule(1e-3, 2, 10, 10.0, "shared")
    return TrainState(model, build_optimizer(model, tcfg), sched, np.random.default_rng(seed), torch.device("cpu"))


def _step(state: TrainState, step: int) -> None:
    idx = torch.randint(0, V, (4, T + 1))  # from torch's global generator: the RNG state moves on
    state.schedule.apply(state.optimizer, step)
    rows = step_rows(state.model, idx[:, :-1], idx[:, 1:], seed=0, step=step)
    forward_backward(state.model, state.model.loss, rows, seed=0, micro=None, autocast=NO_AUTOCAST)
    state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    state.step, state.tokens = state.step + 1, state.tokens + 4 * T


def _draws(state: TrainState) -> tuple:
    return random.random(), float(state.data_rng.random()), torch.rand(3).tolist()


def test_state_dict_round_trip_restores_weights_counters_rngs_and_replay():
    state = _state()
    for s in range(3):
        _step(state, s)
    state.initial_loss, state.last_val, state.last_train_loss = 3.0, {"val_loss": 2.5}, 2.75
    saved = copy.deepcopy(state.state_dict())
    assert saved["trainer"]["step"] == 3 and len(saved["trainer"]["ebt_replay"]) == 12
    assert saved["trainer"]["lr_schedule"] == {"step": 3, "lr": state.schedule.lr(2)}
    expected_draws = _draws(state)
    weights = copy.deepcopy(state.model.state_dict())
    _step(state, 3)  # the run goes on: weights, moments, RNGs, counters and replay buffer all move
    state.model.replay.clear()
    state.step, state.last_val = 99, {}
    state.load_state_dict(copy.deepcopy(saved))
    assert _draws(state) == expected_draws
    for k, v in weights.items():
        assert torch.equal(state.model.state_dict()[k], v), k
    assert state.step == 3 and state.tokens == 3 * 4 * T and state.last_val == {"val_loss": 2.5}
    assert state.initial_loss == 3.0 and state.last_train_loss == 2.75
    assert len(state.model.replay) == 12
    for a, b in zip(state.model.replay, saved["trainer"]["ebt_replay"], strict=True):
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert int(state.optimizer.state_dict()["state"][0]["step"]) == 3
    # a fresh state (other seed) restored from the same dict continues as this one does (the global RNG is
    # shared, so each is restored right before its step; a copy each time: the optimizer keeps the dict's moment
    # tensors as they are, as torch's load_state_dict does, and the step updates them in place)
    other = _state(seed=5)
    state.load_state_dict(copy.deepcopy(saved))
    _step(state, 3)
    other.load_state_dict(copy.deepcopy(saved))
    _step(other, 3)
    assert len(other.model.replay) == len(state.model.replay) == 16
    for (k, a), b in zip(state.model.state_dict().items(), other.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def _padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """4 rows; rows 2 and 3 are mostly padding (-100 targets), as in document mode: rank 1 holds few tokens."""
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, V, (4, T), generator=g)
    tgt = torch.randint(0, V, (4, T), generator=g)
    tgt[2, 2:] = -100
    tgt[3, 1:] = -100
    return idx, tgt


def _s1_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(ModelConfig(**SHAPE, **S1)).train()


def _rank_main(rank: int, port: int) -> dict[str, list[float]]:
    """One of 2 gloo ranks: forward and backward on its half of ``_padded_batch``, then ``reduce_step``."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        r = distributed.Rank(dist.group.WORLD, rank, 2)
        m = _s1_model()
        idx, tgt = _padded_batch()
        sl = r.shard(4)
        rows = step_rows(m, idx[sl], tgt[sl], seed=0, step=0, row_offset=sl.start, rank=rank)
        loss, info = forward_backward(m, m.loss, rows, seed=0, micro=None, autocast=NO_AUTOCAST)
        params = [p for p in m.parameters() if p.requires_grad]
        loss, info = distributed.reduce_step(params, rows.tgt, loss, info, None, r)
        return {"loss": [float(loss)], **{k: torch.as_tensor(info[k]).double().reshape(-1).tolist()
                                          for k in accumulate.TOKEN_MEANS}}
    finally:
        dist.destroy_process_group()


def test_ranks_and_micro_batches_weight_the_info_alike():
    """Rank 0 (this process) holds 2 full rows, rank 1 (spawned) two mostly padded ones. The all-reduced loss, CEs
    and energies equal those of the whole batch in micro-batches of 2 (the same split, the same token weights), and
    differ from a row-weighted mean (the rule distributed.py used for energies before issue 26)."""
    from ebt_scaling.train.launch import free_port

    port = free_port()
    child = torch.multiprocessing.get_context("spawn").Process(target=_rank_main, args=(1, port), daemon=True)
    child.start()
    try:
        ranks = _rank_main(0, port)
    finally:
        child.join(60)
    assert child.exitcode == 0

    m = _s1_model()
    idx, tgt = _padded_batch()
    rows = step_rows(m, idx, tgt, seed=0, step=0)
    loss, info = forward_backward(m, m.loss, rows, seed=0, micro=2, autocast=NO_AUTOCAST)
    assert ranks["loss"][0] == pytest.approx(float(loss), rel=1e-5)
    for k in accumulate.TOKEN_MEANS:
        np.testing.assert_allclose(ranks[k], torch.as_tensor(info[k]).double().reshape(-1).numpy(), rtol=1e-5,
                                   err_msg=k)
    # the halves' own energies, combined by rows instead of tokens, give something else
    halves = []
    for s in (slice(0, 2), slice(2, 4)):
        h = _s1_model()
        rows = step_rows(h, idx[s], tgt[s], seed=0, step=0, row_offset=s.start)
        halves.append(forward_backward(h, h.loss, rows, seed=0, micro=None, autocast=NO_AUTOCAST)[1])
    by_rows = (float(halves[0]["energy_final"]) + float(halves[1]["energy_final"])) / 2
    assert abs(by_rows - ranks["energy_final"][0]) > 1e-3 * abs(ranks["energy_final"][0])


# S2 without its host-side decisions (fixed step count, no replay buffer), which a CUDA graph allows: every draw
# (z0, Langevin noise, alpha's multiplier) is a graph input
S2_FIXED = dict(S2, randomize_num_steps=0, randomize_num_steps_min=0, replay_buffer_size=0)


@pytest.mark.parametrize("family", ["transformer_pp", "ebt_s1", "ebt_s2_fixed"])
def test_the_graphed_steps_function_equals_the_eager_step_on_cpu(family):
    """What ``GraphedStep`` captures (``TrainStep._whole_batch``: the model's draws enter as tensors and are rebuilt
    around them) gives the eager whole-batch step's loss, info and gradients bit for bit. The capture itself needs
    CUDA (``tests/test_cuda.py``); here the function runs as the graph's eager warm-up calls run it."""
    from ebt_scaling.train.step import TrainStep

    cfg = {"transformer_pp": dict(family="transformer_pp"), "ebt_s1": S1, "ebt_s2_fixed": S2_FIXED}[family]
    tcfg = TrainConfig(steps=2, batch_size=4, precision="fp32", device="cpu")
    idx = torch.randint(0, V, (4, T + 1), generator=torch.Generator().manual_seed(3))
    out = {}
    for graphed in (False, True):
        torch.manual_seed(0)
        m = build_model(ModelConfig(**SHAPE, **cfg)).train()
        step = TrainStep(m, build_optimizer(m, tcfg), tcfg, torch.device("cpu"))
        if graphed:
            step.graphed = step._whole_batch  # GraphedStep's eager call: fn(*inputs)
        o = step(idx[:, :-1], idx[:, 1:], 0)
        if graphed and family != "transformer_pp":
            d = step._draws  # the draws went in as tensors
            assert d is not None and d.z0 is not None
            assert (d.noise is not None and d.step_scale is not None) == (family == "ebt_s2_fixed")
        out[graphed] = (o, {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    (eager, g_e), (graph, g_g) = out[False], out[True]
    assert graph.loss == eager.loss and graph.grad_norm == eager.grad_norm and graph.reason is None
    assert g_e.keys() == g_g.keys() and all(torch.equal(g_e[n], g_g[n]) for n in g_e)
    for k in ("ce", "ce_initial", "alpha"):
        if k in eager.info:
            assert torch.equal(torch.as_tensor(graph.info[k]), torch.as_tensor(eager.info[k])), k
