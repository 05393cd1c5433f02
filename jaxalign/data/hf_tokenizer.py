"""The tokenizer of a Hugging Face model folder, with the interface of `jaxalign.data.tokenizer.Tokenizer`.

Reads `tokenizer.json` with the `tokenizers` library, else `tokenizer.model` with
sentencepiece, else GPT-2 style `vocab.json` + `merges.txt` (byte-level BPE). Special
ids come from the folder's configs, first found wins:
  eos, pad:  tokenizer_config.json `*_token` -> special_tokens_map.json -> generation_config.json
             `*_token_id` -> config.json `*_token_id`; pad falls back to unk, then eos (pad
             positions are always masked, so any valid id works).
  bos:       the id the Hugging Face tokenizer itself prepends when encoding with special tokens
             (tokenizer_config.json `add_bos_token` when given, else what tokenizer.json's
             post-processor does; sentencepiece folders default to adding it), else -1. The data
             pipeline prepends `bos_id` to prompts when it is >= 0, exactly as `transformers` does.

Chat templates (`chat_template` in tokenizer_config.json, or chat_template.jinja) are
rendered with jinja2 under the semantics of `transformers`' `apply_chat_template`:
a sandboxed environment with trim_blocks/lstrip_blocks, `messages`,
`add_generation_prompt`, the special tokens as strings (`bos_token`, `eos_token`, ...),
and the helpers `raise_exception`, `strftime_now`, `tojson`.

With `chat_template="auto"` (the default; `data.chat_template`) and a template present,
`encode` renders prompts that are conversations in the Anthropic HH-RLHF transcript form
("\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nAssistant:") as chat messages with a generation
prompt; other text (completions, plain prompts) is encoded as it is.
"""

from __future__ import annotations

import datetime
import json
import os
import re
from typing import Iterable

import numpy as np

from jaxalign.errors import UserError

# Files copied when a folder's tokenizer is exported with a model.
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
                   "vocab.json", "merges.txt", "added_tokens.json", "chat_template.jinja", "chat_template.json",
                   "generation_config.json")
CHAT_MODES = ("auto", "on", "off")


def read_json(path: str, required: bool = False) -> dict:
  if not os.path.isfile(path):
    if required:
      raise UserError(f"{path}: file not found")
    return {}
  try:
    with open(path, encoding="utf-8") as f:
      out = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
    raise UserError(f"{path}: cannot read JSON ({e})") from None
  if not isinstance(out, dict):
    raise UserError(f"{path}: expected a JSON object")
  return out


def _token_str(value) -> str | None:
  """A special token as written in tokenizer configs: a string or an AddedToken dict."""
  if isinstance(value, dict):
    value = value.get("content")
  return value if isinstance(value, str) else None


def has_tokenizer(folder: str) -> bool:
  return any(os.path.isfile(os.path.join(folder, f)) for f in ("tokenizer.json", "tokenizer.model", "vocab.json"))


# ---------------------------------------------------------------- chat templates


_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_CUE = "\n\nAssistant:"


def hh_to_messages(text: str) -> list[dict] | None:
  """An HH-RLHF style prompt as chat messages, or None when `text` is not one.

  The text must start with a "Human:" turn (after optional newlines) and end with the empty
  "\\n\\nAssistant:" cue, which becomes the generation prompt rather than a message.
  Turn contents are stripped of surrounding whitespace.
  """
  body = text.lstrip("\n").rstrip()
  if not body.startswith("Human:") or not body.endswith(_CUE):
    return None
  body = body[:-len(_CUE)]
  marks = list(_HH_TURN.finditer(body))
  messages = []
  for i, m in enumerate(marks):
    end = marks[i + 1].start() if i + 1 < len(marks) else len(body)
    messages.append({"role": "user" if m.group(1) == "Human" else "assistant",
                     "content": body[m.end():end].strip()})
  return messages if messages[-1]["role"] == "user" else None


def render_chat_template(template: str, messages: list[dict], add_generation_prompt: bool = True,
                         where: str = "chat_template", **special_tokens) -> str:
  """`template` rendered like `transformers`' `apply_chat_template(..., tokenize=False)`."""
  try:
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment
  except ImportError:
    raise UserError(f"{where}: rendering a chat template needs jinja2 (pip install jinja2)") from None

  class Generation(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` (assistant-mask markers): renders the body."""
    tags = {"generation"}

    def parse(self, parser):
      lineno = next(parser.stream).lineno
      body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
      return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
      return caller()

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

  env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                      extensions=[Generation, jinja2.ext.loopcontrols])
  env.filters["tojson"] = tojson
  env.globals["raise_exception"] = raise_exception
  env.globals["strftime_now"] = lambda fmt: datetime.datetime.now().strftime(fmt)
  try:
    return env.from_string(template).render(messages=messages, add_generation_prompt=add_generation_prompt,
                                            tools=None, documents=None, **special_tokens)
  except jinja2.exceptions.TemplateError as e:
    raise UserError(f"{where}: {type(e).__name__}: {e}") from None


# ---------------------------------------------------------------- the tokenizer


class HFTokenizer:
  """A Hugging Face folder's tokenizer: `encode`, `decode`, `vocab_size`, `eos_id`, `bos_id`, `pad_id`.

  Attributes beyond `Tokenizer`'s: `chat_template` (str or None), `special_tokens`
  (bos/eos/pad/unk token strings, for templates), `uses_chat` (whether `encode` renders
  HH-style conversations with the template).
  """

  def __init__(self, folder: str, chat_template: str = "auto"):
    self.path = folder
    if not os.path.isdir(folder):
      raise UserError(f"{folder}: model folder not found")
    if chat_template not in CHAT_MODES:
      raise UserError(f"config data.chat_template: {chat_template!r} is not one of {', '.join(CHAT_MODES)}")
    j = lambda name: os.path.join(folder, name)
    self._tcfg = read_json(j("tokenizer_config.json"))
    self._stm = read_json(j("special_tokens_map.json"))
    self._gen = read_json(j("generation_config.json"))
    self._mcfg = read_json(j("config.json"))
    self._tok = self._sp = None
    if os.path.isfile(j("tokenizer.json")):
      self._tok = self._load_tokenizers(j("tokenizer.json"))
      self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
    elif os.path.isfile(j("tokenizer.model")):
      from jaxalign.data.tokenizer import Tokenizer
      self._sp = Tokenizer(j("tokenizer.model"))
      self.vocab_size = self._sp.vocab_size
    elif os.path.isfile(j("vocab.json")) and os.path.isfile(j("merges.txt")):
      tokenizers = self._import_tokenizers(j("vocab.json"))
      bpe = tokenizers.models.BPE.from_file(j("vocab.json"), j("merges.txt"))
      self._tok = tokenizers.Tokenizer(bpe)
      self._tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
      self._tok.decoder = tokenizers.decoders.ByteLevel()
      for token in (self._tcfg.get("added_tokens_decoder") or {}).values():
        if _token_str(token) is not None:
          self._tok.add_special_tokens([_token_str(token)])
      self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))
    else:
      raise UserError(f"{folder}: no tokenizer.json, tokenizer.model or vocab.json + merges.txt")

    self.special_tokens = {f"{k}_token": self._special_str(k) for k in ("bos", "eos", "pad", "unk")}
    eos = self._special_id("eos")
    if eos is None and self._sp is not None:
      eos = self._sp.eos_id
    if eos is None:
      raise UserError(f"{folder}: no eos token (tokenizer_config.json eos_token or generation_config.json "
                      "eos_token_id)")
    self.eos_id: int = eos
    self.bos_id: int = self._bos()
    pad = self._special_id("pad")
    if pad is None:
      pad = self._special_id("unk")
    if pad is None and self._sp is not None:
      pad = self._sp.pad_id
    self.pad_id: int = self.eos_id if pad is None else pad
    self.special_tokens["eos_token"] = self.special_tokens["eos_token"] or self.id_to_piece(self.eos_id)
    if self.bos_id >= 0:
      self.special_tokens["bos_token"] = self.special_tokens["bos_token"] or self.id_to_piece(self.bos_id)

    self.chat_template = self._read_chat_template()
    if chat_template == "on" and self.chat_template is None:
      raise UserError(f"config data.chat_template: 'on' but {folder} has no chat template "
                      "(tokenizer_config.json chat_template or chat_template.jinja)")
    self.uses_chat = chat_template != "off" and self.chat_template is not None

  # -- loading helpers

  @staticmethod
  def _import_tokenizers(path: str):
    try:
      import tokenizers
      import tokenizers.decoders
      import tokenizers.models
      import tokenizers.pre_tokenizers
    except ImportError:
      raise UserError(f"{path}: reading it needs the `tokenizers` package (pip install tokenizers)") from None
    return tokenizers

  def _load_tokenizers(self, path: str):
    tokenizers = self._import_tokenizers(path)
    try:
      return tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # the Rust side raises plain Exceptions
      raise UserError(f"{path}: cannot load ({e})") from None

  def _piece_id(self, piece: str) -> int | None:
    if self._tok is not None:
      i = self._tok.token_to_id(piece)
      return None if i is None else int(i)
    i = int(self._sp._sp.PieceToId(piece))
    return i if self._sp.id_to_piece(i) == piece else None

  def _special_str(self, key: str) -> str | None:
    for src in (self._tcfg, self._stm):
      s = _token_str(src.get(f"{key}_token"))
      if s is not None:
        return s
    return None

  def _special_id(self, key: str) -> int | None:
    for name, src in (("tokenizer_config.json", self._tcfg), ("special_tokens_map.json", self._stm)):
      s = _token_str(src.get(f"{key}_token"))
      if s is not None:
        i = self._piece_id(s)
        if i is None:
          raise UserError(f"{os.path.join(self.path, name)}: {key}_token {s!r} is not in the vocabulary")
        return i
    for src in (self._gen, self._mcfg):
      v = src.get(f"{key}_token_id")
      if isinstance(v, list):
        v = v[0] if v else None
      if isinstance(v, int) and 0 <= v < self.vocab_size:
        return v
    return None

  def _bos(self) -> int:
    bos = self._special_id("bos")
    if self._sp is not None and bos is None:
      bos = self._sp.bos_id if self._sp.bos_id >= 0 else None
    if bos is None:
      return -1
    explicit = self._tcfg.get("add_bos_token")
    if isinstance(explicit, bool):
      return bos if explicit else -1
    if self._sp is not None:
      return bos  # sentencepiece (Llama-style) tokenizers add bos unless told otherwise
    with_special = self._tok.encode("a", add_special_tokens=True).ids
    plain = self._tok.encode("a", add_special_tokens=False).ids
    return bos if len(with_special) > len(plain) and with_special[0] == bos else -1

  def _read_chat_template(self) -> str | None:
    t = self._tcfg.get("chat_template")
    if isinstance(t, list):  # named templates: the "default" one
      named = {d.get("name"): d.get("template") for d in t if isinstance(d, dict)}
      t = named.get("default")
    if isinstance(t, str) and t:
      return t
    for name in ("chat_template.jinja",):
      path = os.path.join(self.path, name)
      if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
          return f.read()
    t = read_json(os.path.join(self.path, "chat_template.json")).get("chat_template")
    return t if isinstance(t, str) and t else None

  # -- the Tokenizer interface

  def encode_plain(self, text: str) -> list[int]:
    """Token ids of `text` without special tokens (special-token strings in it are recognised)."""
    if self._tok is not None:
      return list(self._tok.encode(text, add_special_tokens=False).ids)
    return self._sp.encode(text)

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without bos/eos; HH-style conversations go through the chat template."""
    if self.uses_chat:
      messages = hh_to_messages(text)
      if messages is not None:
        ids = self.encode_plain(self.apply_chat_template(messages, add_generation_prompt=True))
        # The pipeline prepends bos itself; templates that write it must not get it twice.
        return ids[1:] if ids and self.bos_id >= 0 and ids[0] == self.bos_id else ids
    return self.encode_plain(text)

  def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """The rendered conversation text (as `transformers`' `apply_chat_template(tokenize=False)`)."""
    if self.chat_template is None:
      raise UserError(f"{self.path}: the tokenizer has no chat template")
    specials = {k: v for k, v in self.special_tokens.items() if v is not None}
    return render_chat_template(self.chat_template, messages, add_generation_prompt,
                                where=f"{self.path}: chat_template", **specials)

  def decode(self, ids: Iterable[int] | np.ndarray) -> str:
    """Text of `ids`; decodes everything, special tokens included."""
    ids = [int(i) for i in np.asarray(ids).reshape(-1)]
    if self._tok is not None:
      return self._tok.decode(ids, skip_special_tokens=False)
    return self._sp.decode(ids)

  def id_to_piece(self, i: int) -> str:
    if self._tok is not None:
      return self._tok.id_to_token(int(i))
    return self._sp.id_to_piece(i)

  def __repr__(self) -> str:
    return (f"HFTokenizer({self.path!r}, vocab_size={self.vocab_size}, eos={self.eos_id}, bos={self.bos_id}, "
            f"pad={self.pad_id}, chat={self.uses_chat})")
