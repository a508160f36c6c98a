"""Hugging Face checkpoint directories: safetensors files and config.json, read and written.

A directory holds ``config.json`` and either ``model.safetensors`` or shards listed by
``model.safetensors.index.json`` ({"metadata": ..., "weight_map": {tensor: shard file}}), as
transformers' ``save_pretrained`` writes them.

safetensors (github.com/huggingface/safetensors, the format's README), read and written here
with NumPy alone:

    8 bytes     N, the header's length, unsigned little-endian
    N bytes     a JSON object {name: {"dtype": "F32", "shape": [...], "data_offsets": [b, e]}},
                optionally "__metadata__": {str: str}; padded with spaces
    the rest    the tensors' bytes, little-endian, C order; tensor "name" is bytes [b, e) of it

The offsets must tile the data exactly: no gap, no overlap, nothing after the last tensor
(safetensors checks the same). A file that breaks any rule is a ValueError naming the file and
the tensor. BF16 tensors are read into float32 (each is the upper half of a float32).

config.json is read as transformers writes it, the 4.x spelling (``rope_theta``,
``rope_scaling``, ``torch_dtype``) and the 5.x one (``rope_parameters``, ``dtype``), for
``model_type`` "llama" and "gpt2". Every key is either read, checked against the one value this
model implements (``hidden_act`` "silu", ``attention_bias`` false, ...), or known to change
nothing about the forward (token ids, dropout rates, which are training-time only, metadata); an
unknown key is an error naming it, so a feature this model lacks cannot be ignored silently.
A model with no Hugging Face counterpart (post-norm blocks, a mixture of experts) is written with
``model_type`` "crosscheck" and its ``ModelConfig`` fields, which transformers refuses rather
than misreads.

Weights: Hugging Face's names are the parameter names of ``ref_numpy.model``. GPT-2's Conv1D
weights are stored (C_in, C_out), as here; Llama's nn.Linear weights are stored (C_out, C_in)
and are transposed on the way in and out. Every tensor the config expects must be present with
its shape; an unexpected tensor is an error too, except the non-parameter buffers older files
carry (GPT-2's ``attn.bias`` / ``attn.masked_bias`` causal masks, ``rotary_emb.inv_freq``). The
whole checkpoint is read and checked before anything is returned, so nothing is half-loaded.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from ref_numpy.model import ModelConfig, check_params, param_shapes

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
MAX_HEADER = 100 * 2 ** 20            # safetensors' own limit on the header's size
DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2", "I64": "<i8", "I32": "<i4",
          "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?"}
CODES = {np.dtype(v): k for k, v in DTYPES.items() if k != "BF16"}


# ----------------------------------------------------------------------------------------------
# safetensors


def write_safetensors(path, tensors: dict[str, np.ndarray], metadata: dict | None = None) -> None:
    """Write ``tensors`` (name -> array of a dtype in ``DTYPES``) to a safetensors file."""
    header, offset, blobs = {}, 0, []
    if metadata is not None:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("metadata: expected a dict of str to str")
        header["__metadata__"] = dict(metadata)
    for name, a in tensors.items():
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name}: expected a numpy.ndarray but got {type(a).__name__}")
        a = a.astype(a.dtype.newbyteorder("<"), order="C", copy=False)  # (0-d stays 0-d)
        if a.dtype not in CODES:
            raise TypeError(f"{name}: dtype {a.dtype} has no safetensors code "
                            f"(expected one of {sorted(map(str, CODES))})")
        header[name] = {"dtype": CODES[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        blobs.append(a)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)                      # the data starts 8-byte aligned
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        for a in blobs:
            f.write(a.tobytes())
    os.replace(tmp, path)


def read_safetensors(path) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(tensors, metadata) of a safetensors file, every rule of the format checked."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError(f"{path}: {size} bytes, too short for the 8-byte header length")
        n = int.from_bytes(raw, "little")
        if n > min(MAX_HEADER, size - 8):
            raise ValueError(f"{path}: header length {n} exceeds the file's {size - 8} bytes "
                             f"after the length (or safetensors' limit of {MAX_HEADER})")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: the header is not JSON ({exc})") from exc
        data = np.frombuffer(f.read(), dtype=np.uint8)
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    spans, tensors = [], {}
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise ValueError(f"{path}: tensor {name!r}: expected the keys dtype, shape and "
                             f"data_offsets but got {entry!r}")
        dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in DTYPES:
            raise ValueError(f"{path}: tensor {name!r}: unknown dtype {dtype!r}")
        if not all(isinstance(s, int) and s >= 0 for s in shape):
            raise ValueError(f"{path}: tensor {name!r}: bad shape {shape!r}")
        width = np.dtype(DTYPES[dtype]).itemsize
        if not (isinstance(begin, int) and isinstance(end, int) and 0 <= begin <= end <= data.size
                and end - begin == width * math.prod(shape)):
            raise ValueError(f"{path}: tensor {name!r}: data_offsets [{begin}, {end}] do not "
                             f"hold {dtype} {shape} inside the {data.size} data bytes")
        spans.append((begin, end, name))
        a = data[begin:end].view(DTYPES[dtype]).reshape(shape)
        if dtype == "BF16":   # bfloat16 is the upper 16 bits of a float32
            a = (a.astype(np.uint32) << 16).view(np.float32)
        tensors[name] = a.astype(a.dtype.newbyteorder("="))
    at = 0
    for begin, end, name in sorted(spans):
        if begin != at:
            raise ValueError(f"{path}: tensor {name!r} starts at byte {begin} but the previous "
                             f"one ends at {at} (the offsets must tile the data)")
        at = end
    if at != data.size:
        raise ValueError(f"{path}: {data.size - at} bytes after the last tensor")
    return tensors, metadata


# ----------------------------------------------------------------------------------------------
# config.json

_IGNORED = {   # keys that change nothing in this model's forward
    "architectures", "model_type", "transformers_version", "dtype", "torch_dtype",
    "_name_or_path", "bos_token_id", "eos_token_id", "pad_token_id", "use_cache",
    "output_attentions", "output_hidden_states", "return_dict",
    # dropout rates: training-time only; this model trains without dropout
    "attention_dropout", "attn_pdrop", "embd_pdrop", "resid_pdrop", "summary_first_dropout",
    # GPT2DoubleHeadsModel's sequence-summary head, not part of the language model
    "summary_activation", "summary_proj_to_labels", "summary_type", "summary_use_proj",
    "n_ctx",                    # old GPT-2 configs: equal to n_positions
    "reorder_and_upcast_attn",  # GPT-2: the order of the same products in float16
    "pretraining_tp",           # Llama: the same linear layers, computed in slices
    "task_specific_params",
}
_REQUIRED = {   # key: (the value this model implements, its default when absent)
    "llama": {"hidden_act": ("silu", "silu"), "attention_bias": (False, False),
              "mlp_bias": (False, False)},
    "gpt2": {"scale_attn_weights": (True, True), "scale_attn_by_inverse_layer_idx": (False, False),
             "add_cross_attention": (False, False)},
}
_GELU_TANH = ("gelu_new", "gelu_pytorch_tanh")


def _rope_from_hf(d: dict) -> tuple[float, dict | None]:
    """(rope_theta, rope_scaling) from 4.x's rope_theta + rope_scaling or 5.x's
    rope_parameters (which holds rope_theta)."""
    params = d.get("rope_parameters")
    scaling = dict(params) if params is not None else (dict(d["rope_scaling"]) if d.get(
        "rope_scaling") else None)
    theta = d.get("rope_theta")
    if scaling is not None and "rope_theta" in scaling:
        inner = scaling.pop("rope_theta")
        if theta is not None and theta != inner:
            raise ValueError(f"rope_theta: {theta} differs from rope_parameters' {inner}")
        theta = inner
    if scaling is not None and set(scaling) <= {"rope_type", "type"} and scaling.get(
            "rope_type", scaling.get("type", "default")) == "default":
        scaling = None
    return (10000.0 if theta is None else float(theta)), scaling


def config_from_hf(d: dict) -> ModelConfig:
    """A :class:`ModelConfig` from a config.json dict (module docstring for the rules)."""
    kind = d.get("model_type")
    if kind == "crosscheck":
        return ModelConfig.from_dict({k: v for k, v in d.items() if k != "model_type"})
    if kind not in _REQUIRED:
        raise ValueError(f"config.json: model_type: expected 'llama', 'gpt2' or 'crosscheck' "
                         f"but got {kind!r}")
    if kind == "llama":
        read = {"vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
                "rms_norm_eps", "tie_word_embeddings", "initializer_range", "head_dim",
                "rope_theta", "rope_scaling", "rope_parameters"}
    else:
        read = {"vocab_size", "n_embd", "n_layer", "n_head", "n_positions", "n_inner",
                "activation_function", "layer_norm_epsilon", "tie_word_embeddings",
                "initializer_range"}
    for key in d:
        if key not in read and key not in _IGNORED and key not in _REQUIRED[kind]:
            raise ValueError(f"config.json: unknown key {key!r} for model_type {kind!r}; this "
                             f"model reads {sorted(read | set(_REQUIRED[kind]))}")
    for key, (value, default) in _REQUIRED[kind].items():
        if d.get(key, default) != value:
            raise ValueError(f"config.json: {key}: this model implements {value!r} but got "
                             f"{d[key]!r}")

    def need(key):
        if key not in d:
            raise ValueError(f"config.json: {key}: missing (model_type {kind!r} needs it)")
        return d[key]

    if kind == "gpt2":
        if d.get("activation_function", "gelu_new") not in _GELU_TANH:
            raise ValueError(f"config.json: activation_function: this model implements "
                             f"{_GELU_TANH} (GELU, tanh form) but got {d['activation_function']!r}")
        C = need("n_embd")
        return ModelConfig(family="gpt2", vocab_size=need("vocab_size"), n_layer=need("n_layer"),
                           n_head=need("n_head"), n_kv_head=need("n_head"), d_model=C,
                           d_ff=d.get("n_inner") or 4 * C, max_seq_len=need("n_positions"),
                           tie_embeddings=d.get("tie_word_embeddings", True),
                           norm_eps=d.get("layer_norm_epsilon", 1e-5),
                           init_std=d.get("initializer_range", 0.02))
    C, H = need("hidden_size"), need("num_attention_heads")
    if d.get("head_dim") not in (None, C // H):
        raise ValueError(f"config.json: head_dim: this model uses hidden_size / "
                         f"num_attention_heads = {C // H} but got {d['head_dim']}")
    theta, scaling = _rope_from_hf(d)
    return ModelConfig(family="llama", vocab_size=need("vocab_size"),
                       n_layer=need("num_hidden_layers"), n_head=H,
                       n_kv_head=d.get("num_key_value_heads") or H, d_model=C,
                       d_ff=need("intermediate_size"),
                       max_seq_len=need("max_position_embeddings"),
                       tie_embeddings=d.get("tie_word_embeddings", False),
                       norm_eps=d.get("rms_norm_eps", 1e-6), rope_theta=theta,
                       rope_scaling=scaling, init_std=d.get("initializer_range", 0.02))


def config_to_hf(config: ModelConfig, dtype) -> dict:
    """The config.json dict that transformers 5 reads back as the same model."""
    dtype = str(np.dtype(dtype))
    if config.norm_position != "pre" or config.n_experts:
        return {"model_type": "crosscheck", **config.to_dict()}
    if config.family == "gpt2":
        return {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
                "vocab_size": config.vocab_size, "n_embd": config.d_model,
                "n_layer": config.n_layer, "n_head": config.n_head,
                "n_positions": config.max_seq_len, "n_inner": config.d_ff,
                "activation_function": "gelu_new", "layer_norm_epsilon": config.norm_eps,
                "tie_word_embeddings": config.tie_embeddings,
                "initializer_range": config.init_std, "attn_pdrop": 0.0, "embd_pdrop": 0.0,
                "resid_pdrop": 0.0, "dtype": dtype}
    rope = {"rope_theta": config.rope_theta, **(config.rope_scaling or {"rope_type": "default"})}
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "vocab_size": config.vocab_size, "hidden_size": config.d_model,
            "intermediate_size": config.d_ff, "num_hidden_layers": config.n_layer,
            "num_attention_heads": config.n_head, "num_key_value_heads": config.n_kv_head,
            "head_dim": config.head_dim, "max_position_embeddings": config.max_seq_len,
            "rms_norm_eps": config.norm_eps, "hidden_act": "silu", "attention_bias": False,
            "mlp_bias": False, "tie_word_embeddings": config.tie_embeddings,
            "rope_parameters": rope, "initializer_range": config.init_std, "dtype": dtype}


# ----------------------------------------------------------------------------------------------
# Weights


def _transposed(name: str, config: ModelConfig) -> bool:
    """Stored (C_out, C_in) by Hugging Face: Llama's nn.Linear weights (not embedding, head)."""
    return config.family == "llama" and name.endswith("weight") and (
        "_proj." in name or ".gate." in name or ".experts." in name)


def _is_buffer(name: str) -> bool:
    return name.endswith((".attn.bias", ".attn.masked_bias", "rotary_emb.inv_freq"))


def params_from_hf(tensors: dict[str, np.ndarray], config: ModelConfig, dtype=np.float32,
                   source: str = "the checkpoint") -> dict[str, np.ndarray]:
    """The model's parameters from Hugging Face tensors: names checked, Llama's linear weights
    transposed, shapes checked against the config, cast to ``dtype``."""
    shapes = param_shapes(config)
    if config.family == "gpt2":   # the original GPT-2 files name the tensors without a prefix
        tensors = {(n if n.startswith(("transformer.", "lm_head.")) else "transformer." + n): t
                   for n, t in tensors.items()}
    if config.tie_embeddings and "lm_head.weight" in tensors:
        head, embed = tensors["lm_head.weight"], tensors.get(next(iter(shapes)))
        if embed is None or head.shape != embed.shape or not np.array_equal(head, embed):
            raise ValueError(f"lm_head.weight: the config ties it to {next(iter(shapes))} but "
                             f"{source} holds a different tensor")
        tensors = {n: t for n, t in tensors.items() if n != "lm_head.weight"}
    for name in tensors:
        if name not in shapes and not _is_buffer(name):
            raise ValueError(f"{name}: in {source} but not a parameter of this config")
    params = {}
    for name, shape in shapes.items():
        if name not in tensors:
            raise ValueError(f"{name}: missing from {source}")
        t = tensors[name]
        want = shape[::-1] if _transposed(name, config) else shape
        if tuple(t.shape) != want:
            raise ValueError(f"{name}: expected shape {want} from config.json but {source} "
                             f"holds {tuple(t.shape)}")
        if not np.issubdtype(t.dtype, np.floating):
            raise ValueError(f"{name}: expected a float tensor but {source} holds {t.dtype}")
        params[name] = np.ascontiguousarray(t.T if _transposed(name, config) else t, dtype=dtype)
    return params


def params_to_hf(params: dict, config: ModelConfig) -> dict[str, np.ndarray]:
    """Tensors in Hugging Face's layout: Llama's linear weights transposed; a tied head is not
    a parameter of its own, and transformers ties it again on load."""
    check_params(params, config)
    return {n: np.ascontiguousarray(a.T) if _transposed(n, config) else a
            for n, a in params.items()}


def load_pretrained(directory, dtype=np.float32) -> tuple[dict[str, np.ndarray], ModelConfig]:
    """(params, config) of a checkpoint directory, single file or sharded."""
    directory = Path(directory)
    config_path = directory / CONFIG
    if not config_path.is_file():
        raise ValueError(f"{directory}: no {CONFIG}")
    config = config_from_hf(json.loads(config_path.read_text()))
    if (directory / INDEX).is_file():
        weight_map = json.loads((directory / INDEX).read_text()).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{directory / INDEX}: expected a 'weight_map' object")
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            part, _ = read_safetensors(directory / shard)
            for name, t in part.items():
                if weight_map.get(name) != shard:
                    raise ValueError(f"{name}: in {shard} but the index puts it in "
                                     f"{weight_map.get(name)!r}")
                tensors[name] = t
        source = f"the shards of {directory}"
        for name in weight_map:
            if name not in tensors:
                raise ValueError(f"{name}: listed in {INDEX} but in no shard")
    elif (directory / WEIGHTS).is_file():
        tensors, _ = read_safetensors(directory / WEIGHTS)
        source = str(directory / WEIGHTS)
    else:
        raise ValueError(f"{directory}: neither {WEIGHTS} nor {INDEX}")
    return params_from_hf(tensors, config, dtype, source), config


def save_pretrained(directory, params: dict, config: ModelConfig, *,
                    max_shard_bytes: int | None = None) -> None:
    """Write config.json and the weights (sharded with an index past ``max_shard_bytes``)."""
    tensors = params_to_hf(params, config)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dtype = next(iter(params.values())).dtype
    shards, size = [{}], 0
    for name, t in tensors.items():
        if max_shard_bytes is not None and shards[-1] and size + t.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += t.nbytes
    for stale in [WEIGHTS, INDEX, *(p.name for p in directory.glob("model-*-of-*.safetensors"))]:
        (directory / stale).unlink(missing_ok=True)
    if len(shards) == 1:
        write_safetensors(directory / WEIGHTS, shards[0], {"format": "pt"})
    else:
        files = [f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors" for k in range(len(shards))]
        for file, shard in zip(files, shards):
            write_safetensors(directory / file, shard, {"format": "pt"})
        index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
                 "weight_map": {n: f for f, s in zip(files, shards) for n in s}}
        (directory / INDEX).write_text(json.dumps(index, indent=2) + "\n")
    (directory / CONFIG).write_text(json.dumps(config_to_hf(config, dtype), indent=2) + "\n")
