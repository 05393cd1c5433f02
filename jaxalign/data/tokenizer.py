"""SentencePiece tokenizer wrapper and a deterministic trainer.

`Tokenizer` checks the special-token ids once at load time, so callers can
rely on `eos_id` and `pad_id` being valid ids of the vocabulary.
"""

from __future__ import annotations

import io
import os
import tempfile
from typing import Iterable

import numpy as np
import sentencepiece as spm

from jaxalign.errors import UserError


class Tokenizer:
  """A loaded SentencePiece model with validated special ids.

  Attributes:
    path: the model file it was loaded from.
    vocab_size: number of pieces.
    eos_id: end-of-sequence id (always >= 0).
    bos_id: beginning-of-sequence id, or -1 when the model has none (then
      callers do not prepend it).
    pad_id: the model's pad id; when it has none, the unk id, else eos. Pad
      positions are always masked out of losses and attention, so any valid id
      works and we avoid growing the vocabulary.
  """

  def __init__(self, path: str):
    self.path = str(path)
    if not os.path.isfile(self.path):
      raise UserError(f"{self.path}: tokenizer file not found")
    sp = spm.SentencePieceProcessor()
    try:
      sp.Load(self.path)
    except (OSError, RuntimeError, ValueError) as e:
      raise UserError(f"{self.path}: cannot load SentencePiece model ({e})") from e
    self._sp = sp
    self.vocab_size: int = int(sp.GetPieceSize())
    if self.vocab_size <= 0:
      raise UserError(f"{self.path}: SentencePiece model has an empty vocabulary")
    self.eos_id: int = int(sp.eos_id())
    if not 0 <= self.eos_id < self.vocab_size:
      raise UserError(f"{self.path}: SentencePiece model has no eos token "
                      "(train it with eos_id >= 0)")
    bos = int(sp.bos_id())
    self.bos_id: int = bos if 0 <= bos < self.vocab_size else -1
    pad, unk = int(sp.pad_id()), int(sp.unk_id())
    if 0 <= pad < self.vocab_size:
      self.pad_id: int = pad
    elif 0 <= unk < self.vocab_size:
      self.pad_id = unk
    else:
      self.pad_id = self.eos_id

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without bos/eos."""
    return list(self._sp.EncodeAsIds(text))

  def decode(self, ids: Iterable[int] | np.ndarray) -> str:
    """Text of `ids` (list or array); decodes everything, stops at nothing."""
    return self._sp.DecodeIds([int(i) for i in np.asarray(ids).reshape(-1)])

  def id_to_piece(self, i: int) -> str:
    """The piece string of id `i` (for debugging and tests)."""
    return self._sp.IdToPiece(int(i))

  def __repr__(self) -> str:
    return (f"Tokenizer({self.path!r}, vocab_size={self.vocab_size}, "
            f"eos={self.eos_id}, bos={self.bos_id}, pad={self.pad_id})")


def train_sentencepiece(texts: list[str], model_prefix: str, vocab_size: int,
                        model_type: str = "word") -> str:
  """Trains a SentencePiece model on `texts`; returns `<model_prefix>.model`.

  Special ids are pad=0, unk=1, bos=2, eos=3. Training is single-threaded with
  no sampling or shuffling of the input, so the same texts give a
  byte-identical file. The proto is built in memory (so the temp paths never
  end up inside it) and written to a temp file in the target directory, then
  moved into place with `os.replace`, so concurrent readers never see a
  partial model. `vocab_size` is a soft upper bound (`hard_vocab_limit=False`).
  """
  texts = [t for t in texts if t.strip()]
  if not texts:
    raise UserError(f"{model_prefix}.model: no non-empty texts to train the tokenizer on")
  out_path = f"{model_prefix}.model"
  out_dir = os.path.dirname(os.path.abspath(out_path))
  os.makedirs(out_dir, exist_ok=True)
  buf = io.BytesIO()
  spm.SentencePieceTrainer.Train(
      sentence_iterator=iter(texts),
      model_writer=buf,
      vocab_size=int(vocab_size),
      model_type=model_type,
      hard_vocab_limit=False,
      character_coverage=1.0,
      num_threads=1,
      input_sentence_size=0,
      shuffle_input_sentence=False,
      normalization_rule_name="identity",
      pad_id=0, unk_id=1, bos_id=2, eos_id=3,
      minloglevel=2,
  )
  data = buf.getvalue()
  if not data:
    raise UserError(f"{out_path}: SentencePiece training produced no model")
  fd, tmp = tempfile.mkstemp(prefix=".tmp_sp_", suffix=".model", dir=out_dir)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.replace(tmp, out_path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise
  return out_path
