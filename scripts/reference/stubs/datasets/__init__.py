"""Placeholder for Hugging Face ``datasets`` (reference scripts only).

scgpt 0.2.4 imports ``datasets.Dataset``/``load_dataset`` at module level in
``scgpt.scbank`` (the on-disk data bank used for pretraining), which
``import scgpt`` always loads.  The reference scripts never use scbank, so
this stub only has to satisfy the import; any actual use raises.
"""

__version__ = "0.0.0+cellforge-stub"


class Dataset:  # noqa: D101
    def __init__(self, *args, **kwargs):
        raise NotImplementedError("datasets is stubbed out in scripts/reference")

    @classmethod
    def from_dict(cls, *args, **kwargs):
        raise NotImplementedError("datasets is stubbed out in scripts/reference")


def load_dataset(*args, **kwargs):
    raise NotImplementedError("datasets is stubbed out in scripts/reference")
