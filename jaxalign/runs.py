"""A trained policy and its reference, from a run directory or a Hugging Face folder (for the CLIs).

  policy = load_policy(run="runs/dpo")          # the run's latest (or --step) policy params
  policy = load_policy(hf_path="path/to/hf")    # a local Hugging Face checkpoint and its tokenizer
  ref = load_reference(policy, mesh)            # what the run trained against (its SFT run, init_from, the
                                                # HF checkpoint, or its seeded random init)
"""

from __future__ import annotations

import json
import os
from typing import Any, NamedTuple

from jaxalign.errors import UserError


class Policy(NamedTuple):
  config: Any  # the run's resolved config (None for a bare Hugging Face folder)
  run_dir: str  # "" for a Hugging Face folder
  cfg: Any  # ModelConfig
  tok: Any
  params: Any
  source: str  # what was loaded, for messages and outputs


POLICY_TRAINERS = ("sft", "offline", "unpaired", "online", "ppo", "disco", "f_dpg")


def load_policy(run: str = "", hf_path: str = "", *, mesh=None, step: int | None = None,
                chat_template: str = "auto") -> Policy:
  from jaxalign import sharding as shd
  from jaxalign.checkpoint import restore_params
  from jaxalign.models import loading
  mesh = shd.make_mesh() if mesh is None else mesh
  if bool(run) == bool(hf_path):
    raise UserError("give one of --run=DIR (a jaxalign run) or --hf_path=DIR (a Hugging Face folder)")
  if hf_path:
    from jaxalign.data.hf_tokenizer import HFTokenizer, has_tokenizer
    from jaxalign.models import hf
    if not os.path.isfile(os.path.join(hf_path, "config.json")):
      raise UserError(f"{hf_path}: not a Hugging Face model folder (no config.json)")
    if not has_tokenizer(hf_path):
      raise UserError(f"{hf_path}: no tokenizer files (tokenizer.json or tokenizer.model)")
    tok = HFTokenizer(hf_path, chat_template)
    cfg = hf.config_from_hf(hf.read_config(hf_path), os.path.join(hf_path, "config.json"))
    return Policy(None, "", cfg, tok, hf.load_params(hf_path, cfg, mesh), hf_path)
  config = loading._run_config(run)
  if config.trainer not in POLICY_TRAINERS:
    raise UserError(f"{run}: holds a {config.trainer} run, not a policy ({', '.join(POLICY_TRAINERS)})")
  local = loading._with_model_source(config.copy_and_resolve_references(), run)  # (architecture, tokenizer)
  tok = loading.run_tokenizer(local, run)
  cfg = loading.model_cfg_from(local, tok.vocab_size)
  target = loading._restore_target(loading.abstract_params(cfg), mesh)
  if config.trainer == "ppo":
    params = restore_params(run, {"policy": target}, step=step)
    params = None if params is None else params["policy"]
  else:
    params = restore_params(run, target, step=step)
  if params is None:
    raise UserError(f"{os.path.join(run, 'checkpoints')}: " + ("no checkpoint" if step is None
                                                               else f"no checkpoint for step {step}"))
  return Policy(config, run, cfg, tok, params, run)


def load_reference(policy: Policy, mesh=None, against: str = "reference") -> tuple[Any, str]:
  """`(params, description)` of the model to compare `policy` with: `reference` = what the run trained
  against; a run directory or a Hugging Face folder = that model (same tokenizer)."""
  from jaxalign import sharding as shd
  from jaxalign.models.loading import initial_params
  mesh = shd.make_mesh() if mesh is None else mesh
  if against and against != "reference":
    if os.path.isfile(os.path.join(against, "config.json")) and not os.path.isdir(os.path.join(against,
                                                                                                "checkpoints")):
      other = load_policy(hf_path=against, mesh=mesh)
    else:
      other = load_policy(run=against, mesh=mesh)
    if other.cfg.vocab_size != policy.cfg.vocab_size:
      raise UserError(f"--against={against}: its vocabulary ({other.cfg.vocab_size}) differs from the policy's "
                      f"({policy.cfg.vocab_size})")
    return other.params, against
  if policy.config is None:
    raise UserError("--against=reference needs --run (a Hugging Face folder has no reference); "
                    "give --against=DIR")
  c = policy.config
  init_from = os.path.join(policy.run_dir, "sft") if c.init_from == "auto" else c.init_from
  if c.trainer == "sft":
    init_from = ""  # an SFT run's reference is where it started
  what = init_from or (c.model.hf_path and f"model.hf_path={c.model.hf_path}") or f"random init (seed {c.seed})"
  return initial_params(c, policy.cfg, mesh, init_from), what


def write_jsonl(path: str, rows: list[dict]) -> None:
  """`rows` as JSONL at `path`, written to a temporary file and renamed into place."""
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  os.replace(tmp, path)
