"""The recipes behind ``assay train RECIPE``: hyperparameters, model shape, data and metrics, by name.

A :class:`Recipe` is plain data: a model shape (ModelConfig fields except ``d_vocab``, which the data
decides), :class:`TrainParams` for the one loop in :mod:`assay.train`, and a data spec
(:class:`AdditionData`, :class:`FormalData` or :class:`TextData`). A data spec's ``build`` returns the
object the loop draws from: ``batch(rng, batch_size)`` gives (tokens, targets) with targets -100
where no loss is taken, ``metrics(model)`` gives the validation metrics, ``describe()`` what the
card records about the data.

Registered recipes (see docs/training.md for why each setting): ``overwhelm-1l``, ``addition-1l``,
``lm-4l``, ``majority-1l``, ``parity-1l``, ``dyck1-1l``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from assay.errors import BadInput
from assay.tasks import addition, formal, text

IGNORE = -100
TOKENIZER_FILE = "tokenizer.json"


@dataclass(frozen=True)
class TrainParams:
    """Optimisation settings of one recipe (AdamW, warmup then constant or cosine, clipping)."""

    steps: int
    batch_size: int
    lr: float
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    adam_eps: float = 1e-8
    warmup_steps: int = 100
    schedule: str = "cosine"  # "cosine" (to min_lr_ratio * lr at the last step) or "constant"
    min_lr_ratio: float = 0.1
    grad_clip: float | None = 1.0  # max global grad norm; None: no clipping
    decay_all: bool = False  # True: weight decay on every parameter; False: on matrices (W_*) only
    eval_every: int = 200
    checkpoint_every: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        problems = []
        for name in ("steps", "batch_size", "eval_every", "checkpoint_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                problems.append(f"{name} must be a positive integer, got {v!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            problems.append(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.schedule not in ("cosine", "constant"):
            problems.append(f"schedule must be 'cosine' or 'constant', got {self.schedule!r}")
        if not self.lr > 0 or self.warmup_steps < 0:
            problems.append("lr must be > 0 and warmup_steps >= 0")
        if problems:
            raise BadInput("invalid training parameters: " + "; ".join(problems))


class Data(Protocol):
    """What the training loop needs from a built data spec."""

    d_vocab: int
    tokenizer: Any

    def batch(self, rng: np.random.Generator, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (tokens [b, p], targets [b, p]) with targets IGNORE where no loss is taken."""
        ...

    def metrics(self, model: torch.nn.Module) -> dict[str, float]:
        """Return validation metrics of the model (in eval mode, no gradients)."""
        ...

    def describe(self) -> dict[str, Any]:
        """Return what the model card records about the data."""
        ...


def token_losses(model: torch.nn.Module, tokens: torch.Tensor, targets: torch.Tensor,
                 chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (cross-entropy [b, p], argmax [b, p]) of the model on tokens; loss 0 where targets are IGNORE.

    Runs in chunks of ``chunk`` sequences without gradients.
    """
    losses, preds = [], []
    with torch.no_grad():
        for i in range(0, len(tokens), chunk):
            logits = model(tokens[i : i + chunk]).float()
            t = targets[i : i + chunk]
            ce = F.cross_entropy(logits.transpose(1, 2), t, ignore_index=IGNORE, reduction="none")
            losses.append(ce)
            preds.append(logits.argmax(-1))
    return torch.cat(losses), torch.cat(preds)


# ---------------------------------------------------------------------------------------------------
# Addition.


@dataclass(frozen=True)
class AdditionData:
    """Fresh random n-digit addition questions, sum-9 enrichment, loss on the answer tokens only."""

    n_digits: int = addition.N_DIGITS
    enrich_batch_prob: float = 0.2
    enrich_pair_prob: float = 0.2
    n_val: int = 4096
    n_val_per_category: int = 512
    val_seed: int = 20_231_013

    def build(self, run_dir: Path, resume: bool) -> AdditionTask:
        """Return the data object the training loop draws from."""
        return AdditionTask(self)


class AdditionTask:
    """Batches and metrics for :class:`AdditionData`; validation sets are fixed by ``val_seed``."""

    tokenizer = None

    def __init__(self, spec: AdditionData) -> None:
        self.spec = spec
        self.d_vocab = addition.D_VOCAB
        n = spec.n_digits
        rng = np.random.default_rng(spec.val_seed)
        a, b = addition.random_operands(rng, spec.n_val, n)
        self.val = self._tensors(a, b)
        self.val_by_category = {}
        for cat in addition.CATEGORIES:
            if cat == "cascade" and n < 3:
                continue
            ca, cb = addition.operands_of_category(rng, cat, spec.n_val_per_category, n)
            self.val_by_category[cat] = self._tensors(ca, cb)

    def _tensors(self, a: np.ndarray, b: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = addition.example_token_array(a, b, self.spec.n_digits)
        targets = addition.answer_targets(tokens, self.spec.n_digits, IGNORE)
        return torch.from_numpy(tokens), torch.from_numpy(targets)

    def batch(self, rng: np.random.Generator, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return a fresh batch of examples and answer-only targets (enriched in some batches)."""
        s = self.spec
        a, b, _ = addition.training_operands(rng, batch_size, s.n_digits, s.enrich_batch_prob, s.enrich_pair_prob)
        return self._tensors(a, b)

    def _answer_stats(self, model, tokens, targets) -> tuple[torch.Tensor, torch.Tensor]:
        ce, pred = token_losses(model, tokens, targets)
        q = addition.question_length(self.spec.n_digits)
        sl = slice(q - 1, q + self.spec.n_digits)  # positions that predict the n + 1 answer digits
        return ce[:, sl], pred[:, sl] == targets[:, sl]

    def metrics(self, model) -> dict[str, float]:
        """Return loss, exact-match accuracy, per-digit loss (A_n .. A_0), and both per category."""
        ce, ok = self._answer_stats(model, *self.val)
        m = {"val_loss": ce.mean().item(), "val_accuracy": ok.all(dim=1).float().mean().item()}
        n = self.spec.n_digits
        for i in range(n + 1):
            m[f"val_loss_A{n - i}"] = ce[:, i].mean().item()
        for cat, (tokens, targets) in self.val_by_category.items():
            ce, ok = self._answer_stats(model, tokens, targets)
            m[f"val_loss_{cat}"] = ce.mean().item()
            m[f"val_accuracy_{cat}"] = ok.all(dim=1).float().mean().item()
        return m

    def describe(self) -> dict[str, Any]:
        """Return the generator's description for the card."""
        s = self.spec
        return {
            "generator": "assay.tasks.addition.training_operands",
            "task": f"{s.n_digits}-digit addition, answer most significant digit first, loss on answer tokens only",
            "example": "question",
            "enrichment": f"in {s.enrich_batch_prob:.0%} of batches, {s.enrich_pair_prob:.0%} of digit pairs "
            "rewritten to sum to 9",
            "batches": "fresh each step from numpy default_rng([seed, step])",
            "validation": f"{s.n_val} uniform questions + {s.n_val_per_category} per category "
            f"(seed {s.val_seed})",
        }


# ---------------------------------------------------------------------------------------------------
# Formal languages.


@dataclass(frozen=True)
class FormalData:
    """Strings of one formal language, lengths min_len..max_len (one length per batch)."""

    language: str
    min_len: int = 1
    max_len: int = 32
    even_only: bool = False  # Dyck-1 whole strings: odd lengths are never balanced, so skip them
    prefix_labels: bool = False  # Dyck-1 only: label every prefix instead of the whole string
    n_val_per_length: int = 64
    val_seed: int = 20_220_601

    def lengths(self) -> list[int]:
        """Return the string lengths drawn from."""
        return [n for n in range(self.min_len, self.max_len + 1) if not (self.even_only and n % 2)]

    def build(self, run_dir: Path, resume: bool) -> FormalTask:
        """Return the data object the training loop draws from."""
        if self.language not in formal.LANGUAGES:
            raise BadInput(f"unknown formal language {self.language!r}")
        if self.prefix_labels and self.language != "dyck1":
            raise BadInput("prefix_labels is a Dyck-1 variant")
        if not self.lengths():
            raise BadInput(f"no string lengths in {self.min_len}..{self.max_len}")
        return FormalTask(self)


class FormalTask:
    """Batches and metrics for :class:`FormalData`."""

    tokenizer = None

    def __init__(self, spec: FormalData) -> None:
        self.spec = spec
        self.d_vocab = formal.D_VOCAB
        rng = np.random.default_rng(spec.val_seed)
        self.val = [(n, *self._examples(rng, spec.n_val_per_length, n)) for n in spec.lengths()]

    def _examples(self, rng: np.random.Generator, batch: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.spec.prefix_labels:
            tokens, lab = formal.make_prefix_batch(rng, batch, n)
            targets = np.full(tokens.shape, IGNORE, dtype=np.int64)
            targets[:, 1:] = formal.label_tokens(lab)
        else:
            tokens, lab = formal.make_batch(self.spec.language, rng, batch, n)
            targets = np.full(tokens.shape, IGNORE, dtype=np.int64)
            targets[:, -1] = formal.label_tokens(lab)
        return torch.from_numpy(tokens), torch.from_numpy(targets)

    def batch(self, rng: np.random.Generator, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return a batch of strings of one random length and their label targets."""
        lengths = self.spec.lengths()
        return self._examples(rng, batch_size, lengths[int(rng.integers(0, len(lengths)))])

    def metrics(self, model) -> dict[str, float]:
        """Return loss and accuracy (label = the likelier of <false>/<true>), overall and on the longest quarter."""
        losses, correct, long_correct = [], [], []
        lengths = self.spec.lengths()
        long_from = lengths[(3 * len(lengths)) // 4]
        for n, tokens, targets in self.val:
            with torch.no_grad():
                logits = model(tokens).float()
            labelled = targets != IGNORE
            ce = F.cross_entropy(logits[labelled], targets[labelled], reduction="none")
            says_true = logits[labelled][:, formal.TRUE] > logits[labelled][:, formal.FALSE]
            ok = says_true == (targets[labelled] == formal.TRUE)
            losses.append(ce)
            correct.append(ok)
            if n >= long_from:
                long_correct.append(ok)
        return {
            "val_loss": torch.cat(losses).mean().item(),
            "val_accuracy": torch.cat(correct).float().mean().item(),
            f"val_accuracy_len{long_from}+": torch.cat(long_correct).float().mean().item(),
        }

    def describe(self) -> dict[str, Any]:
        """Return the generator's description for the card."""
        s = self.spec
        return {
            "generator": "assay.tasks.formal." + ("make_prefix_batch" if s.prefix_labels else "make_batch"),
            "language": s.language,
            "example": "string",
            "lengths": f"{s.min_len}..{s.max_len}" + (" (even only)" if s.even_only else ""),
            "convention": "<bos> w <cls>; label (<false>=4/<true>=5) predicted at <cls>"
            if not s.prefix_labels
            else "<bos> w; label of prefix w[:i+1] predicted at position i+1",
            "vocabulary": formal.vocabulary(s.language),
            "batches": "fresh each step from numpy default_rng([seed, step]); one length per batch",
            "validation": f"{s.n_val_per_length} strings per length (seed {s.val_seed})",
        }


# ---------------------------------------------------------------------------------------------------
# Text.


@dataclass(frozen=True)
class TextData:
    """Next-token prediction on corpora mixed by weight, with a BPE tokenizer trained on the train split."""

    corpora: tuple[str, ...] = (text.KJV,)
    weights: tuple[float, ...] = (1.0,)
    vocab_size: int = 4096
    seq_len: int = 256
    eval_windows: int = 256  # per corpus, evenly spread over its validation split

    def build(self, run_dir: Path, resume: bool) -> TextTask:
        """Return the data object; reuses the run's tokenizer.json on resume, else trains and writes one."""
        if len(self.corpora) != len(self.weights) or not self.corpora or min(self.weights) <= 0:
            raise BadInput("TextData needs one positive weight per corpus")
        return TextTask(self, Path(run_dir), resume)


class TextTask:
    """Token streams, batches and metrics for :class:`TextData`."""

    def __init__(self, spec: TextData, run_dir: Path, resume: bool) -> None:
        self.spec = spec
        self.corpora = [text.load_corpus(name) for name in spec.corpora]
        splits = [text.split_documents(c.documents) for c in self.corpora]
        tok_file = run_dir / TOKENIZER_FILE
        if resume and tok_file.is_file():
            from tokenizers import Tokenizer

            self.tokenizer = Tokenizer.from_file(str(tok_file))
        else:
            self.tokenizer = text.train_bpe(self._tokenizer_texts([tr for tr, _ in splits]), spec.vocab_size)
            run_dir.mkdir(parents=True, exist_ok=True)
            self.tokenizer.save(str(tok_file))
        self.d_vocab = self.tokenizer.get_vocab_size()
        self.train_streams = [text.encode_stream(self.tokenizer, tr) for tr, _ in splits]
        self.val_streams = [text.encode_stream(self.tokenizer, va) for _, va in splits]
        self.val_windows = [
            torch.from_numpy(text.eval_windows(v, spec.seq_len + 1, spec.eval_windows)) for v in self.val_streams
        ]
        self.probs = np.asarray(spec.weights, dtype=np.float64) / sum(spec.weights)
        self.unigram = [
            text.unigram_cross_entropy(tr, va, self.d_vocab)
            for tr, va in zip(self.train_streams, self.val_streams, strict=True)
        ]

    def _tokenizer_texts(self, train_docs: list[list[str]]) -> list[str]:
        # The tokenizer sees each corpus in proportion to its weight: the corpus with the most text per
        # unit of weight is used whole, the others are cut (documents in a fixed shuffled order).
        sizes = [sum(len(d) for d in docs) for docs in train_docs]
        per_weight = max(s / w for s, w in zip(sizes, self.spec.weights, strict=True))
        out: list[str] = []
        for docs, w in zip(train_docs, self.spec.weights, strict=True):
            budget = per_weight * w
            order = np.random.default_rng(0).permutation(len(docs))
            used = 0
            for i in order:
                if used >= budget:
                    break
                out.append(docs[i])
                used += len(docs[i])
        return out

    def batch(self, rng: np.random.Generator, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Return windows [b, seq_len] from the train streams (corpus drawn by weight) and next tokens."""
        which = rng.choice(len(self.train_streams), size=batch_size, p=self.probs)
        rows = np.empty((batch_size, self.spec.seq_len + 1), dtype=np.int64)
        for k, stream in enumerate(self.train_streams):
            idx = np.nonzero(which == k)[0]
            if len(idx):
                rows[idx] = text.sample_windows(rng, stream, len(idx), self.spec.seq_len + 1)
        w = torch.from_numpy(rows)
        return w[:, :-1], w[:, 1:]

    def metrics(self, model) -> dict[str, float]:
        """Return next-token loss on each corpus's validation windows, their weighted mean, and the unigram baseline."""
        m: dict[str, float] = {}
        total = base = 0.0
        for c, windows, p, uni in zip(self.corpora, self.val_windows, self.probs, self.unigram, strict=True):
            ce, _ = token_losses(model, windows[:, :-1], windows[:, 1:], chunk=32)
            loss = ce.mean().item()
            if len(self.corpora) > 1:
                m[f"val_loss_{c.name}"] = loss
            total += p * loss
            base += p * uni
        m["val_loss"] = total
        m["unigram_val_loss"] = base
        return m

    def describe(self) -> dict[str, Any]:
        """Return the corpora (name, version, hashes), split rule, mixture and token counts for the card."""
        return {
            "corpora": [c.describe() for c in self.corpora],
            "weights": list(self.spec.weights),
            "example": "window",
            "split": f"document i is validation iff i % {text.VAL_EVERY} == {text.VAL_EVERY - 1}",
            "train_tokens": [int(len(s)) for s in self.train_streams],
            "val_tokens": [int(len(s)) for s in self.val_streams],
            "tokenizer": f"byte-level BPE trained on the train split, {self.d_vocab} ids (tokenizers "
            f"{_tokenizers_version()})",
            "unigram_val_loss": [float(u) for u in self.unigram],
            "batches": f"windows of {self.spec.seq_len + 1} tokens at random offsets, from numpy "
            "default_rng([seed, step])",
        }


def _tokenizers_version() -> str:
    import tokenizers

    return tokenizers.__version__


# ---------------------------------------------------------------------------------------------------
# Recipes and the registry.


@dataclass(frozen=True)
class Recipe:
    """A named training setup: model shape, optimisation, data."""

    name: str
    summary: str
    model: dict[str, Any]
    train: TrainParams
    data: AdditionData | FormalData | TextData
    notes: str = ""

    def params(self) -> dict[str, Any]:
        """Return every parameter of the recipe as a JSON-able dict (model, train, data)."""
        return {
            "model": dict(self.model),
            "train": dataclasses.asdict(self.train),
            "data": {"kind": type(self.data).__name__, **dataclasses.asdict(self.data)},
        }


_RECIPES: dict[str, Recipe] = {}


def register(recipe: Recipe, replace: bool = False) -> Recipe:
    """Add a recipe to the registry and return it; a taken name is an error unless ``replace``."""
    if recipe.name in _RECIPES and not replace:
        raise ValueError(f"recipe {recipe.name!r} is already registered")
    _RECIPES[recipe.name] = recipe
    return recipe


def unregister(name: str) -> None:
    """Remove a recipe from the registry (for tests); unknown names are ignored."""
    _RECIPES.pop(name, None)


def recipe_names() -> list[str]:
    """Return the registered recipe names, sorted."""
    return sorted(_RECIPES)


def get_recipe(name: str) -> Recipe:
    """Return the registered recipe ``name``; BadInput listing the known ones otherwise."""
    try:
        return _RECIPES[name]
    except KeyError:
        raise BadInput(f"unknown recipe {name!r}; known recipes: {', '.join(recipe_names())}") from None


register(Recipe(
    name="overwhelm-1l",
    summary="1 layer, 1 head, LayerNorm, ReLU MLP, RoPE; next-token LM on the King James Bible (paper 1's setting)",
    model=dict(n_layers=1, d_model=128, n_heads=1, d_head=128, d_mlp=512, n_ctx=2048, act_fn="relu",
               normalization_type="LN", positional_embedding_type="rotary", causal=True),
    train=TrainParams(steps=3500, batch_size=8, lr=2e-3, weight_decay=0.1, betas=(0.9, 0.95), warmup_steps=200,
                      schedule="cosine", min_lr_ratio=0.1, grad_clip=1.0, eval_every=250, checkpoint_every=250),
    data=TextData(corpora=(text.KJV,), weights=(1.0,), vocab_size=4096, seq_len=256, eval_windows=200),
    notes="n_ctx 2048 so that long designed prefixes fit; RoPE has no position table, so windows of 256 suffice.",
))

register(Recipe(
    name="addition-1l",
    summary="5-digit addition, 1 layer, 3 heads, d_model 510 (Quirke & Barez 2024, exactly)",
    model=dict(n_layers=1, d_model=510, n_heads=3, d_head=170, d_mlp=2040,
               n_ctx=addition.example_length(addition.N_DIGITS), act_fn="relu", normalization_type="LN",
               positional_embedding_type="standard", causal=True),
    train=TrainParams(steps=30_000, batch_size=64, lr=8e-5, weight_decay=0.1, betas=(0.9, 0.98), warmup_steps=10,
                      schedule="constant", grad_clip=None, decay_all=True, eval_every=500,
                      checkpoint_every=500),
    data=AdditionData(),
    notes="Paper: AdamW lr 8e-5, wd 0.1, betas (0.9, 0.98), batch 64, fresh batches, 20%/20% sum-9 enrichment. "
    "Steps: 30K, the length the paper implies (its notebook used 5K); the shipped model is this run "
    "(docs/addition.md).",
))

register(Recipe(
    name="lm-4l",
    summary="4 layers, GELU, pre-LN, learned positions; next-token LM on 80% KJV + 20% Python stdlib "
    "(gelu-4l's setting scaled to CPU)",
    model=dict(n_layers=4, d_model=256, n_heads=8, d_head=32, d_mlp=1024, n_ctx=128, act_fn="gelu",
               normalization_type="LN", positional_embedding_type="standard", causal=True),
    train=TrainParams(steps=1300, batch_size=8, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.95), warmup_steps=100,
                      schedule="cosine", min_lr_ratio=0.1, grad_clip=1.0, eval_every=250, checkpoint_every=250),
    data=TextData(corpora=(text.KJV, text.STDLIB), weights=(0.8, 0.2), vocab_size=3072, seq_len=128,
                  eval_windows=128),
    notes="vocab 3072 keeps the float32 weights under 20 MB (4096 would be 21 MB). Windows of 128 tokens, "
    "batch 8, 1300 steps: one thread of a busy shared 2-core machine ran 0.46 steps/s (256 x 16 windows took "
    "5.4 s/step), so the run fits in ~50 min; n_ctx = seq_len so no position row is left untrained.",
))

_FORMAL_MODEL = dict(n_layers=1, d_model=32, n_heads=2, d_head=16, d_mlp=64, n_ctx=64, act_fn="relu",
                     normalization_type="LN", positional_embedding_type="none", causal=True)

register(Recipe(
    name="majority-1l",
    summary="MAJORITY (more 1s than 0s) on strings of length 1..32; 1 layer, no positional embedding",
    model=dict(_FORMAL_MODEL),
    train=TrainParams(steps=1000, batch_size=64, lr=3e-3, warmup_steps=100, eval_every=250, checkpoint_every=500),
    data=FormalData(language="majority", min_len=1, max_len=32),
))

register(Recipe(
    name="parity-1l",
    summary="PARITY (odd number of 1s) on strings of length 1..16; 1 layer (hard for transformers to learn)",
    model=dict(_FORMAL_MODEL),
    train=TrainParams(steps=4000, batch_size=64, lr=3e-3, warmup_steps=100, eval_every=500, checkpoint_every=500),
    data=FormalData(language="parity", min_len=1, max_len=16),
))

register(Recipe(
    name="dyck1-1l",
    summary="Dyck-1 (balanced brackets) on even lengths 2..32, whole-string label; 1 layer",
    model=dict(_FORMAL_MODEL),
    train=TrainParams(steps=2000, batch_size=64, lr=3e-3, warmup_steps=100, eval_every=250, checkpoint_every=500),
    data=FormalData(language="dyck1", min_len=2, max_len=32, even_only=True),
))

register(Recipe(
    name="addition-2l",
    summary="5-digit addition, 2 layers, 4 heads, d_model 128 (goes past the paper: a second layer for cascades)",
    model=dict(n_layers=2, d_model=128, n_heads=4, d_head=32, d_mlp=512,
               n_ctx=addition.example_length(addition.N_DIGITS), act_fn="relu", normalization_type="LN",
               positional_embedding_type="standard", causal=True),
    train=TrainParams(steps=3000, batch_size=64, lr=1e-3, weight_decay=0.1, betas=(0.9, 0.98), warmup_steps=100,
                      schedule="cosine", min_lr_ratio=0.1, grad_clip=1.0, decay_all=True, eval_every=250,
                      checkpoint_every=250),
    data=AdditionData(),
    notes="Quirke, Neo & Barez (2024) solve cascades with 2 layers at d_model 510; d_model 128 (0.4 M parameters) "
    "makes a step ~8x cheaper on a shared CPU, and lr 1e-3 with cosine decay suits the smaller width. Data as "
    "addition-1l (20%/20% sum-9 enrichment). See docs/addition.md.",
))
