"""Python functions the spawn-subint tests call in subinterpreters.

A call's value arrives as ONE positional argument (``Null``: no argument), so a function that
wants several inputs takes a list or a dict. ``conformance`` holds the twins of the standard
Rust test functions (``harrow_testkit::testfns``).
"""

import time

import harrow


def add(ab):
    a, b = ab
    return a + b


def echo(value=None):
    return value


def key_types(d):
    """The type names of the first key and of its last element."""
    k = next(iter(d))
    return [type(k).__name__, type(k[-1]).__name__]


def keys(d):
    """The keys of a dict argument, in order (a map arrives as one dict)."""
    return list(d)


def fail(msg="boom"):
    raise ValueError(msg)


def fail_from(msg="outer"):
    """Raises a KeyError caused by a ZeroDivisionError two frames deep."""
    try:
        _divide(1, 0)
    except ZeroDivisionError as e:
        raise KeyError(msg) from e


def _divide(a, b):
    return a / b


class CustomError(Exception):
    pass


def fail_custom():
    raise CustomError("custom failure")


class BadStr(Exception):
    def __str__(self):
        raise RuntimeError("no text")


def _deep(n):
    if n == 0:
        raise IndexError("at the bottom")
    _deep(n - 1)


def _recurse():
    _recurse()


def fail_shaped(shape):
    """Raises an exception of one shape (the traceback tests compare their texts)."""
    if shape == "plain":
        _divide(1, 0)
    elif shape == "custom":
        raise CustomError("custom failure")
    elif shape == "empty":
        raise CustomError()
    elif shape == "deep":
        _deep(5)
    elif shape == "deep4":
        _deep(4)
    elif shape == "recursion":
        _recurse()
    elif shape == "from_none":
        try:
            _divide(1, 0)
        except ZeroDivisionError:
            raise KeyError("k") from None
    elif shape == "context":
        try:
            _divide(1, 0)
        except ZeroDivisionError:
            raise KeyError("k")
    elif shape == "notes":
        e = ValueError("v")
        e.add_note("a note")
        raise e
    elif shape == "bad_str":
        raise BadStr()
    raise AssertionError("no shape %r" % (shape,))


def shaped_texts(shape):
    """The traceback of ``fail_shaped(shape)`` as a call would see it (this frame left out),
    formatted by the harness's Python (``harrow._format_exc``) and by the standard library's
    ``traceback.format_exception`` without its position carets (lines of only ``~`` and
    ``^``): ``[harness, stdlib]``."""
    import traceback

    try:
        fail_shaped(shape)
    except BaseException as e:
        e.__traceback__ = e.__traceback__.tb_next
        harness = harrow._format_exc(e)[2]
        lines = "".join(traceback.format_exception(e)).splitlines(keepends=True)
        stdlib = "".join(x for x in lines if not (x.strip() and set(x.strip()) <= set("~^")))
        return [harness, stdlib]
    raise AssertionError("fail_shaped(%r) did not raise" % (shape,))


class _Index:
    """An integer of its own type: sent as what its ``__index__`` says."""

    def __init__(self, n, ok=True):
        self.n, self.ok = n, ok

    def __index__(self):
        if not self.ok:
            raise TypeError("no index today")
        return self.n


def index_ints(v=None):
    """index_ints() -> objects with ``__index__`` (numpy's integers are such), as ints."""
    return [_Index(7), {"k": _Index(-3)}, _Index(2**63 - 1)]


def bad_return(kind):
    if kind == "bad_index":
        return _Index(1, ok=False)
    if kind == "big_index":
        return _Index(2**80)
    if kind == "set":
        return {1, 2}
    if kind == "bigint":
        return 2**80
    if kind == "huge":
        return 10**5000
    if kind == "object":
        return object()
    if kind == "nested":
        return [1, {"a": {3}}]
    raise ValueError(kind)


def type_of(value):
    return type(value).__name__


def gen(n):
    for i in range(n):
        yield i


def ctx_echo(ctx, first):
    """started(first), then echo every received item back doubled-in-a-list, return a count."""
    ctx.started(first)
    n = 0
    stream = ctx.open_stream()
    for item in stream:
        stream.send([item, item])
        n += 1
    stream.close()
    return n


def ctx_recv_after_end(ctx):
    ctx.started("go")
    stream = ctx.open_stream()
    items = list(stream)
    try:
        stream.recv()
    except harrow.EndOfStream:
        return items + ["end"]
    return items


def ctx_fail_in_stream(ctx):
    """started(None), sends 1 inside ``with ctx.open_stream()``, then raises ValueError there: the
    stream must not be closed (a close is the end of the stream, and the caller would read it
    as the callee having finished)."""
    ctx.started(None)
    with ctx.open_stream() as s:
        s.send(1)
        raise ValueError("mid-stream")


def ctx_started_twice(ctx):
    ctx.started(1)
    ctx.started(2)


def ctx_bad_started(ctx):
    ctx.started({1, 2})


def ctx_wait(ctx):
    """started, then block in stream.recv() until cancelled; records finally."""
    global finally_ran
    finally_ran = False
    try:
        ctx.started(None)
        stream = ctx.open_stream()
        stream.recv()
    finally:
        finally_ran = True


finally_ran = False


def finally_flag():
    return finally_ran


def busy():
    while True:
        pass


def busy_finally(ctx):
    global finally_ran
    finally_ran = False
    try:
        ctx.started("running")
        while True:
            pass
    finally:
        finally_ran = True


swallowed = 0


def swallow_some(ctx, times):
    """Swallows the first `times` cancellations (leaving its ``except`` block each time), then
    busy-loops without catching the next."""
    global swallowed
    swallowed = 0
    while swallowed < times:
        try:
            # In the `try`: the cancel may land as soon as `started` returned.
            if swallowed == 0:
                ctx.started("running")
            while True:
                pass
        except BaseException:
            swallowed += 1
    while True:
        pass


def slow_cleanup_fails(ctx, seconds):
    """Its cancel's cleanup runs for ``seconds`` (Python code, then a blocking sleep: longer than
    the cancel's re-arm interval) and then fails: that failure is the call's answer."""
    try:
        ctx.started("running")
        while True:
            pass
    except harrow.Cancelled:
        deadline = time.monotonic() + seconds / 2
        while time.monotonic() < deadline:
            pass
        time.sleep(seconds / 2)
        raise ValueError("cleanup failed")


def endless_cleanup(ctx):
    """Handles its cancel for ever (Python code, no checkpoint): only the hard kill ends it."""
    try:
        ctx.started("running")
        while True:
            harrow.sleep(3600)
    except harrow.Cancelled:
        while True:
            pass


def raises_cancelled(how="raise"):
    """Ends with a ``harrow.Cancelled`` of its own (``raise``), or one of a deadline re-raised
    after its scope (``deadline``): a call nobody cancelled."""
    if how == "raise":
        raise harrow.Cancelled("spurious")
    caught = None
    with harrow.move_on_after(0.01):
        try:
            harrow.sleep(5)
        except harrow.Cancelled as e:
            caught = e
            raise
    raise caught


def swallowed_count():
    return swallowed


def shielded(ctx, seconds):
    """A shielded busy section of `seconds`; returns whether it completed."""
    global shield_done
    shield_done = False
    with harrow.shield():
        ctx.started("shielded")
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            pass
        shield_done = True
    while True:
        pass


def fail_leaving_shield(ctx, seconds):
    """Waits (shielded) until its cancel has arrived, raises ValueError in the shield, and lets
    that failure unwind through a ``finally`` that runs Python code for ``seconds``: the failure
    is the call's outcome, which the outstanding cancel must not replace as it unwinds."""
    try:
        with harrow.shield():
            ctx.started("shielded")
            while not ctx.cancelled:
                pass
            raise ValueError("failed in the shield")
    finally:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            pass


def catch_then_spin(ctx, seconds):
    """Catches a ValueError and then runs Python code in its ``except`` block for ``seconds``
    (no checkpoint) before looping forever outside it: a cancel lands once the block is left."""
    ctx.started("ready")
    try:
        raise ValueError("caught")
    except ValueError:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            pass
    while True:
        pass


shield_done = False


def shield_completed():
    return shield_done


def sleep_forever():
    time.sleep(3600)


def harrow_sleep(seconds):
    harrow.sleep(seconds)
    return "slept"


def start_thread():
    import threading

    out = []
    t = threading.Thread(target=lambda: out.append(1))
    t.start()
    t.join()
    return out


def start_spinning_thread():
    """Starts a thread that runs until cancelled (harrow.Cancelled via async exception)."""
    import threading

    def spin():
        while True:
            time.sleep(0.001)

    threading.Thread(target=spin).start()
    return True


_writer = None


def write_while_idle(fd):
    """Starts a thread that writes 1, 2, 3, ... (a line each) to `fd` until `stop_writing()`;
    returns how many it had written when the call returned."""
    import os
    import threading

    global _writer
    state = {"n": 0}
    stop = threading.Event()

    def run():
        while not stop.is_set():
            state["n"] += 1
            os.write(fd, b"%d\n" % state["n"])
            stop.wait(0.005)

    t = threading.Thread(target=run, name="writer")
    _writer = (t, stop)
    t.start()
    return state["n"]


def stop_writing():
    t, stop = _writer
    stop.set()
    t.join()
    return True


def legacy_only():
    """Imports a single-phase-init extension: refused in own-GIL interpreters."""
    try:
        import _testsinglephase  # noqa: F401
    except ModuleNotFoundError:
        import readline  # noqa: F401
    return "imported"


def cpu(n):
    s = 0
    for i in range(n):
        s += i * i
    return s


def start_sleeping_thread():
    """Starts a thread stuck in a long C call: it cannot be cancelled or joined in time."""
    import threading

    threading.Thread(target=time.sleep, args=(3600,), name="sleeper").start()
    return True


shared_ctx = None
shared_stream = None


def ctx_share(ctx):
    """Publishes its ctx and stream in globals, then collects the stream's items."""
    global shared_ctx, shared_stream
    shared_ctx = ctx
    ctx.started(None)
    shared_stream = ctx.open_stream()
    shared_stream.send("open")
    return list(shared_stream)


def use_shared_ctx():
    """Uses another call's ctx and stream (published by ctx_share); returns what each raised."""
    out = []
    for op in (lambda: shared_stream.send(1), lambda: shared_ctx.started(1)):
        try:
            op()
            out.append("no error")
        except harrow.HarrowError as e:
            out.append(str(e))
    return out


def deep_repr(n):
    """repr() of a list nested n deep: recursion in C, down to CPython's C recursion limit."""
    x = []
    for _ in range(n):
        x = [x]
    try:
        return len(repr(x))
    except RecursionError:
        return "RecursionError"


def deep_json(n):
    """json.dumps of a list nested n deep (C recursion through the json accelerator)."""
    import json

    x = []
    for _ in range(n):
        x = [x]
    try:
        return len(json.dumps(x))
    except RecursionError:
        return "RecursionError"


def deep_through_c(n):
    """Python recursion where every level re-enters the interpreter from C (map, then a call):
    each level uses C stack, down to Python's recursion limit."""

    def f(k):
        return list(map(f, [k - 1]))[0] + 1 if k > 0 else 0

    try:
        return f(n)
    except RecursionError:
        return "RecursionError"


def call_os_exit(status=0):
    import os

    os._exit(status)


def swallow_os_exit():
    """Calls os._exit and swallows what it raises: the actor still ends."""
    import os

    try:
        os._exit(0)
    except BaseException:
        pass
    return "swallowed"


def call_posix_exit():
    import posix

    posix._exit(1)


def use_asyncio():
    import asyncio

    async def main():
        await asyncio.sleep(0)
        return "ran"

    return asyncio.run(main())


def call_sys_exit():
    import sys

    sys.exit(4)


_held_code_files = []


def hold_code_file(path):
    """Opens `path` as importlib opens a module's code (`io.open_code`) and keeps it open; says
    what it got: [type name, name, bytes read]."""
    import io

    f = io.open_code(path)
    _held_code_files.append(f)
    data = f.read()
    return [type(f).__name__, f.name, len(data)]


def release_code_files():
    """Closes what `hold_code_file` kept open."""
    while _held_code_files:
        _held_code_files.pop().close()


def drained_pipe(n):
    """Writes ``n`` bytes into a fresh non-blocking pipe, drains it with the event loop's
    ``harrow._native_drain``, and says whether anything was left."""
    import os

    r, w = os.pipe()
    try:
        os.set_blocking(r, False)
        if n:
            os.write(w, b"x" * n)
        harrow._native_drain(r)
        try:
            os.read(r, 1)
            return "left"
        except BlockingIOError:
            return "empty"
    finally:
        os.close(r)
        os.close(w)


def lone_surrogate():
    """Returns a str that cannot be encoded as UTF-8."""
    return "\ud800"
