"""Packing variable-length preference pairs into rows: no compute on padding.

The fixed layout gives every sequence (prompt + one completion) its own `P + C` row, so
short pairs pay for padding. The packed layout puts several sequences in one row of the
same length `L = P + C`: each sequence is a segment with its own segment id (the model
masks attention across segments) and positions that restart at 0, so every sequence is
scored exactly as in its own row. Each pair contributes two sequences, prompt + chosen
and prompt + rejected.

A packed batch holds, for `R` rows and `S = C` scored slots per row:
  tokens, positions, segment_ids  [R, L]  the model's inputs (segment 0 = padding)
  score_pos [R, S]   row position whose hidden state predicts a completion token
  targets   [R, S]   that completion token
  seq_idx   [R, S]   which sequence the slot belongs to: chosen of pair i -> i, rejected
                     -> b + i, with b the pairs of the microbatch; unused slots -> 2b
  chosen_len, rejected_len [B]  completion lengths (losses that normalise by length)
plus every per-pair array of the input batch (e.g. precomputed reference log-probs).

Rows are filled first-fit-decreasing under two budgets: `L` tokens and `S` scored
tokens per row (the log-prob head runs on `R x S` positions, as the fixed layout runs on
`2B x C`). Any sequence fits an empty row, so `R <= 2B` always.

Shapes must not change every step (each new shape compiles the step again): the row
count is rounded up to a `bucket` (all counts up to 8, then four per
octave), so a run compiles at most a handful of times. The batch is packed in `groups`
contiguous groups of pairs with the same row count each (groups = grad_accum x
processes), so a microbatch and a process's slice of the rows hold exactly the pairs of
the matching slice of the per-pair arrays; `row_multiple` makes each group's row count
divisible by the batch shards.
"""

from __future__ import annotations

import numpy as np

_PAIR_KEYS = ("prompt", "prompt_mask", "chosen", "chosen_mask", "rejected", "rejected_mask")


def bucket(n: int) -> int:
  """Smallest bucket >= n: every size up to 8, then 10, 12, 14, 16, 20, 24, 28, 32, 40, ...
  (four per octave, at most 25% over n). Shapes drawn from buckets compile a bounded number of times."""
  if n <= 8:
    return max(n, 1)
  step = 1 << (int(n - 1).bit_length() - 3)  # four buckets per octave
  return -(-n // step) * step


def _first_fit(lengths: np.ndarray, scored: np.ndarray, row_len: int, score_len: int) -> list[list[int]]:
  """First-fit decreasing over two budgets; returns the sequence indices of each row."""
  rows: list[list[int]] = []
  free_tok: list[int] = []
  free_score: list[int] = []
  for j in np.argsort(-lengths, kind="stable"):
    n, s = int(lengths[j]), int(scored[j])
    for r in range(len(rows)):
      if free_tok[r] >= n and free_score[r] >= s:
        rows[r].append(int(j))
        free_tok[r] -= n
        free_score[r] -= s
        break
    else:
      rows.append([int(j)])
      free_tok.append(row_len - n)
      free_score.append(score_len - s)
  return rows


def pack_pairs(batch: dict[str, np.ndarray], *, groups: int = 1, row_multiple: int = 1,
               micro_groups: int = 1) -> dict[str, np.ndarray]:
  """Packs a fixed-layout preference batch (left-padded prompt `[B, P]`, right-padded
  chosen/rejected `[B, C]`, masks) into the layout of the module docstring.

  `groups` contiguous groups of pairs are packed separately to the same row count;
  `micro_groups` consecutive groups make one microbatch (its `seq_idx` count from 0);
  each group's row count is a multiple of `row_multiple`.
  """
  prompt, pmask = batch["prompt"], batch["prompt_mask"].astype(bool)
  b, p = prompt.shape
  c = batch["chosen"].shape[1]
  if b % groups or groups % micro_groups:
    raise ValueError(f"{b} pairs do not split into {groups} groups of {micro_groups} per microbatch")
  row_len, score_len = p + c, c
  bg = b // groups
  b_micro = bg * micro_groups
  plen = pmask.sum(1)
  comp = {s: (batch[s], batch[f"{s}_mask"].astype(bool)) for s in ("chosen", "rejected")}
  clen = {s: m.sum(1) for s, (_, m) in comp.items()}
  if (plen < 1).any():
    raise ValueError("packing needs at least one prompt token per pair")

  layouts = []
  for g in range(groups):
    pairs = np.arange(g * bg, (g + 1) * bg)
    # Sequence k of the group: k < bg is the chosen side of pair k, else the rejected side.
    scored = np.concatenate([clen["chosen"][pairs], clen["rejected"][pairs]])
    lengths = np.concatenate([plen[pairs], plen[pairs]]) + scored
    layouts.append(_first_fit(lengths, scored, row_len, score_len))
  n_rows = max(len(rows) for rows in layouts)
  n_rows = min(bucket(n_rows), 2 * bg)
  n_rows = -(-n_rows // row_multiple) * row_multiple

  total = groups * n_rows
  tokens = np.zeros((total, row_len), np.int32)
  positions = np.zeros((total, row_len), np.int32)
  segment_ids = np.zeros((total, row_len), np.int32)
  score_pos = np.zeros((total, score_len), np.int32)
  targets = np.zeros((total, score_len), np.int32)
  seq_idx = np.full((total, score_len), 2 * b_micro, np.int32)
  for g, rows in enumerate(layouts):
    offset_in_micro = (g % micro_groups) * bg  # pair index of this group's first pair in its microbatch
    for r, members in enumerate(rows):
      row = g * n_rows + r
      at, slot = 0, 0
      for seg, k in enumerate(members):
        side = "chosen" if k < bg else "rejected"
        i = g * bg + (k % bg)  # pair index in the batch
        ptoks = prompt[i][pmask[i]]
        ctoks = comp[side][0][i][comp[side][1][i]]
        n_p, n_c = len(ptoks), len(ctoks)
        tokens[row, at:at + n_p] = ptoks
        tokens[row, at + n_p:at + n_p + n_c] = ctoks
        positions[row, at:at + n_p + n_c] = np.arange(n_p + n_c)
        segment_ids[row, at:at + n_p + n_c] = seg + 1
        # Completion token j sits at at + n_p + j and is predicted by the position before it.
        score_pos[row, slot:slot + n_c] = at + n_p - 1 + np.arange(n_c)
        targets[row, slot:slot + n_c] = ctoks
        seq_idx[row, slot:slot + n_c] = offset_in_micro + (k % bg) + (0 if side == "chosen" else b_micro)
        at += n_p + n_c
        slot += n_c
  out = dict(tokens=tokens, positions=positions, segment_ids=segment_ids, score_pos=score_pos,
             targets=targets, seq_idx=seq_idx,
             chosen_len=clen["chosen"].astype(np.int32), rejected_len=clen["rejected"].astype(np.int32))
  # Per-pair arrays (e.g. precomputed reference log-probs) pass through unchanged.
  out.update({k: v for k, v in batch.items() if k not in _PAIR_KEYS})
  return out


def packed_tokens(packed: dict[str, np.ndarray]) -> int:
  """Real (non-padding) tokens of a packed batch."""
  return int((packed["segment_ids"] > 0).sum())
