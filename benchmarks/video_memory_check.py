"""The memory plan's video estimate (``ebt_scaling/sweeps/memory.py``: the text coefficients with the vocabulary read
as frame_dim) against exact CPU measurements of video models, by ``memory_calibration.py``'s method: one warm-up
training step, then the allocation peak of one more (forward, backward, clip, fused AdamW) under
``torch.profiler(profile_memory=True)``, minus the gradients (4P, counted apart), against ``activation_bytes``.

    python benchmarks/video_memory_check.py        # ~10 s on one core; prints one JSON list (estimate / measured)
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import emit_json  # noqa: E402

# (n_layer, n_embd, n_head, context frames, frame_dim, batch)
SHAPES = [(2, 64, 4, 16, 64, 8), (2, 64, 4, 16, 256, 8), (3, 96, 6, 8, 128, 16), (2, 128, 4, 16, 32, 8),
          (4, 64, 4, 32, 512, 4)]


def step(model, x, params, opt) -> None:
    """One training step as the trainer runs it (fp32)."""
    import torch

    loss, _ = model.loss(x[:, :-1], x[:, 1:])
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)


def main() -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from benchmarks.memory_calibration import _alloc_peak
    from ebt_scaling.config import VIDEO_RECIPE_OVERRIDES, ModelConfig
    from ebt_scaling.models import build_model
    from ebt_scaling.models.video_flops import video_param_counts
    from ebt_scaling.sweeps.memory import activation_bytes

    torch.set_num_threads(1)
    rows = []
    for family in ("transformer_pp", "ebt"):
        for n_layer, d, h, t, e, b in SHAPES:
            kw = dict(family=family, n_layer=n_layer, n_embd=d, n_head=h, vocab_size=2, sequence_len=t, frame_dim=e)
            if family == "ebt":  # the value only: a stable descent at random init
                kw.update(VIDEO_RECIPE_OVERRIDES["ebt_vid_s1"], step_size=1.0)
            cfg = ModelConfig(**kw)
            torch.manual_seed(0)
            model = build_model(cfg).train()
            x = torch.randn(b, t + 1, e)
            opt = torch.optim.AdamW(model.optim_groups(0.01), lr=1e-5, fused=True)
            params = [p for g in opt.param_groups for p in g["params"]]

            step(model, x, params, opt)  # AdamW state exists, as in a running job
            with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
                step(model, x, params, opt)
            measured = _alloc_peak(prof) - 4 * video_param_counts(cfg, e)["total"]
            estimate = activation_bytes(cfg, b, "fp32")[1]
            rows.append({"family": family, "shape": {"n_layer": n_layer, "n_embd": d, "n_head": h, "frames": t,
                                                     "frame_dim": e, "batch": b},
                         "measured_bytes": measured, "estimate_bytes": round(estimate),
                         "estimate_over_measured": round(estimate / measured, 3)})
    return {"rows": rows, "ratio_range": {f: [min(r["estimate_over_measured"] for r in rows if r["family"] == f),
                                              max(r["estimate_over_measured"] for r in rows if r["family"] == f)]
                                          for f in ("transformer_pp", "ebt")}}


if __name__ == "__main__":
    emit_json(main(), None)
