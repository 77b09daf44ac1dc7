"""Minimal stand-in for ``torchtext`` (reference scripts only).

scgpt 0.2.4 imports ``torchtext.vocab`` for its ``GeneVocab`` base class, but
torchtext's last release (0.18) is built against torch 2.3 and does not load
with current torch.  Only ``torchtext.vocab.Vocab`` and the ``vocab()``
factory are needed; see ``vocab.py``.
"""

__version__ = "0.0.0+cellforge-stub"

from . import vocab  # noqa: F401
