"""Answers without the model: the best sentences of the best passage, made fit to be read aloud.

Used when no model is configured, and when the model fails or misses its first-token deadline,
so the caller always hears something true from the documents or an honest "I don't know".
"""

from __future__ import annotations

import re

import numpy as np

from app.knowledge.index import QueryEncoder
from app.knowledge.retrieval import Retrieval

NO_ANSWER = (
    "I'm sorry, I don't have information about that in our documents. "
    "I can take a message for the team, or you can ask me something else."
)
CANNOT_LOOK_UP = "I'm sorry, I can't look that up right now. I can take a message and someone will call you back."
SENTENCES = 2

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])")
_URL = re.compile(r"\b(?:https?://|www\.)\S+", re.IGNORECASE)
_EMAIL = re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.]+\b")
_MARKUP = re.compile(r"(\*\*|__|`|^#+\s*|^\s*[-*•]\s+|^\s*\d+[.)]\s+|\|)", re.MULTILINE)


def speakable(text: str) -> str:
    """Strip what a voice should not read: markdown, table rules, URLs and addresses spelled out."""
    text = _URL.sub("on our website", text)
    text = _EMAIL.sub("by email", text)
    text = _MARKUP.sub(" ", text)
    return re.sub(r"\s+", " ", text).strip()


def sentences(text: str) -> list[str]:
    parts = (speakable(part) for part in _SENTENCE_END.split(text.replace("\n", " ")))
    return [part for part in parts if len(part.split()) >= 3]


def extractive_answer(retrieval: Retrieval, question: str, encoder: QueryEncoder) -> str:
    """Blocking (embeds a handful of sentences): run it in a thread."""
    if retrieval.abstain or not retrieval.passages:
        return NO_ANSWER
    best = retrieval.passages[0]
    candidates = sentences(best.text)
    if not candidates:
        return NO_ANSWER
    if len(candidates) > SENTENCES:
        asked = encoder.encode(question)
        scores = np.array([encoder.encode(sentence) @ asked for sentence in candidates])
        keep = sorted(np.argsort(-scores)[:SENTENCES])  # in the passage's own order
        candidates = [candidates[i] for i in keep]
    chosen = " ".join(s if s.endswith((".", "!", "?")) else f"{s}." for s in candidates)
    return f"Here's what our information says. {chosen}"
