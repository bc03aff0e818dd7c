"""Paper 2 (Castin, Ablin, Peyré 2024): the Lipschitz constant of attention, measured and bounded.

- :mod:`~assay.lipschitz.maps`: the map (one head or a whole sublayer, masked or not, LayerNorm in
  front or not) built from any layer of a :class:`~assay.model.Transformer`, in float64.
- :mod:`~assay.lipschitz.jacobian`: ||J(X)||_2 by power iteration with jvp/vjp, or exactly by SVD.
- :mod:`~assay.lipschitz.lower`: lower bounds on the sup over n tokens in a set (projected ascent).
- :mod:`~assay.lipschitz.bounds`: proved upper bounds (sqrt(n), score-gap, mean-field limit) and the
  data-dependent bound at one input; :mod:`~assay.lipschitz.rigorous` proves the weight norms in arb.
- :mod:`~assay.lipschitz.sweep`: the paper's experiments, fits and figures; ``assay lipschitz``.

The maths is derived in docs/lipschitz.md.
"""

import importlib
from typing import Any

# Imported lazily, so that ``assay --help`` (which imports assay.lipschitz.commands) stays fast.
_WHERE = {
    "LipschitzResult": "api", "analyze": "api", "local_lipschitz": "api", "torch_threads": "api",
    "UpperBounds": "bounds", "local_upper_bound": "bounds", "map_constants": "bounds", "upper_bounds": "bounds",
    "NormEstimate": "jacobian", "jacobian_norm": "jacobian", "jacobian_norm_exact": "jacobian",
    "LowerBound": "lower", "lower_bound": "lower",
    "AttentionMap": "maps", "attention_inputs": "maps", "attention_map": "maps",
    "TokenSet": "sets",
}  # fmt: skip


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"assay.lipschitz.{_WHERE[name]}"), name)
    raise AttributeError(name)


__all__ = [
    "AttentionMap",
    "LipschitzResult",
    "LowerBound",
    "NormEstimate",
    "TokenSet",
    "UpperBounds",
    "analyze",
    "attention_inputs",
    "attention_map",
    "jacobian_norm",
    "jacobian_norm_exact",
    "local_lipschitz",
    "local_upper_bound",
    "lower_bound",
    "map_constants",
    "torch_threads",
    "upper_bounds",
]
