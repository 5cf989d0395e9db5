"""Character vocabulary: the sorted characters of a corpus plus one reserved unknown id."""

import numpy as np

from charrnn.errors import CharRNNError


class Vocab:
    """Characters -> ids 0..n-1 (sorted), id n for anything unseen; stored in checkpoints as the
    plain string `chars` (no pickle)."""

    def __init__(self, chars: str):
        if len(set(chars)) != len(chars) or list(chars) != sorted(chars):
            raise CharRNNError("vocabulary must be sorted, unique characters")
        if not chars:
            raise CharRNNError("vocabulary is empty: the corpus has no characters")
        self.chars, self.unk_id, self.size = chars, len(chars), len(chars) + 1
        self._index = {c: i for i, c in enumerate(chars)}
        codepoints = np.frombuffer(chars.encode("utf-32-le"), dtype=np.uint32)
        # code point -> id (encoding is one numpy gather); its last entry is for all larger ones
        self._lut = np.full(int(codepoints.max()) + 2, self.unk_id, dtype=np.int32)
        self._lut[codepoints] = np.arange(len(chars), dtype=np.int32)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocab) and other.chars == self.chars

    def unknown(self, text: str) -> list[str]:
        """The distinct characters of `text` this vocabulary has never seen, in order of appearance."""
        return list(dict.fromkeys(c for c in text if c not in self._index))

    def encode(self, text: str) -> np.ndarray:
        """Int32 ids of `text`; characters never seen map to unk_id."""
        codepoints = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        return self._lut[np.minimum(codepoints, len(self._lut) - 1)]

    def decode(self, ids) -> str:
        """Ids back to text; the unknown id decodes to U+FFFD."""
        chars = self.chars
        return "".join(
            chars[i] if 0 <= i < self.unk_id else "\ufffd" for i in np.asarray(ids).tolist()
        )
