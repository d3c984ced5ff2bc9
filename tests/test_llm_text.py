"""Units of the batching engine that need no model: stop sequences over token bytes, and the penalties."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from workers.llm_sampling import Penalties
from workers.llm_text import TextStream


def feed_all(stream: TextStream, pieces: list[bytes]) -> list[str]:
    deltas = [stream.feed(piece) for piece in pieces]
    deltas.append(stream.finish())
    return deltas


def test_text_passes_through_without_stops() -> None:
    stream = TextStream(())
    assert "".join(feed_all(stream, [b"Hello", b",", b" world"])) == "Hello, world"
    assert stream.text == "Hello, world" and not stream.stopped


def test_a_stop_sequence_split_over_tokens_is_never_shown() -> None:
    stream = TextStream(("STOP",))
    deltas = [stream.feed(piece) for piece in (b"one ", b"ST", b"O", b"P two")]
    assert stream.stopped
    assert "".join(deltas) == "one " == stream.text
    assert all("S" not in delta for delta in deltas)
    assert stream.feed(b"more") == "" and stream.finish() == ""


def test_a_false_start_of_a_stop_is_released_once_it_diverges() -> None:
    stream = TextStream(("</end>",))
    assert stream.feed(b"a </e") == "a "  # "</e" might begin the stop: held back
    assert stream.feed(b"m>") == "</em>"
    assert not stream.stopped


def test_the_earliest_of_several_stops_wins() -> None:
    stream = TextStream(("world", "lo"))
    assert "".join(feed_all(stream, [b"hello world"])) == "hel"


def test_multibyte_characters_are_released_whole() -> None:
    stream = TextStream(())
    snowman = "☃".encode()
    assert stream.feed(snowman[:1]) == ""
    assert stream.feed(snowman[1:]) == "☃"
    assert stream.feed(b"\xe2\x98") == ""
    assert stream.finish() == ""  # an incomplete character at the end is dropped
    assert stream.text == "☃"


def logits_of(values: list[float]) -> tuple[np.ndarray, ctypes._Pointer[ctypes.c_float]]:
    array = np.array(values, dtype=np.float32)
    return array, array.ctypes.data_as(ctypes.POINTER(ctypes.c_float))


def test_repeat_penalty_divides_positive_and_multiplies_negative_logits() -> None:
    penalties = Penalties(repeat=2.0, frequency=0.0, presence=0.0, n_vocab=4)
    for token in (1, 2, 2):
        penalties.accept(token)
    logits, pointer = logits_of([1.0, 3.0, -1.0, 5.0])
    penalties.apply(pointer)
    assert logits.tolist() == [1.0, 1.5, -2.0, 5.0]


def test_frequency_and_presence_penalties_count_the_window() -> None:
    penalties = Penalties(repeat=1.0, frequency=0.5, presence=1.0, n_vocab=3, last_n=2)
    for token in (0, 1, 1):  # the window keeps the last two: token 0 has left it
        penalties.accept(token)
    logits, pointer = logits_of([1.0, 1.0, 1.0])
    penalties.apply(pointer)
    assert logits.tolist() == pytest.approx([1.0, 1.0 - 2 * 0.5 - 1.0, 1.0])


def test_neutral_penalties_touch_nothing() -> None:
    penalties = Penalties(repeat=1.0, frequency=0.0, presence=0.0, n_vocab=2)
    penalties.accept(0)
    logits, pointer = logits_of([2.0, -2.0])
    penalties.apply(pointer)
    assert logits.tolist() == [2.0, -2.0] and penalties.off


def test_bytes_that_never_become_text_are_not_hoarded() -> None:
    """A model emitting byte fragments that never form UTF-8 (issue 13's H1 prompt) keeps at most one
    incomplete character pending: the rest is dropped, never buffered, and the text stays empty."""
    stream = TextStream(("</s>",))
    for piece in [b"\xf0\x9f", b"\xff", b"\x80\xbf" * 4, b"\xe2", b"\xfe"] * 2_000:
        assert stream.feed(piece) == ""
        pending, _ = stream._decoder.getstate()
        assert len(pending) <= 3
    assert stream.text == ""
    assert stream.feed(b"ok") == "ok"
