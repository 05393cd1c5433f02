"""experiments/colab.ipynb runs end to end (tiny runs, CPU, 8 forced devices), so it cannot rot."""

import json
import os

import pytest

nbclient = pytest.importorskip("nbclient", reason="needs nbclient (pip install -e .[test])")
import nbformat  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_colab_notebook_runs_end_to_end(tmp_path, monkeypatch):
  pytest.importorskip("transformers", reason="the notebook builds a tiny Hugging Face model (pip install -e .[hf])")
  monkeypatch.setenv("JAXALIGN_NOTEBOOK_QUICK", "1")
  monkeypatch.setenv("JAXALIGN_NOTEBOOK_WORK", str(tmp_path))
  monkeypatch.setenv("JAXALIGN_REPO", ROOT)
  monkeypatch.setenv("PYTHONPATH", ROOT)
  monkeypatch.delenv("JAXALIGN_HF_PATH", raising=False)
  nb = nbformat.read(os.path.join(ROOT, "experiments", "colab.ipynb"), as_version=4)
  nbclient.NotebookClient(nb, timeout=900, kernel_name="python3",
                          resources={"metadata": {"path": os.path.join(ROOT, "experiments")}}).execute()
  text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
  assert "8 devices: cpu" in text, text[:2000]
  assert "samples before preference training (SFT)" in text and "samples after DPO" in text
  assert "chat template used: True" in text
  assert os.path.exists(tmp_path / "dpo_eval.png") and os.path.getsize(tmp_path / "dpo_eval.png") > 5000
  rows = [json.loads(line) for line in open(tmp_path / "dpo" / "metrics.jsonl")]
  assert [r["step"] for r in rows if "eval/win_rate" in r] == [2, 4, 6]
  assert any(o.get("output_type") == "display_data" and "image/png" in o.get("data", {})
             for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))  # the plot is shown
