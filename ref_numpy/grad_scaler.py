"""Dynamic loss scaling with the semantics of ``torch.amp.GradScaler``.

Micikevicius et al. 2018, "Mixed Precision Training" (ICLR, arXiv:1710.03740), Section 3.2, with
torch's dynamic rule. The loss (so every gradient) is multiplied by a scale S; then, per step:

    found_inf ← any gradient element is inf or NaN
    g ← g · (1 / S)                               unscale, with 1 / S formed in float64, kept as
                                                  float32 (torch's inv_scale)
    step the optimizer                            only when not found_inf (else skip the step)
    S ← S · backoff,  k ← 0                       after a skipped step
    k ← k + 1                                     after a taken step; and once k = interval:
    S ← S · growth,  k ← 0                        (S kept only while it stays finite)

S is a float32 (as torch's scale tensor), each product formed in float64 and rounded to float32;
k is the growth tracker. The usual loop (one optimizer)::

    grads = backward(scaler.scale(loss))           # gradients of the scaled loss
    scaler.step(opt, grads)                        # unscales, steps unless inf/NaN was found
    scaler.update()
"""
from __future__ import annotations

import numpy as np

from ref_numpy._check import check_positive_int
from ref_numpy.optimizer import check_flag, check_number

READY, UNSCALED, STEPPED = "ready", "unscaled", "stepped"


def _float32_scale(name: str, value, *, positive: bool) -> np.float32:
    """A scale that float32 holds: > 0 (``positive``) or >= 0."""
    value = check_number(name, value)
    with np.errstate(over="ignore"):
        scale = np.float32(value)
    if not np.isfinite(scale) or (positive and not scale > 0):
        raise ValueError(f"{name}: expected a number {'>' if positive else '>='} 0 that float32 "
                         f"holds but got {value!r}")
    return scale


class GradScaler:
    """Loss scale, growth tracker and the per-optimizer stage of one iteration.

    Defaults as torch's: init_scale 2**16, growth_factor 2, backoff_factor 0.5,
    growth_interval 2000. With ``enabled=False`` every method is a pass-through.
    """

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000,
                 enabled: bool = True):
        self.enabled = check_flag("enabled", enabled)
        self._scale = _float32_scale("init_scale", init_scale, positive=True)
        growth_factor = check_number("growth_factor", growth_factor)
        if not growth_factor > 1:
            raise ValueError(f"growth_factor: expected a number > 1 but got {growth_factor!r}")
        self.growth_factor = growth_factor
        self.backoff_factor = check_number("backoff_factor", backoff_factor, high=1.0)
        if not self.backoff_factor > 0:
            raise ValueError(f"backoff_factor: expected a number in (0, 1) but got "
                             f"{backoff_factor!r}")
        self.growth_interval = check_positive_int("growth_interval", growth_interval)
        self._growth_tracker = 0
        self._stages: dict[int, list] = {}            # id(optimizer) -> [stage, found_inf]

    def get_scale(self) -> float:
        return float(self._scale) if self.enabled else 1.0

    def scale(self, x: np.ndarray) -> np.ndarray:
        """x · S (a float32 S, as torch's: float64 arrays stay float64)."""
        if not self.enabled:
            return x
        with np.errstate(over="ignore"):              # an overflow to inf is what step() finds
            return x * self._scale

    def _stage(self, optimizer) -> list:
        return self._stages.setdefault(id(optimizer), [READY, False])

    def unscale_(self, optimizer, grads) -> bool:
        """g ← g / S in place for this step's gradients; True when any holds inf or NaN."""
        if not self.enabled:
            return False
        grads = optimizer._check_grads(grads)
        stage = self._stage(optimizer)
        if stage[0] == UNSCALED:
            raise RuntimeError("unscale_: already called for this optimizer since the last "
                               "update()")
        if stage[0] == STEPPED:
            raise RuntimeError("unscale_: called after step(); call update() first")
        # 1 / S in float64, kept as float32
        inv_scale = np.float32(1.0 / np.float64(self._scale))
        found_inf = False
        for g in grads:
            if g is None:
                continue
            # found_inf ← found_inf or any(g is inf or NaN)
            found_inf = found_inf or not np.isfinite(g).all()
            if inv_scale != 1:
                # g ← g · (1 / S)
                g *= inv_scale
        stage[:] = [UNSCALED, found_inf]
        return found_inf

    def step(self, optimizer, grads) -> bool:
        """Unscale (unless :meth:`unscale_` ran), then ``optimizer.step(grads)`` unless inf/NaN
        was found; True when the step was taken."""
        if not self.enabled:
            optimizer.step(grads)
            return True
        if self._stage(optimizer)[0] == STEPPED:
            raise RuntimeError("step: already called for this optimizer since the last "
                               "update()")
        if self._stage(optimizer)[0] == READY:
            self.unscale_(optimizer, grads)
        stage = self._stage(optimizer)
        taken = not stage[1]
        if taken:
            optimizer.step(grads)
        stage[0] = STEPPED
        return taken

    def update(self, new_scale: float | None = None) -> None:
        """Back off after a skipped step, grow after ``growth_interval`` taken ones in a row."""
        if not self.enabled:
            return
        if new_scale is not None:
            self._scale = np.float32(check_number("new_scale", new_scale))
        else:
            if not self._stages:
                raise RuntimeError("update: no inf checks were recorded; call step() (or "
                                   "unscale_()) first")
            if any(found for _, found in self._stages.values()):
                # S ← S · backoff, k ← 0
                self._scale = np.float32(float(self._scale) * self.backoff_factor)
                self._growth_tracker = 0
            elif self._growth_tracker + 1 == self.growth_interval:
                # S ← S · growth (if finite), k ← 0
                with np.errstate(over="ignore"):
                    grown = np.float32(float(self._scale) * self.growth_factor)
                if np.isfinite(grown):
                    self._scale = grown
                self._growth_tracker = 0
            else:
                # k ← k + 1
                self._growth_tracker += 1
        self._stages = {}

    # --- state ---

    def state_dict(self) -> dict:
        """torch's five entries (an empty dict when disabled)."""
        if not self.enabled:
            return {}
        return {"scale": float(self._scale), "growth_factor": self.growth_factor,
                "backoff_factor": self.backoff_factor, "growth_interval": self.growth_interval,
                "_growth_tracker": self._growth_tracker}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict` (torch's keys); checks every entry before changing any."""
        if not self.enabled:
            raise RuntimeError("load_state_dict: this scaler is disabled")
        if not state:
            raise RuntimeError("load_state_dict: the state is empty (it came from a disabled "
                               "scaler)")
        keys = ("scale", "growth_factor", "backoff_factor", "growth_interval",
                "_growth_tracker")
        if set(state) != set(keys):
            key = sorted(set(keys) ^ set(state))[0]
            raise ValueError(f"{key}: {'missing from' if key in keys else 'unexpected in'} "
                             f"the state of a GradScaler")
        values = {k: (v.item() if isinstance(v, np.ndarray) and v.ndim == 0 else v)
                  for k, v in state.items()}
        checked = GradScaler(1.0, values["growth_factor"], values["backoff_factor"],
                             values["growth_interval"])
        # backoffs may have taken the scale down to 0 (torch keeps such a state too)
        checked._scale = _float32_scale("scale", values["scale"], positive=False)
        tracker = values["_growth_tracker"]
        if (isinstance(tracker, bool) or not isinstance(tracker, (int, np.integer))
                or not 0 <= tracker < checked.growth_interval):
            raise ValueError(f"_growth_tracker: expected an int in [0, growth_interval = "
                             f"{checked.growth_interval}) but got {tracker!r}")
        self._scale = checked._scale
        self.growth_factor, self.backoff_factor = checked.growth_factor, checked.backoff_factor
        self.growth_interval, self._growth_tracker = checked.growth_interval, int(tracker)

    def state_arrays(self) -> dict[str, np.ndarray]:
        """:meth:`state_dict` as arrays, for :mod:`ref_numpy.checkpoint`."""
        d = self.state_dict()
        return {"kind": np.array("GradScaler"), "scale": np.array(self._scale),
                **{k: np.array(v) for k, v in d.items() if k != "scale"}}

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        self.prepare_load(arrays)()

    def prepare_load(self, arrays: dict[str, np.ndarray]):
        """Check ``arrays`` and return the function that applies them."""
        a = dict(arrays)
        kind = a.pop("kind", None)
        if kind is None or kind.shape != () or str(kind) != "GradScaler":
            raise ValueError(f"kind: expected 'GradScaler' but got {kind!r}")
        scale = a.get("scale")
        if scale is not None and (scale.shape != () or scale.dtype != np.float32):
            raise ValueError(f"scale: expected a float32 scalar but got {scale!r}")
        probe = GradScaler()
        probe.load_state_dict(a)                      # checks every entry, changes nothing here

        def apply() -> None:
            self.load_state_dict(probe.state_dict())
        return apply
