"""Checked tokenization: prompts → token ids [b, n_ctx], refusing what would embed wrongly without a word.

- Text must be a string or a list of strings (a dict would be tokenized by its keys, bytes byte-wise).
- A prompt longer than the context would be cut (two prompts differing only in their last words then embed
  identically): ValueError naming the prompts, unless `truncate=True`, which cuts them and warns once.
- Words whose tokens have all-zero embedding rows carry nothing: the shipped model stores only the rows of
  the tokens it saw in training (its other rows are zero), so `unknown_words` names them for a warning.
See docs/inputs.md.
"""
from __future__ import annotations

import sys
import warnings
from pathlib import Path
from collections.abc import Mapping
from typing import Optional, Sequence

import torch
from torch import Tensor

MAX_NAMED = 5  # prompts / words named in one message


class TruncatedPromptWarning(UserWarning):
    """Prompts longer than the model's context were cut (`truncate=True`)."""


class UnknownWordsWarning(UserWarning):
    """Words the model never saw in training: their tokens embed as zeros."""


def user_stacklevel() -> int:
    """`warnings.warn` stacklevel of the first frame outside the workbench package (the user's call)."""
    package = str(Path(__file__).resolve().parents[1])
    frame, level = sys._getframe(1), 1
    while frame is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def _named(items: Sequence[str], quote: bool = True) -> str:
    shown = ", ".join(repr(s) if quote else s for s in items[:MAX_NAMED])
    return shown + (f" and {len(items) - MAX_NAMED} more" if len(items) > MAX_NAMED else "")


_HINTS = (
    (Mapping, "; a dict would be encoded by its keys: pass list(d) or list(d.values())"),
    ((set, frozenset), "; a set has no order: pass sorted(s) or a list"),
    ((bytes, bytearray), "; decode bytes first: b.decode('utf-8')"),
)
_REFUSED = (Mapping, set, frozenset, bytes, bytearray)


def prompt_list(text, what: str = "text") -> list[str]:
    """A string or an ordered collection of strings → list[str]; anything else raises a TypeError."""
    need = f"{what} must be a string or a list of strings (or token ids [batch, n_ctx] from model.tokenize)"
    if isinstance(text, str):
        return [text]
    if text is None or isinstance(text, _REFUSED) or not hasattr(text, "__iter__"):
        hint = next((h for kind, h in _HINTS if isinstance(text, kind)), "")
        raise TypeError(f"{need}, got {type(text).__name__}{hint}")
    prompts = list(text)
    bad = [(i, p) for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad:
        i, p = bad[0]
        raise TypeError(f"{need}; item {i} of the {type(text).__name__} is {type(p).__name__} {p!r:.60}"
                        + (f" ({len(bad)} non-strings in all)" if len(bad) > 1 else ""))
    if not prompts:
        raise ValueError(f"no {what} given (an empty list); pass at least one prompt")
    return prompts


def token_counts(tokenizer, prompts: Sequence[str]) -> Optional[list[int]]:
    """Tokens per prompt including start/end tokens, before truncation (None: unknown tokenizer kind).

    open_clip's `SimpleTokenizer` (CLIP BPE) is counted with its own `encode`; a Hugging Face-backed one
    (an inner `.tokenizer`) with that tokenizer's untruncated ids."""
    if hasattr(tokenizer, "encode") and hasattr(tokenizer, "sot_token_id"):
        if getattr(tokenizer, "reduction_fn", None) is not None:  # configured to shorten on purpose
            return None
        return [len(tokenizer.encode(p)) + 2 for p in prompts]
    inner = getattr(tokenizer, "tokenizer", None)
    if callable(inner):
        return [len(inner(p)["input_ids"]) for p in prompts]
    return None


def check_lengths(tokenizer, prompts: Sequence[str], n_ctx: int, truncate: bool = False) -> None:
    """Raise a ValueError naming the prompts longer than `n_ctx` tokens, or warn once if `truncate`."""
    counts = token_counts(tokenizer, prompts)
    long = [(p, c) for p, c in zip(prompts, counts or []) if c > n_ctx]
    if not long:
        return
    described = _named([f"{p!r} ({c} tokens)" for p, c in long], quote=False)
    if not truncate:
        raise ValueError(
            f"{len(long)} prompt(s) exceed the model's context of {n_ctx} tokens (start and end tokens "
            f"included): {described}. Cutting them would embed prompts that differ only in their last words "
            "identically; shorten them, or pass truncate=True to cut them anyway (with a warning)."
        )
    warnings.warn(f"cut {len(long)} prompt(s) to the model's context of {n_ctx} tokens (truncate=True): "
                  f"{described}", TruncatedPromptWarning, stacklevel=user_stacklevel())


def tokenize(tokenizer, prompts: Sequence[str], n_ctx: int, truncate: bool = False) -> Tensor:
    """`check_lengths`, then `tokenizer(prompts, context_length=n_ctx)` → int64 [len(prompts), n_ctx] (CPU)."""
    check_lengths(tokenizer, prompts, n_ctx, truncate)
    return torch.as_tensor(tokenizer(list(prompts), context_length=n_ctx), dtype=torch.long)


def _pieces(tokenizer, prompt: str) -> list[str]:
    """The prompt split as the CLIP BPE tokenizer splits it before BPE (words, digits, punctuation runs)."""
    pat, clean = getattr(tokenizer, "pat", None), getattr(tokenizer, "clean_fn", None)
    if pat is None or clean is None:
        return prompt.split()
    return pat.findall(clean(prompt))  # a `regex` module pattern (Unicode classes), compiled by the tokenizer


def unknown_words(tokenizer, prompts: Sequence[str], unknown: Tensor, tokens: Optional[Tensor] = None) -> list[str]:
    """Words of `prompts` (first-seen order) holding a token flagged in `unknown` [vocab] (bool).

    With the prompts' ids `tokens` [len(prompts), n_ctx], only prompts with a flagged token up to their end
    token (the padding after it is never read by the pooled token) are split into words."""
    if not bool(unknown.any()):
        return []
    rows = range(len(prompts))
    if tokens is not None:
        flags = unknown.to(tokens.device)[tokens]
        eot = getattr(tokenizer, "eot_token_id", None)
        if eot is not None:
            is_eot = (tokens == eot).int()
            flags &= (is_eot.cumsum(1) - is_eot) == 0  # up to and including the first end token
        rows = flags.any(1).nonzero().flatten().tolist()
    encode = getattr(tokenizer, "encode", None)
    flagged = unknown.cpu().numpy()
    seen: set[str] = set()
    found: list[str] = []
    for r in rows:
        for word in _pieces(tokenizer, prompts[r]):
            if word in seen:
                continue
            seen.add(word)
            ids = encode(word) if encode is not None else tokenizer([word])[0].tolist()
            if any(0 <= i < len(flagged) and flagged[i] for i in ids):
                found.append(word)
    return found


def warn_unknown_words(words: Sequence[str], n_prompts: int) -> None:
    if words:
        warnings.warn(
            f"{len(words)} word(s) in the {n_prompts} prompt(s) are unknown to this model (their tokens have "
            f"all-zero embeddings, never trained; they carry no meaning): {_named(list(words))}. The shipped model "
            "knows only the SynthSocial vocabulary (workbench.data.vocab).",
            UnknownWordsWarning, stacklevel=user_stacklevel(),
        )
