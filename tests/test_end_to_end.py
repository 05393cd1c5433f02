"""The CLI end to end: tiny DPO from nothing, SIGKILL + resume == uninterrupted, one-line errors."""

import json
import os
import shutil
import socket

import pytest

from cli import assert_same_rows, cmd, error_line, kill_when, killed_at
from cli import rows as _rows
from cli import run as _run


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("dpo_full"))
  p = _run(wd)
  return wd, p


def test_tiny_dpo_from_nothing(uninterrupted):
  wd, p = uninterrupted
  final = json.loads(p.stdout[p.stdout.index("{"):])
  assert final["step"] == 6
  for k in ("eval/win_rate", "eval/gt_reward", "eval/kl", "eval/valid", "eval/reference_valid"):
    assert k in final, k
  rows = _rows(wd)
  train = [r for r in rows if "train/loss" in r]
  assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
  for r in train:
    for k in ("train/rewards/accuracies", "train/rewards/margins", "train/logps/chosen", "perf/compile_time_s"):
      assert k in r
  for r in train[1:]:  # step 1 includes compilation, so throughput starts at step 2
    assert r["perf/tokens_per_s"] > 0 and 0 < r["perf/mfu"] < 1 and r["perf/step_time_s"] > 0
  assert abs(train[0]["train/loss"] - 0.6931) < 1e-3  # policy == reference at step 0: log 2
  assert os.path.exists(os.path.join(wd, "config.json"))
  assert sorted(os.listdir(os.path.join(wd, "checkpoints")))[-1] == "6"
  assert os.path.exists(os.path.join(wd, "sft", "checkpoints", "40"))
  assert any(f.startswith("reference_logps-") for f in os.listdir(os.path.join(wd, "ref_cache")))
  assert any(f.startswith("events") for f in os.listdir(os.path.join(wd, "tb")))
  # rerunning a finished run does nothing and reports the same metrics
  again = _run(wd)
  assert json.loads(again.stdout[again.stdout.index("{"):]) == final
  assert _rows(wd) == rows


@pytest.mark.parametrize("fault", ["sft", "ref_cache", "step@2", "eval@6"])
def test_sigkill_then_resume_matches_uninterrupted(uninterrupted, tmp_path, fault):
  """SIGKILL during the SFT stage (while it runs, a second run on the workdir is refused), or in the DPO
  stage half way through the reference-cache write, after a step is dispatched, or between an evaluation's
  metrics and its samples: the rerun ends with the rows of the uninterrupted run."""
  wd = str(tmp_path / "run")
  full_wd, _ = uninterrupted
  log = str(tmp_path / "killed.log")
  if fault == "sft":
    def refused(proc):
      line = error_line(_run(wd, check=False))
      assert f"held by a live run (host {socket.gethostname()}, pid {proc.pid}, " in line, line
    kill_when(cmd(wd), wd, "sft/metrics.jsonl", 20, log, during=refused)
  else:  # the uninterrupted run's SFT stage, so only the DPO stage runs (and is killed) here
    shutil.copytree(os.path.join(full_wd, "sft"), os.path.join(wd, "sft"))
    killed_at(cmd(wd), fault, log)
    if fault == "ref_cache":
      assert not any(f.endswith("npz") and "tmp" not in f for f in os.listdir(os.path.join(wd, "ref_cache")))
  _run(wd)
  for sub in ("sft", ""):
    assert_same_rows(_rows(os.path.join(wd, sub)), _rows(os.path.join(full_wd, sub)), sub)
  samples = [json.loads(l)["step"] for l in open(os.path.join(wd, "samples.jsonl"))]
  assert samples == [json.loads(l)["step"] for l in open(os.path.join(full_wd, "samples.jsonl"))]


@pytest.mark.parametrize("overrides,config,expected", [
    (["--config.loss.name=dpx"], "configs/dpo.py:tiny", "error: config loss.name: unknown loss 'dpx'"),
    (["--config.train.stpes=3"], "configs/dpo.py:tiny",
     """error: --config.train.stpes: no such config key 'stpes' (Did you mean "steps" instead of "stpes"?)"""),
    (["--config.eval.zzz=x"], "configs/dpo.py:tiny", "error: --config.eval.zzz: no such config key 'zzz' (misspelt?)"),
    (["--config.data.source=jsonl", "--config.data.path=/nonexistent/train.jsonl",
      "--config.data.tokenizer=/nonexistent/sp.model"], "configs/dpo.py:tiny", "error: /nonexistent/sp.model"),
    (["--config.data.prompt_len=500"], "configs/dpo.py:tiny", "error: config data.prompt_len + data.completion_len"),
    ([], "configs/nope.py", "error: "),
    (["--config.mesh.data=3"], "configs/sft.py:tiny", "error: mesh: sizes data=3"),
])
def test_bad_input_is_one_line_error(tmp_path, overrides, config, expected):
  p = _run(str(tmp_path / "wd"), *overrides, config=config, check=False)
  assert p.returncode == 2, p.stderr[-2000:]
  lines = [l for l in p.stderr.splitlines() if l.strip() and not l.startswith("WARNING")]
  assert len(lines) == 1 and lines[0].startswith(expected), p.stderr[-2000:]
  assert "Traceback" not in p.stderr


def test_malformed_jsonl_line_names_file_line_field(tmp_path):
  from jaxalign.data import builtin
  builtin.builtin_tokenizer(str(tmp_path))
  data = tmp_path / "train.jsonl"
  good = json.dumps({"prompt": "review of the phone in paris :", "chosen": "the screen is good .",
                     "rejected": "the screen is poor ."})
  data.write_text("\n".join([good] * 16 + ['{"prompt": "x", "rejected": "y"}']) + "\n")
  p = _run(str(tmp_path / "wd"), "--config.data.source=jsonl", f"--config.data.path={data}",
           f"--config.data.tokenizer={tmp_path / 'builtin_sp.model'}", "--config.init_from=", check=False)
  assert p.returncode == 2
  assert p.stderr.strip().splitlines()[-1] == f'error: {data}:17: missing field "chosen"'


def test_default_job_quality(tmp_path):
  """The README's default job: win rate >= 0.70 against the SFT reference, validity within 5 points."""
  p = _run(str(tmp_path / "dpo"), config="configs/dpo.py")
  final = json.loads(p.stdout[p.stdout.index("{"):])
  assert final["step"] == 150
  assert final["eval/win_rate"] >= 0.70, final
  assert final["eval/valid"] >= final["eval/reference_valid"] - 0.05, final
  assert final["eval/reference_valid"] >= 0.85 and 0.0 < final["eval/kl"] < 20.0, final
