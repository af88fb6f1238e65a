"""The thread helpers of ``ocr_assets.science.parallel``, alone."""

import pytest


def test_ordered_map_keeps_the_order_and_a_bounded_window():
    """Results come in the items' order whatever finishes first; no more than ``ahead``
    items are taken from the iterator before their results are yielded; an error surfaces
    at its item."""
    import random
    import threading
    import time

    from ocr_assets.science.parallel import ordered_map

    taken, lock, in_flight = [], threading.Lock(), []

    def items():
        for i in range(40):
            taken.append(i)
            yield i

    def slow_square(i: int) -> int:
        with lock:
            in_flight.append(len(taken))
        time.sleep(random.random() / 200)
        return i * i

    out = []
    for value in ordered_map(slow_square, items(), workers=3, ahead=4):
        out.append(value)
        assert len(taken) - len(out) <= 4  # the window, never the item count
    assert out == [i * i for i in range(40)]

    def fails_at_five(i: int) -> int:
        if i == 5:
            raise ValueError("item 5")
        return i

    seen = []
    with pytest.raises(ValueError, match="item 5"):
        for value in ordered_map(fails_at_five, range(20), workers=2):
            seen.append(value)
    assert seen == [0, 1, 2, 3, 4]
    assert list(ordered_map(str, range(3), workers=1)) == ["0", "1", "2"]
