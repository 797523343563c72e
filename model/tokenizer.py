"""Tokenizers: the LLM's own (from its directory) or mien's built-in word-level tokenizer.

The built-in tokenizer (``llm.tokenizer: builtin:words``) covers every word of mien's
prompts, the taxonomy and numbers 0-120 with one token each, so FE class names and yes/no
are single tokens. It exists for tiny randomly initialised LLMs (tests, CPU smoke
training); it is saved as ``tokenizer.json`` with the model like any HF fast tokenizer.
"""

from __future__ import annotations

import re
from typing import Any

SPECIAL_TOKENS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "bos_token": "[BOS]", "eos_token": "[EOS]"}
_WORD = re.compile(r"\w+|[^\w\s]")


def builtin_vocabulary() -> list[str]:
    """Tokens of the built-in tokenizer, in id order (deterministic)."""
    from model.prompts import prompt_corpus

    words: list[str] = list(SPECIAL_TOKENS.values())
    seen = set(words)
    extra = [str(i) for i in range(121)] + list("abcdefghijklmnopqrstuvwxyz") + list(".,;:!?%()-'{}<>/\"")
    for w in _WORD.findall(prompt_corpus().lower()) + extra:
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


def build_builtin_tokenizer() -> Any:
    """A ``PreTrainedTokenizerFast`` over :func:`builtin_vocabulary` (lower-cased words)."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(builtin_vocabulary())}
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Punctuation(behavior="isolated")])
    tok.decoder = decoders.WordPiece(prefix="##")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)
    fast.padding_side = "left"
    return fast


def load_tokenizer(spec: str, llm_dir: str | None) -> Any:
    """The tokenizer named by ``spec`` (``builtin:words``) or the one stored in ``llm_dir``.

    Only ``tokenizer.json`` (fast tokenizers) is read; nothing is unpickled."""
    if spec == "builtin:words":
        return build_builtin_tokenizer()
    from transformers import AutoTokenizer

    path = spec or llm_dir
    if not path:
        raise ValueError("llm.tokenizer: no tokenizer given and the LLM has no source directory")
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
