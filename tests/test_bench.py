"""Every benchmark runs end to end at a tiny size, through the shared layer, so none can rot.

The figures themselves are not asserted (timings belong to benchmarks, not to tests); what is
asserted is that each side ran in a child with the thread settings asked for, that the tables
hold consistent statistics, and that ratios come from the medians of the same invocation.
"""
import json

import pytest

from equivalence.bench import common, flash_kernels
from equivalence.cli import build_parser, main
from gpu_cupy import runtime

FAST = ["--repeats", "2", "--warmup", "0", "--min-time", "0"]
ATTENTION = ["bench", "attention", "--shape", "1,2,16,8",
             "--mha-shape", "1,8,8,2", *FAST]
FLASH = ["bench", "flash", "--t", "64", "128", "--d", "8", "--block", "16", "--speed-t", "48",
         *FAST]


def _run(argv):
    args = build_parser(argv).parse_args(argv)
    module = {"attention": "attention", "flash": "flash"}[argv[1]]
    if getattr(args, "backend", "numpy") != "numpy":
        module = "flash_kernels"
    import importlib
    return importlib.import_module(f"equivalence.bench.{module}").run(args)


def _check_timings(rows, threads):
    for r in rows:
        assert 0 < r["min s"] <= r["median s"] <= r["max s"]
        assert r["spread"] == pytest.approx(r["max s"] / r["min s"])
        assert r["threads"] == threads and r["repeats x calls"].startswith("2 x ")


def test_bench_attention_tables_at_two_thread_counts():
    tables = _run(ATTENTION + ["--threads", "1", "2"])
    assert list(tables) == ["ratios", "timings"]
    ratios, timings = tables["ratios"], tables["timings"]
    for threads in (1, 2):
        mine = [r for r in timings if r["threads"] == threads]
        _check_timings(mine, threads)
        assert [(r["op"], r["mask"], r["side"]) for r in mine] == [
            ("sdpa fwd+bwd", "none", "numpy batched"),
            ("sdpa fwd+bwd", "none", "torch autograd, same math"),
            ("sdpa fwd+bwd", "none", "torch F.scaled_dot_product_attention"),
            ("sdpa fwd+bwd", "causal", "numpy batched"),
            ("sdpa fwd+bwd", "causal", "torch autograd, same math"),
            ("sdpa fwd+bwd", "causal", "torch F.scaled_dot_product_attention"),
            ("mha fwd+bwd", "causal", "numpy mha fused"),
            ("mha fwd+bwd", "causal", "numpy mha per-head loop"),
            ("mha fwd+bwd", "causal", "torch autograd, same math"),
            ("mha fwd+bwd", "causal", "torch nn.MultiheadAttention")]
        # each child ran with the threads asked for: OpenBLAS in the NumPy one, torch's pool in
        # the torch one
        assert f"x{threads}" in mine[0]["libraries"] and "torch" not in mine[0]["libraries"]
        assert f"torch 2" in mine[1]["libraries"] and mine[1]["libraries"].endswith(f"x{threads}")
        by_side = {(r["op"], r["mask"], r["side"]): r["median s"] for r in mine}
        for r in (r for r in ratios if r["threads"] == threads):
            cand = by_side[r["op"], r["mask"], r["candidate"]]
            peer = by_side[r["op"], r["mask"], r["peer"]]
            assert r["ratio"] == pytest.approx(cand / peer)
            if r["target"] != "-":
                limit = float(r["target"].split()[-1])
                assert r["met"] == ("yes" if r["ratio"] <= limit else "NO")
    headline = [r for r in ratios if r["comparison"] == "user's pick (headline)"]
    assert {r["peer"] for r in headline} == {"torch F.scaled_dot_product_attention",
                                             "torch nn.MultiheadAttention"}
    assert {r["target"] for r in ratios if r["op"] == "sdpa fwd+bwd"} == {"<= 1", "<= 2"}


def test_bench_flash_memory_speed_and_plot(tmp_path):
    plot = tmp_path / "flash_memory.png"
    tables = _run(FLASH + ["--max-naive-t", "100", "--plot", str(plot)])
    assert list(tables) == ["memory", "memory growth", "plots", "ratios", "timings"]
    assert tables["plots"] == [{"wrote": str(plot.resolve()),
                                "shows": "peak traced memory of naive and tiled attention vs T"}]
    m64, m128 = tables["memory"]
    assert m64["T"] == 64 and 0 < m64["tiled MiB"] < m64["naive MiB"]
    assert m64["naive/tiled"] == pytest.approx(m64["naive MiB"] / m64["tiled MiB"])
    assert m128["naive MiB"] is None and "skipped" in m128["note"]      # above --max-naive-t
    (growth,) = tables["memory growth"]
    assert growth["tiled growth"] == pytest.approx(m128["tiled MiB"] / m64["tiled MiB"])
    _check_timings(tables["timings"], 1)                                # default: one thread
    assert [r["peer"] for r in tables["ratios"]] == ["torch F.scaled_dot_product_attention",
                                                     "numpy naive"]
    assert plot.stat().st_size > 0


def test_bench_cli_writes_every_table_as_json(tmp_path):
    path = tmp_path / "bench.json"
    assert main(ATTENTION + ["--part", "sdpa", "--json", str(path)]) == 0
    data = json.loads(path.read_text())
    assert data["bench"] == "bench attention" and data["cpus"] >= 1
    assert len(data["tables"]["ratios"]) == 4 and len(data["tables"]["timings"]) == 6
    assert data["tables"]["timings"][0]["threads"] == "default"


@pytest.mark.skipif(not runtime.available("opencl")[0], reason=runtime.available("opencl")[1])
def test_bench_flash_kernels_on_opencl():
    tables = _run(["bench", "flash", "--backend", "opencl", "--shape", "1,2,1,16,8",
                   "--mask", "causal", *FAST])
    rows = tables["kernels"]
    assert [r["pass"] for r in rows] == ["forward", "backward"]
    assert all(r["kernel TFLOP/s"] > 0 and r["torch TFLOP/s"] > 0 for r in rows)
    assert rows[0]["B,H,Hkv,T,D"] == "1,2,1,16,8" and rows[0]["causal"] is True
    assert rows[0]["torch device"] == "cpu"
    assert rows[0]["kernel / torch"] == pytest.approx(rows[0]["kernel ms"] / rows[0]["torch ms"])


@pytest.mark.skipif(runtime.available("cupy")[0], reason="this machine has a CUDA device")
def test_bench_flash_kernels_say_when_no_cuda_device_is_available():
    with pytest.raises(SystemExit, match="needs a CUDA device and none is available"):
        _run(["bench", "flash", "--backend", "cupy", *FAST])


def test_flop_count():
    # 4 B H T^2 D = 4 * 2 * 3 * 25 * 8; causal halves it, the backward is 2.5x.
    assert flash_kernels.attention_flops(2, 3, 5, 8, causal=False, backward=False) == 4800.0
    assert flash_kernels.attention_flops(2, 3, 5, 8, causal=True, backward=True) == 6000.0


def test_torch_device_follows_the_kernels(monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert flash_kernels.torch_device("opencl") == "cpu"
    assert flash_kernels.torch_device("cupy") is None          # never time the CPU against a GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert flash_kernels.torch_device("cupy") == "cuda"


def test_a_failing_child_names_its_sides_and_shows_the_error():
    args = build_parser(ATTENTION).parse_args(ATTENTION)
    side = common.Side("broken side", "equivalence.bench.attention:numpy_sdpa",
                       {"shape": [1, 1, 4, 4], "dtype": "float32", "causal": False,
                        "seed": -1})
    with pytest.raises(RuntimeError, match=r"bench child for broken side \(threads 1\) failed"
                                           r"(.|\n)*ValueError"):
        common.measure([side], args, threads=1)


def test_flags_are_the_same_across_benches(capsys):
    for argv in (ATTENTION, FLASH, ["bench", "flash", "--backend", "opencl"]):
        args = build_parser(argv).parse_args(argv + ["--repeat", "3", "--threads", "1"])
        assert args.repeats == 3 and args.threads == [1]
    args = build_parser(ATTENTION).parse_args(ATTENTION)
    assert args.shape == (1, 2, 16, 8)
    argv = ["bench", "flash", "--backend", "opencl", "--shape", "1,2,1,16,8"]
    assert build_parser(argv).parse_args(argv).shape == [(1, 2, 1, 16, 8)]
    with pytest.raises(SystemExit):
        build_parser(ATTENTION).parse_args(ATTENTION + ["--shape", "1,2,16"])
    assert "expected B,H,T,D (4 positive ints, comma-separated) but got '1,2,16'" in \
        capsys.readouterr().err


def test_timing_arguments_are_checked():
    for bad, message in ((["--repeats", "0"], "--repeats: expected an int >= 1"),
                         (["--warmup", "-1"], "--warmup: expected an int >= 0"),
                         (["--min-time", "-1"], "--min-time: expected seconds >= 0"),
                         (["--threads", "0"], "--threads: expected ints >= 1")):
        argv = ATTENTION + bad
        with pytest.raises(ValueError, match=message):
            _run(argv)
