"""Memory learning algorithms (the optimiser of the inner loop).

  GD            A_t = α_t A_{t−1} − η_t g_t
  GD+momentum   S_t = μ_t S_{t−1} − η_t g_t ;  A_t = α_t A_{t−1} + S_t     (Titans eq. 10)
where g_t is the gradient of the attentional bias and α_t the retention gate. Titans
writes the retention as (1 − α_t); here α_t is always the *keep* factor, and the
momentum decay μ_t is Titans' η_t (their θ_t is our η_t).
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class GD:
  name: str = 'gd'
  momentum: bool = False


@dataclasses.dataclass(frozen=True)
class Momentum:
  name: str = 'momentum'
  momentum: bool = True
