"""Writes experiments/colab.ipynb (run: python experiments/make_colab_notebook.py); tests/test_notebook.py runs it."""

import os

import nbformat as nbf
nb = nbf.v4.new_notebook()
md, code = nbf.v4.new_markdown_cell, nbf.v4.new_code_cell
cells = []
cells.append(md("""# jaxalign in a notebook: SFT → DPO → evaluate, and a Hugging Face model

This notebook drives jaxalign through its Python API on the **built-in task** (product-review prompts with a
ground-truth reward, so the effect of every method can be measured):

1. install, and a device mesh over every local device (the TPU cores on Colab; 8 forced CPU devices elsewhere),
2. supervised fine-tuning (the reference), samples before preference training,
3. DPO against that reference, evaluated on held-out prompts by the ground truth,
4. a plot of win rate and KL over training, and samples before and after,
5. a local Hugging Face model folder: its chat template and samples from it.

On Colab: *Runtime → Change runtime type → TPU* (or keep the CPU), clone the repository next to this notebook
(or upload it), and run all cells. The CI runs this notebook end to end on CPU with `JAXALIGN_NOTEBOOK_QUICK=1`
(tiny runs); without it, the runs are the README's defaults (a few minutes on 2 CPU cores)."""))
cells.append(code("""import importlib.util, os, subprocess, sys

REPO = os.environ.get("JAXALIGN_REPO") or os.path.abspath(os.path.join(os.getcwd(), "..") if os.path.basename(os.getcwd()) == "experiments" else os.getcwd())
if importlib.util.find_spec("jaxalign") is None:  # Colab: install the clone (with the extras this notebook uses)
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-e", f"{REPO}[hf,plot]"], check=True)
    sys.path.insert(0, REPO)
print("repository:", REPO)"""))
cells.append(code("""# The mesh: every local device. On a machine with no accelerator, force 8 CPU devices *before* jax starts,
# so data parallelism is real here too (a TPU runtime brings its own cores).
on_tpu = "COLAB_TPU_ADDR" in os.environ or "TPU_NAME" in os.environ or os.path.exists("/dev/accel0")
if not on_tpu and "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
import jax
from jaxalign import sharding as shd
mesh = shd.make_mesh()
print(jax.device_count(), "devices:", jax.devices()[0].platform, "| mesh", dict(mesh.shape))"""))
cells.append(code("""import json, tempfile
from jaxalign import main
from jaxalign.data import builtin

QUICK = os.environ.get("JAXALIGN_NOTEBOOK_QUICK") == "1"  # tiny runs (CI); unset: the README's defaults
VARIANT = "tiny" if QUICK else ""
WORK = os.environ.get("JAXALIGN_NOTEBOOK_WORK") or tempfile.mkdtemp(prefix="jaxalign-notebook-")

def load_config(name, variant=VARIANT):
    \"\"\"configs/<name>.py's get_config(variant): the same config the CLI runs.\"\"\"
    spec = importlib.util.spec_from_file_location(f"configs_{name}", os.path.join(REPO, "configs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)

print("runs in", WORK, "| quick" if QUICK else "")"""))
cells.append(md("## 1. Supervised fine-tuning: the reference"))
cells.append(code("""sft = load_config("sft")
sft_final = main.train(sft, f"{WORK}/sft")
print({k: round(v, 3) for k, v in sft_final.items() if k.startswith("eval/")})"""))
cells.append(code("""from jaxalign.runs import load_policy
from jaxalign.sample import sample_texts

PROMPTS = builtin.ReviewTask(0).eval_prompts()[:4]  # held-out prompts of the built-in task
def show(run_dir, title):
    policy = load_policy(run=run_dir, mesh=mesh)
    rows = sample_texts(policy, PROMPTS, n=1, max_new_tokens=24, temperature=1.0, top_k=0, top_p=1.0, seed=0,
                        prompt_len=16)
    print(f"--- {title}")
    for r in rows:
        print(f"{r['prompt']}{r['completion']}   [ground truth {builtin.reward(r['prompt'], r['completion'], r['finished']):+.2f}]")
    return rows

before = show(f"{WORK}/sft", "samples before preference training (SFT)")"""))
cells.append(md("## 2. DPO against the SFT reference"))
cells.append(code("""dpo = load_config("dpo")
with dpo.unlocked():
    dpo.init_from = f"{WORK}/sft"  # the reference and the starting policy
    if QUICK:
        dpo.eval.every = 2
dpo_final = main.train(dpo, f"{WORK}/dpo")
print(json.dumps({k: round(v, 3) for k, v in dpo_final.items() if k.startswith("eval/")}, indent=1))"""))
cells.append(md("## 3. Evaluation: win rate and KL over training, samples before and after"))
cells.append(code("""import matplotlib.pyplot as plt

rows = [json.loads(line) for line in open(f"{WORK}/dpo/metrics.jsonl")]
ev = [r for r in rows if "eval/win_rate" in r]
steps = [r["step"] for r in ev]
fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.2))
a.plot(steps, [r["eval/win_rate"] for r in ev], "o-"); a.axhline(0.5, color="gray", ls=":")
a.set(xlabel="step", ylabel="win rate vs SFT (ground truth)", ylim=(0, 1))
b.plot(steps, [r["eval/kl"] for r in ev], "o-", color="C1"); b.set(xlabel="step", ylabel="KL(policy || SFT), nats")
fig.suptitle("DPO on the built-in task"); fig.tight_layout()
fig.savefig(f"{WORK}/dpo_eval.png", dpi=100)
plt.show()
print("win rate", [round(r["eval/win_rate"], 3) for r in ev], "| KL", [round(r["eval/kl"], 2) for r in ev])"""))
cells.append(code("""after = show(f"{WORK}/dpo", "samples after DPO (same prompts, same seed)")"""))
cells.append(md("""## 4. A local Hugging Face model

Set `JAXALIGN_HF_PATH` to a folder with `config.json`, `model.safetensors` and the tokenizer files (Llama,
Mistral, Qwen2/3, GPT-2; nothing is downloaded). Without it, a random tiny Llama with a chat template is
built here with `transformers`, so the cell runs anywhere. HH-style prompts are rendered with the model's chat
template; `--config.model.hf_path=...` trains on it the same way (see the README)."""))
cells.append(code("""HF_PATH = os.environ.get("JAXALIGN_HF_PATH", "")
if not HF_PATH:
    import torch, transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    HF_PATH = f"{WORK}/tiny_llama"
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.Metaspace(), decoders.Metaspace()
    corpus = [r["prompt"] + " " + r["completion"] for r in builtin.sft_corpus(300, seed=0)] + ["Human Assistant how is it ?"] * 5
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=200, special_tokens=["<pad>", "<s>", "</s>", "<unk>",
                                                                                         "<|im_start|>", "<|im_end|>"]))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                pad_token="<pad>", unk_token="<unk>")
    fast.chat_template = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\\n{{ m['content'] }}<|im_end|>\\n{% endfor %}"
                          "{% if add_generation_prompt %}<|im_start|>assistant\\n{% endif %}")
    fast.save_pretrained(HF_PATH)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, bos_token_id=1, eos_token_id=2, pad_token_id=0)).save_pretrained(HF_PATH)

hf_policy = load_policy(hf_path=HF_PATH, mesh=mesh)
prompt = "\\n\\nHuman: how is the menu at the cafe ?\\n\\nAssistant:"
print("chat template used:", hf_policy.tok.uses_chat)
print(repr(hf_policy.tok.apply_chat_template([{"role": "user", "content": "how is the menu at the cafe ?"}], True)))
for r in sample_texts(hf_policy, [prompt], n=2, max_new_tokens=12, temperature=0.8, top_k=0, top_p=0.95, seed=0,
                      prompt_len=64):
    print(repr(r["completion"]))"""))
nb["cells"] = cells
nb["metadata"] = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                  "language_info": {"name": "python"}, "accelerator": "TPU", "colab": {"provenance": []}}
nbf.write(nb, os.path.join(os.path.dirname(os.path.abspath(__file__)), "colab.ipynb"))
print("written")
