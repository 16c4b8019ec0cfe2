"""harrow: the actor runtime's module inside this subinterpreter (built per interpreter).

- ``Cancelled``: raised in running code when its call (or its actor) is cancelled. A
  ``BaseException``: ``except Exception`` does not swallow it, ``finally`` blocks run, and
  code handling it (its cleanup) is not interrupted again. Code that swallows it (leaves the
  ``except`` block without raising) gets it again until the call ends or the hard-kill bound
  passes.
- ``with shield():`` defers cancellation until the block exits.
- ``sleep(seconds)``: like ``time.sleep`` but cancellable at once; the actor serves its other
  calls meanwhile.
- ``checkpoint()``: raises ``Cancelled`` now if a cancel is outstanding (outside a shield).
- ``@context``: marks a context function (else: a function whose first parameter is ``ctx``).
- ``async def`` functions and async generators run as tasks of one event loop per interpreter,
  concurrently with the actor's other async calls; a cancel raises ``CancelledError`` at the
  current ``await`` (reported as ``Cancelled``).
- ``Context`` (the ``ctx`` a context function gets): ``started(value=None)``, ``open_stream()``,
  ``cancelled``. Its operations and its stream's block, in an ``async def`` context function
  too. A waiting plain call serves the actor's other calls nested on its stack (last in, first
  out): it goes on once every call started during its wait has returned.
- ``Stream``: ``send(v)``, ``recv()`` (raises ``EndOfStream`` once the peer stopped its side),
  ``close()``, iteration (ends at end of stream), ``with`` (closes on exit).
- The actor: ``with open_nursery() as n:`` (``n.start_actor(name, backend=None, ...)``,
  ``n.run_in_actor(func, arg, name=..., ...)``), ``Portal`` (``run``, ``open_context``,
  ``cancel_actor``, ``result``), ``current_actor()`` (``name``, ``uid``, ``backend``,
  ``parent``), ``move_on_after(s)``, ``fail_after(s)``; failures are ``RemoteError`` and
  ``NurseryError`` (an ``ExceptionGroup``).
- In an ``async def`` call: ``async with open_nursery() as n:``, and the operations are awaited
  (``await n.start_actor(...)``, ``await p.run(...)``, ``await p.result()``, ``async with
  p.open_context(...) as (ctx, first)``, ``await s.send(v)``, ``async for``...) without blocking
  the event loop; a cancel of the call raises ``Cancelled`` at the await.
- Discovery: ``find_actor(name)``, ``find_actor_by_uid(uid)`` (a ``PeerPortal`` or None),
  ``wait_for_actor(name, timeout)`` (``TimeoutError`` when none came), ``lookup_actor(name)``,
  ``query_actors()`` (``ActorInfo``s), ``current_actor().register_names(*names)``; in calls of
  plain functions only (in an ``async def`` call they raise ``HarrowError``).
"""

# The C module itself: the `contextvars` wrapper module is one more file to find and load in
# every new interpreter (about 0.2 ms of its start), for the same classes.
import _contextvars
import time as _time


class Cancelled(BaseException):
    """The running call was cancelled."""


class EndOfStream(Exception):
    """Stream.recv(): the peer has stopped its side of the stream."""


class HarrowError(Exception):
    """A protocol or transport failure reported by the harrow runtime."""


# How the message of a send to a stream its peer no longer reads begins (`host::NOT_READ`).
_NOT_READ = "stream not read: "


class ActorExit(BaseException):
    """``os._exit()`` was called in this actor: the call fails and the actor ends. The process
    goes on: in a harrow actor ``os._exit`` (and ``posix._exit``) raise this instead of ending
    the process. ``os.abort()`` and a C extension calling ``exit()`` cannot be intercepted."""


def _os_exit(status=0):
    """``os._exit`` in a harrow actor: ends the actor (its call fails), not the process."""
    called = "os._exit(%r)" % (status,)
    _native_exit_called(called)
    raise ActorExit(
        "%s was called: it ends this actor only (the process goes on)" % called
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
    seconds = float(seconds)
    if seconds != seconds:
        raise ValueError("sleep needs a number of seconds, not nan")
    if _native_sleep(seconds):
        return
    deadline = _time.monotonic() + seconds
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
        # Closed only when the block ended normally: a close is the end of the stream, and a
        # block that raised did not finish (the call's failure reaches the caller instead).
        if exc is None:
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
_starting = []  # (call, awaitable) of calls whose tasks start in the loop's next turn
_wake_fd = -1  # read end of the pipe the Rust side writes to when it queues a job or a cancel
# The async call whose task (or a task it started) is running: its nurseries and portals await.
_call_var = _contextvars.ContextVar("harrow_async_call", default=None)


def _get_loop():
    global _loop
    if _loop is None:
        import asyncio

        _loop = asyncio.new_event_loop()
        asyncio.set_event_loop(_loop)
        _loop.add_reader(_wake_fd, _on_wake)
        _loop.set_exception_handler(_exception_handler)
    return _loop


# The coroutine whose task ``_start_tasks`` is starting eagerly right now. A ``SystemExit`` or
# ``KeyboardInterrupt`` it raises comes out of the task's constructor, after asyncio recorded
# it as the task's exception (its rule for these two). It fails the call, but the task, which
# the constructor never returned, is freed at once (within the constructor) and would log its
# exception as never retrieved.
_starting_coro = None


def _exception_handler(loop, context):
    """The loop's exception handler: asyncio's own, but for the log of a task freed as its
    eager start raised ``SystemExit`` or ``KeyboardInterrupt``, which failed its call. That
    task's coroutine is gone from it by then: the exception is known as the coroutine's by its
    traceback, which holds the coroutine's frame."""
    exc = context.get("exception")
    code = getattr(_starting_coro, "cr_code", None)
    if code is not None and isinstance(exc, (SystemExit, KeyboardInterrupt)):
        tb = exc.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code is code:
                return
            tb = tb.tb_next
    loop.default_exception_handler(context)


async def _await(aw):
    return await aw


def _start_task(call, aw):
    """Runs awaitable ``aw`` (the running call ``call``) as a task of the interpreter's loop,
    started in the loop's next turn (``_start_tasks``)."""
    _starting.append((call, aw))
    if len(_starting) == 1 and _loop is not None and _loop.is_running():
        _loop.call_soon(_start_tasks)


def _start_tasks():
    """Starts the tasks of the calls queued by ``_start_task``, in order. Each starts eagerly:
    its coroutine runs here up to its first suspension, so one that never suspends (a quick
    ``async def``) ends without another turn of the loop. A task is started only from the
    running loop, never within ``_start_task``: the Rust side counts a call as started when
    ``_start_task`` returns, and its end must come after that. The queue is emptied only once
    every call in it has started, so no task's end stops the loop before the last one starts."""
    global _starting_coro
    import asyncio

    loop = _get_loop()
    i = 0
    while i < len(_starting):
        call, aw = _starting[i]
        i += 1
        try:
            coro = aw if asyncio.iscoroutine(aw) else _await(aw)
            ctx = _contextvars.Context()
            ctx.run(_call_var.set, call)
            _starting_coro = coro
            task = asyncio.Task(coro, loop=loop, context=ctx, eager_start=True)
        except BaseException as e:
            _native_finish(call, 2, e)
            continue
        finally:
            _starting_coro = None
        _tasks[task] = call
        if task.done():
            _task_done(task)
        else:
            task.add_done_callback(_task_done)
    _starting.clear()
    if not _tasks:
        loop.stop()


def _task_done(task):
    call = _tasks.pop(task, None)
    if call is not None:
        # (state, value): 0 returned value, 1 cancelled, 2 raised value. A cancel is the call's
        # only when the call itself was cancelled: an asyncio cancel of user code's own (a task
        # it cancelled and awaited, its own task cancelled) is a failure of the function, as a
        # ``harrow.Cancelled`` that escaped is in a plain call.
        if task.cancelled():
            if _native_call_cancelled(call):
                state, value = 1, None
            else:
                import asyncio

                state = 2
                value = asyncio.CancelledError(
                    "the call's task was cancelled, not by a cancel of the call"
                )
        else:
            exc = task.exception()
            if exc is None:
                state, value = 0, task.result()
            elif (
                isinstance(exc, Cancelled) or type(exc).__name__ == "CancelledError"
            ) and _native_call_cancelled(call):
                state, value = 1, None
            else:
                state, value = 2, exc
        _native_finish(call, state, value)
    if not _tasks and not _starting:
        task.get_loop().stop()


def _on_wake():
    _native_drain(_wake_fd)
    for task, call in list(_tasks.items()):
        if not task.done() and _native_call_cancelled(call):
            task.cancel()
    _poll_ops()
    _native_take_jobs()


def _run_loop():
    """Runs the loop until no call's task is left (the Rust side calls it while tasks live)."""
    loop = _get_loop()
    if _starting:
        loop.call_soon(_start_tasks)
    loop.call_soon(_on_wake)
    try:
        loop.run_forever()
    except (SystemExit, KeyboardInterrupt):
        # A task's step records these as the task's exception and then raises them out of the
        # loop (asyncio's rule for them). The task's done callback, already scheduled, fails
        # its call with it in the loop's next turn: ``sys.exit()`` in async code is an error of
        # that call, as in a plain function, not the end of the interpreter.
        pass


async def _agen_collect(agen):
    return [item async for item in agen]


async def _agen_stream(ctx, agen):
    # As for a plain generator (`drive_generator`): when the stream cannot go on, the generator
    # is closed here, in the call (its `finally` runs now, and a failure of it is the call's
    # answer); a caller that stopped reading ends the call as the generator's end would.
    try:
        async for item in agen:
            ctx._op(_YIELD, item)
    except HarrowError as e:
        await agen.aclose()
        if str(e).startswith(_NOT_READ):
            return
        raise
    except BaseException:
        await agen.aclose()
        raise
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
    return (name, _utf8(msg), _utf8(tb))


def _utf8(text):
    # Text that cannot be UTF-8 (a lone surrogate: a file name decoded with `os.fsdecode`)
    # would lose the whole message or traceback on its way out: such characters are escaped.
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


_TB = []
_FRAME_TEXT = {}


def _import_tb():
    import linecache
    import traceback

    _TB.extend((traceback, linecache))


def _format_tb(e, name, msg):
    # What traceback.format_exception prints (the chain, every frame with its source line, the
    # exception), without the position carets: those make the standard library parse each
    # frame's source line, which made a failing call cost several times a succeeding one.
    # Exception groups (nested tracebacks) still take the standard library's full path. The
    # modules are imported at the first failure, and each frame's two lines are kept per code
    # object and line (up to 1024): a failing call formats only what it has not seen before.
    if not _TB:
        _import_tb()
    if isinstance(e, BaseExceptionGroup):
        return "".join(_TB[0].format_exception(e))
    out = []
    _format_one(e, (name, msg), out, set())
    return "".join(out)


def _format_one(e, last, out, seen):
    if id(e) in seen:
        return
    seen.add(id(e))
    if e.__cause__ is not None:
        _format_one(e.__cause__, None, out, seen)
        out.append("\nThe above exception was the direct cause of the following exception:\n\n")
    elif e.__context__ is not None and not e.__suppress_context__:
        _format_one(e.__context__, None, out, seen)
        out.append("\nDuring handling of the above exception, another exception occurred:\n\n")
    tb = e.__traceback__
    if tb is not None:
        out.append("Traceback (most recent call last):\n")
        # As the standard library does, a frame repeated more than three times in a row
        # (recursion) is printed three times and then counted.
        prev, count = None, 0
        while tb is not None:
            text = _frame_text(tb)
            if text != prev:
                if count > 3:
                    out.append(_repeated(count - 3))
                prev, count = text, 0
            count += 1
            if count <= 3:
                out.append(text)
            tb = tb.tb_next
        if count > 3:
            out.append(_repeated(count - 3))
    if last is None or isinstance(e, SyntaxError) or getattr(e, "__notes__", None):
        out.extend(_TB[0].format_exception_only(e))
    else:
        out.append("%s: %s\n" % last if last[1] else "%s\n" % last[0])


def _repeated(n):
    return "  [Previous line repeated %d more time%s]\n" % (n, "s" if n > 1 else "")


def _frame_text(tb):
    # One traceback entry's two lines: `File ..., line N, in f` and its source line (stripped).
    # The Rust side calls it for a frame it has not seen before (ffi/exc.rs).
    f = tb.tb_frame
    co = f.f_code
    line = tb.tb_lineno
    key = (co, line)
    text = _FRAME_TEXT.get(key)
    if text is None:
        if not _TB:
            _import_tb()
        text = '  File "%s", line %s, in %s\n' % (co.co_filename, line, co.co_name)
        src = _TB[1].getline(co.co_filename, line, f.f_globals).strip() if line else ""
        if src:
            text += "    %s\n" % src
        if len(_FRAME_TEXT) >= 1024:
            _FRAME_TEXT.clear()
        _FRAME_TEXT[key] = text
    return text


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


# ---- the actor: nurseries, portals, the parent, deadlines ------------------------------------
#
# Every operation below is one call of ``_native_nest(op, target, arg)``: the Rust side runs it
# on the actor's runtime and waits for it with the GIL released (serving the actor's other calls
# meanwhile); a cancel of the call, or of one of its scopes (a nursery block, a deadline),
# interrupts the wait with ``Cancelled``.

(
    _N_OPEN_NURSERY,
    _N_CLOSE_NURSERY,
    _N_START_ACTOR,
    _N_RUN_IN_ACTOR,
    _N_RUN,
    _N_OPEN_CONTEXT,
    _N_CANCEL_ACTOR,
    _N_RESULT,
    _N_CTX_OPEN_STREAM,
    _N_CTX_RESULT,
    _N_CTX_CANCEL,
    _N_SEND,
    _N_RECV,
    _N_CLOSE,
    _N_STOP_READING,
) = range(15)
(
    _N_PUSH_NURSERY,
    _N_PUSH_DEADLINE,
    _N_POP_SCOPE,
    _N_IDENTITY,
    _N_PEER,
    _N_OUTER_CANCELLED,
    _N_PARENT,
) = range(100, 107)
_N_POLL, _N_ABANDON = 107, 108

# ---- the same operations awaited in async calls ----------------------------------------------
#
# In an ``async def`` call (``_call_var`` set) an operation is started on the actor's runtime as
# in a plain call, but handed back pending instead of waited for: the loop polls it whenever its
# wake pipe is written (the operation's waker writes it), and the call's task awaits a future.

_ops = {}  # pending operation (a capsule) -> the asyncio future its task awaits
_SHIELDED_OPS = (_N_CLOSE_NURSERY, _N_CANCEL_ACTOR, _N_CTX_CANCEL)


def _nest(op, target, arg):
    """An operation that does not wait (scopes, identities), in a plain or an async call."""
    call = _call_var.get()
    if call is None:
        return _native_nest(op, target, arg)
    return _native_nest(op, target, arg, call)


def _poll_ops():
    for p, fut in list(_ops.items()):
        if fut.done():
            _ops.pop(p, None)
            continue
        try:
            r = _native_nest(_N_POLL, p, None)
        except BaseException as e:
            _ops.pop(p, None)
            fut.set_exception(e)
            continue
        if r is not None:
            _ops.pop(p, None)
            fut.set_result(r[0])


def _cancelled_at_await(call):
    # The call's own cancel is ``harrow.Cancelled`` (as in a plain call); any other asyncio
    # cancel (a timeout, a task cancelled by user code) stays a ``CancelledError``.
    return Cancelled() if _native_call_cancelled(call) else None


async def _aop(call, op, target, arg):
    """Operation ``op`` of async call ``call``, awaited without blocking the event loop."""
    import asyncio

    p = _native_nest(op, target, arg, call)
    fut = _get_loop().create_future()
    _ops[p] = fut
    _poll_ops()
    if op not in _SHIELDED_OPS:
        try:
            return await fut
        except asyncio.CancelledError:
            _ops.pop(p, None)
            _native_nest(_N_ABANDON, p, None)
            e = _cancelled_at_await(call)
            if e is None:
                raise
            raise e from None
    # Closing a nursery and cancelling an actor are bounded by the teardown ladder and must not
    # be abandoned halfway: they are waited for through a cancel, which is raised afterwards
    # (unless the operation failed: its failure is the outcome).
    interrupted = False
    while not fut.done():
        try:
            await asyncio.wait((fut,))
        except asyncio.CancelledError:
            interrupted = True
    if interrupted and fut.exception() is None:
        e = _cancelled_at_await(call)
        raise asyncio.CancelledError() if e is None else e
    return fut.result()


async def _aportal(call, op, target, arg):
    return Portal(await _aop(call, op, target, arg))


def _actor_name(d):
    return d.get("name", "?") if isinstance(d, dict) else str(d)


class RemoteError(Exception):
    """An error raised in (or relayed by) another actor.

    ``type_name``, ``message``, ``traceback`` (its text, possibly empty), ``source`` (the name
    of the actor that raised it), ``relay_path`` (the actors that forwarded it, in order),
    ``kind`` (``"Raised"``, ``"Cancelled"``, ``"Group"``...), ``canceller`` (for a
    cancellation: who asked), ``children`` (for a group: each failure, a ``RemoteError``).

    Raised out of a call uncaught, it is that call's answer as it was (this actor is added to its
    relay path): the error keeps its source across every hop.
    """

    def __init__(self, remote):
        self._harrow_remote = remote
        self.kind = remote.get("kind")
        self.type_name = remote.get("type_name", "")
        self.message = remote.get("message", "")
        self.traceback = remote.get("traceback", "")
        self.source = _actor_name(remote.get("source"))
        self.relay_path = [_actor_name(a) for a in remote.get("relay_path") or []]
        canceller = remote.get("canceller")
        self.canceller = None if canceller is None else _actor_name(canceller)
        self.children = [RemoteError(c) for c in remote.get("children") or []]
        super().__init__(
            "%s: %s (raised in actor %s)" % (self.type_name, self.message, self.source)
        )

    @property
    def cancelled(self):
        """Whether this is a cancellation (the other actor's call was cancelled)."""
        return self.kind == "Cancelled"


class NurseryError(ExceptionGroup):
    """A nursery's failures: an ``ExceptionGroup`` of the children's errors (``RemoteError``s;
    a child that crashed or leaked is one too, of type ``ActorCrashed``/``ActorLeaked``), plus
    the block's own exception when it raised one.

    Raised out of a call uncaught, the caller gets the whole group, each member with its source
    and relay path, the block's exception among them with its own type and message.
    """

    def __new__(cls, remote, block=None):
        children = list(remote.get("children") or [])
        members = [RemoteError(c) for c in children]
        if block is not None:
            # The block's exception crossed to the nursery as text (``body``) and came back as a
            # ``NurseryBodyError`` member: that member is the exception itself here, once, with
            # its own type and, for a ``RemoteError``, its source; and so is the member the
            # group carries on to a caller if it ends the call.
            body, exc = block
            for i, m in enumerate(members):
                if m.type_name == "NurseryBodyError" and m.message == body:
                    members[i] = exc
                    children[i] = _as_member(children[i], exc)
                    remote = dict(remote, children=children)
                    break
            else:
                # The nursery kept no member for it (it was raised after the teardown began):
                # it is one all the same, here and in what a caller gets.
                members.append(exc)
                if not isinstance(exc, Cancelled):
                    children.append(_block_member(remote, exc))
                    remote = dict(
                        remote, children=children, message=_recount(remote.get("message"), 1)
                    )
        if not members:
            members = [RemoteError(remote)]
        self = super().__new__(cls, remote.get("message") or "nursery failed", members)
        self._harrow_remote = remote
        return self

    def __init__(self, remote, block=None):
        pass

    def derive(self, excs):
        return ExceptionGroup(self.message, excs)


def _remote_error(remote):
    return RemoteError(remote)


def _as_member(text_member, exc):
    """The wire form of a nursery block's exception ``exc``, in place of the text member that
    stood for it: a ``RemoteError``'s own, else the text member's source and traceback with the
    exception's type and message."""
    if isinstance(exc, RemoteError):
        return exc._harrow_remote
    return dict(text_member, type_name=type(exc).__name__, message=str(exc))


def _recount(message, more):
    """A nursery group's message (`N failure(s) in the nursery of X`) counting ``more`` more
    failures; any other message as it is."""
    head, _, rest = (message or "").partition(" ")
    _, _, where = rest.partition(" ")
    if not head.isdigit() or not rest.startswith(("failure ", "failures ")):
        return message
    n = int(head) + more
    return "%d failure%s %s" % (n, "" if n == 1 else "s", where)


def _block_member(group, exc):
    """The wire form of a nursery block's exception ``exc`` that the nursery kept no member for:
    a ``RemoteError``'s own, else one raised in this actor (the group's source), with the
    exception's type, message and traceback."""
    if isinstance(exc, RemoteError):
        return exc._harrow_remote
    name, msg, tb = _format_exc(exc)
    return dict(
        group,
        kind="Raised",
        type_name=name,
        message=msg,
        traceback=tb,
        relay_path=[],
        canceller=None,
        children=[],
    )


def _nursery_error(remote):
    return NurseryError(remote)


def _fn_path(func):
    if isinstance(func, str):
        return func
    mod = getattr(func, "__module__", None)
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", None)
    if not mod or not name:
        raise TypeError("a function is a str 'module:function' or a module-level function")
    return "%s:%s" % (mod, name)


def _call_args(arg, kwargs):
    if not kwargs:
        return arg
    return {"harrow:args": arg, "harrow:kwargs": dict(kwargs)}


class Actor:
    """``harrow.current_actor()``: this actor's ``name``, ``uid``, ``backend``, and ``parent``
    (a ``Portal`` to it: calls, contexts and ``cancel_actor()`` go up the link)."""

    __slots__ = ("name", "uid", "backend", "parent", "offered_backends")

    def __init__(self, name, uid, backend, parent, offered):
        self.name = name
        self.uid = uid
        self.backend = backend
        self.parent = None if parent is None else Portal(parent)
        self.offered_backends = offered

    def __repr__(self):
        return "<harrow actor %s (%s, %s)>" % (self.name, self.uid, self.backend)


def current_actor():
    """The actor running this call (inside a call served by a harrow actor)."""
    name, uid, backend, offered = _nest(_N_IDENTITY, None, None)
    return Actor(name, uid, backend, _nest(_N_PARENT, None, None), offered)


class Portal:
    """A handle on another actor (a child, or this actor's parent).

    ``run(func, arg=None, **kwargs)``, ``open_context(func, arg=None, **kwargs)``,
    ``cancel_actor()``, ``result()`` (a ``run_in_actor`` child's); ``name``, ``uid``,
    ``backend``.
    """

    __slots__ = ("_h", "name", "uid", "backend")

    def __init__(self, h):
        self._h = h
        self.name, self.uid, self.backend, _ = _nest(_N_PEER, h, None)

    def run(self, func, arg=None, **kwargs):
        """Calls ``func`` ("module:function") in that actor and returns its value; its failure
        raises ``RemoteError``. In an ``async def`` call: a coroutine to await."""
        a = [_fn_path(func), _call_args(arg, kwargs)]
        call = _call_var.get()
        if call is not None:
            return _aop(call, _N_RUN, self._h, a)
        return _native_nest(_N_RUN, self._h, a)

    def open_context(self, func, arg=None, **kwargs):
        """Opens a context with ``func`` in that actor: returns a ``PortalContext`` once the
        callee called ``started(value)`` (that value is its ``first``). As a ``with`` block it
        gives ``(ctx, first)``, waits for the result at the end, and cancels the context when
        the block raises. In an ``async def`` call: awaitable, and an ``async with`` block."""
        a = [_fn_path(func), _call_args(arg, kwargs)]
        call = _call_var.get()
        if call is not None:
            return _AsyncOpenContext(call, self._h, a)
        h, first = _native_nest(_N_OPEN_CONTEXT, self._h, a)
        return PortalContext(h, first)

    def cancel_actor(self):
        """Cancels that actor. A child is torn down with the ladder (True if it ended by
        itself); the parent is asked to cancel itself (True once it acknowledged). In an
        ``async def`` call: a coroutine to await."""
        call = _call_var.get()
        if call is not None:
            return _aop(call, _N_CANCEL_ACTOR, self._h, None)
        return _native_nest(_N_CANCEL_ACTOR, self._h, None)

    def result(self):
        """A ``run_in_actor`` child's result (waits for it; its failure raises). In an
        ``async def`` call: a coroutine to await."""
        call = _call_var.get()
        if call is not None:
            return _aop(call, _N_RESULT, self._h, None)
        return _native_nest(_N_RESULT, self._h, None)

    def __repr__(self):
        return "<harrow portal to %s (%s)>" % (self.name, self.uid)


class PortalContext:
    """The caller's side of a context: ``first`` (the callee's ``started`` value),
    ``open_stream()``, ``result()``, ``cancel()``."""

    __slots__ = ("_h", "first", "_outcome", "_streams")

    def __init__(self, h, first):
        self._h = h
        self.first = first
        self._outcome = None
        self._streams = []  # opened here: they read no more once the context's block ends

    def open_stream(self):
        """Opens the context's bidirectional stream (send/recv/iteration, with credit). In an
        ``async def`` call: a coroutine to await."""
        call = _call_var.get()
        if call is not None:
            return _astream(call, self._h, self._streams)
        s = PortalStream(_native_nest(_N_CTX_OPEN_STREAM, self._h, None))
        self._streams.append(s)
        return s

    def _stop_reading(self):
        # The block ended: its streams read no more, so that a producer waiting for credit on
        # the other side is told (its send fails) instead of waiting for ever.
        for s in self._streams:
            s._stop_reading()

    async def _astop_reading(self):
        for s in self._streams:
            await s._stop_reading()

    def result(self):
        """Waits for the callee's return value (its failure raises ``RemoteError``). In an
        ``async def`` call: a coroutine to await."""
        call = _call_var.get()
        if call is not None:
            return self._aresult(call)
        if self._outcome is None:
            # A wait given up (a deadline, a cancel: BaseException) leaves the context running
            # and records nothing: result() may wait again, and leaving the block cancels it.
            try:
                out = (True, _native_nest(_N_CTX_RESULT, self._h, None))
            except Exception as e:
                out = (False, e)
            self._outcome = out
        ok, v = self._outcome
        if ok:
            return v
        raise v

    async def _aresult(self, call):
        if self._outcome is None:
            try:
                out = (True, await _aop(call, _N_CTX_RESULT, self._h, None))
            except Exception as e:
                out = (False, e)
            self._outcome = out
        ok, v = self._outcome
        if ok:
            return v
        raise v

    def cancel(self):
        """Cancels the context; its outcome is then ``result()``'s. In an ``async def`` call: a
        coroutine to await."""
        call = _call_var.get()
        if call is not None:
            return _aop(call, _N_CTX_CANCEL, self._h, None)
        _native_nest(_N_CTX_CANCEL, self._h, None)

    def __enter__(self):
        return (self, self.first)

    def __exit__(self, exc_type, exc, tb):
        # A block that raised cancels the context below; one that ended reads no more.
        if exc is None:
            self._stop_reading()
            self.result()
        elif self._outcome is None:
            with shield():
                try:
                    self.cancel()
                    self.result()
                except Exception as err:
                    _block_and_context_failed(exc, err)
        return False


def _carries(exc, err):
    """Whether ``exc``, or an exception it was raised from or while handling, is the remote
    failure ``err`` (the block got the callee's failure, from a ``recv`` say, and it went on)."""
    seen = 0
    while exc is not None and seen < 64:
        if isinstance(exc, RemoteError) and exc._harrow_remote == err._harrow_remote:
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


def _block_and_context_failed(exc, err):
    """A context's block raised ``exc``, and ending the context (its cancel, then its outcome)
    raised ``err``. The cancel itself adds nothing, nor a failure the block already carries.
    The callee's own failure is reported with the block's: both in one ``ExceptionGroup`` when
    ``exc`` is an ``Exception`` (each keeps its source); when it is a cancel of this call or a
    ``KeyboardInterrupt``, that goes on, with the callee's failure noted on it. Any other
    failure to end the context (the link closed, the cancel not confirmed in time) is noted on
    ``exc``, which goes on: it does not replace the block's exception."""
    if isinstance(err, RemoteError):
        if err.cancelled or _carries(exc, err):
            return
        if isinstance(exc, Exception):
            raise ExceptionGroup(
                "the context's block raised, and its callee failed too", [exc, err]
            ) from None
    exc.add_note("ending the context failed too: %s" % err)


class PortalStream:
    """A context's stream on the caller's side: ``send(v)``, ``recv()`` (raises
    ``EndOfStream`` at the end), iteration, ``close()``, ``with`` (closes on a normal exit)."""

    __slots__ = ("_h",)

    def __init__(self, h):
        self._h = h

    def send(self, value):
        """Sends one item (waits for flow-control credit). Awaitable in an async call."""
        call = _call_var.get()
        if call is not None:
            return _aop(call, _N_SEND, self._h, value)
        _native_nest(_N_SEND, self._h, value)

    def recv(self):
        """The next item; raises ``EndOfStream`` once the peer stopped its side. Awaitable in
        an async call."""
        call = _call_var.get()
        if call is not None:
            return _aop(call, _N_RECV, self._h, None)
        return _native_nest(_N_RECV, self._h, None)

    def close(self):
        """Finishes this side. Idempotent. Awaitable in an async call."""
        call = _call_var.get()
        if call is not None:
            return _aop(call, _N_CLOSE, self._h, None)
        _native_nest(_N_CLOSE, self._h, None)

    def _stop_reading(self):
        # Reads no more: the peer is told (its sends fail), what arrives is dropped. Never waits.
        # In an async call: a coroutine to await.
        call = _call_var.get()
        if call is not None:
            return _aop(call, _N_STOP_READING, self._h, None)
        _native_nest(_N_STOP_READING, self._h, None)

    def __aiter__(self):
        return self

    async def __anext__(self):
        try:
            return await self.recv()
        except EndOfStream:
            raise StopAsyncIteration from None

    async def __aenter__(self):
        return self

    # Closed only when the block ended normally: a close is the end of the stream, and a block
    # that raised did not finish (the context is cancelled when its own block ends so). Nor does
    # a failing close then replace the block's exception. What the peer still sends may be read
    # after the block; the context's block ending ends the reading.
    async def __aexit__(self, exc_type, exc, tb):
        if exc is None:
            await self.close()
        return False

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return _native_nest(_N_RECV, self._h, None)
        except EndOfStream:
            raise StopIteration from None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None:
            self.close()
        return False


async def _astream(call, h, streams):
    s = PortalStream(await _aop(call, _N_CTX_OPEN_STREAM, h, None))
    streams.append(s)
    return s


class _AsyncOpenContext:
    """``portal.open_context(...)`` in an async call: ``await`` it for a ``PortalContext``, or
    ``async with`` it for ``(ctx, first)`` (the result is awaited at the end, the context
    cancelled when the block raises)."""

    __slots__ = ("_call", "_h", "_arg", "_ctx")

    def __init__(self, call, h, arg):
        self._call = call
        self._h = h
        self._arg = arg
        self._ctx = None

    async def _open(self):
        h, first = await _aop(self._call, _N_OPEN_CONTEXT, self._h, self._arg)
        return PortalContext(h, first)

    def __await__(self):
        return self._open().__await__()

    async def __aenter__(self):
        self._ctx = await self._open()
        return (self._ctx, self._ctx.first)

    async def __aexit__(self, exc_type, exc, tb):
        ctx = self._ctx
        if exc is None:
            await ctx._astop_reading()
            await ctx.result()
        elif ctx._outcome is None:
            try:
                await ctx.cancel()
                await ctx.result()
            except Exception as err:
                _block_and_context_failed(exc, err)
            except Cancelled:
                # The outcome's wait was interrupted (this call, or one of its scopes, was
                # cancelled): the block's exception goes on.
                pass
        return False


def _spec(name, backend, modules, sys_path, resolver, params):
    spec = {"name": name, "backend": backend}
    if modules is not None:
        spec["modules"] = list(modules)
    if sys_path is not None:
        spec["sys_path"] = [str(p) for p in sys_path]
    if resolver is not None:
        spec["resolver"] = resolver
    if params is not None:
        spec["params"] = params
    return spec


class Nursery:
    """What ``with harrow.open_nursery() as n:`` gives: ``start_actor``, ``run_in_actor``."""

    __slots__ = ("_h",)

    def __init__(self, h):
        self._h = h

    def start_actor(
        self,
        name,
        backend=None,
        *,
        modules=None,
        sys_path=None,
        resolver=None,
        params=None,
    ):
        """Starts child ``name`` on ``backend`` (a name the host offers: this actor's own
        backend, the default, always; ``"subint"``, ``"pyprocess"``, ``"process"``,
        ``"thread"`` when offered) and returns a ``Portal`` to it once it is up.
        A Python child (subint, pyprocess) exposes this actor's modules and ``sys.path`` unless
        ``modules`` / ``sys_path`` say otherwise; ``resolver`` names the Rust functions (offered by the host)
        a thread child serves; ``params`` are raw backend parameters. It lives until the
        nursery ends or it is cancelled."""
        spec = _spec(name, backend, modules, sys_path, resolver, params)
        call = _call_var.get()
        if call is not None:
            return _aportal(call, _N_START_ACTOR, self._h, spec)
        return Portal(_native_nest(_N_START_ACTOR, self._h, spec))

    def run_in_actor(
        self,
        func,
        arg=None,
        *,
        name=None,
        backend=None,
        modules=None,
        sys_path=None,
        resolver=None,
        params=None,
        **kwargs
    ):
        """Starts a child that runs one call, ``func(arg, **kwargs)``; returns its ``Portal``
        (``result()`` waits for the value). A failure fails the nursery; the child is torn down
        once its call returned."""
        path = _fn_path(func)
        if name is None:
            name = path.rsplit(":", 1)[-1].replace(".", "-")
        spec = _spec(name, backend, modules, sys_path, resolver, params)
        spec["func"] = path
        spec["args"] = _call_args(arg, kwargs)
        call = _call_var.get()
        if call is not None:
            return _aportal(call, _N_RUN_IN_ACTOR, self._h, spec)
        return Portal(_native_nest(_N_RUN_IN_ACTOR, self._h, spec))


def _block_of(group, body, exc, cancel):
    """What a nursery block that ended with ``exc`` adds to its group: ``(body, member)``, or
    None. A cancel adds nothing. An ``Exception`` is a member as itself; any other
    ``BaseException`` (``SystemExit``, ``KeyboardInterrupt``: not a cancel, and not one an
    ``ExceptionGroup`` may hold) as a ``RemoteError`` of its type and message, so that it is
    reported, here and to a caller, rather than dropped."""
    if exc is None or cancel:
        return None
    if isinstance(exc, Exception):
        return (body, exc)
    return (body, RemoteError(_block_member(group._harrow_remote, exc)))


class open_nursery:
    """``with harrow.open_nursery() as n:`` supervises the children started in the block.

    At the end of the block it waits for the ``run_in_actor`` results, then tears down the
    children still running. The first failure (a child's failing call, a crash, the block's
    own exception) cancels the block (its harrow waits raise ``Cancelled``) and every other
    child; the failures are raised together as ``NurseryError``, an ``ExceptionGroup``.
    """

    __slots__ = ("_h",)

    def __init__(self):
        self._h = None

    def __enter__(self):
        self._h = _native_nest(_N_OPEN_NURSERY, None, None)
        _native_nest(_N_PUSH_NURSERY, self._h, None)
        return Nursery(self._h)

    def __exit__(self, exc_type, exc, tb):
        _native_nest(_N_POP_SCOPE, None, None)
        body = None
        if exc is not None:
            body = (
                "harrow.Cancelled"
                if isinstance(exc, Cancelled)
                else "%s: %s" % (type(exc).__name__, exc)
            )
        try:
            _native_nest(_N_CLOSE_NURSERY, self._h, body)
        except NurseryError as group:
            block = _block_of(group, body, exc, body == "harrow.Cancelled")
            if block is not None:
                raise NurseryError(group._harrow_remote, block) from None
            raise
        return False

    # ``async with harrow.open_nursery() as n:`` in an ``async def`` call: the same nursery,
    # whose operations are awaited (``await n.start_actor(...)``) without blocking the loop.

    async def __aenter__(self):
        call = _call_var.get()
        if call is None:
            raise HarrowError(
                "async with harrow.open_nursery() is for async def functions served by a "
                "harrow actor (a plain function uses `with`)"
            )
        self._h = await _aop(call, _N_OPEN_NURSERY, None, None)
        _native_nest(_N_PUSH_NURSERY, self._h, None, call)
        return Nursery(self._h)

    async def __aexit__(self, exc_type, exc, tb):
        call = _call_var.get()
        _native_nest(_N_POP_SCOPE, None, None, call)
        body = None
        if exc is not None:
            cancel = isinstance(exc, Cancelled) or type(exc).__name__ == "CancelledError"
            body = "harrow.Cancelled" if cancel else "%s: %s" % (type(exc).__name__, exc)
        try:
            await _aop(call, _N_CLOSE_NURSERY, self._h, body)
        except NurseryError as group:
            block = _block_of(group, body, exc, body == "harrow.Cancelled")
            if block is not None:
                raise NurseryError(group._harrow_remote, block) from None
            raise
        return False


class move_on_after:
    """``with harrow.move_on_after(s) as scope:``: the harrow waits in the block end with
    ``Cancelled`` after ``s`` seconds, and the block is left quietly (``scope.cancelled_caught``
    is then True). A cancel from outside goes on: of the call itself, or of an enclosing scope
    (a nursery that cancelled its block, an outer deadline) that fired too."""

    __slots__ = ("seconds", "cancelled_caught")

    def __init__(self, seconds):
        self.seconds = float(seconds)
        self.cancelled_caught = False

    def __enter__(self):
        _nest(_N_PUSH_DEADLINE, None, self.seconds)
        return self

    def _caught(self, exc):
        fired = _nest(_N_POP_SCOPE, None, None)
        return (
            fired
            and isinstance(exc, Cancelled)
            and not _nest(_N_OUTER_CANCELLED, None, None)
        )

    def __exit__(self, exc_type, exc, tb):
        if self._caught(exc):
            self.cancelled_caught = True
            return True
        return False


class fail_after(move_on_after):
    """``with harrow.fail_after(s):``: as ``move_on_after``, but the deadline raises
    ``TimeoutError``."""

    __slots__ = ()

    def __exit__(self, exc_type, exc, tb):
        if self._caught(exc):
            self.cancelled_caught = True
            raise TimeoutError("the block did not end within %g s" % self.seconds) from None
        return False


# ---- discovery: other actors of the tree, by name ---------------------------------------------
#
# Lookups go to the tree's registrar (in the root actor) through this actor's parent link; a
# found actor is reached over a peer link of its own (in memory in the same process, over its
# process's unix socket otherwise). The Rust side runs each as a task on the actor's runtime,
# waited for like every other operation above.

(
    _N_FIND_ACTOR,
    _N_FIND_ACTOR_BY_UID,
    _N_WAIT_FOR_ACTOR,
    _N_LOOKUP_ACTOR,
    _N_QUERY_ACTORS,
    _N_REGISTER_NAMES,
    _N_PEER_CANCEL,
) = range(200, 207)


class ActorInfo:
    """One live actor of the tree as the registrar knows it: ``name``, ``uid``, ``names`` (the
    extra names it registered), ``pid`` (its process), ``backend`` (``"root"``, ``"subint"``,
    ``"thread"``, ``"process"``...), ``parent`` (its parent's uid, None for the root)."""

    __slots__ = ("name", "uid", "names", "pid", "backend", "parent")

    def __init__(self, d):
        self.name = d.get("name", "")
        self.uid = d.get("uid", "")
        self.names = list(d.get("names") or [])
        self.pid = d.get("pid", 0)
        self.backend = d.get("backend", "")
        self.parent = d.get("parent")

    def __repr__(self):
        return "<harrow actor info %s (%s, %s, pid %s)>" % (
            self.name,
            self.uid,
            self.backend,
            self.pid,
        )


class PeerPortal(Portal):
    """A ``Portal`` to an actor found by discovery (not this actor's child nor its parent):
    ``run``, ``open_context`` and ``cancel_actor`` work as on any portal, over a direct link to
    that actor. ``info`` is its ``ActorInfo``. When it has exited, every call raises
    ``HarrowError``."""

    __slots__ = ("info",)

    def __init__(self, h, entry):
        Portal.__init__(self, h)
        self.info = ActorInfo(entry)
        self.backend = self.info.backend

    def cancel_actor(self, timeout=None):
        """Asks that actor to cancel itself (directly, not through the tree): every call it
        serves ends with a cancellation naming this actor, its children are torn down and it
        exits. True once it acknowledged within ``timeout`` seconds (default: the tree's
        cancel-ack bound)."""
        if timeout is not None:
            timeout = _seconds(timeout)
        return _native_nest(_N_PEER_CANCEL, self._h, timeout)

    def result(self):
        """A peer has no call result to wait for (only a ``run_in_actor`` child has)."""
        raise HarrowError("a peer portal has no result (only a run_in_actor child's has)")

    def __repr__(self):
        return "<harrow peer portal to %s (%s, %s)>" % (self.name, self.uid, self.backend)


def _name(name, what="name"):
    if not isinstance(name, str):
        raise TypeError("an actor %s is a str, not %s" % (what, type(name).__name__))
    return name


def _seconds(timeout):
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError("a timeout is a number of seconds, not %s" % type(timeout).__name__)
    t = float(timeout)
    if not (t >= 0.0 and t < float("inf")):
        raise ValueError("a timeout is a finite number of seconds >= 0, not %r" % (timeout,))
    if t > _MAX_WAIT:
        raise ValueError("a timeout of %r s is too long (at most a year)" % (timeout,))
    return t


# The longest discovery wait (as the native side's bound): a year.
_MAX_WAIT = 365 * 24 * 3600.0


def _peer(found):
    return None if found is None else PeerPortal(found[0], found[1])


def find_actor(name):
    """A ``PeerPortal`` to the live actor answering to ``name`` (its own name or an extra one;
    the first to claim the name when several do), or None when there is none. A portal to this
    actor itself is refused (``HarrowError``): call its functions directly."""
    return _peer(_native_nest(_N_FIND_ACTOR, None, _name(name)))


def find_actor_by_uid(uid):
    """A ``PeerPortal`` to the live actor with this uid, or None."""
    return _peer(_native_nest(_N_FIND_ACTOR_BY_UID, None, _name(uid, "uid")))


def wait_for_actor(name, timeout):
    """Waits, at most ``timeout`` seconds, for an actor answering to ``name`` (it may not exist
    yet), then returns a ``PeerPortal`` to it; raises ``TimeoutError`` when none came. The wait
    is interrupted by a cancel (``Cancelled``) and by deadlines (``move_on_after``)."""
    found = _native_nest(_N_WAIT_FOR_ACTOR, None, [_name(name), _seconds(timeout)])
    if isinstance(found, str):
        raise TimeoutError(found)
    return _peer(found)


def lookup_actor(name):
    """The ``ActorInfo`` of the live actor answering to ``name``, or None; connects to
    nothing."""
    d = _native_nest(_N_LOOKUP_ACTOR, None, _name(name))
    return None if d is None else ActorInfo(d)


def query_actors():
    """Every live actor of the tree (this one and the root included), as ``ActorInfo``s in
    registration order."""
    return [ActorInfo(d) for d in _native_nest(_N_QUERY_ACTORS, None, None)]


def _register_names(self, *names):
    """Registers extra names this actor answers to (until it exits); ``find_actor`` finds it by
    them once no older actor answers to the same name."""
    _native_nest(_N_REGISTER_NAMES, None, [_name(n) for n in names])


# A method of ``current_actor()``'s object (``harrow.current_actor().register_names("svc")``).
Actor.register_names = _register_names
