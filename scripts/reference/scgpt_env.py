"""Shared set-up for the scGPT reference scripts in this folder.

Importing this module puts ``scripts/reference/stubs`` first on ``sys.path``
(stand-ins for ``torchtext`` and ``datasets``; see README.md), silences the
"flash_attn is not installed" warnings and imports ``scgpt``.  Everything runs
on the CPU through scGPT's PyTorch (non-flash) code path.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
STUBS = HERE / "stubs"

if str(STUBS) not in sys.path:
    sys.path.insert(0, str(STUBS))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore", message="flash_attn is not installed")
warnings.filterwarnings("ignore", message=".*torch.cuda.amp.autocast.*")
warnings.filterwarnings("ignore", message=".*pin_memory.*")
warnings.filterwarnings("ignore", message=".*enable_nested_tensor.*")
warnings.filterwarnings("ignore", category=FutureWarning)

import torch  # noqa: E402

import scgpt  # noqa: E402
from scgpt.model import TransformerModel  # noqa: E402
from scgpt.model.generation_model import TransformerGenerator  # noqa: E402
from scgpt.model.multiomic_model import MultiOmicTransformerModel  # noqa: E402
from scgpt.tasks import embed_data  # noqa: E402
from scgpt.tokenizer import GeneVocab  # noqa: E402

__all__ = [
    "REPO",
    "GeneVocab",
    "MultiOmicTransformerModel",
    "TransformerGenerator",
    "TransformerModel",
    "embed_data",
    "scgpt",
    "torch",
]
