"""Generation: KV-cache decoding against the full forward, left padding, sampling rules
(greedy, temperature, top-k, top-p, repetition penalty), seeds, stopping, and the CLI."""
import argparse

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from equivalence import model_cli
from ref_numpy import bpe_io, bpe_train, generate, hf_checkpoint, model
from torch_bridge import model as torch_model

GREEDY = generate.Sampling(temperature=0)


def _config(family, **kw):
    return model.ModelConfig(family=family, vocab_size=41, n_layer=2, n_head=4,
                             n_kv_head=2 if family == "llama" else 4, d_model=16, d_ff=24,
                             max_seq_len=96, tie_embeddings=family == "gpt2", **kw)


def _params(config, dtype=np.float64):
    # large weights: sharp distributions, so that greedy paths are far from ties
    return {n: (a * 25 if a.ndim == 2 else a).astype(dtype)
            for n, a in model.init_params(config, 3, np.float64).items()}


PROMPTS = [[1, 2, 3, 4, 5, 6, 7], [8, 9], [10, 11, 12, 13]]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_kv_cache_generation_equals_the_full_forward_at_every_step(family):
    config = _config(family)
    params = _params(config)
    cached = generate.generate(params, config, PROMPTS, 64, sampling=GREEDY)
    full = generate.generate(params, config, PROMPTS, 64, sampling=GREEDY, use_cache=False)
    assert cached == full and all(len(r) == 64 for r in cached)
    assert len({tuple(r) for r in cached}) == 3 and len(set(cached[0])) > 5


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_decoding_logits_equal_the_forward_logits(family):
    config = _config(family, norm_position="post") if family == "gpt2" else _config(family)
    params = _params(config)
    ids = np.random.default_rng(0).integers(0, 41, (2, 20))
    full, _ = model.model_forward(params, config, ids)
    decoder = generate.Decoder(params, config, 2, 20)
    chunks = [decoder.step(ids[:, :7])] + [decoder.step(ids[:, t:t + 1]) for t in range(7, 20)]
    assert np.abs(np.concatenate(chunks, axis=1) - full.logits).max() <= 1e-10


def test_decoder_scans_parameters_once_and_a_step_with_nan_logits_changes_nothing():
    config = _config("llama")
    params = _params(config, np.float32)
    bad = dict(params, **{"model.norm.weight": params["model.norm.weight"].copy()})
    bad["model.norm.weight"][3] = np.nan
    with pytest.raises(ValueError, match=r"model\.norm\.weight: contains NaN"):
        generate.Decoder(bad, config, batch=1, max_len=16)
    ids = np.array([[1, 2, 3]])
    want = generate.Decoder(params, config, 1, 16)
    want.step(ids)
    want_logits = want.step(np.array([[4]]))
    dec = generate.Decoder(params, config, 1, 16)
    dec.step(ids)
    w = params["model.layers.1.mlp.down_proj.weight"]
    saved = w[0, 0]
    w[0, 0] = np.nan                           # the ops no longer scan it: the logits do
    with pytest.raises(ValueError, match="logits: contain NaN.*the decoder is unchanged"):
        dec.step(np.array([[4]]))
    w[0, 0] = saved
    assert dec.length == 3 and all(kv.length == 3 for kv in dec.caches)
    assert not dec.real[:, 3:].any()
    np.testing.assert_array_equal(dec.step(np.array([[4]])), want_logits)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_left_padded_batch_generates_what_each_prompt_generates_alone(family):
    config = _config(family)
    params = _params(config)
    batched = generate.generate(params, config, PROMPTS, 20, sampling=GREEDY)
    assert batched == [generate.generate(params, config, [p], 20, sampling=GREEDY)[0]
                       for p in PROMPTS]
    ids, real = generate.left_pad(PROMPTS)
    assert ids.shape == (3, 7) and real.sum(axis=1).tolist() == [7, 2, 4]
    assert not real[1, :5].any() and (ids[1, :5] == generate.PAD_ID).all()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_greedy_generation_equals_torch_with_a_kv_cache(family):
    config = _config(family)
    params = _params(config)
    ours = generate.generate(params, config, [PROMPTS[0], PROMPTS[2][:3] + [1] * 4], 30,
                             sampling=GREEDY)
    prompt = torch.tensor([PROMPTS[0], PROMPTS[2][:3] + [1] * 4])
    theirs = torch_model.generate_greedy({n: torch.from_numpy(a) for n, a in params.items()},
                                         config, prompt, 30)
    assert ours == theirs.tolist()


def test_seeded_sampling_is_reproducible():
    config = _config("llama")
    params = _params(config, np.float32)
    s = generate.Sampling(temperature=0.9, top_k=20, top_p=0.9, repetition_penalty=1.2)
    a = generate.generate(params, config, PROMPTS, 30, sampling=s, seed=7)
    assert a == generate.generate(params, config, PROMPTS, 30, sampling=s, seed=7)
    assert a != generate.generate(params, config, PROMPTS, 30, sampling=s, seed=8)


def test_generation_stops_at_eos_per_row():
    config = _config("gpt2")
    params = _params(config)
    free = generate.generate(params, config, PROMPTS, 12, sampling=GREEDY)
    eos = free[1][3]
    stopped = generate.generate(params, config, PROMPTS, 12, sampling=GREEDY, eos_id=eos)
    for row, ref in zip(stopped, free):
        end = ref.index(eos) + 1 if eos in ref else len(ref)
        assert row == ref[:end]
    streamed = []
    generate.generate(params, config, PROMPTS, 12, sampling=GREEDY, eos_id=eos,
                      on_token=lambda b, t: streamed.append((b, t)))
    assert sorted(streamed) == sorted((b, t) for b, r in enumerate(stopped) for t in r)


def test_learned_positions_bound_the_generated_length():
    config = _config("gpt2")
    with pytest.raises(ValueError, match=r"max_new_tokens: a prompt of 7 tokens and 90 new ones "
                                         r"exceed max_seq_len = 96"):
        generate.generate(_params(config), config, PROMPTS, 90)


# ----------------------------------------------------------------------------- sampling rules

@settings(max_examples=200, deadline=None)
@given(probs=arrays(np.float64, st.integers(1, 12), elements=st.floats(0, 1)).filter(
    lambda a: a.sum() > 1e-3), p=st.floats(0.01, 1.0))
@example(probs=np.array([0.5, 0.25, 0.25]), p=0.5)     # the mass reaches p exactly: stop there
@example(probs=np.array([0.25, 0.5, 0.25]), p=0.75)
def test_top_p_keeps_the_smallest_set_with_mass_at_least_p(probs, p):
    probs = probs / probs.sum()
    keep = generate.top_p_keep(probs[None], p)[0]
    kept = probs[keep]
    assert keep.any() and (kept > 0).all()
    running = np.cumsum(np.sort(probs)[::-1])
    if running[-1] >= p:
        assert kept.sum() >= p - 1e-12                 # mass at least p
        assert kept.sum() - kept.min() < p             # one token fewer falls short: smallest
    if (~keep).any():
        assert kept.min() >= probs[~keep].max()        # the most likely tokens
    reaching = np.flatnonzero(running >= p)
    expected = reaching[0] + 1 if reaching.size else max(1, np.count_nonzero(probs))
    assert keep.sum() == expected


def test_top_k_temperature_and_repetition_penalty():
    z = np.array([[2.0, -1.0, 3.0, 3.0, 0.5]])
    assert generate.top_k_filter(z, 2).tolist() == [[-np.inf, -np.inf, 3.0, 3.0, -np.inf]]
    assert np.isfinite(generate.top_k_filter(z, 3)).sum() == 3
    seen = np.array([[True, True, False, False, False]])
    assert generate.repetition_penalty(z, seen, 2.0).tolist() == [[1.0, -2.0, 3.0, 3.0, 0.5]]
    rng = np.random.default_rng(0)
    assert generate.next_tokens(z, GREEDY, rng).tolist() == [2]      # the lowest id of the max
    draws = [int(generate.next_tokens(z, generate.Sampling(1.0, top_k=1), rng)[0])
             for _ in range(20)]
    assert set(draws) <= {2, 3}
    hot = [int(generate.next_tokens(z, generate.Sampling(100.0), rng)[0]) for _ in range(300)]
    assert set(hot) == {0, 1, 2, 3, 4}                               # near uniform
    with pytest.raises(ValueError, match=r"top_p: expected a number in \(0, 1\]"):
        generate.Sampling(top_p=0.0)
    with pytest.raises(ValueError, match=r"temperature: expected a number >= 0"):
        generate.Sampling(temperature=-1.0)


def test_sampling_frequencies_follow_the_filtered_distribution():
    z = np.log(np.array([[0.5, 0.3, 0.15, 0.05]]))
    rng = np.random.default_rng(1)
    s = generate.Sampling(1.0, top_p=0.75)
    draws = np.array([int(generate.next_tokens(z, s, rng)[0])
                      for _ in range(4000)])
    assert set(draws.tolist()) == {0, 1}                             # 0.5 + 0.3 >= 0.75
    assert abs((draws == 0).mean() - 0.5 / 0.8) < 0.03                # renormalised


# ----------------------------------------------------------------------------- the CLI

def test_generate_command_streams_from_a_checkpoint_directory(tmp_path, capsys):
    text = "to be or not to be, that is the question. " * 20
    tok = bpe_train.train(text, 280)
    config = model.ModelConfig(family="llama", vocab_size=tok.vocab_size, n_layer=1, n_head=2,
                               n_kv_head=1, d_model=8, d_ff=12, max_seq_len=64)
    hf_checkpoint.save_pretrained(tmp_path, model.init_params(config, 0), config)
    bpe_io.save(tok, tmp_path / model_cli.TOKENIZER)
    parser = argparse.ArgumentParser()
    model_cli.add_generate_arguments(parser)
    args = parser.parse_args(["--model", str(tmp_path), "--prompt", "to be", "--max-new-tokens",
                              "12", "--temperature", "0.7", "--top-p", "0.9", "--seed", "3"])
    assert model_cli.generate_main(args) == 0
    first = capsys.readouterr().out
    assert first.startswith("to be") and len(first) > len("to be\n")
    assert model_cli.generate_main(args) == 0
    assert capsys.readouterr().out == first                          # seeded
    bad = parser.parse_args(["--model", str(tmp_path / "nowhere"), "--prompt", "x"])
    assert model_cli.generate_main(bad) == 2
    assert "no config.json" in capsys.readouterr().err
