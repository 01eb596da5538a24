"""Do the video models learn the synthetic clips better than copying the last frame? (docs/video.md, issue 31)

Encodes synthetic clips with the patch encoder (in memory, the same functions as the video store), standardises
every dimension with the training clips' mean/std, trains one family with AdamW on random batches, and prints JSON:
the copy-last-frame, mean-embedding and linear-extrapolation baselines and the model's validation SmoothL1 along
the way. Not part of the package; uses its public API only.

    python analysis/video_tiny_learning.py --family transformer_pp --steps 600
    python analysis/video_tiny_learning.py --family ebt --steps 600 --lr 3e-3 --alpha 30
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F

from ebt_scaling.config import ModelConfig
from ebt_scaling.data.video import patch_encoder, synthetic_clip
from ebt_scaling.models.video import VIDEO_RECIPE_OVERRIDES, build_video_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--family", choices=("transformer_pp", "ebt"), required=True)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--alpha", type=float, default=30.0, help="EBT step size (the paper's 30,000 is for SD-VAE)")
    ap.add_argument("--alpha-lr-mult", type=float, default=100.0)
    ap.add_argument("--clips", type=int, default=512)
    ap.add_argument("--frames", type=int, default=9, help="frames per clip (context + the next)")
    ap.add_argument("--frame-dim", type=int, default=32)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(a.seed)
    enc = patch_encoder(a.frame_dim)
    clips = torch.from_numpy(np.stack([enc(synthetic_clip(a.seed, i, a.frames)) for i in range(a.clips)]))
    n_train = a.clips * 7 // 8
    mu, sd = clips[:n_train].mean((0, 1)), clips[:n_train].std((0, 1))
    clips = (clips - mu) / sd
    tr, va = clips[:n_train], clips[n_train:]
    nxt = va[:, 2:]
    out: dict = {"args": vars(a), "baselines": {
        "copy": float(F.smooth_l1_loss(va[:, :-1], va[:, 1:])),
        "mean": float(F.smooth_l1_loss(torch.zeros_like(va[:, 1:]), va[:, 1:])),
        "extrapolate_from_frame_2": float(F.smooth_l1_loss(2 * va[:, 1:-1] - va[:, :-2], nxt))}, "val": {}}
    kw = dict(family=a.family, n_layer=a.layers, n_embd=a.width, n_head=max(1, a.width // 16), vocab_size=2,
              sequence_len=a.frames - 1)
    if a.family == "ebt":
        kw.update(VIDEO_RECIPE_OVERRIDES["ebt_vid_s1"], step_size=a.alpha, step_size_lr_multiplier=a.alpha_lr_mult)
    m = build_video_model(ModelConfig(**kw), a.frame_dim).train()
    opt = torch.optim.AdamW([dict(params=g["params"], lr=a.lr * g["lr_mult"], weight_decay=0.0)
                             for g in m.optim_groups(0.0)])
    g = torch.Generator().manual_seed(a.seed)
    t0 = time.perf_counter()
    for step in range(1, a.steps + 1):
        b = tr[torch.randint(0, len(tr), (a.batch,), generator=g)]
        loss, _ = m.loss(b[:, :-1], b[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % max(1, a.steps // 4) == 0 or step == a.steps:
            m.eval()
            out["val"][step] = float(m.loss(va[:, :-1], va[:, 1:])[1]["smooth_l1"])
            m.train()
    out["seconds"] = time.perf_counter() - t0
    out["below_copy"] = out["val"][a.steps] < out["baselines"]["copy"]
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
