"""Pure-Python re-implementation of the part of ``torchtext.vocab`` that
scgpt 0.2.4 uses (``Vocab`` as an ``nn.Module`` wrapping a token<->index
table, and the ``vocab(ordered_dict, min_freq)`` factory).

Semantics follow torchtext 0.15-0.18 (``torchtext/vocab/vocab.py`` and the
C++ ``VocabPybind``): ``insert_token`` shifts later tokens, ``__getitem__``
returns the default index for unknown tokens if one is set and raises
``RuntimeError`` otherwise, ``forward``/``__call__`` maps a list of tokens.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Optional

import torch.nn as nn


class _VocabTable:
    """Stand-in for torchtext's C++ ``VocabPybind`` object."""

    def __init__(self, tokens: List[str], default_index: Optional[int] = None):
        self.itos: List[str] = []
        self.stoi: Dict[str, int] = {}
        for t in tokens:
            self.append_token(t)
        self.default_index = default_index

    def __len__(self) -> int:
        return len(self.itos)

    def __contains__(self, token: str) -> bool:
        return token in self.stoi

    def __getitem__(self, token: str) -> int:
        i = self.stoi.get(token)
        if i is not None:
            return i
        if self.default_index is None:
            raise RuntimeError(
                f"Token {token} not found and default index is not set"
            )
        return self.default_index

    def append_token(self, token: str) -> None:
        if token in self.stoi:
            raise RuntimeError(f"Token {token} already exists in the Vocab")
        self.stoi[token] = len(self.itos)
        self.itos.append(token)

    def insert_token(self, token: str, index: int) -> None:
        if token in self.stoi:
            raise RuntimeError(f"Token {token} already exists in the Vocab")
        if index < 0 or index > len(self.itos):
            raise RuntimeError(
                f"Specified index {index} is out of bounds of the size of "
                f"stoi dictionary: {len(self.itos)}"
            )
        if index == len(self.itos):
            self.append_token(token)
            return
        self.itos.insert(index, token)
        for i in range(index, len(self.itos)):
            self.stoi[self.itos[i]] = i

    def lookup_token(self, index: int) -> str:
        if index < 0 or index >= len(self.itos):
            raise RuntimeError(f"Specified index {index} is out of bounds")
        return self.itos[index]


class Vocab(nn.Module):
    def __init__(self, vocab: _VocabTable) -> None:
        super().__init__()
        self.vocab = vocab

    def forward(self, tokens: List[str]) -> List[int]:
        return self.lookup_indices(tokens)

    def __len__(self) -> int:
        return len(self.vocab)

    def __contains__(self, token: str) -> bool:
        return token in self.vocab

    def __getitem__(self, token: str) -> int:
        return self.vocab[token]

    def set_default_index(self, index: Optional[int]) -> None:
        self.vocab.default_index = index

    def get_default_index(self) -> Optional[int]:
        return self.vocab.default_index

    def insert_token(self, token: str, index: int) -> None:
        self.vocab.insert_token(token, index)

    def append_token(self, token: str) -> None:
        self.vocab.append_token(token)

    def lookup_token(self, index: int) -> str:
        return self.vocab.lookup_token(index)

    def lookup_tokens(self, indices: List[int]) -> List[str]:
        return [self.vocab.lookup_token(i) for i in indices]

    def lookup_indices(self, tokens: List[str]) -> List[int]:
        return [self.vocab[t] for t in tokens]

    def get_stoi(self) -> Dict[str, int]:
        return dict(self.vocab.stoi)

    def get_itos(self) -> List[str]:
        return list(self.vocab.itos)


def vocab(
    ordered_dict: "OrderedDict[str, int]",
    min_freq: int = 1,
    specials: Optional[List[str]] = None,
    special_first: bool = True,
) -> Vocab:
    specials = specials or []
    for t in specials:
        ordered_dict.pop(t, None)
    tokens = [t for t, f in ordered_dict.items() if f >= min_freq]
    if special_first:
        tokens = list(specials) + tokens
    else:
        tokens = tokens + list(specials)
    return Vocab(_VocabTable(tokens))
