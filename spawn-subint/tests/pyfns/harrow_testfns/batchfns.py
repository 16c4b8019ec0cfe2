"""Functions the batch runner tests (``harrow:run_batch``, tests/batch.rs) call item by item."""


def scaled(x=None, scale=1):
    """scaled(x, scale=1) -> x * scale; "none" without an argument; ValueError if x < 0."""
    if x is None:
        return "none"
    if x < 0:
        raise ValueError(f"negative: {x}")
    return x * scale


def unsendable(x):
    """Returns a set (which does not convert back) when x is 1, else x."""
    return {x} if x == 1 else x


def exits_on(x):
    """Raises SystemExit (not an Exception: it fails the whole batch) when x is 3."""
    if x == 3:
        raise SystemExit(3)
    return x


def spin(x):
    """Loops forever when x is 2 (a cancel lands at a bytecode boundary), else returns x."""
    while x == 2:
        pass
    return x


def gen(n):
    yield n
