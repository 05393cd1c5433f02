"""Evaluates a trained run (or a Hugging Face folder) without training: the metrics a run logs as `eval/...`.

  python -m jaxalign.evaluate --run=runs/dpo                                 # against its own reference
  python -m jaxalign.evaluate --run=runs/dpo --judge=runs/rm --data=held.jsonl
  python -m jaxalign.evaluate --hf_path=path/to/hf --against=runs/sft --data=pairs.jsonl --judge=runs/pm

What it computes is what training logs at an evaluation (`jaxalign.data_eval`, `jaxalign.evaluation`):
on the built-in task the ground-truth win rate, reward, validity and KL of policy samples against the
reference's; on preference data (the run's held-out split, or `--data`/`--source` all of it) the held-out
loss of the run's loss (DPO for a bare folder), implicit rewards and log-probs, policy and reference
samples, `eval/kl`, and with `--judge` (builtin | a reward-model or preference-model run) `eval/win_rate`.
Prints the metrics as JSON; `--samples=FILE` writes the samples (JSONL). Errors are one line, exit 2.
"""

from __future__ import annotations

import json
import os

from absl import flags

_RUN = flags.DEFINE_string("run", "", "A jaxalign run directory (its latest checkpoint, or --step).")
_HF = flags.DEFINE_string("hf_path", "", "A local Hugging Face model folder.")
_AGAINST = flags.DEFINE_string("against", "reference", "reference (what --run trained against) | a run dir | "
                               "a Hugging Face folder.")
_JUDGE = flags.DEFINE_string("judge", "auto", "builtin | none | a reward_model / preference_model run dir; auto: "
                             "builtin on the built-in task, else none.")
_DATA = flags.DEFINE_string("data", "", "Preference pairs to evaluate on (all of them; default: the run's "
                            "held-out split, or the built-in task).")
_SOURCE = flags.DEFINE_enum("source", "jsonl", ["jsonl", "hh_rlhf", "tfds"], "Format of --data.")
_STEP = flags.DEFINE_integer("step", None, "--run: the checkpoint step (default: the latest).")
_SAMPLES = flags.DEFINE_string("samples", "", "Write the policy and reference samples here (JSONL).")
_PROMPTS = flags.DEFINE_integer("prompts", 0, "Held-out prompts to sample (x --samples_per_prompt); 0: the run's "
                                "eval.prompts (16 for a folder).")
_PER_PROMPT = flags.DEFINE_integer("samples_per_prompt", 0, "Samples per prompt; 0: the run's "
                                   "eval.samples_per_prompt (2 for a folder).")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 0, "0: the run's eval.max_new_tokens (32 for a folder).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed (0 with --run: the run's own evaluation seed).")
_KV = flags.DEFINE_enum("kv_cache_dtype", "", ["", "float32", "bfloat16", "int8"],
                        "The samplers' KV cache (both models); \"\": the run's model.kv_cache_dtype.")
_MAX_PAIRS = flags.DEFINE_integer("max_pairs", 512, "--data: evaluate on at most this many pairs (its first).")


def _config_for(policy, data: str, source: str):
  """The run's config (or a default one for a bare folder) set up for this evaluation."""
  from jaxalign.config import base_config
  c = policy.config.copy_and_resolve_references() if policy.config is not None else base_config()
  with c.unlocked():
    if policy.config is None:
      c.model.hf_path = policy.source
      c.data.prompt_len, c.data.completion_len = 256, 64
    if data:
      c.data.source, c.data.path, c.data.eval_path, c.data.eval_split = source, data, data, ""
      c.data.eval_examples = _MAX_PAIRS.value
    c.eval.judge = _JUDGE.value
    if _PROMPTS.value or policy.config is None:  # (else the run's own settings: its last evaluation again)
      c.eval.prompts = _PROMPTS.value or 16
    if _PER_PROMPT.value or policy.config is None:
      c.eval.samples_per_prompt = _PER_PROMPT.value or 2
    if _MAX_NEW.value:
      c.eval.max_new_tokens = _MAX_NEW.value
    elif policy.config is None:
      c.eval.max_new_tokens = 32
    if policy.config is None or _SEED.value:
      c.seed = _SEED.value
  return c


def evaluate(policy, reference, config, mesh) -> tuple[dict, list[dict]]:
  from jaxalign.errors import UserError
  if config.data.source == "builtin":
    from jaxalign.evaluation import BuiltinEvaluator
    ev = BuiltinEvaluator(policy.tok, policy.cfg, config.eval, int(config.data.prompt_len), int(config.seed))
    return ev(policy.params, reference, int(config.train.steps))
  from jaxalign import losses
  from jaxalign.trainers.offline import heldout_arrays, heldout_evaluate
  name = config.loss.name if config.trainer == "offline" else "dpo"
  hparams = {k: v for k, v in config.loss.items() if k != "name"} if config.trainer == "offline" else {"beta": 0.1}
  with config.unlocked():
    config.loss.name = name
  cache = os.path.join(_cache_root(), "ref_cache")
  arrays, prompts = heldout_arrays(config, policy.tok, policy.cfg, reference, mesh, cache)
  if not prompts:
    raise UserError("no held-out pairs to evaluate on: give --data=FILE, or train with data.eval_fraction > 0")
  ev = heldout_evaluate(config, policy.tok, policy.cfg, mesh, arrays, prompts, ref_params=reference,
                        reference_free=name in losses.REFERENCE_FREE, hparams=hparams,
                        chunk=int(config.train.logprob_chunk), cache_dir=cache)
  metrics, rows = ev(policy.params, int(config.train.steps))
  return {**metrics, "eval/pairs": float(len(arrays["prompt"]))}, rows


def _cache_root() -> str:
  import tempfile
  return os.path.join(tempfile.gettempdir(), "jaxalign-evaluate")


def main(argv=None) -> None:
  from jaxalign.errors import UserError, run_cli

  def body():
    if _DATA.value and not os.path.exists(_DATA.value.split(":")[0]):
      raise UserError(f"{_DATA.value}: file not found")
    import jaxalign
    jaxalign.set_xla_cpu_flags()
    from jaxalign import sharding as shd
    from jaxalign.runs import load_policy, load_reference, write_jsonl
    mesh = shd.make_mesh()
    policy = load_policy(_RUN.value, _HF.value, mesh=mesh, step=_STEP.value)
    if _KV.value:
      import dataclasses
      policy = policy._replace(cfg=dataclasses.replace(policy.cfg, kv_cache_dtype=_KV.value))
    reference, against = load_reference(policy, mesh, _AGAINST.value)
    config = _config_for(policy, _DATA.value, _SOURCE.value)
    metrics, rows = evaluate(policy, reference, config, mesh)
    if _SAMPLES.value:
      write_jsonl(_SAMPLES.value, rows)
    print(json.dumps({"model": policy.source, "against": against, "judge": str(config.eval.judge),
                      **{k: metrics[k] for k in sorted(metrics)}}, indent=1))
  run_cli(body, argv, what_path=lambda: _SAMPLES.value or "?")


if __name__ == "__main__":
  main()
