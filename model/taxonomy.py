"""Facial-expression class sets and FACS action units: the label vocabulary of mien.

Canonical FE names follow the FERID instruction format of EMO-LLaMA (``happiness``,
``sadness``, ...). Dataset class sets map their own names and orderings onto them.
AU names are ``AU01`` … ``AU45`` (two digits), with FACS descriptions.
"""

from __future__ import annotations

# The seven basic expressions, in the order used by every probability vector in mien.
FE_BASIC: tuple[str, ...] = ("neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger")
FE_EXTENDED_AFFECTNET8 = FE_BASIC + ("contempt",)

# Per-dataset class sets in each dataset's own label order (index = dataset label id).
DATASET_CLASSES: dict[str, tuple[str, ...]] = {
    # RAF-DB basic: 1 Surprise, 2 Fear, 3 Disgust, 4 Happiness, 5 Sadness, 6 Anger, 7 Neutral
    "rafdb": ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral"),
    # AffectNet: 0 Neutral, 1 Happy, 2 Sad, 3 Surprise, 4 Fear, 5 Disgust, 6 Anger, 7 Contempt
    "affectnet7": ("neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger"),
    "affectnet8": ("neutral", "happiness", "sadness", "surprise", "fear", "disgust", "anger", "contempt"),
    # FERPlus: neutral, happiness, surprise, sadness, anger, disgust, fear, contempt
    "ferplus": ("neutral", "happiness", "surprise", "sadness", "anger", "disgust", "fear", "contempt"),
    # DFEW / FERV39k: 1 happy, 2 sad, 3 neutral, 4 angry, 5 surprise, 6 disgust, 7 fear
    "dfew": ("happiness", "sadness", "neutral", "anger", "surprise", "disgust", "fear"),
    "ferv39k": ("happiness", "sadness", "neutral", "anger", "surprise", "disgust", "fear"),
    # MAFW: 11 single-label classes
    "mafw": ("anger", "disgust", "fear", "happiness", "neutral", "sadness", "surprise",
             "contempt", "anxiety", "helplessness", "disappointment"),
}

# Synonyms seen in label files and model outputs, mapped to canonical names.
FE_SYNONYMS: dict[str, str] = {
    "happy": "happiness", "joy": "happiness", "smile": "happiness",
    "sad": "sadness", "sorrow": "sadness",
    "angry": "anger", "anger": "anger",
    "surprised": "surprise", "surprise": "surprise",
    "fearful": "fear", "afraid": "fear", "scared": "fear",
    "disgusted": "disgust",
    "neutral": "neutral", "calm": "neutral",
    "contemptuous": "contempt",
}


def canonical_fe(name: str) -> str:
    """Canonical FE name for a label string; raises KeyError for an unknown label."""
    key = name.strip().lower()
    if key in FE_SYNONYMS:
        return FE_SYNONYMS[key]
    for classes in DATASET_CLASSES.values():
        if key in classes:
            return key
    raise KeyError(f"unknown expression label {name!r}")


# FACS action units (Ekman & Friesen) used by mien, with their names.
AU_DESCRIPTIONS: dict[str, str] = {
    "AU01": "Inner Brow Raiser", "AU02": "Outer Brow Raiser", "AU04": "Brow Lowerer",
    "AU05": "Upper Lid Raiser", "AU06": "Cheek Raiser", "AU07": "Lid Tightener",
    "AU09": "Nose Wrinkler", "AU10": "Upper Lip Raiser", "AU11": "Nasolabial Deepener",
    "AU12": "Lip Corner Puller", "AU13": "Sharp Lip Puller", "AU14": "Dimpler",
    "AU15": "Lip Corner Depressor", "AU16": "Lower Lip Depressor", "AU17": "Chin Raiser",
    "AU18": "Lip Pucker", "AU20": "Lip Stretcher", "AU22": "Lip Funneler",
    "AU23": "Lip Tightener", "AU24": "Lip Pressor", "AU25": "Lips Part",
    "AU26": "Jaw Drop", "AU27": "Mouth Stretch", "AU28": "Lip Suck", "AU43": "Eyes Closed",
    "AU45": "Blink",
}

# The AUs mien annotates, in the order of every AU vector (au_evidence, au_probs).
AU_NAMES: tuple[str, ...] = (
    "AU01", "AU02", "AU04", "AU05", "AU06", "AU07", "AU09", "AU10", "AU12", "AU14", "AU15",
    "AU16", "AU17", "AU18", "AU20", "AU22", "AU23", "AU24", "AU25", "AU26", "AU27", "AU43", "AU45",
)
AU_INDEX = {name: i for i, name in enumerate(AU_NAMES)}

AU_SUBSETS: dict[str, tuple[str, ...]] = {
    "bp4d": ("AU01", "AU02", "AU04", "AU06", "AU07", "AU10", "AU12", "AU14", "AU15", "AU17", "AU23", "AU24"),
    "disfa": ("AU01", "AU02", "AU04", "AU06", "AU09", "AU12", "AU25", "AU26"),
}

# Prototypical AU combinations per expression (EMFACS-style), used for FE<->AU reasoning
# text and as a weak prior when fusing AU evidence into FE probabilities.
FE_PROTOTYPE_AUS: dict[str, tuple[str, ...]] = {
    "happiness": ("AU06", "AU12"),
    "sadness": ("AU01", "AU04", "AU15"),
    "surprise": ("AU01", "AU02", "AU05", "AU26"),
    "fear": ("AU01", "AU02", "AU04", "AU05", "AU07", "AU20", "AU26"),
    "anger": ("AU04", "AU05", "AU07", "AU23"),
    "disgust": ("AU09", "AU15", "AU16", "AU10"),
    "contempt": ("AU12", "AU14"),
    "neutral": (),
}


def au_label(name: str) -> str:
    """``"AU12 Lip Corner Puller"``."""
    return f"{name} {AU_DESCRIPTIONS[name]}"
