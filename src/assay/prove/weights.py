"""The model as the prover sees it: float64 numpy arrays, what is covered, and a canonical hash.

Converting stored weights (float32 or float64) to float64 is exact, so the arrays here *are* the real
numbers the claim is about.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from assay.errors import BadInput

CANONICAL_HASH_DOC = (
    "sha256 over the state dict in sorted key order; for each key: the key in UTF-8, a NUL byte, the shape as "
    "comma-separated decimal integers, a NUL byte, then the values as little-endian float64 in C order"
)


def state_dict_sha256(model) -> str:
    """Hash of the model's weights converted to float64, independent of any file (see CANONICAL_HASH_DOC)."""
    h = hashlib.sha256()
    state = model.state_dict()
    for key in sorted(state):
        t = state[key].detach().cpu().double().contiguous().numpy()
        h.update(key.encode("utf-8") + b"\0")
        h.update(",".join(str(s) for s in t.shape).encode("ascii") + b"\0")
        h.update(np.ascontiguousarray(t, dtype="<f8").tobytes())
    return h.hexdigest()


def model_sha256(model) -> tuple[str, str]:
    """Return (hash, source): the safetensors file's sha256 when the model came from ``assay.model.load``,
    else the canonical state-dict hash; source is ``"file"`` or ``"state"``."""
    file_hash = getattr(model, "weights_sha256", None)
    if isinstance(file_hash, str) and file_hash:
        return file_hash, "file"
    return state_dict_sha256(model), "state"


def coverage_problem(cfg) -> str | None:
    """Return why the prover does not cover a model with this config, or None if it does."""
    if not cfg.causal:
        return "prover covers causal softmax models; this one is bidirectional"
    if cfg.attention != "softmax":
        return f"prover covers causal softmax models; this one uses {cfg.attention!r} attention"
    if cfg.ln_position != "pre":
        return "prover covers pre-LN models; this one is post-LN"
    if not cfg.attn_only and cfg.act_fn not in ("relu", "gelu"):
        return f"prover covers ReLU and GELU (erf) MLPs; this one uses {cfg.act_fn!r}"
    return None


@dataclass
class LayerWeights:
    """One block's weights, float64, TransformerLens shapes; ln*_w is None when the model has no LayerNorm."""

    ln1_w: np.ndarray | None
    ln1_b: np.ndarray | None
    W_Q: np.ndarray  # [h, d, e]
    b_Q: np.ndarray  # [h, e]
    W_K: np.ndarray
    b_K: np.ndarray
    W_V: np.ndarray
    b_V: np.ndarray
    W_O: np.ndarray  # [h, e, d]
    b_O: np.ndarray  # [d]
    ln2_w: np.ndarray | None = None
    ln2_b: np.ndarray | None = None
    W_in: np.ndarray | None = None  # [d, m]
    b_in: np.ndarray | None = None
    W_out: np.ndarray | None = None  # [m, d]
    b_out: np.ndarray | None = None


@dataclass
class ModelWeights:
    """Everything the prover reads from a Transformer."""

    cfg: object
    W_E: np.ndarray  # [vocab, d]
    W_pos: np.ndarray | None  # [n_ctx, d] for learned positions
    layers: list[LayerWeights]
    lnf_w: np.ndarray | None
    lnf_b: np.ndarray | None
    W_U: np.ndarray  # [d, vocab]
    b_U: np.ndarray
    eps: float = 1e-5
    extra: dict = field(default_factory=dict)

    @property
    def has_ln(self) -> bool:
        return self.cfg.normalization_type == "LN"


def _np(t) -> np.ndarray:
    a = t.detach().cpu().double().numpy().copy()
    if not np.isfinite(a).all():
        raise BadInput("model weights hold non-finite values")
    return a


def extract(model) -> ModelWeights:
    """Read a covered Transformer's weights as float64 arrays; BadInput naming what is not covered."""
    cfg = model.cfg
    problem = coverage_problem(cfg)
    if problem:
        raise BadInput(problem)
    ln = cfg.normalization_type == "LN"
    layers = []
    for blk in model.blocks:
        a = blk.attn
        lw = LayerWeights(
            ln1_w=_np(blk.ln1.w) if ln else None,
            ln1_b=_np(blk.ln1.b) if ln else None,
            W_Q=_np(a.W_Q),
            b_Q=_np(a.b_Q),
            W_K=_np(a.W_K),
            b_K=_np(a.b_K),
            W_V=_np(a.W_V),
            b_V=_np(a.b_V),
            W_O=_np(a.W_O),
            b_O=_np(a.b_O),
        )
        if not cfg.attn_only:
            lw.ln2_w = _np(blk.ln2.w) if ln else None
            lw.ln2_b = _np(blk.ln2.b) if ln else None
            lw.W_in, lw.b_in = _np(blk.mlp.W_in), _np(blk.mlp.b_in)
            lw.W_out, lw.b_out = _np(blk.mlp.W_out), _np(blk.mlp.b_out)
        layers.append(lw)
    return ModelWeights(
        cfg=cfg,
        W_E=_np(model.embed.W_E),
        W_pos=_np(model.pos_embed.W_pos) if cfg.positional_embedding_type == "standard" else None,
        layers=layers,
        lnf_w=_np(model.ln_final.w) if ln else None,
        lnf_b=_np(model.ln_final.b) if ln else None,
        W_U=_np(model.unembed.W_U),
        b_U=_np(model.unembed.b_U),
        eps=float(cfg.eps),
    )
