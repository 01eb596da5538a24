"""Throughput and memory of ``ebt-scale data prepare`` on generated JSON-lines corpora of two sizes.

For each corpus size and worker count it runs the real command in a subprocess and reports wall time,
tokens/s, tokens/s per worker and the peak resident memory of the whole process tree (the command and its
tokenising workers, summed, sampled every 100 ms from /proc). The memory question it answers: does the peak
grow with the corpus (it should not: shards are written as they fill)?

    python benchmarks/data_prepare.py --sizes-mb 20,200 --workers 1,2 --out /tmp/data_prepare.json

The corpus is pseudo-text (Zipf-distributed words, documents of 50-2,000 words) in 10 MB files, generated
into --work (default: a temporary folder) and reused when it is already there. ``--tokenizer bpe`` trains a
byte-level BPE (vocabulary 4,096) on the first 2 MB and uses it as ``file:PATH``; ``byte`` needs no training.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import emit_json  # noqa: E402


def generate(folder: pathlib.Path, mb: int, seed: int = 0) -> pathlib.Path:
    """``mb`` MB of JSON lines in 10 MB files under ``folder/<mb>mb`` (kept for reuse)."""
    out = folder / f"{mb}mb"
    done = out / ".complete"
    if done.exists():
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    letters = np.array(list("etaoinshrdlcumwfgypbvkjxqz"))
    words = ["".join(rng.choice(letters, int(rng.integers(1, 10)))) for _ in range(20_000)]
    p = 1.0 / np.arange(1, len(words) + 1)
    p /= p.sum()
    written, i = 0, 0
    while written < mb * 1_000_000:
        with open(out / f"part-{i:04d}.jsonl", "w", encoding="utf-8") as f:
            size = 0
            while size < 10_000_000 and written + size < mb * 1_000_000:
                doc = " ".join(words[j] for j in rng.choice(len(words), int(rng.integers(50, 2000)), p=p))
                line = json.dumps({"text": doc}) + "\n"
                f.write(line)
                size += len(line)
        written += size
        i += 1
    done.write_text("")
    return out


def tree_rss(pid: int) -> int:
    """Resident bytes of ``pid`` and all its descendants (0 once it is gone)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            with open(f"/proc/{p}/status") as f:
                total += next(int(ln.split()[1]) for ln in f if ln.startswith("VmRSS:")) * 1024
        except (OSError, StopIteration):
            pass
    return total


def run_prepare(src: pathlib.Path, tokenizer: str, workers: int) -> dict:
    out = pathlib.Path(tempfile.mkdtemp(prefix="ebt-store-"))
    shutil.rmtree(out)
    cmd = [sys.executable, "-m", "ebt_scaling.cli.main", "data", "prepare", "--source", f"jsonl:{src}",
           "--tokenizer", tokenizer, "--out", str(out), "--workers", str(workers), "--json"]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.1)
    stdout, stderr = proc.communicate()
    wall = time.monotonic() - t0
    shutil.rmtree(out, ignore_errors=True)
    if proc.returncode != 0:
        raise SystemExit(f"data prepare failed: {stderr.strip().splitlines()[-1:]}")
    s = json.loads(stdout)
    run = s["last_run"]
    return {"workers": workers, "wall_s": round(wall, 2), "prepare_s": run["seconds"], "tokens": s["tokens"],
            "documents": s["documents"], "shards": len(s["shards"]), "tokens_per_s": run["tokens_per_s"],
            "tokens_per_s_per_worker": round(run["tokens_per_s"] / workers, 1),
            "peak_tree_rss_mb": round(peak / 2**20, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes-mb", default="20,200")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--tokenizer", default="bpe", choices=["bpe", "byte"])
    ap.add_argument("--work", default=None, help="folder for the generated corpora (kept)")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    args = ap.parse_args()
    work = pathlib.Path(args.work or tempfile.mkdtemp(prefix="ebt-data-bench-"))
    sizes = [int(s) for s in args.sizes_mb.split(",")]
    corpora = {mb: generate(work, mb) for mb in sizes}
    tok = "byte"
    if args.tokenizer == "bpe":
        from ebt_scaling.data.tokenizer import train_bpe

        path = work / "bpe-4096.json"
        if not path.exists():
            sample = []
            with open(next(iter(sorted(corpora[min(sizes)].glob("*.jsonl")))), encoding="utf-8") as f:
                while sum(map(len, sample)) < 2_000_000 and (line := f.readline()):
                    sample.append(json.loads(line)["text"])
            train_bpe(sample, 4096).save(str(path))
        tok = f"file:{path}"
    runs = [{"size_mb": mb, **run_prepare(corpora[mb], tok, int(w))}
            for mb in sizes for w in args.workers.split(",")]
    emit_json({"benchmark": "data_prepare", "tokenizer": args.tokenizer, "cpus": os.cpu_count(),
               "date": time.strftime("%Y-%m-%d"), "runs": runs}, args.out)


if __name__ == "__main__":
    main()
