"""The answer-shaping stages on their own: whatever way a text is cut into pieces, the answer is the same."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from app.shaping.limits import Limits

REPRODUCIBLE = settings(derandomize=True, database=None, deadline=None, max_examples=300)
# Few letters, so stop sequences and their near misses are common.
texts = st.text(alphabet="ab\n:", max_size=40)


@st.composite
def cuts(draw, text: str) -> list[str]:
    """Return text cut into pieces at drawn places (empty pieces included)."""
    points = sorted(draw(st.lists(st.integers(0, len(text)), max_size=8)))
    return [text[a:b] for a, b in zip([0, *points], [*points, len(text)], strict=True)]


def run_limits(limits: Limits, pieces: list[str]) -> str:
    out = []
    for piece in pieces:
        out.append(limits.feed(piece))
        assert len(limits.held) <= max(limits.longest - 1, 0)  # never more than the longest stop less one
    out.append(limits.finish())
    return "".join(out)


def expected(text: str, stops: list[str], max_chars: int | None) -> tuple[str, str | None]:
    found = [i for s in stops if (i := text.find(s)) >= 0]
    cut, reason = (text[: min(found)], "stop") if found else (text, None)
    if max_chars is not None and len(cut) > max_chars:
        return cut[:max_chars], "length"
    return cut, reason


@REPRODUCIBLE
@given(st.data(), texts, st.lists(st.text(alphabet="ab\n:", min_size=1, max_size=5), max_size=3))
def test_limits_cut_at_the_first_stop_however_the_text_is_split(data, text, stops):
    pieces = data.draw(cuts(text))
    limits = Limits(tuple(stops), None)
    assert (run_limits(limits, pieces), limits.reason) == expected(text, stops, None)


@REPRODUCIBLE
@given(st.data(), texts, st.lists(st.text(alphabet="ab\n:", min_size=1, max_size=5), max_size=2), st.integers(0, 30))
def test_limits_cut_at_the_budget_or_the_stop_whichever_comes_first(data, text, stops, max_chars):
    pieces = data.draw(cuts(text))
    limits = Limits(tuple(stops), max_chars)
    assert (run_limits(limits, pieces), limits.reason) == expected(text, stops, max_chars)
    assert limits.used <= max_chars


def test_limits_pass_text_that_cannot_begin_a_stop_at_once():
    limits = Limits(("\n\nUser:",), None)
    assert limits.feed("Hello there") == "Hello there"
    assert limits.feed(", friend\n") == ", friend"  # only the "\n" that may begin the stop waits
    assert limits.feed("\nUs") == ""
    assert limits.feed("ually") == "\n\nUsually"
