"""Python functions the harrow demo and bench run in subinterpreter actors.

harrow calls a function with no argument when the call's value is ``Null`` and with exactly ONE
positional argument otherwise (a list stays one list), so functions wanting several inputs take
a list. A function whose first parameter is named ``ctx`` is a context (bidirectional stream);
a generator streams its items.
"""

import sys


def add(ab):
    """The sum of a list of numbers."""
    return sum(ab)


def divide(ab):
    """a / b of a two-item list (raises ZeroDivisionError for b == 0)."""
    a, b = ab
    return a / b


def echo(value=None):
    """The value, unchanged."""
    return value


async def aecho(value=None):
    """The value, unchanged, from an ``async def`` (run on the interpreter's event loop)."""
    return value


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


def echo_stream(ctx):
    """A context: started("ready"), then sends back every item received; returns the count."""
    ctx.started("ready")
    n = 0
    stream = ctx.open_stream()
    for item in stream:
        stream.send(item)
        n += 1
    stream.close()
    return n


def spin(ctx):
    """A context that says "spinning", then never returns: a busy loop that harrow's cancel
    interrupts (``harrow.Cancelled`` is raised at its next bytecode)."""
    ctx.started("spinning")
    while True:
        pass
