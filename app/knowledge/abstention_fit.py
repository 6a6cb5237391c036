"""Fitting the abstention model on labelled questions, and judging it on questions it did not see.

A fit is a logistic regression over the standardised signals with a light ridge penalty (numpy and
scipy), each question set weighing the same and, within a set, its answerable and unanswerable
questions the same. Every signal measures how well the documents match, so a weight may only say
"the higher, the likelier an answer": a signal that does not help gets weight 0 rather than a sign
that would make `--why` nonsense. The threshold is the one with the best F1 over out-of-fold
probabilities (the mean over sets). Folds are drawn from a hash of each question, so a refit on the
same data gives the same coefficients. Held-out figures refit everything, threshold included, without
the fold they score, over several draws of the folds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize

from app.knowledge.abstention import SIGNALS, AbstentionModel, Signals

FOLDS = 5
REPEATS = 4  # draws of the folds that held-out figures add up
# The ridge penalty on standardised signals, chosen by cross-validated F1 over the eval sets (1 to 300
# tried; 10 was best, and the figures barely move between 3 and 30).
L2 = 10.0
DECIMALS = 4

Decide = Callable[[Signals], bool]  # True: abstain


@dataclass(frozen=True)
class Example:
    question: str
    group: str  # the question set it belongs to
    signals: Signals
    unanswerable: bool


@dataclass(frozen=True)
class Scores:
    """Abstention judged as the detection of unanswerable questions."""

    true: int  # unanswerable, abstained
    false: int  # answerable, abstained
    missed: int  # unanswerable, answered

    @property
    def precision(self) -> float:
        return self.true / (self.true + self.false) if self.true + self.false else 1.0

    @property
    def recall(self) -> float:
        return self.true / (self.true + self.missed) if self.true + self.missed else 1.0

    @property
    def f1(self) -> float:
        return 2 * self.true / (2 * self.true + self.false + self.missed) if self.true else 0.0

    @classmethod
    def of(cls, abstained: Sequence[bool], unanswerable: Sequence[bool]) -> Scores:
        pairs = list(zip(abstained, unanswerable, strict=True))
        return cls(
            sum(a and u for a, u in pairs), sum(a and not u for a, u in pairs), sum(u and not a for a, u in pairs)
        )


def fit(examples: Sequence[Example], fitted_on: str, signals: Sequence[str] = SIGNALS) -> AbstentionModel:
    """The model fitted on all of `examples`, using only `signals` (the others get weight 0)."""
    _check(examples)
    weights, centre, bias = _logistic(examples, signals)
    folds = _folds(examples)
    probability = np.zeros(len(examples))
    for fold in range(FOLDS):
        train = [e for e, f in zip(examples, folds, strict=True) if f != fold]
        test = [n for n, f in enumerate(folds) if f == fold]
        if test:
            model = AbstentionModel(*_logistic(train, signals), threshold=0.5, fitted_on="")
            probability[test] = [model.probability(examples[n].signals) for n in test]
    threshold = _best_threshold(probability, examples)
    return AbstentionModel(
        {name: round(w, DECIMALS) for name, w in weights.items()},
        {name: round(c, DECIMALS) for name, c in centre.items()},
        round(bias, DECIMALS),
        round(min(max(threshold, 10**-DECIMALS), 1 - 10**-DECIMALS), DECIMALS),
        fitted_on,
    )


def held_out(examples: Sequence[Example], decider: Callable[[Sequence[Example]], Decide]) -> dict[str, Scores]:
    """Per question set, the scores of decisions made by `decider(training examples)` on each fold
    it was not given, added up over REPEATS draws of the folds."""
    abstained: list[bool] = []
    for draw in range(REPEATS):
        folds = _folds(examples, draw)
        decisions = [False] * len(examples)
        for fold in range(FOLDS):
            decide = decider([e for e, f in zip(examples, folds, strict=True) if f != fold])
            for n, f in enumerate(folds):
                if f == fold:
                    decisions[n] = decide(examples[n].signals)
        abstained += decisions
    return {
        group: Scores.of(
            [a for a, e in zip(abstained, examples * REPEATS, strict=True) if e.group == group],
            [e.unanswerable for e in examples * REPEATS if e.group == group],
        )
        for group in dict.fromkeys(e.group for e in examples)
    }


def signals_model(signals: Sequence[str] = SIGNALS) -> Callable[[Sequence[Example]], Decide]:
    """A decider: the model refitted on the training examples."""

    def decider(train: Sequence[Example]) -> Decide:
        model = fit(train, "", signals)
        return lambda s: model.probability(s) >= model.threshold

    return decider


def cosine_threshold(train: Sequence[Example]) -> Decide:
    """A decider: the old rule, abstain below one cosine, with the threshold refitted as the model's is."""
    _check(train)
    threshold = -_best_threshold(np.array([-e.signals.similarity for e in train]), train)
    return lambda s: s.similarity < threshold


def _check(examples: Sequence[Example]) -> None:
    if not any(e.unanswerable for e in examples) or all(e.unanswerable for e in examples):
        raise ValueError("fitting abstention needs answerable questions and unanswerable ones (expected_source null)")


def _folds(examples: Sequence[Example], draw: int = 0) -> list[int]:
    """Each (set, answerable or not) spread evenly over the folds, in the order of a hash of the question."""
    folds = [0] * len(examples)
    strata: dict[tuple[str, bool], list[int]] = {}
    for n, e in enumerate(examples):
        strata.setdefault((e.group, e.unanswerable), []).append(n)
    for members in strata.values():
        members.sort(key=lambda n: (hashlib.sha256(f"{draw}:{examples[n].question}".encode()).hexdigest(), n))
        for position, n in enumerate(members):
            folds[n] = position % FOLDS
    return folds


def _weights(examples: Sequence[Example]) -> np.ndarray:
    """Every (set, answerable or not) weighs the same in total; the weights sum to the number of questions."""
    counts: dict[tuple[str, bool], int] = {}
    for e in examples:
        counts[e.group, e.unanswerable] = counts.get((e.group, e.unanswerable), 0) + 1
    weights = np.array([1.0 / counts[e.group, e.unanswerable] for e in examples])
    return weights * len(examples) / weights.sum()


def _logistic(examples: Sequence[Example], signals: Sequence[str]) -> tuple[dict[str, float], dict[str, float], float]:
    """Weights, centre and bias of a ridge logistic regression on the standardised `signals`, each
    weight at most 0 (a better match never makes abstaining likelier)."""
    columns = [SIGNALS.index(name) for name in signals]
    x = np.array([[e.signals.values()[c] for c in columns] for e in examples], dtype=np.float64)
    y = np.array([e.unanswerable for e in examples], dtype=np.float64)
    w = _weights(examples)
    mean = np.average(x, axis=0, weights=w)
    scale = np.sqrt(np.average((x - mean) ** 2, axis=0, weights=w))
    scale[scale == 0] = 1.0
    z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])

    def loss(b: np.ndarray) -> tuple[float, np.ndarray]:
        s = z @ b
        penalty = np.r_[b[:-1], 0.0]
        gradient = z.T @ (w * (1.0 / (1.0 + np.exp(-s)) - y)) + L2 * penalty
        return float(np.sum(w * (np.logaddexp(0.0, s) - y * s)) + 0.5 * L2 * penalty @ penalty), gradient

    bounds = [(None, 0.0)] * len(signals) + [(None, None)]
    b = minimize(loss, np.zeros(z.shape[1]), jac=True, method="L-BFGS-B", bounds=bounds, options={"gtol": 1e-10}).x
    weights = dict.fromkeys(SIGNALS, 0.0)
    centre = dict.fromkeys(SIGNALS, 0.0)
    for k, name in enumerate(signals):
        weights[name] = float(b[k] / scale[k])
        centre[name] = float(mean[k])
    return weights, centre, float(b[-1])


def _best_threshold(scores: np.ndarray, examples: Sequence[Example]) -> float:
    """The cut (abstain at `scores` ≥ it) with the best F1, averaged over the sets that have unanswerable
    questions; halfway between the last score it takes in and the next one down."""
    order = np.argsort(-scores, kind="stable")
    ranked = scores[order]
    unanswerable = np.array([examples[n].unanswerable for n in order])
    groups = np.array([examples[n].group for n in order])
    ends = np.r_[np.flatnonzero(ranked[1:] != ranked[:-1]), len(ranked) - 1]  # the last of each run of ties
    f1 = []
    for group in dict.fromkeys(groups):
        mine = groups == group
        positives = int((unanswerable & mine).sum())
        if positives:
            true = np.cumsum(unanswerable & mine)[ends]
            taken = np.cumsum(mine)[ends]
            f1.append(2 * true / (taken + positives))
    best = int(np.argmax(np.mean(f1, axis=0)))
    below = ranked[ends[best] + 1] if ends[best] + 1 < len(ranked) else ranked[ends[best]] - 1.0
    return float((ranked[ends[best]] + below) / 2)
