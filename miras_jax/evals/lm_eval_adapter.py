"""Let lm-evaluation-harness drive a miras-jax model (optional: ``pip install miras-jax[eval]``).

    from miras_jax.evals.lm_eval_adapter import MirasLM
    lm = MirasLM.from_checkpoint("runs/moneta_170m")          # or MirasLM(scorer)
    import lm_eval
    lm_eval.simple_evaluate(model=lm, tasks=["piqa", "lambada_openai"])

Importing :class:`MirasLM` also registers it with lm-eval as ``"miras"``, so
``lm_eval.simple_evaluate(model="miras", model_args="workdir=RUN,batch_size=8")`` works too.

The adapter is a ``TemplateLM``: lm-eval's own code tokenizes the requests
(``_encode_pair``, empty contexts) and this class only scores token ids through
the same :class:`~miras_jax.evals.scoring.Scorer` the built-in harness uses, so
both give the same numbers. ``generate_until`` (generative tasks) is greedy
decoding without a cache: correct but slow, meant for short generations.

lm-eval is imported lazily: importing this module without it installed is fine;
using :class:`MirasLM` raises an ImportError that says how to install it.
"""

from __future__ import annotations

from typing import Any

__all__ = ['MirasLM', 'lm_eval_available']  # noqa: F822 (MirasLM comes from __getattr__)


def lm_eval_available() -> bool:
  try:
    import lm_eval.api.model  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
  except ImportError:
    return False
  return True


def _build_class():
  try:
    from lm_eval.api.model import TemplateLM  # pylint: disable=import-outside-toplevel
    from lm_eval.api.registry import register_model  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
      "lm-eval is not installed: pip install 'miras-jax[eval]' (or pip install lm-eval)"
    ) from e

  class _MirasLM(TemplateLM):
    """lm-eval model backed by a :class:`~miras_jax.evals.scoring.Scorer`."""

    def __init__(
      self,
      scorer: Any = None,
      workdir: str | None = None,
      step: int | None = None,
      tokenizer: str | None = None,
      batch_size: int | str = 8,
      max_len: int | None = None,
      **kwargs: Any,
    ):
      super().__init__()
      if scorer is None:
        if workdir is None:
          raise ValueError('MirasLM needs a scorer or workdir=')
        scorer = _scorer_from_checkpoint(workdir, step, tokenizer, int(batch_size), max_len)
      self.scorer = scorer
      self.tokenizer = scorer.tokenizer

    @classmethod
    def from_checkpoint(
      cls,
      workdir: str,
      step: int | None = None,
      tokenizer: str | None = None,
      batch_size: int = 8,
      max_len: int | None = None,
    ) -> '_MirasLM':
      return cls(_scorer_from_checkpoint(workdir, step, tokenizer, batch_size, max_len))

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
      args = dict(kv.split('=', 1) for kv in arg_string.split(',') if kv)
      for k, v in (additional_config or {}).items():
        if v is not None and k in ('batch_size',):
          args[k] = v
      if 'step' in args:
        args['step'] = int(args['step'])
      if 'max_len' in args:
        args['max_len'] = int(args['max_len'])
      return cls(**args)

    @property
    def eot_token_id(self) -> int:
      return self.tokenizer.eos_id

    @property
    def prefix_token_id(self) -> int:
      return self.scorer.prefix_token_id

    @property
    def max_length(self) -> int:
      return self.scorer.max_len

    def tok_encode(
      self, string: str, add_special_tokens: bool | None = None, **kwargs
    ) -> list[int]:
      return self.tokenizer.encode(string)

    def tok_decode(self, tokens, **kwargs) -> str:
      return self.tokenizer.decode(tokens)

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
      res = self.scorer.loglikelihood_tokens([(ctx, cont) for _, ctx, cont in requests])
      for (key, _, _), r in zip(requests, res):
        self.cache_hook.add_partial('loglikelihood', key, r)
      return res

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
      texts = [req.args[0] for req in requests]
      res = self.scorer.loglikelihood_rolling(texts)
      for t, r in zip(texts, res):
        self.cache_hook.add_partial('loglikelihood_rolling', (t,), r)
      return res

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
      import numpy as np  # pylint: disable=import-outside-toplevel

      out = []
      sc = self.scorer
      for req in requests:
        context, gen_kwargs = req.args
        until = gen_kwargs.get('until', []) or []
        until = [until] if isinstance(until, str) else list(until)
        max_gen = int(gen_kwargs.get('max_gen_toks', 64))
        ids = self.tok_encode(context)
        gen: list[int] = []
        for _ in range(max_gen):
          inp = (ids + gen)[-sc.max_len :]
          width = sc._bucket(len(inp))  # pylint: disable=protected-access
          tokens = np.full((1, width), sc.pad_id, np.int32)
          tokens[0, : len(inp)] = inp
          logits = sc.apply_fn(sc.params, tokens, None, None)
          nxt = int(np.argmax(np.asarray(logits[0, len(inp) - 1])))
          if nxt == self.eot_token_id:
            break
          gen.append(nxt)
          text = self.tok_decode(gen)
          if any(u in text for u in until):
            break
        text = self.tok_decode(gen)
        for u in until:
          text = text.split(u)[0]
        out.append(text)
      return out

  try:
    register_model('miras')(_MirasLM)
  except (AssertionError, ValueError, KeyError):  # already registered
    pass
  _MirasLM.__name__ = _MirasLM.__qualname__ = 'MirasLM'
  return _MirasLM


def _scorer_from_checkpoint(
  workdir: str, step: int | None, tokenizer: str | None, batch_size: int, max_len: int | None
):
  from miras_jax.data.tokenizer import Tokenizer  # pylint: disable=import-outside-toplevel
  from miras_jax.evals import checkpoint as ckpt_lib  # pylint: disable=import-outside-toplevel
  from miras_jax.evals.run_data import find_tokenizer  # pylint: disable=import-outside-toplevel
  from miras_jax.evals.scoring import Scorer, make_apply_fn  # pylint: disable=import-outside-toplevel
  from miras_jax.models import LMConfig, build_model  # pylint: disable=import-outside-toplevel

  ckpt = ckpt_lib.resolve_checkpoint(workdir, step)
  config = ckpt_lib.load_config(ckpt)
  model_cfg = LMConfig.from_config(config['model'])  # the model section, converted once
  tok = Tokenizer(tokenizer or find_tokenizer(config, ckpt.run_dir))
  max_len = max_len or int((config.get('train') or {}).get('seq_len') or model_cfg.max_len)
  return Scorer(
    make_apply_fn(build_model(model_cfg)),
    ckpt_lib.load_params(ckpt),
    tok,
    max_len=max_len,
    batch_size=batch_size,
  )


_CLASS = None


def __getattr__(name: str):
  global _CLASS  # pylint: disable=global-statement
  if name == 'MirasLM':
    if _CLASS is None:
      _CLASS = _build_class()
    return _CLASS
  raise AttributeError(name)
