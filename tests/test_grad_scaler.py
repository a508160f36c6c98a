"""The loss scaler against torch.amp.GradScaler("cpu") on gradient streams with injected infs
and NaNs: the scale after every step, which steps were skipped, the growth tracker, the final
parameters, the state and its files, and the misuse errors."""
import numpy as np
import pytest
import torch

from ref_numpy import checkpoint, clip_grad, grad_scaler, optim
from torch_bridge import optim as torch_optim

SHAPES = ((7, 13), (97,), (3, 5, 11), (1,))
STEPS = 1000


def _stream(dtype, steps=STEPS, bad=150, seed=0):
    rng = np.random.default_rng(seed)
    p0 = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = [rng.standard_normal((steps, *s)).astype(dtype) for s in SHAPES]
    for t in rng.choice(steps, bad, replace=False):
        flat = grads[rng.integers(len(SHAPES))][t].reshape(-1)
        flat[rng.integers(flat.size)] = rng.choice([np.inf, -np.inf, np.nan])
    return p0, grads


def _ours(p0, grads, scaler_options, steps=None, scaler=None, params=None, opt=None, start=0):
    params = [p.copy() for p in p0] if params is None else params
    opt = optim.AdamW(params, lr=1e-2) if opt is None else opt
    scaler = grad_scaler.GradScaler(**scaler_options) if scaler is None else scaler
    scales, skipped, tracker = [], [], []
    for t in range(start, grads[0].shape[0] if steps is None else steps):
        taken = scaler.step(opt, [scaler.scale(g[t]) for g in grads])
        scaler.update()
        skipped.append(not taken)
        scales.append(scaler.get_scale())
        tracker.append(scaler.state_dict()["_growth_tracker"])
    return dict(params=params, opt=opt, scaler=scaler, scale=scales, skipped=skipped,
                tracker=tracker)


OPTIONS = {
    "torch defaults, interval 10": dict(growth_interval=10),
    "factors 3 and 0.3 (float32 rounding)": dict(init_scale=1000.0, growth_factor=3.0,
                                                 backoff_factor=0.3, growth_interval=5),
    "growth to float32's limit": dict(init_scale=2.0 ** 120, growth_interval=1),
}


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", list(OPTIONS))
def test_decisions_equal_torch_grad_scaler(name, dtype):
    options = OPTIONS[name]
    p0, grads = _stream(dtype)
    ours = _ours(p0, grads, options)
    theirs = torch_optim.scaled_trajectory(
        "AdamW", [torch.from_numpy(p) for p in p0], [torch.from_numpy(g) for g in grads],
        scaler_options=options, lr=1e-2)
    assert ours["scale"] == theirs["scale"].tolist()
    assert ours["skipped"] == theirs["skipped"].tolist()
    assert ours["tracker"] == theirs["tracker"].tolist()
    assert ours["scaler"].state_dict() == theirs["state_dict"]
    assert sum(ours["skipped"]) >= 150                      # every injected step was skipped
    assert len(set(ours["scale"])) > 5                      # and the scale moved both ways
    tol = 1e-12 if dtype == "float64" else 1e-6
    for p, t in zip(ours["params"], theirs["params"]):
        assert np.abs(p - t.numpy()).max() <= tol * np.abs(t.numpy()).max()


def test_growth_stops_below_float32_overflow():
    ours = _ours(*_stream("float64", steps=40, bad=0), dict(init_scale=2.0 ** 120,
                                                             growth_interval=1))
    assert max(ours["scale"]) == 2.0 ** 127 and ours["tracker"] == [0] * 40
    assert not any(ours["skipped"])


def test_a_skipped_step_changes_neither_parameters_nor_state():
    p0, grads = _stream("float32", steps=3, bad=0)
    params = [p.copy() for p in p0]
    opt = optim.AdamW(params, lr=1e-2)
    scaler = grad_scaler.GradScaler()
    scaler.step(opt, [scaler.scale(g[0]) for g in grads])
    scaler.update()
    before = {k: v.copy() for k, v in opt.state_arrays().items()}
    bad = [scaler.scale(g[1]) for g in grads]
    bad[2][1, 2, 3] = np.nan
    assert scaler.step(opt, bad) is False
    scaler.update()
    after = opt.state_arrays()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert scaler.get_scale() == 2.0 ** 15


def test_unscale_then_clip_then_step_equals_torch():
    """torch's documented pattern: unscale_, clip the true gradients, then step."""
    p0, grads = _stream("float64", steps=300, bad=30)
    params = [p.copy() for p in p0]
    opt = optim.AdamW(params, lr=1e-2)
    scaler = grad_scaler.GradScaler(growth_interval=7)
    tensors = [torch.from_numpy(p.copy()) for p in p0]
    theirs = torch.optim.AdamW(tensors, lr=1e-2)
    their_scaler = torch.amp.GradScaler("cpu", growth_interval=7)
    for t in range(300):
        g = [scaler.scale(x[t]) for x in grads]
        scaler.unscale_(opt, g)
        norm = clip_grad.clip_grad_norm_(g, 1.0)
        scaler.step(opt, g)
        scaler.update()
        for x, s in zip(tensors, grads):
            x.grad = their_scaler.scale(torch.from_numpy(s[t]))
        their_scaler.unscale_(theirs)
        their_norm = torch.nn.utils.clip_grad_norm_(tensors, 1.0)
        their_scaler.step(theirs)
        their_scaler.update()
        assert scaler.get_scale() == their_scaler.get_scale()
        assert (np.isfinite(norm) == torch.isfinite(their_norm)).item()
    for p, x in zip(params, tensors):
        assert np.abs(p - x.numpy()).max() <= 1e-12 * np.abs(x.numpy()).max()


def test_state_dict_round_trips_with_torch():
    p0, grads = _stream("float64", steps=200)              # 150 bad steps: the scale hits 0
    options = OPTIONS["factors 3 and 0.3 (float32 rounding)"]
    theirs = torch_optim.scaled_trajectory(
        "AdamW", [torch.from_numpy(p) for p in p0], [torch.from_numpy(g) for g in grads],
        scaler_options=options, lr=1e-2)
    assert theirs["state_dict"]["scale"] == 0.0             # float32 underflow, as in ours
    scaler = grad_scaler.GradScaler()
    scaler.load_state_dict(theirs["state_dict"])            # torch's state into ours
    assert scaler.state_dict() == theirs["state_dict"]
    their_scaler = torch.amp.GradScaler("cpu")
    their_scaler.load_state_dict(scaler.state_dict())       # and ours into torch's
    assert their_scaler.state_dict() == theirs["state_dict"]


def test_resume_from_a_file_is_bit_for_bit(tmp_path):
    options = OPTIONS["factors 3 and 0.3 (float32 rounding)"]
    p0, grads = _stream("float32")
    straight = _ours(p0, grads, options)
    first = _ours(p0, grads, options, steps=500)
    checkpoint.save_state(tmp_path / "run.npz", optimizer=first["opt"], scaler=first["scaler"])
    params = [p.copy() for p in p0]
    opt, scaler = optim.AdamW(params, lr=1e-2), grad_scaler.GradScaler()
    checkpoint.load_state(tmp_path / "run.npz", optimizer=opt, scaler=scaler)
    rest = _ours(p0, grads, options, scaler=scaler, params=params, opt=opt, start=500)
    assert first["scale"] + rest["scale"] == straight["scale"]
    assert first["skipped"] + rest["skipped"] == straight["skipped"]
    assert all(np.array_equal(a, b) for a, b in zip(params, straight["params"]))


@pytest.mark.parametrize("change, message", [
    (dict(_growth_tracker=7), r"_growth_tracker: expected an int in \[0, growth_interval = 5\) "
                              r"but got 7"),
    (dict(scale=-1.0), "scale: expected a finite number >= 0 but got -1.0"),
    (dict(scale=1e39), "scale: expected a number >= 0 that float32 holds but got 1e\\+39"),
    (dict(growth_factor=0.5), "growth_factor: expected a number > 1 but got 0.5"),
    (dict(extra=1), "extra: unexpected in the state of a GradScaler"),
])
def test_a_bad_state_is_rejected_and_changes_nothing(change, message):
    scaler = grad_scaler.GradScaler(init_scale=8.0, growth_interval=5)
    before = scaler.state_dict()
    with pytest.raises(ValueError, match=message):
        scaler.load_state_dict({**before, **change})
    assert scaler.state_dict() == before


@pytest.mark.parametrize("options, message", [
    (dict(init_scale=0.0), "init_scale: expected a number > 0 that float32 holds but got 0.0"),
    (dict(init_scale=1e39), "init_scale: expected a number > 0 that float32 holds"),
    (dict(growth_factor=1.0), "growth_factor: expected a number > 1 but got 1.0"),
    (dict(backoff_factor=1.0), r"backoff_factor: expected a number in \[0, 1\) but got 1.0"),
    (dict(backoff_factor=0.0), r"backoff_factor: expected a number in \(0, 1\) but got 0.0"),
    (dict(growth_interval=0), "growth_interval: expected a positive int but got 0"),
])
def test_bad_arguments(options, message):
    with pytest.raises((ValueError, TypeError), match=message):
        grad_scaler.GradScaler(**options)


def test_misuse_is_an_error_as_in_torch():
    p = [np.zeros(3)]
    opt, scaler = optim.SGD(p, lr=0.1), grad_scaler.GradScaler()
    with pytest.raises(RuntimeError, match="update: no inf checks were recorded"):
        scaler.update()
    scaler.unscale_(opt, [np.ones(3)])
    with pytest.raises(RuntimeError, match="unscale_: already called for this optimizer"):
        scaler.unscale_(opt, [np.ones(3)])
    scaler.step(opt, [np.ones(3)])
    with pytest.raises(RuntimeError, match="step: already called for this optimizer"):
        scaler.step(opt, [np.ones(3)])
    with pytest.raises(RuntimeError, match="unscale_: called after step"):
        scaler.unscale_(opt, [np.ones(3)])
    with pytest.raises(ValueError, match=r"grads\[0\]: expected shape \(3,\)"):
        grad_scaler.GradScaler().unscale_(opt, [np.ones(4)])


def test_a_disabled_scaler_passes_through():
    p = [np.zeros(3)]
    opt, scaler = optim.SGD(p, lr=0.5), grad_scaler.GradScaler(enabled=False)
    g = np.array([1.0, np.inf, 2.0])
    assert scaler.scale(g) is g and scaler.get_scale() == 1.0
    assert scaler.step(opt, [np.ones(3)]) is True and np.array_equal(p[0], [-0.5] * 3)
    scaler.update()
    assert scaler.state_dict() == {}
