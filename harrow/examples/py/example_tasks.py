"""The Python functions of the python_subint example, run in subinterpreter actors.

harrow calls a function with no argument when the call's value is ``Null`` and with exactly ONE
positional argument otherwise (a list stays one list); a generator streams its items.
"""

import sys


def whoami():
    """Which Python runs this actor."""
    return "Python " + sys.version.split()[0]


def sum_squares(n):
    """CPU-bound pure Python: sum of i*i for i in range(n)."""
    s = 0
    for i in range(n):
        s += i * i
    return s


def count(n):
    """A generator: streams 0..n-1 to the caller."""
    for i in range(n):
        yield i


def divide(ab):
    """a / b of a two-item list (raises ZeroDivisionError for b == 0)."""
    a, b = ab
    return a / b
