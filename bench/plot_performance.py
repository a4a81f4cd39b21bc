"""Plot step time against num_tokens from the H200 benchmark JSON (bench/results/graphs-*.json).

  python bench/plot_performance.py --out docs/img/step-time.png

Per shape: the decode step of n requests at a 512-token context with breakable graphs, one unbroken
graph of the same stack, and eager; and each captured bucket's replay time (a prefill of n tokens).
"""

from __future__ import annotations

import argparse
import json
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default="bench/results")
    p.add_argument("--shapes", default="qwen3-0.6b,qwen3-8b")
    p.add_argument("--out", default="docs/img/step-time.png")
    args = p.parse_args()
    shapes = args.shapes.split(",")
    fig, axes = plt.subplots(1, len(shapes), figsize=(6 * len(shapes), 4.2))
    for ax, shape in zip(axes, shapes, strict=True):
        with open(os.path.join(args.results, f"graphs-{shape}.json")) as f:
            r = json.load(f)
        rows = r["break_cost"]
        n = [row["num_tokens"] for row in rows]
        ax.plot(
            n, [row["eager_ms"] for row in rows], "o-", color="tab:red", label="eager (graphs off), decode"
        )
        ax.plot(n, [row["breakable_graph_ms"] for row in rows], "o-", color="tab:blue",
                label="breakable graphs, decode")  # fmt: skip
        ax.plot(n, [row["unbroken_graph_ms"] for row in rows], "--", color="tab:gray",
                label="one unbroken graph, decode")  # fmt: skip
        buckets = r["graphs"]["per_bucket"]
        ax.plot([b["num_tokens"] for b in buckets], [1000 * b["replay_seconds"] for b in buckets], ".",
                color="tab:green", label="bucket replay (prefill of n tokens)")  # fmt: skip
        ax.axhline(r["decode_floor_ms"], color="black", lw=0.8, ls=":", label="weight-read floor")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("num_tokens")
        ax.set_ylabel("ms per forward (stack only)")
        ax.set_title(f"{shape} on {r['gpu']}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(args.out)


if __name__ == "__main__":
    main()
