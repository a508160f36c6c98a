"""``crosscheck bench train``: the NumPy model's training step and KV-cache generation against
torch on the CPU, and what gradient checkpointing costs and saves.

Sides, each in a fresh child of the shared layer (``equivalence.bench.common``; NumPy sides in
one, torch sides in another, the same threads):

- train step: forward, loss, backward, global-norm clipping and an AdamW step of the model of
  ``--config`` on a (B, T) = ``--shape`` batch. NumPy: ``ref_numpy.model`` with
  ``ref_numpy.optim.AdamW``; torch: ``torch_bridge.model`` (attention by
  ``F.scaled_dot_product_attention``, what a torch user calls) with ``torch.optim.AdamW``,
  ``clip_grad_norm_`` and ``zero_grad``, from the same weights.
- generation: ``--gen-batch`` prompts of ``--prompt-len`` tokens continued greedily by
  ``--new-tokens`` tokens with a KV cache (``ref_numpy.generate`` and ``torch_bridge.model``'s
  cache under ``no_grad``).
- checkpointing: the NumPy forward + backward with every block's activations stored, and with
  ``checkpoint_every`` = 1 and 2: the peak traced memory (tracemalloc) and the time.

The ratios are tokens/s of NumPy over tokens/s of torch (target >= 0.5 for both), from the
medians of one invocation, on one thread by default like the other benches (``--threads 1 2``
adds two): NumPy runs its elementwise passes on one thread whatever the setting (only BLAS
threads), so one thread compares the two implementations on equal resources, and two add what
torch's intra-op parallelism gives it.

Every child first calls ``ref_numpy.malloc.keep_freed_memory`` (as ``crosscheck train`` and
``generate`` do): without it, glibc gives each NumPy step's freed activations back to the OS and
the next step faults them in again (39,000 faults per tiny-llama step, 0.29 s instead of 0.22 s
on one core); torch's step, which faults 1,800 times, is not changed by it.

Quick smoke run: ``crosscheck bench train --shape 2,8 --d-model 16 --layers 1 --vocab 64
--prompt-len 4 --new-tokens 4 --min-time 0 --repeats 1 --warmup 0``.
"""
from __future__ import annotations

import argparse
import dataclasses

import numpy as np

from equivalence.bench.common import (Side, add_timing_arguments, check_timing_arguments,
                                      measure, measure_memory, shape_type, thread_settings,
                                      timing_row)
from ref_numpy.malloc import keep_freed_memory

HERE = "equivalence.bench.train"
TARGET = 0.5                 # NumPy tokens/s at least this share of torch's
LR, WEIGHT_DECAY, CLIP = 1e-3, 0.1, 1.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ref_numpy.model import CONFIGS
    parser.add_argument("--config", choices=list(CONFIGS), nargs="+", default=list(CONFIGS),
                        help="the models (default: both)")
    parser.add_argument("--shape", type=shape_type("B,T"), default=(16, 128), metavar="B,T",
                        help="training batch: windows, tokens each (default 16,128)")
    parser.add_argument("--vocab", type=int, default=512, help="vocabulary size (default 512)")
    parser.add_argument("--d-model", type=int, help="override the config's width")
    parser.add_argument("--layers", type=int, help="override the config's number of blocks")
    parser.add_argument("--gen-batch", type=int, default=1, help="prompts decoded together")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=96)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--seed", type=int, default=0)
    add_timing_arguments(parser, default_threads=[1])


# ----------------------------------------------------------------------------- builders
# Each runs in a bench child: it makes the inputs and returns the callable that is timed.

def _setup(config, dtype, seed, B, T):
    from ref_numpy import model
    cfg = model.ModelConfig.from_dict(config)
    params = model.init_params(cfg, seed, dtype)
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, cfg.vocab_size, (B, T + 1))
    return cfg, params, ids[:, :-1], ids[:, 1:]


def numpy_train_step(config, shape, dtype, seed):
    keep_freed_memory()
    from ref_numpy import clip_grad, model
    from ref_numpy.optim import AdamW, decay_groups
    cfg, params, x, y = _setup(config, dtype, seed, *shape)
    opt = AdamW(decay_groups(params, WEIGHT_DECAY), lr=LR)
    names = [n for g in opt.param_groups for n in g["param_names"]]

    def run():
        out, cache = model.model_forward(params, cfg, x, y)
        grads = model.model_backward(1.0, cache)
        grads = [grads[n] for n in names]
        clip_grad.clip_grad_norm_(grads, CLIP)
        opt.step(grads)
    return run


def torch_train_step(config, shape, dtype, seed):
    keep_freed_memory()
    import torch
    from torch_bridge import model as torch_model
    cfg, params, x, y = _setup(config, dtype, seed, *shape)
    tp = {n: torch.from_numpy(a).requires_grad_(True) for n, a in params.items()}
    opt = torch.optim.AdamW(torch_model.decay_groups(tp, WEIGHT_DECAY), lr=LR)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)

    def run():
        opt.zero_grad(set_to_none=True)
        _, loss = torch_model.forward(tp, cfg, xt, yt, sdpa=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(tp.values()), CLIP)
        opt.step()
    return run


def numpy_forward_backward(config, shape, dtype, seed, checkpoint_every):
    keep_freed_memory()
    from ref_numpy import model
    cfg, params, x, y = _setup(config, dtype, seed, *shape)

    def run():
        out, cache = model.model_forward(params, cfg, x, y, checkpoint_every=checkpoint_every)
        return model.model_backward(1.0, cache)
    return run


def numpy_generate(config, batch, prompt_len, new_tokens, dtype, seed):
    keep_freed_memory()
    from ref_numpy import generate
    cfg, params, x, _ = _setup(config, dtype, seed, batch, prompt_len)
    prompts = x.tolist()
    greedy = generate.Sampling(temperature=0)

    def run():
        generate.generate(params, cfg, prompts, new_tokens, sampling=greedy)
    return run


def torch_generate(config, batch, prompt_len, new_tokens, dtype, seed):
    keep_freed_memory()
    import torch
    from torch_bridge import model as torch_model
    cfg, params, x, _ = _setup(config, dtype, seed, batch, prompt_len)
    tp = {n: torch.from_numpy(a) for n, a in params.items()}
    prompt = torch.from_numpy(x)

    def run():
        torch_model.generate_greedy(tp, cfg, prompt, new_tokens)
    return run


# ----------------------------------------------------------------------------- the bench

def _config(args, name) -> dict:
    from ref_numpy.model import CONFIGS
    cfg = dataclasses.replace(CONFIGS[name], vocab_size=args.vocab,
                              max_seq_len=max(args.shape[1], args.prompt_len + args.new_tokens))
    if args.d_model:
        cfg = dataclasses.replace(cfg, d_model=args.d_model, d_ff=2 * args.d_model)
    if args.layers:
        cfg = dataclasses.replace(cfg, n_layer=args.layers)
    return cfg.to_dict()


def _ratio(op, name, threads, mine, peer, tokens) -> dict:
    a, b = tokens / mine.median, tokens / peer.median
    return {"op": op, "config": name, "threads": "default" if threads is None else threads,
            "numpy tokens/s": a, "torch tokens/s": b, "ratio (numpy / torch)": a / b,
            "target": f">= {TARGET:g}", "met": "yes" if a / b >= TARGET else "NO"}


def run(args) -> dict[str, list[dict]]:
    """Tables ``ratios``, ``checkpointing`` and ``timings``."""
    check_timing_arguments(args)
    for name in ("vocab", "gen_batch", "prompt_len", "new_tokens"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: expected an int >= 1 but got "
                             f"{getattr(args, name)}")
    B, T = args.shape
    ratios, memory, timings = [], [], []
    for name in args.config:
        config = _config(args, name)
        step = dict(config=config, shape=[B, T], dtype=args.dtype, seed=args.seed)
        gen = dict(config=config, batch=args.gen_batch, prompt_len=args.prompt_len,
                   new_tokens=args.new_tokens, dtype=args.dtype, seed=args.seed)
        ckpt = [Side(f"numpy fwd+bwd, checkpoint_every={k}", f"{HERE}:numpy_forward_backward",
                     dict(step, checkpoint_every=k)) for k in (0, 1, 2)]
        peaks = measure_memory(ckpt)
        for threads in thread_settings(args):
            mine = measure([Side("numpy train step", f"{HERE}:numpy_train_step", step),
                            Side("numpy KV-cache generation", f"{HERE}:numpy_generate", gen),
                            *ckpt], args, threads)
            peer = measure([Side("torch train step", f"{HERE}:torch_train_step", step),
                            Side("torch KV-cache generation", f"{HERE}:torch_generate", gen)],
                           args, threads)
            ctx = dict(config=name, shape=f"(B, T) = {(B, T)}", dtype=args.dtype)
            timings += [timing_row(t, **ctx) for t in (*mine, *peer)]
            ratios.append(_ratio("train step", name, threads, mine[0], peer[0], B * T))
            ratios.append(_ratio("generation", name, threads, mine[1], peer[1],
                                 args.gen_batch * args.new_tokens))
            base_time = mine[2].median
            for k, t, peak in zip((0, 1, 2), mine[2:], peaks):
                memory.append({"config": name, "threads": "default" if threads is None
                               else threads, "checkpoint_every": k, "peak MiB": peak / 2 ** 20,
                               "memory vs none": peak / peaks[0], "median s": t.median,
                               "time vs none": t.median / base_time})
    return {"ratios": ratios, "checkpointing": memory, "timings": timings}
