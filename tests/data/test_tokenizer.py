"""Tokenizer wrapper: the Llama-2 SentencePiece model loads, encodes to known ids and round-trips."""

import numpy as np
import pytest

from miras_jax.data.errors import DataError, DataFileNotFoundError
from miras_jax.data.tokenizer import Tokenizer, file_sha256

LLAMA2_SHA256 = '9e556afd44213b6bd1be2b850ebbbd98f5481437a8021afaf58ee7fb1818d347'


def test_llama2_metadata(llama_tokenizer, llama_model_path):
  tok = llama_tokenizer
  assert tok.vocab_size == 32000
  assert (tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  assert tok.pad_id == 0 and tok.pad == 0  # Llama-2 has no pad piece: falls back to 0
  assert tok.sha256 == LLAMA2_SHA256 == file_sha256(llama_model_path)
  assert tok.path == str(llama_model_path.resolve())


def test_llama2_known_ids(llama_tokenizer):
  ids = llama_tokenizer.encode('Hello world, this is a test.')
  assert ids == [15043, 3186, 29892, 445, 338, 263, 1243, 29889]
  assert [llama_tokenizer.id_to_piece(i) for i in ids[:2]] == ['▁Hello', '▁world']
  assert llama_tokenizer.encode('Hi', add_bos=True, add_eos=True)[0] == 1
  assert llama_tokenizer.encode('Hi', add_bos=True, add_eos=True)[-1] == 2


def test_round_trip(llama_tokenizer, tinyshakespeare_path):
  texts = [tinyshakespeare_path.read_text()[:5000], 'naïve café — ✓ 12345', 'tab\tand  two spaces']
  for text in texts:
    ids = llama_tokenizer.encode(text)
    assert all(0 <= i < llama_tokenizer.vocab_size for i in ids)
    assert llama_tokenizer.decode(ids) == text
    assert llama_tokenizer.decode(np.asarray(ids, np.int32)) == text
  batch = llama_tokenizer.encode_batch(texts, add_eos=True)
  assert batch == [llama_tokenizer.encode(t) + [2] for t in texts]
  assert llama_tokenizer.encode_batch([]) == []


def test_missing_model_is_a_clear_error(tmp_path):
  missing = tmp_path / 'nope.model'
  with pytest.raises(DataFileNotFoundError, match='tokenizer model not found: .*nope.model'):
    Tokenizer(missing)
  with pytest.raises(FileNotFoundError):  # also catchable as the builtin
    Tokenizer(missing)


def test_invalid_model_is_a_clear_error(tmp_path):
  bad = tmp_path / 'bad.model'
  bad.write_bytes(b'not a sentencepiece model')
  with pytest.raises(DataError, match='not a valid SentencePiece model'):
    Tokenizer(bad)


def test_encode_rejects_non_str(llama_tokenizer):
  with pytest.raises(TypeError, match='expects a str'):
    llama_tokenizer.encode(b'bytes')
