"""async def functions, async generators, keyword arguments and @harrow.context."""

import asyncio
import time

import harrow


async def add(ab, scale=1):
    await asyncio.sleep(0)
    a, b = ab
    return (a + b) * scale


async def loop_id():
    return id(asyncio.get_running_loop())


_arrived = {}


async def rendezvous(key_n):
    """Returns once `n` calls with the same key are all inside: only concurrent calls can."""
    key, n = key_n
    _arrived[key] = _arrived.get(key, 0) + 1
    while _arrived[key] < n:
        await asyncio.sleep(0.001)
    return _arrived[key]


async def gather(n):
    async def one(i):
        await asyncio.sleep(0.001)
        return i * i

    return list(await asyncio.gather(*(one(i) for i in range(n))))


started = []
cleaned = []


async def wait_forever(tag):
    started.append(tag)
    try:
        await asyncio.sleep(3600)
    finally:
        cleaned.append(tag)


async def slow_cleanup_fails(seconds):
    """Its cancel's cleanup runs Python code for ``seconds``, awaits, and then fails: that failure
    is the call's answer."""
    started.append("slow")
    try:
        await asyncio.sleep(3600)
    finally:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            pass
        await asyncio.sleep(0)
        raise ValueError("async cleanup failed")


async def raises_cancelled():
    """Ends with a ``harrow.Cancelled`` of its own: a call nobody cancelled."""
    await asyncio.sleep(0)
    raise harrow.Cancelled("spurious")


def progress():
    """[started, cleaned] (a plain function: runs between the loop's steps)."""
    return [list(started), list(cleaned)]


async def fail():
    await asyncio.sleep(0)
    raise ValueError("async boom")


async def awaits_a_task_it_cancelled():
    """Awaits a task its own code cancelled: the CancelledError escapes, though nobody cancelled
    the call (a failure of this function, not a cancellation)."""
    t = asyncio.ensure_future(asyncio.sleep(60))
    await asyncio.sleep(0)
    t.cancel()
    await t


async def cancels_its_own_task():
    """Cancels the task it runs in: the call's task ends cancelled, though nobody cancelled the
    call."""
    asyncio.current_task().cancel()
    await asyncio.sleep(60)


async def agen(n):
    for i in range(n):
        await asyncio.sleep(0)
        yield i


@harrow.context
async def ctx_double(c, first):
    """A context function by decorator (its first parameter is not named ctx)."""
    c.started(first)
    stream = c.open_stream()
    n = 0
    for item in stream:
        stream.send(item * 2)
        n += 1
    return n


@harrow.context
def plain_ctx(c):
    c.started("explicit")
    return "done"


def kw(a=None, *, x=0, y=0):
    return [a, x, y]


async def akw(a=None, *, x=0):
    await asyncio.sleep(0)
    return [a, x]


async def echo(value=None):
    """The async twin of harrow_testfns.echo (round-trip benchmarks)."""
    return value


async def fail_at_once():
    """Raises before its first await: the call fails without its task ever suspending."""
    raise ValueError("failed before any await")


async def exit_before_any_await():
    """``sys.exit`` in async code before it suspends: an ordinary error of the call."""
    import sys

    sys.exit(5)


async def exit_after_an_await():
    """``sys.exit`` in async code after it suspended: an ordinary error of the call."""
    import sys

    await asyncio.sleep(0)
    sys.exit(6)


_asyncio_records = []


def watch_asyncio_log():
    """Keeps what asyncio logs from now on (its logger's records), for ``asyncio_log``."""
    import logging

    class Keep(logging.Handler):
        def emit(self, record):
            _asyncio_records.append(record.getMessage())

    logging.getLogger("asyncio").addHandler(Keep())


def asyncio_log():
    """What asyncio logged since ``watch_asyncio_log`` (garbage collected first: a task that
    was never awaited logs its unretrieved exception when it is freed)."""
    import gc

    gc.collect()
    return list(_asyncio_records)


async def in_a_task_from_the_start():
    """Whether the call runs as a task from its first line (``asyncio.timeout`` needs one)."""
    async with asyncio.timeout(5):
        return asyncio.current_task() is not None


async def exit_async():
    import os

    await asyncio.sleep(0)
    os._exit(2)


async def plain_nursery_in_async():
    """A plain ``with harrow.open_nursery()`` in an async def: the error's text."""
    try:
        with harrow.open_nursery():
            pass
    except harrow.HarrowError as e:
        return str(e)
    return "no error"


async def spin_forever(marker):
    """Creates the file ``marker``, then loops without ever awaiting."""
    open(marker, "w").close()
    while True:
        pass
