"""Packing variable-length preference pairs (and lists of K completions) into rows: no compute on padding.

The fixed layout gives every sequence (prompt + one completion) its own `P + C` row, so
short pairs pay for padding. The packed layout puts several segments in one row: each
segment has its own segment id (the model masks attention across segments) and
positions that restart at 0, so every sequence is scored exactly as in its own row.

With `share_prompt=True` (the default) a pair is ONE segment, prompt + chosen + rejected,
in rows of `L = P + 2C`: `branch_ids` are 0 on the prompt, 1 on chosen, 2 on rejected, and
a token attends to earlier tokens of its segment on the prompt or on its own branch, so
rejected never sees chosen; the rejected tokens' positions restart where the prompt ends.
The prompt is run once per pair instead of twice. With `share_prompt=False` a pair gives
two segments, prompt + chosen and prompt + rejected, in rows of `L = P + C` (branch 0).
Lists of K completions per prompt (`pack_lists`; listwise losses) are the same with K branches:
`L = P + K·C`, branch k + 1 for completion k; pairs are K = 2 (`pack_pairs` is `pack_lists` on
`[chosen, rejected]`).

A packed batch holds, for `R` rows in `G` blocks (one block per batch shard and group):
  tokens, positions, segment_ids, branch_ids  [R, L]  the model's inputs (segment 0 = padding)
  score_pos [G, N]  position in the block's rows, flattened (`row_in_block * L + column`),
                    whose hidden state predicts a completion token
  targets   [G, N]  that completion token
  seq_idx   [G, N]  which sequence the slot belongs to: chosen of pair i -> i, rejected
                    -> b + i, with b the pairs of the microbatch; unused slots -> 2b
  chosen_len, rejected_len [B]  completion lengths (losses that normalise by length)
plus every per-pair array of the input batch (e.g. precomputed reference log-probs).
Only the `G x N` scored slots go through the vocabulary projection: `N` is two thirds of a
block's tokens (all of them for the rare batch whose completions need more), where the
fixed layout scores every completion column of every row.

Rows are filled first-fit-decreasing under the `L` token budget (any pair fits an empty
row). Shapes must not change every step (each new shape compiles the step
again): the row count is rounded up to a `bucket` (all counts up to 8, then four per
octave) and `N` follows it, so a run compiles a handful of times. The batch is packed in `groups`
contiguous groups of pairs with the same row count each (groups = grad_accum x
processes), so a microbatch and a process's slice of the rows hold exactly the pairs of
the matching slice of the per-pair arrays; each group's rows are `row_multiple` blocks
(the batch shards), and pairs are spread over the blocks by first fit on rows.
"""

from __future__ import annotations

import numpy as np

_PAIR_KEYS = ("prompt", "prompt_mask", "chosen", "chosen_mask", "rejected", "rejected_mask")
_LIST_KEYS = ("prompt", "prompt_mask", "completions", "completions_mask")


def bucket(n: int) -> int:
  """Smallest bucket >= n: every size up to 8, then 10, 12, 14, 16, 20, 24, 28, 32, 40, ...
  (four per octave, at most 25% over n). Shapes drawn from buckets compile a bounded number of times."""
  if n <= 8:
    return max(n, 1)
  step = 1 << (int(n - 1).bit_length() - 3)  # four buckets per octave
  return -(-n // step) * step


def _first_fit(lengths: np.ndarray, row_len: int) -> list[list[int]]:
  """First-fit decreasing over a token budget; returns the item indices of each row."""
  rows: list[list[int]] = []
  free: list[int] = []
  for j in np.argsort(-lengths, kind="stable"):
    n = int(lengths[j])
    for r in range(len(rows)):
      if free[r] >= n:
        rows[r].append(int(j))
        free[r] -= n
        break
    else:
      rows.append([int(j)])
      free.append(row_len - n)
  return rows


def pack_pairs(batch: dict[str, np.ndarray], *, groups: int = 1, row_multiple: int = 1,
               micro_groups: int = 1, share_prompt: bool = True) -> dict[str, np.ndarray]:
  """Packs a fixed-layout preference batch (left-padded prompt `[B, P]`, right-padded
  chosen/rejected `[B, C]`, masks) into the layout of the module docstring: `pack_lists` with
  K = 2 (chosen is completion 0, rejected 1), plus `chosen_len` / `rejected_len`.
  """
  lists = {k: v for k, v in batch.items() if k not in _PAIR_KEYS}
  lists.update(prompt=batch["prompt"], prompt_mask=batch["prompt_mask"],
               completions=np.stack([batch["chosen"], batch["rejected"]], 1),
               completions_mask=np.stack([batch["chosen_mask"], batch["rejected_mask"]], 1))
  out = pack_lists(lists, groups=groups, row_multiple=row_multiple, micro_groups=micro_groups,
                   share_prompt=share_prompt)
  lens = out.pop("completion_lens")
  out.update(chosen_len=lens[:, 0], rejected_len=lens[:, 1])
  return out


def pack_lists(batch: dict[str, np.ndarray], *, groups: int = 1, row_multiple: int = 1,
               micro_groups: int = 1, share_prompt: bool = True) -> dict[str, np.ndarray]:
  """Packs K completions per prompt (left-padded prompt `[B, P]`, right-padded `completions` `[B, K, C]` and
  `completions_mask`; an all-padding completion is simply absent) into the layout of the module docstring,
  with branch k + 1 for completion k when the prompt is shared (rows of `P + K·C`), and `seq_idx` of
  completion k of list i = `k·b + i` (b the lists of the microbatch; unused slots `K·b`). Returns
  `completion_lens [B, K]` too. K = 2 is the pair layout.

  `groups` contiguous groups of lists are packed separately to the same row count;
  `micro_groups` consecutive groups make one microbatch (its `seq_idx` count from 0);
  each group's rows form `row_multiple` blocks of equal row count.
  """
  prompt, pmask = batch["prompt"], batch["prompt_mask"].astype(bool)
  comps, cmasks = batch["completions"], batch["completions_mask"].astype(bool)
  b, p = prompt.shape
  k_list, c = comps.shape[1], comps.shape[2]
  if b % groups or groups % micro_groups:
    raise ValueError(f"{b} lists do not split into {groups} groups of {micro_groups} per microbatch")
  row_len = p + k_list * c if share_prompt else p + c
  bg = b // groups
  b_micro = bg * micro_groups
  plen = pmask.sum(1)
  clen = cmasks.sum(2)  # [B, K]
  if (plen < 1).any():
    raise ValueError("packing needs at least one prompt token per list")

  # A segment is (list, completions): all K share the prompt, else one completion each.
  side_sets = [tuple(range(k_list))] if share_prompt else [(k,) for k in range(k_list)]
  layouts = []
  for g in range(groups):
    segs = [(i, sides) for sides in side_sets for i in range(g * bg, (g + 1) * bg)
            if sum(clen[i, k] for k in sides) > 0 or share_prompt]
    lengths = np.array([plen[i] + sum(clen[i, k] for k in sides) for i, sides in segs])
    layouts.append([[segs[j] for j in row] for row in _first_fit(lengths, row_len)])
  rows_per_block = -(-bucket(max(len(rows) for rows in layouts)) // row_multiple)
  n_rows = rows_per_block * row_multiple

  total = groups * n_rows
  tokens = np.zeros((total, row_len), np.int32)
  positions = np.zeros((total, row_len), np.int32)
  segment_ids = np.zeros((total, row_len), np.int32)
  branch_ids = np.zeros((total, row_len), np.int32)
  slots = []  # per block: (flat positions, targets, seq idx) of its scored tokens
  for g, rows in enumerate(layouts):
    offset_in_micro = (g % micro_groups) * bg  # list index of this group's first list in its microbatch
    # Rows go to blocks round-robin by size (largest first), so blocks hold similar numbers of tokens.
    blocks = [[] for _ in range(row_multiple)]
    for r in range(len(rows)):
      blocks[r % row_multiple].append(r)
    for blk, members_of_block in enumerate(blocks):
      pos_l, tgt_l, idx_l = [], [], []
      for r_in_block, r in enumerate(members_of_block):
        row = g * n_rows + blk * rows_per_block + r_in_block
        at = 0
        for seg, (i, sides) in enumerate(rows[r]):
          ptoks = prompt[i][pmask[i]]
          n_p = len(ptoks)
          tokens[row, at:at + n_p] = ptoks
          positions[row, at:at + n_p] = np.arange(n_p)
          segment_ids[row, at:at + n_p] = seg + 1
          last_prompt = at + n_p - 1
          at += n_p
          for k in sides:
            ctoks = comps[i, k][cmasks[i, k]]
            n_c = len(ctoks)
            tokens[row, at:at + n_c] = ctoks
            positions[row, at:at + n_c] = n_p + np.arange(n_c)
            segment_ids[row, at:at + n_c] = seg + 1
            branch_ids[row, at:at + n_c] = k + 1 if share_prompt else 0
            # Completion token j is predicted by the token before it: the prompt's last for j = 0.
            pred = np.concatenate([[last_prompt], at + np.arange(n_c - 1)]) if n_c else np.zeros(0, np.int64)
            pos_l.append(r_in_block * row_len + pred)
            tgt_l.append(ctoks)
            idx_l.append(np.full(n_c, offset_in_micro + (i - g * bg) + k * b_micro))
            at += n_c
      slots.append(tuple(np.concatenate(x).astype(np.int32) if x else np.zeros(0, np.int32)
                         for x in (pos_l, tgt_l, idx_l)))
  # Scored slots per block: two thirds of the block's tokens, or all of them when a block needs more.
  # Tying N to the row count keeps the shapes a run compiles for few (one family per row count).
  need = max(1, max(len(x[0]) for x in slots))
  n_slots = next(n for n in (-(-2 * rows_per_block * row_len // 3), rows_per_block * row_len) if n >= need)
  score_pos = np.zeros((len(slots), n_slots), np.int32)
  targets = np.zeros((len(slots), n_slots), np.int32)
  seq_idx = np.full((len(slots), n_slots), k_list * b_micro, np.int32)
  for j, (pos, tgt, idx) in enumerate(slots):
    score_pos[j, :len(pos)], targets[j, :len(pos)], seq_idx[j, :len(pos)] = pos, tgt, idx
  out = dict(tokens=tokens, positions=positions, segment_ids=segment_ids, branch_ids=branch_ids,
             score_pos=score_pos, targets=targets, seq_idx=seq_idx, completion_lens=clen.astype(np.int32))
  # Per-list arrays (e.g. precomputed reference log-probs, labels) pass through unchanged.
  out.update({k: v for k, v in batch.items() if k not in _LIST_KEYS})
  return out


def packed_tokens(packed: dict[str, np.ndarray]) -> int:
  """Real (non-padding) tokens of a packed batch."""
  return int((packed["segment_ids"] > 0).sum())
