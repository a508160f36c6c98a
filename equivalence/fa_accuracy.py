"""FlashAttention's own accuracy test, on this project's flash attention: its matrix, its bar.

    from equivalence import fa_accuracy
    rows = [r for p in fa_accuracy.matrix()[:20] for r in fa_accuracy.run_point(p)]
    fa_accuracy.summary(rows)        # the worst ratio per (backend, dtype, tensor)

The matrix is that of the public flash-attention project's output-and-gradient tests,
``tests/test_flash_attn.py`` (FlashAttention-2) and ``hopper/test_flash_attn.py``
(FlashAttention-3), both ``test_flash_attn_output``: the union of their (seqlen_q, seqlen_k)
pairs (SEQLENS, from (1, 1) to (4224, 4224)) and head dims (HEAD_DIMS, 32 to 256), causal off and
on (bottom-right aligned, as there), and MHA, GQA and MQA (H = 4 query heads over Hkv = 4, 2, 1),
batch 1: 21 x 11 x 2 x 3 = 1386 points. ``crosscheck bench flash-accuracy`` runs all of it;
SAMPLE is the covering subset that tests/test_flash_accuracy.py runs in CI.

Criterion (FlashAttention-3's, per tensor t of out, dq, dk, dv):

    max|t - t_ref| <= 2 max|t_naive - t_ref| + 2 max|(t_ref + 0.3) - 0.3 - t_ref|

- t_ref is torch autograd in float64 (``torch_bridge.attention.sdpa``) on the inputs and upstream
  gradient rounded to the test dtype, so every candidate of a dtype sees exactly the values the
  reference saw.
- t_naive is the naive attention in the test dtype: ``ref_numpy.attention`` in float32 (the
  baseline of the harness's flash cases), and in float16, where that module does not run,
  ``torch_bridge.attention.attention_math`` in float16 (FlashAttention's own baseline is the
  same math in torch at the test dtype).
- The last term is FlashAttention's rounding floor, evaluated as there: t_ref rounded to the test
  dtype and the two additions done in the test dtype. It is about eps x max|t_ref|, a quarter of
  this project's floor (``equivalence.compare.FLOOR_EPS`` = 4 eps), so this bar is the stricter.
- ratio = error / bar; a row passes at ratio <= 1. A tensor whose exact value is identically
  zero (dq and dk when every query sees one key, Tk = 1: ``exactly_zero``) has a bar of 0 and
  must come out exactly 0, in every dtype.
- float64 has no FlashAttention bar: every float64 row must be within FLOAT64_BAR (1e-10) of the
  reference, the bar of tests/test_equivalence.py (ratio = error / 1e-10).

Candidates: the NumPy flash attention (``ref_numpy.flash_attention``, tiles NUMPY_BLOCK; float16
inputs with float32 accumulators, FlashAttention's practice) in float64, float32 and float16, and
the kernels (``gpu_cupy.flash_attention``, the launcher's default tiles) in float64 and float32
on every backend that this machine has (opencl, cupy).

:func:`check_case_fa` applies the same criterion to a registered flash case, on exactly the
inputs, upstream gradients, reference and baseline that the harness uses for it
(``equivalence.harness.check_case``): FlashAttention's bar as an additional, stricter float32
check of the flash cases, next to the tolerance policy that every case keeps.
"""
from __future__ import annotations

import fnmatch
import zlib
from typing import NamedTuple

import numpy as np

from equivalence.compare import Row

#            FlashAttention-3 pairs; FlashAttention-2 adds (2048, 2048)
SEQLENS = ((1, 1), (64, 128), (128, 192), (256, 256), (239, 1), (799, 3), (113, 203), (113, 128),
           (128, 217), (113, 211), (108, 256), (256, 512), (384, 256), (640, 128), (512, 256),
           (1024, 1024), (1023, 1024), (1024, 1023), (2048, 2048), (4096, 4096), (4224, 4224))
#            FlashAttention-2's head dims; FlashAttention-3 tests 64, 96, 128, 192, 256 of them
HEAD_DIMS = (32, 40, 59, 64, 96, 111, 128, 160, 192, 224, 256)
HEADS = {"mha": (4, 4), "gqa": (4, 2), "mqa": (4, 1)}          # (H, Hkv)
TENSORS = ("out", "dq", "dk", "dv")
FA_TENSORS = ("out", "grad q", "grad k", "grad v")             # the same, as the harness names them
DTYPES = ("float64", "float32", "float16")
KERNEL_DTYPES = ("float64", "float32")                          # what the kernels run
FLOAT64_BAR = 1e-10
NUMPY_BLOCK = 32


class Point(NamedTuple):
    """One point of the matrix."""
    Tq: int
    Tk: int
    D: int
    causal: bool
    mha: str                                                    # "mha", "gqa" or "mqa"

    @property
    def name(self) -> str:
        """e.g. ``mqa/Tq1023_Tk1024_D59_full``."""
        return (f"{self.mha}/Tq{self.Tq}_Tk{self.Tk}_D{self.D}_"
                f"{'causal' if self.causal else 'full'}")

    @property
    def heads(self) -> tuple[int, int]:
        return HEADS[self.mha]


def matrix() -> list[Point]:
    """All 1386 points: every pair, head dim, mask and head layout."""
    return [Point(Tq, Tk, D, causal, mha) for Tq, Tk in SEQLENS for D in HEAD_DIMS
            for causal in (False, True) for mha in HEADS]


class SamplePoint(NamedTuple):
    """A point of SAMPLE with the dtypes it runs in: ``dtypes`` for NumPy, ``kernel_dtypes``
    for the kernels."""
    point: Point
    dtypes: tuple[str, ...] = DTYPES
    kernel_dtypes: tuple[str, ...] = ("float32",)

    @property
    def name(self) -> str:
        return self.point.name


def _sample() -> list[SamplePoint]:
    """A covering subset for CI: the pairs (1, 1), (239, 1), (799, 3), (113, 203) and
    (1023, 1024); every head dim at (113, 203), cycling through masks and head layouts; every
    mask x layout at (239, 1) and (799, 3); and the long pair in float32, MQA (G * Tq = 4092,
    where a kernel's plain running sum of dK and dV fails the bar), and (799, 3) causal MHA at
    D = 160, where a Drow of dO . O failed dk. NumPy runs every dtype (but
    float32 only at the long pair), the kernels float32, and float64 at two points (D = 256 and
    160), since every head dim is a program to compile."""
    layouts = [(c, m) for c in (False, True) for m in HEADS]             # 6 combinations
    both = ("float64", "float32")
    points = [SamplePoint(Point(113, 203, D, *layouts[i % 6]), DTYPES,
                          both if D == 256 else ("float32",))
              for i, D in enumerate(HEAD_DIMS)]
    points += [SamplePoint(Point(799, 3, D, *layouts[i]), DTYPES,
                           both if D == 160 else ("float32",))
               for i, D in enumerate((32, 96, 160, 224, 40, 256))]
    points += [SamplePoint(Point(239, 1, D, *layouts[i]))
               for i, D in enumerate((256, 64, 111, 59, 192, 32))]
    points += [SamplePoint(Point(1, 1, 64, False, "mha")),
               SamplePoint(Point(1, 1, 256, True, "mqa"))]
    points += [SamplePoint(Point(1023, 1024, 59, False, "mqa"), ("float32",))]
    # a row that sees 3 keys: a Drow taken as dO . O put O's rounding into dk here (1.025 x bar)
    points += [SamplePoint(Point(799, 3, 160, True, "mha"), ("float32",))]
    return points


SAMPLE = _sample()


def full_plan() -> list[SamplePoint]:
    """The whole matrix as SamplePoints: every point in every dtype, the kernels in
    KERNEL_DTYPES."""
    return [SamplePoint(p, DTYPES, KERNEL_DTYPES) for p in matrix()]


def select(points: list, pattern: str | None) -> list:
    """The points (Points or SamplePoints) whose name matches ``pattern`` (a glob, or else a
    substring); all if None."""
    if not pattern:
        return list(points)
    glob = any(ch in pattern for ch in "*?[")
    return [p for p in points
            if (fnmatch.fnmatchcase(p.name, pattern) if glob else pattern in p.name)]


# ----------------------------------------------------------------------------- the criterion

def fa_floor(ref, dtype) -> float:
    """FlashAttention's rounding term 2 max|(r + 0.3) - 0.3 - r|, r = ``ref`` rounded to
    ``dtype`` and the arithmetic done in ``dtype``.

    >>> fa_floor(np.array([0.0, 1.0]), np.float32)   # (1 + 0.3) - 0.3 is 1 - 2**-24: 2 x 2**-24
    1.1920928955078125e-07
    """
    r = np.asarray(ref).astype(dtype)
    t = np.asarray(0.3, dtype=dtype)
    return 2.0 * float(np.abs((r + t) - t - r).max()) if r.size else 0.0


def fa_bar(naive_err: float, ref, dtype) -> float:
    """FlashAttention-3's bar: 2 x the naive attention's max error + ``fa_floor``."""
    return 2.0 * naive_err + fa_floor(ref, dtype)


def max_err(got, ref) -> float:
    """max |got - ref| in float64 (0 for empty arrays)."""
    got, ref = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if got.shape != ref.shape:
        raise ValueError(f"got: expected shape {ref.shape} but got {got.shape}")
    return float(np.abs(got - ref).max()) if ref.size else 0.0


def judge(got, ref, dtype, naive_err: float | None, zero: bool | None = None) -> dict:
    """err, bar, ratio and the verdict of one tensor: the exact-zero rule, the float64 bar, or
    FlashAttention-3's bar (``naive_err`` is the naive attention's error in ``dtype``).

    ``zero``: the exact tensor is identically zero (default: the reference is all zeros); then
    err is max|got| and only exact zeros pass, in every dtype."""
    got = np.asarray(got)
    if zero is None:
        zero = not np.any(np.asarray(ref) != 0)
    err = max_err(got, np.zeros_like(got) if zero else ref)
    finite = bool(np.isfinite(got).all())
    if zero:
        bar = 0.0
    elif np.dtype(dtype) == np.float64:
        bar = FLOAT64_BAR
    else:
        bar = fa_bar(naive_err, ref, dtype)
    ratio = err / bar if bar > 0 else (0.0 if err == 0 else float("inf"))
    return {"err": err, "bar": bar, "ratio": ratio if finite else float("inf"), "zero": zero,
            "passed": finite and ratio <= 1.0}


# ----------------------------------------------------------------------------- one point

def exactly_zero(point: Point, tensor: str) -> bool:
    """Whether the exact ``tensor`` is identically zero at ``point``: dq and dk when every query
    sees one key (Tk = 1; causal or not, as the mask is bottom-right aligned), since then P = 1
    and dS = P (dP - rowsum(P dP)) = 0. The float64 torch reference may differ from 0 by
    rounding there (~1e-15), so this is decided from the point, not from the reference."""
    return point.Tk == 1 and tensor in ("dq", "dk")


def _inputs(point: Point, seed: int) -> dict[str, np.ndarray]:
    """q, k, v, dout in float64, drawn from ``seed`` and the point alone."""
    H, Hkv = point.heads
    rng = np.random.default_rng([seed, zlib.crc32(point.name.encode())])
    return {"q": rng.standard_normal((1, H, point.Tq, point.D)),
            "k": rng.standard_normal((1, Hkv, point.Tk, point.D)),
            "v": rng.standard_normal((1, Hkv, point.Tk, point.D)),
            "dout": rng.standard_normal((1, H, point.Tq, point.D))}


def _reference(x: dict, causal: bool) -> dict[str, np.ndarray]:
    """torch autograd in float64: out, dq, dk, dv."""
    from torch_bridge import attention as oracle
    from torch_bridge.autograd import run_autograd
    x64 = {n: a.astype(np.float64) for n, a in x.items()}
    outs, grads = run_autograd(
        lambda t: {"out": oracle.sdpa(t["q"], t["k"], t["v"], causal=causal)},
        {n: x64[n] for n in ("q", "k", "v")}, ("q", "k", "v"), {"out": x64["dout"]})
    return {"out": outs["out"], "dq": grads["q"], "dk": grads["k"], "dv": grads["v"]}


def _naive(x: dict, causal: bool, dtype) -> dict[str, np.ndarray]:
    """The naive attention in ``dtype``: ref_numpy.attention in float32, torch in float16."""
    if np.dtype(dtype) == np.float16:
        from torch_bridge import attention as oracle
        from torch_bridge.autograd import run_autograd
        outs, grads = run_autograd(
            lambda t: {"out": oracle.attention_math(t["q"], t["k"], t["v"], causal=causal)},
            {n: x[n] for n in ("q", "k", "v")}, ("q", "k", "v"), {"out": x["dout"]})
        return {"out": outs["out"], "dq": grads["q"], "dk": grads["k"], "dv": grads["v"]}
    from ref_numpy import attention
    out, cache = attention.attention_forward(x["q"], x["k"], x["v"], causal=causal)
    dq, dk, dv, _ = attention.attention_backward(x["dout"], cache)
    return {"out": out, "dq": dq, "dk": dk, "dv": dv}


def _numpy_flash(x: dict, causal: bool) -> dict[str, np.ndarray]:
    from ref_numpy import flash_attention
    acc = np.float32 if x["q"].dtype == np.float16 else None
    out, cache = flash_attention.flash_attention_forward(
        x["q"], x["k"], x["v"], causal=causal, block_q=NUMPY_BLOCK, block_k=NUMPY_BLOCK,
        accum_dtype=acc)
    dq, dk, dv = flash_attention.flash_attention_backward(x["dout"], cache)
    return {"out": out, "dq": dq, "dk": dk, "dv": dv}


def _kernels(x: dict, causal: bool, backend: str) -> dict[str, np.ndarray]:
    from gpu_cupy import flash_attention as gpu_flash
    from gpu_cupy import runtime
    out, lse = gpu_flash.flash_attention_forward(x["q"], x["k"], x["v"], causal=causal,
                                                 backend=backend)
    grads = gpu_flash.flash_attention_backward(x["q"], x["k"], x["v"], out, lse, x["dout"],
                                               causal=causal, backend=backend)
    return {n: runtime.to_host(a) for n, a in zip(TENSORS, (out, *grads))}


def kernel_backends() -> list[str]:
    """The kernel backends this machine can run (opencl, cupy)."""
    from gpu_cupy import runtime
    return [b for b in runtime.BACKENDS if runtime.available(b, np.float64)[0]]


def run_point(point: Point, backends=None, dtypes=DTYPES, kernel_dtypes=KERNEL_DTYPES,
              seed: int = 0) -> list[dict]:
    """One row per (backend, dtype, tensor) of ``point``: err, bar, ratio, zero, passed.

    ``backends``: among "numpy" and the kernel backends (default: numpy and every kernel
    backend this machine has). ``dtypes``: among DTYPES; the kernels run those of ``dtypes``
    that are also in ``kernel_dtypes`` (float64 and float32 at most). A candidate that raises
    gives a failing row per tensor with the exception text."""
    backends = ["numpy", *kernel_backends()] if backends is None else list(backends)
    raw = _inputs(point, seed)
    refs: dict[str, dict] = {}
    rows = []
    for dtype in dtypes:
        rounding = np.float16 if dtype == "float16" else np.float32
        x = {n: a.astype(rounding).astype(dtype) for n, a in raw.items()}
        key = np.dtype(rounding).name
        if key not in refs:
            refs[key] = _reference(x, point.causal)
        ref = refs[key]
        naive = None if dtype == "float64" else _naive(x, point.causal, dtype)
        for backend in backends:
            if backend != "numpy" and (dtype not in KERNEL_DTYPES or dtype not in kernel_dtypes):
                continue
            base = {"point": point.name, **point._asdict(), "backend": backend, "dtype": dtype}
            try:
                got = (_numpy_flash(x, point.causal) if backend == "numpy"
                       else _kernels(x, point.causal, backend))
            except Exception as exc:  # every tensor of the candidate fails, with the reason
                rows += [{**base, "tensor": t, "err": float("inf"), "bar": None,
                          "ratio": float("inf"), "zero": False, "passed": False,
                          "note": f"{type(exc).__name__}: {exc}"} for t in TENSORS]
                continue
            for t in TENSORS:
                naive_err = None if naive is None else max_err(naive[t], ref[t])
                rows.append({**base, "tensor": t, "naive err": naive_err,
                             **judge(got[t], ref[t], dtype, naive_err,
                                     zero=exactly_zero(point, t))})
    return rows


def summary(rows: list[dict]) -> list[dict]:
    """Per (backend, dtype, tensor): how many rows, how many failed, the worst ratio among the
    rows with a nonzero reference and where, and whether every zero-reference row came out
    exactly zero."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["backend"], r["dtype"], r["tensor"]), []).append(r)
    out = []
    for (backend, dtype, tensor), rs in groups.items():
        nonzero = [r for r in rs if not r["zero"]]
        zeros = [r for r in rs if r["zero"]]
        worst = max(nonzero, key=lambda r: r["ratio"], default=None)
        out.append({"backend": backend, "dtype": dtype, "tensor": tensor, "rows": len(rs),
                    "failed": sum(not r["passed"] for r in rs),
                    "worst ratio": None if worst is None else worst["ratio"],
                    "worst err": None if worst is None else worst["err"],
                    "at": "-" if worst is None else worst["point"],
                    "zero rows exact": (f"{sum(r['passed'] for r in zeros)}/{len(zeros)}"
                                        if zeros else "-")})
    order = {b: i for i, b in enumerate(("numpy", "opencl", "cupy"))}
    return sorted(out, key=lambda s: (order.get(s["backend"], 9), DTYPES.index(s["dtype"]),
                                      TENSORS.index(s["tensor"])))


# ----------------------------------------------------------------------------- harness cases

def check_case_fa(case, seed: int = 0, backends=None) -> list[Row]:
    """FlashAttention-3's criterion on a registered flash case in float32, one Row per
    candidate and tensor that FlashAttention's tests judge (out and the gradients), on the
    harness's own inputs, upstream gradients, torch float64 reference and float32 baseline (``case.baseline32``), so that it judges exactly what
    ``check_case(case, "float32")`` judges, with the stricter bar. ``backends``: among numpy and
    the case's kernel backends (default: every one this machine can run)."""
    from equivalence import backends as backend_mod
    from equivalence import harness
    dtype = "float32"
    rng = harness.case_rng(case, seed + 1)
    inputs = harness.make_inputs(case, seed, dtype)
    inputs64 = {n: (a.astype(np.float64) if np.issubdtype(a.dtype, np.floating) else a)
                for n, a in inputs.items()}
    np_outs, _ = case.forward(inputs64)
    douts = harness._make_douts(case, np_outs, rng, dtype)
    douts64 = {n: a.astype(np.float64) for n, a in douts.items()}
    ref = harness._tensors(*harness._run_torch(case, inputs64, douts64), case)
    naive = harness._tensors(*case.baseline32(inputs, douts), case)
    wanted = ["numpy", *case.backends] if backends is None else list(backends)
    candidates = [b for b in wanted
                  if b == "numpy" or (b in case.backends and backend_mod.available(b)[0])]
    rows = []
    for backend in candidates:
        if backend == "numpy":
            got = harness._tensors(*harness._run_numpy(case, inputs, douts), case)
        else:
            got = harness._tensors(*case.backends[backend](inputs, douts), case)
        for name, r in ref.items():
            if name not in FA_TENSORS:  # lse: FlashAttention's tests judge out and gradients
                continue
            finite = np.isfinite(r)
            g = np.asarray(got[name])
            if not np.array_equal(np.isfinite(g), finite) or not np.array_equal(g[~finite],
                                                                                 r[~finite]):
                rows.append(Row(case=case.name, backend=backend, dtype=dtype, tensor=name,
                                shape=tuple(r.shape), max_abs=float("inf"),
                                max_rel=float("inf"), tolerance="FA3", fraction=float("inf"),
                                passed=False, note="non-finite values differ from the reference"))
                continue
            v = judge(g[finite], r[finite], dtype, max_err(naive[name][finite], r[finite]))
            scale = float(np.abs(r[finite]).max()) if finite.any() else 0.0
            rows.append(Row(case=case.name, backend=backend, dtype=dtype, tensor=name,
                            shape=tuple(r.shape), max_abs=v["err"],
                            max_rel=v["err"] / scale if scale > 0 else 0.0,
                            tolerance=("exactly 0" if v["zero"] else
                                       f"FA3 {v['bar']:.2e}"),
                            fraction=v["ratio"], passed=v["passed"]))
    return rows
