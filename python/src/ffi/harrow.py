"""harrow: the actor runtime's module inside this subinterpreter (built per interpreter).

- ``Cancelled``: raised in running code when its call (or its actor) is cancelled. A
  ``BaseException``: ``except Exception`` does not swallow it, ``finally`` blocks run. Code that
  swallows it anyway gets it again until the call ends or the hard-kill bound passes.
- ``with shield():`` defers cancellation until the block exits.
- ``sleep(seconds)``: like ``time.sleep`` but cancellable at once; the actor serves its other
  calls meanwhile.
- ``checkpoint()``: raises ``Cancelled`` now if a cancel is outstanding (outside a shield).
- ``@context``: marks a context function (else: a function whose first parameter is ``ctx``).
- ``async def`` functions and async generators run as tasks of one event loop per interpreter,
  concurrently with the actor's other async calls; a cancel raises ``CancelledError`` at the
  current ``await`` (reported as ``Cancelled``).
- ``Context`` (the ``ctx`` a context function gets): ``started(value=None)``, ``open_stream()``,
  ``cancelled``.
- ``Stream``: ``send(v)``, ``recv()`` (raises ``EndOfStream`` once the peer stopped its side),
  ``close()``, iteration (ends at end of stream), ``with`` (closes on exit).
"""

import time as _time


class Cancelled(BaseException):
    """The running call was cancelled."""


class EndOfStream(Exception):
    """Stream.recv(): the peer has stopped its side of the stream."""


class HarrowError(Exception):
    """A protocol or transport failure reported by the harrow runtime."""


class ActorExit(BaseException):
    """``os._exit()`` was called in this actor: the call fails and the actor ends. The process
    goes on: in a harrow actor ``os._exit`` (and ``posix._exit``) raise this instead of ending
    the process. ``os.abort()`` and a C extension calling ``exit()`` cannot be intercepted."""


_exit_called = None


def _os_exit(status=0):
    """``os._exit`` in a harrow actor: ends the actor (its call fails), not the process."""
    global _exit_called
    _exit_called = "os._exit(%r)" % (status,)
    raise ActorExit(
        "%s was called: it ends this actor only (the process goes on)" % _exit_called
    )


_os_exit.__name__ = "_exit"
_os_exit.__qualname__ = "_exit"


def _install_exit_guard():
    import os
    import posix

    os._exit = _os_exit
    posix._exit = _os_exit


_install_exit_guard()


class shield:
    """``with harrow.shield():`` defers cancellation until the block exits."""

    __slots__ = ()

    def __enter__(self):
        _native_shield_enter()
        return self

    def __exit__(self, exc_type, exc, tb):
        _native_shield_exit(exc_type is None)
        return False


def checkpoint():
    """Raise ``Cancelled`` now if this call has an outstanding cancel (outside a shield)."""
    _native_checkpoint()


def sleep(seconds):
    """Sleep ``seconds``; a cancel ends it at once with ``Cancelled`` (unless shielded).

    In a call, the actor's thread releases the GIL and serves the actor's other calls while it
    sleeps. Elsewhere (a Python thread) it sleeps in slices of at most 10 ms.
    """
    if _native_sleep(float(seconds)):
        return
    deadline = _time.monotonic() + float(seconds)
    while True:
        _native_checkpoint()
        left = deadline - _time.monotonic()
        if left <= 0:
            return
        _time.sleep(0.01 if left > 0.01 else left)


_STARTED, _OPEN_STREAM, _SEND, _RECV, _CLOSE, _CANCELLED, _YIELD, _END = range(8)


class Stream:
    """One side of a context's bidirectional stream."""

    __slots__ = ("_op",)

    def __init__(self, op):
        self._op = op

    def send(self, value):
        """Send one item (waits for flow-control credit)."""
        self._op(_SEND, value)

    def recv(self):
        """The next item; raises ``EndOfStream`` once the peer stopped its side."""
        return self._op(_RECV, None)

    def close(self):
        """Finish this side of the stream. Idempotent."""
        self._op(_CLOSE, None)

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return self._op(_RECV, None)
        except EndOfStream:
            raise StopIteration from None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close()
        return False


class Context:
    """The callee's handle on a context call."""

    __slots__ = ("_op",)

    def __init__(self, op):
        self._op = op

    def started(self, value=None):
        """Send the context's first value to the caller (exactly once)."""
        self._op(_STARTED, value)

    def open_stream(self):
        """Open this side of the context's stream (after ``started``)."""
        self._op(_OPEN_STREAM, None)
        return Stream(self._op)

    @property
    def cancelled(self):
        """Whether a cancel for this call has arrived."""
        return self._op(_CANCELLED, None)


def context(f):
    """Decorator: ``f`` is a context function; it gets the call's ``Context`` as its first
    argument. (Without it, a function whose first parameter is named ``ctx`` is one too.)"""
    f.__harrow_context__ = True
    return f


def _describe(f):
    # (is_generator_function, wants_ctx): ``@harrow.context`` marks a context function; without
    # it, the fallback rule is that its FIRST parameter is named ``ctx``. Avoids importing
    # inspect (slow in a fresh interpreter).
    explicit = getattr(f, "__harrow_context__", None)
    code = getattr(f, "__code__", None)
    if code is None:
        call = getattr(f, "__call__", None)
        code = getattr(getattr(call, "__func__", None), "__code__", None)
        if code is None:
            return (False, bool(explicit))
        names = code.co_varnames[1 : code.co_argcount]
    else:
        names = code.co_varnames[: code.co_argcount]
    is_gen = bool(code.co_flags & 0x20)
    if explicit is not None:
        return (is_gen, bool(explicit))
    return (is_gen, bool(names) and names[0] == "ctx")


# ---- async functions: one event loop per interpreter, kept across calls ----------------------

_loop = None
_tasks = {}  # task -> the call's capsule
_wake_fd = -1  # read end of the pipe the Rust side writes to when it queues a job or a cancel


def _get_loop():
    global _loop
    if _loop is None:
        import asyncio

        _loop = asyncio.new_event_loop()
        asyncio.set_event_loop(_loop)
        _loop.add_reader(_wake_fd, _on_wake)
    return _loop


async def _await(aw):
    return await aw


def _start_task(call, aw):
    """Runs awaitable ``aw`` (the running call ``call``) as a task of the interpreter's loop."""
    import asyncio

    loop = _get_loop()
    coro = aw if asyncio.iscoroutine(aw) else _await(aw)
    task = loop.create_task(coro)
    _tasks[task] = call
    task.add_done_callback(_task_done)


def _task_done(task):
    call = _tasks.pop(task, None)
    if call is not None:
        # (state, value): 0 returned value, 1 cancelled, 2 raised value.
        if task.cancelled():
            state, value = 1, None
        else:
            exc = task.exception()
            if exc is None:
                state, value = 0, task.result()
            elif isinstance(exc, Cancelled) or type(exc).__name__ == "CancelledError":
                state, value = 1, None
            else:
                state, value = 2, exc
        _native_finish(call, state, value)
    if not _tasks:
        task.get_loop().stop()


def _on_wake():
    import os

    try:
        while os.read(_wake_fd, 4096):
            pass
    except BlockingIOError:
        pass
    for task, call in list(_tasks.items()):
        if not task.done() and _native_call_cancelled(call):
            task.cancel()
    _native_take_jobs()


def _run_loop():
    """Runs the loop until no call's task is left (the Rust side calls it while tasks live)."""
    loop = _get_loop()
    loop.call_soon(_on_wake)
    loop.run_forever()


async def _agen_collect(agen):
    return [item async for item in agen]


async def _agen_stream(ctx, agen):
    async for item in agen:
        ctx._op(_YIELD, item)
    ctx._op(_END, None)


def _format_exc(e):
    t = type(e)
    mod = getattr(t, "__module__", None) or ""
    qual = getattr(t, "__qualname__", None) or t.__name__
    name = qual if mod in ("builtins", "") else mod + "." + qual
    try:
        msg = str(e)
    except BaseException:
        msg = "<str() of the exception failed>"
    if isinstance(e, ImportError) and "subinterpreters" in msg:
        mod = getattr(e, "name", None)
        if not mod:
            # A package may wrap the refusal (numpy does): its text still names the module.
            import re

            found = re.search(r"module (\S+) does not support loading in subinterpreters", msg)
            mod = found.group(1) if found else "?"
        msg += (
            " [harrow: the C extension module %r refuses this subinterpreter. A single-phase-init"
            " extension loads in legacy mode (InterpConfig legacy); one that refuses every"
            " subinterpreter needs a main interpreter: run this actor on the Python process"
            " backend (ProcessBackend::python() in Rust, `harrow run-py --backend process`),"
            " which runs it in a child process's main interpreter]" % (mod,)
        )
    try:
        tb = _format_tb(e, name, msg)
    except BaseException:
        tb = ""
    return (name, msg, tb)


def _format_tb(e, name, msg):
    # What traceback.format_exception prints (the chain, every frame with its source line, the
    # exception), without the position carets: those make the standard library parse each
    # frame's source line, which made a failing call cost several times a succeeding one.
    # Exception groups (nested tracebacks) still take the standard library's full path.
    import traceback

    if isinstance(e, BaseExceptionGroup):
        return "".join(traceback.format_exception(e))
    import linecache

    out = []
    seen = set()

    def one(e, last):
        if id(e) in seen:
            return
        seen.add(id(e))
        if e.__cause__ is not None:
            one(e.__cause__, None)
            out.append(
                "\nThe above exception was the direct cause of the following exception:\n\n"
            )
        elif e.__context__ is not None and not e.__suppress_context__:
            one(e.__context__, None)
            out.append(
                "\nDuring handling of the above exception, another exception occurred:\n\n"
            )
        tb = e.__traceback__
        if tb is not None:
            out.append("Traceback (most recent call last):\n")
        while tb is not None:
            f = tb.tb_frame
            co = f.f_code
            line = tb.tb_lineno
            out.append('  File "%s", line %s, in %s\n' % (co.co_filename, line, co.co_name))
            src = linecache.getline(co.co_filename, line, f.f_globals).strip() if line else ""
            if src:
                out.append("    %s\n" % src)
            tb = tb.tb_next
        if last is None or isinstance(e, SyntaxError) or getattr(e, "__notes__", None):
            out.extend(traceback.format_exception_only(e))
        else:
            out.append("%s: %s\n" % last if last[1] else "%s\n" % last[0])

    one(e, (name, msg))
    return "".join(out)


def _live_threads():
    import sys

    threading = sys.modules.get("threading")
    if threading is None:
        return []
    me = threading.current_thread()
    # In a subinterpreter, threading's "main thread" stands for the process's main thread, which
    # never runs here (this interpreter's own thread is `me`, a dummy thread).
    main = threading.main_thread()
    return [
        t for t in threading.enumerate() if t is not me and t is not main and t.is_alive()
    ]


def _join_threads(timeout):
    for t in _live_threads():
        t.join(timeout)
    return [t.ident for t in _live_threads()]


def _before_end():
    # A thread that threading did not start (this interpreter's owning thread) gets a
    # _DummyThread when asyncio or threading code asks for the current thread; its thread-local
    # cleanup object would run while the interpreter is torn down, when threading's globals are
    # gone, and print "Exception ignored in: _DeleteDummyThreadOnDel.__del__". Run it now.
    import sys

    global _loop
    if _loop is not None:
        try:
            _loop.remove_reader(_wake_fd)
            _loop.close()
        except Exception:
            pass
        _loop = None
    threading = sys.modules.get("threading")
    info = getattr(threading, "_thread_local_info", None)
    if info is not None:
        try:
            del info._track_dummy_thread_ref
        except AttributeError:
            pass
