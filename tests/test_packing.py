"""Packed preference batches (`jaxalign.data.packing`) compute what padded rows compute.

Layout invariants; packed == padded log-probs, DPO losses, metrics and
gradients on an 8-device mesh, with microbatches and precomputed reference log-probs;
remat and bf16 on the packed step; and a bounded number of compilations over many
variable-length batches.
"""

import jax
import numpy as np
import pytest

from jaxalign import sharding as shd
from jaxalign.config import base_config
from jaxalign.data.packing import bucket, pack_pairs, packed_tokens
from jaxalign.metrics import CompileCounter
from jaxalign.models.transformer import model_config
from jaxalign.optim import make_optimizer
from jaxalign.trainers import offline
from jaxalign.trainers.state import create_state, jit_step, make_step

from jaxalign.models.loading import abstract_params, init_params

CFG = model_config("nano", vocab_size=64)
ONE = lambda: shd.make_mesh(1, 1, 1, devices=jax.devices()[:1])  # noqa: E731


def assert_trees_close(x, y, rtol=1e-5):
  for a, b in zip(jax.tree.leaves(x), jax.tree.leaves(y)):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.linalg.norm(a - b) <= rtol * np.linalg.norm(b), (np.linalg.norm(a - b), np.linalg.norm(b))


def variable_batch(b=16, p=10, c=8, seed=0, vocab=64):
  """Fixed-layout pairs with long-tailed lengths in [1, P] and [1, C]."""
  rng = np.random.default_rng(seed)
  draw = lambda hi: np.clip(np.rint(rng.lognormal(np.log(hi / 3), 0.8, b)), 1, hi).astype(int)
  lp, lc, lr = draw(p), draw(c), draw(c)
  pm = (np.arange(p)[None] >= (p - lp)[:, None]).astype(np.int32)
  out = dict(prompt=rng.integers(4, vocab, (b, p)).astype(np.int32) * pm, prompt_mask=pm)
  for k, n in (("chosen", lc), ("rejected", lr)):
    m = (np.arange(c)[None] < n[:, None]).astype(np.int32)
    out[k], out[f"{k}_mask"] = rng.integers(4, vocab, (b, c)).astype(np.int32) * m, m
  return out


def test_buckets_are_few_and_tight():
  got = [bucket(n) for n in range(1, 513)]
  assert all(g >= n and g <= max(n * 1.25, n + 1) for n, g in zip(range(1, 513), got))
  assert len(set(got)) == 8 + 4 * 6  # 1..8, then four per octave up to 512
  assert all(a <= b for a, b in zip(got, got[1:]))


@pytest.mark.parametrize("share_prompt", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_layout_holds_every_sequence_once_within_budgets(seed, share_prompt):
  hb = variable_batch(seed=seed)
  b, p = hb["prompt"].shape
  c = hb["chosen"].shape[1]
  pk = pack_pairs(hb, groups=2, micro_groups=2, row_multiple=2, share_prompt=share_prompt)
  r, row_len = pk["tokens"].shape
  g, n = pk["score_pos"].shape
  assert row_len == (p + 2 * c if share_prompt else p + c)
  assert g == 4 and r % 4 == 0 and r <= 2 * b
  # the head runs on N slots per block: two thirds of a block's tokens, or all when that is too few
  per_block = [(pk["seq_idx"][k] < 2 * b).sum() for k in range(g)]
  block_tokens = (r // g) * row_len
  assert n in (-(-2 * block_tokens // 3), block_tokens) and n >= max(per_block)
  assert n == block_tokens or max(per_block) <= -(-2 * block_tokens // 3)
  prompts = (1 if share_prompt else 2) * hb["prompt_mask"].sum()
  assert packed_tokens(pk) == prompts + hb["chosen_mask"].sum() + hb["rejected_mask"].sum()
  for row in range(r):
    seg = pk["segment_ids"][row]
    for s in set(seg[seg > 0].tolist()):
      at = np.flatnonzero(seg == s)
      assert np.array_equal(at, np.arange(at[0], at[-1] + 1))  # contiguous
      pos, br = pk["positions"][row, at], pk["branch_ids"][row, at]
      if share_prompt:  # prompt 0.., chosen and rejected both continue from the prompt's end
        n_p = int((br == 0).sum())
        assert set(br.tolist()) <= {0, 1, 2} and np.all(np.diff(br) >= 0)
        for k in (0, 1, 2):
          np.testing.assert_array_equal(pos[br == k], (0 if k == 0 else n_p) + np.arange((br == k).sum()))
      else:
        assert not br.any()
        np.testing.assert_array_equal(pos, np.arange(len(at)))
  seen = set()
  rows_per_block = r // g
  for blk in range(g):
    tok_flat = pk["tokens"][blk * rows_per_block:(blk + 1) * rows_per_block].reshape(-1)
    seg_flat = pk["segment_ids"][blk * rows_per_block:(blk + 1) * rows_per_block].reshape(-1)
    valid = pk["seq_idx"][blk] < 2 * b  # micro_groups=2: both groups are one microbatch
    for k in set(pk["seq_idx"][blk][valid].tolist()):
      i, side = k % b, ("chosen", "rejected")[k // b]
      slots = pk["seq_idx"][blk] == k
      comp = hb[side][i][hb[f"{side}_mask"][i] > 0]
      prompt = hb["prompt"][i][hb["prompt_mask"][i] > 0]
      np.testing.assert_array_equal(pk["targets"][blk][slots], comp)
      pos = pk["score_pos"][blk][slots]
      # The first target follows the prompt's last token; the others follow the previous target.
      np.testing.assert_array_equal(tok_flat[pos[1:]], comp[:-1])
      np.testing.assert_array_equal(tok_flat[pos[0] - len(prompt) + 1:pos[0] + 1], prompt)
      assert len(set(seg_flat[pos].tolist())) == 1
      assert (i, side) not in seen
      seen.add((i, side))
  assert seen == {(i, s) for i in range(b) for s in ("chosen", "rejected")}
  np.testing.assert_array_equal(pk["chosen_len"], hb["chosen_mask"].sum(1))


def test_packed_logps_equal_padded():
  params = init_params(CFG, jax.random.key(0), ONE())
  hb = variable_batch(seed=3)
  pk = pack_pairs(hb)
  assert pk["tokens"].shape[0] < 2 * hb["prompt"].shape[0]  # several sequences share rows
  f = jax.jit(lambda p, b: offline.pair_logps(CFG, p, b, 16))
  for a, b in zip(f(params, hb), f(params, pk)):
    # Same tokens, positions and visible keys; only matmul shapes (summation order) differ.
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-5)


def _step(mesh, batch, *, ref_in_step=True, grad_accum=1, cfg=CFG, name="dpo"):
  """One SGD step (the update is the gradient) of a pairwise loss; returns metrics and params."""
  tcfg = base_config().train
  tcfg.optimizer, tcfg.learning_rate, tcfg.warmup_steps, tcfg.grad_accum = "sgd", 1.0, 0, grad_accum
  shardings = shd.param_shardings(abstract_params(CFG), mesh)
  params = jax.device_put(init_params(CFG, jax.random.key(0), ONE()), shardings)
  ref = jax.device_put(init_params(CFG, jax.random.key(1), ONE()), shardings)
  hparams = {"dpo": {"beta": 0.5}, "ipo": {"tau": 0.5, "length_normalize": True}}[name]
  loss_fn = offline.preference_loss(cfg, name, hparams, chunk=16)
  opt = make_optimizer(tcfg)
  state = create_state(params, opt, mesh)
  frozen = ref if ref_in_step else None
  b_sh = {k: shd.batch_sharding(mesh, v.ndim, v.shape[0]) for k, v in batch.items()}
  step = jit_step(make_step(loss_fn, opt, grad_accum), state, b_sh,
                  None if frozen is None else jax.tree.map(lambda x: x.sharding, frozen), mesh)
  state, metrics = step(state, shd.shard_batch(batch, mesh), frozen)
  return jax.device_get(metrics), jax.device_get(state.params)


def _with_reference(hb):
  rc, rr = jax.jit(lambda p, b: offline.pair_logps(CFG, p, b, 16))(init_params(CFG, jax.random.key(1), ONE()), hb)
  return {**hb, "ref_chosen_logps": np.asarray(rc), "ref_rejected_logps": np.asarray(rr)}


@pytest.fixture(scope="module")
def padded():
  return _step(ONE(), variable_batch())


@pytest.mark.parametrize("mesh_shape,grad_accum,ref_in_step", [
    ((2, 2, 2), 1, True),  # batch rows over data x fsdp, params over fsdp x tensor
    ((4, 1, 2), 2, True),  # microbatches: each packs its own pairs
    ((2, 2, 2), 1, False),  # precomputed reference log-probs ride along as per-pair arrays
])
def test_packed_step_equals_padded_step_on_mesh(padded, mesh_shape, grad_accum, ref_in_step):
  mesh = shd.make_mesh(*mesh_shape)
  shards = mesh.shape["data"] * mesh.shape["fsdp"]
  hb = variable_batch() if ref_in_step else _with_reference(variable_batch())
  pk = pack_pairs(hb, groups=grad_accum, row_multiple=shards)
  assert pk["tokens"].shape[0] < 2 * hb["prompt"].shape[0]
  m, p = _step(mesh, pk, ref_in_step=ref_in_step, grad_accum=grad_accum)
  m1, p1 = padded
  for k in ("loss", "rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected", "grad_norm"):
    np.testing.assert_allclose(m[k], m1[k], rtol=2e-5, atol=1e-6, err_msg=k)
  assert_trees_close(p, p1)


def _loss_and_grads(batch, cfg=CFG, name="dpo"):
  """Loss sum and gradient of one microbatch (no optimiser), reference forward in the step."""
  params = init_params(CFG, jax.random.key(0), ONE())
  ref = init_params(CFG, jax.random.key(1), ONE())
  hparams = {"dpo": {"beta": 0.5}, "ipo": {"tau": 0.5, "length_normalize": True}}[name]
  loss_fn = offline.preference_loss(cfg, name, hparams, chunk=16)
  (loss, _), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(params, batch, ref)
  return float(loss), jax.device_get(grads)


def test_length_normalised_loss_reads_packed_lengths():
  hb = variable_batch()
  l1, g1 = _loss_and_grads(hb, name="ipo")
  l2, g2 = _loss_and_grads(pack_pairs(hb), name="ipo")
  np.testing.assert_allclose(l2, l1, rtol=1e-5)
  assert_trees_close(g2, g1)


def test_remat_and_bf16_on_the_packed_step():
  pk = pack_pairs(variable_batch())
  l1, g1 = _loss_and_grads(pk)
  for remat in ("full", "dots"):
    loss, g = _loss_and_grads(pk, model_config("nano", vocab_size=64, remat=remat))
    np.testing.assert_allclose(loss, l1, rtol=1e-6)
    assert_trees_close(g, g1, rtol=1e-5)
  loss, g = _loss_and_grads(pk, model_config("nano", vocab_size=64, dtype="bfloat16"))
  np.testing.assert_allclose(loss, l1, rtol=2e-2)
  assert_trees_close(g, g1, rtol=5e-2)


def test_compilations_are_bounded_over_many_batches():
  """30 batches of long-tailed lengths: the step compiles once per row-count bucket, and the
  buckets a batch of B pairs can hit are few."""
  mesh = shd.make_mesh(2, 1, 1, devices=jax.devices()[:2])
  tcfg = base_config().train
  opt = make_optimizer(tcfg)
  state = create_state(init_params(CFG, jax.random.key(0), mesh), opt, mesh)
  ref = init_params(CFG, jax.random.key(1), mesh)
  b = 16
  batches = [pack_pairs(variable_batch(b=b, p=24, c=24, seed=s), row_multiple=2) for s in range(30)]
  b_sh = {k: shd.batch_sharding(mesh, v.ndim, v.shape[0]) for k, v in batches[0].items()}
  step = jit_step(make_step(offline.preference_loss(CFG, "dpo", {"beta": 0.1}, 16), opt), state, b_sh,
                  jax.tree.map(lambda x: x.sharding, ref), mesh)
  with CompileCounter() as counter:
    for pk in batches:
      state, _ = step(state, shd.shard_batch(pk, mesh), ref)
  shapes = sorted({(pk["tokens"].shape[0], pk["score_pos"].shape[1]) for pk in batches})
  assert counter.counts["jit(step_grads)"] == len(shapes)  # one compilation per distinct shape, none per batch
  # Row counts are buckets and the scored slots follow them, so the shapes a B=16 run can hit are few.
  possible_rows = {-(-bucket(n) // 2) * 2 for n in range(1, 2 * b + 1)}  # two blocks of equal rows
  assert all(r in possible_rows for r, _ in shapes)
  row_len = batches[0]["tokens"].shape[1]
  assert all(n in (-(-2 * (r // 2) * row_len // 3), (r // 2) * row_len) for r, n in shapes)
  assert len(shapes) <= 6, shapes


def test_trainer_with_packing_logs_what_the_padded_run_logs(tmp_path):
  """The offline trainer end to end (precomputed reference, 2 microbatches, 8-device mesh):
  `train.packing` changes the layout, not the numbers."""
  from configs import dpo
  from jaxalign.metrics import read_jsonl

  def run(packing):
    c = dpo.get_config("tiny")
    with c.unlocked():
      c.init_from, c.model.preset = "", "nano"
      c.train.steps, c.train.grad_accum, c.train.log_every, c.train.packing = 2, 2, 1, packing
      c.train.checkpoint_every, c.eval.every = 2, 0
      c.mesh.data, c.mesh.fsdp, c.mesh.tensor = 4, 2, 1
    workdir = str(tmp_path / f"packing={packing}")
    offline.train(c, workdir)
    rows = [r for r in read_jsonl(f"{workdir}/metrics.jsonl") if "train/loss" in r]
    return rows
  padded, packed = run(False), run(True)
  assert len(padded) == len(packed) == 2
  for a, b in zip(padded, packed):
    for k in ("train/loss", "train/grad_norm", "train/rewards/margins"):
      np.testing.assert_allclose(b[k], a[k], rtol=1e-4, atol=1e-6, err_msg=k)
  assert packed[-1]["perf/step_compiles"] >= 1


def test_auto_sft_stage_of_a_packed_run_does_not_pack(tmp_path, monkeypatch):
  """`--config.train.packing=True` on an offline config with init_from=auto: the SFT stage trains unpacked."""
  from jaxalign.config import offline_config, validate
  from jaxalign.trainers import prologue
  seen = []
  monkeypatch.setattr(prologue.sft, "train", lambda c, d: (validate(c), seen.append(c)))
  config = offline_config({"name": "dpo", "beta": 0.1}, "tiny")
  with config.unlocked():
    config.train.packing = True
  assert prologue.auto_sft(config, str(tmp_path)) == str(tmp_path / "sft")
  assert seen[0].trainer == "sft" and not seen[0].train.packing and config.train.packing
