"""Tests for the built-in review task: grammar, scorers, generators, labels."""

import numpy as np
import pytest

from jaxalign.data import builtin as B

PHONE = "review of the phone in london :"
HOTEL = "review of the inn in tokyo :"


def _r(row, side):
  return B.reward(row["prompt"], row[side], row[f"{side}_finished"])


# --- grammar and constants ---------------------------------------------------

def test_prompt_sets():
  assert len(B.ALL_PROMPTS) == 72 and len(set(B.ALL_PROMPTS)) == 72
  assert len(B.EVAL_PROMPTS) == 12 and len(B.TRAIN_PROMPTS) == 60
  assert set(B.EVAL_PROMPTS) | set(B.TRAIN_PROMPTS) == set(B.ALL_PROMPTS)
  assert not set(B.EVAL_PROMPTS) & set(B.TRAIN_PROMPTS)
  cats = [B.prompt_category(p) for p in B.EVAL_PROMPTS]
  assert {c: cats.count(c) for c in B.CATEGORIES} == {c: 3 for c in B.CATEGORIES}
  assert B.prompt_category("review of the phone in mars :") is None
  assert B.prompt_category("review of the phone in paris") is None
  assert B.BUILTIN_VOCAB_SIZE == len(B.GRAMMAR_WORDS) + 4 == 69


def test_sft_completions_valid_and_in_range():
  rows = B.sft_corpus(2000, seed=3)
  lo, hi = B.SENTIMENT_RANGE
  n_clauses, closings = [], []
  for r in rows:
    p, c = r["prompt"], r["completion"]
    assert p in B.TRAIN_PROMPTS
    assert B.is_valid(p, c), c
    assert c == " ".join(c.split()) and c == c.lower()
    s, pol = B.sentiment_score(p, c), B.politeness_score(p, c)
    assert lo <= s <= hi and pol in (-1, 0, 1)
    assert B.reward(p, c) == pytest.approx(s + 0.5 * pol)
    assert sum(B.sentiment_token_scores(p, c)) == pytest.approx(s)
    n_clauses.append(c.count(" is "))
    closings.append(pol)
  assert set(n_clauses) == {1, 2, 3} and set(closings) == {-1, 0, 1}
  # closing polite/none/rude 1/3 each
  for v in (-1, 0, 1):
    assert 0.28 < closings.count(v) / len(rows) < 0.39


@pytest.mark.parametrize("prompt,completion,sent,pol,rew", [
    (PHONE, "the battery is very excellent . the screen is poor . thanks for reading .",
     1.0, 1, 1.5),
    (PHONE, "the camera is good .", 1.0, 0, 1.0),
    (PHONE, "the keyboard is very horrible . whatever .", -3.0, -1, -3.5),
    (HOTEL, "the pool is okay . the staff is very nice . the room is awful . kind regards .",
     (0 + 1.5 - 2) / 3, 1, (0 + 1.5 - 2) / 3 + 0.5),
    (HOTEL, "the breakfast is very superb . not my problem .", 3.0, -1, 2.5),
])
def test_hand_written_scores(prompt, completion, sent, pol, rew):
  assert B.is_valid(prompt, completion)
  assert B.sentiment_score(prompt, completion) == pytest.approx(sent)
  assert B.politeness_score(prompt, completion) == pol
  assert B.reward(prompt, completion) == pytest.approx(rew)


def test_token_scores():
  c = "the battery is very excellent . the screen is poor . thanks for reading ."
  ts = B.sentiment_token_scores(PHONE, c)
  assert len(ts) == len(c.split())
  assert ts[4] == pytest.approx(1.5) and ts[9] == pytest.approx(-0.5)
  assert [i for i, t in enumerate(ts) if t != 0] == [4, 9]


@pytest.mark.parametrize("completion,finished", [
    ("the battery is good .", False),                        # never emitted EOS
    ("the room is good .", True),                            # wrong category
    ("the battery is good . the battery is poor .", True),   # repeated aspect
    ("the battery is good . the screen is good . the camera is good . "
     "the keyboard is good .", True),                        # 4 clauses
    ("thanks for reading . the battery is good .", True),    # closing not last
    ("the battery is good . kind regards . kind regards .", True),
    ("thanks for reading .", True),                          # no clause
    ("", True),
    ("the battery is good", True),                           # no period
    ("the battery is very very good .", True),
    ("the battery is  good .", True),                        # double space
    (" the battery is good .", True),
    ("the battery is good . hello", True),
    ("the battery was good .", True),
    ("the battery is great .", True),                        # unknown adjective
])
def test_invalid_completions(completion, finished):
  assert not B.is_valid(PHONE, completion, finished)
  assert B.reward(PHONE, completion, finished) == B.INVALID_REWARD


def test_invalid_prompt_is_invalid():
  assert not B.is_valid("review of the phone in mars :", "the battery is good .")


def test_invalid_reward_below_every_valid_reward():
  # The best-case bounds of the grammar: +-3 sentiment, +-0.5 politeness.
  worst = B.reward(PHONE, "the battery is very awful . whatever .")
  best = B.reward(PHONE, "the battery is very superb . kind regards .")
  assert (worst, best) == (-3.5, 3.5)
  assert B.INVALID_REWARD == -5.0 < worst
  rows = B.sft_corpus(500, seed=1)
  r = B.rewards([x["prompt"] for x in rows], [x["completion"] for x in rows])
  assert r.min() >= -3.5 and r.max() <= 3.5


@pytest.mark.parametrize("kind", B.CORRUPTIONS)
def test_every_corruption_is_invalid(kind):
  rng = np.random.default_rng(7)
  for row in B.sft_corpus(300, seed=5):
    p, c = row["prompt"], row["completion"]
    text, finished = B.corrupt(p, c, rng, kind=kind)
    assert not B.is_valid(p, text, finished), (kind, c, text, finished)
    assert B.reward(p, text, finished) == B.INVALID_REWARD


def test_random_corruptions_invalid_and_varied():
  rng = np.random.default_rng(0)
  unfinished = 0
  for row in B.sft_corpus(1000, seed=2):
    text, finished = B.corrupt(row["prompt"], row["completion"], rng)
    assert not B.is_valid(row["prompt"], text, finished)
    unfinished += not finished
  assert 80 < unfinished < 220  # "truncate" is 1 of 7 kinds
  with pytest.raises(ValueError):
    B.corrupt(PHONE, "the room is good .", rng)


def test_both_good():
  assert B.both_good(PHONE, "the battery is good . kind regards .")
  assert not B.both_good(PHONE, "the battery is good .")
  assert not B.both_good(PHONE, "the battery is poor . kind regards .")
  assert not B.both_good(PHONE, "the room is good . kind regards .")


# --- reward helpers ----------------------------------------------------------

def test_rewards_vectorised():
  ps = [PHONE, PHONE, PHONE]
  cs = ["the battery is good .", "the battery is good .", "the room is good ."]
  np.testing.assert_allclose(B.rewards(ps, cs), [1.0, 1.0, -5.0])
  np.testing.assert_allclose(B.rewards(ps, cs, [True, False, True]), [1.0, -5.0, -5.0])
  with pytest.raises(ValueError):
    B.rewards(ps[:2], cs)


def test_win_rate_ties_count_half():
  assert B.win_rate([1, 2, 3, 4], [0, 2, 5, 4]) == pytest.approx((1 + 0.5 + 0 + 0.5) / 4)
  assert B.win_rate([1.0], [1.0]) == 0.5
  assert B.win_rate(np.array([3.0, 3.0]), np.array([-5.0, 2.0])) == 1.0
  with pytest.raises(ValueError):
    B.win_rate([1, 2], [1])


# --- determinism and splits ----------------------------------------------------

def test_determinism_and_prefix_property():
  assert B.sft_corpus(50, 4) == B.sft_corpus(50, 4)
  assert B.sft_corpus(50, 4) != B.sft_corpus(50, 5)
  assert B.sft_corpus(20, 4) == B.sft_corpus(50, 4)[:20]
  assert B.preference_pairs(40, 4) == B.preference_pairs(40, 4)
  assert B.preference_pairs(40, 4) != B.preference_pairs(40, 5)
  assert B.binary_feedback(40, 4) == B.binary_feedback(40, 4)
  assert B.binary_feedback(40, 4) != B.binary_feedback(40, 5)
  assert B.binary_feedback(40, 4, split_families=True) == B.binary_feedback(
      40, 4, split_families=True)
  assert B.prompt_only(40, 4) == B.prompt_only(40, 4) != B.prompt_only(40, 5)
  assert B.ReviewTask(4).sft_corpus(10) == B.sft_corpus(10, 4)
  rng1, rng2 = np.random.default_rng(9), np.random.default_rng(9)
  assert B.sample_completion(PHONE, rng1) == B.sample_completion(PHONE, rng2)


def test_eval_prompts_never_in_training_data():
  ev = set(B.ReviewTask(0).eval_prompts())
  seen = set()
  for seed in (0, 1):
    seen |= {r["prompt"] for r in B.sft_corpus(600, seed)}
    seen |= {r["prompt"] for r in B.preference_pairs(300, seed)}
    seen |= {r["prompt"] for r in B.binary_feedback(300, seed)}
    seen |= {r["prompt"] for r in B.binary_feedback(300, seed, split_families=True)}
    seen |= set(B.prompt_only(600, seed))
  assert not seen & ev
  assert seen == set(B.TRAIN_PROMPTS)  # and training covers every train prompt


# --- preference labels ---------------------------------------------------------

def test_preference_pairs_labels_noisy_but_informative():
  rows = B.preference_pairs(5000, seed=0)
  rc = np.array([_r(x, "chosen") for x in rows])
  rr = np.array([_r(x, "rejected") for x in rows])
  agree = float(np.mean(rc > rr))
  print(f"label agreement {agree:.4f}")
  assert 0.6 < agree < 0.95
  assert 0.78 < agree < 0.83  # observed 0.8054 with seed 0
  assert all(x["chosen"] != x["rejected"] for x in rows)
  # corrupted (invalid) side ends up rejected almost always
  inv = (rc == B.INVALID_REWARD) | (rr == B.INVALID_REWARD)
  assert 0.17 < inv.mean() < 0.23
  frac = float(np.mean(rr[inv] == B.INVALID_REWARD))
  print(f"corrupted side rejected {frac:.4f}")
  assert frac > 0.95


def test_preference_pairs_without_corruption_and_temperature():
  rows = B.preference_pairs(2000, seed=1, corrupt_frac=0.0)
  assert all(x["chosen_finished"] and x["rejected_finished"] for x in rows)
  assert all(B.is_valid(x["prompt"], x["chosen"]) and B.is_valid(x["prompt"], x["rejected"])
             for x in rows)

  def agreement(rs):
    return np.mean([_r(x, "chosen") > _r(x, "rejected") for x in rs])
  cold = agreement(B.preference_pairs(2000, seed=1, corrupt_frac=0.0, label_temperature=0.01))
  hot = agreement(B.preference_pairs(2000, seed=1, corrupt_frac=0.0, label_temperature=100.0))
  # near-noiseless labels agree unless rewards tie; near-random ones agree ~half of non-ties
  assert cold > 0.93 and 0.4 < hot < 0.55


# --- binary feedback -------------------------------------------------------------

def test_binary_feedback_balance_and_signal():
  rows = B.binary_feedback(3000, seed=0)
  lab = np.array([x["label"] for x in rows])
  r = np.array([B.reward(x["prompt"], x["completion"], x["finished"]) for x in rows])
  print(f"label balance {lab.mean():.4f}")
  assert 0.3 < lab.mean() < 0.7
  assert r[lab].mean() > r[~lab].mean() + 0.8
  assert all(x["finished"] for x in rows)
  rows = B.binary_feedback(1000, seed=0, corrupt_frac=0.3)
  bad = [x for x in rows if not B.is_valid(x["prompt"], x["completion"], x["finished"])]
  assert 0.25 < len(bad) / len(rows) < 0.35
  assert np.mean([x["label"] for x in bad]) < 0.1


def test_binary_feedback_split_families():
  rows = B.binary_feedback(1000, seed=0, split_families=True)
  assert len(rows) == 1000
  up = {B.prompt_category(x["prompt"]) for x in rows if x["label"]}
  down = {B.prompt_category(x["prompt"]) for x in rows if not x["label"]}
  assert up == set(B.UP_FAMILIES) and down == set(B.DOWN_FAMILIES)
  assert 0.3 < np.mean([x["label"] for x in rows]) < 0.7


def test_prompt_only():
  ps = B.prompt_only(500, seed=0)
  assert len(ps) == 500 and set(ps) <= set(B.TRAIN_PROMPTS)
  assert len(set(ps)) > 50


def test_tokenizer_texts_cover_grammar():
  words = {w for t in B.tokenizer_texts() for w in t.split(" ")}
  assert words == set(B.GRAMMAR_WORDS)
  rng = np.random.default_rng(0)
  for row in B.sft_corpus(200, 0):
    text, _ = B.corrupt(row["prompt"], row["completion"], rng)
    assert set(text.split()) <= words
