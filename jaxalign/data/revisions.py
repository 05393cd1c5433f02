"""Revision data for TLCR's token discriminator (algorithms.md §6.1): `{prompt, chosen, rejected, revised}`.

`revised` is a minimal edit of the rejected response that makes it good (the authors asked GPT-4 for
one). Token labels come from aligning the rejected and revised token ids (`token_labels`).

The built-in task revises its own rejected completions, as an editor would: each negative or
neutral adjective becomes a positive one (poor → good, awful → excellent, ...), a rude closing
becomes a polite one and a missing closing is added, and broken grammar is repaired (clauses put
back together, a wrong or repeated aspect replaced or dropped, a missing period restored, extra
clauses cut). With `noise` > 0 the editor is imperfect: each needed edit is missed with that
probability, and each positive adjective gets an unneeded edit (another positive adjective) with it.
`revise_frac` of the pairs get a revision (the authors' data covers 40% of HH-RLHF); the others are
dropped from the discriminator's data. `run_on_frac` of the rejected completions run on past their
end first (their own words again, as a policy that does not stop), and the editor cuts the run-on:
without such rows the discriminator has never seen text after a closing, rates it positive, and PPO
on its token rewards learns to run on (see the README's TLCR section).
"""

from __future__ import annotations

import numpy as np

from jaxalign.data import builtin, token_labels
from jaxalign.data.pipeline import encode_prompts

# The editor's choice of positive replacement for each non-positive adjective.
POSITIVE_OF = {"okay": "good", "average": "fine", "poor": "good", "dull": "nice", "weak": "fine",
               "awful": "excellent", "terrible": "wonderful", "horrible": "superb"}
POLITE_OF = dict(zip(builtin.RUDE_CLOSINGS, builtin.POLITE_CLOSINGS))
_ALL_ASPECTS = {a for _, asp in builtin.CATEGORIES.values() for a in asp}
_REVISION_STREAM = 202


def _closing(words: list[str]) -> tuple[list[str], str | None]:
  """The words before the first closing (whatever runs on after it is dropped), and that closing; else
  the words without a trailing closing that lost its period; else `(words, None)`."""
  for i in range(len(words)):
    for c in builtin.CLOSINGS:
      n = len(c.split())
      if words[i:i + n] == c.split():
        return words[:i], c
  text = " ".join(words)
  for c in builtin.CLOSINGS:
    if text == c[:-2] or text.endswith(" " + c[:-2]):
      return words[:len(words) - len(c.split()) + 1], c
  return words, None


def revise(prompt: str, completion: str, rng: np.random.Generator | None = None, noise: float = 0.0) -> str:
  """A minimal edit of `completion` that the ground truth likes (see the module docstring)."""
  cat = builtin.prompt_category(prompt)
  if cat is None:
    raise ValueError(f"not a built-in task prompt: {prompt!r}")
  aspects = builtin.CATEGORIES[cat][1]
  flip = (lambda: rng is not None and rng.random() < noise)
  words, closing = _closing(completion.split())
  clauses: list[list] = []  # [aspect, very, adjective]
  orphans: list[tuple[bool, str]] = []  # adjectives before any aspect (shuffled words)
  very = False
  for w in words:
    if w in _ALL_ASPECTS:
      clauses.append([w, False, None])
    elif w == "very":
      very = True
      if clauses and clauses[-1][2] is None:
        clauses[-1][1] = True
    elif w in builtin.ADJECTIVES:
      if clauses and clauses[-1][2] is None:
        clauses[-1][2] = w
      else:
        orphans.append((very, w))
      very = False
  # aspects: this category's, each once, at most MAX_CLAUSES clauses
  used, fixed = set(), []
  for asp, v, adj in clauses:
    if asp not in aspects:
      free = [a for a in aspects if a not in used and a not in {c[0] for c in clauses}]
      if not free:
        continue
      asp = free[0]
    if asp in used:
      continue
    used.add(asp)
    fixed.append([asp, v, adj])
  fixed = fixed[:builtin.MAX_CLAUSES] or [[aspects[0], False, None]]
  for c in fixed:
    if c[2] is None:
      v, adj = orphans.pop(0) if orphans else (c[1], "good")
      c[1], c[2] = c[1] or v, adj
  out = []
  for asp, v, adj in fixed:
    if builtin.ADJECTIVES[adj] <= 0 and not flip():
      adj = POSITIVE_OF[adj]
    elif builtin.ADJECTIVES[adj] > 0 and flip():  # an unneeded edit
      others = [a for a, s in builtin.ADJECTIVES.items() if s > 0 and a != adj]
      adj = others[int(rng.integers(len(others)))]
    out.append(f"the {asp} is {'very ' if v else ''}{adj} .")
  if closing is None:
    closing = None if flip() else builtin.POLITE_CLOSINGS[0]
  elif closing in POLITE_OF and not flip():
    closing = POLITE_OF[closing]
  return " ".join(out + ([closing] if closing else []))


def run_on(completion: str, rng: np.random.Generator) -> str:
  """The completion followed by 2–6 of its own words in a random order: a response that does not stop."""
  words = completion.split()
  k = int(rng.integers(2, 7))
  return " ".join(words + [words[int(i)] for i in rng.integers(0, len(words), k)])


def builtin_revision_rows(n: int, seed: int = 0, *, revise_frac: float = 1.0, noise: float = 0.0,
                          corrupt_frac: float = 0.2, run_on_frac: float = 0.0) -> list[dict]:
  """Up to `n` rows `{prompt, chosen, rejected, rejected_finished, revised}` from the built-in preference pairs:
  each pair is revised with probability `revise_frac` (the others are left out); with probability
  `run_on_frac` the rejected completion first runs on past its end (`run_on`, without EOS half of the
  time), which the editor cuts. A deterministic function of (seed, index)."""
  rows = []
  for i, r in enumerate(builtin.preference_pairs(n, seed=seed, corrupt_frac=corrupt_frac)):
    rng = np.random.default_rng([int(seed), _REVISION_STREAM, i])
    if rng.random() >= revise_frac:
      continue
    if rng.random() < run_on_frac:
      r = {**r, "rejected": run_on(r["rejected"], rng), "rejected_finished": bool(rng.random() < 0.5)}
    rows.append({**r, "revised": revise(r["prompt"], r["rejected"], rng, noise)})
  return rows


def _fit(ids: list, n: int, side: str) -> list:
  return ids if len(ids) <= n else ids[-n:] if side == "left" else ids[:n]


def tokenize_revisions(tok, rows: list[dict], prompt_len: int, completion_len: int,
                       prompt_truncation: str = "left", completion_truncation: str = "right") -> dict:
  """Arrays for the discriminator: prompt, prompt_mask, and for `rejected` and `revised` the ids, mask
  and token labels in {−1, 0, +1} (`rejected_labels`, `revised_labels`).

  Labels come from aligning the two responses' token ids without special tokens; an EOS (appended to
  finished responses) is labelled 0, unchanged. Rows that truncation leaves without a token are dropped.
  """
  prompt, prompt_mask = encode_prompts(tok, [r["prompt"] for r in rows], prompt_len, prompt_truncation)
  rej = [tok.encode(r["rejected"]) for r in rows]
  rev = [tok.encode(r["revised"]) for r in rows]
  lab_rej, lab_rev = token_labels.edit_labels_batch(rej, rev)
  out = dict(prompt=prompt, prompt_mask=prompt_mask)
  for side, ids, labs, fins in (("rejected", rej, lab_rej, [r.get("rejected_finished", True) for r in rows]),
                                ("revised", rev, lab_rev, [True] * len(rows))):
    arr = np.full((len(rows), completion_len), tok.pad_id, np.int32)
    mask = np.zeros((len(rows), completion_len), np.int32)
    lab = np.zeros((len(rows), completion_len), np.int32)
    for i, (t, l, fin) in enumerate(zip(ids, labs, fins)):
      t = _fit(list(t) + ([tok.eos_id] if fin else []), completion_len, completion_truncation)
      l = _fit(list(l) + ([0] if fin else []), completion_len, completion_truncation)
      arr[i, :len(t)], mask[i, :len(t)], lab[i, :len(l)] = t, 1, l
    out[side], out[f"{side}_mask"], out[f"{side}_labels"] = arr, mask, lab
  keep = (out["rejected_mask"].sum(1) > 0) & (out["revised_mask"].sum(1) > 0) & (prompt_mask.sum(1) > 0)
  return {k: v[keep] for k, v in out.items()}
