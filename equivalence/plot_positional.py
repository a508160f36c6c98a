"""``crosscheck plot positional --out DIR``: pictures of the position encodings, from ref_numpy.

Three PNGs (matplotlib, Agg backend):

* ``sinusoid.png``: the sinusoidal table (Vaswani et al. 2017) as a heatmap, positions down,
  features across: fast sin/cos stripes at the left, slow ones at the right.
* ``rope_frequencies.png``: RoPE's inverse frequencies θ_i on a log scale against the pair
  index, under every scaling variant (``ref_numpy.rope_scaling``) for one head size, trained
  length and factor, with the trained-length wavelength band marked.
* ``rope_relative.png``: left, q·k of a fixed query and key rotated to positions m and n,
  against m − n, for several absolute offsets n: the curves fall on one another, since the
  score depends on m − n only; right, the score of q = k = (1, …, 1) against |m − n| (the
  long-term decay of Su et al. 2021, §3.4.3), with its envelope.

``run`` returns one row per file: {"wrote": path, "shows": what}.
"""
from __future__ import annotations

import argparse
import math
import os

import numpy as np

from ref_numpy import positional, rope, rope_scaling


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", metavar="DIR", default="positional_plots",
                        help="folder for the PNGs (created if missing; default positional_plots)")
    parser.add_argument("--d", type=int, default=128,
                        help="model width of the sinusoidal table and RoPE head dim (default 128)")
    parser.add_argument("--positions", type=int, default=256,
                        help="positions in the table and the largest |m - n| (default 256)")
    parser.add_argument("--base", type=float, default=10000.0,
                        help="base (rope_theta) of both encodings (default 10000)")
    parser.add_argument("--factor", type=float, default=8.0,
                        help="context-extension factor of the scaling variants (default 8)")
    parser.add_argument("--original-max", type=int, default=4096,
                        help="trained length of the scaling variants (default 4096)")
    parser.add_argument("--seed", type=int, default=0, help="draws q and k (default 0)")


def _save(path: str, draw, what: str, *, ncols: int = 1, size=(7.0, 4.5)) -> dict:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=size, squeeze=False)
    try:
        draw(fig, *axes[0])
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return {"wrote": os.path.abspath(path), "shows": what}


def _sinusoid(args, path: str) -> dict:
    table = positional.sinusoidal_table(args.positions, args.d, base=args.base)   # (T, d)

    def draw(fig, ax):
        im = ax.imshow(table, aspect="auto", cmap="RdBu_r", vmin=-1, vmax=1,
                       interpolation="nearest")
        fig.colorbar(im, ax=ax, label="PE(pos, j)")
        ax.set_xlabel("feature j (even: sin, odd: cos)")
        ax.set_ylabel("position")
        ax.set_title(f"sinusoidal table, d = {args.d}, base = {args.base:g}")
    return _save(path, draw, f"sinusoidal table ({args.positions} positions x {args.d} "
                             f"features) as a heatmap")


def scaling_configs(factor: float, original_max: int) -> dict[str, tuple[dict | None, dict]]:
    """label -> (rope_scaling dict, extra keyword arguments of rope_frequencies)."""
    L = original_max
    return {
        "default": (None, {}),
        f"linear (factor {factor:g})": ({"rope_type": "linear", "factor": factor}, {}),
        f"ntk (factor {factor:g})": ({"rope_type": "ntk", "factor": factor}, {}),
        f"dynamic (factor {factor:g}, at {4 * L} tokens)": (
            {"rope_type": "dynamic", "factor": factor},
            {"max_position_embeddings": L, "seq_len": 4 * L}),
        f"yarn (factor {factor:g})": ({"rope_type": "yarn", "factor": factor,
                                       "original_max_position_embeddings": L}, {}),
        f"llama3 (factor {factor:g}, 1, 4)": ({"rope_type": "llama3", "factor": factor,
                                              "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                              "original_max_position_embeddings": L}, {}),
    }


def _frequencies(args, path: str) -> dict:
    curves = []
    for label, (cfg, kw) in scaling_configs(args.factor, args.original_max).items():
        inv, factor = rope_scaling.rope_frequencies(cfg, args.d, base=args.base, **kw)
        if factor != 1.0:
            label += f", attention factor {factor:.3f}"
        curves.append((label, inv))

    def draw(fig, ax):
        styles = ["-", "--", "-.", ":", "-", "--"]
        for (label, inv), style in zip(curves, styles):
            ax.plot(np.arange(inv.size), inv, style, label=label, linewidth=1.6)
        ax.set_yscale("log")
        # pairs whose wavelength 2π/θ exceeds the trained length never turned fully in training
        ax.axhline(2 * math.pi / args.original_max, color="grey", linewidth=0.8)
        ax.text(0, 2 * math.pi / args.original_max * 1.3,
                f"θ = 2π / {args.original_max} (one turn over the trained length)",
                fontsize=7, color="grey")
        ax.set_xlabel("pair index i")
        ax.set_ylabel("inverse frequency θ_i (rad / position)")
        ax.set_title(f"RoPE frequencies, R = {args.d}, base = {args.base:g}, "
                     f"trained length {args.original_max}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    return _save(path, draw, "RoPE inverse frequencies (log scale) against the pair index under "
                             "default, linear, ntk, dynamic, yarn and llama3 scaling",
                 size=(8.0, 5.0))


def _scores(r: rope.RoPE, q: np.ndarray, k: np.ndarray, m: np.ndarray, n: np.ndarray):
    """q rotated to each position m and k to each position n, dotted: (len(m),)."""
    cos_q, sin_q = r.tables(m)
    cos_k, sin_k = r.tables(n)
    qm, _ = rope.rope_forward(np.broadcast_to(q, (1, 1, m.size, q.size)).copy(), cos_q, sin_q)
    kn, _ = rope.rope_forward(np.broadcast_to(k, (1, 1, n.size, k.size)).copy(), cos_k, sin_k)
    return np.sum(qm * kn, axis=-1)[0, 0]


def _relative(args, path: str) -> dict:
    r = rope.RoPE(args.d, base=args.base)
    rng = np.random.default_rng(args.seed)
    q, k = rng.standard_normal(args.d), rng.standard_normal(args.d)
    span = args.positions
    delta = np.arange(-span, span + 1)
    offsets = [span, 10 * span, 100 * span]
    random_curves = [(n0, _scores(r, q, k, n0 + delta, np.full(delta.size, n0)))
                     for n0 in offsets]
    far = np.arange(0, 16 * span + 1)         # the envelope needs distances beyond those shown
    ones = np.ones(args.d)
    far_scores = np.abs(_scores(r, ones, ones, far, np.zeros(far.size, dtype=int)))
    envelope = np.maximum.accumulate(far_scores[::-1])[::-1]   # max over |m − n| >= d
    dist = far[: 8 * span + 1]

    def draw(fig, left, right):
        for (n0, s), style in zip(random_curves, ["-", "--", ":"]):
            left.plot(delta, s, style, label=f"n = {n0}", linewidth=1.4)
        left.set_xlabel("m − n")
        left.set_ylabel("RoPE(q, m) · RoPE(k, n)")
        left.set_title("random q, k: the score depends on m − n only")
        left.legend(fontsize=8)
        right.plot(dist, far_scores[: dist.size], linewidth=0.6, alpha=0.6, label="|score|")
        right.plot(dist, envelope[: dist.size], linewidth=1.8, label="max over larger distances")
        right.legend(fontsize=8)
        right.set_xscale("symlog", linthresh=1)
        right.set_yscale("log")
        right.set_xlabel("|m − n|")
        right.set_ylabel("|score| of q = k = 1")
        right.set_title("long-term decay (Su et al. §3.4.3)")
        for ax in (left, right):
            ax.grid(True, which="both", alpha=0.3)
    return _save(path, draw, "q·k against m − n for three absolute offsets (identical curves), "
                             "and the decay of the all-ones score with distance",
                 ncols=2, size=(11.0, 4.5))


def run(args) -> list[dict]:
    """Write the three PNGs into ``args.out``; one row per file."""
    for name in ("d", "positions", "original_max"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')}: expected a positive int but got "
                             f"{getattr(args, name)}")
    if args.d % 2:
        raise ValueError(f"--d: expected an even int (sin/cos and RoPE pairs) but got {args.d}")
    os.makedirs(args.out, exist_ok=True)
    return [_sinusoid(args, os.path.join(args.out, "sinusoid.png")),
            _frequencies(args, os.path.join(args.out, "rope_frequencies.png")),
            _relative(args, os.path.join(args.out, "rope_relative.png"))]
