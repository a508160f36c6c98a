"""Schedules against torch's LambdaLR and SequentialLR, step by step, and inside an AdamW run."""
import warnings
from functools import partial

import numpy as np
import pytest
import torch
from torch.optim.lr_scheduler import LambdaLR

from ref_numpy import checkpoint, optim, schedule
from torch_bridge import optim as torch_optim

W, T, D, S, R = 37, 800, 200, 0.01, 0.1
BASE = [3e-3, 1e-3]
STEPS = 1000                 # past the end of the schedule, into the floor


def _ours(base_lrs, steps, fn):
    opt = optim.SGD([{"params": [np.zeros(1)], "lr": b} for b in base_lrs])
    sched = schedule.Scheduler(opt, fn)
    rows = []
    for _ in range(steps):
        rows.append(sched.get_last_lr())
        opt.step([None] * len(base_lrs))
        sched.step()
    return np.array(rows)


def _elementwise_rel(a, b):
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-300)))


@pytest.mark.parametrize("min_ratio", [0.0, R])
def test_warmup_cosine_equals_lambda_lr(min_ratio):
    ours = _ours(BASE, STEPS, partial(schedule.warmup_cosine, warmup=W, total=T, start_factor=S,
                                      min_ratio=min_ratio))
    theirs = torch_optim.lr_history(BASE, STEPS, lambda o: LambdaLR(
        o, torch_optim.warmup_cosine_lambda(W, T, S, min_ratio))).numpy()
    assert _elementwise_rel(ours, theirs) <= 1e-12


@pytest.mark.parametrize("base, min_ratio", [(BASE, 0.0), (BASE[:1], R)])
def test_warmup_cosine_equals_torchs_own_schedulers(base, min_ratio):
    """LinearLR, CosineAnnealingLR and ConstantLR in a SequentialLR: torch's recursive forms."""
    ours = _ours(base, STEPS, partial(schedule.warmup_cosine, warmup=W, total=T, start_factor=S,
                                      min_ratio=min_ratio))
    with warnings.catch_warnings():
        warnings.simplefilter("error")                      # no deprecated path is taken
        theirs = torch_optim.lr_history(base, STEPS, lambda o: torch_optim.warmup_cosine_sequential(
            o, W, T, S, min_ratio)).numpy()
    # relative to each lr where it is not ~0 (the cosine's end), else to the largest lr
    assert np.max(np.abs(ours - theirs)) <= 1e-12 * np.max(theirs)
    assert _elementwise_rel(ours[theirs > 1e-3 * theirs.max()],
                            theirs[theirs > 1e-3 * theirs.max()]) <= 1e-12


@pytest.mark.parametrize("shape", schedule.WSD_SHAPES)
def test_wsd_equals_lambda_lr(shape):
    ours = _ours(BASE, STEPS, partial(schedule.wsd, warmup=W, total=T, decay=D, start_factor=S,
                                      min_ratio=R, shape=shape))
    theirs = torch_optim.lr_history(BASE, STEPS, lambda o: LambdaLR(
        o, torch_optim.wsd_lambda(W, T, D, S, R, shape))).numpy()
    assert _elementwise_rel(ours, theirs) <= 1e-12


def test_wsd_linear_equals_torchs_own_schedulers():
    ours = _ours(BASE, STEPS, partial(schedule.wsd, warmup=W, total=T, decay=D, start_factor=S,
                                      min_ratio=R))
    theirs = torch_optim.lr_history(BASE, STEPS, lambda o: torch_optim.wsd_sequential(
        o, W, T, D, S, R)).numpy()
    assert _elementwise_rel(ours, theirs) <= 1e-12


def test_shapes_of_the_schedules():
    f = [schedule.warmup_cosine(t, warmup=W, total=T, start_factor=S, min_ratio=R)
         for t in range(STEPS)]
    assert f[0] == S and f[W] == 1.0 and f[T] == R and f[-1] == R
    assert np.all(np.diff(f[:W + 1]) > 0) and np.all(np.diff(f[W:T + 1]) < 0)
    g = [schedule.wsd(t, warmup=W, total=T, decay=D, min_ratio=R, shape="1-sqrt")
         for t in range(STEPS)]
    assert g[0] == 0.0 and set(g[W:T - D]) == {1.0} and g[T] == R and g[-1] == R
    assert np.all(np.diff(g[T - D:T + 1]) < 0)
    # 1 − sqrt falls faster than linear early in the decay
    assert g[T - D + 20] < schedule.wsd(T - D + 20, warmup=W, total=T, decay=D, min_ratio=R)


@pytest.mark.parametrize("call, message", [
    (lambda: schedule.warmup_cosine(0, warmup=10, total=10),
     r"warmup: expected fewer steps than total \(10\) but got 10"),
    (lambda: schedule.warmup_cosine(-1, warmup=1, total=10), "t: expected an int >= 0 but got -1"),
    (lambda: schedule.warmup_cosine(0, warmup=1, total=10, min_ratio=1.5),
     r"min_ratio: expected a number in \[0, 1\] but got 1.5"),
    (lambda: schedule.warmup_cosine(0, warmup=1, total=10, start_factor=float("nan")),
     r"start_factor: expected a number in \[0, 1\] but got nan"),
    (lambda: schedule.wsd(0, warmup=5, total=10, decay=6),
     "decay: expected at most total - warmup = 5 steps but got 6"),
    (lambda: schedule.wsd(0, warmup=5, total=10, decay=2, shape="cosine"),
     r"shape: expected one of \('linear', '1-sqrt'\) but got 'cosine'"),
    (lambda: schedule.Scheduler(optim.SGD([np.zeros(1)]), 0.5),
     "fn: expected a callable t -> multiplier but got float"),
])
def test_bad_arguments(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


def test_adamw_under_a_schedule_equals_torch():
    rng = np.random.default_rng(0)
    shapes = [(7, 13), (97,)]
    p0 = [rng.standard_normal(s) for s in shapes]
    grads = [rng.standard_normal((STEPS, *s)) for s in shapes]
    params = [p.copy() for p in p0]
    opt = optim.AdamW([{"params": [params[0]], "lr": 3e-3}, {"params": [params[1]], "lr": 1e-3}])
    sched = schedule.Scheduler(opt, partial(schedule.warmup_cosine, warmup=W, total=T,
                                            start_factor=S, min_ratio=R))
    tensors = [torch.from_numpy(p.copy()) for p in p0]
    theirs = torch.optim.AdamW([{"params": [tensors[0]], "lr": 3e-3},
                                {"params": [tensors[1]], "lr": 1e-3}])
    their_sched = LambdaLR(theirs, torch_optim.warmup_cosine_lambda(W, T, S, R))
    for t in range(STEPS):
        opt.step([g[t] for g in grads])
        sched.step()
        for x, g in zip(tensors, grads):
            x.grad = torch.from_numpy(g[t])
        theirs.step()
        their_sched.step()
    for p, x in zip(params, tensors):
        assert np.abs(p - x.numpy()).max() <= 1e-12 * np.abs(x.numpy()).max()


def test_scheduler_state_resumes_bit_for_bit(tmp_path):
    fn = partial(schedule.wsd, warmup=W, total=T, decay=D, start_factor=S, min_ratio=R)
    straight = _ours(BASE, STEPS, fn)
    opt = optim.SGD([{"params": [np.zeros(1)], "lr": b} for b in BASE])
    sched = schedule.Scheduler(opt, fn)
    for _ in range(500):
        sched.step()
    checkpoint.save_state(tmp_path / "s.npz", optimizer=opt, scheduler=sched)
    opt2 = optim.SGD([{"params": [np.zeros(1)], "lr": b} for b in BASE])
    sched2 = schedule.Scheduler(opt2, fn)
    checkpoint.load_state(tmp_path / "s.npz", optimizer=opt2, scheduler=sched2)
    rows = []
    for _ in range(500):
        rows.append(sched2.get_last_lr())
        sched2.step()
    assert np.array_equal(np.array(rows), straight[500:])
    bad = {**sched.state_arrays(), "base_lrs": np.array([1e-3])}
    with pytest.raises(ValueError, match=r"base_lrs: expected shape \(2,\) float64 \(one per "
                                         r"parameter group\) but got \(1,\) float64"):
        sched2.load_state_arrays(bad)
    assert sched2.last_step == 1000
