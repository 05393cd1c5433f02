"""Token labels from revisions (TLCR, algorithms.md §6.1).

A rejected response `y_r` and its minimal revision `y_m` (both token ids, no special tokens) are
aligned by Levenshtein distance with unit costs. Walking back from the end of both sequences, each
step takes the first minimal operation in the order D (delete a `y_r` token), A (add a `y_m` token),
S (the diagonal: substitute, or keep when the two tokens are equal):

  y_r tokens   deleted or substituted → −1 (negative), unchanged → 0
  y_m tokens   added or substituted   → +1 (positive), unchanged → 0

`edit_labels` labels one pair; `edit_labels_batch` labels many at once: the DP runs row by row over a
block of pairs (numpy, vectorised over the pairs and along each row: the in-row "add" recurrence is a
running minimum), then all pairs walk back together.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

_BLOCK = 256  # pairs per DP block (the block's [n+1, m+1] tables are int16)


def _dp_tables(r_NxR: np.ndarray, m_NxM: np.ndarray) -> np.ndarray:
  """Levenshtein tables `[N, R+1, M+1]` (int16) of padded pairs; cell (i, j) is exact for i ≤ len, j ≤ len.

  Row i from row i−1: `t[j] = min(up[j] + 1, up[j−1] + [r_i ≠ m_j])` (delete, diagonal), then the adds
  along the row, `row[j] = min_{k≤j} t[k] + (j − k)`, a running minimum. Pairs are the last (contiguous)
  axis, so every step is a vector operation over the pairs.
  """
  n, rl = r_NxR.shape
  ml = m_NxM.shape[1]
  m_MxN = np.ascontiguousarray(m_NxM.T)
  cols = np.arange(ml + 1, dtype=np.int16)[:, None]
  dp = np.empty((rl + 1, ml + 1, n), np.int16)
  prev = np.broadcast_to(cols, (ml + 1, n)).astype(np.int16)
  dp[0] = prev
  t = np.empty_like(prev)
  for i in range(1, rl + 1):
    t[0] = i
    np.minimum(prev[1:] + 1, prev[:-1] + (m_MxN != r_NxR[:, i - 1]), out=t[1:])
    t -= cols
    row = np.minimum.accumulate(t, axis=0)
    row += cols
    dp[i] = row
    prev = row
  return dp.transpose(2, 0, 1)


OPS = "UDAS"  # op codes 0..3: unchanged, delete (from y_r), add (from y_m), substitute


def _walk_back(dp: np.ndarray, r_NxR: np.ndarray, m_NxM: np.ndarray, r_len: np.ndarray, m_len: np.ndarray):
  """`(y_r labels [N, R], y_m labels [N, M], ops [N, R+M])`: all pairs walk back from (len_r, len_m) together.

  ops are codes into OPS from the end backwards, −1 after a pair reached (0, 0).
  """
  n = dp.shape[0]
  lab_r = np.zeros(r_NxR.shape, np.int8)
  lab_m = np.zeros(m_NxM.shape, np.int8)
  ops = np.full((n, r_NxR.shape[1] + m_NxM.shape[1]), -1, np.int8)
  i, j = r_len.astype(np.int64).copy(), m_len.astype(np.int64).copy()
  rows = np.arange(n)
  for step in range(ops.shape[1]):
    live = (i > 0) | (j > 0)
    if not live.any():
      break
    cur = dp[rows, i, j].astype(np.int32)
    im, jm = np.maximum(i - 1, 0), np.maximum(j - 1, 0)
    dele = live & (i > 0) & (dp[rows, im, j].astype(np.int32) + 1 == cur)
    add = live & ~dele & (j > 0) & (dp[rows, i, jm].astype(np.int32) + 1 == cur)
    diag = live & ~dele & ~add  # then i, j > 0: some optimal step always exists
    sub = diag & (r_NxR[rows, im] != m_NxM[rows, jm])
    lab_r[rows[dele | sub], im[dele | sub]] = -1
    lab_m[rows[add | sub], jm[add | sub]] = 1
    ops[:, step] = np.select([dele, add, sub, diag], [1, 2, 3, 0], -1)
    i = np.where(dele | diag, i - 1, i)
    j = np.where(add | diag, j - 1, j)
  return lab_r, lab_m, ops


def _pad(seqs: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
  lens = np.array([len(s) for s in seqs], np.int64)
  out = np.full((len(seqs), max(int(lens.max(initial=0)), 1)), -1, np.int64)
  for k, s in enumerate(seqs):
    out[k, :len(s)] = np.asarray(s, np.int64)
  return out, lens


def edit_alignment_batch(rejected: Sequence[Sequence[int]], revised: Sequence[Sequence[int]]
                         ) -> list[tuple[np.ndarray, np.ndarray, str]]:
  """Per pair `(rejected labels, revised labels, ops)`: int8 labels in {−1, 0, +1} and the alignment as a
  string over OPS ("U", "D", "A", "S"), first token first."""
  if len(rejected) != len(revised):
    raise ValueError(f"{len(rejected)} rejected sequences but {len(revised)} revisions")
  # pairs of similar lengths share a block: less padding in each DP
  order = np.argsort([len(a) + len(b) for a, b in zip(rejected, revised)], kind="stable")
  out: list = [None] * len(rejected)
  for s in range(0, len(order), _BLOCK):
    idx = order[s:s + _BLOCK]
    r, rlen = _pad([rejected[k] for k in idx])
    m, mlen = _pad([revised[k] for k in idx])
    if max(r.shape[1], m.shape[1]) >= 2**15 - 1:
      raise ValueError("edit_labels: sequences longer than 32766 tokens")
    lr, lm, ops = _walk_back(_dp_tables(r, m), r, m, rlen, mlen)
    for row, k in enumerate(idx):
      o = ops[row][ops[row] >= 0][::-1]
      out[int(k)] = (lr[row, :rlen[row]].copy(), lm[row, :mlen[row]].copy(), "".join(OPS[c] for c in o))
  return out


def edit_labels_batch(rejected: Sequence[Sequence[int]], revised: Sequence[Sequence[int]]
                      ) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """`edit_labels` of many pairs: `(rejected labels, revised labels)`, two lists of int8 arrays."""
  res = edit_alignment_batch(rejected, revised)
  return [a for a, _, _ in res], [b for _, b, _ in res]


def edit_labels(rejected_ids: Sequence[int], revised_ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
  """`(rejected_labels, revised_labels)`, int8 arrays in {−1, 0, +1} (see the module docstring)."""
  (lr, lm, _), = edit_alignment_batch([list(rejected_ids)], [list(revised_ids)])
  return lr, lm
