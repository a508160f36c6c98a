"""Hugging Face checkpoints: our safetensors reader/writer against the ``safetensors`` package,
transformers' own Llama and GPT-2 checkpoints loaded into the NumPy model (logits equal to
transformers'), ours loaded by transformers, both config.json spellings, and broken
checkpoints."""
import copy
import json

import numpy as np
import pytest
import torch

from ref_numpy import hf_checkpoint as hf
from ref_numpy import model
from torch_bridge import rope as torch_rope

st = pytest.importorskip("safetensors.numpy", reason="the safetensors package is not installed")


# ----------------------------------------------------------------------------- safetensors

def _arrays():
    rng = np.random.default_rng(0)
    return {"w": rng.standard_normal((3, 5)).astype(np.float32), "d": rng.standard_normal(7),
            "h": rng.standard_normal((2, 2)).astype(np.float16), "empty": np.zeros((0, 4)),
            "i": np.arange(6, dtype=np.int64).reshape(2, 3), "b": np.array([True, False]),
            "s": np.array(2.5, dtype=np.float32), "t": np.arange(12.0).reshape(3, 4).T}


def test_our_files_read_by_safetensors_and_theirs_by_us(tmp_path):
    arrays = _arrays()
    hf.write_safetensors(tmp_path / "ours.safetensors", arrays, {"format": "pt"})
    theirs = st.load_file(tmp_path / "ours.safetensors")
    assert set(theirs) == set(arrays)
    for n, a in arrays.items():
        assert theirs[n].dtype == a.dtype and theirs[n].shape == a.shape
        assert np.array_equal(theirs[n], a)
    # (the package writes an array's memory as it lies: give it C order)
    st.save_file({n: a.copy(order="C") for n, a in arrays.items()},
                 tmp_path / "theirs.safetensors", metadata={"k": "v"})
    back, meta = hf.read_safetensors(tmp_path / "theirs.safetensors")
    assert meta == {"k": "v"}
    for n, a in arrays.items():
        assert back[n].dtype == a.dtype and back[n].shape == a.shape
        assert np.array_equal(back[n], a)
    assert (tmp_path / "ours.safetensors").read_bytes()[8:].index(b"{") == 0


def test_bfloat16_tensors_read_as_float32(tmp_path):
    from safetensors.torch import save_file
    t = torch.randn(4, 3).to(torch.bfloat16)
    save_file({"x": t}, tmp_path / "bf16.safetensors")
    back, _ = hf.read_safetensors(tmp_path / "bf16.safetensors")
    assert back["x"].dtype == np.float32 and np.array_equal(back["x"], t.float().numpy())


def _raw(header: dict, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data


@pytest.mark.parametrize("header, data, message", [
    ({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4,
     r"tensor 'a': data_offsets \[0, 8\] do not hold F32 \[2\] inside the 4 data bytes"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
      "b": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]}}, b"\0" * 8,
     r"tensor '.' starts at byte 2 but the previous one ends at 4"),
    ({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8,
     r"4 bytes after the last tensor"),
    ({"a": {"dtype": "Q8", "shape": [1], "data_offsets": [0, 1]}}, b"\0",
     r"tensor 'a': unknown dtype 'Q8'"),
    ({"a": {"dtype": "F32", "shape": [1]}}, b"\0" * 4, r"tensor 'a': expected the keys"),
])
def test_a_broken_safetensors_file_is_an_error_naming_the_tensor(tmp_path, header, data,
                                                                 message):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(_raw(header, data))
    with pytest.raises(ValueError, match=message):
        hf.read_safetensors(path)


def test_a_truncated_safetensors_file_is_an_error(tmp_path):
    path = tmp_path / "t.safetensors"
    hf.write_safetensors(path, {"x": np.ones(10)})
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match=r"header length \d+ exceeds the file's 32 bytes"):
        hf.read_safetensors(path)


# ----------------------------------------------------------------------------- transformers

transformers = pytest.importorskip("transformers", reason="transformers is not installed")
transformers.logging.set_verbosity_error()
LLAMA = dict(vocab_size=61, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
             rope_theta=5e5, rope_scaling={"rope_type": "llama3", "factor": 4.0,
                                           "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                           "original_max_position_embeddings": 16})
GPT2 = dict(vocab_size=61, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=0,
            eos_token_id=0)
IDS = np.random.default_rng(0).integers(0, 61, (2, 20))


def _hf_model(kind, **overrides):
    torch.manual_seed(0)
    if kind == "llama":   # (transformers adds rope_theta into the rope_scaling dict it is given)
        m = transformers.LlamaForCausalLM(transformers.LlamaConfig(**copy.deepcopy(
            {**LLAMA, **overrides})))
    else:
        m = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{**GPT2, **overrides}))
    with torch.no_grad():   # no norm gain 1, no bias 0: every parameter matters
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def _float64_llama(m, config):
    """transformers' Llama computes two things in float32 even in a float64 model: RoPE's
    angles (``LlamaRotaryEmbedding.forward`` casts to float) and RMSNorm (``LlamaRMSNorm``
    casts its input to float32). For the float64 comparison those two are given the same
    formulas in float64 (the RoPE frequencies from torch_bridge.rope, the oracle's own);
    everything else -- weights, layouts, rotate_half, attention, GQA, MLP -- is
    transformers' code."""
    inv, factor = torch_rope.inv_freq(config.rope_scaling, config.head_dim, config.rope_theta)

    def rotary(x, position_ids):
        a = position_ids[..., None].double() * inv
        a = torch.cat([a, a], dim=-1)
        return (factor * a.cos()).to(x.dtype), (factor * a.sin()).to(x.dtype)
    m.model.rotary_emb.forward = rotary
    for module in m.modules():
        if type(module).__name__ == "LlamaRMSNorm":
            module.forward = (lambda norm: lambda x: norm.weight * x * torch.rsqrt(
                x.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon))(module)


def _hf_logits(m, dtype=torch.float32):
    with torch.no_grad():
        return m.to(dtype)(torch.from_numpy(IDS)).logits.double().numpy()


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_transformers_checkpoint_loads_with_equal_logits(tmp_path, kind, sharded):
    m = _hf_model(kind)
    m.save_pretrained(tmp_path, max_shard_size="20KB" if sharded else "5GB")
    assert (tmp_path / hf.INDEX).is_file() == sharded
    params32, config = hf.load_pretrained(tmp_path)
    assert config.family == kind and config.n_layer == 2 and config.vocab_size == 61
    out32, _ = model.model_forward(params32, config, IDS)
    assert np.abs(out32.logits - _hf_logits(m)).max() <= 2e-5
    params64, _ = hf.load_pretrained(tmp_path, np.float64)
    out64, _ = model.model_forward(params64, config, IDS)
    if kind == "llama":
        _float64_llama(m, config)
    assert np.abs(out64.logits - _hf_logits(m, torch.float64)).max() <= 1e-10


OURS = {
    "llama": model.ModelConfig(family="llama", vocab_size=61, n_layer=2, n_head=4, n_kv_head=2,
                               d_model=32, d_ff=48, max_seq_len=64, rope_theta=5e5,
                               rope_scaling=LLAMA["rope_scaling"]),
    "gpt2": model.ModelConfig(family="gpt2", vocab_size=61, n_layer=2, n_head=4, n_kv_head=4,
                              d_model=32, d_ff=128, max_seq_len=64, tie_embeddings=True),
}


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_our_checkpoint_loads_in_transformers_with_equal_logits(tmp_path, kind):
    config = OURS[kind]
    rng = np.random.default_rng(1)
    params = {n: (p + 0.05 * rng.standard_normal(p.shape)).astype(np.float32)
              for n, p in model.init_params(config, 0).items()}
    hf.save_pretrained(tmp_path, params, config)
    cls = transformers.LlamaForCausalLM if kind == "llama" else transformers.GPT2LMHeadModel
    theirs = cls.from_pretrained(tmp_path).eval()
    out, _ = model.model_forward(params, config, IDS)
    assert np.abs(out.logits - _hf_logits(theirs)).max() <= 2e-5
    again, config2 = hf.load_pretrained(tmp_path)
    assert config2 == config and all(np.array_equal(again[n], params[n]) for n in params)


def test_config_json_of_transformers_4_and_5_read_alike(tmp_path):
    m = _hf_model("llama")
    m.save_pretrained(tmp_path)
    five = json.loads((tmp_path / hf.CONFIG).read_text())
    four = {k: v for k, v in five.items() if k not in ("rope_parameters", "dtype")}
    scaling = {k: v for k, v in five["rope_parameters"].items() if k != "rope_theta"}
    four.update(rope_theta=five["rope_parameters"]["rope_theta"], rope_scaling=scaling,
                torch_dtype="float32", transformers_version="4.46.0")
    assert "rope_theta" in five["rope_parameters"] and "rope_scaling" not in five
    assert hf.config_from_hf(four) == hf.config_from_hf(five)
    plain = dict(four, rope_scaling=None)
    assert hf.config_from_hf(plain).rope_scaling is None
    assert hf.config_from_hf(plain).rope_theta == 5e5


def test_models_without_a_transformers_counterpart_round_trip(tmp_path):
    for config in (model.ModelConfig(family="llama", vocab_size=11, n_layer=1, n_head=2,
                                     n_kv_head=1, d_model=4, d_ff=6, n_experts=3),
                   model.ModelConfig(family="gpt2", vocab_size=11, n_layer=2, n_head=2,
                                     n_kv_head=2, d_model=4, d_ff=6, norm_position="post")):
        params = model.init_params(config, 0)
        hf.save_pretrained(tmp_path, params, config, max_shard_bytes=400)
        assert json.loads((tmp_path / hf.CONFIG).read_text())["model_type"] == "crosscheck"
        back, config2 = hf.load_pretrained(tmp_path)
        assert config2 == config and all(np.array_equal(back[n], params[n]) for n in params)


def test_original_gpt2_names_and_buffers_are_accepted():
    m = _hf_model("gpt2")
    config = OURS["gpt2"]
    tensors = {n.removeprefix("transformer."): t.numpy() for n, t in m.state_dict().items()}
    tensors["h.0.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), dtype=np.float32))
    tensors["lm_head.weight"] = tensors["wte.weight"]
    params = hf.params_from_hf(tensors, config)
    assert set(params) == set(model.param_shapes(config))


# ----------------------------------------------------------------------------- broken ones

def _saved(tmp_path, kind="llama"):
    _hf_model(kind).save_pretrained(tmp_path)
    return json.loads((tmp_path / hf.CONFIG).read_text())


def test_shapes_that_disagree_with_the_config_name_the_tensor(tmp_path):
    cfg = _saved(tmp_path)
    (tmp_path / hf.CONFIG).write_text(json.dumps(dict(cfg, intermediate_size=40)))
    with pytest.raises(ValueError, match=r"model.layers.0.mlp.gate_proj.weight: expected shape "
                                         r"\(40, 32\) from config.json but .* holds \(48, 32\)"):
        hf.load_pretrained(tmp_path)


def test_a_missing_or_unexpected_tensor_is_named(tmp_path):
    _saved(tmp_path)
    tensors, meta = hf.read_safetensors(tmp_path / hf.WEIGHTS)
    name = "model.layers.1.self_attn.v_proj.weight"
    hf.write_safetensors(tmp_path / hf.WEIGHTS, {n: t for n, t in tensors.items() if n != name})
    with pytest.raises(ValueError, match=rf"{name}: missing from .*model.safetensors"):
        hf.load_pretrained(tmp_path)
    hf.write_safetensors(tmp_path / hf.WEIGHTS, dict(tensors, **{"model.layers.0.extra":
                                                                 tensors[name]}))
    with pytest.raises(ValueError, match=r"model.layers.0.extra: in .* but not a parameter"):
        hf.load_pretrained(tmp_path)


def test_unknown_or_unsupported_config_keys_are_named(tmp_path):
    cfg = _saved(tmp_path)
    (tmp_path / hf.CONFIG).write_text(json.dumps(dict(cfg, sliding_window=16)))
    with pytest.raises(ValueError, match=r"config.json: unknown key 'sliding_window' for "
                                         r"model_type 'llama'"):
        hf.load_pretrained(tmp_path)
    (tmp_path / hf.CONFIG).write_text(json.dumps(dict(cfg, hidden_act="gelu")))
    with pytest.raises(ValueError, match=r"hidden_act: this model implements 'silu' but got "
                                         r"'gelu'"):
        hf.load_pretrained(tmp_path)
    (tmp_path / hf.CONFIG).write_text(json.dumps(dict(cfg, model_type="mistral")))
    with pytest.raises(ValueError, match=r"model_type: expected 'llama', 'gpt2' or "
                                         r"'crosscheck' but got 'mistral'"):
        hf.load_pretrained(tmp_path)


def test_a_tied_config_with_a_different_head_is_refused(tmp_path):
    cfg = _saved(tmp_path)
    (tmp_path / hf.CONFIG).write_text(json.dumps(dict(cfg, tie_word_embeddings=True)))
    with pytest.raises(ValueError, match=r"lm_head.weight: the config ties it to "
                                         r"model.embed_tokens.weight"):
        hf.load_pretrained(tmp_path)
