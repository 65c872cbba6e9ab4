"""The one caption normalisation used everywhere (references, predictions, cleaning)."""
from __future__ import annotations

import math
import re
import unicodedata

_CONTROL = re.compile(r"[\u0000-\u001f\u007f-\u009f\u200b-\u200f\u2028\u2029\ufeff]")
_SPACES = re.compile(r"\s+")


def normalize(caption) -> str:
    """Return `caption` as one clean line: NFKC, no control characters, single spaces.

    None and NaN (pandas' empty cell) become "". Case and punctuation are kept: the
    metrics' PTB tokenizer lower-cases and splits punctuation itself.
    """
    if caption is None or (isinstance(caption, float) and math.isnan(caption)):
        return ""
    text = unicodedata.normalize("NFKC", str(caption))
    text = _CONTROL.sub(" ", text)
    return _SPACES.sub(" ", text).strip()
