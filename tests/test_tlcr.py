"""TLCR (algorithms.md §6): token labels from revisions, the discriminator's loss, token rewards, the exact
KL over the vocabulary, the discriminator inside the compiled PPO update, and the CLI stages."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cli import assert_same_rows, cmd, kill_when, rows, run
from conftest import f64
from jaxalign import rewards as rw
from jaxalign import sharding as shd
from jaxalign.config import base_config
from jaxalign.data import builtin, revisions, sources
from jaxalign.data.token_labels import edit_alignment_batch, edit_labels
from jaxalign.data.tokenizer import Tokenizer
from jaxalign.errors import UserError
from jaxalign.logprobs import full_kl, full_kl_reference
from jaxalign.losses.token import token_discriminator_loss
from jaxalign.models import heads
from jaxalign.models.loading import init_params, load_discriminator
from jaxalign.models.transformer import model_config, output_matrix_DxV
from jaxalign.trainers import ppo
from jaxalign.trainers.state import create_state
from test_ppo import _primitives
from test_rewards_in_step import CALLBACKS, _params_are_inputs, _rows

# ---- token labels ----


def _levenshtein(a, b) -> int:
  d = np.zeros((len(a) + 1, len(b) + 1), int)
  d[:, 0], d[0, :] = range(len(a) + 1), range(len(b) + 1)
  for i in range(1, len(a) + 1):
    for j in range(1, len(b) + 1):
      d[i, j] = min(d[i - 1, j] + 1, d[i, j - 1] + 1, d[i - 1, j - 1] + (a[i - 1] != b[j - 1]))
  return int(d[-1, -1])


@pytest.mark.parametrize("r, m, lr, lm, ops", [
    ([1, 2, 3], [1, 2, 3], [0, 0, 0], [0, 0, 0], "UUU"),
    ([1, 2, 3], [1, 5, 3], [0, -1, 0], [0, 1, 0], "USU"),  # substitution
    ([1, 2, 3], [1, 3], [0, -1, 0], [0, 0], "UDU"),  # deletion
    ([1, 3], [1, 2, 3], [0, 0], [0, 1, 0], "UAU"),  # addition
    ([], [4, 5], [], [1, 1], "AA"),
    ([4, 5], [], [-1, -1], [], "DD"),
    # ties, walking back from the end: delete before add before the diagonal
    ([1], [1, 1], [0], [0, 1], "UA"),  # the add is the second 1 (the diagonal would have kept it)
    ([7, 8], [9], [-1, -1], [1], "SD"),  # 8 deleted first (from the end), then 7 → 9 substituted
    ([7, 1, 2], [1, 2, 7], [-1, 0, 0], [0, 0, 1], "DUUA"),
])
def test_edit_labels_hand_cases(r, m, lr, lm, ops):
  a, b = edit_labels(r, m)
  assert a.tolist() == lr and b.tolist() == lm
  assert edit_alignment_batch([r], [m])[0][2] == ops


def test_edit_labels_are_an_optimal_alignment_of_random_edits():
  rng = np.random.default_rng(0)
  rej, rev = [], []
  for _ in range(300):
    a = rng.integers(0, 6, rng.integers(0, 20)).tolist()
    b = list(a)
    for _ in range(rng.integers(0, 6)):  # random substitutions, deletions and insertions
      k, op = int(rng.integers(0, len(b) + 1)), int(rng.integers(3))
      if op == 0 and k < len(b):
        b[k] = int(rng.integers(0, 6))
      elif op == 1 and k < len(b):
        del b[k]
      else:
        b.insert(k, int(rng.integers(0, 6)))
    rej.append(a)
    rev.append(b if rng.random() < 0.8 else rng.integers(0, 6, rng.integers(0, 20)).tolist())
  for a, b, (la, lb, ops) in zip(rej, rev, edit_alignment_batch(rej, rev)):
    assert sum(o != "U" for o in ops) == _levenshtein(a, b)  # optimal
    i = j = 0
    for o in ops:  # the ops turn a into b, and the labels are theirs
      if o in "US":
        assert (a[i] == b[j]) == (o == "U")
        assert la[i] == (0 if o == "U" else -1) and lb[j] == (0 if o == "U" else 1)
        i, j = i + 1, j + 1
      elif o == "D":
        assert la[i] == -1
        i += 1
      else:
        assert lb[j] == 1
        j += 1
    assert (i, j) == (len(a), len(b))
    one = edit_labels(a, b)  # one pair alone: the same labels as in a block of pairs
    assert one[0].tolist() == la.tolist() and one[1].tolist() == lb.tolist()


# ---- token rewards, loss, KL ----

P = [0.9, 0.5, 0.2, 0.55]


def test_token_rewards_match_the_tlcr_1_vectors(x64):
  p = jnp.asarray(P, jnp.float64)
  np.testing.assert_allclose(rw.tlcr_token_rewards(p, mode="continuous"), [0.8, 0.0, -0.6, 0.1], atol=1e-15)
  np.testing.assert_allclose(rw.tlcr_token_rewards(p, mode="official"),
                             [0.379948962255225, 0.0, -0.2913126124515909, 0.049958374957880025], rtol=1e-12)
  np.testing.assert_allclose(rw.tlcr_token_rewards(p, mode="discrete"), [1.0, 0.0, -1.0, 0.0])
  np.testing.assert_allclose(rw.tlcr_token_rewards(p, mode="discrete", positive=0.5, negative=-2.0, high=0.55),
                             [0.5, 0.0, -2.0, 0.5])
  t = base_config().tlcr
  t.sign, t.reward_clip = "positive", 0.7
  mask = jnp.asarray([1, 1, 1, 0])
  np.testing.assert_allclose(rw.token_rewards(p, mask, t), [0.7, 0.0, 0.0, 0.0], atol=1e-15)
  t.sign = "negative"
  np.testing.assert_allclose(rw.token_rewards(p, mask, t), [0.0, 0.0, -0.6, 0.0], atol=1e-15)


def test_token_discriminator_loss_is_the_float64_formula(x64):
  rng = np.random.default_rng(1)
  z = rng.normal(size=(3, 5, 2)) * 2
  lab = rng.integers(-1, 2, (3, 5))
  mask = np.array([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0], [0, 0, 0, 0, 0]])
  logp = z - np.logaddexp(z[..., :1], z[..., 1:])
  t_pos = (lab + 1) / 2
  ce = -((1 - t_pos) * logp[..., 0] + t_pos * logp[..., 1])
  for hard in (False, True):
    m = mask * ((lab != 0) if hard else 1)
    want = (ce * m).sum(-1) / np.maximum(m.sum(-1), 1)
    got = token_discriminator_loss(*f64(z), jnp.asarray(lab), jnp.asarray(mask), hard_label=hard)
    np.testing.assert_allclose(got, want, rtol=1e-12)
  assert float(want[2]) == 0.0  # no labelled token: 0, not NaN
  # an unchanged token's loss is smallest at D = 1/2 (z equal): log 2
  flat = token_discriminator_loss(jnp.zeros((1, 1, 2), jnp.float64), jnp.zeros((1, 1), int), jnp.ones((1, 1), int))
  np.testing.assert_allclose(flat, [np.log(2.0)], rtol=1e-12)


@pytest.mark.parametrize("chunk", [64, 16, 10])
def test_full_kl_equals_the_dense_kl(chunk):
  k = jax.random.split(jax.random.key(0), 4)
  h, hr = jax.random.normal(k[0], (3, 7, 16)), jax.random.normal(k[1], (3, 7, 16))
  w, wr = 0.7 * jax.random.normal(k[2], (16, 53)), 0.7 * jax.random.normal(k[3], (16, 53))
  dense = full_kl_reference(h, w, hr, wr)
  np.testing.assert_allclose(full_kl(h, w, hr, wr, chunk_size=chunk), dense, rtol=1e-5, atol=1e-5)
  assert float(dense.min()) >= 0 and float(jnp.max(jnp.abs(full_kl(h, w, h, w, chunk_size=chunk)))) < 1e-5


# ---- revisions ----

def test_builtin_revisions_improve_the_ground_truth_with_minimal_edits():
  rows_ = revisions.builtin_revision_rows(400, seed=0, revise_frac=1.0, noise=0.0)
  assert len(rows_) == 400
  gt = lambda r, side: builtin.reward(r["prompt"], r[side], r.get(f"{side}_finished", True))
  assert all(builtin.is_valid(r["prompt"], r["revised"]) for r in rows_)
  assert all(gt(r, "revised") >= gt(r, "rejected") for r in rows_)
  assert np.mean([gt(r, "revised") > gt(r, "rejected") for r in rows_]) > 0.9
  # valid rejected completions: the edit keeps the words (only adjectives and the closing change)
  valid = [r for r in rows_ if builtin.is_valid(r["prompt"], r["rejected"], r["rejected_finished"])]
  assert len(valid) > 200
  for r in valid:
    (a, _), (b, closing) = revisions._closing(r["rejected"].split()), revisions._closing(r["revised"].split())
    assert len(a) == len(b) and closing in builtin.POLITE_CLOSINGS, (a, b)
    assert all(x == y or (x in builtin.ADJECTIVES and builtin.ADJECTIVES[y] > 0) for x, y in zip(a, b)), (a, b)
  assert revisions.revise("review of the hotel in rome :", "the staff is awful . whatever .") == \
      "the staff is excellent . thanks for reading ."
  # the share revised and the noisy editor
  some = revisions.builtin_revision_rows(400, seed=0, revise_frac=0.4, noise=0.3)
  assert 120 < len(some) < 200
  assert any(gt(r, "revised") <= gt(r, "rejected") for r in some)  # missed edits happen


def test_tokenized_revisions_carry_the_alignment_labels(tmp_path):
  tok = builtin.builtin_tokenizer(str(tmp_path))
  rows_ = [{"prompt": "review of the phone in rome :", "chosen": "x", "rejected": "the screen is poor . whatever .",
            "revised": "the screen is good . thanks for reading ."}]
  a = revisions.tokenize_revisions(tok, rows_, 16, 12)
  n_rej, n_rev = int(a["rejected_mask"].sum()), int(a["revised_mask"].sum())
  assert (n_rej, n_rev) == (8, 10)  # one token per word, and the EOS
  assert a["rejected_labels"][0, :n_rej].tolist() == [0, 0, 0, -1, 0, -1, 0, 0]  # poor, whatever; EOS 0
  assert a["revised_labels"][0, :n_rev].tolist() == [0, 0, 0, 1, 0, 1, 1, 1, 0, 0]  # good, thanks for reading
  assert a["revised"][0, n_rev - 1] == tok.eos_id and a["rejected_labels"][0, n_rej:].sum() == 0


def test_revision_jsonl_without_revised_is_one_line_error(tmp_path):
  p = tmp_path / "rev.jsonl"
  good = {"prompt": "q", "chosen": "a", "rejected": "b", "revised": "c"}
  p.write_text(json.dumps(good) + "\n" + json.dumps({k: v for k, v in good.items() if k != "revised"}) + "\n")
  with pytest.raises(UserError) as e:
    sources.read_revision_jsonl(str(p))
  msg = str(e.value)
  assert str(p) in msg and ":2" in msg and '"revised"' in msg and "\n" not in msg
  p.write_text(json.dumps(good) + "\n")
  assert sources.read_revision_jsonl(str(p)) == [good]


def test_discriminator_path_of_another_kind_is_one_line_error(tmp_path):
  d = tmp_path / "rm"
  d.mkdir()
  (d / "config.json").write_text(json.dumps({"trainer": "reward_model"}))
  with pytest.raises(UserError, match="tlcr.discriminator_path: .* holds a reward_model run, not a token_disc"):
    load_discriminator(str(d))


# ---- the discriminator inside the compiled PPO update ----

CFG = model_config("nano", vocab_size=64)


def test_ppo_update_scores_tokens_with_the_discriminator_inside_the_jaxpr():
  c = base_config()
  c.ppo.reward_source, c.ppo.kl_estimator, c.ppo.epochs, c.ppo.minibatches = "token_discriminator", "full", 1, 2
  c.ppo.missing_eos, c.ppo.missing_eos_penalty = "subtract", 0.7
  mesh = shd.make_mesh()
  _, rows_ = _rows(3)
  rows_.pop("b")
  disc = {"trunk": init_params(CFG, jax.random.key(5), mesh),
          "head": heads.init_token_head(CFG, jax.random.key(6), mesh, std=0.5)}
  frozen = {"reference": init_params(CFG, jax.random.key(1), mesh), "reward_models": (), "discriminator": disc}
  opt = ppo.optimizer_for(c)
  state = create_state({"policy": init_params(CFG, jax.random.key(0), mesh),
                        "value": {"head": heads.init_head(CFG, jax.random.key(2), mesh, std=0.02)}}, opt, mesh,
                       jax.device_put(ppo.initial_extra(c), shd.replicated(mesh)))
  batch = shd.shard_batch(rows_, mesh)
  update = ppo.make_update(c.ppo, CFG, CFG, opt, seed=0, chunk=32, disc_cfg=CFG, tlcr=c.tlcr)

  closed = jax.make_jaxpr(update)(state, batch, frozen)
  _params_are_inputs(closed, (state, batch, frozen), disc)
  assert not _primitives(closed.jaxpr) & set(CALLBACKS)

  # host-side numbers: D per token from its own jit, r = 2D − 1 on real tokens
  d = np.asarray(jax.jit(heads.token_positive_prob, static_argnums=0)(
      CFG, disc, batch["prompt"], batch["prompt_mask"], batch["completion"], batch["completion_mask"]), np.float64)
  m = rows_["completion_mask"] > 0
  r = np.where(m, 2 * d - 1, 0.0)
  _, met = jax.jit(update)(state, batch, frozen)
  np.testing.assert_allclose(float(met["disc_prob"]), d[m].mean(), rtol=1e-5)
  np.testing.assert_allclose(float(met["token_reward"]), r[m].mean(), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(float(met["token_reward_sum"]), r.sum(1).mean(), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(float(met["score"]), np.mean(-0.7 * ~rows_["finished"]), rtol=1e-6)  # no sequence RM
  # the exact KL over the vocabulary, dense on the host side, summed over each completion
  args = (batch["prompt"], batch["prompt_mask"], batch["completion"], batch["completion_mask"])
  hid = lambda prm: heads.completion_hidden(CFG, prm, *args)
  dense = full_kl_reference(hid(state.params["policy"]), output_matrix_DxV(CFG, state.params["policy"]),
                            hid(frozen["reference"]), output_matrix_DxV(CFG, frozen["reference"]))
  np.testing.assert_allclose(float(met["kl"]), np.where(m, np.asarray(dense), 0.0).sum(1).mean(), rtol=1e-4)


# ---- CLI: discriminator stage, then PPO with token rewards ----

TINY = ["--config.init_from=", "--config.eval.samples_per_prompt=1"]  # random init: no SFT stage


@pytest.fixture(scope="module")
def tlcr_run(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("tlcr") / "run")
  run(wd, *TINY, config="configs/tlcr.py:tiny")
  return wd


def test_tiny_tlcr_run_trains_the_discriminator_then_ppo_on_token_rewards(tlcr_run):
  disc = rows(os.path.join(tlcr_run, "discriminator"))
  assert [r["step"] for r in disc if "train/loss" in r] == [1, 2, 3, 4]
  ev = [r for r in disc if "eval/token_accuracy" in r]
  assert ev and 0 <= ev[-1]["eval/sign_agreement"] <= 1 and ev[-1]["eval/sentiment_tokens"] > 0
  assert all(0 <= r["train/p_positive"] <= 1 for r in disc if "train/p_positive" in r)
  rs = rows(tlcr_run)
  train = [r for r in rs if "train/token_reward" in r]
  assert [r["step"] for r in train] == [1, 2, 3, 4]
  for r in train:
    assert -1 <= r["train/token_reward"] <= 1 and 0 < r["train/disc_prob"] < 1
    assert r["train/kl"] >= 0  # the exact KL over the vocabulary
    assert r["perf/step_compiles"] == 1
  assert train[0]["train/kl"] < 1e-6  # policy == reference before the first update
  assert sum("eval/win_rate" in r for r in rs) == 2
  with open(os.path.join(tlcr_run, "config.json")) as f:
    assert json.load(f)["tlcr"]["discriminator_path"] == ""


@pytest.mark.parametrize("stage, metrics_file, step", [("discriminator", "discriminator/metrics.jsonl", 2),
                                                        ("ppo", "metrics.jsonl", 2)])
def test_killed_tlcr_run_resumes_on_the_same_trajectory(tlcr_run, tmp_path, stage, metrics_file, step):
  wd = str(tmp_path / "run")
  kill_when(cmd(wd, *TINY, config="configs/tlcr.py:tiny"), wd, metrics_file, step, str(tmp_path / "log"))
  run(wd, *TINY, config="configs/tlcr.py:tiny")
  assert_same_rows(rows(os.path.join(wd, "discriminator")), rows(os.path.join(tlcr_run, "discriminator")), stage)
  assert_same_rows(rows(wd), rows(tlcr_run), stage)


def test_discrete_token_config_shares_a_trained_discriminator(tlcr_run, tmp_path):
  wd = str(tmp_path / "discrete")
  run(wd, *TINY, f"--config.tlcr.discriminator_path={tlcr_run}/discriminator", "--config.ppo.value=discriminator",
      config="configs/ppo_token_discrete.py:tiny")
  assert not os.path.exists(os.path.join(wd, "discriminator"))  # reused, not trained
  train = [r for r in rows(wd) if "train/token_reward" in r]
  assert len(train) == 4 and all(-1 <= r["train/token_reward"] <= 1 for r in train)
  bad = run(str(tmp_path / "bad"), *TINY, f"--config.tlcr.discriminator_path={tlcr_run}/sft_missing",
            config="configs/tlcr.py:tiny", check=False)
  assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("error: "), bad.stderr[-2000:]
