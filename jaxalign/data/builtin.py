"""The built-in task: seeded synthetic product reviews with a ground-truth scorer.

Nothing is downloaded. A prompt is `review of the {item} in {place} :` and a
completion is 1-3 clauses `the {aspect} is [very] {adj} .` followed by an
optional closing. Text is lowercase with words and punctuation separated by
single spaces, so a word-level SentencePiece model round-trips it exactly.
The model sees a completion as tokens ending in EOS; `finished=False` means it
never emitted EOS, which makes the completion invalid.

Every generated example is a pure function of (seed, stream, index): example i
uses `np.random.default_rng([seed, stream, i])`, so `f(n)` is a prefix of
`f(n + 1)` and datasets with different streams are independent. Seeds must be
non-negative ints. Use `ReviewTask(seed)` or the module-level shortcuts.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np

from jaxalign.data.tokenizer import Tokenizer, train_sentencepiece

# category -> (items, aspects)
CATEGORIES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "phone": (("phone", "tablet", "laptop"), ("battery", "screen", "camera", "keyboard")),
    "hotel": (("hotel", "inn", "resort"), ("room", "staff", "pool", "breakfast")),
    "restaurant": (("restaurant", "cafe", "diner"), ("food", "service", "coffee", "menu")),
    "movie": (("movie", "film", "show"), ("plot", "acting", "music", "ending")),
}
PLACES: tuple[str, ...] = ("paris", "london", "tokyo", "berlin", "rome", "cairo")
ADJECTIVES: dict[str, float] = {
    "excellent": 2.0, "wonderful": 2.0, "superb": 2.0,
    "good": 1.0, "nice": 1.0, "fine": 1.0,
    "okay": 0.0, "average": 0.0,
    "poor": -1.0, "dull": -1.0, "weak": -1.0,
    "awful": -2.0, "terrible": -2.0, "horrible": -2.0,
}
VERY_MULTIPLIER = 1.5
POLITE_CLOSINGS: tuple[str, ...] = ("thanks for reading .", "kind regards .")
RUDE_CLOSINGS: tuple[str, ...] = ("whatever .", "not my problem .")
CLOSINGS: dict[str, int] = {**{c: 1 for c in POLITE_CLOSINGS}, **{c: -1 for c in RUDE_CLOSINGS}}
MAX_CLAUSES = 3
VERY_PROB = 0.3
POLITENESS_WEIGHT = 0.5
SENTIMENT_RANGE = (-3.0, 3.0)
# Valid rewards lie in [-3.5, 3.5]; invalid ones sit strictly below all of them.
INVALID_REWARD = -5.0
CORRUPTIONS: tuple[str, ...] = ("repeat_clause", "wrong_aspect", "truncate", "drop_period",
                                "duplicate_word", "extra_clause", "shuffle_words")
# Categories whose prompts carry the thumbs-up / thumbs-down rows when
# `binary_feedback(split_families=True)`.
UP_FAMILIES = ("phone", "hotel")
DOWN_FAMILIES = ("restaurant", "movie")

ITEM_CATEGORY: dict[str, str] = {it: c for c, (its, _) in CATEGORIES.items() for it in its}
ITEMS: tuple[str, ...] = tuple(ITEM_CATEGORY)
ALL_PROMPTS: tuple[str, ...] = tuple(f"review of the {it} in {pl} :" for it in ITEMS for pl in PLACES)
# Held out: item k is paired with place k % 6, so each item (hence each category,
# three times) and each place (twice) appears once per 12 prompts.
EVAL_PROMPTS: tuple[str, ...] = tuple(f"review of the {it} in {PLACES[k % len(PLACES)]} :"
                                      for k, it in enumerate(ITEMS))
TRAIN_PROMPTS: tuple[str, ...] = tuple(p for p in ALL_PROMPTS if p not in set(EVAL_PROMPTS))
GRAMMAR_WORDS: tuple[str, ...] = tuple(dict.fromkeys(
    "review of the in : is very .".split() + list(ITEMS) + list(PLACES)
    + [a for _, asp in CATEGORIES.values() for a in asp] + list(ADJECTIVES)
    + " ".join(CLOSINGS).split()))
# pad, unk, bos, eos + one piece per grammar word.
BUILTIN_VOCAB_SIZE = len(GRAMMAR_WORDS) + 4
TOKENIZER_FILE = "builtin_sp.model"

# Independent rng streams per dataset.
_STREAM = {"sft": 1, "pref": 2, "binary": 3, "prompt": 4, "list": 5, "joint": 6}


def _rng(seed: int, stream: str, index: int) -> np.random.Generator:
  return np.random.default_rng([int(seed), _STREAM[stream], int(index)])


def prompt_category(prompt: str) -> str | None:
  """The category of a well-formed prompt, else None."""
  w = prompt.split(" ")
  if (len(w) != 7 or w[:3] != ["review", "of", "the"] or w[4] != "in" or w[6] != ":"
      or w[5] not in PLACES):
    return None
  return ITEM_CATEGORY.get(w[3])


def _parse(prompt: str, completion: str):
  """(clauses, closing) if the completion exactly follows the grammar, else None.

  clauses: list of (aspect, very, adjective); closing: string or None.
  """
  cat = prompt_category(prompt)
  if cat is None:
    return None
  words = completion.split(" ")
  aspects = CATEGORIES[cat][1]
  clauses, i = [], 0
  while i < len(words) and words[i] == "the":
    very = words[i + 3:i + 4] == ["very"]
    clause = words[i:i + (6 if very else 5)]
    if len(clause) != (6 if very else 5) or clause[2] != "is" or clause[-1] != ".":
      return None
    aspect, adj = clause[1], clause[-2]
    if aspect not in aspects or adj not in ADJECTIVES or any(aspect == c[0] for c in clauses):
      return None
    clauses.append((aspect, very, adj))
    i += len(clause)
  if not 1 <= len(clauses) <= MAX_CLAUSES:
    return None
  rest = " ".join(words[i:])
  if rest and rest not in CLOSINGS:
    return None
  return clauses, (rest or None)


def is_valid(prompt: str, completion: str, finished: bool = True) -> bool:
  """True iff finished (EOS emitted) and the completion parses exactly."""
  return bool(finished) and _parse(prompt, completion) is not None


def sentiment_token_scores(prompt: str, completion: str) -> list[float]:
  """Per whitespace word of `completion`, the sentiment it contributes.

  Each adjective carries its score (x1.5 after "very") divided by the number of
  adjectives, so the list sums to `sentiment_score`; other words get 0. Works
  leniently on invalid text too (it only looks at adjectives).
  """
  words = completion.split()
  scores = [0.0] * len(words)
  idx = [i for i, w in enumerate(words) if w in ADJECTIVES]
  for i in idx:
    s = ADJECTIVES[words[i]] * (VERY_MULTIPLIER if i > 0 and words[i - 1] == "very" else 1.0)
    scores[i] = s / len(idx)
  return scores


def sentiment_score(prompt: str, completion: str) -> float:
  """Mean over clauses of the (possibly intensified) adjective score, in [-3, 3]."""
  return float(sum(sentiment_token_scores(prompt, completion)))


def politeness_score(prompt: str, completion: str) -> int:
  """+1 for a polite closing at the end, -1 for a rude one, else 0."""
  text = " ".join(completion.split())
  for closing, score in CLOSINGS.items():
    if text == closing or text.endswith(" " + closing):
      return score
  return 0


def reward(prompt: str, completion: str, finished: bool = True) -> float:
  """sentiment + 0.5 * politeness when valid, else INVALID_REWARD."""
  if not is_valid(prompt, completion, finished):
    return INVALID_REWARD
  return sentiment_score(prompt, completion) + POLITENESS_WEIGHT * politeness_score(
      prompt, completion)


def rewards(prompts, completions, finished=True) -> np.ndarray:
  """Vectorised `reward`; `finished` is a bool or one bool per completion."""
  n = len(completions)
  if len(prompts) != n:
    raise ValueError(f"{len(prompts)} prompts but {n} completions")
  fin = np.broadcast_to(np.asarray(finished, dtype=bool), (n,))
  return np.array([reward(p, c, bool(f)) for p, c, f in zip(prompts, completions, fin)],
                  dtype=np.float64)


def win_rate(policy_rewards, reference_rewards) -> float:
  """Fraction of pairs where policy beats reference; ties count 1/2."""
  p = np.asarray(policy_rewards, dtype=np.float64)
  r = np.asarray(reference_rewards, dtype=np.float64)
  if p.shape != r.shape or p.size == 0:
    raise ValueError(f"win_rate needs equal non-empty shapes, got {p.shape} and {r.shape}")
  return float(np.mean((p > r) + 0.5 * (p == r)))


def both_good(prompt: str, completion: str) -> bool:
  """Valid, positive sentiment and polite (for multi-reward experiments)."""
  return (is_valid(prompt, completion) and sentiment_score(prompt, completion) > 0
          and politeness_score(prompt, completion) > 0)


def _sigmoid(x: float) -> float:
  return float(1.0 / (1.0 + np.exp(-x)))


def _clause(aspect: str, very: bool, adj: str) -> str:
  return f"the {aspect} is {'very ' if very else ''}{adj} ."


def _split_clauses(prompt: str, completion: str) -> tuple[list[str], str | None]:
  clauses, closing = _parse(prompt, completion)
  return [_clause(*c) for c in clauses], closing


def sample_prompt(rng: np.random.Generator) -> str:
  """A uniformly random training prompt (never an eval prompt)."""
  return TRAIN_PROMPTS[int(rng.integers(len(TRAIN_PROMPTS)))]


def sample_completion(prompt: str, rng: np.random.Generator) -> str:
  """A completion from the SFT distribution (always valid).

  1-3 clauses uniformly with distinct aspects of the prompt's category,
  adjectives uniform, "very" with prob 0.3, closing polite/none/rude 1/3 each.
  """
  cat = prompt_category(prompt)
  if cat is None:
    raise ValueError(f"not a built-in task prompt: {prompt!r}")
  aspects = CATEGORIES[cat][1]
  n = int(rng.integers(1, MAX_CLAUSES + 1))
  adjs = list(ADJECTIVES)
  parts = [_clause(aspects[int(a)], bool(rng.random() < VERY_PROB), adjs[int(rng.integers(len(adjs)))])
           for a in rng.permutation(len(aspects))[:n]]
  kind = int(rng.integers(3))
  if kind == 0:
    parts.append(POLITE_CLOSINGS[int(rng.integers(len(POLITE_CLOSINGS)))])
  elif kind == 2:
    parts.append(RUDE_CLOSINGS[int(rng.integers(len(RUDE_CLOSINGS)))])
  return " ".join(parts)


def _corrupt_once(prompt: str, completion: str, kind: str,
                  rng: np.random.Generator) -> tuple[str, bool]:
  clauses, closing = _split_clauses(prompt, completion)
  tail = [closing] if closing else []
  words = completion.split(" ")
  if kind == "repeat_clause":
    i = int(rng.integers(len(clauses)))
    clauses.insert(int(rng.integers(i + 1, len(clauses) + 1)), clauses[i])
    return " ".join(clauses + tail), True
  if kind == "wrong_aspect":
    cat = prompt_category(prompt)
    others = [a for c, (_, asp) in CATEGORIES.items() if c != cat for a in asp]
    i = int(rng.integers(len(clauses)))
    w = clauses[i].split(" ")
    w[1] = others[int(rng.integers(len(others)))]
    clauses[i] = " ".join(w)
    return " ".join(clauses + tail), True
  if kind == "truncate":  # ran out of length budget: a prefix and no EOS
    return " ".join(words[:int(rng.integers(1, len(words) + 1))]), False
  if kind == "drop_period":
    return " ".join(words[:-1]), True
  if kind == "duplicate_word":
    i = int(rng.integers(len(words)))
    return " ".join(words[:i + 1] + words[i:]), True
  if kind == "extra_clause":
    cat = prompt_category(prompt)
    used = {c.split(" ")[1] for c in clauses}
    free = [a for a in CATEGORIES[cat][1] if a not in used]
    adjs = list(ADJECTIVES)
    while len(clauses) <= MAX_CLAUSES:
      a = free.pop(int(rng.integers(len(free))))
      clauses.append(_clause(a, bool(rng.random() < VERY_PROB), adjs[int(rng.integers(len(adjs)))]))
    return " ".join(clauses + tail), True
  if kind == "shuffle_words":
    return " ".join(words[int(i)] for i in rng.permutation(len(words))), True
  raise ValueError(f"unknown corruption {kind!r}; expected one of {CORRUPTIONS}")


def corrupt(prompt: str, completion: str, rng: np.random.Generator,
            kind: str | None = None) -> tuple[str, bool]:
  """An invalid variant of a valid completion: (text, finished).

  `kind` (default: uniform over CORRUPTIONS) picks the corruption. Some draws
  can happen to stay valid (a shuffle that reorders whole clauses); those are
  redrawn, and after a few tries we fall back to duplicating a word, which is
  always invalid.
  """
  if _parse(prompt, completion) is None:
    raise ValueError(f"corrupt() needs a valid completion, got {completion!r}")
  for _ in range(8):
    k = kind or CORRUPTIONS[int(rng.integers(len(CORRUPTIONS)))]
    text, finished = _corrupt_once(prompt, completion, k, rng)
    if not is_valid(prompt, text, finished):
      return text, finished
  return _corrupt_once(prompt, completion, "duplicate_word", rng)


@dataclasses.dataclass(frozen=True)
class ReviewTask:
  """The built-in review task; all datasets are pure functions of (seed, index)."""
  seed: int = 0

  def train_prompts(self) -> list[str]:
    return list(TRAIN_PROMPTS)

  def eval_prompts(self) -> list[str]:
    return list(EVAL_PROMPTS)

  def sft_corpus(self, n: int) -> list[dict]:
    """n rows {prompt, completion}, all valid."""
    rows = []
    for i in range(n):
      rng = _rng(self.seed, "sft", i)
      p = sample_prompt(rng)
      rows.append({"prompt": p, "completion": sample_completion(p, rng)})
    return rows

  def preference_pairs(self, n: int, corrupt_frac: float = 0.2,
                       label_temperature: float = 1.0) -> list[dict]:
    """n rows {prompt, chosen, rejected, chosen_finished, rejected_finished}.

    Two SFT-distribution completions (distinct text); with prob corrupt_frac one
    random side is corrupted. The winner is drawn Bradley-Terry on the true
    reward: P(a wins) = sigmoid((r_a - r_b) / label_temperature).
    """
    rows = []
    for i in range(n):
      rng = _rng(self.seed, "pref", i)
      p = sample_prompt(rng)
      a = (sample_completion(p, rng), True)
      b = (sample_completion(p, rng), True)
      while b[0] == a[0]:
        b = (sample_completion(p, rng), True)
      if rng.random() < corrupt_frac:
        if rng.random() < 0.5:
          a = corrupt(p, a[0], rng)
        else:
          b = corrupt(p, b[0], rng)
      margin = reward(p, *a) - reward(p, *b)
      if rng.random() >= _sigmoid(margin / label_temperature):
        a, b = b, a
      rows.append({"prompt": p, "chosen": a[0], "rejected": b[0],
                   "chosen_finished": a[1], "rejected_finished": b[1]})
    return rows

  def binary_feedback(self, n: int, split_families: bool = False,
                      corrupt_frac: float = 0.0, label_temperature: float = 1.0) -> list[dict]:
    """n rows {prompt, completion, finished, label}.

    label (thumbs-up) = the completion wins a Bradley-Terry draw against a fresh
    SFT-distribution completion of the same prompt, so labels are ~balanced.
    With split_families, thumbs-up rows only use UP_FAMILIES prompts and
    thumbs-down rows only DOWN_FAMILIES prompts (other candidates are skipped).
    """
    rows, i = [], 0
    while len(rows) < n:
      rng = _rng(self.seed, "binary", i)
      i += 1
      p = sample_prompt(rng)
      c, fin = sample_completion(p, rng), True
      if rng.random() < corrupt_frac:
        c, fin = corrupt(p, c, rng)
      ref = sample_completion(p, rng)
      margin = reward(p, c, fin) - reward(p, ref)
      label = bool(rng.random() < _sigmoid(margin / label_temperature))
      if split_families:
        cat = prompt_category(p)
        if cat not in (UP_FAMILIES if label else DOWN_FAMILIES):
          continue
      rows.append({"prompt": p, "completion": c, "finished": fin, "label": label})
    return rows

  def preference_lists(self, n: int, k: int = 4, corrupt_frac: float = 0.2,
                       label_temperature: float = 1.0) -> list[dict]:
    """n rows {prompt, completions, scores, finished}: K distinct SFT-distribution completions per prompt,
    each corrupted with prob corrupt_frac / 2 (a pair's rate per completion), graded as LiPO grades its lists:
    every two completions meet in one Bradley–Terry draw on the true reward (the label noise of the pairs),
    Ψ_ki = 1 if k won against i, Ψ_kk = ½, and the score ψ_k = (1/K) Σ_i Ψ_ki ∈ [0, 1]. With K = 2 a list is a
    pair drawn as `preference_pairs` draws it (scores ¾ and ¼)."""
    rows = []
    for i in range(n):
      rng = _rng(self.seed, "list", i)
      p = sample_prompt(rng)
      comps: list[tuple[str, bool]] = []
      for _ in range(8 * k):
        c = sample_completion(p, rng)
        if all(c != x for x, _ in comps):
          comps.append((c, True))
        if len(comps) == k:
          break
      comps = [corrupt(p, c, rng) if rng.random() < corrupt_frac / 2 else (c, f) for c, f in comps]
      r = np.array([reward(p, c, f) for c, f in comps])
      m = len(comps)
      psi = np.full((m, m), 0.5)
      for a in range(m):
        for b in range(a + 1, m):
          psi[a, b] = float(rng.random() < _sigmoid((r[a] - r[b]) / label_temperature))
          psi[b, a] = 1.0 - psi[a, b]
      rows.append({"prompt": p, "completions": [c for c, _ in comps], "scores": psi.mean(1).tolist(),
                   "finished": [f for _, f in comps]})
    return rows

  def joint_pairs(self, n: int, joint_fraction: float = 0.5, corrupt_frac: float = 0.2,
                  label_temperature: float = 1.0) -> list[dict]:
    """n JPO rows {chosen_prompt, chosen, rejected_prompt, rejected, *_finished}: `preference_pairs`, of which a
    `joint_fraction` share (chosen by a seeded draw) is re-paired across prompts: pair i's chosen response
    against the rejected response of another pair with a different prompt, the winner drawn Bradley–Terry on
    the true rewards of the two (prompt, response) pairs."""
    base = self.preference_pairs(n, corrupt_frac, label_temperature)
    rows = []
    for i, r in enumerate(base):
      rng = _rng(self.seed, "joint", i)
      row = {"chosen_prompt": r["prompt"], "chosen": r["chosen"], "chosen_finished": r["chosen_finished"],
             "rejected_prompt": r["prompt"], "rejected": r["rejected"], "rejected_finished": r["rejected_finished"]}
      if n > 1 and rng.random() < joint_fraction:
        j = int(rng.integers(n))
        for _ in range(16):
          if base[j]["prompt"] != r["prompt"]:
            break
          j = int(rng.integers(n))
        if base[j]["prompt"] != r["prompt"]:
          a = (r["prompt"], r["chosen"], r["chosen_finished"])
          b = (base[j]["prompt"], base[j]["rejected"], base[j]["rejected_finished"])
          if rng.random() >= _sigmoid((reward(*a) - reward(*b)) / label_temperature):
            a, b = b, a
          row = {"chosen_prompt": a[0], "chosen": a[1], "chosen_finished": a[2],
                 "rejected_prompt": b[0], "rejected": b[1], "rejected_finished": b[2]}
      rows.append(row)
    return rows

  def prompt_only(self, n: int) -> list[str]:
    """n training prompts."""
    return [sample_prompt(_rng(self.seed, "prompt", i)) for i in range(n)]


def sft_corpus(n: int, seed: int = 0) -> list[dict]:
  return ReviewTask(seed).sft_corpus(n)


def preference_pairs(n: int, seed: int = 0, corrupt_frac: float = 0.2,
                     label_temperature: float = 1.0) -> list[dict]:
  return ReviewTask(seed).preference_pairs(n, corrupt_frac, label_temperature)


def preference_lists(n: int, k: int = 4, seed: int = 0, corrupt_frac: float = 0.2,
                     label_temperature: float = 1.0) -> list[dict]:
  return ReviewTask(seed).preference_lists(n, k, corrupt_frac, label_temperature)


def joint_pairs(n: int, seed: int = 0, joint_fraction: float = 0.5, corrupt_frac: float = 0.2,
                label_temperature: float = 1.0) -> list[dict]:
  return ReviewTask(seed).joint_pairs(n, joint_fraction, corrupt_frac, label_temperature)


def binary_feedback(n: int, seed: int = 0, split_families: bool = False,
                    corrupt_frac: float = 0.0, label_temperature: float = 1.0) -> list[dict]:
  return ReviewTask(seed).binary_feedback(n, split_families, corrupt_frac, label_temperature)


def prompt_only(n: int, seed: int = 0) -> list[str]:
  return ReviewTask(seed).prompt_only(n)


def tokenizer_texts() -> list[str]:
  """Texts covering every grammar word (all prompts, clause forms, closings)."""
  texts = list(ALL_PROMPTS)
  for _, aspects in CATEGORIES.values():
    for a in aspects:
      for adj in ADJECTIVES:
        texts += [_clause(a, False, adj), _clause(a, True, adj)]
  texts += list(CLOSINGS)
  return texts


def _covers_grammar(tok: Tokenizer) -> bool:
  return all(len(tok.encode(w)) == 1 and tok.decode(tok.encode(w)) == w for w in GRAMMAR_WORDS)


def builtin_tokenizer(cache_dir: str) -> Tokenizer:
  """The word-level tokenizer of the task, trained once into `cache_dir`.

  A cached model that does not cover the grammar (e.g. from an older version)
  is retrained.
  """
  path = os.path.join(cache_dir, TOKENIZER_FILE)
  if os.path.exists(path):
    tok = Tokenizer(path)
    if _covers_grammar(tok):
      return tok
  prefix = path[:-len(".model")]
  tok = Tokenizer(train_sentencepiece(tokenizer_texts(), prefix, BUILTIN_VOCAB_SIZE, "word"))
  assert _covers_grammar(tok), "built-in tokenizer must map each grammar word to one token"
  return tok


# ---- pairs labelled on one ground-truth property (reward models per property, LSC) ----

PROPERTIES: tuple[str, ...] = ("reward", "sentiment", "politeness")
_RELABEL_STREAM = 101  # rng stream of the per-property label draws


def property_score(prompt: str, completion: str, finished: bool = True, prop: str = "reward") -> float:
  """Ground truth of one property: its score when the completion is valid, else INVALID_REWARD.

  A malformed completion is bad on every property, so each property's reward model also
  learns validity (and "good on all properties" stays a meaningful logical AND).
  """
  if prop not in PROPERTIES:
    raise ValueError(f"unknown property {prop!r}; expected one of {PROPERTIES}")
  if not is_valid(prompt, completion, finished):
    return INVALID_REWARD
  if prop == "sentiment":
    return sentiment_score(prompt, completion)
  if prop == "politeness":
    return float(politeness_score(prompt, completion))
  return reward(prompt, completion, finished)


def property_preference_pairs(n: int, seed: int = 0, prop: str = "reward", corrupt_frac: float = 0.2,
                              label_temperature: float = 1.0) -> list[dict]:
  """`preference_pairs` labelled Bradley-Terry on one property's ground truth.

  "reward" is exactly `preference_pairs`. Other properties reuse its pairs (same
  prompts and completions) and redraw each label from an independent stream:
  P(first wins) = sigmoid((s_first - s_second) / label_temperature), s = property_score.
  """
  rows = preference_pairs(n, seed=seed, corrupt_frac=corrupt_frac, label_temperature=label_temperature)
  if prop == "reward":
    return rows
  out = []
  for i, r in enumerate(rows):
    rng = np.random.default_rng([int(seed), _RELABEL_STREAM, i])
    a = (r["chosen"], r["chosen_finished"])
    b = (r["rejected"], r["rejected_finished"])
    margin = property_score(r["prompt"], *a, prop) - property_score(r["prompt"], *b, prop)
    if rng.random() >= _sigmoid(margin / label_temperature):
      a, b = b, a
    out.append({"prompt": r["prompt"], "chosen": a[0], "rejected": b[0],
                "chosen_finished": a[1], "rejected_finished": b[1]})
  return out
