"""Hugging Face checkpoints in and out, against `transformers` itself (torch on CPU).

Tiny random models are built with `transformers` config classes and saved with
`save_pretrained`; nothing is downloaded. Skipped when torch/transformers are absent
(`pip install -e .[hf]`; CI installs that extra).
"""

import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

torch = pytest.importorskip("torch", reason="needs torch (pip install -e .[hf])")
transformers = pytest.importorskip("transformers", reason="needs transformers (pip install -e .[hf])")

from jaxalign import sharding as shd  # noqa: E402
from jaxalign.checkpoint import restore_params  # noqa: E402
from jaxalign.config import base_config, validate  # noqa: E402
from jaxalign.data import builtin  # noqa: E402
from jaxalign.data.hf_tokenizer import HFTokenizer, hh_to_messages  # noqa: E402
from jaxalign.errors import UserError  # noqa: E402
from jaxalign.models import hf, load_hf, logits, save_hf  # noqa: E402
from jaxalign.models.transformer import Transformer, model_config  # noqa: E402
from jaxalign.sampling import sample  # noqa: E402
from jaxalign.models.loading import abstract_params  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-4

LLAMA3 = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
              original_max_position_embeddings=64)  # with head_dim 8: one kept, one smoothed, two scaled bands
SMALL = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, initializer_range=0.1)

# name -> (model_type, config overrides). Odd vocabularies, GQA ratios 1/2/4, tied and untied,
# every supported RoPE scaling, sliding windows shorter than the test sequences.
CASES = {
    "llama_gqa2": ("llama", dict(vocab_size=101, num_key_value_heads=2)),
    "llama_mqa_tied_llama3": ("llama", dict(vocab_size=257, num_key_value_heads=1, tie_word_embeddings=True,
                                            rope_scaling=LLAMA3, rope_theta=500000.0)),
    "llama_mha_bias_linear": ("llama", dict(vocab_size=101, num_key_value_heads=4, attention_bias=True,
                                            mlp_bias=True, rope_scaling=dict(rope_type="linear", factor=4.0))),
    "llama_yarn": ("llama", dict(vocab_size=101, num_key_value_heads=2, max_position_embeddings=32,
                                 rope_scaling=dict(rope_type="yarn", factor=4.0, original_max_position_embeddings=8))),
    "llama_dynamic": ("llama", dict(vocab_size=101, num_key_value_heads=2, max_position_embeddings=64,
                                    rope_scaling=dict(rope_type="dynamic", factor=2.0))),
    "mistral_window": ("mistral", dict(vocab_size=101, num_key_value_heads=2, sliding_window=5)),
    "qwen2_tied": ("qwen2", dict(vocab_size=257, num_key_value_heads=2, tie_word_embeddings=True)),
    "qwen2_window": ("qwen2", dict(vocab_size=101, num_key_value_heads=1, use_sliding_window=True,
                                   sliding_window=4, max_window_layers=1)),
    "qwen3": ("qwen3", dict(vocab_size=101, num_key_value_heads=2, head_dim=16)),
    "qwen3_tied_bias_yarn": ("qwen3", dict(vocab_size=257, num_key_value_heads=4, head_dim=8, attention_bias=True,
                                           tie_word_embeddings=True, max_position_embeddings=64,
                                           rope_scaling=dict(rope_type="yarn", factor=8.0, beta_fast=16.0,
                                                             original_max_position_embeddings=8))),
    "gpt2": ("gpt2", dict(vocab_size=101)),
    "gpt2_untied_gelu": ("gpt2", dict(vocab_size=257, tie_word_embeddings=False, activation_function="gelu",
                                      n_inner=48)),
}
GREEDY = ["llama_mqa_tied_llama3", "mistral_window", "qwen2_tied", "qwen3", "gpt2"]  # one per architecture


def build_model(kind: str, seed: int = 0, **overrides):
  """A random tiny `transformers` model (norms and biases randomised too), in eval mode."""
  torch.manual_seed(seed)
  if kind == "gpt2":
    kw = dict(n_embd=32, n_layer=2, n_head=4, n_positions=64, initializer_range=0.1, bos_token_id=1,
              eos_token_id=2, **overrides)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**kw))
  else:
    cls = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}[kind]
    config = getattr(transformers, cls + "Config")(**{**SMALL, **overrides})
    model = getattr(transformers, cls + "ForCausalLM")(config)
  with torch.no_grad():
    for _, p in model.named_parameters():
      if p.ndim == 1:
        p.add_(torch.randn_like(p) * 0.2)
  model.generation_config.eos_token_id = None  # greedy runs the full length on both sides
  return model.eval()


def save(model, folder, **kw):
  model.save_pretrained(folder, **kw)
  return str(folder)


def hf_logits(model, ids, mask):
  """Reference logits; explicit position ids (what `generate` uses), so padding is handled alike."""
  ids, mask = torch.tensor(np.asarray(ids)), torch.tensor(np.asarray(mask))
  pos = (mask.cumsum(-1) - 1).clamp(min=0)
  with torch.no_grad():
    return model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float().numpy()


def tokens_and_mask(vocab, batch=2, length=24, pad=5, seed=0):
  """Random tokens; row 1 left-padded by `pad`."""
  ids = np.random.default_rng(seed).integers(0, vocab, (batch, length))
  mask = np.ones_like(ids)
  mask[1, :pad] = 0
  return ids, mask


def max_diff(a, b, mask):
  keep = np.asarray(mask).astype(bool)
  return float(np.abs(np.asarray(a)[keep] - np.asarray(b)[keep]).max())


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  out = {}
  for name, (kind, kw) in CASES.items():
    model = build_model(kind, **kw)
    out[name] = (model, save(model, tmp_path_factory.mktemp(name)))
  return out


@pytest.mark.parametrize("name", list(CASES))
def test_logits_match_transformers(folders, name):
  model, folder = folders[name]
  cfg, params = load_hf(folder)
  assert cfg.family == CASES[name][0]
  ids, mask = tokens_and_mask(cfg.vocab_size)
  diff = max_diff(logits(cfg, params, ids, mask), hf_logits(model, ids, mask), mask)
  print(f"{name}: max |Δlogit| = {diff:.2e}")
  assert diff < TOL, diff


def test_config_features_are_read(folders):
  """The cases really exercise what they name (so the parity above covers them)."""
  cfgs = {n: hf.config_from_hf(hf.read_config(f)) for n, (_, f) in folders.items()}
  assert dict(cfgs["llama_mqa_tied_llama3"].rope_scaling)["rope_type"] == "llama3"
  assert cfgs["llama_mqa_tied_llama3"].tie_embeddings and cfgs["llama_mqa_tied_llama3"].n_kv_heads == 1
  assert dict(cfgs["llama_yarn"].rope_scaling)["attention_factor"] > 1.0
  assert cfgs["mistral_window"].layer_windows == (5, 5)
  assert cfgs["qwen2_window"].layer_windows == (0, 4) and cfgs["qwen2_window"].qkv_bias
  assert cfgs["qwen3"].qk_norm and cfgs["qwen3"].hdim == 16
  assert cfgs["gpt2_untied_gelu"].act == "gelu" and not cfgs["gpt2_untied_gelu"].tie_embeddings
  assert cfgs["llama_dynamic"].max_len == 64


@pytest.mark.parametrize("name", GREEDY)
def test_greedy_20_tokens_match_generate(folders, name):
  model, folder = folders[name]
  cfg, params = load_hf(folder)
  ids, mask = tokens_and_mask(cfg.vocab_size, length=8, pad=3, seed=1)
  toks, out_mask, _ = sample(params, jnp.asarray(ids), jnp.asarray(mask), jax.random.key(0), cfg=cfg,
                             max_new_tokens=20, eos_id=-1, pad_id=0, temperature=0.0)
  with torch.no_grad():
    ref = model.generate(torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=20, do_sample=False,
                         pad_token_id=0)[:, ids.shape[1]:].numpy()
  assert int(np.asarray(out_mask).sum()) == 40
  np.testing.assert_array_equal(np.asarray(toks), ref)


def test_sharded_index_and_bfloat16(tmp_path):
  model = build_model("llama", vocab_size=101, num_key_value_heads=2)
  folder = save(model, tmp_path / "sharded", max_shard_size="20KB")
  assert os.path.exists(os.path.join(folder, "model.safetensors.index.json"))
  assert len([f for f in os.listdir(folder) if f.endswith(".safetensors")]) > 2
  cfg, params = load_hf(folder)
  ids, mask = tokens_and_mask(101)
  assert max_diff(logits(cfg, params, ids, mask), hf_logits(model, ids, mask), mask) < TOL

  # bfloat16 on disk: the params hold exactly the bf16 values; logits equal transformers' float32
  # model of the same file. And bfloat16 params on device for inference.
  bf = save(model.to(torch.bfloat16), tmp_path / "bf16")
  ref = transformers.AutoModelForCausalLM.from_pretrained(bf, dtype=torch.float32).eval()
  cfg16, p16 = load_hf(bf)
  q = model.model.layers[0].self_attn.q_proj.weight.detach().float().numpy()
  np.testing.assert_array_equal(np.asarray(p16["layers_0"]["attn"]["q"]["kernel"]).reshape(32, -1), q.T)
  assert max_diff(logits(cfg16, p16, ids, mask), hf_logits(ref, ids, mask), mask) < TOL
  _, pb = load_hf(bf, param_dtype="bfloat16")
  assert pb["embed"]["embedding"].dtype == jnp.bfloat16


def test_mesh_fsdp4_tensor2_matches_one_device(tmp_path):
  model = build_model("qwen2", vocab_size=257, hidden_size=64, intermediate_size=128, num_key_value_heads=2)
  folder = save(model, tmp_path / "m")
  mesh = shd.make_mesh(1, 4, 2)
  cfg, sharded = load_hf(folder, mesh=mesh)
  _, single = load_hf(folder)
  q = sharded["layers_0"]["attn"]["q"]["kernel"]
  assert q.sharding.spec == P("fsdp", "tensor", None) and len(q.addressable_shards) == 8
  assert q.addressable_shards[0].data.shape == (16, 2, 16)
  assert sharded["lm_head"].sharding.spec == P("fsdp", None)  # 257 is not divisible by tensor=2
  assert len(single["lm_head"].sharding.device_set) == 1
  ids, mask = tokens_and_mask(257, batch=4)
  a, b = logits(cfg, sharded, ids, mask), logits(cfg, single, ids, mask)
  assert max_diff(a, b, mask) < 1e-5
  assert max_diff(a, hf_logits(model, ids, mask), mask) < TOL


def test_export_jaxalign_native_model_as_llama(tmp_path):
  tok = builtin.builtin_tokenizer(str(tmp_path / "tok"))
  cfg = model_config("nano", vocab_size=tok.vocab_size)
  t = jnp.zeros((1, 4), jnp.int32)
  params = nn.meta.unbox(Transformer(cfg).init(jax.random.key(3), t, t, t + 1)["params"])
  out = str(tmp_path / "out")
  written = save_hf(cfg, params, out, tokenizer=tok, max_shard_size=100_000)
  assert "model.safetensors.index.json" in written and "tokenizer.json" in written
  model = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  assert type(model).__name__ == "LlamaForCausalLM"
  ids, mask = tokens_and_mask(tok.vocab_size, length=12)
  assert max_diff(logits(cfg, params, ids, mask), hf_logits(model, ids, mask), mask) < TOL
  ht = transformers.AutoTokenizer.from_pretrained(out)
  for row in builtin.sft_corpus(10, seed=0):
    text = row["prompt"] + " " + row["completion"]
    assert ht(text)["input_ids"] == [tok.bos_id] + tok.encode(text)
  assert (ht.eos_token_id, ht.pad_token_id) == (tok.eos_id, tok.pad_id)


def test_export_round_trip_other_architectures(folders, tmp_path):
  """load_hf -> save_hf -> from_pretrained gives back the same model (config and weights)."""
  for name in ("qwen3_tied_bias_yarn", "gpt2_untied_gelu", "mistral_window"):
    model, folder = folders[name]
    cfg, params = load_hf(folder)
    out = str(tmp_path / name)
    save_hf(cfg, params, out, tokenizer=folder, dtype="bfloat16" if name == "gpt2_untied_gelu" else "float32")
    back = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    assert type(back) is type(model)
    ids, mask = tokens_and_mask(cfg.vocab_size, length=16)
    tol = 0.1 if name == "gpt2_untied_gelu" else TOL  # bf16 weights
    assert max_diff(hf_logits(back, ids, mask), hf_logits(model, ids, mask), mask) < tol
    assert hf.config_from_hf(hf.read_config(out)) == cfg


# ---------------------------------------------------------------- user errors


def _edit_config(folder, **changes):
  path = os.path.join(folder, "config.json")
  with open(path) as f:
    c = json.load(f)
  c.update(changes)
  with open(path, "w") as f:
    json.dump(c, f)


def test_unsupported_and_broken_checkpoints_are_user_errors(tmp_path):
  model = build_model("llama", vocab_size=101, num_key_value_heads=2)
  folder = save(model, tmp_path / "m")
  _edit_config(folder, rope_parameters=dict(rope_type="longrope", rope_theta=10000.0, short_factor=[1.0] * 4,
                                            long_factor=[1.0] * 4, original_max_position_embeddings=16))
  with pytest.raises(UserError, match=r"config.json: rope_parameters.rope_type: 'longrope' is not supported"):
    load_hf(folder)
  _edit_config(folder, rope_parameters=dict(rope_type="default", rope_theta=10000.0), model_type="falcon")
  with pytest.raises(UserError, match=r"config.json: model_type: 'falcon' is not supported"):
    load_hf(folder)
  _edit_config(folder, model_type="llama", attention_bias=True)
  with pytest.raises(UserError, match=r"tensor 'model.layers.0.self_attn.q_proj.bias' not found"):
    load_hf(folder)
  _edit_config(folder, attention_bias=False, intermediate_size=48)
  with pytest.raises(UserError, match=r"model.safetensors: tensor model.layers.0.mlp.gate_proj.weight: shape "
                                      r"\[64, 32\] does not match config.json \(expected \[48, 32\]\)"):
    load_hf(folder)
  _edit_config(folder, intermediate_size=64, num_hidden_layers=1)
  with pytest.raises(UserError, match=r"unexpected tensor 'model.layers.1"):
    load_hf(folder)
  os.remove(os.path.join(folder, "config.json"))
  with pytest.raises(UserError, match=r"config.json: file not found"):
    load_hf(folder)
  with pytest.raises(UserError, match=r"no model.safetensors"):
    hf.load_params(str(tmp_path), model_config("nano", vocab_size=101))
  config = base_config()
  config.model.hf_path = str(tmp_path / "nowhere")
  with pytest.raises(UserError, match=r"config model.hf_path: .*nowhere/config.json: file not found"):
    validate(config)
  with pytest.raises(UserError, match=r"model.max_len: 100 exceeds the checkpoint's max_position_embeddings"):
    hf.config_from_hf(dict(model_type="llama", max_position_embeddings=64, num_attention_heads=4,
                           rope_scaling=dict(rope_type="dynamic", factor=2.0)), max_len=100)
  gpt = save(build_model("gpt2", vocab_size=101), tmp_path / "g")
  _edit_config(gpt, scale_attn_by_inverse_layer_idx=True)
  with pytest.raises(UserError, match=r"scale_attn_by_inverse_layer_idx=True is not supported"):
    load_hf(gpt)


# ---------------------------------------------------------------- tokenizers and chat templates

CHATML = ("{{ bos_token }}{% for m in messages %}{% if m['role'] not in ['user', 'assistant', 'system'] %}"
          "{{ raise_exception('unknown role ' + m['role']) }}{% endif %}"
          "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<|im_start|>", "<|im_end|>"]


def hh(*turns):
  return "".join(f"\n\n{'Human' if i % 2 == 0 else 'Assistant'}: {t}" for i, t in enumerate(turns)) + "\n\nAssistant:"


def make_tokenizer(folder, vocab_size=200):
  """A BPE tokenizer.json trained here (no download) + tokenizer_config.json with a chat template."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
  tok = Tokenizer(models.BPE(unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Metaspace()
  tok.decoder = decoders.Metaspace()
  texts = [r["prompt"] + " " + r["completion"] for r in builtin.sft_corpus(300, seed=0)]
  texts += ["Human Assistant how is what the menu ? good , bad . thanks"] * 5
  tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIALS))
  tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
  fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                              pad_token="<pad>", unk_token="<unk>")
  fast.chat_template = CHATML
  fast.save_pretrained(folder)
  return fast


def test_hf_tokenizer_matches_transformers(tmp_path):
  fast = make_tokenizer(tmp_path)
  tok = HFTokenizer(str(tmp_path))
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 0) and tok.vocab_size == len(fast)
  text = "review of the cafe in tokyo : the menu is very poor ."
  assert tok.encode(text) == fast(text, add_special_tokens=False)["input_ids"]
  assert [tok.bos_id] + tok.encode(text) == fast(text)["input_ids"]  # the pipeline's prompt prefix
  assert tok.decode(tok.encode(text)) == fast.decode(fast(text, add_special_tokens=False)["input_ids"])

  messages = [{"role": "user", "content": "how is the menu ?"}, {"role": "assistant", "content": "good ."},
              {"role": "user", "content": "thanks"}]
  for gen in (True, False):
    assert tok.apply_chat_template(messages, gen) == fast.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=gen)
  prompt = hh("how is the menu ?", "good .", "thanks")
  assert hh_to_messages(prompt) == messages
  assert hh_to_messages("review of the cafe :") is None and hh_to_messages(" the menu is good .") is None
  # An HH prompt is rendered with the template; the pipeline adds bos, so encode leaves it out.
  chat_ids = fast.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
  assert [tok.bos_id] + tok.encode(prompt) == list(chat_ids["input_ids"])
  assert tok.encode(" the menu is good .") == fast(" the menu is good .", add_special_tokens=False)["input_ids"]
  assert HFTokenizer(str(tmp_path), chat_template="off").encode(prompt) == fast(prompt, add_special_tokens=False)[
      "input_ids"]
  with pytest.raises(UserError, match="unknown role tool"):
    tok.apply_chat_template([{"role": "tool", "content": "x"}])


def test_sentencepiece_folder(tmp_path):
  sp = builtin.builtin_tokenizer(str(tmp_path / "sp"))
  folder = tmp_path / "f"
  folder.mkdir()
  os.link(sp.path, folder / "tokenizer.model")
  (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "bos_token": "<s>"}))
  tok = HFTokenizer(str(folder))
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (2, 3, 0) and tok.chat_template is None
  assert tok.encode("the menu is good .") == sp.encode("the menu is good .")
  with pytest.raises(UserError, match="'on' but .* has no chat template"):
    HFTokenizer(str(folder), chat_template="on")


# ---------------------------------------------------------------- import -> DPO -> export


def _run(*args):
  env = {**os.environ, "PYTHONPATH": ROOT}
  p = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  return p


def test_import_dpo_export_round_trip(tmp_path):
  """`jaxalign.main --config.model.hf_path=DIR` trains (DPO, chat-templated HH prompts), then
  `jaxalign.export` writes a folder whose logits under transformers equal jaxalign's for the
  trained params."""
  src = str(tmp_path / "src")
  make_tokenizer(src)
  model = build_model("qwen2", vocab_size=211, num_key_value_heads=2)
  save(model, src)
  rows = [dict(prompt=hh(f"how is the {a} ?"), chosen=f" the {a} is good .", rejected=f" the {a} is bad .")
          for a in ("menu", "coffee", "room", "screen", "plot", "music", "food", "pool")] * 2
  data = tmp_path / "pairs.jsonl"
  data.write_text("".join(json.dumps(r) + "\n" for r in rows))
  wd, out = str(tmp_path / "run"), str(tmp_path / "out")
  _run("jaxalign.main", "--config=configs/dpo.py:tiny", f"--workdir={wd}", f"--config.model.hf_path={src}",
       "--config.init_from=", "--config.data.source=jsonl", f"--config.data.path={data}",
       "--config.data.prompt_len=24", "--config.data.completion_len=8", "--config.data.num_examples=16",
       "--config.train.steps=3", "--config.train.batch_size=8", "--config.train.warmup_steps=0",
       "--config.train.learning_rate=0.01", "--config.train.precompute_ref=False",
       "--config.train.checkpoint_every=3")
  with open(os.path.join(wd, "metrics.jsonl")) as f:
    train = [json.loads(line) for line in f if "train/loss" in line]
  assert abs(train[0]["train/loss"] - np.log(2)) < 1e-4  # policy == reference (the imported model) at step 1
  p = _run("jaxalign.export", f"--workdir={wd}", f"--out={out}")
  assert "model.safetensors" in json.loads(p.stdout)["files"]

  cfg = hf.config_from_hf(hf.read_config(src))
  one = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  trained = restore_params(wd, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.value.shape, x.value.dtype, sharding=one),
                                            abstract_params(cfg), is_leaf=lambda x: hasattr(x, "names")))
  exported = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  assert type(exported).__name__ == "Qwen2ForCausalLM"
  ids, mask = tokens_and_mask(211)
  ours, theirs = logits(cfg, trained, ids, mask), hf_logits(exported, ids, mask)
  diff = max_diff(ours, theirs, mask)
  print(f"import -> DPO -> export: max |Δlogit| = {diff:.2e}")
  assert diff < TOL
  assert max_diff(theirs, hf_logits(model, ids, mask), mask) > 1e-3  # training moved the weights
  fast = transformers.AutoTokenizer.from_pretrained(out)
  assert fast.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False).startswith("<s><|im_start|>")
