"""An exact interpreter for :class:`assay.model.Transformer` with saturated or hard attention.

Two number systems (see ``docs/saturation.md``):

- **exact** (``precision=None``): every weight is read as the rational it is (a float is a dyadic
  rational, ``Fraction(float)`` is exact) and every operation is done in :class:`fractions.Fraction`.
  The set of maximal attention scores is decided by exact equality. Only rational operations are
  allowed, so LayerNorm (a square root), GELU (erf / tanh) and RoPE (cos / sin) are refused: the
  exact mode covers models without LayerNorm, with ReLU MLPs (or attention only) and with positions
  ``none`` or ``standard`` (stored rationals). The score scale ``1 / sqrt(d_head)`` is a positive
  constant, so it cannot change the set of maxima; the exact mode leaves it out (it is irrational
  for most ``d_head``) and reports scores without it.
- **p-bit** (``precision=p``): every weight and the result of every arithmetic operation is rounded
  to ``p`` significant bits (:func:`~assay.saturation.numbers.round_to_bits`, unbounded exponent),
  sums accumulate left to right, square roots are correctly rounded. GELU, tanh, cos and sin are
  evaluated in float64 and then rounded to p bits, so for models with those the p-bit mode is
  faithful only for ``p <= 50``.

Saturated attention at query i: with causal masking the keys are ``0..i``, M the set of keys whose
score equals the maximum, and the output is the sum of their values (left to right) divided by |M|.
Hard attention returns the value of the leftmost key in M.

Two ways to run: :meth:`Interpreter.run` computes a whole sequence layer by layer (any model, causal
or not, O(n^2) score evaluations); :class:`Stream` (causal models only) adds one position at a time,
keeps every layer's keys and values, and caches, per distinct query vector, the running maximum, tie
count and value sum, so a model whose queries take few distinct values (every construction in
:mod:`assay.saturation.constructions`) runs in O(n). ``Stream.pop`` undoes the last position, which
lets :func:`all_prefix_decisions` walk the trie of all strings up to a length.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from assay.errors import BadInput
from assay.saturation.numbers import round_to_bits, sqrt_to_bits

Num = Fraction | int
Vec = tuple  # a tuple of Num
Col = list[tuple[int, Fraction]]  # one column of a sparse matrix: (row, weight), zero weights left out


def _frac(x: float) -> Fraction:
    return Fraction(x)


def _sparse_cols(mat: Sequence[Sequence[float]], R: Callable[[Fraction], Fraction] | None) -> list[Col]:
    """Return the columns of a dense [rows, cols] matrix (lists of floats) as sparse exact columns."""
    n_cols = len(mat[0]) if len(mat) else 0
    cols: list[Col] = [[] for _ in range(n_cols)]
    for r, row in enumerate(mat):
        for c, w in enumerate(row):
            if w != 0.0:
                f = _frac(w)
                cols[c].append((r, R(f) if R else f))
    return cols


def _vec(values: Sequence[float], R: Callable[[Fraction], Fraction] | None) -> tuple:
    return tuple((R(_frac(v)) if R else _frac(v)) if v != 0.0 else 0 for v in values)


@dataclass
class _LN:
    w: tuple
    b: tuple


@dataclass
class _Layer:
    ln1: _LN | None
    ln2: _LN | None
    qkv: list[Col]  # x -> [q(all heads) | k(all heads) | v(all heads)], each n_heads * d_head
    qkv_b: tuple
    o: list[Col]  # z(all heads) -> d_model
    o_b: tuple
    mlp_in: list[Col] | None
    mlp_in_b: tuple | None
    mlp_out: list[Col] | None
    mlp_out_b: tuple | None


@dataclass
class Step:
    """What one position produced: the residual stream after the embedding and after every layer
    (``resid[0]`` .. ``resid[n_layers]``), the logits, and per layer and head the number of keys in the
    set of maxima (``ties[l][h]``)."""

    resid: list[Vec]
    logits: Vec
    ties: list[list[int]]


class Interpreter:
    """Exact (``precision=None``) or p-bit evaluation of a saturated / hard-attention Transformer.

    ``attention`` overrides the model's own mode ("saturated" or "hard"); a softmax model must be
    given one, or the constructor raises :class:`BadInput` (softmax has no exact rational semantics).
    ``pos_fn`` (optional) replaces the positional embedding by a function position -> vector of
    rationals; it is how the non-size-preserving counter-construction gives positions beyond what a
    float64 ``W_pos`` can hold.
    """

    def __init__(
        self,
        model: Any,
        precision: int | None = None,
        attention: str | None = None,
        pos_fn: Callable[[int], Sequence[Num]] | None = None,
    ) -> None:
        cfg = model.cfg
        self.cfg = cfg
        self.mode = attention or cfg.attention
        if self.mode not in ("saturated", "hard"):
            raise BadInput(
                f"an exact run needs saturated or hard attention; this model has {self.mode!r} attention "
                "(softmax has no exact rational semantics; ask for its c -> infinity limit explicitly with "
                "--attention saturated / attention='saturated')"
            )
        if precision is not None and (not isinstance(precision, int) or precision < 2):
            raise BadInput(f"precision must be an integer number of bits >= 2, got {precision!r}")
        self.p = precision
        if precision is None:
            why = []
            if cfg.normalization_type == "LN":
                why.append("LayerNorm (a square root)")
            if not cfg.attn_only and cfg.act_fn != "relu":
                why.append(f"{cfg.act_fn} (not rational)")
            if cfg.positional_embedding_type == "rotary":
                why.append("rotary positions (cos / sin)")
            if why:
                raise BadInput(
                    "the exact interpreter needs rational operations; this model has " + ", ".join(why)
                    + ": only the p-bit mode (Interpreter(model, precision=P)) covers it"
                )
        self.R: Callable[[Fraction], Fraction] | None = (
            None if precision is None else (lambda x, p=precision: round_to_bits(x, p))
        )
        self.pos_fn = pos_fn
        self._load(model)

    # -----------------------------------------------------------------------------------------
    # Weights.

    def _load(self, model: Any) -> None:
        import torch

        cfg, R = self.cfg, self.R
        sd = {k: v.detach().double().cpu() for k, v in model.state_dict().items()}
        h, d, e = cfg.n_heads, cfg.d_model, cfg.d_head
        self.W_E = [_vec(row, R) for row in sd["embed.W_E"].tolist()]
        self._W_pos = sd.get("pos_embed.W_pos") if cfg.positional_embedding_type == "standard" else None
        self._pos_cache: dict[int, tuple] = {}
        self.layers: list[_Layer] = []

        def ln(prefix: str) -> _LN | None:
            if cfg.normalization_type != "LN":
                return None
            return _LN(_vec(sd[prefix + ".w"].tolist(), R), _vec(sd[prefix + ".b"].tolist(), R))

        for layer in range(cfg.n_layers):
            p = f"blocks.{layer}."
            qkv = [sd[p + f"attn.W_{m}"].permute(1, 0, 2).reshape(d, h * e) for m in "QKV"]
            qkv_mat = torch.cat(qkv, dim=1).tolist()
            qkv_b = torch.cat([sd[p + f"attn.b_{m}"].reshape(h * e) for m in "QKV"]).tolist()
            mlp = not cfg.attn_only
            self.layers.append(
                _Layer(
                    ln1=ln(p + "ln1"),
                    ln2=ln(p + "ln2") if mlp else None,
                    qkv=_sparse_cols(qkv_mat, R),
                    qkv_b=_vec(qkv_b, R),
                    o=_sparse_cols(sd[p + "attn.W_O"].reshape(h * e, d).tolist(), R),
                    o_b=_vec(sd[p + "attn.b_O"].tolist(), R),
                    mlp_in=_sparse_cols(sd[p + "mlp.W_in"].tolist(), R) if mlp else None,
                    mlp_in_b=_vec(sd[p + "mlp.b_in"].tolist(), R) if mlp else None,
                    mlp_out=_sparse_cols(sd[p + "mlp.W_out"].tolist(), R) if mlp else None,
                    mlp_out_b=_vec(sd[p + "mlp.b_out"].tolist(), R) if mlp else None,
                )
            )
        self.ln_embed = ln("ln_embed") if cfg.ln_position == "post" else None
        self.ln_final = ln("ln_final") if (cfg.normalization_type == "LN" and cfg.ln_position == "pre") else None
        self.W_U = _sparse_cols(sd["unembed.W_U"].tolist(), R)
        self.b_U = _vec(sd["unembed.b_U"].tolist(), R)
        if self.p is not None:
            self.eps = round_to_bits(Fraction(cfg.eps), self.p)
            self.inv_scale = sqrt_to_bits(cfg.d_head, self.p)  # scores are divided by this
            if cfg.positional_embedding_type == "rotary":
                self._rot_base = (cfg.rotary_dim, cfg.rotary_base)

    # -----------------------------------------------------------------------------------------
    # Arithmetic: every helper rounds after each operation in p-bit mode, never in exact mode.

    def matvec(self, x: Sequence[Num], cols: list[Col], bias: Sequence[Num] | None) -> Vec:
        """Return ``x @ W + bias`` for sparse columns W (sums left to right, then the bias)."""
        R = self.R
        out = []
        if R is None:
            for c, col in enumerate(cols):
                s: Num = 0
                for r, w in col:
                    xr = x[r]
                    if xr:
                        s += xr * w
                if bias is not None:
                    s += bias[c]
                out.append(s)
            return tuple(out)
        for c, col in enumerate(cols):
            s = Fraction(0)
            for r, w in col:
                xr = x[r]
                if xr:
                    s = R(s + R(xr * w))
            if bias is not None and bias[c]:
                s = R(s + bias[c])
            out.append(s)
        return tuple(out)

    def add(self, a: Sequence[Num], b: Sequence[Num]) -> Vec:
        """Return the elementwise sum a + b."""
        R = self.R
        if R is None:
            return tuple(x + y for x, y in zip(a, b, strict=True))
        return tuple(R(x + y) for x, y in zip(a, b, strict=True))

    def dot(self, a: Sequence[Num], b: Sequence[Num]) -> Num:
        """Return sum_i a_i b_i (left to right)."""
        R = self.R
        s: Num = 0
        if R is None:
            for x, y in zip(a, b, strict=True):
                if x and y:
                    s += x * y
            return s
        for x, y in zip(a, b, strict=True):
            if x and y:
                s = R(s + R(x * y))
        return s

    def layer_norm(self, x: Sequence[Num], ln: _LN) -> Vec:
        """Return LayerNorm(x) in p-bit arithmetic (mean, centred, variance, sqrt(var + eps), scale)."""
        R = self.R
        assert R is not None
        d = len(x)
        s: Num = 0
        for v in x:
            s = R(s + v)
        mean = R(Fraction(s) / d)
        xc = [R(v - mean) for v in x]
        ss: Num = 0
        for v in xc:
            ss = R(ss + R(v * v))
        var = R(Fraction(ss) / d)
        scale = sqrt_to_bits(R(var + self.eps), self.p)  # type: ignore[arg-type]
        return tuple(R(R(R(v / scale) * w) + b) for v, w, b in zip(xc, ln.w, ln.b, strict=True))

    def activation(self, x: Sequence[Num]) -> Vec:
        """Return the MLP activation of x: exact ReLU, or GELU evaluated in float64 and rounded (p-bit)."""
        act = self.cfg.act_fn
        if act == "relu":
            return tuple(v if v > 0 else 0 for v in x)
        R = self.R
        assert R is not None
        out = []
        for v in x:
            f = float(v)
            if act == "gelu":
                g = 0.5 * f * (1.0 + math.erf(f / math.sqrt(2.0)))
            else:
                g = 0.5 * f * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (f + 0.044715 * f**3)))
            out.append(R(Fraction(g)))
        return tuple(out)

    def position(self, i: int) -> tuple | None:
        """Return the positional embedding of position i as rationals (None without positions)."""
        if self.pos_fn is not None:
            return tuple(self.pos_fn(i))
        if self._W_pos is None:
            return None
        v = self._pos_cache.get(i)
        if v is None:
            if i >= self._W_pos.shape[0]:
                raise BadInput(f"position {i} beyond n_ctx={self._W_pos.shape[0]}")
            v = _vec(self._W_pos[i].tolist(), self.R)
            if len(self._pos_cache) < 4096:
                self._pos_cache[i] = v
        return v

    def rotate(self, x: Sequence[Num], i: int) -> Vec:
        """Apply RoPE at position i to one head's q or k (p-bit: cos / sin from float64, rounded)."""
        R = self.R
        assert R is not None
        rd, base = self._rot_base
        half = rd // 2
        cos, sin = [], []
        for k in range(rd):
            ang = i * (1.0 / (base ** (2 * (k % half) / rd)))
            cos.append(R(Fraction(math.cos(ang))))
            sin.append(R(Fraction(math.sin(ang))))
        out = list(x)
        for k in range(rd):
            rot = -x[k + half] if k < half else x[k - half]
            out[k] = R(R(x[k] * cos[k]) + R(rot * sin[k]))
        return tuple(out)

    def score(self, q: Sequence[Num], k: Sequence[Num]) -> Num:
        """Return the attention score q.k (exact: unscaled; p-bit: divided by sqrt(d_head), rounded)."""
        s = self.dot(q, k)
        if self.R is None:
            return s
        return self.R(Fraction(s) / self.inv_scale)

    # -----------------------------------------------------------------------------------------
    # The pieces of the forward pass, per position.

    def embed(self, token: int, i: int) -> Vec:
        """Return the residual stream entering layer 0 at position i."""
        x = self.W_E[token]
        pos = self.position(i)
        if pos is not None:
            x = self.add(x, pos)
        if self.ln_embed is not None:
            x = self.layer_norm(x, self.ln_embed)
        return x

    def qkv(self, layer: int, x: Vec, i: int) -> tuple[list[Vec], list[Vec], list[Vec]]:
        """Return per-head q, k, v at position i for the residual x entering ``layer``."""
        L, cfg = self.layers[layer], self.cfg
        a = x
        if cfg.ln_position == "pre" and L.ln1 is not None:
            a = self.layer_norm(x, L.ln1)
        flat = self.matvec(a, L.qkv, L.qkv_b)
        h, e = cfg.n_heads, cfg.d_head
        he = h * e
        qs = [flat[j * e:(j + 1) * e] for j in range(h)]
        ks = [flat[he + j * e:he + (j + 1) * e] for j in range(h)]
        vs = [flat[2 * he + j * e:2 * he + (j + 1) * e] for j in range(h)]
        if cfg.positional_embedding_type == "rotary":
            qs = [self.rotate(q, i) for q in qs]
            ks = [self.rotate(k, i) for k in ks]
        return qs, ks, vs

    def mlp(self, L: _Layer, x: Vec) -> Vec:
        """Return the MLP's output for input x."""
        pre = self.matvec(x, L.mlp_in, L.mlp_in_b)  # type: ignore[arg-type]
        return self.matvec(self.activation(pre), L.mlp_out, L.mlp_out_b)  # type: ignore[arg-type]

    def finish_block(self, layer: int, x: Vec, zs: list[Vec]) -> Vec:
        """Return the residual stream leaving ``layer`` given its input x and the heads' outputs zs."""
        L, cfg = self.layers[layer], self.cfg
        z = tuple(v for zh in zs for v in zh)
        attn_out = self.matvec(z, L.o, L.o_b)
        if cfg.ln_position == "post":
            mid = self.layer_norm(self.add(x, attn_out), L.ln1)  # type: ignore[arg-type]
            if cfg.attn_only:
                return mid
            return self.layer_norm(self.add(mid, self.mlp(L, mid)), L.ln2)  # type: ignore[arg-type]
        if cfg.attn_only:
            return self.add(x, attn_out)
        if cfg.parallel_attn_mlp:
            m_in = self.layer_norm(x, L.ln2) if L.ln2 is not None else x
            return self.add(self.add(x, attn_out), self.mlp(L, m_in))
        mid = self.add(x, attn_out)
        m_in = self.layer_norm(mid, L.ln2) if L.ln2 is not None else mid
        return self.add(mid, self.mlp(L, m_in))

    def unembed(self, x: Vec) -> Vec:
        """Return the logits for the final residual stream x."""
        if self.ln_final is not None:
            x = self.layer_norm(x, self.ln_final)
        return self.matvec(x, self.W_U, self.b_U)

    def aggregate(self, q: Vec, keys: Sequence[Vec], values: Sequence[Vec]) -> tuple[Vec, int]:
        """Return (attention output, |M|) of query q over keys / values in position order.

        Saturated: the mean of the values in M; hard: the value of the leftmost key in M.
        """
        R = self.R
        best: Num | None = None
        total: list[Num] = []
        count = 0
        for k, v in zip(keys, values, strict=True):
            s = self.score(q, k)
            if best is None or s > best:
                best, total, count = s, list(v), 1
            elif s == best:
                count += 1
                if self.mode == "saturated":
                    total = [a + b for a, b in zip(total, v, strict=True)] if R is None else [
                        R(a + b) for a, b in zip(total, v, strict=True)
                    ]
        return (tuple(total) if self.mode == "hard" else self._average(total, count)), count

    def _average(self, total: Sequence[Num], count: int) -> Vec:
        if count == 1:
            return tuple(total)
        if self.R is None:
            return tuple(Fraction(t) / count for t in total)
        return tuple(self.R(Fraction(t) / count) for t in total)

    # -----------------------------------------------------------------------------------------

    def run(self, tokens: Sequence[int]) -> list[Step]:
        """Return one :class:`Step` per position for a whole sequence, computed layer by layer."""
        cfg = self.cfg
        tokens = [int(t) for t in tokens]
        if not tokens:
            raise BadInput("empty token sequence")
        for t in tokens:
            if not 0 <= t < cfg.d_vocab:
                raise BadInput(f"token id {t} out of range 0..{cfg.d_vocab - 1}")
        n = len(tokens)
        xs = [self.embed(t, i) for i, t in enumerate(tokens)]
        resid = [[x] for x in xs]
        ties: list[list[list[int]]] = [[] for _ in range(n)]
        for layer in range(cfg.n_layers):
            qkvs = [self.qkv(layer, x, i) for i, x in enumerate(xs)]
            new = []
            for i in range(n):
                stop = i + 1 if cfg.causal else n
                zs, tie = [], []
                for h in range(cfg.n_heads):
                    z, c = self.aggregate(qkvs[i][0][h], [qkvs[j][1][h] for j in range(stop)],
                                          [qkvs[j][2][h] for j in range(stop)])
                    zs.append(z)
                    tie.append(c)
                ties[i].append(tie)
                new.append(self.finish_block(layer, xs[i], zs))
            xs = new
            for i in range(n):
                resid[i].append(xs[i])
        return [Step(resid[i], self.unembed(xs[i]), ties[i]) for i in range(n)]

    def stream(self, max_caches: int = 64) -> Stream:
        """Return a :class:`Stream` (causal models only) for position-by-position evaluation."""
        return Stream(self, max_caches=max_caches)


class Stream:
    """Causal evaluation one position at a time, with exact per-query caches and undo.

    Memory: every layer's keys and values are kept (identical vectors are stored once), plus one
    running (max score, tie count, value sum, first value) per distinct query per head, at most
    ``max_caches`` per head; queries beyond that are answered by scanning the stored keys.
    """

    def __init__(self, interp: Interpreter, max_caches: int = 64) -> None:
        if not interp.cfg.causal:
            raise BadInput("streaming evaluation needs a causal model; use Interpreter.run")
        self.it = interp
        self.max_caches = max_caches
        L, H = interp.cfg.n_layers, interp.cfg.n_heads
        self.keys: list[list[list[Vec]]] = [[[] for _ in range(H)] for _ in range(L)]
        self.values: list[list[list[Vec]]] = [[[] for _ in range(H)] for _ in range(L)]
        self.caches: list[list[dict[Vec, tuple]]] = [[{} for _ in range(H)] for _ in range(L)]
        self._undo: list[list[tuple[dict, Vec, tuple | None]]] = []
        self._intern: dict[Vec, Vec] = {}
        self.tokens: list[int] = []

    def __len__(self) -> int:
        return len(self.tokens)

    def _interned(self, v: Vec) -> Vec:
        if len(self._intern) > 200_000:
            return v
        return self._intern.setdefault(v, v)

    def _update(self, entry: tuple | None, q: Vec, k: Vec, v: Vec) -> tuple:
        it = self.it
        s = it.score(q, k)
        if entry is None or s > entry[0]:
            return (s, 1, v, v)
        if s == entry[0]:
            if it.mode == "hard":
                return (entry[0], entry[1] + 1, entry[2], entry[3])
            R = it.R
            total = tuple(a + b for a, b in zip(entry[2], v, strict=True)) if R is None else tuple(
                R(a + b) for a, b in zip(entry[2], v, strict=True))
            return (entry[0], entry[1] + 1, total, entry[3])
        return entry

    def push(self, token: int) -> Step:
        """Add one token at the next position; return that position's :class:`Step`."""
        it, cfg = self.it, self.it.cfg
        token = int(token)
        if not 0 <= token < cfg.d_vocab:
            raise BadInput(f"token id {token} out of range 0..{cfg.d_vocab - 1}")
        i = len(self.tokens)
        undo: list[tuple[dict, Vec, tuple | None]] = []
        x = it.embed(token, i)
        resid = [x]
        ties = []
        for layer in range(cfg.n_layers):
            qs, ks, vs = it.qkv(layer, x, i)
            zs, tie = [], []
            for h in range(cfg.n_heads):
                k, v = self._interned(ks[h]), self._interned(vs[h])
                self.keys[layer][h].append(k)
                self.values[layer][h].append(v)
                cache = self.caches[layer][h]
                for q, entry in cache.items():
                    new = self._update(entry, q, k, v)
                    if new is not entry:
                        undo.append((cache, q, entry))
                        cache[q] = new
                q = qs[h]
                entry = cache.get(q)
                if entry is None:
                    for kj, vj in zip(self.keys[layer][h], self.values[layer][h], strict=True):
                        entry = self._update(entry, q, kj, vj)
                    if len(cache) < self.max_caches:
                        undo.append((cache, q, None))
                        cache[q] = entry
                assert entry is not None
                tie.append(entry[1])
                zs.append(entry[3] if it.mode == "hard" else it._average(entry[2], entry[1]))
            ties.append(tie)
            x = it.finish_block(layer, x, zs)
            resid.append(x)
        self._undo.append(undo)
        self.tokens.append(token)
        return Step(resid, it.unembed(x), ties)

    def pop(self) -> None:
        """Undo the last :meth:`push`."""
        if not self.tokens:
            raise IndexError("pop from an empty stream")
        for cache, q, old in reversed(self._undo.pop()):
            if old is None:
                del cache[q]
            else:
                cache[q] = old
        for layer in range(self.it.cfg.n_layers):
            for h in range(self.it.cfg.n_heads):
                self.keys[layer][h].pop()
                self.values[layer][h].pop()
        self.tokens.pop()


def all_prefix_steps(interp: Interpreter, alphabet: Sequence[int], max_len: int) -> Iterator[tuple[tuple, Step]]:
    """Yield (tokens, step at the last position) for every nonempty string over ``alphabet`` of length
    <= max_len, by a depth-first walk of the trie (each prefix is computed once)."""
    stream = interp.stream()
    path: list[int] = []

    def walk() -> Iterator[tuple[tuple, Step]]:
        for a in alphabet:
            step = stream.push(a)
            path.append(a)
            yield tuple(path), step
            if len(path) < max_len:
                yield from walk()
            stream.pop()
            path.pop()

    yield from walk()
