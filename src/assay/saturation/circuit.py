"""Compile a saturated transformer, at a fixed input length n, into a threshold circuit.

Gates: AND, OR, NOT (any fan-in for AND / OR) and THRESHOLD ``[sum_k w_k x_k >= theta]`` with integer
weights. Inputs are the n bits ``x_i = [token_i == 1]``; the one output is the model's decision on the
whole string (``logits[1] > logits[0]`` at the last position).

How values become wires. At fixed n every quantity in the network takes finitely many rational
values. A quantity Q with values ``t_0 < t_1 < ... < t_K`` is represented by the *thermometer code*
``w_k = [Q >= t_k]`` (k = 1..K), so ``Q = t_0 + sum_k (t_k - t_{k-1}) w_k``, a linear form in its
wires. Linear maps (embeddings, W_Q / W_K / W_V / W_O, W_in / W_out, residual sums, a uniform attention
average) are kept as linear forms over such variables and cost no gates. Gates appear only at
nonlinearities:

- ``[L >= t]`` for a linear form L is one THRESHOLD gate over the wires L is written in.
- ReLU: the thermometer code of ``relu(L)`` is the part of L's code with ``t_k > 0``: no new gate
  beyond materialising L (one threshold gate per value of L).
- Saturated attention at query i, scores ``s_j`` (linear forms; the query must be constant or the keys
  constant, so that a score is linear):
  * all scores equal constants: the average of the values over the prefix, a linear form (free);
  * values affine in the score on every key (``v_j = a s_j + b``, as in the Dyck-1 and a^n b^n
    constructions): every maximising key has the same value, so the output is ``a * max_j s_j + b``
    and ``[max_j s_j >= u] = OR_j [s_j >= u]``: one OR gate per value of the maximum.
  Anything else raises :class:`Unsupported` (a one-line BadInput).
- The decision ``logits[1] - logits[0] > 0`` is one threshold gate.

Value sets are computed as sums of the value sets of the variables in a linear form (a superset of
the reachable values, so the code is exact for every input); a set beyond ``VALUE_CAP`` raises
Unsupported. Not covered: LayerNorm, GELU, rotary positions, softmax, scores with both query and key
depending on the input, non-causal attention, alphabets beyond two tokens.

Evaluation (:meth:`Circuit.evaluate`) is exact: each threshold gate is summed in float64 with a
rigorous error bound and re-summed in Python integers for the inputs the bound cannot decide.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from assay.errors import BadInput
from assay.saturation.constructions import CONSTRUCTIONS, build
from assay.saturation.interpreter import Interpreter, all_prefix_steps
from assay.saturation.languages import sample

VALUE_CAP = 200_000
MAX_N = 256  # gates grow like n^2 and wires like n^3 for the 2-layer constructions: ~ 1 GB at n = 256
EXHAUSTIVE_MAX = 12


class Unsupported(BadInput):
    """The model uses something the compiler does not cover (message says what)."""


# ---------------------------------------------------------------------------------------------
# The circuit.


@dataclass
class Circuit:
    """A threshold circuit: wires 0..n_inputs-1 are the inputs, every later wire is one gate.

    ``op[w]`` is "INPUT", "CONST", "AND", "OR", "NOT" or "THRESHOLD"; ``args[w]`` the input wires;
    THRESHOLD gates also have integer ``weights[w]`` and ``theta[w]`` (true iff sum >= theta); CONST
    gates have ``theta[w]`` = 1 (true) or 0 (false).
    """

    n_inputs: int
    op: list[str] = field(default_factory=list)
    args: list[tuple[int, ...]] = field(default_factory=list)
    weights: list[tuple[int, ...] | None] = field(default_factory=list)
    theta: list[int | None] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._memo: dict[tuple, int] = {}
        self._const: dict[bool, int] = {}
        if not self.op:
            for _ in range(self.n_inputs):
                self._append("INPUT", (), None, None)

    def _append(self, op: str, args: tuple[int, ...], weights: tuple[int, ...] | None, theta: int | None) -> int:
        key = (op, args, weights, theta)
        w = self._memo.get(key)
        if w is not None:
            return w
        self.op.append(op)
        self.args.append(args)
        self.weights.append(weights)
        self.theta.append(theta)
        w = len(self.op) - 1
        if op != "INPUT":
            self._memo[key] = w
        return w

    def const(self, value: bool) -> int:
        """Return the wire of a constant."""
        return self._append("CONST", (), None, int(bool(value)))

    def const_value(self, w: int) -> bool | None:
        """Return True / False for a constant wire, None otherwise."""
        return bool(self.theta[w]) if self.op[w] == "CONST" else None

    def gate_not(self, a: int) -> int:
        """Return the wire of NOT a."""
        c = self.const_value(a)
        if c is not None:
            return self.const(not c)
        if self.op[a] == "NOT":
            return self.args[a][0]
        return self._append("NOT", (a,), None, None)

    def _and_or(self, op: str, ins: Sequence[int]) -> int:
        absorbing = op == "OR"  # OR is absorbed by True, AND by False
        keep = []
        for a in ins:
            c = self.const_value(a)
            if c is None:
                keep.append(a)
            elif c == absorbing:
                return self.const(absorbing)
        keep = sorted(set(keep))
        if not keep:
            return self.const(not absorbing)
        if len(keep) == 1:
            return keep[0]
        return self._append(op, tuple(keep), None, None)

    def gate_and(self, ins: Sequence[int]) -> int:
        """Return the wire of the AND of ``ins`` (constants folded)."""
        return self._and_or("AND", ins)

    def gate_or(self, ins: Sequence[int]) -> int:
        """Return the wire of the OR of ``ins`` (constants folded)."""
        return self._and_or("OR", ins)

    def threshold(self, terms: dict[int, Fraction], theta: Fraction, strict: bool = False) -> int:
        """Return the wire of ``[sum_w terms[w] * w >= theta]`` (``>`` if strict), integerised and folded."""
        return self.linear_form(terms).gate(theta, strict)

    def linear_form(self, terms: dict[int, Fraction]) -> _IntForm:
        """Return ``sum_w terms[w] * w`` with constants folded and integer weights, ready to compare."""
        live: dict[int, Fraction] = {}
        offset = Fraction(0)
        for w, c in terms.items():
            if c == 0:
                continue
            v = self.const_value(w)
            if v is None:
                live[w] = live.get(w, Fraction(0)) + c
            elif v:
                offset += c
        live = {w: c for w, c in live.items() if c != 0}
        return _IntForm(self, live, offset)

    # -----------------------------------------------------------------------------------------

    def pruned(self) -> Circuit:
        """Return a copy holding only the inputs and the gates the outputs depend on."""
        need = set(self.outputs)
        stack = list(self.outputs)
        while stack:
            w = stack.pop()
            for a in self.args[w]:
                if a not in need:
                    need.add(a)
                    stack.append(a)
        keep = list(range(self.n_inputs)) + sorted(w for w in need if w >= self.n_inputs)
        new_id = {w: i for i, w in enumerate(keep)}
        out = Circuit(self.n_inputs)
        for w in keep[self.n_inputs:]:
            out.op.append(self.op[w])
            out.args.append(tuple(new_id[a] for a in self.args[w]))
            out.weights.append(self.weights[w])
            out.theta.append(self.theta[w])
        out.outputs = [new_id[w] for w in self.outputs]
        return out

    @property
    def size(self) -> int:
        """Return the number of gates (inputs not counted)."""
        return len(self.op) - self.n_inputs

    @property
    def n_wires(self) -> int:
        """Return the number of gate inputs summed over gates (the circuit's edges)."""
        return sum(len(a) for a in self.args)

    def depths(self) -> list[int]:
        """Return the depth of every wire (inputs and constants 0, a gate 1 + its deepest input)."""
        d = [0] * len(self.op)
        for w in range(self.n_inputs, len(self.op)):
            d[w] = 1 + max((d[a] for a in self.args[w]), default=-1) if self.args[w] else 0
        return d

    @property
    def depth(self) -> int:
        """Return the length of the longest input-to-output path, in gates."""
        d = self.depths()
        return max((d[w] for w in self.outputs), default=0)

    def counts(self) -> dict[str, int]:
        """Return the number of gates of each kind."""
        out: dict[str, int] = {}
        for op in self.op[self.n_inputs:]:
            out[op] = out.get(op, 0) + 1
        return out

    def evaluate(self, inputs: np.ndarray) -> np.ndarray:
        """Return the outputs [batch, n_outputs] (bool) for inputs [batch, n_inputs] (0/1), exactly."""
        x = np.asarray(inputs).astype(bool)
        if x.ndim != 2 or x.shape[1] != self.n_inputs:
            raise BadInput(f"circuit inputs must be [batch, {self.n_inputs}], got {x.shape}")
        B = x.shape[0]
        val = np.zeros((len(self.op), B), dtype=bool)
        val[: self.n_inputs] = x.T
        for w in range(self.n_inputs, len(self.op)):
            op, args = self.op[w], self.args[w]
            if op == "CONST":
                val[w] = bool(self.theta[w])
            elif op == "NOT":
                val[w] = ~val[args[0]]
            elif op == "AND":
                val[w] = val[list(args)].all(axis=0)
            elif op == "OR":
                val[w] = val[list(args)].any(axis=0)
            else:
                val[w] = self._threshold_eval(val[list(args)], self.weights[w], self.theta[w])  # type: ignore[arg-type]
        return val[self.outputs].T.copy()

    @staticmethod
    def _threshold_eval(bits: np.ndarray, weights: tuple[int, ...], theta: int) -> np.ndarray:
        try:
            wf = np.array([float(w) for w in weights])
            tf = float(theta)
            finite = math.isfinite(float(np.abs(wf).sum()) + abs(tf))
        except OverflowError:
            finite = False
        if not finite:  # weights beyond float64's range: Python integers for every input
            ws = np.array(weights, dtype=object)
            return np.array([sum(ws[bits[:, b]]) >= theta for b in range(bits.shape[1])], dtype=bool)
        s = wf @ bits  # float64; |error| <= len * 2^-52 * sum |w| (plus the rounding of w and theta)
        bound = (len(weights) + 2) * 2.0**-52 * (float(np.abs(wf).sum()) + abs(tf)) * 2
        out = s >= tf
        unsure = np.nonzero(np.abs(s - tf) <= bound)[0]
        for b in unsure:
            exact = sum(w for w, on in zip(weights, bits[:, b], strict=True) if on)
            out[b] = exact >= theta
        return out

    def to_json(self) -> dict[str, Any]:
        """Return the circuit as a JSON-able dict (integer weights exact, however large)."""
        gates = []
        for w in range(self.n_inputs, len(self.op)):
            g: dict[str, Any] = {"id": w, "op": self.op[w], "in": list(self.args[w])}
            if self.op[w] == "THRESHOLD":
                g["weights"] = list(self.weights[w])  # type: ignore[arg-type]
                g["theta"] = self.theta[w]
            if self.op[w] == "CONST":
                g["value"] = bool(self.theta[w])
            gates.append(g)
        return {"n_inputs": self.n_inputs, "inputs": list(range(self.n_inputs)), "gates": gates,
                "outputs": self.outputs, "depth": self.depth, "size": self.size, "wires": self.n_wires,
                "semantics": "THRESHOLD is true iff sum(weights[k] * in[k]) >= theta; inputs are x_i = [token_i == 1]"}

    def to_dot(self) -> str:
        """Return the circuit in Graphviz DOT (edge labels are the threshold weights)."""
        lines = ["digraph circuit {", "  rankdir=BT;", "  node [fontname=Helvetica, fontsize=10];"]
        for i in range(self.n_inputs):
            lines.append(f'  w{i} [label="x{i}", shape=box];')
        for w in range(self.n_inputs, len(self.op)):
            op = self.op[w]
            label = {"THRESHOLD": f">= {self.theta[w]}", "CONST": str(bool(self.theta[w]))}.get(op, op)
            shape = "doublecircle" if w in self.outputs else "ellipse"
            lines.append(f'  w{w} [label="{label}", shape={shape}];')
            for k, a in enumerate(self.args[w]):
                lab = f' [label="{self.weights[w][k]}"]' if op == "THRESHOLD" else ""  # type: ignore[index]
                lines.append(f"  w{a} -> w{w}{lab};")
        lines.append("}")
        return "\n".join(lines) + "\n"


class _IntForm:
    """A linear form over wires, integerised once, from which threshold gates for many thetas are made."""

    def __init__(self, circuit: Circuit, live: dict[int, Fraction], offset: Fraction) -> None:
        self.c = circuit
        self.offset = offset
        self.args = tuple(sorted(live))
        self.scale = math.lcm(*(c.denominator for c in live.values())) if live else 1
        ints = [int(live[w] * self.scale) for w in self.args]
        self.g = math.gcd(*ints) if ints else 1
        self.ints = tuple(x // self.g for x in ints)
        self.lo = sum(x for x in self.ints if x < 0)
        self.hi = sum(x for x in self.ints if x > 0)

    def gate(self, theta: Fraction, strict: bool = False) -> int:
        """Return the wire of [form >= theta] (or > theta)."""
        t = (Fraction(theta) - self.offset) * self.scale / self.g  # compare sum(ints * x) with t
        t_int = (math.floor(t) + 1) if strict else math.ceil(t)  # the sum is an integer
        if self.lo >= t_int:
            return self.c.const(True)
        if self.hi < t_int:
            return self.c.const(False)
        if len(self.args) == 1:
            return self.args[0] if self.ints[0] > 0 else self.c.gate_not(self.args[0])
        return self.c._append("THRESHOLD", self.args, self.ints, t_int)


# ---------------------------------------------------------------------------------------------
# Thermometer-coded variables and linear forms over them.


@dataclass(eq=False)
class Var:
    """A finite-valued quantity: ``values`` ascending, ``wires[k-1]`` = [Q >= values[k]]."""

    values: list[Fraction]
    wires: list[int]


@dataclass
class Lin:
    """``const + sum coef[v] * v`` over thermometer variables v."""

    const: Fraction = Fraction(0)
    coef: dict[Var, Fraction] = field(default_factory=dict)

    def is_const(self) -> bool:
        return not self.coef

    def __add__(self, other: Lin) -> Lin:
        coef = dict(self.coef)
        for v, c in other.coef.items():
            s = coef.get(v, Fraction(0)) + c
            if s:
                coef[v] = s
            else:
                coef.pop(v, None)
        return Lin(self.const + other.const, coef)

    def scale(self, a: Fraction) -> Lin:
        if a == 0:
            return Lin()
        return Lin(self.const * a, {v: c * a for v, c in self.coef.items()})

    def same(self, other: Lin) -> bool:
        return self.const == other.const and self.coef == other.coef


def lin_const(x: Any) -> Lin:
    return Lin(Fraction(x))


def value_set(L: Lin, cap: int = VALUE_CAP) -> list[Fraction]:
    """Return the sorted possible values of L (the sum of its variables' value sets; a superset)."""
    items = list(L.coef.items())
    dens = [L.const.denominator] + [(c * t).denominator for v, c in items for t in v.values]
    D = math.lcm(*dens)
    S = {int(L.const * D)}
    for v, c in items:
        steps = [int(c * t * D) for t in v.values]
        S = {s + t for s in S for t in steps}
        if len(S) > cap:
            raise Unsupported(f"a quantity has more than {cap} possible values at this n: too large to compile")
    return sorted(Fraction(s, D) for s in S)


class Compiler:
    """Builds the circuit of a saturated Transformer at input length n (decision at the last position)."""

    def __init__(self, model: Any, n: int, pos_fn: Callable[[int], Sequence[Any]] | None = None) -> None:
        cfg = model.cfg
        if cfg.attention not in ("saturated", "hard"):
            raise Unsupported(f"the circuit compiler needs saturated or hard attention, not {cfg.attention!r}")
        if not cfg.causal:
            raise Unsupported("the circuit compiler handles causal models only")
        if cfg.d_vocab < 2:
            raise Unsupported("the circuit compiler needs tokens 0 and 1")
        self.it = Interpreter(model, pos_fn=pos_fn)  # exact weights; refuses LN, GELU, rotary
        self.cfg = cfg
        self.n = n
        self.c = Circuit(n)
        self.inputs = [Var([Fraction(0), Fraction(1)], [i]) for i in range(n)]

    # -- nonlinear pieces --------------------------------------------------------------------------

    def ge(self, L: Lin, t: Fraction, strict: bool = False) -> int:
        """Return the wire of [L >= t] (or L > t)."""
        c = self.c
        if L.is_const():
            return c.const(L.const > t if strict else L.const >= t)
        if len(L.coef) == 1:
            (v, a), = L.coef.items()
            u = (t - L.const) / a  # a*Q + k >= t  <=>  Q >= u (a > 0)  or  Q <= u (a < 0)
            if a > 0:
                k = bisect.bisect_right(v.values, u) if strict else bisect.bisect_left(v.values, u)
                if k == len(v.values):
                    return c.const(False)
                return c.const(True) if k == 0 else v.wires[k - 1]
            k = bisect.bisect_left(v.values, u) if strict else bisect.bisect_right(v.values, u)
            if k == len(v.values):
                return c.const(True)
            return c.const(False) if k == 0 else c.gate_not(v.wires[k - 1])
        return self.form(L).gate(t, strict)

    def form(self, L: Lin) -> _IntForm:
        """Return L written over wires: const + sum_v a_v (t_0 + sum_k (t_k - t_(k-1)) w_k)."""
        terms: dict[int, Fraction] = {}
        const = L.const
        for v, a in L.coef.items():
            const += a * v.values[0]
            for k, w in enumerate(v.wires):
                terms[w] = terms.get(w, Fraction(0)) + a * (v.values[k + 1] - v.values[k])
        f = self.c.linear_form(terms)
        f.offset += const
        return f

    def materialise(self, L: Lin) -> Var:
        """Return L as a thermometer variable (one gate per value of L beyond the smallest)."""
        if len(L.coef) == 1 and L.const == 0:
            (v, a), = L.coef.items()
            if a == 1:
                return v
        vals = value_set(L)
        if len(L.coef) == 1:
            return Var(vals, [self.ge(L, t) for t in vals[1:]])
        f = self.form(L)
        return Var(vals, [f.gate(t) for t in vals[1:]])

    def relu(self, L: Lin) -> Lin:
        """Return relu(L) as a linear form over a new variable (reusing L's thermometer wires)."""
        if L.is_const():
            return lin_const(max(L.const, Fraction(0)))
        v = self.materialise(L)
        if v.values[0] >= 0:
            return Lin(Fraction(0), {v: Fraction(1)})
        vals = [Fraction(0)]
        wires = []
        for k in range(1, len(v.values)):
            if v.values[k] > 0:
                vals.append(v.values[k])
                wires.append(v.wires[k - 1])
        if len(vals) == 1:
            return Lin()
        return Lin(Fraction(0), {Var(vals, wires): Fraction(1)})

    def max_of(self, scores: list[Lin]) -> Var:
        """Return max_j scores[j] as a variable: [max >= u] = OR_j [s_j >= u]."""
        svars = [self.materialise(s) for s in scores]
        U = sorted(set().union(*(v.values for v in svars)))
        wires = []
        for u in U[1:]:
            wires.append(self.c.gate_or([self.ge(Lin(Fraction(0), {v: Fraction(1)}), u) for v in svars]))
        return Var(U, wires)

    # -- the network -------------------------------------------------------------------------------

    def matvec(self, x: Sequence[Lin], cols: list, bias: Sequence[Any] | None) -> list[Lin]:
        out = []
        for ci, col in enumerate(cols):
            acc = lin_const(bias[ci] if bias is not None else 0)
            for r, w in col:
                if x[r].coef or x[r].const:
                    acc = acc + x[r].scale(Fraction(w))
            out.append(acc)
        return out

    def embed(self, i: int) -> list[Lin]:
        it = self.it
        e0, e1 = it.W_E[0], it.W_E[1]
        pos = it.position(i)
        out = []
        for d in range(self.cfg.d_model):
            L = Lin(Fraction(e0[d]) + (Fraction(pos[d]) if pos is not None else 0))
            diff = Fraction(e1[d]) - Fraction(e0[d])
            if diff:
                L = L + Lin(Fraction(0), {self.inputs[i]: diff})
            out.append(L)
        return out

    def attend(self, q: list[Lin], keys: list[list[Lin]], values: list[list[Lin]]) -> list[Lin]:
        """Return the head's output (linear forms) at one query over keys 0..i."""
        q_const = all(x.is_const() for x in q)
        k_const = all(x.is_const() for k in keys for x in k)
        if not (q_const or k_const):
            raise Unsupported("a score depends on the input through both query and key (bilinear): not covered")
        scores = []
        for k in keys:
            s = Lin()
            for qe, ke in zip(q, k, strict=True):
                if q_const:
                    s = s + ke.scale(qe.const)
                else:
                    s = s + qe.scale(ke.const)
            scores.append(s)
        mode = self.cfg.attention
        if all(s.is_const() for s in scores):
            top = max(s.const for s in scores)
            M = [j for j, s in enumerate(scores) if s.const == top]
            if mode == "hard":
                M = M[:1]
            out = []
            for e in range(len(values[0])):
                acc = Lin()
                for j in M:
                    acc = acc + values[j][e]
                out.append(acc.scale(Fraction(1, len(M))))
            return out
        # values affine in the score on every key: every maximising key carries the same value
        out = []
        mx: Var | None = None
        for e in range(len(values[0])):
            col = [v[e] for v in values]
            if all(x.is_const() and x.const == col[0].const for x in col) and col[0].is_const():
                out.append(col[0])
                continue
            ab = _affine_in(col, scores)
            if ab is None:
                raise Unsupported("attention values that are not a function of the score on the maximising keys: "
                                  "not covered")
            if mx is None:
                mx = self.max_of(scores)
            a, b = ab
            out.append(Lin(b, {mx: a}) if a else lin_const(b))
        return out

    def compile(self) -> Circuit:
        """Return the pruned circuit whose one output is the decision on the whole string."""
        it, cfg, n = self.it, self.cfg, self.n
        xs = [self.embed(i) for i in range(n)]
        for layer in range(cfg.n_layers):
            last = layer == cfg.n_layers - 1
            Lw = it.layers[layer]
            h, e = cfg.n_heads, cfg.d_head
            flat = [self.matvec(x, Lw.qkv, Lw.qkv_b) for x in xs]
            qs = [[f[j * e:(j + 1) * e] for j in range(h)] for f in flat]
            ks = [[f[h * e + j * e:h * e + (j + 1) * e] for j in range(h)] for f in flat]
            vs = [[f[2 * h * e + j * e:2 * h * e + (j + 1) * e] for j in range(h)] for f in flat]
            new = []
            for i in range(n):
                if last and i != n - 1:
                    new.append(None)
                    continue
                z: list[Lin] = []
                for hh in range(h):
                    z += self.attend(qs[i][hh], [ks[j][hh] for j in range(i + 1)], [vs[j][hh] for j in range(i + 1)])
                a = self.matvec(z, Lw.o, Lw.o_b)
                mid = [x + y for x, y in zip(xs[i], a, strict=True)]
                if not cfg.attn_only:
                    if cfg.parallel_attn_mlp:
                        raise Unsupported("parallel attention + MLP is not covered")
                    pre = self.matvec(mid, Lw.mlp_in, Lw.mlp_in_b)  # type: ignore[arg-type]
                    post = [self.relu(p) for p in pre]
                    m = self.matvec(post, Lw.mlp_out, Lw.mlp_out_b)  # type: ignore[arg-type]
                    mid = [x + y for x, y in zip(mid, m, strict=True)]
                new.append(mid)
            xs = new  # type: ignore[assignment]
        logits = self.matvec(xs[n - 1], it.W_U, it.b_U)
        self.c.outputs = [self.ge(logits[1] + logits[0].scale(Fraction(-1)), Fraction(0), strict=True)]
        return self.c.pruned()


def _affine_in(col: list[Lin], scores: list[Lin]) -> tuple[Fraction, Fraction] | None:
    """Return (a, b) with col[j] == a * scores[j] + b for every j, or None."""
    a: Fraction | None = None
    for v, s in zip(col, scores, strict=True):
        if s.is_const():
            continue
        (var, c), = list(s.coef.items())[:1]
        a = v.coef.get(var, Fraction(0)) / c
        break
    if a is None:
        return None
    b: Fraction | None = None
    for v, s in zip(col, scores, strict=True):
        diff = v + s.scale(-a)
        if not diff.is_const():
            return None
        if b is None:
            b = diff.const
        elif diff.const != b:
            return None
    return (a, b if b is not None else Fraction(0))


# ---------------------------------------------------------------------------------------------
# Front end: compile a construction, verify against the interpreter, measure.


def compile_model(model: Any, n: int, pos_fn: Callable[[int], Sequence[Any]] | None = None) -> Circuit:
    """Return the threshold circuit deciding ``model`` on strings of length n (BadInput if unsupported)."""
    if not 1 <= n <= MAX_N:
        raise BadInput(f"n must be in 1..{MAX_N} for the circuit compiler (size grows like n^3), got {n}")
    return Compiler(model, n, pos_fn).compile()


def verify(circuit: Circuit, interp: Interpreter, decide: Callable[[Any], bool], n: int, language: str,
           random_inputs: int = 200, seed: int = 0) -> dict[str, Any]:
    """Return {inputs_checked, all_equal, exhaustive, first_mismatch}: the circuit against the exact
    interpreter on all 2^n strings (n <= EXHAUSTIVE_MAX) or on random strings."""
    if n <= EXHAUSTIVE_MAX:
        X = np.array(list(itertools.product((0, 1), repeat=n)), dtype=np.int8)
        want = [decide(s.logits) for w, s in all_prefix_steps(interp, (0, 1), n) if len(w) == n]
        exhaustive = True
    else:
        rng = random.Random(seed)
        rows = [sample(language, n, rng) for _ in range(random_inputs)]
        X = np.array(rows, dtype=np.int8)
        want = []
        for w in rows:
            st = interp.stream()
            for t in w:
                step = st.push(t)
            want.append(decide(step.logits))
        exhaustive = False
    got = circuit.evaluate(X)[:, 0]
    bad = [i for i in range(len(want)) if bool(got[i]) != want[i]]
    return {"inputs_checked": len(want), "all_equal": not bad, "exhaustive": exhaustive,
            "first_mismatch": X[bad[0]].tolist() if bad else None}


def compile_construction(language: str, n: int, random_inputs: int = 200, seed: int = 0) -> dict[str, Any]:
    """Compile the construction for ``language`` at length n, verify it, and return the summary:
    {language, n, depth, size, wires, gate_counts, inputs_checked, all_equal, exhaustive, ...}
    with the circuit itself under ``circuit`` (a :class:`Circuit`)."""
    if language not in CONSTRUCTIONS:
        raise BadInput(f"unknown language {language!r}; known: {', '.join(CONSTRUCTIONS)}")
    if not 1 <= n <= MAX_N:
        raise BadInput(f"--n must be in 1..{MAX_N} (circuit size grows like n^3; the memory limit), got {n}")
    c = build(language, n)
    t0 = time.perf_counter()
    circ = compile_model(c.model, n, c.pos_fn)
    t1 = time.perf_counter()
    check = verify(circ, c.interpreter(), c.decide, n, "majority" if language == "counter" else language,
                   random_inputs=random_inputs, seed=seed)
    t2 = time.perf_counter()
    return {"language": language, "n": n, "depth": circ.depth, "size": circ.size, "wires": circ.n_wires,
            "gate_counts": circ.counts(), **check, "compile_seconds": round(t1 - t0, 3),
            "verify_seconds": round(t2 - t1, 3), "circuit": circ}


def fit_power(points: Sequence[Sequence[float]]) -> dict[str, float]:
    """Least-squares fit of log2(y) = k log2(n) + c over points (n, y > 0): returns {k, c, r2}."""
    pts = [(math.log2(n), math.log2(y)) for n, y in points if n > 1 and y > 0]
    if len(pts) < 2:
        return {"k": float("nan"), "c": float("nan"), "r2": float("nan")}
    m = len(pts)
    mx = sum(p[0] for p in pts) / m
    my = sum(p[1] for p in pts) / m
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    k = sum((p[0] - mx) * (p[1] - my) for p in pts) / sxx if sxx else 0.0
    c = my - k * mx
    ss_res = sum((p[1] - (k * p[0] + c)) ** 2 for p in pts)
    ss_tot = sum((p[1] - my) ** 2 for p in pts)
    return {"k": round(k, 4), "c": round(c, 4), "r2": round(1 - ss_res / ss_tot, 6) if ss_tot else 1.0}


def check_export_paths(*paths: str | None) -> None:
    """Raise BadInput unless every given path can be written (its directory exists and is writable)."""
    import os

    for path in paths:
        if path is None:
            continue
        p = Path(path)
        parent = p.parent if str(p.parent) else Path(".")
        if p.is_dir():
            raise BadInput(f"cannot write {path}: it is a directory")
        if not parent.is_dir():
            raise BadInput(f"cannot write {path}: directory {parent} does not exist")
        if not os.access(parent, os.W_OK):
            raise BadInput(f"cannot write {path}: directory {parent} is not writable")


def write_exports(circ: Circuit, json_path: str | None, dot_path: str | None) -> None:
    """Write the circuit as JSON and / or Graphviz DOT: both are written to temporary files first and
    renamed into place only when both succeeded (BadInput, nothing left behind, otherwise)."""
    check_export_paths(json_path, dot_path)
    jobs = [(Path(path), text) for path, text in
            ((json_path, lambda: json.dumps(circ.to_json())), (dot_path, circ.to_dot)) if path is not None]
    tmps: list[Path] = []
    try:
        for p, text in jobs:
            tmp = p.with_name(f".{p.name}.tmp")
            tmps.append(tmp)
            tmp.write_text(text())
    except OSError as e:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
        raise BadInput(f"cannot write the circuit: {e.strerror or e}") from None
    for (p, _), tmp in zip(jobs, tmps, strict=True):
        tmp.replace(p)
