"""Training the whole model (``ref_numpy.train``): 50 steps against torch.optim.AdamW in float64,
resuming from a checkpoint bit for bit, the training-state file, the unigram baseline, the
shipped excerpt, and ``crosscheck train`` end to end on a tiny run."""
import argparse
import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from equivalence import model_cli
from ref_numpy import hf_checkpoint, model, train
from torch_bridge import model as torch_model


def _config(family, **kw):
    return model.ModelConfig(family=family, vocab_size=37, n_layer=2, n_head=4,
                             n_kv_head=2 if family == "llama" else 4, d_model=16, d_ff=24,
                             max_seq_len=12, tie_embeddings=family == "gpt2", **kw)


def _tokens(n=3000, V=37, seed=0):
    """A token stream with structure to learn: a noisy walk over the vocabulary."""
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.integers(0, 3, n)) % V


@pytest.fixture(autouse=True)
def one_torch_thread():
    """The models are tiny: torch's thread pool would only spin against the other workers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


TC = train.TrainConfig(steps=50, batch_size=3, context=11, lr=1e-2, warmup=5,
                       weight_decay=0.1, clip=0.5, seed=4)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_fifty_steps_equal_torch_adamw_in_float64(family):
    config = _config(family)
    trainer = train.Trainer.create(config, TC, _tokens(), np.float64)
    start = {n: a.copy() for n, a in trainer.params.items()}
    batches = [trainer.batches.sample(t) for t in range(TC.steps)]
    ours = [trainer.step()[0] for _ in range(TC.steps)]
    theirs = torch_model.train_losses(start, config, batches, lr=TC.lr, betas=TC.betas,
                                      eps=TC.eps, weight_decay=TC.weight_decay, clip=TC.clip,
                                      warmup=TC.warmup, total=TC.steps,
                                      min_lr_ratio=TC.min_lr_ratio)
    rel = np.abs(np.array(ours) - theirs) / np.abs(theirs)
    assert rel.max() <= 1e-8, rel.max()
    assert ours[-1] < 0.8 * ours[0]                    # it learned: the curve is not flat
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(TC.lr * TC.min_lr_ratio)


def _run(trainer, steps):
    return [trainer.step()[0] for _ in range(steps)]


@pytest.mark.parametrize("family,every", [("llama", 0), ("gpt2", 2)])
def test_resuming_from_a_checkpoint_continues_bit_for_bit(tmp_path, family, every):
    tc = dataclasses.replace(TC, steps=8, checkpoint_every=every)
    tokens = _tokens()
    whole = train.Trainer.create(_config(family), tc, tokens)                # float32
    losses = _run(whole, 8)
    first = train.Trainer.create(_config(family), tc, tokens)
    head = _run(first, 3)
    first.save(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "config.json", "model.safetensors", "optimizer.safetensors", "trainer.json"]
    resumed = train.Trainer.load(tmp_path, tokens)
    assert resumed.step_count == 3 and resumed.train == tc
    tail = _run(resumed, 5)
    assert head + tail == losses                                             # exactly
    for name, a in whole.params.items():
        assert a.dtype == np.float32 and np.array_equal(resumed.params[name], a), name
    ours, theirs = resumed.optimizer.state_arrays(), whole.optimizer.state_arrays()
    assert ours.keys() == theirs.keys() and all(np.array_equal(ours[k], theirs[k]) for k in ours)
    assert resumed.history["loss"] == whole.history["loss"]


def test_a_resumed_run_may_go_further_on_the_same_schedule(tmp_path):
    tc = dataclasses.replace(TC, steps=4, warmup=1)
    trainer = train.Trainer.create(_config("llama"), tc, _tokens())
    _run(trainer, 4)
    trainer.save(tmp_path)
    more = train.Trainer.load(tmp_path, _tokens(), steps=6)
    assert not more.done() and more.train.steps == 6
    _run(more, 2)
    assert more.done() and more.scheduler.last_step == 6
    assert more.optimizer.param_groups[0]["lr"] == pytest.approx(tc.lr * tc.min_lr_ratio)


def test_a_training_state_from_another_model_changes_nothing(tmp_path):
    tc = dataclasses.replace(TC, steps=3, warmup=1)
    small = train.Trainer.create(_config("llama"), tc, _tokens())
    _run(small, 2)
    small.save(tmp_path / "small")
    other = train.Trainer.create(dataclasses.replace(_config("llama"), d_ff=20), tc, _tokens())
    before = {n: a.copy() for n, a in other.params.items()}
    with pytest.raises(ValueError, match=r"optimizer.safetensors: optimizer/param/\d+/value"):
        train.load_state(tmp_path / "small" / train.STATE, scheduler=other.scheduler,
                         optimizer=other.optimizer)   # the scheduler's part alone would fit
    assert all(np.array_equal(before[n], a) for n, a in other.params.items())
    assert other.scheduler.last_step == 0 and other.optimizer.state[0]["step"] == 0
    hf_checkpoint.write_safetensors(tmp_path / "plain.safetensors", {"x": np.zeros(2)})
    with pytest.raises(ValueError, match=r"metadata 'format': expected 'crosscheck-train-"
                                         r"state-1' but got None"):
        train.load_state(tmp_path / "plain.safetensors", optimizer=other.optimizer)


def test_the_state_file_is_safetensors_with_the_strings_as_metadata(tmp_path):
    st = pytest.importorskip("safetensors.numpy", reason="the safetensors package is missing")
    trainer = train.Trainer.create(_config("gpt2"), dataclasses.replace(TC, steps=2, warmup=1),
                                   _tokens())
    _run(trainer, 1)
    trainer.save(tmp_path)
    tensors = st.load_file(tmp_path / train.STATE)
    assert tensors["scheduler/last_step"] == 1
    name = trainer.optimizer.param_groups[0]["param_names"][0]
    i = [n for g in trainer.optimizer.param_groups for n in g["param_names"]].index(name)
    assert np.array_equal(tensors[f"optimizer/param/{i}/exp_avg"],
                          trainer.optimizer.state[i]["exp_avg"])
    raw = (tmp_path / train.STATE).read_bytes()
    header = json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])
    assert json.loads(header["__metadata__"]["optimizer/kind"]) == "AdamW"
    assert name in json.loads(header["__metadata__"]["optimizer/group/0/param_names"])


def test_unigram_baseline_is_the_entropy_of_the_smoothed_frequencies():
    train_ids = np.array([0, 0, 1, 2])                 # counts + 1: 3, 2, 2, 1 of 8 (V = 4)
    got = train.unigram_loss(train_ids, np.array([0, 3]), 4)
    assert got == pytest.approx(-(math.log(3 / 8) + math.log(1 / 8)) / 2, rel=1e-15)


def test_train_config_rejects_unknown_keys_and_a_context_past_the_model():
    with pytest.raises(ValueError, match=r"train config: unknown key 'stepz'"):
        train.TrainConfig.from_dict({"stepz": 3})
    assert train.TrainConfig.from_dict(TC.to_dict()) == TC
    with pytest.raises(ValueError, match=r"context: 13 tokens exceed the model's max_seq_len"):
        train.Trainer.create(_config("gpt2"), dataclasses.replace(TC, context=13), _tokens())


# ----------------------------------------------------------------------------- the CLI

def test_the_shipped_excerpt_is_package_data_and_holds_out_its_last_play():
    text = model_cli.read_text(None)
    assert 800_000 < len(text.encode()) <= 1_000_000 and text.startswith("THE COMEDY OF ERRORS")
    train_text, held_out = model_cli.split_text(text)
    assert train_text + held_out == text
    assert held_out.startswith("TWELFTH NIGHT") and "ROMEO" in train_text
    assert "ROMEO" not in held_out


def _parse(argv):
    parser = argparse.ArgumentParser()
    model_cli.add_train_arguments(parser)
    return parser.parse_args(argv)


def test_train_command_end_to_end_and_resumed(tmp_path, capsys):
    text = "".join(f"TITLE {k}\n\nby William Shakespeare\n" + "to be or not to be, " * 40 + "\n"
                   for k in "ABC")
    data = tmp_path / "text.txt"
    data.write_text(text)
    out = tmp_path / "run"
    argv = ["--data", str(data), "--config", "tiny-gpt2", "--steps", "3", "--out", str(out),
            "--batch-size", "2", "--context", "16", "--vocab-size", "270", "--eval-every", "2",
            "--prompt", "to be"]
    assert model_cli.train_main(_parse(argv)) == 0
    captured = capsys.readouterr()
    # the default 200 sample tokens would run past GPT-2's 128 learned positions: cut to fit
    prompt = len(model_cli.load_tokenizer(out).encode_ordinary("to be"))
    assert captured.out.startswith(f"--- sample ({128 - prompt} tokens after the prompt 'to be'")
    assert "unigram baseline" in captured.err and "3 steps in" in captured.err
    for name in ("config.json", "model.safetensors", "optimizer.safetensors", "trainer.json",
                 "tokenizer.bpe", "tokenizer.json", "loss.png"):
        assert (out / name).is_file(), name
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = json.loads((out / "trainer.json").read_text())
    assert state["step"] == 3 and state["history"]["eval_step"] == [2, 3]
    params, config = hf_checkpoint.load_pretrained(out)
    assert config.family == "gpt2" and config.vocab_size == 270
    argv[argv.index("--steps") + 1] = "5"
    assert model_cli.train_main(_parse(argv + ["--resume", "--threads", "1"])) == 0
    assert json.loads((out / "trainer.json").read_text())["step"] == 5
    capsys.readouterr()
    generate = argparse.ArgumentParser()
    model_cli.add_generate_arguments(generate)
    args = generate.parse_args(["--model", str(out), "--prompt", "to", "--max-new-tokens", "4",
                                "--temperature", "0"])
    assert model_cli.generate_main(args) == 0
    assert capsys.readouterr().out.startswith("to")


def test_train_command_reports_bad_input_in_one_line(tmp_path, capsys):
    argv = ["--data", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "run")]
    assert model_cli.train_main(_parse(argv)) == 2
    assert "--data: cannot read" in capsys.readouterr().err
    assert model_cli.train_main(_parse(["--out", str(tmp_path / "none"), "--resume"])) == 2
    assert "neither tokenizer.bpe nor tokenizer.json" in capsys.readouterr().err


def test_bench_train_runs_end_to_end_at_a_tiny_size():
    from equivalence.bench import train as bench_train
    from equivalence.cli import build_parser
    argv = ["bench", "train", "--config", "tiny-llama", "--shape", "2,8", "--d-model", "16",
            "--layers", "2", "--vocab", "64", "--prompt-len", "4", "--new-tokens", "4",
            "--repeats", "2", "--warmup", "0", "--min-time", "0", "--threads", "1"]
    tables = bench_train.run(build_parser(argv).parse_args(argv))
    assert list(tables) == ["ratios", "checkpointing", "timings"]
    assert [r["op"] for r in tables["ratios"]] == ["train step", "generation"]
    for r in tables["ratios"]:
        assert r["ratio (numpy / torch)"] == pytest.approx(
            r["numpy tokens/s"] / r["torch tokens/s"])
        assert r["met"] == ("yes" if r["ratio (numpy / torch)"] >= bench_train.TARGET else "NO")
    rows = tables["checkpointing"]
    assert [r["checkpoint_every"] for r in rows] == [0, 1, 2] and rows[0]["memory vs none"] == 1
    assert rows[1]["peak MiB"] < rows[0]["peak MiB"]       # one block's activations at a time
    sides = [r["side"] for r in tables["timings"]]
    assert sides[:2] == ["numpy train step", "numpy KV-cache generation"]
    assert sides[-2:] == ["torch train step", "torch KV-cache generation"]
