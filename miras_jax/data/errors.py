"""Exceptions raised by the data package for bad input.

Every error carries a one-line message that names the problem and the
offending path or value, so command-line tools can print it as is.

- :class:`DataError` (a ``ValueError``): base class for bad data or arguments.
- :class:`EmptyCorpusError`: a source yielded no non-empty documents.
- :class:`UnknownFormatError`: an unsupported ``--format`` / source format.
- :class:`DataFileNotFoundError` (also a ``FileNotFoundError``): a missing
    input, tokenizer model, prepared dataset or shard.
- :class:`MissingDependencyError` (an ``ImportError``): an optional package
    (``pyarrow``, ``datasets``) is needed but not installed.
"""

from __future__ import annotations


class DataError(ValueError):
  """Bad input data or arguments for a data-preparation step."""


class EmptyCorpusError(DataError):
  """The source produced no non-empty documents."""


class UnknownFormatError(DataError):
  """An unsupported source format was requested."""


class DataFileNotFoundError(FileNotFoundError, DataError):
  """A required file or directory does not exist."""


class MissingDependencyError(ImportError):
  """An optional dependency is required for the requested feature."""
