"""``crosscheck bench attention`` runs end to end at tiny shapes (no timing is asserted)."""
import json

from equivalence import bench_attention
from equivalence.cli import build_parser, main

TINY = ["bench", "attention", "--shape", "1", "2", "16", "8", "--mha-shape", "1", "8", "8", "2"]


def test_rows_at_tiny_shapes():
    args = build_parser(TINY).parse_args(TINY)
    rows = bench_attention.run(args)
    assert [(r["op"], r["mask"], r["reference"]) for r in rows] == [
        ("sdpa fwd+bwd", "none", "torch autograd, same math"),
        ("sdpa fwd+bwd", "none", "torch F.scaled_dot_product_attention"),
        ("sdpa fwd+bwd", "causal", "torch autograd, same math"),
        ("sdpa fwd+bwd", "causal", "torch F.scaled_dot_product_attention"),
        ("mha fwd+bwd", "causal", "numpy per-head loop"),
        ("mha fwd+bwd", "causal", "torch nn.MultiheadAttention")]
    for r in rows:
        assert r["candidate_s"] > 0 and r["reference_s"] > 0
        assert r["ratio"] == r["candidate_s"] / r["reference_s"]
        assert r["dtype"] == "float32"
        if r["reference"] == "torch autograd, same math":  # the target row
            assert r["target"] == "<= 1.5" and r["met"] == ("yes" if r["ratio"] <= 1.5 else "no")
        else:
            assert r["target"] == "-" and r["met"] == "-"
    assert rows[0]["shape"] == "(B, H, T, D) = (1, 2, 16, 8)"


def test_cli_writes_json(tmp_path):
    path = tmp_path / "bench.json"
    assert main(TINY + ["--part", "sdpa", "--threads", "1", "--json", str(path)]) == 0
    rows = json.loads(path.read_text())
    assert len(rows) == 4 and rows[0]["threads"].startswith("torch 1, OpenBLAS ")


def test_threads_option_restores_both_pools():
    import torch
    before = torch.get_num_threads()
    blas = bench_attention._openblas()
    blas_before = blas[1]() if blas is not None else None
    args = build_parser(TINY).parse_args(TINY + ["--part", "sdpa", "--threads", "1"])
    bench_attention.run(args)
    assert torch.get_num_threads() == before
    if blas is not None:
        assert blas[1]() == blas_before
