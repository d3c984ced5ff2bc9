"""`TextStream`: generated token bytes in, text deltas out, cut at the first stop sequence.

Text is released only once it is whole UTF-8 and cannot be the start of a stop sequence, so a client
never sees a stop string, or half of one, or half of a character.
"""

from __future__ import annotations

import codecs


class TextStream:
    def __init__(self, stop: tuple[str, ...]) -> None:
        self.stop = tuple(s for s in stop if s)
        self._longest = max((len(s) for s in self.stop), default=0)
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="ignore")
        self._text = ""  # everything decoded so far, up to a stop sequence
        self._sent = 0  # how much of it has been released
        self.stopped = False

    @property
    def text(self) -> str:
        return self._text

    def feed(self, piece: bytes) -> str:
        """Add a token's bytes; returns the text now safe to release (often "")."""
        if self.stopped:
            return ""
        before = len(self._text)
        self._text += self._decoder.decode(piece)
        if self.stop:
            # A stop sequence can only end in what was just added: look from `longest - 1` before it.
            start = max(0, before - self._longest + 1)
            found = [i for i in (self._text.find(s, start) for s in self.stop) if i >= 0]
            if found:
                self._text = self._text[: min(found)]
                self.stopped = True
                return self._release(len(self._text))
        return self._release(len(self._text) - self._held_back())

    def finish(self) -> str:
        """The generation ended: release whatever was held back (an incomplete character is dropped)."""
        if not self.stopped:
            self._text += self._decoder.decode(b"", final=True)
        return self._release(len(self._text))

    def _held_back(self) -> int:
        """Characters at the end that could begin a stop sequence."""
        tail = self._text[-self._longest :] if self._longest else ""
        held = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(tail)), held, -1):
                if tail.endswith(s[:n]):
                    held = n
                    break
        return held

    def _release(self, upto: int) -> str:
        upto = max(upto, self._sent)
        delta = self._text[self._sent : upto]
        self._sent = upto
        return delta
