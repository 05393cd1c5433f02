"""Text examples -> fixed-layout token arrays -> batches that are a function of (seed, step).

Layout of every row: the prompt left-padded to `P` tokens, then the completion
right-padded to `C` tokens, so completion token `j` is predicted by the hidden state
at position `P - 1 + j` and scoring touches only those `C` positions.
Truncation: prompts lose tokens from the left (the end of a conversation matters
most), completions from the right; both configurable. A completion gets EOS
appended unless the example says it was never finished.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np

from jaxalign.data import builtin
from jaxalign.data.tokenizer import Tokenizer
from jaxalign.errors import UserError


def _fit(ids: list[int], n: int, side: str) -> list[int]:
  if len(ids) <= n:
    return ids
  return ids[-n:] if side == "left" else ids[:n]


def encode_prompts(tok: Tokenizer, prompts: list[str], prompt_len: int, truncation: str = "left"):
  """Left-padded prompt ids `[N, P]` and mask."""
  ids = np.full((len(prompts), prompt_len), tok.pad_id, np.int32)
  mask = np.zeros((len(prompts), prompt_len), np.int32)
  for i, p in enumerate(prompts):
    t = _fit(([tok.bos_id] if tok.bos_id >= 0 else []) + tok.encode(p), prompt_len, truncation)
    if t:
      ids[i, prompt_len - len(t):] = t
      mask[i, prompt_len - len(t):] = 1
  return ids, mask


def encode_completions(tok: Tokenizer, texts: list[str], completion_len: int, finished=None,
                       truncation: str = "right"):
  """Right-padded completion ids `[N, C]` and mask; EOS appended to finished ones."""
  ids = np.full((len(texts), completion_len), tok.pad_id, np.int32)
  mask = np.zeros((len(texts), completion_len), np.int32)
  for i, c in enumerate(texts):
    done = True if finished is None else bool(finished[i])
    t = _fit(tok.encode(c) + ([tok.eos_id] if done else []), completion_len, truncation)
    ids[i, :len(t)] = t
    mask[i, :len(t)] = 1
  return ids, mask


def tokenize_preference(tok: Tokenizer, examples: list[dict], prompt_len: int, completion_len: int,
                        prompt_truncation: str = "left", completion_truncation: str = "right") -> dict:
  prompt, prompt_mask = encode_prompts(tok, [e["prompt"] for e in examples], prompt_len, prompt_truncation)
  out = dict(prompt=prompt, prompt_mask=prompt_mask)
  for side in ("chosen", "rejected"):
    fin = [e.get(f"{side}_finished", True) for e in examples]
    out[side], out[f"{side}_mask"] = encode_completions(
        tok, [e[side] for e in examples], completion_len, fin, completion_truncation)
  # A row whose completion lost every token to truncation cannot be scored.
  keep = (out["chosen_mask"].sum(1) > 0) & (out["rejected_mask"].sum(1) > 0) & (prompt_mask.sum(1) > 0)
  return {k: v[keep] for k, v in out.items()}


def tokenize_lists(tok: Tokenizer, examples: list[dict], prompt_len: int, completion_len: int,
                   prompt_truncation: str = "left", completion_truncation: str = "right") -> dict:
  """Lists of completions: `prompt [N, P]`, `completions [N, K, C]` (+ masks), `scores [N, K]` (float32) and
  `list_mask [N, K]`, K the longest list (shorter lists padded with empty completions, mask False). A list
  left with fewer than two scorable completions after truncation (or without a prompt token) is dropped."""
  k = max(len(e["completions"]) for e in examples)
  prompt, prompt_mask = encode_prompts(tok, [e["prompt"] for e in examples], prompt_len, prompt_truncation)
  comps = np.full((len(examples), k, completion_len), tok.pad_id, np.int32)
  masks = np.zeros((len(examples), k, completion_len), np.int32)
  scores = np.zeros((len(examples), k), np.float32)
  for j in range(k):
    rows = [i for i, e in enumerate(examples) if len(e["completions"]) > j]
    fin = [examples[i].get("finished", [True] * k)[j] for i in rows]
    comps[rows, j], masks[rows, j] = encode_completions(tok, [examples[i]["completions"][j] for i in rows],
                                                        completion_len, fin, completion_truncation)
    scores[rows, j] = [examples[i]["scores"][j] for i in rows]
  list_mask = masks.sum(2) > 0
  keep = (list_mask.sum(1) >= 2) & (prompt_mask.sum(1) > 0)
  out = dict(prompt=prompt, prompt_mask=prompt_mask, completions=comps, completions_mask=masks, scores=scores,
             list_mask=list_mask)
  return {key: v[keep] for key, v in out.items()}


def tokenize_joint(tok: Tokenizer, examples: list[dict], prompt_len: int, completion_len: int,
                   prompt_truncation: str = "left", completion_truncation: str = "right") -> dict:
  """JPO pairs whose prompts may differ, in the pair layout with the prompt tokens moved into the scored part:
  the shared "prompt" is the start token alone (BOS; EOS for a tokenizer without one), and each side is
  `prompt tokens + response tokens (+ EOS)` (`P − 1 + C` columns; the prompt truncated like a prompt, the
  response like a completion). Summed log-probs are then the joint `log π(x) + log π(y|x)`; the token sequence
  the model sees is the same as in `tokenize_preference`, so with one shared prompt the DPO margin is unchanged."""
  start = tok.bos_id if tok.bos_id >= 0 else tok.eos_id
  n = len(examples)
  width = prompt_len - 1 + completion_len
  out = dict(prompt=np.full((n, 1), start, np.int32), prompt_mask=np.ones((n, 1), np.int32))
  for side in ("chosen", "rejected"):
    ids = np.full((n, width), tok.pad_id, np.int32)
    mask = np.zeros((n, width), np.int32)
    for i, e in enumerate(examples):
      x = _fit(tok.encode(e[f"{side}_prompt"]), prompt_len - 1, prompt_truncation)
      y = _fit(tok.encode(e[side]) + ([tok.eos_id] if e.get(f"{side}_finished", True) else []), completion_len,
               completion_truncation)
      t = x + y
      ids[i, :len(t)], mask[i, :len(t)] = t, 1
    out[side], out[f"{side}_mask"] = ids, mask
  keep = (out["chosen_mask"].sum(1) > 0) & (out["rejected_mask"].sum(1) > 0)
  return {k: v[keep] for k, v in out.items()}


def tokenize_sft(tok: Tokenizer, examples: list[dict], prompt_len: int, completion_len: int,
                 prompt_truncation: str = "left", completion_truncation: str = "right") -> dict:
  prompt, prompt_mask = encode_prompts(tok, [e["prompt"] for e in examples], prompt_len, prompt_truncation)
  comp, comp_mask = encode_completions(tok, [e["completion"] for e in examples], completion_len,
                                       None, completion_truncation)
  return dict(prompt=prompt, prompt_mask=prompt_mask, completion=comp, completion_mask=comp_mask)


def tokenize_binary(tok: Tokenizer, examples: list[dict], prompt_len: int, completion_len: int,
                    prompt_truncation: str = "left", completion_truncation: str = "right") -> dict:
  """Unpaired rows: prompt, completion (+masks), `label` (1 thumbs-up, 0 thumbs-down), and the KTO
  mismatched completion `kl_completion` (+mask): row i gets row i−1's completion, cycled over the
  dataset (TRL pairs each example with its neighbour's completion before training)."""
  prompt, prompt_mask = encode_prompts(tok, [e["prompt"] for e in examples], prompt_len, prompt_truncation)
  comp, comp_mask = encode_completions(tok, [e["completion"] for e in examples], completion_len,
                                       [e.get("finished", True) for e in examples], completion_truncation)
  label = np.asarray([bool(e["label"]) for e in examples], np.int32)
  keep = (comp_mask.sum(1) > 0) & (prompt_mask.sum(1) > 0)
  out = dict(prompt=prompt, prompt_mask=prompt_mask, completion=comp, completion_mask=comp_mask, label=label)
  out = {k: v[keep] for k, v in out.items()}
  out["kl_completion"] = np.roll(out["completion"], 1, axis=0)
  out["kl_completion_mask"] = np.roll(out["completion_mask"], 1, axis=0)
  return out


def batch_indices(seed: int, step: int, batch_size: int, n: int) -> np.ndarray:
  """Example indices of batch `step`: epochs are seeded permutations, so order = f(seed, step)."""
  if n == 0:
    raise UserError("data: no examples after tokenisation")
  flat = np.arange(step * batch_size, (step + 1) * batch_size)
  epochs, pos = flat // n, flat % n
  out = np.empty(batch_size, np.int64)
  for e in np.unique(epochs):
    perm = np.random.default_rng([seed, int(e)]).permutation(n)
    out[epochs == e] = perm[pos[epochs == e]]
  return out


def rows_visited(seed: int, steps: int, batch_size: int, n: int) -> np.ndarray:
  """The sorted row indices `batch_indices` gives over steps 0..steps-1 (all rows once an epoch is done)."""
  seen = int(steps) * int(batch_size)
  if seen >= n:
    return np.arange(n)
  return np.sort(np.random.default_rng([seed, 0]).permutation(n)[:seen])


def get_batch(arrays: dict, idx: np.ndarray) -> dict:
  return {k: v[idx] for k, v in arrays.items()}


def process_slice(batch: dict) -> dict:
  """This process's rows of a global batch (multi-host: each host feeds its devices)."""
  import jax
  n = next(iter(batch.values())).shape[0]
  per = n // jax.process_count()
  lo = jax.process_index() * per
  return {k: v[lo:lo + per] for k, v in batch.items()}


def prompt_pool(data_cfg, seed: int) -> list[str]:
  """The training prompts online rollouts draw from: the built-in task's, or the data's distinct prompts
  (those of the held-out split left out, see `heldout_prompts`)."""
  if data_cfg.source == "builtin":
    return list(builtin.TRAIN_PROMPTS)
  return list(dict.fromkeys(r["prompt"] for r in preference_split(data_cfg, seed)[0]))


def heldout_prompts(data_cfg, seed: int) -> list[str]:
  """The distinct prompts of a user source's held-out split (none for the built-in task)."""
  if data_cfg.source == "builtin":
    return []
  return list(dict.fromkeys(r["prompt"] for r in preference_split(data_cfg, seed)[1]))


def fingerprint(arrays: dict) -> str:
  h = hashlib.sha256()
  for k in sorted(arrays):
    h.update(k.encode())
    h.update(np.ascontiguousarray(arrays[k]).tobytes())
  return h.hexdigest()[:16]


# ---- building datasets from config ----

def load_tokenizer(data_cfg, workdir: str) -> Tokenizer:
  if data_cfg.tokenizer:
    return Tokenizer(data_cfg.tokenizer)
  if data_cfg.source == "builtin":
    return builtin.builtin_tokenizer(os.path.join(workdir, "tokenizer"))
  raise UserError(f"config data.tokenizer: required for data.source={data_cfg.source!r} "
                  "(path to a sentencepiece .model)")


def preference_examples(data_cfg, seed: int) -> list[dict]:
  if data_cfg.source == "builtin":
    return builtin.preference_pairs(int(data_cfg.num_examples), seed=seed,
                                    corrupt_frac=float(data_cfg.corrupt_frac))
  from jaxalign.data import sources
  if not data_cfg.path:
    raise UserError(f"config data.path: required for data.source={data_cfg.source!r}")
  rows = sources.load_preference(data_cfg.source, data_cfg.path, split=data_cfg.split)
  return rows[:data_cfg.num_examples] if data_cfg.num_examples > 0 else rows


def _split(data_cfg, read) -> tuple[list[dict], list[dict]]:
  """`(training rows, held-out rows)` of a user source: `read(path, split)` gives its rows, which
  `jaxalign.data.heldout.split_heldout` splits (`data.eval_path` / `eval_split` read the same way) before
  `num_examples` cuts the training rows."""
  from jaxalign.data.heldout import split_heldout
  if not data_cfg.path:
    raise UserError(f"config data.path: required for data.source={data_cfg.source!r}")

  def load_eval():
    if data_cfg.source == "tfds":
      return read(data_cfg.path, data_cfg.eval_split or data_cfg.split)
    return read(data_cfg.eval_path or data_cfg.path, data_cfg.split)
  train, held = split_heldout(read(data_cfg.path, data_cfg.split), data_cfg, load_eval)
  if not train:
    raise UserError(f"{data_cfg.path}: no training rows left after the held-out split "
                    f"(data.eval_fraction={data_cfg.eval_fraction})")
  n = int(data_cfg.num_examples)
  return (train[:n] if n > 0 else train), held


def preference_split(data_cfg, seed: int) -> tuple[list[dict], list[dict]]:
  """`(training pairs, held-out pairs)`: the built-in task has no held-out pairs (its evaluator samples its
  own held-out prompts); other sources are split by `jaxalign.data_eval.split_heldout` before
  `num_examples` cuts the training rows."""
  if data_cfg.source == "builtin":
    return preference_examples(data_cfg, seed), []
  from jaxalign.data import sources
  return _split(data_cfg, lambda path, split: sources.load_preference(data_cfg.source, path, split=split))


def list_split(data_cfg, seed: int) -> tuple[list[dict], list[dict]]:
  """`(training lists, held-out lists)` for the listwise losses, rows `{prompt, completions, scores}`: the
  built-in task's lists (`data.list_size` completions per prompt, `builtin.preference_lists`); a JSONL file
  of lists (`sources.read_list_jsonl`); any preference source's pairs as lists of two (scores 1 and 0)."""
  if data_cfg.source == "builtin":
    return builtin.preference_lists(int(data_cfg.num_examples), int(data_cfg.get("list_size", 4)), seed=seed,
                                    corrupt_frac=float(data_cfg.corrupt_frac)), []
  from jaxalign.data import sources

  def read(path, split):
    if data_cfg.source == "jsonl" and "completions" in sources.first_object(path):
      return sources.read_list_jsonl(path)
    return [{"prompt": r["prompt"], "completions": [r["chosen"], r["rejected"]], "scores": [1.0, 0.0]}
            for r in sources.load_preference(data_cfg.source, path, split=split)]
  return _split(data_cfg, read)


def negative_split(data_cfg, seed: int) -> tuple[list[dict], list[dict]]:
  """`(training rows, held-out rows)` of D²O's human negatives `{prompt, rejected}`: the rejected side of the
  built-in task's pairs (noisy labels, as a human's); a JSONL file of negatives or of pairs; any preference
  source's rejected side."""
  if data_cfg.source == "builtin":
    return [{"prompt": r["prompt"], "rejected": r["rejected"], "rejected_finished": r["rejected_finished"]}
            for r in preference_examples(data_cfg, seed)], []
  from jaxalign.data import sources

  def read(path, split):
    if data_cfg.source == "jsonl":
      return sources.read_negative_jsonl(path)
    return [{"prompt": r["prompt"], "rejected": r["rejected"]}
            for r in sources.load_preference(data_cfg.source, path, split=split)]
  return _split(data_cfg, read)


def tokenize_negatives(tok: Tokenizer, examples: list[dict], prompt_len: int, completion_len: int,
                       prompt_truncation: str = "left", completion_truncation: str = "right") -> dict:
  """D²O rows: `prompt [N, P]`, the human negative `negative [N, C]` (+ masks); the self-sampled completions are
  added by the trainer."""
  prompt, prompt_mask = encode_prompts(tok, [e["prompt"] for e in examples], prompt_len, prompt_truncation)
  neg, neg_mask = encode_completions(tok, [e["rejected"] for e in examples], completion_len,
                                     [e.get("rejected_finished", True) for e in examples], completion_truncation)
  keep = (neg_mask.sum(1) > 0) & (prompt_mask.sum(1) > 0)
  return {k: v[keep] for k, v in dict(prompt=prompt, prompt_mask=prompt_mask, negative=neg,
                                      negative_mask=neg_mask).items()}


def joint_split(data_cfg, seed: int) -> tuple[list[dict], list[dict]]:
  """`(training rows, held-out rows)` for JPO, rows `{chosen_prompt, chosen, rejected_prompt, rejected}`: the
  built-in task's pairs with a `data.joint_fraction` share re-paired across prompts (`builtin.joint_pairs`);
  a JSONL file of such rows or of ordinary pairs (`sources.read_joint_jsonl`); any other preference source's
  pairs (one prompt for both sides: JPO is then DPO)."""
  if data_cfg.source == "builtin":
    return builtin.joint_pairs(int(data_cfg.num_examples), seed=seed,
                               joint_fraction=float(data_cfg.get("joint_fraction", 0.5)),
                               corrupt_frac=float(data_cfg.corrupt_frac)), []
  from jaxalign.data import sources

  def read(path, split):
    if data_cfg.source == "jsonl":
      return sources.read_joint_jsonl(path)
    return [{"chosen_prompt": r["prompt"], "chosen": r["chosen"], "rejected_prompt": r["prompt"],
             "rejected": r["rejected"]} for r in sources.load_preference(data_cfg.source, path, split=split)]
  return _split(data_cfg, read)


def pairs_to_binary(rows: list[dict]) -> list[dict]:
  """Each preference pair -> a thumbs-up row (chosen) and a thumbs-down row (rejected)."""
  out = []
  for r in rows:
    out.append({"prompt": r["prompt"], "completion": r["chosen"], "label": True,
                "finished": r.get("chosen_finished", True)})
    out.append({"prompt": r["prompt"], "completion": r["rejected"], "label": False,
                "finished": r.get("rejected_finished", True)})
  return out


def binary_examples(data_cfg, seed: int) -> list[dict]:
  """Unpaired thumbs-up / thumbs-down rows `{prompt, completion, label[, finished]}` (the training side of
  `binary_split`).

  `data.feedback="binary"`: the source holds unpaired rows (built-in: `binary_feedback`, whose two
  classes may come from different prompt families with `data.split_families`; jsonl: `{"prompt",
  "completion", "label"}`); `"pairs"`: preference pairs split into one row per side (HH-RLHF is
  always split this way). `num_examples` counts rows.
  """
  return binary_split(data_cfg, seed)[0]


def binary_split(data_cfg, seed: int) -> tuple[list[dict], list[dict]]:
  """`(training rows, held-out rows)` of the unpaired trainer: the built-in task has no held-out rows (its
  evaluator samples its own prompts); other sources are split as `preference_split` splits pairs (by prompt,
  so the two rows of a split pair stay together; `data.eval_path` / `eval_split` read in the same format)
  before `num_examples` cuts the training rows."""
  n = int(data_cfg.num_examples)
  if data_cfg.source == "builtin":
    if data_cfg.feedback == "pairs":
      return pairs_to_binary(builtin.preference_pairs((n + 1) // 2, seed=seed,
                                                      corrupt_frac=float(data_cfg.corrupt_frac)))[:n], []
    return builtin.binary_feedback(n, seed=seed, split_families=bool(data_cfg.split_families),
                                   corrupt_frac=float(data_cfg.corrupt_frac)), []
  from jaxalign.data import sources

  def read(path: str, split: str) -> list[dict]:
    if data_cfg.source == "jsonl" and data_cfg.feedback == "binary":
      return sources.read_binary_jsonl(path)
    return pairs_to_binary(sources.load_preference(data_cfg.source, path, split=split))
  return _split(data_cfg, read)


def sft_examples(data_cfg, seed: int) -> list[dict]:
  if data_cfg.source == "builtin":
    return builtin.sft_corpus(int(data_cfg.num_examples), seed=seed)
  from jaxalign.data import sources
  if not data_cfg.path:
    raise UserError(f"config data.path: required for data.source={data_cfg.source!r}")
  if data_cfg.source == "jsonl":
    rows = sources.read_sft_jsonl(data_cfg.path)
  else:  # preference sources: fine-tune on the chosen responses
    rows = [dict(prompt=r["prompt"], completion=r["chosen"])
            for r in sources.load_preference(data_cfg.source, data_cfg.path, split=data_cfg.split)]
  return rows[:data_cfg.num_examples] if data_cfg.num_examples > 0 else rows
