"""Hugging Face `config.json` <-> `ModelConfig`, and the metadata files of a checkpoint folder.

`read_config` reads a folder's config.json; `config_from_hf` translates it into a
`ModelConfig` (architecture tables, transformers' class defaults for missing keys, RoPE
scaling, sliding windows) and `config_to_hf` translates back, over the source checkpoint's
config so fields jaxalign does not model survive. `copy_metadata` copies config.json and
the tokenizer files of a folder (a run keeps them under `SOURCE_DIR`); `write_metadata`
writes config.json, generation_config.json and the tokenizer files of an export. The
weights are `jaxalign.models.hf_weights`; the public entry points `jaxalign.models.hf`.

Unsupported configurations (another model_type, rope types other than default, linear,
dynamic, yarn and llama3, partial rotary embeddings, GPT-2 with per-layer attention
scaling) are `UserError`s naming the file and field.
"""

from __future__ import annotations

import json
import math
import os
import shutil

from jaxalign.data.hf_tokenizer import TOKENIZER_FILES, HFTokenizer, has_tokenizer, read_json
from jaxalign.errors import UserError
from jaxalign.models.transformer import ROPE_TYPES, ModelConfig

ARCHITECTURES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
                 "qwen3": "Qwen3ForCausalLM", "gpt2": "GPT2LMHeadModel"}
_ACTS = {"silu": "silu", "swish": "silu", "gelu": "gelu", "gelu_new": "gelu_new", "gelu_pytorch_tanh": "gelu_new",
         "relu": "relu"}

# The defaults of transformers' config classes for the keys read here (a key missing
# from config.json means the class default, as `from_pretrained` reads it).
_LLAMA_LIKE = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                   num_attention_heads=32, num_key_value_heads=None, head_dim=None, hidden_act="silu",
                   max_position_embeddings=2048, rms_norm_eps=1e-6, tie_word_embeddings=False,
                   attention_bias=False, mlp_bias=False)
_DEFAULTS = {
    "llama": _LLAMA_LIKE,
    "mistral": {**_LLAMA_LIKE, "intermediate_size": 14336, "num_key_value_heads": 8,
                "max_position_embeddings": 4096 * 32, "sliding_window": 4096},
    "qwen2": {**_LLAMA_LIKE, "vocab_size": 151936, "intermediate_size": 22016, "num_key_value_heads": 32,
              "max_position_embeddings": 32768, "use_sliding_window": False, "sliding_window": 4096,
              "max_window_layers": 28},
    "qwen3": {**_LLAMA_LIKE, "vocab_size": 151936, "intermediate_size": 22016, "num_key_value_heads": 32,
              "head_dim": 128, "max_position_embeddings": 32768, "use_sliding_window": False,
              "sliding_window": 4096, "max_window_layers": 28},
    "gpt2": dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, n_inner=None,
                 activation_function="gelu_new", layer_norm_epsilon=1e-5, scale_attn_weights=True,
                 scale_attn_by_inverse_layer_idx=False, add_cross_attention=False, tie_word_embeddings=True),
}



# ---------------------------------------------------------------- config.json <-> ModelConfig


def read_config(folder: str) -> dict:
  path = os.path.join(folder, "config.json")
  if not os.path.isdir(folder):
    raise UserError(f"{folder}: Hugging Face model folder not found")
  return read_json(path, required=True)


def _rope(hf: dict, where: str) -> tuple[float, tuple, bool]:
  """(theta, scaling pairs, whether positions must stay below max_position_embeddings)."""
  rp = hf.get("rope_scaling") or hf.get("rope_parameters") or {}  # v4 writes rope_scaling, v5 rope_parameters
  if not isinstance(rp, dict):
    raise UserError(f"{where}: rope_parameters: expected an object, got {rp!r}")
  nested = [v for k, v in rp.items() if k in ("full_attention", "sliding_attention")]
  if nested:  # one entry per layer type
    if any(v != nested[0] for v in nested):
      raise UserError(f"{where}: rope_parameters: different RoPE per layer type is not supported")
    rp = nested[0] or {}
  theta = float(rp.get("rope_theta", hf.get("rope_theta", 10000.0)))
  kind = rp.get("rope_type", rp.get("type", "default"))
  if kind not in ROPE_TYPES:
    raise UserError(f"{where}: rope_parameters.rope_type: {kind!r} is not supported "
                    f"(supported: {', '.join(ROPE_TYPES)})")
  partial = rp.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
  if partial not in (None, 1, 1.0):
    raise UserError(f"{where}: partial_rotary_factor={partial} is not supported (only full rotary embeddings)")
  if kind == "default":
    return theta, (), False
  max_pos = int(hf.get("max_position_embeddings") or 2048)

  def need(key):
    if rp.get(key) is None:
      raise UserError(f"{where}: rope_parameters: rope_type {kind!r} needs {key!r}")
    return rp[key]
  s: dict = {"rope_type": kind}
  if kind in ("linear", "dynamic"):
    s["factor"] = float(need("factor"))
  elif kind == "llama3":
    s.update(factor=float(need("factor")), low_freq_factor=float(need("low_freq_factor")),
             high_freq_factor=float(need("high_freq_factor")),
             original_max_position_embeddings=int(rp.get("original_max_position_embeddings") or max_pos))
  elif kind == "yarn":
    orig = int(hf.get("original_max_position_embeddings") or rp.get("original_max_position_embeddings") or max_pos)
    factor = float(rp["factor"]) if rp.get("factor") is not None else max_pos / orig
    mscale = lambda scale, m=1.0: 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0
    af = rp.get("attention_factor")
    if af is None:
      m, m_all = rp.get("mscale"), rp.get("mscale_all_dim")
      af = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)
    s.update(factor=factor, original_max_position_embeddings=orig, attention_factor=float(af),
             beta_fast=float(rp.get("beta_fast") or 32), beta_slow=float(rp.get("beta_slow") or 1),
             truncate=bool(rp.get("truncate", True)))
  return theta, tuple(sorted(s.items())), kind == "dynamic"


def _windows(hf: dict, fam: str, n_layers: int) -> tuple:
  get = lambda k: hf.get(k, _DEFAULTS[fam].get(k))
  if fam == "mistral":
    sw = get("sliding_window")
    windows = [int(sw or 0)] * n_layers
  elif fam in ("qwen2", "qwen3"):
    sw = get("sliding_window") if get("use_sliding_window") else None
    types = hf.get("layer_types") or ["sliding_attention" if sw is not None and i >= get("max_window_layers")
                                      else "full_attention" for i in range(n_layers)]
    windows = [int(sw) if sw and t == "sliding_attention" else 0 for t in types]
  else:
    windows = [0] * n_layers
  return tuple(windows) if any(windows) else ()


_POSITIVE_INTS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim", "max_position_embeddings", "n_positions", "n_embd", "n_layer",
                  "n_head", "n_inner", "sliding_window", "max_window_layers")
_FLOATS = ("rms_norm_eps", "layer_norm_epsilon", "rope_theta", "partial_rotary_factor")
_BOOLS = ("tie_word_embeddings", "attention_bias", "mlp_bias", "use_sliding_window", "scale_attn_weights",
          "scale_attn_by_inverse_layer_idx", "add_cross_attention")


def _check_types(hf: dict, where: str) -> None:
  """Field types of the keys `config_from_hf` reads: one-line errors instead of a failed conversion."""
  for key in _POSITIVE_INTS:
    v = hf.get(key)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v <= 0):
      raise UserError(f"{where}: {key}: expected a positive integer, got {v!r}")
  for key in _FLOATS:
    v = hf.get(key)
    if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
      raise UserError(f"{where}: {key}: expected a number, got {v!r}")
  for key in _BOOLS:
    v = hf.get(key)
    if v is not None and not isinstance(v, bool):
      raise UserError(f"{where}: {key}: expected true or false, got {v!r}")
  for key in ("model_type", "hidden_act", "activation_function"):
    v = hf.get(key)
    if v is not None and not isinstance(v, str):
      raise UserError(f"{where}: {key}: expected a string, got {v!r}")
  lt = hf.get("layer_types")
  if lt is not None and not (isinstance(lt, list) and all(isinstance(t, str) for t in lt)):
    raise UserError(f"{where}: layer_types: expected a list of strings, got {lt!r}")


def config_from_hf(hf: dict, where: str = "config.json", *, dtype: str = "float32", remat: str = "none",
                   max_len: int = 0) -> ModelConfig:
  """`ModelConfig` of a Hugging Face `config.json` dict; `where` names the file in errors."""
  if not isinstance(hf, dict):
    raise UserError(f"{where}: expected a JSON object")
  _check_types(hf, where)
  try:
    return _config_from_hf(hf, where, dtype=dtype, remat=remat, max_len=max_len)
  except (TypeError, ValueError, KeyError, ZeroDivisionError, OverflowError) as e:  # values that do not fit together
    raise UserError(f"{where}: cannot build the model from it ({type(e).__name__}: {e})") from None


def _config_from_hf(hf: dict, where: str, *, dtype: str, remat: str, max_len: int) -> ModelConfig:
  fam = hf.get("model_type")
  if fam not in ARCHITECTURES:
    raise UserError(f"{where}: model_type: {fam!r} is not supported (supported: {', '.join(ARCHITECTURES)})")
  d = _DEFAULTS[fam]
  get = lambda k: hf[k] if hf.get(k) is not None else d.get(k)
  if fam == "gpt2":
    for key, ok in (("scale_attn_by_inverse_layer_idx", False), ("scale_attn_weights", True),
                    ("add_cross_attention", False)):
      if bool(get(key)) != ok:
        raise UserError(f"{where}: {key}={get(key)} is not supported for gpt2")
    act = get("activation_function")
    width, heads = int(get("n_embd")), int(get("n_head"))
    kw = dict(vocab_size=int(get("vocab_size")), d_model=width, n_layers=int(get("n_layer")), n_heads=heads,
              n_kv_heads=heads, d_ff=int(get("n_inner") or 4 * width), norm_eps=float(get("layer_norm_epsilon")),
              tie_embeddings=bool(get("tie_word_embeddings")), max_len=int(get("n_positions")),
              qkv_bias=True, o_bias=True, mlp_bias=True, norm="layer", positions="learned", mlp="plain")
    fixed_len = True  # the position table has exactly n_positions rows
  else:
    act = get("hidden_act")
    heads = int(get("num_attention_heads"))
    width = int(get("hidden_size"))
    theta, scaling, fixed_len = _rope(hf, where)
    n_layers = int(get("num_hidden_layers"))
    bias = bool(get("attention_bias"))
    kw = dict(vocab_size=int(get("vocab_size")), d_model=width, n_layers=n_layers, n_heads=heads,
              n_kv_heads=int(get("num_key_value_heads") or heads), d_ff=int(get("intermediate_size")),
              head_dim=int(get("head_dim") or width // heads), rope_theta=theta, rope_scaling=scaling,
              norm_eps=float(get("rms_norm_eps")), tie_embeddings=bool(get("tie_word_embeddings")),
              max_len=int(get("max_position_embeddings")), layer_windows=_windows(hf, fam, n_layers),
              qkv_bias=True if fam == "qwen2" else bias if fam in ("llama", "qwen3") else False,
              o_bias=bias if fam in ("llama", "qwen3") else False,
              mlp_bias=bool(get("mlp_bias")) if fam == "llama" else False, qk_norm=fam == "qwen3")
  if act not in _ACTS:
    raise UserError(f"{where}: activation {act!r} is not supported (supported: {', '.join(sorted(_ACTS))})")
  if max_len:
    if fixed_len and max_len > kw["max_len"]:
      what = "n_positions" if fam == "gpt2" else "max_position_embeddings (dynamic RoPE)"
      raise UserError(f"config model.max_len: {max_len} exceeds the checkpoint's {what}={kw['max_len']} "
                      f"({where})")
    if not fixed_len:
      kw["max_len"] = int(max_len)
  cfg = ModelConfig(**kw, family=fam, act=_ACTS[act], dtype=dtype, remat=remat)
  try:
    cfg.validate()
  except ValueError as e:
    raise UserError(f"{where}: {e}") from None
  return cfg


def _rope_dict(cfg: ModelConfig) -> dict:
  out = {"rope_type": "default"} if not cfg.rope_scaling else dict(cfg.rope_scaling)
  return {**out, "rope_theta": cfg.rope_theta}


def config_to_hf(cfg: ModelConfig, base: dict | None = None, dtype: str = "float32") -> dict:
  """The `config.json` dict of `cfg` (family `cfg.family`), over `base` (the source checkpoint's)."""
  fam = cfg.family
  if fam not in ARCHITECTURES:
    raise UserError(f"export: model family {fam!r} has no Hugging Face architecture")

  def cannot(feature):
    raise UserError(f"export: a {fam} checkpoint cannot express {feature}")
  out = {k: v for k, v in (base or {}).items() if k not in ("auto_map", "quantization_config", "_name_or_path")}
  if out.get("model_type") != fam:
    out = {}
  hf_act = {"silu": "silu", "gelu": "gelu", "gelu_new": "gelu_new", "relu": "relu"}[cfg.act]
  out.update(architectures=[ARCHITECTURES[fam]], model_type=fam, vocab_size=cfg.vocab_size,
             tie_word_embeddings=cfg.tie_embeddings, dtype=dtype, torch_dtype=dtype)
  if fam == "gpt2":
    layout = (cfg.norm, cfg.positions, cfg.mlp, cfg.qkv_bias, cfg.o_bias, cfg.mlp_bias)
    if layout != ("layer", "learned", "plain", True, True, True) or cfg.n_kv_heads != cfg.n_heads or (
        cfg.hdim * cfg.n_heads != cfg.d_model):
      cannot("this layout (GPT-2 is LayerNorm, learned positions, an ungated MLP, biases everywhere, no GQA)")
    out.update(n_embd=cfg.d_model, n_layer=cfg.n_layers, n_head=cfg.n_heads, n_inner=cfg.d_ff,
               n_positions=cfg.max_len, activation_function=hf_act, layer_norm_epsilon=cfg.norm_eps,
               scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False, add_cross_attention=False)
    out.pop("n_ctx", None)
    return out
  if (cfg.norm, cfg.positions, cfg.mlp) != ("rms", "rope", "gated"):
    cannot("LayerNorm, learned positions or an ungated MLP")
  if cfg.qk_norm != (fam == "qwen3"):
    cannot("q/k norms" if cfg.qk_norm else "the absence of q/k norms")
  if fam == "qwen2" and not (cfg.qkv_bias and not cfg.o_bias):
    cannot("these attention biases (Qwen2 has q/k/v biases only)")
  if fam in ("llama", "qwen3") and cfg.qkv_bias != cfg.o_bias:
    cannot("q/k/v biases without an output bias")
  if fam != "llama" and cfg.mlp_bias:
    cannot("MLP biases")
  if fam == "mistral" and (cfg.qkv_bias or cfg.o_bias):
    cannot("attention biases")
  windows = [cfg.window(i) for i in range(cfg.n_layers)]
  widths = sorted({w for w in windows if w})
  if len(widths) > 1:
    cannot(f"different sliding windows per layer ({widths})")
  if widths and (fam == "llama" or (fam == "mistral" and not all(windows))):
    cannot("sliding windows on some layers only" if fam == "mistral" else "sliding windows")
  rope = _rope_dict(cfg)
  out.pop("rope_scaling", None)
  out.update(hidden_size=cfg.d_model, intermediate_size=cfg.d_ff, num_hidden_layers=cfg.n_layers,
             num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads, head_dim=cfg.hdim,
             hidden_act=hf_act, rms_norm_eps=cfg.norm_eps,
             # a run's model.max_len may differ from the checkpoint's; keep the checkpoint's value
             max_position_embeddings=int(out.get("max_position_embeddings") or cfg.max_len),
             rope_theta=cfg.rope_theta, rope_parameters=rope)
  if cfg.rope_scaling:
    out["rope_scaling"] = rope  # transformers 4.x reads this key (5.x reads either)
  if fam in ("llama", "qwen3"):
    out["attention_bias"] = cfg.qkv_bias
  if fam == "llama":
    out["mlp_bias"] = cfg.mlp_bias
  if fam == "mistral":
    out["sliding_window"] = widths[0] if widths else None
  if fam in ("qwen2", "qwen3"):
    out.update(use_sliding_window=bool(widths), sliding_window=widths[0] if widths else None,
               max_window_layers=next((i for i, w in enumerate(windows) if w), cfg.n_layers),
               layer_types=["sliding_attention" if w else "full_attention" for w in windows])
  return out


# ---------------------------------------------------------------- metadata files

SOURCE_DIR = "hf_source"  # a run's copy of its checkpoint's config and tokenizer files (no weights)


def copy_metadata(src: str, dst: str) -> None:
  """Copies config.json and the tokenizer files of a Hugging Face folder (not the weights)."""
  os.makedirs(dst, exist_ok=True)
  for name in ("config.json",) + TOKENIZER_FILES:
    if os.path.isfile(os.path.join(src, name)):
      tmp = os.path.join(dst, name + ".tmp")
      shutil.copyfile(os.path.join(src, name), tmp)
      os.replace(tmp, os.path.join(dst, name))


def _tokenizer_source(tokenizer) -> str | None:
  if isinstance(tokenizer, str):
    return tokenizer
  if isinstance(tokenizer, HFTokenizer):
    return tokenizer.path
  return None


def write_metadata(cfg: ModelConfig, path: str, tokenizer=None, dtype: str = "float32") -> list[str]:
  """Writes config.json, generation_config.json and the tokenizer files of `cfg` into `path`.

  tokenizer: as for `jaxalign.models.hf.save_hf` (None, a Hugging Face folder or `HFTokenizer`,
  or a SentencePiece `Tokenizer`). Returns the files written.
  """
  src = _tokenizer_source(tokenizer)
  base = read_json(os.path.join(src, "config.json")) if src else None
  hf = config_to_hf(cfg, base, dtype)
  written = []
  if src:
    for name in TOKENIZER_FILES:
      if os.path.isfile(os.path.join(src, name)) and os.path.abspath(src) != os.path.abspath(path):
        shutil.copyfile(os.path.join(src, name), os.path.join(path, name))
        written.append(name)
  elif tokenizer is not None:
    written += _write_sentencepiece(tokenizer, path)
  if isinstance(tokenizer, str) and has_tokenizer(tokenizer):
    tokenizer = HFTokenizer(tokenizer, chat_template="off")
  if tokenizer is not None and not isinstance(tokenizer, str):  # ids the source config leaves unset
    ids = dict(bos_token_id=tokenizer.bos_id if tokenizer.bos_id >= 0 else None, eos_token_id=tokenizer.eos_id,
               pad_token_id=tokenizer.pad_id)
    hf.update({k: v for k, v in ids.items() if hf.get(k) is None})
  if "generation_config.json" not in written:
    gen = {k: hf.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id") if hf.get(k) is not None}
    _write_json(os.path.join(path, "generation_config.json"), gen)
    written.append("generation_config.json")
  _write_json(os.path.join(path, "config.json"), hf)
  written.append("config.json")
  return written


def _write_json(path: str, obj: dict) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def _write_sentencepiece(tok, path: str) -> list[str]:
  """A SentencePiece `Tokenizer` for `transformers`: tokenizer.model + tokenizer_config.json.

  `transformers` converts unigram and BPE SentencePiece models itself (LlamaTokenizer). It cannot
  convert word models (the built-in task's), so for those a tokenizer.json is written too: a
  WordLevel model over the same pieces with the "▁" metaspace pre-tokenizer, which gives the
  same ids as SentencePiece on text without unusual whitespace.
  """
  shutil.copyfile(tok.path, os.path.join(path, "tokenizer.model"))
  written = ["tokenizer.model", "tokenizer_config.json"]
  sp = tok._sp
  piece = lambda i: sp.IdToPiece(int(i)) if i is not None and 0 <= i < tok.vocab_size else None
  unk = int(sp.unk_id())
  tcfg = {"tokenizer_class": "LlamaTokenizer", "bos_token": piece(tok.bos_id), "eos_token": piece(tok.eos_id),
          "pad_token": piece(tok.pad_id), "unk_token": piece(unk), "add_bos_token": tok.bos_id >= 0,
          "add_eos_token": False, "legacy": True}
  if _sentencepiece_type(tok.path) == 3:  # WORD
    try:
      from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    except ImportError:
      raise UserError(f"{tok.path}: exporting a SentencePiece word model needs the `tokenizers` package") from None
    vocab = {sp.IdToPiece(i): i for i in range(tok.vocab_size)}
    t = Tokenizer(models.WordLevel(vocab, unk_token=piece(unk) or sp.IdToPiece(0)))
    t.normalizer = normalizers.Sequence([normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()])
    t.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    t.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    specials = [i for i in range(tok.vocab_size) if sp.IsControl(i) or sp.IsUnknown(i)]
    t.add_special_tokens([AddedToken(sp.IdToPiece(i), special=True, normalized=False) for i in specials])
    if tok.bos_id >= 0:
      b = piece(tok.bos_id)
      t.post_processor = processors.TemplateProcessing(single=f"{b} $A", pair=f"{b} $A {b} $B",
                                                       special_tokens=[(b, tok.bos_id)])
    t.save(os.path.join(path, "tokenizer.json"))
    tcfg = {k: v for k, v in tcfg.items() if k not in ("add_bos_token", "add_eos_token", "legacy")}
    tcfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    written.append("tokenizer.json")
  _write_json(os.path.join(path, "tokenizer_config.json"), tcfg)
  return written


def _sentencepiece_type(model_path: str) -> int | None:
  """trainer_spec.model_type of a SentencePiece model (1 unigram, 2 BPE, 3 word, 4 char)."""
  try:
    from sentencepiece import sentencepiece_model_pb2
    m = sentencepiece_model_pb2.ModelProto()
    with open(model_path, "rb") as f:
      m.ParseFromString(f.read())
    return int(m.trainer_spec.model_type)
  except Exception:  # an old sentencepiece without the proto module, or protobuf trouble
    return None
