"""Time per op category of a compiled step, from an XLA profiler trace (used by `dpo.py --profile DIR`).

The CPU runtime records one trace event per executed thunk, named by its HLO instruction (`hlo_op`) and program
(`hlo_module`). Each instruction is classified from the optimised HLO text of its program:

  matmul: attention      a dot (or a fusion containing one) whose source op is inside an attention layer
  matmul: MLP            the same inside an MLP block
  matmul: log-probs      the same in the vocabulary-chunked log-prob scan (the unembedding and its gradient)
  attention other        softmax, masking, RoPE and the rest of attention
  log-probs other        log-sum-exp, gathers and the rest of the log-prob chunks
  optimizer              every op of the update program (AdamW, clipping, the parameter update)
  other                  norms, embeddings, residuals, loss arithmetic, copies

Durations are summed per category; thunks may overlap (the CPU runtime runs independent thunks concurrently), so
the shares are of the summed thunk time, not of the wall time. Control-flow thunks (`while`, `conditional`) are
left out: the thunks of their bodies are traced, and counted, themselves.
"""

from __future__ import annotations

import glob
import gzip
import json
import os
import re
import shutil

import jax

_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*[^=]*?\s([\w\-]+)\((.*)$")
_COMP = re.compile(r"^\s*%?([\w.\-]+)\s.*\{\s*$")
_OPNAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r"calls=%?([\w.\-]+)")


def _parse(text: str) -> tuple[dict, dict]:
  """`({instruction: (opcode, op_name, called computation)}, {computation: contains a dot})`."""
  instrs, has_dot, comp = {}, {}, None
  for line in text.splitlines():
    if line.rstrip().endswith("{") and "=" not in line.split("(")[0]:
      m = _COMP.match(line)
      comp = m.group(1) if m else None
      if comp:
        has_dot.setdefault(comp, False)
      continue
    m = _INSTR.match(line)
    if not m:
      continue
    name, opcode, rest = m.groups()
    if comp and opcode in ("dot", "convolution"):
      has_dot[comp] = True
    op_name = _OPNAME.search(rest)
    calls = _CALLS.search(rest)
    instrs[name] = (opcode, op_name.group(1) if op_name else "", calls.group(1) if calls else None)
  return instrs, has_dot


def classify(instr: tuple, has_dot: dict, module: str) -> str:
  opcode, op_name, calls = instr
  if opcode in ("while", "conditional", "call") or opcode.startswith(("while", "conditional")):
    return ""  # control flow: the thunks of its body are traced (and counted) themselves
  if "update" in module:
    return "optimizer"
  dot = opcode in ("dot", "convolution") or bool(calls and has_dot.get(calls))
  where = op_name.lower()
  logp = any(k in where for k in ("token_logps", "logprob", "log_softmax", "logsumexp", "chunk"))
  attn = "attn" in where or "attention" in where
  mlp = "mlp" in where
  if dot:
    return "matmul: attention" if attn else "matmul: MLP" if mlp else "matmul: log-probs" if logp else "matmul: other"
  if attn:
    return "attention other"
  if logp:
    return "log-probs other"
  return "other"


def category_times(run_once, trace_dir: str, hlo_texts: dict[str, str] | None = None) -> dict:
  """Traces one call of `run_once()` into `trace_dir`; returns `{category: {"ms": .., "share": ..}}` plus the
  ten costliest instructions. `hlo_texts`: `{hlo_module: optimised HLO text}` (default: every program the
  trace names, found through `jax.jit` compilations already cached is not possible, so pass them)."""
  shutil.rmtree(trace_dir, ignore_errors=True)
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    run_once()
  path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.trace.json.gz"), recursive=True))[-1]
  with gzip.open(path) as f:
    trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  parsed = {m: _parse(t) for m, t in (hlo_texts or {}).items()}
  totals, per_instr = {}, {}
  for e in events:
    args = e.get("args") or {}
    if e.get("ph") != "X" or "hlo_op" not in args:
      continue
    module, op = args.get("hlo_module", ""), args["hlo_op"]
    instrs, has_dot = parsed.get(module, ({}, {}))
    cat = classify(instrs.get(op, (op, "", None)), has_dot, module)
    if not cat:
      continue
    totals[cat] = totals.get(cat, 0.0) + e["dur"] / 1e3
    per_instr[(module, op, cat)] = per_instr.get((module, op, cat), 0.0) + e["dur"] / 1e3
  total = sum(totals.values()) or 1.0
  out = {k: {"ms": round(v, 3), "share": round(v / total, 4)} for k, v in sorted(totals.items(), key=lambda x: -x[1])}
  top = sorted(per_instr.items(), key=lambda x: -x[1])[:10]
  out["top_instructions"] = [{"module": m, "op": o, "category": c, "ms": round(v, 3)} for (m, o, c), v in top]
  out["summed_thunk_ms"] = round(total, 3)
  return out
