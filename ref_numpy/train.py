"""Training ``ref_numpy.model`` with the package's AdamW, clipping and schedule; checkpoints.

One step (``Trainer.step``), on batch ``step`` of ``ref_numpy.data.Batches`` (a pure function of
the seed and the step, so a resumed run needs no replay):

    loss, grads = model_forward / model_backward(1)       on x, y (B, T)
    clip_grad_norm_(grads, clip)                          the global L2 norm, as torch
    AdamW.step(grads)                                     decay on matrices only (decay_groups)
    Scheduler.step()                                      warmup then cosine to min_lr_ratio

A checkpoint is a directory:

    config.json, model.safetensors    the model, Hugging Face's format (``hf_checkpoint``)
    optimizer.safetensors             AdamW's and the scheduler's state (:func:`save_state`)
    trainer.json                      the step reached, the TrainConfig, the loss history

Every number is stored exactly, so ``Trainer.load`` followed by more steps continues the
uninterrupted run bit for bit. The optimizer's state is the flat dict of arrays of its
``state_arrays()`` (moments, step counts, hyper-parameters, a copy of the weights), each stored
under "<part>/<key>" ("optimizer/param/3/exp_avg", "scheduler/last_step"); numbers and bools are
tensors, and the few strings (the optimizer's kind, the parameter names of each group) go into
the file's metadata as JSON. Loading checks every part before it changes any, so a file from
another run or model leaves the trainer as it was.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ref_numpy import clip_grad, hf_checkpoint, schedule
from ref_numpy import model as model_mod
from ref_numpy.data import Batches
from ref_numpy.optim import AdamW, decay_groups

STATE = "optimizer.safetensors"
TRAINER = "trainer.json"
STATE_FORMAT = "crosscheck-train-state-1"      # the metadata key "format" of a state file


def save_state(path, **parts) -> None:
    """Write every part's ``state_arrays()`` under "<name>/<key>" into a safetensors file."""
    tensors, meta = {}, {"format": STATE_FORMAT}
    for name, part in parts.items():
        for key, a in part.state_arrays().items():
            if a.dtype.kind == "U":
                meta[f"{name}/{key}"] = json.dumps(a.tolist())
            else:
                tensors[f"{name}/{key}"] = a
    hf_checkpoint.write_safetensors(path, tensors, meta)


def load_state(path, **parts) -> None:
    """Load :func:`save_state`'s file into the named parts: all of them, or none (every part
    checks its arrays before any changes)."""
    tensors, meta = hf_checkpoint.read_safetensors(path)
    if meta.get("format") != STATE_FORMAT:
        raise ValueError(f"{path}: metadata 'format': expected {STATE_FORMAT!r} but got "
                         f"{meta.get('format')!r} (not a training-state file)")
    arrays = dict(tensors)
    for key, text in meta.items():
        if key != "format":
            try:
                arrays[key] = np.array(json.loads(text), dtype=str)
            except ValueError as exc:
                raise ValueError(f"{path}: metadata {key!r}: not a JSON string or list of "
                                 f"strings ({exc})") from exc
    by_part = {name: {} for name in parts}
    for key, a in arrays.items():
        name, _, rest = key.partition("/")
        if name not in by_part:
            raise ValueError(f"{path}: {key}: part {name!r} is not one of {sorted(parts)}")
        by_part[name][rest] = a
    apply = []
    for name, part in parts.items():
        try:
            apply.append(part.prepare_load(by_part[name]))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: {name}/{exc}") from exc
    for fn in apply:
        fn()


@dataclass(frozen=True)
class TrainConfig:
    """How to train; each field says why it is there."""
    steps: int = 300                 # optimizer steps in all (tiny models: < 5 min on 2 cores)
    batch_size: int = 16             # B windows per step
    context: int = 128               # T tokens per window (at most the model's max_seq_len)
    lr: float = 3e-3                 # peak learning rate (tiny models take a large one)
    min_lr_ratio: float = 0.1        # the cosine ends at lr times this
    warmup: int = 30                 # linear warmup steps from 0
    weight_decay: float = 0.1        # AdamW's decoupled decay of the weight matrices
    betas: tuple = (0.9, 0.95)       # AdamW's moment decays (GPT-3's β2 for short runs)
    eps: float = 1e-8                # AdamW's denominator floor
    clip: float = 1.0                # largest global gradient norm kept
    seed: int = 0                    # draws the init and the batches
    eval_every: int = 50             # steps between held-out evaluations
    eval_batches: int = 4            # batches averaged per held-out evaluation
    checkpoint_every: int = 0        # recompute every k-th block's activations; 0: store all

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "betas": list(self.betas)}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = [f.name for f in dataclasses.fields(cls)]
        for key in d:
            if key not in known:
                raise ValueError(f"train config: unknown key {key!r}; expected keys among {known}")
        return cls(**{**d, "betas": tuple(d.get("betas", cls.betas))})


def unigram_loss(train_tokens: np.ndarray, eval_tokens: np.ndarray, vocab_size: int) -> float:
    """Cross-entropy (nats per token) of ``eval_tokens`` under the unigram frequencies of
    ``train_tokens``, add-one smoothed: the loss of a model that ignores context."""
    counts = np.bincount(train_tokens, minlength=vocab_size) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[eval_tokens].mean())


@dataclass
class Trainer:
    """The model, its optimizer and schedule, the data, and where the run is."""
    params: dict
    config: model_mod.ModelConfig
    train: TrainConfig
    tokens: np.ndarray                       # (N,) the training token ids
    step_count: int = 0
    history: dict = field(default_factory=lambda: {"step": [], "loss": [], "eval_step": [],
                                                   "eval_loss": []})

    def __post_init__(self):
        if self.train.context > self.config.max_seq_len:
            raise ValueError(f"context: {self.train.context} tokens exceed the model's "
                             f"max_seq_len = {self.config.max_seq_len}")
        self.optimizer = AdamW(decay_groups(self.params, self.train.weight_decay),
                               lr=self.train.lr, betas=self.train.betas, eps=self.train.eps)
        tc = self.train
        self.scheduler = schedule.Scheduler(self.optimizer, lambda t: schedule.warmup_cosine(
            t, warmup=tc.warmup, total=tc.steps, min_ratio=tc.min_lr_ratio))
        self.batches = Batches(self.tokens, tc.batch_size, tc.context, seed=tc.seed)

    @classmethod
    def create(cls, config: model_mod.ModelConfig, train: TrainConfig, tokens: np.ndarray,
               dtype=np.float32) -> "Trainer":
        """A fresh run: parameters from ``init_params(config, train.seed, dtype)``."""
        return cls(model_mod.init_params(config, train.seed, dtype), config, train, tokens)

    def loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> tuple[float, dict]:
        out, cache = model_mod.model_forward(self.params, self.config, x, y,
                                             checkpoint_every=self.train.checkpoint_every)
        return float(out.loss), model_mod.model_backward(1.0, cache)

    def step(self) -> tuple[float, float]:
        """One optimizer step on batch ``step_count``; returns (loss, gradient norm)."""
        x, y = self.batches.sample(self.step_count)
        loss, grads = self.loss_and_grads(x, y)
        grads = [grads[n] for g in self.optimizer.param_groups for n in g["param_names"]]
        norm = float(clip_grad.clip_grad_norm_(grads, self.train.clip))
        self.optimizer.step(grads)
        self.scheduler.step()
        self.step_count += 1
        self.history["step"].append(self.step_count)
        self.history["loss"].append(loss)
        return loss, norm

    def evaluate(self, tokens: np.ndarray) -> float:
        """Mean loss over ``eval_batches`` fixed random batches of ``tokens``."""
        tc = self.train
        context = min(tc.context, len(tokens) - 1)
        batches = Batches(tokens, tc.batch_size, context, seed=tc.seed + 1)
        losses = []
        for i in range(tc.eval_batches):
            x, y = batches.sample(i)
            out, _ = model_mod.model_forward(self.params, self.config, x, y)
            losses.append(float(out.loss))
        return float(np.mean(losses))

    def record_eval(self, loss: float) -> None:
        self.history["eval_step"].append(self.step_count)
        self.history["eval_loss"].append(loss)

    def save(self, directory) -> None:
        """Model, optimizer and schedule (safetensors files), and trainer.json."""
        directory = Path(directory)
        hf_checkpoint.save_pretrained(directory, self.params, self.config)
        save_state(directory / STATE, optimizer=self.optimizer, scheduler=self.scheduler)
        state = {"step": self.step_count, "dtype": str(next(iter(self.params.values())).dtype),
                 "train": self.train.to_dict(), "history": self.history}
        (directory / TRAINER).write_text(json.dumps(state, indent=1) + "\n")

    @classmethod
    def load(cls, directory, tokens: np.ndarray, *, steps: int | None = None) -> "Trainer":
        """Resume from :meth:`save`'s directory; ``steps`` raises the total (the schedule's
        length stays the one the run started with)."""
        directory = Path(directory)
        state = json.loads((directory / TRAINER).read_text())
        params, config = hf_checkpoint.load_pretrained(directory, dtype=np.dtype(state["dtype"]))
        train = TrainConfig.from_dict(state["train"])
        trainer = cls(params, config, train, tokens, state["step"], state["history"])
        load_state(directory / STATE, optimizer=trainer.optimizer, scheduler=trainer.scheduler)
        if steps is not None:
            trainer.train = dataclasses.replace(train, steps=steps)
        return trainer

    def tokens_per_step(self) -> int:
        return self.train.batch_size * self.train.context

    def done(self) -> bool:
        return self.step_count >= self.train.steps

