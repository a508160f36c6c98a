"""``crosscheck train`` and ``crosscheck generate``: the NumPy model on text, end to end.

    crosscheck train [--data FILE] --config tiny-llama|tiny-gpt2 [--steps N] --out DIR
                     [--batch-size B] [--context T] [--lr LR] [--vocab-size V] [--seed S]
                     [--eval-every K] [--checkpoint-every K] [--dtype D] [--threads N]
                     [--resume] [--prompt TEXT] [--sample-tokens N]
    crosscheck generate --model DIR --prompt TEXT [--max-new-tokens N] [--temperature T]
                        [--top-k K] [--top-p P] [--repetition-penalty R] [--seed S] [--dtype D]

``train`` reads ``--data`` (default: the excerpt shipped with the package, eight Shakespeare
plays) and holds out its last work (split by the corpus's "by William Shakespeare" titles) or,
for a text without such titles, its last tenth. It trains a byte-level BPE tokenizer of
``--vocab-size`` tokens on the training part (``ref_numpy.bpe_train``), saves it into DIR
(``tokenizer.bpe``, and ``tokenizer.json`` for Hugging Face's ``tokenizers``), trains the model
with a progress bar showing the loss and tokens/s, evaluates the held-out text every
``--eval-every`` steps, and writes DIR as a checkpoint (``ref_numpy.train``), ``loss.png``
(train and held-out loss against the step, with the unigram baseline) and a sample of text.
``--resume`` continues the run in DIR up to ``--steps``.

``generate`` loads DIR (any checkpoint in the Hugging Face format, with a ``tokenizer.bpe`` or
``tokenizer.json`` beside it) and prints the continuation of ``--prompt`` token by token as it
is produced. Bad input prints one line naming the problem and exits with status 2.
"""
from __future__ import annotations

import argparse
import codecs
import dataclasses
import sys
from importlib import resources
import time
from pathlib import Path

import numpy as np

TOKENIZER = "tokenizer.bpe"
TOKENIZER_JSON = "tokenizer.json"
PLOT = "loss.png"
EXCERPT = ("corpus", "excerpt.txt")      # package data of ref_numpy


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1 but got {text!r}")
    return int(text)


def _nonneg(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected an int >= 0 but got {text!r}")
    return int(text)


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from ref_numpy.model import CONFIGS
    from ref_numpy.train import TrainConfig
    d = TrainConfig()
    parser.add_argument("--data", metavar="FILE",
                        help="UTF-8 training text (default: the shipped Shakespeare excerpt)")
    parser.add_argument("--config", choices=list(CONFIGS), default="tiny-llama",
                        help="the model (default tiny-llama)")
    parser.add_argument("--steps", type=_positive, default=d.steps,
                        help=f"optimizer steps (default {d.steps})")
    parser.add_argument("--out", required=True, metavar="DIR",
                        help="checkpoint directory: model, optimizer, tokenizer, loss.png")
    parser.add_argument("--batch-size", type=_positive, default=d.batch_size)
    parser.add_argument("--context", type=_positive, default=d.context,
                        help=f"tokens per window (default {d.context})")
    parser.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate "
                                                               f"(default {d.lr})")
    parser.add_argument("--vocab-size", type=_positive, default=512,
                        help="BPE tokens: 256 bytes + merges (default 512)")
    parser.add_argument("--seed", type=_nonneg, default=d.seed)
    parser.add_argument("--eval-every", type=_positive, default=d.eval_every)
    parser.add_argument("--checkpoint-every", type=_nonneg, default=d.checkpoint_every,
                        help="gradient checkpointing: recompute every k-th block (0: none)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--threads", type=_positive, metavar="N",
                        help="BLAS threads (default: the library's own; 1 on a busy machine)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out")
    parser.add_argument("--prompt", default="ROMEO:", help="the sample's prompt")
    parser.add_argument("--sample-tokens", type=_nonneg, default=200)


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="DIR", help="a checkpoint directory")
    parser.add_argument("--prompt", required=True, help="the text to continue")
    parser.add_argument("--max-new-tokens", type=_nonneg, default=100)
    parser.add_argument("--temperature", type=float, default=0.8,
                        help="0 is greedy (default 0.8)")
    parser.add_argument("--top-k", type=_positive)
    parser.add_argument("--top-p", type=float, help="nucleus sampling mass, in (0, 1]")
    parser.add_argument("--repetition-penalty", type=float, default=1.0)
    parser.add_argument("--seed", type=_nonneg, default=0)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")


# ----------------------------------------------------------------------------- helpers

def read_text(path: str | None) -> str:
    """The training text: the file, or the shipped excerpt (``ref_numpy/corpus/excerpt.txt``,
    eight public-domain Shakespeare plays; its README names the source)."""
    if path is None:
        return resources.files("ref_numpy").joinpath(*EXCERPT).read_text(encoding="utf-8")
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"--data: cannot read {path!r} as UTF-8 text ({exc})") from exc


def split_text(text: str) -> tuple[str, str]:
    """(train, held-out): the last work held out when the text has several, else the last
    tenth (cut at a line break)."""
    from ref_numpy import data
    if len(data.works(text)) >= 2:
        return data.held_out_split(text, 1)
    cut = text.rfind("\n", 0, int(0.9 * len(text))) + 1 or int(0.9 * len(text))
    return text[:cut], text[cut:]


def load_tokenizer(directory: Path, flag: str = "--model"):
    from ref_numpy import bpe_interop, bpe_io
    if (directory / TOKENIZER).is_file():
        return bpe_io.load(directory / TOKENIZER)
    if (directory / TOKENIZER_JSON).is_file():
        return bpe_interop.load_tokenizer_json(directory / TOKENIZER_JSON)
    raise ValueError(f"{flag}: {directory} has neither {TOKENIZER} nor {TOKENIZER_JSON}")


def plot_losses(path: Path, history: dict, baseline: float) -> None:
    from equivalence.bench.common import save_plot

    def draw(ax):
        steps, loss = np.array(history["step"]), np.array(history["loss"])
        ax.plot(steps, loss, lw=0.8, alpha=0.5, label="train (each step)")
        if len(loss) >= 20:
            k = 20
            ax.plot(steps[k - 1:], np.convolve(loss, np.ones(k) / k, "valid"), lw=1.5,
                    label=f"train ({k}-step mean)")
        ax.plot(history["eval_step"], history["eval_loss"], "o-", label="held-out")
        ax.axhline(baseline, ls="--", c="gray", label=f"unigram baseline {baseline:.2f}")
        ax.set_xlabel("step")
        ax.set_ylabel("cross-entropy (nats / token)")
        ax.legend()
    save_plot(str(path), draw, "train and held-out loss", size=(7.0, 4.5))


def stream_printer(tok):
    """on_token(row, id) that prints each token's text as soon as its bytes are valid UTF-8."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def on_token(row, token_id):
        sys.stdout.write(decoder.decode(tok.decode_bytes([token_id])))
        sys.stdout.flush()
    return on_token


# ----------------------------------------------------------------------------- train

def train_main(args) -> int:
    from ref_numpy.malloc import keep_freed_memory
    keep_freed_memory()          # each step reuses the memory the last one freed (no page faults)
    try:
        if args.threads is None:
            return _train(args)
        from threadpoolctl import threadpool_limits
        with threadpool_limits(args.threads):
            return _train(args)
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"train: {exc}", file=sys.stderr)
        return 2


def _train(args) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, \
        TimeElapsedColumn, TimeRemainingColumn

    from ref_numpy import bpe_interop, bpe_io, bpe_train, generate, model, train

    console = Console(stderr=True)
    out = Path(args.out)
    train_text, heldout_text = split_text(read_text(args.data))
    if args.resume:
        tok = load_tokenizer(out, "--out")
    else:
        tok = bpe_train.train(train_text, args.vocab_size)
        out.mkdir(parents=True, exist_ok=True)
        bpe_io.save(tok, out / TOKENIZER)
        bpe_interop.save_tokenizer_json(tok, out / TOKENIZER_JSON)
    train_ids = np.array(tok.encode_ordinary(train_text), dtype=np.int64)
    heldout_ids = np.array(tok.encode_ordinary(heldout_text), dtype=np.int64)
    if args.resume:
        trainer = train.Trainer.load(out, train_ids, steps=args.steps)
    else:
        config = dataclasses.replace(model.CONFIGS[args.config], vocab_size=tok.vocab_size,
                                     max_seq_len=max(args.context,
                                                     model.CONFIGS[args.config].max_seq_len))
        tc = train.TrainConfig(steps=args.steps, batch_size=args.batch_size,
                               context=args.context, lr=args.lr, seed=args.seed,
                               eval_every=args.eval_every,
                               checkpoint_every=args.checkpoint_every,
                               warmup=min(train.TrainConfig.warmup, args.steps - 1))
        trainer = train.Trainer.create(config, tc, train_ids, np.dtype(args.dtype))
    baseline = train.unigram_loss(train_ids, heldout_ids, tok.vocab_size)
    console.print(f"{args.config}: {model.param_count(trainer.config):,} parameters, "
                  f"{len(train_ids):,} training and {len(heldout_ids):,} held-out tokens, "
                  f"unigram baseline {baseline:.3f} nats/token", highlight=False, soft_wrap=True)
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[rate]} tok/s"),
               TextColumn("held-out {task.fields[heldout]}"), TimeElapsedColumn(),
               TimeRemainingColumn())
    t0 = time.perf_counter()
    done_before = trainer.step_count
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("train", total=trainer.train.steps,
                                 completed=trainer.step_count, loss="-", rate="-", heldout="-")
        while not trainer.done():
            loss, _ = trainer.step()
            rate = ((trainer.step_count - done_before) * trainer.tokens_per_step()
                    / (time.perf_counter() - t0))
            fields = {"loss": f"{loss:.3f}", "rate": f"{rate:,.0f}"}
            if trainer.step_count % trainer.train.eval_every == 0 or trainer.done():
                trainer.record_eval(trainer.evaluate(heldout_ids))
                fields["heldout"] = f"{trainer.history['eval_loss'][-1]:.3f}"
            progress.update(task, completed=trainer.step_count, **fields)
    seconds = time.perf_counter() - t0
    trainer.save(out)
    plot_losses(out / PLOT, trainer.history, baseline)
    recent = trainer.history["loss"][-20:]
    console.print(f"{trainer.step_count} steps in {seconds:.1f} s; train loss "
                  f"{np.mean(recent):.3f} (last {len(recent)} steps), held-out "
                  f"{trainer.history['eval_loss'][-1]:.3f}, unigram baseline {baseline:.3f}; "
                  f"wrote {out} and {out / PLOT}", highlight=False, soft_wrap=True)
    prompt = tok.encode_ordinary(args.prompt)
    n = args.sample_tokens
    if trainer.config.family == "gpt2":   # learned positions: the sample ends at the table's end
        n = min(n, max(0, trainer.config.max_seq_len - len(prompt)))
    print(f"--- sample ({n} tokens after the prompt {args.prompt!r}, temperature 0.8, "
          f"top-p 0.95) ---")
    print(args.prompt, end="")
    generate.generate(trainer.params, trainer.config, [prompt], n,
                      sampling=generate.Sampling(0.8, top_p=0.95), seed=args.seed,
                      on_token=stream_printer(tok))
    print()
    return 0


# ----------------------------------------------------------------------------- generate

def generate_main(args) -> int:
    from ref_numpy import generate, hf_checkpoint
    from ref_numpy.malloc import keep_freed_memory
    keep_freed_memory()
    try:
        directory = Path(args.model)
        params, config = hf_checkpoint.load_pretrained(directory, np.dtype(args.dtype))
        tok = load_tokenizer(directory)
        sampling = generate.Sampling(args.temperature, args.top_k, args.top_p,
                                     args.repetition_penalty)
        prompt = tok.encode_ordinary(args.prompt)
        print(args.prompt, end="", flush=True)
        generate.generate(params, config, [prompt], args.max_new_tokens, sampling=sampling,
                          seed=args.seed, on_token=stream_printer(tok))
    except (ValueError, TypeError, FileNotFoundError) as exc:
        print(f"\ngenerate: {exc}", file=sys.stderr)
        return 2
    print()
    return 0
