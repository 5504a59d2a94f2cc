"""Training a tiny SentencePiece tokenizer on tinyshakespeare (fast: well under a second each)."""

import pytest

from miras_jax.data import train_tokenizer as tt
from miras_jax.data.errors import DataError, EmptyCorpusError
from miras_jax.data.tokenizer import Tokenizer


def test_vocab_300_bpe(tmp_path, tinyshakespeare_path):
  # 300 pieces cannot hold 256 byte-fallback pieces plus tinyshakespeare's characters,
  # so the toy vocabulary is trained without byte fallback.
  rc = tt.main(
    [
      f'--input={tinyshakespeare_path}',
      f'--model_prefix={tmp_path}/tok',
      '--vocab_size=300',
      '--model_type=bpe',
      '--no-byte_fallback',
    ]
  )
  assert rc == 0
  tok = Tokenizer(tmp_path / 'tok.model')
  assert tok.vocab_size == 300
  assert (tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  text = tinyshakespeare_path.read_text()[:4000]
  ids = tok.encode(text)
  assert len(ids) < len(text)  # it learnt merges
  assert tok.decode(ids) == text  # identity normalisation, whitespace kept


def test_vocab_too_small_for_byte_fallback_is_a_clear_error(tmp_path, tinyshakespeare_path, capsys):
  with pytest.raises(DataError, match='byte_fallback'):
    tt.train_tokenizer(str(tinyshakespeare_path), tmp_path / 'tok', 300)
  rc = tt.main(
    [f'--input={tinyshakespeare_path}', f'--model_prefix={tmp_path}/tok', '--vocab_size=300']
  )
  assert rc == 2
  err = capsys.readouterr().err
  assert 'error' in err and 'vocab_size' in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize('model_type', ['bpe', 'unigram'])
def test_byte_fallback_round_trips_unseen_characters(tmp_path, tinyshakespeare_path, model_type):
  lines = tinyshakespeare_path.read_text().splitlines()[:6000]
  (tmp_path / 'part.txt').write_text('\n'.join(lines))
  path = tt.train_tokenizer(str(tmp_path / 'part.txt'), tmp_path / 'tok', 400, model_type)
  tok = Tokenizer(path)
  assert tok.vocab_size == 400
  text = 'Naïve café — ✓ 日本 12345'
  ids = tok.encode(text)
  assert tok.unk_id not in ids
  assert tok.decode(ids) == text


def test_inputs_dirs_and_encodings(tmp_path, tinyshakespeare_path):
  corpus = tmp_path / 'corpus'
  (corpus / 'sub').mkdir(parents=True)
  text = tinyshakespeare_path.read_text()[:200_000]
  (corpus / 'a.txt').write_text(text[:100_000])
  # cp1252 curly quotes (0x93/0x94) and CRLF line ends
  (corpus / 'sub' / 'b.txt').write_bytes(
    text[100_000:].replace('\n', '\r\n').encode() + b'\r\n\x93quoted\x94\r\n'
  )
  (corpus / 'README').write_text('not taken: no .txt suffix')
  lines = list(tt.iter_training_lines(str(corpus)))
  assert '\u201cquoted\u201d' in lines
  assert not any('\r' in l for l in lines)
  assert 'not taken: no .txt suffix' not in lines
  path = tt.train_tokenizer(f'{corpus}', tmp_path / 'm' / 'tok', 320)
  assert Tokenizer(path).vocab_size == 320


def test_empty_input_is_a_clear_error(tmp_path):
  (tmp_path / 'empty.txt').write_text('\n\n   \n')
  with pytest.raises(EmptyCorpusError, match='no text'):
    tt.train_tokenizer(str(tmp_path), tmp_path / 'tok', 300)


def test_unknown_model_type(tmp_path):
  with pytest.raises(DataError, match="unknown model_type 'word2vec'"):
    tt.train_tokenizer(str(tmp_path), tmp_path / 'tok', 300, 'word2vec')
