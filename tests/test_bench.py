"""The benchmark scripts run, report what they measure, and time the same numbers as the trainer.

No timing thresholds: the scripts are run on the `nano` preset and their JSON is checked for
counts and losses (packed and padded rows of the same batches give the same loss).
"""

import json
import math
import os
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "experiments", "bench")
# One CPU device, as a user runs the scripts, and no shared compilation cache (the scripts count compilations).
ENV = {**{k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}, "XLA_FLAGS": ""}


def _bench(script, *flags):
  out = subprocess.run([sys.executable, os.path.join(BENCH, script), "--json", *flags], capture_output=True,
                       text=True, env=ENV, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


FAST = ["--preset", "nano", "--batch_pairs", "4", "--prompt_len", "16", "--completion_len", "16",
        "--steps", "2", "--warmup", "1", "--matmul_n", "256", "--matmul_repeats", "1"]


@pytest.fixture(scope="module")
def variable_runs():
  return {layout: _bench("dpo.py", *FAST, "--variable_lengths", *extra)
          for layout, extra in (("padded", []), ("packed", ["--packing"]),
                                ("packed_unshared", ["--packing", "--no_share_prompt"]))}


def test_dpo_bench_fixed_rows():
  r = _bench("dpo.py", *FAST)
  assert r["tokens_per_step"] == r["padded_tokens_per_step"] == 2 * 4 * (16 + 16)
  assert r["step_compiles"] == 1 and r["timed_steps"] == 2
  assert r["tokens_per_s"] > 0 and 0 < r["mfu"] and r["peak_rss_mb"] > 0
  # policy == reference at the start and a tiny warm-up learning rate: the DPO loss is still log 2
  assert abs(r["loss"] - math.log(2)) < 1e-3


def test_dpo_bench_packing_times_the_same_numbers(variable_runs):
  padded, packed, unshared = variable_runs["padded"], variable_runs["packed"], variable_runs["packed_unshared"]
  # same batches (same seed) in the same order: whatever the layout, the same loss after the last step
  assert packed["loss"] == pytest.approx(padded["loss"], abs=1e-5)
  assert unshared["loss"] == pytest.approx(padded["loss"], abs=1e-5)
  # packing computes fewer tokens than padding, in rows of P + 2C (shared prompt) or P + C
  assert packed["share_prompt"] and not unshared["share_prompt"]
  assert max(packed["padded_tokens_per_step"], unshared["padded_tokens_per_step"]) < padded["padded_tokens_per_step"]
  assert packed["padded_tokens_per_step"] % (16 + 2 * 16) == 0 and unshared["padded_tokens_per_step"] % 32 == 0


def test_generate_bench_counts_tokens():
  r = _bench("generate.py", "--preset", "nano", "--batch", "2", "--prompt_len", "8", "--new_tokens", "8",
             "--repeats", "2")
  assert r["jaxalign_compiles"] == 1 and r["jaxalign_tokens_per_s"] > 0  # the prefill-only call reuses the program
  assert r["prefill_s"] > 0  # (no ordering of timings: they are not asserted)
  assert math.isclose(r["decode_step_s"] * 8 + r["prefill_s"], r["jaxalign_s"], rel_tol=1e-6)
  assert r["matmul_gflops_at_batch_rows"] > 0 and r["floor_at_batch_rows_step_s"] > 0
  assert "hf_tokens_per_s" not in r  # only with --hf


def test_compare_tunix_without_tunix_is_one_line():
  out = subprocess.run([sys.executable, os.path.join(BENCH, "compare_tunix.py"), "--tunix_python", "/nonexistent/python"],
                       capture_output=True, text=True, env=ENV, timeout=120)
  assert out.returncode != 0
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and "tunix is not importable by /nonexistent/python" in lines[0]


def test_alternate_reports_medians_and_ratios(tmp_path):
  """`_common.alternate` (compare_trl.py, compare_tunix.py): per-side medians, ratios, every run in order."""
  import importlib.util  # by path: experiments/_common.py (the experiment scripts') may already be `_common`
  spec = importlib.util.spec_from_file_location("bench_common", os.path.join(BENCH, "_common.py"))
  bench_common = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(bench_common)
  SUMMARY_KEYS, alternate = bench_common.SUMMARY_KEYS, bench_common.alternate
  # A stand-in benchmark: each call prints a line of noise, then one JSON object with the next queued value.
  fake = tmp_path / "fake_bench.py"
  fake.write_text(
      "import json, sys\n"
      "queue = json.load(open(sys.argv[1]))\n"
      "json.dump(queue[1:], open(sys.argv[1], 'w'))\n"
      "print('noise')\n"
      f"print(json.dumps({{**{{k: queue[0] for k in {list(SUMMARY_KEYS)!r}}}, 'step_compiles': 1}}))\n")
  (tmp_path / "other.json").write_text("[1.0, 3.0, 2.0]")
  (tmp_path / "mine.json").write_text("[4.0, 9.0, 6.0]")
  out = alternate("trl", [sys.executable, str(fake), str(tmp_path / "other.json")],
                  [sys.executable, str(fake), str(tmp_path / "mine.json")], rounds=3)
  assert out["trl"]["tokens_per_s"] == 2.0 and out["jaxalign"]["tokens_per_s"] == 6.0
  assert out["ratio_tokens_per_s"] == 3.0 and out["ratio_peak_rss"] == 3.0
  assert [r["tokens_per_s"] for r in out["runs"]["trl"]] == [1.0, 3.0, 2.0]
  assert out["jaxalign_step_compiles"] == [1, 1, 1]


def test_tlcr_bench_times_the_four_update_variants_and_the_labels():
  r = _bench("tlcr.py", "--preset", "nano", "--batch", "16", "--prompt_len", "8", "--completion_len", "8",
             "--rounds", "1", "--steps", "1", "--label_pairs", "64", "--label_len", "32")
  variants = ["reward_models/k1", "token_discriminator/k1", "reward_models/full", "token_discriminator/full"]
  assert all(r[v]["update_s"] > 0 and r[v]["compile_s"] > 0 for v in variants)
  assert r["reward_models/k1"]["ratio"] == 1.0 and r["label_pairs_per_s"] > 0
  assert (r["batch"], r["prompt_len"], r["completion_len"]) == (16, 8, 8)


def test_gpu_script_dry_run_prints_one_json_line_per_figure():
  """`experiments/bench/gpu.sh --dry_run`: the GPU benchmark's steps on the CPU with the nano preset, so the script
  cannot rot between the sessions that have an accelerator (no timing is asserted)."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = {**ENV, "PYTHON": sys.executable, "PYTHONPATH": root}
  p = subprocess.run(["bash", "experiments/bench/gpu.sh", "--dry_run"], cwd=root, env=env, capture_output=True,
                     text=True, timeout=600)
  assert p.returncode == 0, p.stderr[-3000:]
  lines = [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]
  assert [l["figure"] for l in lines] == ["matmul", "dpo_step", "sampler", "ppo_iteration"]
  mm, dpo, gen, ppo = lines
  assert mm["f32_flops"] > 0 and mm["bf16_flops"] > 0 and mm["device"] == "cpu" and mm["peak_bf16_flops"] is None
  assert dpo["dtype"] == "bfloat16" and dpo["achieved_flops"] > 0 and dpo["mfu_vs_bf16_matmul"] > 0
  assert gen["batch"] == 8 and gen["kv_cache_bytes"] > 0 and gen["floor_ratio"] > 0
  assert ppo["iterations"] >= 1 and ppo["rollout_time_s"] > 0 and ppo["update_time_s"] > 0


def test_dpo_profile_breaks_the_step_into_named_categories(tmp_path):
  """`dpo.py --profile`: the traced step's thunk time by category (matmuls of attention / MLP / log-probs, the
  optimizer program, ...), classified from the compiled HLO; the shares add up to 1 and every program is seen."""
  out = _bench("dpo.py", *FAST, "--profile", str(tmp_path / "trace"))
  prof = out["profile"]
  cats = {k: v for k, v in prof.items() if isinstance(v, dict)}
  assert math.isclose(sum(v["share"] for v in cats.values()), 1.0, abs_tol=1e-3)
  assert {"matmul: MLP", "matmul: attention", "matmul: log-probs", "optimizer"} <= set(cats)
  assert prof["summed_thunk_ms"] > 0 and {t["module"] for t in prof["top_instructions"]} <= {"jit_step_grads",
                                                                                               "jit_step_update"}


def test_compare_trl_online_jaxalign_side_times_each_method(tmp_path):
  """compare_trl_online.py without TRL: each method's jaxalign run, its rollout / update split and token counts."""
  r = _bench("compare_trl_online.py", "--skip_trl", "--methods", "nash_md,ppo", "--preset", "nano",
             "--batch_size", "4", "--max_new_tokens", "8", "--steps", "1", "--warmup", "1", "--rm_steps", "2",
             "--ppo_epochs", "1", "--cache", str(tmp_path))
  assert set(r["methods"]) == {"nash_md", "ppo"} and r["cpu_model"]
  for method, per_prompt in (("nash_md", 2), ("ppo", 1)):
    e = r["methods"][method]
    assert "trl" not in e and "ratio" not in e
    j = e["jaxalign"]
    assert j["generated_tokens_per_step"] == per_prompt * 4 * 8
    assert math.isclose(j["step_time_s"], j["rollout_time_s"] + j["update_time_s"], rel_tol=1e-6)
    assert 0 < j["rollout_time_s"] < j["step_time_s"] and j["peak_rss_mb"] > 100
    assert math.isclose(j["rollout_tokens_per_s"], per_prompt * 32 / j["step_time_s"], rel_tol=1e-6)
  assert r["methods"]["nash_md"]["jaxalign"]["pairs_per_s"] > 0 and r["methods"]["ppo"]["jaxalign"].get("pairs_per_s") is None


def test_compare_trl_online_without_trl_is_one_line():
  out = subprocess.run([sys.executable, os.path.join(BENCH, "compare_trl_online.py"), "--trl_python",
                        "/nonexistent/python"], capture_output=True, text=True, env=ENV, timeout=120)
  assert out.returncode != 0
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and "not importable by /nonexistent/python" in lines[0]


def test_matmul_routes_run_every_xla_route_in_its_own_process():
  r = _bench("matmul.py", "--routes", "--n", "64", "--repeats", "1")
  assert r["figure"] == "matmul_routes" and r["cpu_model"]
  names = [row["route"] for row in r["routes"]]
  assert names[0] == "default" and len(names) == len(set(names)) >= 7 and "torch" not in names  # no --torch
  for row in r["routes"]:
    assert "error" not in row, row
    assert row["f32_gflops"] > 0 and row["bf16_gflops"] > 0
