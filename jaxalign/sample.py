"""Samples from a trained run or a local Hugging Face folder, without writing code.

  python -m jaxalign.sample --run=runs/dpo --prompts=prompts.txt --n=4 --out=samples.jsonl
  python -m jaxalign.sample --hf_path=path/to/hf --prompts=- --temperature=0.7 --top_p=0.9 < prompts.txt

Prompts: a text file (one prompt per line), or JSONL with a "prompt" field per line (the format of the
training data: preference, unpaired and SFT rows all have one), or `-` for standard input. Anthropic
HH-style prompts ("\\n\\nHuman: ... \\n\\nAssistant:") are rendered with the model's chat template when it
has one (`--chat_template=auto|on|off`). Writes one JSON object per sample, `{"prompt", "completion",
"sample", "finished"}`, to `--out` (default: standard output). Errors are one `error:` line, exit 2.
"""

from __future__ import annotations

import json
import os
import sys

from absl import flags

_RUN = flags.DEFINE_string("run", "", "A jaxalign run directory (its latest checkpoint, or --step).")
_HF = flags.DEFINE_string("hf_path", "", "A local Hugging Face model folder (config.json, safetensors, tokenizer).")
_PROMPTS = flags.DEFINE_string("prompts", None, "Prompt file: text (one per line) or JSONL with \"prompt\"; - = stdin.")
_OUT = flags.DEFINE_string("out", "-", "Output JSONL file (- = standard output).")
_N = flags.DEFINE_integer("n", 1, "Samples per prompt.")
_MAX_NEW = flags.DEFINE_integer("max_new_tokens", 64, "Tokens to generate at most (EOS ends a sample earlier).")
_TEMP = flags.DEFINE_float("temperature", 1.0, "Sampling temperature (> 0).")
_TOP_K = flags.DEFINE_integer("top_k", 0, "Keep the k most likely tokens (0: all).")
_TOP_P = flags.DEFINE_float("top_p", 1.0, "Nucleus sampling mass in (0, 1].")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed (same seed, same samples).")
_STEP = flags.DEFINE_integer("step", None, "--run: the checkpoint step (default: the latest).")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Prompts per generation batch.")
_PROMPT_LEN = flags.DEFINE_integer("prompt_len", 0, "Prompt tokens kept (left-truncated); 0: the run's "
                                   "data.prompt_len, or 256 for a Hugging Face folder.")
_CHAT = flags.DEFINE_enum("chat_template", "auto", ["auto", "on", "off"], "Render HH-style prompts with the "
                          "model's chat template.")


def read_prompts(path: str) -> list[str]:
  """Prompts of a text or JSONL file (or stdin for "-"); one-line errors naming the file and line."""
  from jaxalign.errors import UserError, at
  if path == "-":
    lines, where = sys.stdin.read().splitlines(), "<stdin>"
  else:
    if not os.path.isfile(path):
      raise UserError(f"{path}: file not found")
    try:
      with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    except UnicodeDecodeError:
      raise UserError(f"{path}: not UTF-8 text") from None
    where = path
  prompts = []
  for i, line in enumerate(lines, 1):
    if not line.strip():
      continue
    if line.lstrip().startswith("{"):
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        raise at(where, i, f"invalid JSON ({e.msg})") from None
      p = obj.get("prompt") if isinstance(obj, dict) else None
      if not isinstance(p, str) or not p.strip():
        raise at(where, i, 'missing field "prompt" (a non-empty string)')
      prompts.append(p)
    else:
      prompts.append(line.replace("\\n", "\n"))  # a text line may spell newlines as \n
  if not prompts:
    raise UserError(f"{where}: no prompts")
  return prompts


def sample_texts(policy, prompts: list[str], *, n: int, max_new_tokens: int, temperature: float, top_k: int,
                 top_p: float, seed: int, prompt_len: int, batch_size: int = 32) -> list[dict]:
  """`n` samples of each prompt from `policy` (`jaxalign.runs.Policy`): rows of the output JSONL."""
  import jax
  import numpy as np
  from tqdm.auto import tqdm

  from jaxalign import judges, sampling
  from jaxalign.data.pipeline import encode_prompts
  expanded = [(p, j) for p in prompts for j in range(n)]
  out = []
  for lo in tqdm(range(0, len(expanded), batch_size), desc="sampling", file=sys.stderr,
                 disable=len(expanded) <= batch_size):
    chunk = expanded[lo:lo + batch_size]
    pad = batch_size - len(chunk)  # one shape: the last batch is padded with repeats, dropped afterwards
    texts = [p for p, _ in chunk] + [chunk[-1][0]] * pad
    ids, mask = encode_prompts(policy.tok, texts, prompt_len)
    key = jax.random.fold_in(jax.random.key(seed), lo)
    tokens, tmask, fin = sampling.sample(policy.params, ids, mask, key, cfg=policy.cfg,
                                         max_new_tokens=max_new_tokens, eos_id=policy.tok.eos_id,
                                         pad_id=policy.tok.pad_id, temperature=temperature, top_k=top_k, top_p=top_p)
    done = judges.decode(policy.tok, tokens, tmask, fin)
    for (p, j), t, f in zip(chunk, done, np.asarray(fin)):
      out.append({"prompt": p, "completion": t, "sample": j, "finished": bool(f)})
  return out


def main(argv=None) -> None:
  from jaxalign.errors import UserError, run_cli

  def body():
    if not _PROMPTS.value:
      raise UserError("--prompts=FILE (or - for standard input) is required")
    for name, ok in (("n", _N.value >= 1), ("max_new_tokens", _MAX_NEW.value >= 1), ("temperature", _TEMP.value > 0),
                     ("top_k", _TOP_K.value >= 0), ("top_p", 0 < _TOP_P.value <= 1), ("batch_size", _BATCH.value >= 1)):
      if not ok:
        raise UserError(f"--{name}: out of range")
    import jaxalign
    jaxalign.set_xla_cpu_flags()
    from jaxalign.runs import load_policy, write_jsonl
    prompts = read_prompts(_PROMPTS.value)
    policy = load_policy(_RUN.value, _HF.value, step=_STEP.value, chat_template=_CHAT.value)
    plen = _PROMPT_LEN.value or (int(policy.config.data.prompt_len) if policy.config is not None else 256)
    if plen + _MAX_NEW.value > policy.cfg.max_len:
      raise UserError(f"--prompt_len + --max_new_tokens = {plen + _MAX_NEW.value} exceeds the model's "
                      f"max_len={policy.cfg.max_len}")
    rows = sample_texts(policy, prompts, n=_N.value, max_new_tokens=_MAX_NEW.value, temperature=_TEMP.value,
                        top_k=_TOP_K.value, top_p=_TOP_P.value, seed=_SEED.value, prompt_len=plen,
                        batch_size=_BATCH.value)
    if _OUT.value == "-":
      sys.stdout.writelines(json.dumps(r) + "\n" for r in rows)
    else:
      write_jsonl(_OUT.value, rows)
      print(json.dumps({"out": os.path.abspath(_OUT.value), "samples": len(rows), "model": policy.source}))
  run_cli(body, argv, what_path=lambda: _OUT.value)


if __name__ == "__main__":
  main()
