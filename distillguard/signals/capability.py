"""Capability classifier: hashed char+word n-grams and a linear model trained on the packaged prompt corpora.

Labels come from each corpus item's source (HumanEval -> coding, BFCL -> tool_use,
BBH / MMLU CoT / GSM8K -> reasoning, promptsource task families -> translation,
summarization, extraction, classification, writing, general) plus the small
hand-labelled :data:`~distillguard.signals.bank.BANK` (chat, grading, rewriting, ...).

Anti-leakage: the simulator draws prompts from the same corpora, so only items for
which :func:`in_train_split` is true are trained on; the others are the held-out
split the accuracy is reported on, and the simulator should draw from them
(``~in_train_split(texts)``).

The fitted model is cached under the corpora cache dir, keyed by the corpora digest
and :data:`CODE_VERSION`, and fitted on first use in a few seconds (fixed seeds).
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import joblib
import numpy as np
import polars as pl
import pyarrow as pa
import sklearn
from scipy.sparse import csr_matrix
from scipy.special import expit
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.linear_model import SGDClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import normalize

from distillguard.core import corpora
from distillguard.core.atomic import atomic_path
from distillguard.signals.bank import BANK
from distillguard.signals.text import hash_strings, splitmix64

#: Bump when features, labels or model change: invalidates cached models.
CODE_VERSION: Final = "capability-4"

#: Class labels: the corpora's capabilities plus those only the bank supplies.
CLASSES: Final = (*corpora.CAPABILITIES, "chat", "grading", "rewriting")

#: Characters of a prompt the classifier reads; the request type shows in the opening.
MAX_CHARS: Final = 400


def in_train_split(texts: pa.Array | pa.ChunkedArray | pl.Series) -> np.ndarray:
    """True for texts in the classifier's training half: ``xxh64(text) % 2 == 0``.

    The simulator should draw prompts where this is False, so quality is measured on
    prompts the classifier never saw.
    """
    series = texts if isinstance(texts, pl.Series) else pl.Series(values=texts)
    train: np.ndarray = (hash_strings(series.cast(pl.String)) % np.uint64(2)) == 0
    return train


class HashedNgrams(TransformerMixin, BaseEstimator):  # type: ignore[misc]
    """Hashed word unigrams, word bigrams and 4-character word prefixes/suffixes, L2-normalised.

    Does what sklearn's ``HashingVectorizer`` does but tokenises and hashes in
    polars / pyarrow / numpy (xxh64 of each *distinct* token), about 10x faster,
    which matters at tens of millions of prompts. Stateless: ``fit`` learns nothing.
    """

    def __init__(self, n_features: int = 2**20, max_chars: int = MAX_CHARS) -> None:
        self.n_features = n_features
        self.max_chars = max_chars

    def fit(self, texts: Any, y: Any = None) -> HashedNgrams:
        return self

    def transform(self, texts: Any) -> csr_matrix:
        series = (
            texts
            if isinstance(texts, pl.Series)
            else pl.Series(values=list(texts), dtype=pl.String)
        )
        n = len(series)
        cleaned = (
            series.cast(pl.String).fill_null("").str.slice(0, self.max_chars).str.to_lowercase()
            .str.replace_all(r"[^\p{L}\p{N}_]+", " ").str.strip_chars()
        )  # fmt: skip
        words = cleaned.str.split(" ")
        lengths = words.list.len().to_numpy().astype(np.int64)
        flat = words.explode().fill_null("")
        uni = hash_strings(flat)
        pre = hash_strings(flat.str.slice(0, 4)) ^ np.uint64(0x5BD1E995)
        suf = hash_strings(flat.str.slice(-4)) ^ np.uint64(0x1B873593)
        row = np.repeat(np.arange(n, dtype=np.int64), lengths)
        same = np.zeros(len(uni), dtype=bool)
        same[:-1] = row[1:] == row[:-1]
        nxt = np.zeros_like(uni)
        nxt[:-1] = uni[1:]
        with np.errstate(over="ignore"):
            bi = splitmix64((uni * np.uint64(31)) ^ nxt)[same]
        cols = (np.concatenate([uni, pre, suf, bi]) % np.uint64(self.n_features)).astype(np.int64)
        rows = np.concatenate([row, row, row, row[same]])
        matrix = csr_matrix(
            (np.ones(len(cols), dtype=np.float64), (rows, cols)), shape=(n, self.n_features)
        )
        matrix.sum_duplicates()
        normalised: csr_matrix = normalize(matrix)
        return normalised


def _pipeline() -> Pipeline:
    model = SGDClassifier(
        loss="log_loss", alpha=1e-5, max_iter=40, tol=None, class_weight="balanced", random_state=0
    )
    return Pipeline([("features", HashedNgrams()), ("model", model)])


@dataclass
class CapabilityModel:
    """A fitted classifier with its provenance and held-out accuracy."""

    pipeline: Pipeline
    digest: str
    heldout_accuracy_: float
    n_train_: int
    n_heldout_: int

    def predict(self, texts: pl.Series) -> tuple[pl.Series, np.ndarray]:
        """``(capability, confidence)`` per text; nulls / empty texts get a null label and NaN."""
        clipped = texts.cast(pl.String).str.slice(0, MAX_CHARS)
        present = (
            clipped.is_not_null() & (clipped.str.strip_chars().str.len_chars() > 0)
        ).to_numpy()
        labels = np.full(len(texts), None, dtype=object)
        conf = np.full(len(texts), np.nan)
        if present.any():
            # Distinct prompts only: repeated prompts are common and cost nothing twice.
            uniq = clipped.filter(pl.Series(present)).unique(maintain_order=False).sort()
            proba = linear_proba(self.pipeline, uniq)
            classes = np.asarray(self.pipeline.classes_, dtype=object)
            best = proba.argmax(axis=1)
            lookup = pl.DataFrame(
                {"t": uniq, "label": pl.Series(classes[best].tolist(), dtype=pl.String),
                 "conf": proba[np.arange(len(uniq)), best]}
            )  # fmt: skip
            joined = pl.DataFrame({"t": clipped}).join(
                lookup, on="t", how="left", maintain_order="left"
            )
            labels = np.where(present, joined["label"].to_numpy(), np.array(None, dtype=object))
            conf = np.where(present, joined["conf"].to_numpy(), np.nan)
        return pl.Series("capability", labels.tolist(), dtype=pl.String), conf.astype(np.float64)


_COEF_T: dict[int, tuple[SGDClassifier, np.ndarray]] = {}


def _coef_t(clf: SGDClassifier) -> np.ndarray:
    """``clf.coef_.T`` as a C-ordered array, made once per fitted classifier.

    ``csr @ coef_.T`` copies the Fortran-ordered transpose (2**20 x classes, ~100 MB) into C order
    on every call: that copy was ~50 ms of fixed cost per predict, however few the prompts.
    """
    held = _COEF_T.get(id(clf))
    if held is None or held[0] is not clf:
        held = (clf, np.ascontiguousarray(clf.coef_.T))
        _COEF_T[id(clf)] = held  # a race only builds the same array twice
    return held[1]


def linear_proba(pipeline: Pipeline, texts: pl.Series) -> np.ndarray:
    """``pipeline.predict_proba(texts)`` with the same arithmetic, minus sklearn's fixed per-call cost.

    For the hashed-n-gram + ``SGDClassifier(loss="log_loss")`` pipeline this is what sklearn does
    (``decision_function`` = ``X @ coef_.T + intercept_``, then OvR ``expit`` normalised per
    row), on the same sparse kernel, so the probabilities are bit-identical; any other pipeline
    goes through ``predict_proba`` itself.
    """
    steps = pipeline.named_steps
    feats, clf = steps.get("features"), steps.get("model")
    if not (
        isinstance(feats, HashedNgrams) and isinstance(clf, SGDClassifier) and clf.loss == "log_loss"
        and clf.coef_.ndim == 2 and clf.coef_.shape[0] > 1
    ):  # fmt: skip
        out: np.ndarray = pipeline.predict_proba(texts)
        return out
    scores: np.ndarray = np.asarray(feats.transform(texts) @ _coef_t(clf)) + clf.intercept_
    prob: np.ndarray = expit(scores, out=scores)
    prob_sum = prob.sum(axis=1)
    all_zero = prob_sum == 0
    if all_zero.any():  # as sklearn: uniform where every class underflowed to 0
        prob[all_zero, :] = 1
        prob_sum[all_zero] = prob.shape[1]
    prob /= prob_sum.reshape((prob.shape[0], -1))
    return prob


def training_data(corpus: pa.Table) -> tuple[list[str], list[str], list[str], list[str]]:
    """``(train_texts, train_labels, heldout_texts, heldout_labels)`` from corpus + bank."""
    texts = corpus.column("text")
    train = in_train_split(texts)
    text_list = texts.to_pylist()
    labels = corpus.column("capability").to_pylist()
    tr_x = [t for t, k in zip(text_list, train, strict=True) if k] + [t for t, _ in BANK]
    tr_y = [y for y, k in zip(labels, train, strict=True) if k] + [y for _, y in BANK]
    ho_x = [t for t, k in zip(text_list, train, strict=True) if not k]
    ho_y = [y for y, k in zip(labels, train, strict=True) if not k]
    return tr_x, tr_y, ho_x, ho_y


def corpus_digest(cache: Path | None = None) -> str:
    """SHA-256 over the corpora files, the bank and :data:`CODE_VERSION`."""
    h = hashlib.sha256(
        f"{CODE_VERSION}|polars {pl.__version__}|sklearn {sklearn.__version__}".encode()
    )
    root = corpora.corpora_dir(cache)
    for name in sorted(corpora.CORPORA):
        h.update((root / f"{name}.parquet").read_bytes())
    h.update(repr(BANK).encode())
    return h.hexdigest()


def fit_model(corpus: pa.Table, digest: str) -> CapabilityModel:
    """Fit on the training split (and bank); score accuracy on the held-out split."""
    tr_x, tr_y, ho_x, ho_y = training_data(corpus)
    pipeline = _pipeline()
    pipeline.fit(pl.Series(tr_x, dtype=pl.String), tr_y)
    predicted = pipeline.predict(pl.Series(ho_x, dtype=pl.String)) if ho_x else np.array([])
    accuracy = float(np.mean(predicted == np.asarray(ho_y))) if ho_x else float("nan")
    return CapabilityModel(pipeline, digest, accuracy, len(tr_x), len(ho_x))


_LOCK = threading.Lock()
_MODELS: dict[str, CapabilityModel] = {}


def load_model(cache: Path | None = None) -> CapabilityModel:
    """The fitted model for the current corpora: from memory, the joblib cache, or fitted now."""
    digest = corpus_digest(cache)
    with _LOCK:
        if digest in _MODELS:
            return _MODELS[digest]
        path = corpora.corpora_dir(cache) / f"capability-{digest[:20]}.joblib"
        model: CapabilityModel | None = None
        if path.is_file():
            loaded = joblib.load(path)
            if isinstance(loaded, CapabilityModel) and loaded.digest == digest:
                model = loaded
        if model is None:
            model = fit_model(corpora.load_prompts(cache=cache), digest)
            with atomic_path(path) as staged:
                joblib.dump(model, staged)
        _MODELS[digest] = model
        return model
