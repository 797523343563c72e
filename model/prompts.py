"""Every text the model reads or writes: FERID-style questions, the attribute and prior
sentences, FEALLM-style FE<->AU reasoning answers, few-shot examples, and the parser that
turns a free-text description back into labels.

A prompt is built from segments so the scorer can cache what is shared::

    [system + "USER:"]            shared by every face of a batch (KV computed once)
    [<face> visual tokens </face>  one per face (one prefill per face)
     attribute + prior sentences]
    [question + "ASSISTANT:"]     one per question (FE category, each AU yes/no, description)
    [answer]                      scored by likelihood, or generated

Formats follow EMO-LLaMA's FERID instructions (category question with an option list;
free conversation) and FEALLM's FE<->AU causal reasoning ("happiness, because AU06 Cheek
Raiser and AU12 Lip Corner Puller are active").
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Collection, Sequence

import numpy as np

from model.taxonomy import AU_DESCRIPTIONS, AU_NAMES, FE_BASIC, FE_PROTOTYPE_AUS, FE_SYNONYMS

USER = "USER:"
ASSISTANT = "ASSISTANT:"
FACE_OPEN = "<face>"
FACE_CLOSE = "</face>"

# FERID lists the options in RAF-DB order; probability vectors stay in FE_BASIC order.
FERID_OPTION_ORDER: tuple[str, ...] = ("surprise", "fear", "disgust", "happiness", "sadness", "anger",
                                       "neutral", "contempt")


@dataclasses.dataclass(frozen=True)
class FaceText:
    """Per-face facts stated in text. ``fe_prior``: (7,) FE_BASIC order or None; ``au_prior``:
    (23,) AU probabilities (NaN = unavailable) or None."""

    age: float | None = None
    gender: str | None = None
    race: str | None = None
    fe_prior: np.ndarray | None = None
    au_prior: np.ndarray | None = None


# ----------------------------------------------------------------------------- segments

def system_prefix(system: str) -> str:
    """The shared prefix: system text and the user turn marker (identical for every face)."""
    return f"{system}\n{USER} "


def _gender_noun(gender: str | None) -> str | None:
    if gender is None:
        return None
    g = str(gender).strip().lower()
    if g in ("f", "female", "woman", "w", "girl"):
        return "woman"
    if g in ("m", "male", "man", "boy"):
        return "man"
    return None


def attribute_sentence(age: float | None, gender: str | None, race: str | None = None,
                       include_race: bool = False) -> str:
    """``"The person appears to be a 34-year-old woman."``; empty when nothing is known.

    Race is only stated when ``include_race`` is set and a value was supplied; mien never
    infers it."""
    noun = _gender_noun(gender)
    has_age = age is not None and not (isinstance(age, float) and math.isnan(age)) and age > 0
    race_word = f"{race.strip()} " if include_race and race else ""
    if has_age and noun:
        return f"The person appears to be a {round(float(age))}-year-old {race_word}{noun}."
    if has_age:
        return f"The {race_word}person appears to be about {round(float(age))} years old."
    if noun:
        return f"The person appears to be a {race_word}{noun}."
    return f"The person appears to be {race.strip()}." if race_word else ""


def active_aus(au_prior: np.ndarray | None, top_k: int, threshold: float = 0.5) -> list[str]:
    """Names of the ``top_k`` most probable AUs above ``threshold`` (NaN = unavailable)."""
    if au_prior is None:
        return []
    p = np.nan_to_num(np.asarray(au_prior, dtype=np.float64), nan=-1.0)
    order = np.argsort(-p, kind="stable")
    return [AU_NAMES[i] for i in order[:top_k] if p[i] >= threshold]


def prior_sentence(fe_prior: np.ndarray | None, au_prior: np.ndarray | None, top_k: int = 4) -> str:
    """The face prior's reading in words, e.g. ``"Facial measurements suggest happiness (82 %);
    active action units: AU06 Cheek Raiser, AU12 Lip Corner Puller."``."""
    parts = []
    if fe_prior is not None and np.all(np.isfinite(fe_prior)):
        i = int(np.argmax(fe_prior))
        parts.append(f"Facial measurements suggest {FE_BASIC[i]} ({round(100 * float(fe_prior[i]))} %)")
    aus = active_aus(au_prior, top_k)
    if au_prior is not None and np.isfinite(au_prior).any():
        listed = ", ".join(f"{a} {AU_DESCRIPTIONS[a]}" for a in aus) if aus else "none"
        parts.append(f"active action units: {listed}")
    return ("; ".join(parts) + ".") if parts else ""


def face_context(face: FaceText, attributes: bool = True, prior_as_text: bool = True,
                 include_race: bool = False, top_aus: int = 4) -> str:
    """Text that follows the face's visual tokens inside the user turn."""
    bits = []
    if attributes:
        bits.append(attribute_sentence(face.age, face.gender, face.race, include_race))
    if prior_as_text:
        bits.append(prior_sentence(face.fe_prior, face.au_prior, top_aus))
    text = " ".join(b for b in bits if b)
    return f" {text}" if text else ""


def fe_question(classes: Sequence[str]) -> str:
    """FERID category question with the option list."""
    options = [c for c in FERID_OPTION_ORDER if c in classes] + [c for c in classes if c not in FERID_OPTION_ORDER]
    return ("\nWhat is the facial expression of the person in the image? Choose one from the following "
            f"options: {{{', '.join(options)}}}.\n{ASSISTANT}")


def au_question(au: str) -> str:
    """Yes/no question for one action unit."""
    return f"\nIs {au} ({AU_DESCRIPTIONS[au]}) present on this face? Answer yes or no.\n{ASSISTANT}"


def au_detection_question(aus: Sequence[str]) -> str:
    """Multi-label AU question listing the candidate AUs; the answer names the active ones
    (``"AU06 Cheek Raiser, AU12 Lip Corner Puller"``) or ``"none"``."""
    options = ", ".join(f"{a} {AU_DESCRIPTIONS[a]}" for a in aus)
    return (f"\nWhat action units are active on this face? Choose from the following options: {{{options}}}."
            f"\n{ASSISTANT}")


def question_segment(question: str) -> str:
    """A plain question text as the segment that follows the face (``"\\n{question}\\nASSISTANT:"``)."""
    return f"\n{question.strip()}\n{ASSISTANT}"


def describe_question(reading: str = "") -> str:
    """FERID conversation turn asking for FEALLM-style FE<->AU reasoning. ``reading``: the scores
    the description must agree with, in words (:func:`prior_sentence` of the final scores), stated
    right before the request so the LLM describes them rather than reading the face anew."""
    stated = f"{reading.strip()} " if reading and reading.strip() else ""
    return (f"\n{stated}Describe the facial expression of the person: the brows, eyes and mouth, the action units "
            f"that are active, and the emotion they show, with the reason.\n{ASSISTANT}")


def answer_text(answer: str) -> str:
    """How an answer follows ``ASSISTANT:`` (a leading space, as in natural text)."""
    return f" {answer}"


YES, NO = "yes", "no"


# ------------------------------------------------------------------- reasoning answers

_AU_PHRASES: dict[str, str] = {
    "AU01": "the inner brows are raised", "AU02": "the outer brows are raised",
    "AU04": "the brows are lowered and drawn together", "AU05": "the upper lids are raised",
    "AU06": "the cheeks are raised", "AU07": "the lids are tightened", "AU09": "the nose is wrinkled",
    "AU10": "the upper lip is raised", "AU12": "the lip corners are pulled up", "AU14": "the cheeks are dimpled",
    "AU15": "the lip corners are pulled down", "AU16": "the lower lip is pulled down",
    "AU17": "the chin is raised", "AU18": "the lips are puckered", "AU20": "the lips are stretched",
    "AU22": "the lips are funneled", "AU23": "the lips are tightened", "AU24": "the lips are pressed",
    "AU25": "the lips are parted", "AU26": "the jaw is dropped", "AU27": "the mouth is stretched open",
    "AU43": "the eyes are closed", "AU45": "the eyes blink",
}


def fe_phrase(fe: str) -> str:
    """How an answer names an expression: ``"happiness"``, ``"a neutral expression"``."""
    return "a neutral expression" if fe == "neutral" else fe


def answer_opening(fe: str | None = None) -> str:
    """Start of a description answer; with ``fe`` it already names the expression."""
    return "The person shows" if fe is None else f"The person shows {fe_phrase(fe)}"


def _au_list(aus: Sequence[str]) -> str:
    names = [f"{a} {AU_DESCRIPTIONS[a]}" for a in aus]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def anchored_opening(fe: str, aus: Sequence[str]) -> str:
    """Answer start that already states the label and its supporting AUs; the LLM continues
    with the plain-language phrasing (``"...because AU12 Lip Corner Puller is active:"``)."""
    aus = [a for a in aus if a in AU_DESCRIPTIONS]
    if not aus:
        return f"{answer_opening(fe)}:"
    return f"{answer_opening(fe)}, because {_au_list(aus)} {'is' if len(aus) == 1 else 'are'} active:"


def supporting_aus(fe: str, au_probs: np.ndarray, threshold: float = 0.5, limit: int = 3) -> list[str]:
    """Active AUs (probability >= ``threshold``) among ``fe``'s prototype AUs, strongest first;
    empty when none is active - an active AU that does not belong to the expression is no reason."""
    p = np.nan_to_num(np.asarray(au_probs, dtype=np.float64), nan=-1.0)
    proto = FE_PROTOTYPE_AUS.get(fe, ())
    return [AU_NAMES[i] for i in np.argsort(-p, kind="stable") if p[i] >= threshold and AU_NAMES[i] in proto][:limit]


def reasoning_answer(fe: str, aus: Sequence[str]) -> str:
    """FEALLM-style FE<->AU reasoning, used as training target and few-shot example.

    ``reasoning_answer("happiness", ["AU06", "AU12"])`` ->
    "The person shows happiness, because AU06 Cheek Raiser and AU12 Lip Corner Puller are
    active: the cheeks are raised and the lip corners are pulled up."
    """
    aus = [a for a in aus if a in AU_DESCRIPTIONS]
    if not aus:
        if fe == "neutral":
            return f"{answer_opening(fe)}: the face is relaxed and no action unit is clearly active."
        return f"{answer_opening(fe)}."
    phrases = [_AU_PHRASES.get(a, a) for a in aus]
    look = phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]
    return f"{anchored_opening(fe, aus)} {look}."


def few_shot_block() -> str:
    """Worked examples that show a base LLM the description format (no face tokens)."""
    shots = [
        (FaceText(age=34, gender="female", fe_prior=_onehot("happiness", 0.9),
                  au_prior=_au_vec({"AU06": 0.8, "AU12": 0.95})), "happiness", ["AU06", "AU12"]),
        (FaceText(age=51, gender="male", fe_prior=_onehot("anger", 0.8),
                  au_prior=_au_vec({"AU04": 0.9, "AU07": 0.7, "AU23": 0.6})), "anger", ["AU04", "AU07", "AU23"]),
    ]
    lines = []
    for face, fe, aus in shots:
        reading = prior_sentence(face.fe_prior, face.au_prior)  # as generation states the scores
        lines.append(f"{USER} {FACE_OPEN}{FACE_CLOSE}{face_context(face)}{describe_question(reading)}"
                     f"{answer_text(reasoning_answer(fe, aus))}")
    return "\n".join(lines) + "\n"


def _onehot(fe: str, p: float) -> np.ndarray:
    v = np.full(len(FE_BASIC), (1 - p) / (len(FE_BASIC) - 1), dtype=np.float32)
    v[FE_BASIC.index(fe)] = p
    return v


def _au_vec(values: dict[str, float]) -> np.ndarray:
    v = np.zeros(len(AU_NAMES), dtype=np.float32)
    for k, x in values.items():
        v[AU_NAMES.index(k)] = x
    return v


# --------------------------------------------------------------------------- parsing

_FE_WORDS: dict[str, str] = {
    **{k: v for k, v in FE_SYNONYMS.items()},
    **{c: c for c in FE_BASIC + ("contempt",)},
    "joyful": "happiness", "cheerful": "happiness", "delighted": "happiness", "pleased": "happiness",
    "amused": "happiness", "smiling": "happiness",
    "unhappy": "sadness", "sorrowful": "sadness", "upset": "sadness", "grief": "sadness",
    "astonished": "surprise", "amazed": "surprise", "startled": "surprise", "shocked": "surprise",
    "frightened": "fear", "terrified": "fear", "anxious": "fear",
    "revolted": "disgust", "repulsed": "disgust", "disgust": "disgust",
    "furious": "anger", "annoyed": "anger", "irritated": "anger", "mad": "anger",
    "expressionless": "neutral", "relaxed": "neutral",
}

_AU_WORDS: dict[str, str] = {}
for _au, _desc in AU_DESCRIPTIONS.items():
    _AU_WORDS[_desc.lower()] = _au
for _au, _phrase in _AU_PHRASES.items():
    _AU_WORDS[_phrase.split(" the ", 1)[-1].removeprefix("the ")] = _au
_AU_WORDS.update({"raised cheeks": "AU06", "wrinkled nose": "AU09", "dropped jaw": "AU26",
                  "parted lips": "AU25", "furrowed brows": "AU04", "frown": "AU04"})

_NEGATION = re.compile(r"\b(not|no|never|without|neither|nor|none|absent|lacks?|lacking|cannot)\b|n't\b"
                       r"|\brather than\b|\binstead of\b", re.IGNORECASE)
_SENTENCE_SPLIT = re.compile(r"(?<=[.!?;:])\s+|\n+")
# A contrastive or causal conjunction, or a comma followed by a negation cue, starts a new clause.
_CLAUSE_SPLIT = re.compile(r",?\s+\b(?:but|however|whereas|while|although|though|yet|because|since)\b\s+"
                           r"|,\s+(?=(?:not|no|never)\b)", re.IGNORECASE)
# The plain parts of a negated clause ("the face is relaxed and no action unit is active").
_PART_SPLIT = re.compile(r",\s*|\s+\band\b\s+", re.IGNORECASE)
_AU_CODE = re.compile(r"\b(?:AU|action unit)\s?0?(\d{1,2})\b", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class ParsedDescription:
    """Labels read back from a description. ``fe_label``: the first expression named outside
    negated clauses (answers lead with it: "The person shows X, because ..."), None when there
    is none; ``fe_mentions`` counts each class."""

    fe_label: str | None
    aus: tuple[str, ...]
    fe_mentions: dict[str, int]


def _sentences(text: str) -> list[str]:
    return [s for s in _SENTENCE_SPLIT.split(text) if s and s.strip()]


def _clauses(text: str) -> list[str]:
    out = []
    for sentence in _sentences(text):
        out.extend(c for c in _CLAUSE_SPLIT.split(sentence) if c and c.strip())
    return out


def _find_words(clause: str, lexicon: dict[str, str]) -> list[tuple[int, str]]:
    hits = []
    low = clause.lower()
    taken = np.zeros(len(low) + 1, dtype=bool)
    for word in sorted(lexicon, key=len, reverse=True):  # longest first: "unhappy" before "happy"
        for m in re.finditer(rf"\b{re.escape(word)}\b", low):
            if not taken[m.start():m.end()].any():
                taken[m.start():m.end()] = True
                hits.append((m.start(), lexicon[word]))
    return sorted(hits)


def _named(clause: str) -> tuple[list[tuple[int, str]], list[str]]:
    """Expressions (offset, class; any class the lexicon knows) and AUs a clause names."""
    aus: list[str] = []
    for m in _AU_CODE.finditer(clause):
        name = f"AU{int(m.group(1)):02d}"
        if name in AU_DESCRIPTIONS and name not in aus:
            aus.append(name)
    for _, au in _find_words(clause, _AU_WORDS):
        if au not in aus:
            aus.append(au)
    return _find_words(clause, _FE_WORDS), aus


def parse_description(text: str | None, classes: Sequence[str] = FE_BASIC) -> ParsedDescription:
    """Expression and AUs named in ``text``, ignoring clauses that carry a negation.

    "The person is happy, not sad. There is no AU04." -> happiness, no AUs."""
    if not text:
        return ParsedDescription(None, (), {})
    counts: dict[str, int] = {}
    first: dict[str, int] = {}
    aus: list[str] = []
    pos = 0
    for clause in _clauses(text):
        pos += 1
        if _NEGATION.search(clause):
            continue
        fes, named = _named(clause)
        for off, fe in fes:
            if fe in classes:
                counts[fe] = counts.get(fe, 0) + 1
                first.setdefault(fe, pos * 10_000 + off)
        aus.extend(a for a in named if a not in aus)
    label = min(counts, key=lambda c: first[c]) if counts else None
    ordered = tuple(a for a in AU_NAMES if a in aus)
    return ParsedDescription(label, ordered, counts)


def contradicts(text: str, fe: str, active: Collection[str]) -> bool:
    """Whether ``text`` says something the scores do not: an expression other than ``fe`` or an AU
    outside ``active`` (below the threshold or not measured), or that ``fe`` or an active AU is
    absent. A negated clause is read part by part (``"the face is relaxed and no AU is active"``):
    :func:`parse_description` skips it whole, but a reader sees its plain parts."""
    for clause in _clauses(text):
        parts = _PART_SPLIT.split(clause) if _NEGATION.search(clause) else [clause]
        for part in parts:
            if _NEGATION.search(part):  # what it denies: "the lip corners are not pulled up" -> AU12
                fes, aus = _named(" ".join(_NEGATION.sub(" ", part).split()))
                if any(f == fe for _, f in fes) or any(a in active for a in aus):
                    return True
                continue
            fes, aus = _named(part)
            if any(f != fe for _, f in fes) or any(a not in active for a in aus):
                return True
    return False


def consistent_description(text: str, fe: str, au_probs: np.ndarray, threshold: float = 0.5,
                           opening: str = "") -> str:
    """``text`` (a generated description) without the sentences that contradict the scores (see
    :func:`contradicts`): the label ``fe`` (the top FE class) and ``au_probs`` (23, NaN = not
    measured; active = at least ``threshold``). A model's free text can name any expression or AU -
    a small or untrained LLM does - and the output must never state what its own scores deny.
    ``opening``: the anchored start the answer was forced to begin with (kept as is). When nothing
    the LLM wrote survives, the description is the template :func:`reasoning_answer` of the
    scores; the result never contradicts them."""
    p = np.asarray(au_probs, dtype=np.float64)
    active = {a for a, x in zip(AU_NAMES, p, strict=True) if x >= threshold}  # NaN compares False
    text = text or ""
    opened = bool(opening) and text.startswith(opening)
    rest = text[len(opening):] if opened else text
    added = " ".join(s.strip() for s in _sentences(rest) if not contradicts(s, fe, active))
    result = f"{opening} {added}" if opened else added
    if added and not contradicts(result, fe, active):  # re-read whole: joined sentences may split otherwise
        return result
    return reasoning_answer(fe, supporting_aus(fe, p, threshold))


def prototype_aus(fe: str) -> tuple[str, ...]:
    return FE_PROTOTYPE_AUS.get(fe, ())


def prompt_corpus() -> str:
    """Every fixed text the prompts use (for building a small word-level tokenizer)."""
    from model.config import PromptConfig

    texts = [PromptConfig().system, system_prefix(""), fe_question(FERID_OPTION_ORDER), describe_question(),
             few_shot_block(), YES, NO, FACE_OPEN, FACE_CLOSE,
             "The person appears to be a year-old woman man about years old. Facial measurements suggest %",
             "active action units: none", answer_opening(), reasoning_answer("neutral", ()),
             au_detection_question(AU_NAMES), "none"]
    texts += [au_question(a) for a in AU_NAMES]
    texts += [reasoning_answer(fe, prototype_aus(fe)) for fe in FE_BASIC + ("contempt",)]
    texts += list(_FE_WORDS) + list(_AU_WORDS) + list(AU_DESCRIPTIONS.values()) + list(_AU_PHRASES.values())
    return "\n".join(texts)
