"""The bound computation: for one length L of the free string (and, when the last token is free, one
choice of it), a certified lower bound on logit[c] - logit[k] at the last position, for every k != c.

Positions of s + t + q split into

- *anchors*: the prefix s. In a causal model they never see t, so their residual stream, keys and
  values are exact at every layer (computed once, in float64 with error bounds, :meth:`Engine._prefix`).
- *free* positions: each holds any allowed token. At layer 0 every variant is exact; at later layers
  each (position, token) variant is an :class:`AffineSet` (what the earlier free tokens can do to it).
  These do not depend on L, so they are computed once per position and reused.
- the *tail*: the suffix q (or, when q is empty, the case-split last token), recomputed per case.

At every layer, a query's attention output is bounded by the convex-combination rule of
:func:`rules.head_output_set`: the exact positions (anchors, and any tail position that is still a
point) give o_A; everything else can only pull the output towards the convex hull of its values, by
at most lambda_max, which a long prefix squashes. The last position's final layer is kept as an
AffineSet (no collapsing), pushed through LN, the MLP relaxation, the final LN and the unembedding
differences, where the support function of each term is evaluated exactly for the competitors that
need it.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np

from assay.prove import rules, slopes
from assay.prove.affine import EXACT_REL, AffineSet
from assay.prove.fp import U, col_norms, gamma, sum_bounds, up
from assay.prove.weights import ModelWeights


def _tidy(X: AffineSet) -> AffineSet:
    """Collapse a set whose every coordinate is known to rounding size into an exact point."""
    if not X.terms:
        return X
    lo, hi = X.coord_bounds()
    if float((hi - lo).max()) <= EXACT_REL * (1.0 + float(np.abs(X.center).max())):
        C = X.collapse()
        C.r_cap = None
        return C
    return X


def _finite_set(X: AffineSet) -> bool:
    """Every number of the set is finite."""
    arrs = [X.center, X.box] + [a for t in X.terms for a in (t.M, t.V, t.vlo, t.vhi) if a is not None]
    return all(bool(np.isfinite(a).all()) for a in arrs)


@dataclass
class SlopeCase:
    """What the slope bound (slopes.py) of one case shares across its competitors: the last MLP, a bound
    of |x| over the final residual X, the sigma range of the centred set and the tangent plane of sigma
    at its box midpoint (None if it could not be verified)."""

    rec: slopes.LastMLP
    xabs: np.ndarray
    sig: tuple[float, float]
    tangent: tuple[np.ndarray, float] | None

    @staticmethod
    def of(X: AffineSet, Y: AffineSet, sig: tuple[float, float], eps: float) -> SlopeCase:
        lo, hi = Y.coord_bounds()
        return SlopeCase(X.last_mlp, X.abs_bound(), sig, slopes.tangent(0.5 * (lo + hi), eps))

    def chord(self) -> np.ndarray:
        """DeepZ's slopes of the last MLP."""
        return rules.relax_activation(self.rec.lo, self.rec.hi, "relu")[0]

    def evidence_slopes(self, ev: dict) -> tuple[np.ndarray, np.ndarray]:
        """The slopes (the chord's where the record names none) and the shift mask of an evidence record."""
        s = self.chord()
        shift = np.zeros(len(s), dtype=bool)
        for n, v in ev["slopes"]:
            s[n] = v
        shift[ev["shift"]] = True
        return s, shift


@dataclass
class PosKV:
    """Keys (rotated) and values of one non-anchor position at one layer, per head, for each variant."""

    K: np.ndarray  # [h, nvar, k]
    Kbox: np.ndarray
    V: np.ndarray
    Vbox: np.ndarray
    exact: bool  # one variant known up to rounding: attended to as an anchor
    rot_pos: int | None = None  # keys stored unrotated: score with the query rotated back by this position
    share: object = None  # positions with equal `share` hold the same value rows (deduplicated vertices)


@dataclass
class CaseResult:
    """Bounds for one case: length L and (when q is empty and L >= 1) the last token."""

    L: int
    last: int | None
    margins: np.ndarray  # lower bounds of logit[c] - logit[k], k over all tokens (inf at c)
    refined: list[int]
    lambdas: list[float]  # final layer, last position, per head
    alpha: list[dict] = field(default_factory=list)  # per-competitor slopes (evidence, see Engine.margins)
    norm_dirs: dict | None = None  # method /6: {"ln2", "final": unit direction} used (evidence, Engine.case)
    margin: float = field(init=False)
    worst: int = field(init=False)

    def __post_init__(self) -> None:
        # A NaN bound (inf - inf somewhere upstream) is no bound: it must never be skipped by min().
        self.margins = np.where(np.isnan(self.margins), -np.inf, self.margins)
        self.worst = int(np.argmin(self.margins))
        self.margin = float(self.margins[self.worst])


@dataclass
class Options:
    """Knobs of the bound; recorded in the certificate so that the checker follows the same recipe."""

    n_refine: int = 8  # always evaluate the exact support for this many worst competitors
    max_refine: int = 32  # at most this many non-positive competitors get exact evaluations per case
    max_rounds: int | None = None  # rounds refining competitors at or below the minimum (None: until none left)
    # Per-competitor ReLU slopes and the tangent bound (slopes.py) for at most this many competitors of
    # a case the bound above does not prove (0: off; ReLU models only).
    max_alpha: int = 128
    alpha_below: float = 0.0  # ... when the case's least margin is at or below this (1e9: every case)
    alpha_floor: float = -50.0  # ... and above this (a case this far below 0 is not worth the search)
    # A competitor whose searched bound stays below this ends the search: the case cannot be proven (its
    # margin is at most that bound), so further searches would only refine how negative it is reported.
    alpha_stop: float = -1.0

    def to_dict(self) -> dict:
        return {"n_refine": self.n_refine, "max_refine": self.max_refine, "max_rounds": self.max_rounds,
                "max_alpha": self.max_alpha, "alpha_below": self.alpha_below, "alpha_floor": self.alpha_floor,
                "alpha_stop": self.alpha_stop}


NORM_DIRS = True  # method /6's second pass (Engine.case); off, the engine derives method /5's bounds
GAMMA = True  # method /7's weight of sigma on the tangent path (Engine._best_alpha); off, method /6's bounds
RUNS = 32  # method /8: free positions merge into at most this many runs in attention terms (8: method /7's)


class Engine:
    """Bounds for one claim (model, prefix, suffix, allowed) at any length 0..n_free."""

    def __init__(self, W: ModelWeights, prefix, suffix, allowed: np.ndarray, options: Options | None = None):
        self.W = W
        self.cfg = cfg = W.cfg
        self.prefix = np.asarray(prefix, dtype=np.int64)
        self.suffix = np.asarray(suffix, dtype=np.int64)
        self.allowed = np.asarray(allowed, dtype=np.int64)
        self.opts = options or Options()
        self.n_fix = len(self.prefix)
        self.h, self.k = cfg.n_heads, cfg.d_head
        self.scale = 1.0 / math.sqrt(cfg.d_head)
        self.rope = cfg.positional_embedding_type == "rotary"
        self.act = cfg.act_fn
        self._free_sets: dict[tuple[int, int], list[AffineSet]] = {}
        self._free_kv: dict[tuple[int, int], PosKV] = {}
        self._unembed_cache: dict[int, tuple] = {}  # _unembed_differences per candidate token
        self.use_slopes = True  # the per-competitor slopes of margins() (api.run_cases turns them off)
        self.use_ratios = True  # per-position caps and score ratios of attention terms (likewise)
        self.runs = RUNS  # runs of free positions in attention terms (rules.head_output_set)
        self.use_norm_dirs = NORM_DIRS  # method /6: a second pass with norm directions in failing cases (likewise)
        self.use_gamma = GAMMA  # method /7: the tangent path's weight of sigma searched (Engine._best_alpha)
        self._dirs: dict | None = None  # during that pass: the directions found so far ({} to search)
        self._prefix()

    # ------------------------------------------------------------------ exact rows (anchors, variants)
    def _embed(self, tokens: np.ndarray, positions: np.ndarray):
        x = self.W.W_E[tokens]
        if self.W.W_pos is not None:
            x = x + self.W.W_pos[positions]
            return x, up(U * np.abs(x), 1)
        return x.copy(), np.zeros_like(x)

    def _rot(self, X, Xbox, positions):
        """Rotate [h, n, k] rows at positions (n,) when the model uses RoPE."""
        if not self.rope:
            return X, Xbox
        cos, sin, cerr = rules.rope_cos_sin(positions, self.cfg.rotary_dim, self.cfg.rotary_base)
        return rules.rotate(X, Xbox, cos, sin, cerr)

    def _qkv_rows(self, layer: int, x, xerr, positions, which=("Q", "K", "V")):
        """Per head [h, n, k] projections of exact rows; Q and K rotated."""
        lw = self.W.layers[layer]
        xn, xnerr = rules.ln_points(x, xerr, lw.ln1_w, lw.ln1_b, self.W.eps)
        out = {}
        for name in which:
            Wm, bm = getattr(lw, f"W_{name}"), getattr(lw, f"b_{name}")
            P, E = zip(*(rules.ball_affine(xn, xnerr, Wm[h], bm[h]) for h in range(self.h)), strict=True)
            P, E = np.stack(P), np.stack(E)
            if name in ("Q", "K"):
                P, E = self._rot(P, E, positions)
            out[name] = (P, E)
        return out

    def _mlp_rows(self, layer: int, x, xerr):
        lw = self.W.layers[layer]
        xn, xnerr = rules.ln_points(x, xerr, lw.ln2_w, lw.ln2_b, self.W.eps)
        p, perr = rules.ball_affine(xn, xnerr, lw.W_in, lw.b_in)
        a, aerr = rules.act_points(p, perr, self.act)
        return rules.ball_affine(a, aerr, lw.W_out, lw.b_out)

    def _prefix(self) -> None:
        """Exact forward pass of the prefix: residuals, keys and values at every layer."""
        n = self.n_fix
        pos = np.arange(n)
        x, xerr = self._embed(self.prefix, pos)
        self.anchor_resid = []  # per layer: input residual rows (x, err)
        self.anchor_kv = []  # per layer: dict Q, K, V -> ([h, n, k], err)
        for layer in range(self.cfg.n_layers):
            self.anchor_resid.append((x, xerr))
            qkv = self._qkv_rows(layer, x, xerr, pos)
            self.anchor_kv.append(qkv)
            if layer == self.cfg.n_layers - 1:
                break
            lw = self.W.layers[layer]
            (Q, Qe), (K, Ke), (V, Ve) = qkv["Q"], qkv["K"], qkv["V"]
            att = np.zeros_like(x)
            atterr = np.zeros_like(x)
            for h in range(self.h):
                S, Srad = rules.score_rows(Q[h], Qe[h], K[h], Ke[h], self.scale)
                o, obox = rules.causal_average_rows(S, Srad, V[h], Ve[h])
                y, ye = rules.ball_affine(o, obox, lw.W_O[h], None)
                att, atterr = att + y, up(atterr + ye + U * np.abs(att + y), 3)
            att = att + lw.b_O
            atterr = up(atterr + U * np.abs(att), 2)
            mid = x + att
            miderr = up(xerr + atterr + U * np.abs(mid), 3)
            if self.cfg.attn_only:
                x, xerr = mid, miderr
            else:
                src, srcerr = (x, xerr) if self.cfg.parallel_attn_mlp else (mid, miderr)
                m, merr = self._mlp_rows(layer, src, srcerr)
                x = mid + m
                xerr = up(miderr + merr + U * np.abs(x), 3)

    # ------------------------------------------------------------------ sets
    def _proj_sets(self, layer: int, X: AffineSet, position: int, names=("Q", "K", "V")):
        """Boxes [h, 1, k] around the projections (Q, K, V) of every x in X; Q and K rotated."""
        lw = self.W.layers[layer]
        Xn = rules.ln_set(X, lw.ln1_w, lw.ln1_b, self.W.eps)
        out = {}
        for name in names:
            Wm, bm = getattr(lw, f"W_{name}"), getattr(lw, f"b_{name}")
            C, B = [], []
            for h in range(self.h):
                lo, hi = Xn.affine(Wm[h], bm[h]).coord_bounds()
                mid = 0.5 * (lo + hi)
                C.append(mid)
                B.append(up(np.maximum(hi - mid, mid - lo), 2))
            C, B = np.stack(C)[:, None, :], np.stack(B)[:, None, :]
            if name in ("Q", "K"):
                C, B = self._rot(C, B, np.array([position]))
            out[name] = (C, B)
        return out

    def _kv_of_sets(self, layer: int, sets: list[AffineSet], position: int) -> PosKV:
        """Keys and values of a non-anchor position given its possible input sets (one per variant)."""
        if all(s.is_exact() for s in sets):
            x = np.stack([s.center for s in sets])
            xerr = np.stack([s.box for s in sets])
            kv = self._qkv_rows(layer, x, xerr, np.full(len(sets), position), which=("K", "V"))
            (K, Ke), (V, Ve) = kv["K"], kv["V"]
            return PosKV(K, Ke, V, Ve, exact=len(sets) == 1)
        parts = [self._proj_sets(layer, s, position, ("K", "V")) for s in sets]
        K = np.concatenate([p["K"][0] for p in parts], axis=1)
        Kb = np.concatenate([p["K"][1] for p in parts], axis=1)
        V = np.concatenate([p["V"][0] for p in parts], axis=1)
        Vb = np.concatenate([p["V"][1] for p in parts], axis=1)
        return PosKV(K, Kb, V, Vb, exact=False)

    def free_sets(self, i: int, layer: int) -> list[AffineSet]:
        """Input sets at `layer` of free position n_fix + i, one per allowed token."""
        key = (i, layer)
        if key not in self._free_sets:
            pos = self.n_fix + i
            if layer == 0:
                x, xerr = self._embed(self.allowed, np.full(len(self.allowed), pos))
                sets = [AffineSet.point(x[j], xerr[j]) for j in range(len(self.allowed))]
            else:
                prev = self.free_sets(i, layer - 1)
                others = [self.free_kv(j, layer - 1) for j in range(i)]
                own = self.free_kv(i, layer - 1)
                OK, OKb = own.K, own.Kbox
                if own.rot_pos is not None:
                    # Shared layer-0 keys are stored unrotated: this position's own key is R_pos k.
                    OK, OKb = self._rot(OK, OKb, np.full(OK.shape[1], own.rot_pos))
                sets = []
                for v, X in enumerate(prev):
                    self_kv = PosKV(OK[:, v : v + 1], OKb[:, v : v + 1], own.V[:, v : v + 1],
                                    own.Vbox[:, v : v + 1], exact=X.is_exact())
                    out, _ = self._layer_set(layer - 1, X, pos, others + [self_kv], final=False)
                    sets.append(out)
            self._free_sets[key] = sets
        return self._free_sets[key]

    def free_kv(self, i: int, layer: int) -> PosKV:
        key = (i, layer)
        if key not in self._free_kv:
            if layer == 0 and self.W.W_pos is None and len(self.allowed) > 1:
                kv = self._free_kv0(i)
            else:
                kv = self._kv_of_sets(layer, self.free_sets(i, layer), self.n_fix + i)
                kv.exact = False if len(self.allowed) > 1 else kv.exact
            self._free_kv[key] = kv
        return self._free_kv[key]

    def _free_kv0(self, i: int) -> PosKV:
        """Layer-0 keys/values of a free position when nothing but RoPE depends on the position: the
        unrotated keys and the values of every allowed token are computed once and shared; scores use
        (R_p q) . (R_i k) = (R_{-i} R_p q) . k."""
        if not hasattr(self, "_base0"):
            x, xerr = self._embed(self.allowed, np.zeros(len(self.allowed), dtype=np.int64))
            lw = self.W.layers[0]
            xn, xnerr = rules.ln_points(x, xerr, lw.ln1_w, lw.ln1_b, self.W.eps)
            base = {}
            for name in ("K", "V"):
                Wm, bm = getattr(lw, f"W_{name}"), getattr(lw, f"b_{name}")
                P, E = zip(*(rules.ball_affine(xn, xnerr, Wm[h], bm[h]) for h in range(self.h)), strict=True)
                base[name] = (np.stack(P), np.stack(E))
            self._base0 = base
        (K, Ke), (V, Ve) = self._base0["K"], self._base0["V"]
        return PosKV(K, Ke, V, Ve, exact=False, rot_pos=(self.n_fix + i) if self.rope else None, share="layer0")

    # ------------------------------------------------------------------ one layer at one position
    def _attention(self, layer: int, q, qbox, position: int, others: list[PosKV], n_anchor: int):
        """Set of the attention output (in d_model, bias included) at a query with box (q, qbox) [h, k].

        Anchors are the first n_anchor prefix positions; `others` the non-anchor positions seen.
        """
        lw = self.W.layers[layer]
        K, Ke = self.anchor_kv[layer]["K"]
        V, Ve = self.anchor_kv[layer]["V"]
        total = None
        lams = []
        exact = [o for o in others if o.exact]
        rest = [o for o in others if not o.exact]
        for h in range(self.h):
            KA = np.concatenate([K[h, :n_anchor]] + [o.K[h] for o in exact])
            KAb = np.concatenate([Ke[h, :n_anchor]] + [o.Kbox[h] for o in exact])
            VA = np.concatenate([V[h, :n_anchor]] + [o.V[h] for o in exact])
            VAb = np.concatenate([Ve[h, :n_anchor]] + [o.Vbox[h] for o in exact])
            s, srad = rules.score_bounds(q[h], qbox[h], KA, KAb, self.scale)
            o, obox, m, wa_lo = rules.anchor_average(s, srad, VA, VAb)
            wa_hi = rules.anchor_mass_hi(s, srad, m) if self.use_ratios else None
            groups = []  # (values, their boxes, per position the upper and the lower score bounds)
            for r in rest:
                if r.share is None:
                    rs, rrad = rules.score_bounds(q[h], qbox[h], r.K[h], r.Kbox[h], self.scale)
                    groups.append((r.V[h], r.Vbox[h], [np.nextafter(rs + rrad, np.inf)],
                                   [np.nextafter(rs - rrad, -np.inf)]))
            for key in dict.fromkeys(r.share for r in rest if r.share is not None):
                # Positions sharing (unrotated) keys and values: the value rows are vertices once; with
                # RoPE the query is rotated back by each position, (R_p q).(R_i k) = (R_{-i} R_p q).k.
                shared = [r for r in rest if r.share == key]
                r0 = shared[0]
                if r0.rot_pos is not None:
                    rp = np.array([r.rot_pos for r in shared])
                    cos, sin, cerr = rules.rope_cos_sin(-rp, self.cfg.rotary_dim, self.cfg.rotary_base)
                    Qr, Qrb = rules.rotate(np.broadcast_to(q[h], (len(rp), self.k)),
                                           np.broadcast_to(qbox[h], (len(rp), self.k)), cos, sin, cerr)
                    S, Srad = rules.score_rows(Qr, Qrb, r0.K[h], r0.Kbox[h], self.scale)
                    his, los = list(np.nextafter(S + Srad, np.inf)), list(np.nextafter(S - Srad, -np.inf))
                else:
                    rs, rrad = rules.score_bounds(q[h], qbox[h], r0.K[h], r0.Kbox[h], self.scale)
                    his = [np.nextafter(rs + rrad, np.inf)] * len(shared)
                    los = [np.nextafter(rs - rrad, -np.inf)] * len(shared)
                groups.append((r0.V[h], r0.Vbox[h], his, los))
            S, lam = rules.head_output_set(o, obox, m, wa_lo, groups, lw.W_O[h], wa_hi, self.use_ratios,
                                            runs=self.runs)
            lams.append(lam)
            total = S if total is None else total.add(S)
        return total.shift(lw.b_O), lams

    def _layer_set(self, layer: int, X: AffineSet, position: int, others: list[PosKV], final: bool,
                   n_anchor: int | None = None):
        """Set of the residual after `layer` at a non-anchor position with input set X."""
        if X.is_exact():
            qkv = self._qkv_rows(layer, X.center[None, :], X.box[None, :], np.array([position]), which=("Q",))
            q, qbox = qkv["Q"][0][:, 0, :], qkv["Q"][1][:, 0, :]
        else:
            C, B = self._proj_sets(layer, X, position, ("Q",))["Q"]
            q, qbox = C[:, 0, :], B[:, 0, :]
        attn, lams = self._attention(layer, q, qbox, position, others, self.n_fix if n_anchor is None else n_anchor)
        out = self._finish(layer, X, attn, keep=final)
        return (out if final else _tidy(out)), lams

    # ------------------------------------------------------------------ cases
    def final_set(self, L: int, last: int | None) -> tuple[AffineSet, list[float]]:
        """Set of the final (normalised) residual at the last position, for length L (and last token)."""
        nl = self.cfg.n_layers
        if len(self.suffix):
            tail = list(self.suffix)
            n_free_pos = L
        elif L >= 1:
            tail = [int(last)]
            n_free_pos = L - 1
        else:
            tail = []
            n_free_pos = 0
        if not tail:
            # L = 0 and no suffix: the last position is the last anchor.
            p = self.n_fix - 1
            Xs = [AffineSet.point(self.anchor_resid[nl - 1][0][p], self.anchor_resid[nl - 1][1][p])]
            layer = nl - 1
            qkv = self.anchor_kv[layer]["Q"]
            q, qbox = qkv[0][:, p, :], qkv[1][:, p, :]
            attn, lams = self._attention(layer, q, qbox, p, [], self.n_fix)
            out = self._finish(layer, Xs[0], attn, keep=True)
            return out, lams
        positions = [self.n_fix + n_free_pos + j for j in range(len(tail))]
        x, xerr = self._embed(np.array(tail), np.array(positions))
        X = [AffineSet.point(x[j], xerr[j]) for j in range(len(tail))]
        lams: list[float] = []
        for layer in range(nl):
            free = [self.free_kv(i, layer) for i in range(n_free_pos)]
            tail_kv = [self._kv_of_sets(layer, [X[j]], positions[j]) for j in range(len(tail))]
            for j in range(len(tail)):
                if layer < nl - 1 or j == len(tail) - 1:
                    final = layer == nl - 1
                    out, lams = self._layer_set(layer, X[j], positions[j], free + tail_kv[: j + 1], final=final)
                    X[j] = out
        return X[-1], lams

    def _finish(self, layer: int, X: AffineSet, attn: AffineSet, keep: bool = False) -> AffineSet:
        """The residual after the layer's MLP; ``keep``: remember the MLP's pieces on the result
        (``last_mlp``, for the per-competitor slopes of :meth:`margins`; ReLU only)."""
        lw = self.W.layers[layer]
        mid = X.add(attn)
        if self.cfg.attn_only:
            return mid
        src = X if self.cfg.parallel_attn_mlp else mid
        direction = self._direction("ln2", src) if keep and lw.ln2_w is not None else None
        xn, expansion = rules.ln_taylor(src, lw.ln2_w, lw.ln2_b, self.W.eps, direction)
        P, lo, hi = rules.preact_set(xn, lw.W_in, lw.b_in, expansion)
        out = mid.add(rules.mlp_from_preacts(P, lo, hi, lw.W_out, lw.b_out, self.act))
        if keep and self.act == "relu" and self.opts.max_alpha > 0:
            out.last_mlp = slopes.LastMLP(mid, P, lo, hi, lw.W_out, lw.b_out)
        return out

    def _direction(self, site: str, X: AffineSet) -> np.ndarray | None:
        """Method /6, during the second pass of :meth:`case` only: the norm direction of the centred set
        of X at ``site`` ("ln2": the last MLP's LayerNorm at the last position; "final": the final
        LayerNorm), given or found by :func:`slopes.min_norm_direction` (and recorded)."""
        if self._dirs is None:
            return None
        if site not in self._dirs:
            self._dirs[site] = slopes.min_norm_direction(X.center_coords())
        return self._dirs[site]

    def margins(self, X: AffineSet, c: int, refine: list[int] | None = None,
                alpha: list[dict] | None = None) -> tuple[np.ndarray, list[int], list[dict]]:
        """Lower bounds of logit[c] - logit[k] for every k (inf at k = c), X the final residual's set
        (before the final LayerNorm), and the refined competitors the least margin needs (their cheap
        bound is at or below it).

        Two bounds, the better taken per k: the Taylor set of LN_final(X) against the unembedding
        difference, and the quotient bound a.y / sigma(y) >= (a.y)_min / sigma_{hi or lo} on the centred
        set. With ``refine=None``: the ``n_refine`` lowest cheap bounds and up to ``max_refine`` non-positive
        ones first, then rounds of every unrefined k whose cheap bound is at or below the current least
        margin, until none is left (the least margin is then the refine-all one) or a refined k is <= 0.
        """
        W = self.W
        A, Aerr, bd, bderr, Aw, Awerr, bb, bberr = self._unembed_differences(c)
        if W.lnf_w is None:
            paths = [(X, A, Aerr, bd, bderr, None)]
        else:
            direction = self._direction("final", X)
            Z = rules.ln_set(X, W.lnf_w, W.lnf_b, W.eps, direction)
            Y = X.center_coords()
            s_lo, s_hi = rules.sigma_range(Y, W.eps, direction)
            paths = [(Z, A, Aerr, bd, bderr, None), (Y, Aw, Awerr, bb + bd, bberr + bderr, (s_lo, s_hi))]

        def evaluate(cols):
            """Bounds for the competitors `cols` (all when None): cheap support, or exact for a subset."""
            idx = slice(None) if cols is None else cols
            best = None
            for S, M, Merr, beta, betaerr, sig in paths:
                Mi = M[:, idx]
                ferr = up(S.abs_bound() @ Merr[:, idx], S.d)
                exact = None if cols is None else np.arange(Mi.shape[1])
                lo = S.functional_bounds(Mi, exact=exact)[0]
                lo = sum_bounds([lo, -ferr])[0]
                if sig is not None:
                    lo = np.where(lo >= 0, np.nextafter(lo / sig[1], -np.inf), np.nextafter(lo / sig[0], -np.inf))
                val = sum_bounds([lo, beta[idx], -betaerr[idx]])[0]
                best = val if best is None else np.maximum(best, val)
            if cols is None:
                best[c] = np.inf
                return best
            full = np.full(len(bd), -np.inf)
            full[cols] = best
            return full

        cheap = evaluate(None)
        if refine is not None:
            out = cheap if not refine else np.maximum(cheap, evaluate(np.array(refine, dtype=np.int64)))
            if alpha:
                sc = SlopeCase.of(X, Y, (s_lo, s_hi), W.eps)
                for ev in alpha:
                    k = ev["k"]
                    out[k] = max(out[k], self._alpha_bound(sc, ev["path"], Aw[:, k], Awerr[:, k], bb[k] + bd[k],
                                                           bberr[k] + bderr[k], *sc.evidence_slopes(ev),
                                                           ev.get("gamma")))
            return out, list(refine), list(alpha or [])
        # Refine the n_refine worst competitors and every other non-positive one (at most max_refine),
        # then keep refining every unrefined competitor whose cheap bound is at or below the current minimum:
        # when none is left, the minimum equals the one with every competitor refined. A refined
        # competitor at or below 0 settles the case (unprovable by this bound): refining stops there.
        order = np.argsort(cheap, kind="stable")
        order = order[order != c]
        refined = np.zeros(len(cheap), dtype=bool)
        refined[order[cheap[order] <= 0.0][: self.opts.max_refine]] = True
        refined[order[: self.opts.n_refine]] = True
        best = np.maximum(cheap, evaluate(np.flatnonzero(refined)))
        # Each round refines at least one new competitor, so the loop ends after at most V rounds.
        for _ in itertools.count() if self.opts.max_rounds is None else range(self.opts.max_rounds):
            if refined.any() and best[refined].min() <= 0.0:
                break
            more = order[~refined[order] & (cheap[order] <= best.min())][: 4 * self.opts.max_refine]
            if not len(more):
                break
            best = np.maximum(best, evaluate(more))
            refined[more] = True
        # Method /4: when that does not prove the case, the least competitor gets the slope bound
        # (slopes.py), first with the chord slopes (quick), then, if it is the least again, with slopes
        # searched for it; any competitor that becomes the least is refined first. This ends when the
        # least competitor has had its search (its bound is then final) or max_alpha searches are spent,
        # or early, when a searched competitor stays below alpha_stop (the case is lost); a competitor
        # whose quick bound is below alpha_stop is searched at once, so a lost case ends after one search.
        rec = getattr(X, "last_mlp", None)
        stage: dict[int, int] = {}
        treated: dict[int, dict] = {}
        before = best.copy()  # each competitor's bound without slopes
        if (rec is not None and self.use_slopes and W.lnf_w is not None
                and self.opts.alpha_floor < best.min() <= self.opts.alpha_below):
            sc = SlopeCase.of(X, Y, (s_lo, s_hi), W.eps)
            searches = quick = 0
            lost = None  # a competitor whose quick bound is below alpha_stop: searched next, before any other
            while searches < self.opts.max_alpha and quick < 8 * self.opts.max_alpha:
                k = int(np.argmin(best)) if lost is None else lost
                lost = None
                if not refined[k]:
                    # k and every other unrefined competitor at or below its bound, in one batch
                    more = order[~refined[order] & (cheap[order] <= best[k])][: 4 * self.opts.max_refine]
                    best[more] = np.maximum(best[more], evaluate(more)[more])
                    before[more] = best[more]
                    refined[more] = True
                    continue
                st = stage.get(k, 0)
                if st == 2:
                    break
                stage[k] = st + 1
                searches += st
                quick += 1 - st
                val, ev = self._best_alpha(sc, Aw[:, k], Awerr[:, k], bb[k] + bd[k], bberr[k] + bderr[k],
                                           search=st == 1)
                if val > best[k]:
                    treated[k] = ev
                    best[k] = val
                if best[k] < self.opts.alpha_stop:
                    if st == 1:
                        break
                    lost = k
        # Evidence for the checker: only the refined competitors whose cheap bound does not already
        # clear the least margin need their exact support re-derived (the slack covers the checker's
        # own, differently rounded, cheap bounds); of those, the ones whose slopes raised them above it
        # carry the slopes instead.
        low = best.min()
        slack = 1e-6 * (1.0 + abs(low))
        evidence = [dict(treated[k], k=k) for k in sorted(treated) if before[k] <= low + slack]
        with_slopes = np.zeros(len(cheap), dtype=bool)
        with_slopes[[e["k"] for e in evidence]] = True
        needed = refined & (cheap <= low + slack) & ~with_slopes
        return best, np.flatnonzero(needed).tolist(), evidence

    def _alpha_bound(self, sc: SlopeCase, path: str, F, Ferr, beta: float, betaerr: float, s: np.ndarray,
                     shift: np.ndarray, gamma: float | None = None) -> float:
        """Lower bound of the margin against one competitor by the slope bound with slopes ``s`` and the
        ``shift`` mask (slopes.lower_bound): F = w * (W_U[:, c] - W_U[:, k]) within Ferr, beta =
        b . (W_U[:, c] - W_U[:, k]) + db_U within betaerr. ``path``: "quot" (the quotient bound) or "tan"
        (the tangent bound; -inf unless the tangent plane was verified). On "tan", ``gamma`` (>= 0, method
        /7) is the weight of sigma: (F . y) / sigma + beta >= N / sigma_(hi or lo) + beta - gamma with N the
        lower bound of (F + gamma u) . y + gamma c0, for every gamma >= 0: (F . y) / sigma + beta =
        (F . y + gamma sigma) / sigma + beta - gamma, and F . y + gamma sigma >= (F + gamma u) . y + gamma c0
        since sigma(y) >= u . y + c0. Without ``gamma`` it is beta's lower end (method /4: -inf unless
        that is > 0) and the term beta - gamma >= 0 is dropped."""
        sig = sc.sig
        beta_lo = float(sum_bounds([np.array([beta]), -np.array([betaerr])])[0][0])
        if path == "quot":
            lo = slopes.lower_bound(sc.rec, F, Ferr, s, sc.xabs, shift)
            q = np.nextafter(lo / (sig[1] if lo >= 0 else sig[0]), -np.inf)
            return float(sum_bounds([np.array([q]), np.array([beta]), -np.array([betaerr])])[0][0])
        if sc.tangent is None or (gamma is None and not beta_lo > 0) or (gamma is not None and not gamma >= 0):
            return -np.inf
        gam = beta_lo if gamma is None else float(gamma)
        u, c0 = sc.tangent
        F2, F2err = slopes.with_tangent(F, Ferr, gam, u)
        N = float(sum_bounds([np.array([slopes.lower_bound(sc.rec, F2, F2err, s, sc.xabs, shift)]),
                              np.array([np.nextafter(gam * c0, -np.inf)])])[0][0])
        q = float(np.nextafter(N / (sig[1] if N >= 0 else sig[0]), -np.inf))
        if gamma is None:
            return q
        return float(sum_bounds([np.array([q]), np.array([beta]), -np.array([betaerr]), -np.array([gam])])[0][0])

    def _unembed_differences(self, c: int):
        """A = W_U[:, c] - W_U[:, k] per column and bd = b_U[c] - b_U (floats within Aerr, bderr of the
        exact numbers) and, with a final LayerNorm (w, b), Aw = w * A and bb = b . A within Awerr, bberr.
        Computed once per c (every case of a claim uses the same c); the arrays are never written to."""
        if c not in self._unembed_cache:
            out = self._unembed_differences_of(c)
            for a in out:
                if a is not None:
                    a.flags.writeable = False
            self._unembed_cache[c] = out
        return self._unembed_cache[c]

    def _unembed_differences_of(self, c: int):
        W = self.W
        A = W.W_U[:, [c]] - W.W_U
        Aerr = up(U * np.abs(A), 1)
        bd = W.b_U[c] - W.b_U
        bderr = up(U * np.abs(bd), 1)
        if W.lnf_w is None:
            return A, Aerr, bd, bderr, None, None, None, None
        Aw = W.lnf_w[:, None] * A
        Awerr = up(U * np.abs(Aw) + np.abs(W.lnf_w)[:, None] * Aerr, 2)
        bb = W.lnf_b @ A
        bberr = up(gamma(len(W.lnf_b)) * float(np.linalg.norm(W.lnf_b)) * col_norms(A) + np.abs(W.lnf_b) @ Aerr
                   + U * np.abs(bb + bd), len(W.lnf_b) + 4)
        return A, Aerr, bd, bderr, Aw, Awerr, bb, bberr

    def alpha_margins(self, X: AffineSet, c: int, ks) -> np.ndarray:
        """The slope bound (the better of its two paths, slopes searched) of logit[c] - logit[k] for each k
        in ks, X the final residual's set from :meth:`final_set` (ReLU models with a final LayerNorm)."""
        _, _, bd, bderr, Aw, Awerr, bb, bberr = self._unembed_differences(c)
        Y = X.center_coords()
        sc = SlopeCase.of(X, Y, rules.sigma_range(Y, self.W.eps), self.W.eps)
        return np.array([self._best_alpha(sc, Aw[:, k], Awerr[:, k], bb[k] + bd[k], bberr[k] + bderr[k])[0]
                         for k in ks])

    def _best_alpha(self, sc: SlopeCase, F, Ferr, beta, betaerr, search: bool = True) -> tuple[float, dict]:
        """The better of the quotient and tangent bounds, each with slopes chosen for its own functional
        (``search``) or the chord slopes, and a shift mask chosen for it; the evidence names the path, the
        searched slopes of the neurons that use them (none: the chord's) and the shifted neurons."""
        rec = sc.rec
        best_val, best_ev = -np.inf, None
        chord = sc.chord()
        for path in ("quot", "tan"):
            Fp = F
            gam0 = max(beta - betaerr, 0.0)
            if path == "tan":
                if sc.tangent is None or not (self.use_gamma or gam0 > 0):
                    continue
                Fp = F + gam0 * sc.tangent[0]
            s = slopes.choose_slopes(rec, Fp) if search else sc.chord()
            shift = slopes.choose_shift(rec, Fp, s)
            gammas: list[float | None] = [None]
            if path == "tan" and self.use_gamma:
                u, c0 = sc.tangent
                # about sigma at the tangent point: u = y* / (d S), c0 = eps / S, so u . y* + c0 = S
                S = self.W.eps / c0 if c0 > 0 else float("nan")
                gammas = [gam0, slopes.choose_gamma(rec, F, u, c0, s, shift, gam0, S)]
            for gam in gammas:
                val = self._alpha_bound(sc, path, F, Ferr, beta, betaerr, s, shift, gam)
                if val > best_val:
                    best_val = val
                    # every slope that differs from the chord's (those the bound used are among them)
                    used = np.flatnonzero(rec.crossing() & (s != chord))
                    best_ev = {"path": path, "slopes": [[int(n), float(s[n])] for n in used],
                               "shift": np.flatnonzero(shift & rec.crossing()).tolist()}
                    if gam is not None:
                        best_ev["gamma"] = gam
        return best_val, best_ev

    def case(self, L: int, last: int | None, c: int, refine: list[int] | None = None,
             alpha: list[dict] | None = None) -> CaseResult:
        """The case's bounds. Method /6 (``use_norm_dirs``): a first pass without norm directions or
        slopes (with slopes if ``alpha_below`` > 0); when it does not prove the case, a second pass
        with both (the norm directions of :meth:`_direction` at the last LayerNorms), kept if its least
        margin is higher. With ``refine`` (a re-evaluation): one pass, without directions."""
        def one(dirs):
            self._dirs = dirs
            try:
                X, lams = self.final_set(L, last)
                m, ref, ev = self.margins(X, c, refine, alpha)
            finally:
                self._dirs = None
            if not _finite_set(X):
                # Overflowed bounds (inf/NaN in the set) certify nothing; NaN can vanish in comparisons.
                m = np.full_like(m, -np.inf)
                m[c] = np.inf
            kept = {k: v for k, v in (dirs or {}).items() if v is not None} or None
            return CaseResult(L, last, m, ref, lams, ev, kept)

        if refine is not None or not self.use_norm_dirs:
            return one(None)
        # the first pass without the slope search (unless alpha_below asks for it in proven cases too):
        # a case it proves needs neither; one it does not gets the directions and the slopes together
        slopes_on = self.use_slopes
        self.use_slopes = slopes_on and self.opts.alpha_below > 0.0
        try:
            r = one(None)
        finally:
            self.use_slopes = slopes_on
        if r.margin > 0.0:
            return r
        r2 = one({})
        return r2 if r2.margin > r.margin else r

    def reference_logits(self) -> tuple[np.ndarray, np.ndarray]:
        """Logit bounds (lo, hi) at the last position of s + q (L = 0)."""
        X, _ = self.final_set(0, None)
        Z = rules.ln_set(X, self.W.lnf_w, self.W.lnf_b, self.W.eps)
        lo, hi = Z.functional_bounds(self.W.W_U)
        berr = up(U * np.abs(self.W.b_U + lo) + U * np.abs(self.W.b_U + hi), 1)
        return lo + self.W.b_U - berr, hi + self.W.b_U + berr
