"""Does a random draw inside a torch.compile'd region (CPU Inductor) give what eager draws, and what does it cost?

A Langevin step's shape, z + 3 N(0, 1) then softmax, eager against compiled with Inductor's
``fallback_random`` on (torch's own generator, as ``EBT.compile_loss`` sets it) and off (Inductor's generator):
the largest difference of the outputs from eager, whether torch's global RNG state is the same after the call,
and the median time per call (15 calls, 1 thread). Shapes: (6, 32, 32), the S2 test's (batch 4 + 2 replayed,
T 32, V 32); (12, 128, 2048), the step-cost benchmark's (batch 8 + 4 replayed, T 128, V 2048).

    python benchmarks/compile_random.py
"""

from __future__ import annotations

import time

import torch


def f(z: torch.Tensor) -> torch.Tensor:
    return (z + 3.0 * torch.randn(z.shape, dtype=z.dtype)).softmax(-1)


def median_ms(fn, z: torch.Tensor, n: int = 15) -> float:
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn(z)
        ts.append(time.perf_counter() - t0)
    return sorted(ts)[n // 2] * 1e3


def main() -> None:
    torch.set_num_threads(1)
    for shape in [(6, 32, 32), (12, 128, 2048)]:
        z = torch.zeros(shape)
        torch.manual_seed(0)
        ref = f(z)
        state = torch.get_rng_state()
        for fallback in (True, False):
            g = torch.compile(f, dynamic=False, options={"fallback_random": fallback})
            torch.manual_seed(0)
            out = g(z)
            same = bool(torch.equal(torch.get_rng_state(), state))
            print(f"shape {shape} fallback_random={fallback}: max |compiled - eager| "
                  f"{(out - ref).abs().max().item():.3g}, same RNG state after: {same}, "
                  f"{median_ms(g, z):.2f} ms per call")
        print(f"shape {shape} eager: {median_ms(f, z):.2f} ms per call")


if __name__ == "__main__":
    main()
