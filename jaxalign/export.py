"""A run's checkpoint as a Hugging Face folder: `python -m jaxalign.export --workdir=RUN --out=DIR`.

Reads RUN/config.json to rebuild the model, restores the params of the latest checkpoint
(or `--step`), and writes DIR with config.json, model.safetensors (sharded above
`--max_shard_gb`), generation_config.json and the tokenizer files, so that
`transformers.AutoModelForCausalLM.from_pretrained(DIR)` loads it.

A run started from a Hugging Face checkpoint (`model.hf_path`) is written back with that
checkpoint's architecture, config and tokenizer (the run keeps a copy of them in
RUN/hf_source, so the original folder may have moved). A jaxalign-native model is
written as `LlamaForCausalLM` with its SentencePiece tokenizer as tokenizer.model.
Tensors are fetched and written one at a time.
"""

from __future__ import annotations

import json
import os

from absl import flags

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (holds config.json and checkpoints/).")
_OUT = flags.DEFINE_string("out", None, "Output folder for the Hugging Face checkpoint.")
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step to export (default: the latest).")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "dtype of the written weights.")
_SHARD = flags.DEFINE_float("max_shard_gb", 5.0, "Largest safetensors file (GiB) before sharding.")


def export(workdir: str, out: str, step: int | None = None, dtype: str = "float32",
           max_shard_bytes: int = 5 * 2**30) -> list[str]:
  """Writes the run's params as a Hugging Face folder; returns the file names written."""
  import jax
  import ml_collections

  from jaxalign import sharding as shd
  from jaxalign.checkpoint import restore_params
  from jaxalign.data.hf_tokenizer import has_tokenizer
  from jaxalign.data.pipeline import load_tokenizer
  from jaxalign.errors import UserError
  from jaxalign.models import hf
  from jaxalign.models.loading import abstract_params, model_cfg_from

  if os.path.exists(out) and not os.path.isdir(out):
    raise UserError(f"{out}: exists and is not a directory (--out must be a directory)")
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise UserError(f"{path}: file not found (is --workdir a jaxalign run?)")
  try:
    with open(path) as f:
      config = ml_collections.ConfigDict(json.load(f))
  except (OSError, json.JSONDecodeError) as e:
    raise UserError(f"{path}: cannot read ({e})") from None
  source = ""
  if config.model.get("hf_path", ""):
    copy = os.path.join(workdir, hf.SOURCE_DIR)
    source = copy if os.path.isfile(os.path.join(copy, "config.json")) else config.model.hf_path
    if not os.path.isfile(os.path.join(source, "config.json")):
      raise UserError(f"{path}: model.hf_path={config.model.hf_path!r}: config.json not found there or in {copy}")
  config.model.hf_path = source  # (also for runs written before the key existed)
  if source and not config.data.tokenizer and has_tokenizer(source):
    tokenizer = source
    vocab = 0
  else:
    tokenizer = load_tokenizer(config.data, workdir)
    vocab = tokenizer.vocab_size
  cfg = model_cfg_from(config, vocab)
  mesh = shd.make_mesh(1, -1, 1)  # params sharded over every local device while they are fetched
  boxed = abstract_params(cfg)
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          jax.tree.map(lambda p: p.value, boxed, is_leaf=lambda p: hasattr(p, "names")),
                          shd.param_shardings(boxed, mesh))
  params = restore_params(workdir, abstract, step=step)
  if params is None:
    which = "no checkpoint" if step is None else f"no checkpoint for step {step}"
    raise UserError(f"{os.path.join(workdir, 'checkpoints')}: {which}")
  return hf.save_hf(cfg, params, out, tokenizer=tokenizer, dtype=dtype, max_shard_size=max_shard_bytes)


def main(argv=None) -> None:
  from jaxalign.errors import UserError, run_cli

  def body():
    if not _WORKDIR.value or not _OUT.value:
      raise UserError("both --workdir=RUN and --out=DIR are required")
    written = export(os.path.abspath(_WORKDIR.value), os.path.abspath(_OUT.value), _STEP.value, _DTYPE.value,
                     int(_SHARD.value * 2**30))
    print(json.dumps({"out": os.path.abspath(_OUT.value), "files": sorted(written)}, indent=1))
  run_cli(body, argv, what_path=lambda: _OUT.value)  # (--out a file or not writable, a full disk)


if __name__ == "__main__":
  main()
