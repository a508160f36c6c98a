"""Optimizers against torch.optim step for step, clipping against clip_grad_norm_, their state
files, their error messages, and the optimizer bench at a tiny size.

Trajectories: 1000 steps on seeded random gradients, four parameter arrays of odd shapes in two
groups (own lr and weight decay). Errors are normwise per array, max|ours − torch| / max|torch|,
over the final parameters and every state buffer.
"""
import json

import numpy as np
import pytest
import torch

from equivalence.cli import main
from ref_numpy import checkpoint, clip_grad, grad_scaler, optim, optimizer
from torch_bridge import optim as torch_optim

SHAPES = ((7, 13), (97,), (3, 5, 11), (1,))
GROUPS = [{"params": [0, 2], "weight_decay": 0.1},
          {"params": [1, 3], "weight_decay": 0.0, "lr": 3e-3}]
STEPS = 1000
TOL = {"float64": 1e-12, "float32": 1e-6}

CONFIGS = {
    "adamw": ("AdamW", dict(lr=1e-2)),
    "adamw-amsgrad": ("AdamW", dict(lr=1e-2, amsgrad=True)),
    "adamw-maximize-beta1=0.4": ("AdamW", dict(lr=1e-2, betas=(0.4, 0.9), maximize=True)),
    "adam": ("Adam", dict(lr=1e-2)),
    "adam-amsgrad": ("Adam", dict(lr=1e-2, amsgrad=True)),
    "sgd": ("SGD", dict(lr=1e-2)),
    "sgd-momentum": ("SGD", dict(lr=1e-2, momentum=0.9)),
    "sgd-dampening": ("SGD", dict(lr=1e-2, momentum=0.9, dampening=0.3)),
    "sgd-nesterov": ("SGD", dict(lr=1e-2, momentum=0.9, nesterov=True)),
    "sgd-maximize": ("SGD", dict(lr=1e-2, momentum=0.5, maximize=True)),
    "lion": ("Lion", dict(lr=1e-3)),
}


def _stream(dtype, steps=STEPS, seed=0, shapes=SHAPES):
    rng = np.random.default_rng(seed)
    p0 = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [rng.standard_normal((steps, *s)).astype(dtype) for s in shapes]
    return p0, grads


def _groups(params):
    return [{**{k: v for k, v in g.items() if k != "params"},
             "params": [params[i] for i in g["params"]],
             "param_names": [f"p{i}" for i in g["params"]]} for g in GROUPS]


def _ours(kind, options, p0, grads, steps=None):
    params = [p.copy() for p in p0]
    opt = getattr(optim, kind)(_groups(params), **options)
    for t in range(grads[0].shape[0] if steps is None else steps):
        opt.step({f"p{i}": g[t] for i, g in enumerate(grads)})
    return params, opt


def _states_by_index(opt):
    order = [i for g in GROUPS for i in g["params"]]
    return {i: s for i, s in zip(order, opt.state)}


def _rel(a, b):
    b = np.asarray(b)
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-300))


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_trajectory_equals_torch(config, dtype):
    kind, options = CONFIGS[config]
    p0, grads = _stream(dtype)
    params, opt = _ours(kind, options, p0, grads)
    t_params, t_states = torch_optim.trajectory(
        kind, [torch.from_numpy(p) for p in p0], [torch.from_numpy(g) for g in grads], GROUPS,
        **options)
    ours = _states_by_index(opt)
    errors = {}
    for i, (p, tp) in enumerate(zip(params, t_params)):
        assert p.dtype == np.dtype(dtype)
        errors[f"p{i}"] = _rel(p, tp.numpy())
        for name, value in t_states[i].items():
            if name == "step":
                assert ours[i]["step"] == int(value) == STEPS
            else:
                errors[f"{name} {i}"] = _rel(ours[i][name], value.numpy())
    assert set(errors) >= {f"p{i}" for i in range(4)}
    assert max(errors.values()) <= TOL[dtype], errors


@pytest.mark.parametrize("amsgrad", [False, True])
def test_adamw_equals_torch_foreach(amsgrad):
    p0, grads = _stream("float64", steps=300)
    params, _ = _ours("AdamW", dict(lr=1e-2, amsgrad=amsgrad), p0, grads)
    t_params, _ = torch_optim.trajectory(
        "AdamW", [torch.from_numpy(p) for p in p0], [torch.from_numpy(g) for g in grads], GROUPS,
        lr=1e-2, amsgrad=amsgrad, foreach=True)
    assert max(_rel(p, t.numpy()) for p, t in zip(params, t_params)) <= 1e-12


def test_adam_and_adamw_differ_only_in_where_the_decay_acts():
    p0, grads = _stream("float64", steps=50)
    adamw, _ = _ours("AdamW", dict(lr=1e-2), p0, grads)
    adam, _ = _ours("Adam", dict(lr=1e-2), p0, grads)
    # group 0 decays (0.1): the rules differ there; group 1 has no decay: identical bit for bit
    assert _rel(adamw[0], adam[0]) > 1e-3 and _rel(adamw[2], adam[2]) > 1e-3
    assert np.array_equal(adamw[1], adam[1]) and np.array_equal(adamw[3], adam[3])


def test_decay_groups_split_and_torch_with_the_same_groups():
    rng = np.random.default_rng(3)
    named = {"embed.weight": rng.standard_normal((11, 5)), "h0.attn.w": rng.standard_normal((5, 7)),
             "h0.attn.b": rng.standard_normal(7), "h0.norm.weight": rng.standard_normal(5),
             "head.w": rng.standard_normal((5, 11))}
    groups = optim.decay_groups(named, 0.1)
    assert [g["param_names"] for g in groups] == [["h0.attn.w", "head.w"],
                                                  ["embed.weight", "h0.attn.b", "h0.norm.weight"]]
    assert [g["weight_decay"] for g in groups] == [0.1, 0.0]
    assert all(p is named[n] for g in groups for p, n in zip(g["params"], g["param_names"]))
    initial = {n: p.copy() for n, p in named.items()}
    tensors = {n: torch.from_numpy(p.copy()) for n, p in named.items()}
    theirs = torch.optim.AdamW([{"params": [tensors[n] for n in g["param_names"]],
                                 "weight_decay": g["weight_decay"]} for g in groups], lr=1e-2)
    opt = optim.AdamW(groups, lr=1e-2)
    for _ in range(200):
        grads = {n: rng.standard_normal(p.shape) for n, p in named.items()}
        opt.step(grads)                                     # by name
        for n, t in tensors.items():
            t.grad = torch.from_numpy(grads[n])
        theirs.step()
    for n in named:
        assert _rel(named[n], tensors[n].numpy()) <= 1e-12
        assert not np.array_equal(named[n], initial[n])


def test_grads_as_a_list_in_params_order_equal_grads_by_name():
    p0, grads = _stream("float64", steps=20)
    by_name, _ = _ours("AdamW", dict(lr=1e-2), p0, grads)
    params = [p.copy() for p in p0]
    opt = optim.AdamW(_groups(params), lr=1e-2)
    order = [i for g in GROUPS for i in g["params"]]
    assert [id(p) for p in opt.params] == [id(params[i]) for i in order]
    for t in range(20):
        opt.step([grads[i][t] for i in order])
    assert all(np.array_equal(a, b) for a, b in zip(params, by_name))


def test_none_gradient_skips_the_parameter_as_torch():
    p0, grads = _stream("float64", steps=100)
    rng = np.random.default_rng(1)
    missing = rng.random((100, 4)) < 0.3                   # grad is None there
    params = [p.copy() for p in p0]
    opt = optim.AdamW(params, lr=1e-2)
    tensors = [torch.from_numpy(p.copy()) for p in p0]
    theirs = torch.optim.AdamW(tensors, lr=1e-2)
    for t in range(100):
        opt.step([None if missing[t, i] else g[t] for i, g in enumerate(grads)])
        for i, (x, g) in enumerate(zip(tensors, grads)):
            x.grad = None if missing[t, i] else torch.from_numpy(g[t])
        theirs.step()
    for i in range(4):
        steps = int(theirs.state[tensors[i]]["step"])
        assert opt.state[i]["step"] == steps == 100 - missing[:, i].sum()
        assert _rel(params[i], tensors[i].numpy()) <= 1e-12


def test_blocks_and_strided_views_give_the_whole_array_update(monkeypatch):
    rng = np.random.default_rng(2)
    big = rng.standard_normal(3 * optimizer.BLOCK + 17).astype(np.float32)   # 4 blocks
    base = rng.standard_normal((13, 7))
    grads = [(rng.standard_normal(big.shape).astype(np.float32), rng.standard_normal((7, 13)))
             for _ in range(5)]

    def run(block):
        monkeypatch.setattr(optimizer, "BLOCK", block)
        b, strided = big.copy(), base.copy().T                # a transposed (strided) view
        opt = optim.AdamW([b, strided], lr=1e-2, amsgrad=True)
        for g in grads:
            opt.step(list(g))
        return b, strided.copy()

    blocked = run(optimizer.BLOCK)
    whole = run(10 ** 9)
    assert all(np.array_equal(x, y) for x, y in zip(blocked, whole))
    tensors = [torch.from_numpy(big.copy()), torch.from_numpy(base.copy().T.copy())]
    theirs = torch.optim.AdamW(tensors, lr=1e-2, amsgrad=True)
    for g in grads:
        for t, x in zip(tensors, g):
            t.grad = torch.from_numpy(x)
        theirs.step()
    assert _rel(blocked[0], tensors[0].numpy()) <= 1e-6                      # float32
    assert _rel(blocked[1], tensors[1].numpy()) <= 1e-12


# --- bad input: clear errors naming the argument, nothing changed ----------------------------

def _snapshot(opt):
    return {k: v.copy() for k, v in opt.state_arrays().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind, options, message", [
    ("AdamW", dict(lr=-1e-3), "lr: expected a finite number >= 0 but got -0.001"),
    ("AdamW", dict(lr=float("nan")), "lr: expected a finite number >= 0 but got nan"),
    ("AdamW", dict(eps=-1e-8), "eps: expected a finite number >= 0 but got -1e-08"),
    ("AdamW", dict(betas=(1.0, 0.999)), r"betas\[0\]: expected a number in \[0, 1\) but got 1.0"),
    ("AdamW", dict(betas=(0.9, -0.1)), r"betas\[1\]: expected a number in \[0, 1\) but got -0.1"),
    ("AdamW", dict(betas=(0.9,)), r"betas: expected two numbers \(beta1, beta2\)"),
    ("Adam", dict(weight_decay=-0.1), "weight_decay: expected a finite number >= 0 but got -0.1"),
    ("SGD", dict(momentum=-0.5), "momentum: expected a finite number >= 0 but got -0.5"),
    ("SGD", dict(nesterov=True), "nesterov: expected momentum > 0 and dampening 0"),
    ("SGD", dict(momentum=0.9, dampening=0.1, nesterov=True), "dampening 0.1"),
    ("Lion", dict(betas=(0.9, 1.5)), r"betas\[1\]: expected a number in \[0, 1\)"),
    ("AdamW", dict(lr="0.1"), "lr: expected a finite number >= 0 but got str"),
    ("AdamW", dict(amsgrad=1), "amsgrad: expected True or False but got int"),
])
def test_bad_hyper_parameters_name_the_argument(kind, options, message):
    with pytest.raises((ValueError, TypeError), match=message):
        getattr(optim, kind)([np.zeros(3)], **options)


def test_bad_groups_and_params():
    p = np.zeros(3)
    with pytest.raises(ValueError, match=r"param_groups\[1\].lr: expected a finite number >= 0 "
                                         r"but got -1.0"):
        optim.AdamW([{"params": [np.zeros(2)]}, {"params": [p], "lr": -1.0}])
    with pytest.raises(ValueError, match=r"param_groups\[0\]: unknown key 'weight_decy'"):
        optim.AdamW([{"params": [p], "weight_decy": 0.1}])
    with pytest.raises(ValueError, match=r"params\[1\]: the same array as params\[0\]"):
        optim.SGD([p, p])
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['params'\]\[0\]: the same array "
                                         r"as param_groups\[0\]\['params'\]\[0\]"):
        optim.SGD([{"params": [p]}, {"params": [p]}])
    with pytest.raises(TypeError, match=r"params\[0\]: expected dtype float32 or float64 but "
                                        r"got int64"):
        optim.SGD([np.zeros(3, dtype=np.int64)])
    with pytest.raises(ValueError, match="params: expected at least one parameter"):
        optim.SGD([])
    with pytest.raises(TypeError, match="params: expected a list"):
        optim.SGD(p)


@pytest.mark.parametrize("bad, error, message", [
    (lambda g: [g[0], g[1][:-1], g[2], g[3]], ValueError,
     r"grads\[1\]: expected shape \(97,\) \(the shape of parameter 1\) but got \(96,\)"),
    (lambda g: [g[0].astype(np.float32), *g[1:]], TypeError,
     r"grads\[0\]: expected dtype float64 \(the dtype of parameter 0\) but got float32"),
    (lambda g: g[:3], ValueError, "grads: expected 4 gradients .* but got 3"),
    (lambda g: [g[0].tolist(), *g[1:]], TypeError, r"grads\[0\]: expected a numpy.ndarray"),
    (lambda g: {"nope": g[0]}, TypeError, "grads: a dict needs every group to name"),
])
def test_bad_gradients_leave_parameters_and_state_untouched(bad, error, message):
    p0, grads = _stream("float64", steps=3, shapes=((7, 13), (97,), (3, 5, 11), (1,)))
    params = [p.copy() for p in p0]
    opt = optim.AdamW(params, lr=1e-2)
    opt.step([g[0] for g in grads])
    before = _snapshot(opt)
    # the last gradient is the bad one: nothing may change for the good ones before it either
    with pytest.raises(error, match=message):
        opt.step(bad([g[1] for g in grads]))
    assert _same(before, _snapshot(opt))


def test_a_nan_lr_set_between_steps_is_rejected_before_anything_changes():
    p0, grads = _stream("float64", steps=3)
    params = [p.copy() for p in p0]
    opt = optim.AdamW(_groups(params), lr=1e-2)
    opt.step({f"p{i}": g[0] for i, g in enumerate(grads)})
    before = _snapshot(opt)
    opt.param_groups[1]["lr"] = float("nan")                # as a broken schedule would
    with pytest.raises(ValueError, match=r"param_groups\[1\].lr: expected a finite number >= 0 "
                                         r"but got nan"):
        opt.step({f"p{i}": g[1] for i, g in enumerate(grads)})
    opt.param_groups[1]["lr"] = 3e-3
    assert _same(before, _snapshot(opt))


# --- state files ------------------------------------------------------------------------------

@pytest.mark.parametrize("config", ["adamw-amsgrad", "adam", "sgd-nesterov", "sgd-dampening",
                                    "lion"])
def test_resume_from_a_file_is_bit_for_bit_the_uninterrupted_run(config, tmp_path):
    kind, options = CONFIGS[config]
    p0, grads = _stream("float32", steps=1000)
    straight, straight_opt = _ours(kind, options, p0, grads)
    _, opt = _ours(kind, options, p0, grads, steps=500)
    checkpoint.save_state(tmp_path / "state.npz", optimizer=opt)
    with np.load(tmp_path / "state.npz", allow_pickle=False) as f:    # plain arrays only
        assert all(f[k].dtype != object for k in f.files)
    params = [p.copy() for p in p0]                          # a fresh run from the start values
    resumed = getattr(optim, kind)(_groups(params), **options)
    checkpoint.load_state(tmp_path / "state.npz", optimizer=resumed)
    for t in range(500, 1000):
        resumed.step({f"p{i}": g[t] for i, g in enumerate(grads)})
    assert all(np.array_equal(a, b) for a, b in zip(params, straight))
    assert _same(_snapshot(resumed), _snapshot(straight_opt))


def _saved(tmp_path, kind="AdamW", **options):
    p0, grads = _stream("float64", steps=5)
    _, opt = _ours(kind, dict(lr=1e-2, **options), p0, grads)
    path = tmp_path / "state.npz"
    checkpoint.save_state(path, optimizer=opt)
    return path, p0


def _rewrite(path, change):
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    change(arrays)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


@pytest.mark.parametrize("tamper, message", [
    (lambda a: a.update({"optimizer/param/1/exp_avg": a["optimizer/param/1/exp_avg"][..., :4]}),
     r"optimizer/param/1/exp_avg: expected shape \(3, 5, 11\) \(the shape of parameter 1\) "
     r"but got \(3, 5, 4\)"),
    (lambda a: a.pop("optimizer/param/1/exp_avg_sq"),
     "optimizer/param/1/exp_avg_sq: missing from the state"),
    (lambda a: a.update({"optimizer/param/0/extra": np.zeros(2)}),
     "optimizer/param/0/extra: unexpected in the state of AdamW"),
    (lambda a: a.update({"optimizer/param/3/value": a["optimizer/param/3/value"].astype(
        np.float32)}), r"optimizer/param/3/value: expected dtype float64"),
    (lambda a: a.update({"optimizer/param/0/step": np.array(-3)}),
     "optimizer/param/0/step: expected an int >= 0"),
    (lambda a: a.update({"optimizer/group/1/lr": np.array(-1.0)}),
     "optimizer/group/1/lr: expected a finite number >= 0 but got -1.0"),
    (lambda a: a.update({"optimizer/group/0/betas": np.array([0.9, 1.0])}),
     r"optimizer/group/0/betas\[1\]: expected a number in \[0, 1\)"),
    (lambda a: a.update({"optimizer/group/0/param_names": np.array(["q0", "p2"])}),
     r"optimizer/group/0/param_names: expected \['p0', 'p2'\] but got \['q0', 'p2'\]"),
    (lambda a: a.update({"optimizer/kind": np.array("SGD")}),
     "optimizer/kind: expected 'AdamW' but got 'SGD' \\(the state of another optimizer\\)"),
    (lambda a: a.update({"scheduler/last_step": np.array(3)}),
     "part 'scheduler' is in the file but not given"),
])
def test_a_tampered_file_is_rejected_and_changes_nothing(tmp_path, tamper, message):
    path, p0 = _saved(tmp_path)
    _rewrite(path, tamper)
    _, opt = _ours("AdamW", dict(lr=1e-2), p0, _stream("float64", steps=2, seed=9)[1])
    before = _snapshot(opt)
    with pytest.raises(ValueError, match=message):
        checkpoint.load_state(path, optimizer=opt)
    assert _same(before, _snapshot(opt))


def test_files_of_another_optimizer_or_parameter_set_or_truncated_are_rejected(tmp_path):
    path, p0 = _saved(tmp_path)
    _, opt = _ours("AdamW", dict(lr=1e-2), p0, _stream("float64", steps=2, seed=9)[1])
    before = _snapshot(opt)
    sgd = optim.SGD(_groups([p.copy() for p in p0]), momentum=0.9)
    with pytest.raises(ValueError, match="optimizer/kind: expected 'SGD' but got 'AdamW'"):
        checkpoint.load_state(path, optimizer=sgd)
    other = optim.AdamW([np.zeros((7, 13)), np.zeros(97)])
    with pytest.raises(ValueError, match="optimizer/groups: expected 1 parameter groups but "
                                         "got 2 \\(the state of another parameter set\\)"):
        checkpoint.load_state(path, optimizer=other)
    grown = [p.copy() for p in p0]
    grown[1] = np.zeros(98)
    with pytest.raises(ValueError, match=r"optimizer/param/2/value: expected shape \(98,\)"):
        checkpoint.load_state(path, optimizer=optim.AdamW(_groups(grown), lr=1e-2))
    amsgrad = optim.AdamW(_groups([p.copy() for p in p0]), lr=1e-2, amsgrad=True)
    checkpoint.load_state(path, optimizer=amsgrad)          # the file's amsgrad=False wins
    assert amsgrad.param_groups[0]["amsgrad"] is False
    data = path.read_bytes()
    for cut in (len(data) // 2, len(data) - 10, 10):
        (tmp_path / "cut.npz").write_bytes(data[:cut])
        with pytest.raises(ValueError, match="cut.npz: not a readable state file"):
            checkpoint.load_state(tmp_path / "cut.npz", optimizer=opt)
    np.save(tmp_path / "one.npy", np.zeros(3))
    with pytest.raises(ValueError, match="not an .npz archive"):
        checkpoint.load_state(tmp_path / "one.npy", optimizer=opt)
    with pytest.raises(ValueError, match="not a readable state file"):
        checkpoint.load_state(tmp_path / "missing.npz", optimizer=opt)
    assert _same(before, _snapshot(opt))


def test_a_bad_part_leaves_every_other_part_untouched(tmp_path):
    p0, grads = _stream("float64", steps=5)
    _, opt = _ours("AdamW", dict(lr=1e-2), p0, grads)
    scaler = grad_scaler.GradScaler(growth_interval=3)
    checkpoint.save_state(tmp_path / "run.npz", optimizer=opt, scaler=scaler)
    _rewrite(tmp_path / "run.npz", lambda a: a.update({"scaler/_growth_tracker": np.array(9)}))
    _, fresh = _ours("AdamW", dict(lr=1e-2), p0, grads, steps=1)
    before = _snapshot(fresh)
    with pytest.raises(ValueError, match="run.npz: scaler/_growth_tracker: expected an int in "
                                         r"\[0, growth_interval = 3\) but got 9"):
        checkpoint.load_state(tmp_path / "run.npz", optimizer=fresh,
                              scaler=grad_scaler.GradScaler())
    assert _same(before, _snapshot(fresh))


def test_an_object_array_is_not_unpickled(tmp_path):
    path, p0 = _saved(tmp_path)
    _rewrite(path, lambda a: a.update({"optimizer/kind": np.array([{"a": 1}], dtype=object)}))
    _, opt = _ours("AdamW", dict(lr=1e-2), p0, _stream("float64", steps=1)[1])
    with pytest.raises(ValueError, match="not a readable state file.*allow_pickle"):
        checkpoint.load_state(path, optimizer=opt)


# --- clipping -------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("norm_type", [2.0, float("inf"), 1.0])
def test_clip_grad_norm_equals_torch(norm_type, dtype):
    rng = np.random.default_rng(4)
    tol = 1e-12 if dtype == "float64" else 1e-6
    clipped = 0
    for _ in range(1000):
        scale = rng.choice([0.01, 1.0, 10.0])
        grads = [(scale * rng.standard_normal(s)).astype(dtype) for s in SHAPES]
        max_norm = float(rng.choice([0.5, 5.0, 50.0]))
        total_t, grads_t = torch_optim.clip_grad_norm([torch.from_numpy(g) for g in grads],
                                                      max_norm, norm_type)
        total = clip_grad.clip_grad_norm_(grads, max_norm, norm_type)
        assert total.dtype == np.dtype(dtype)
        assert abs(float(total) - float(total_t)) <= tol * float(total_t)
        assert max(_rel(g, t.numpy()) for g, t in zip(grads, grads_t)) <= tol
        clipped += float(total_t) > max_norm
    assert 100 < clipped < 900                             # both sides of max_norm were seen


def test_clip_then_adamw_trajectory_equals_torch():
    p0, grads = _stream("float64", steps=1000)
    params = [p.copy() for p in p0]
    opt = optim.AdamW(params, lr=1e-2)
    tensors = [torch.from_numpy(p.copy()) for p in p0]
    theirs = torch.optim.AdamW(tensors, lr=1e-2)
    for t in range(1000):
        g = [3 * x[t] for x in grads]
        clip_grad.clip_grad_norm_(g, 5.0)
        opt.step(g)
        for x, s in zip(tensors, grads):
            x.grad = torch.from_numpy(3 * s[t])
        torch.nn.utils.clip_grad_norm_(tensors, 5.0)
        theirs.step()
    assert max(_rel(p, t.numpy()) for p, t in zip(params, tensors)) <= 1e-12


def test_clip_nonfinite_norm():
    grads = [np.array([1.0, np.inf]), np.array([2.0])]
    before = [g.copy() for g in grads]
    with pytest.raises(ValueError, match="grads: the total norm of order 2.0 is inf, so it "
                                         "cannot be clipped"):
        clip_grad.clip_grad_norm_(grads, 1.0, error_if_nonfinite=True)
    assert all(np.array_equal(a, b) for a, b in zip(grads, before))
    with pytest.raises(RuntimeError, match="non-finite"):
        torch_optim.clip_grad_norm([torch.from_numpy(g) for g in grads], 1.0,
                                   error_if_nonfinite=True)
    # without the flag both scale by the non-finite coefficient (inf -> 0 and NaN)
    total_t, grads_t = torch_optim.clip_grad_norm([torch.from_numpy(g) for g in grads], 1.0)
    total = clip_grad.clip_grad_norm_(grads, 1.0)
    assert float(total) == float(total_t) == np.inf
    for g, t in zip(grads, grads_t):
        np.testing.assert_array_equal(g, t.numpy())


def test_clip_edge_cases_and_bad_input():
    assert clip_grad.clip_grad_norm_([None, None], 1.0) == 0.0
    g = [np.zeros(3)]
    assert clip_grad.clip_grad_norm_(g, 1.0) == 0.0 and not g[0].any()
    g = [np.ones(4)]
    assert clip_grad.clip_grad_norm_(g, 0.0) == 2.0 and not g[0].any()
    with pytest.raises(ValueError, match="max_norm: expected a finite number >= 0 but got -1.0"):
        clip_grad.clip_grad_norm_([np.ones(2)], -1.0)
    with pytest.raises(ValueError, match="norm_type: expected a number > 0 or inf but got 0"):
        clip_grad.clip_grad_norm_([np.ones(2)], 1.0, norm_type=0)
    with pytest.raises(TypeError, match=r"grads\[1\]: expected dtype float64 \(the dtype of "
                                        r"grads\[0\]\) but got float32"):
        clip_grad.clip_grad_norm_([np.ones(2), np.ones(2, np.float32)], 1.0)


# --- the bench, at a tiny size --------------------------------------------------------------

def test_bench_optim_tables(tmp_path):
    path = tmp_path / "bench.json"
    assert main(["bench", "optim", "--params", "20000", "--arrays", "10", "--repeats", "2",
                 "--warmup", "0", "--min-time", "0", "--json", str(path)]) == 0
    tables = json.loads(path.read_text())["tables"]
    assert list(tables) == ["ratios", "timings", "state"]
    sides = [r["side"] for r in tables["timings"]]
    assert sides == ["numpy AdamW", "torch AdamW(foreach=True)",
                     "torch AdamW (CPU default, per-tensor)"]
    medians = {r["side"]: r["median s"] for r in tables["timings"]}
    headline, default = tables["ratios"]
    assert headline["peer"] == "torch AdamW(foreach=True)" and headline["target"] == "<= 1.5"
    assert headline["ratio"] == pytest.approx(medians["numpy AdamW"] / medians[headline["peer"]])
    assert default["ratio"] == pytest.approx(medians["numpy AdamW"] / medians[default["peer"]])
    n = tables["timings"][0]["params"]
    ours, theirs = tables["state"]
    assert ours["state bytes"] == 2 * 4 * n + 8 * 10           # two float32 moments, int64 steps
    assert theirs["state bytes"] == 2 * 4 * n + 4 * 10         # and torch's float32 step tensors
