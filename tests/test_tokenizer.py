"""Tests for the SentencePiece wrapper and the built-in word-level tokenizer."""

from pathlib import Path

import numpy as np
import pytest

from jaxalign.data import builtin as B
from jaxalign.data.tokenizer import Tokenizer, train_sentencepiece
from jaxalign.errors import UserError

SHARED_MODEL = Path(__file__).resolve().parents[2] / "shared/data/sentencepiece/test_model.model"


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
  return B.builtin_tokenizer(str(tmp_path_factory.mktemp("tok")))


def test_special_ids(tok):
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 2, 3)
  assert tok.id_to_piece(1) == "<unk>"
  assert tok.vocab_size == B.BUILTIN_VOCAB_SIZE == 69


def test_every_grammar_word_is_one_token(tok):
  ids = set()
  for w in B.GRAMMAR_WORDS:
    enc = tok.encode(w)
    assert len(enc) == 1 and enc[0] > 3, w
    ids.add(enc[0])
  assert len(ids) == len(B.GRAMMAR_WORDS)


def test_round_trip_generated_texts(tok):
  rng = np.random.default_rng(0)
  texts = []
  for row in B.sft_corpus(250, seed=0):
    texts += [row["prompt"], row["completion"]]
  for row in B.sft_corpus(50, seed=1):
    texts.append(B.corrupt(row["prompt"], row["completion"], rng)[0])
  assert len(texts) == 550
  for t in texts:
    ids = tok.encode(t)
    assert len(ids) == len(t.split())  # word level: one token per word
    assert tok.decode(ids) == t
    assert tok.decode(np.array(ids, dtype=np.int32)) == t
  # prompt + completion tokenises as the concatenation of the parts
  p, c = B.EVAL_PROMPTS[0], "the battery is good ."
  assert tok.encode(p + " " + c) == tok.encode(p) + tok.encode(c)


def test_unknown_word_maps_to_unk(tok):
  assert tok.encode("the zebra is good .")[1] == 1


def test_training_is_byte_deterministic(tmp_path):
  texts = B.tokenizer_texts()
  a = train_sentencepiece(texts, str(tmp_path / "a"), B.BUILTIN_VOCAB_SIZE)
  b = train_sentencepiece(texts, str(tmp_path / "sub" / "b"), B.BUILTIN_VOCAB_SIZE)
  assert a == str(tmp_path / "a.model")
  assert Path(a).read_bytes() == Path(b).read_bytes()
  assert sorted(p.name for p in tmp_path.iterdir()) == ["a.model", "sub"]  # no temp left


def test_builtin_tokenizer_cache(tmp_path):
  t1 = B.builtin_tokenizer(str(tmp_path))
  path = tmp_path / B.TOKENIZER_FILE
  mtime = path.stat().st_mtime_ns
  t2 = B.builtin_tokenizer(str(tmp_path))
  assert path.stat().st_mtime_ns == mtime  # reused, not retrained
  assert t1.encode("review of the film in rome :") == t2.encode("review of the film in rome :")
  # a stale cached model that does not cover the grammar is replaced
  train_sentencepiece(["the battery is good ."], str(tmp_path / "builtin_sp"), 20)
  t3 = B.builtin_tokenizer(str(tmp_path))
  assert t3.vocab_size == B.BUILTIN_VOCAB_SIZE


def test_missing_file_raises_user_error(tmp_path):
  missing = str(tmp_path / "nope.model")
  with pytest.raises(UserError, match="nope.model: tokenizer file not found"):
    Tokenizer(missing)


def test_garbage_file_raises_user_error(tmp_path):
  bad = tmp_path / "bad.model"
  bad.write_bytes(b"this is not a sentencepiece model")
  with pytest.raises(UserError, match="bad.model"):
    Tokenizer(str(bad))


def test_model_without_eos_raises_user_error(tmp_path):
  import sentencepiece as spm
  prefix = str(tmp_path / "noeos")
  spm.SentencePieceTrainer.Train(sentence_iterator=iter(["a b c", "b c d"]), model_prefix=prefix,
                                 vocab_size=8, model_type="word", hard_vocab_limit=False,
                                 eos_id=-1, minloglevel=2)
  with pytest.raises(UserError, match="noeos.model: .*no eos"):
    Tokenizer(prefix + ".model")


def test_pad_falls_back_to_unk(tmp_path):
  import sentencepiece as spm
  prefix = str(tmp_path / "nopad")
  spm.SentencePieceTrainer.Train(sentence_iterator=iter(["a b c", "b c d"]), model_prefix=prefix,
                                 vocab_size=8, model_type="word", hard_vocab_limit=False,
                                 unk_id=0, bos_id=-1, eos_id=1, pad_id=-1, minloglevel=2)
  t = Tokenizer(prefix + ".model")
  assert (t.pad_id, t.eos_id, t.bos_id) == (0, 1, -1)


def test_shared_test_model():
  if not SHARED_MODEL.exists():
    pytest.skip(f"{SHARED_MODEL} not present")
  t = Tokenizer(str(SHARED_MODEL))
  assert 0 <= t.eos_id < t.vocab_size and 0 <= t.pad_id < t.vocab_size
  assert t.vocab_size == 1000
  text = "I saw a girl with a telescope."
  assert t.decode(t.encode(text)) == text
