"""The standard test functions of the conformance suite, in Python.

Twins of ``harrow_testkit::testfns`` (testkit/src/testfns.rs): same names, same contracts. The
nested ones (``spawn_tree``, ``relay_fail``, ``fail_tree``, ``ctx_hold_stuck_child``,
``cancel_parent``, ``ctx_spawn_canceller``) start children of their own from Python, with
``harrow.open_nursery()``: on ``"subint"``, inheriting this actor's modules and ``sys.path``.

A call's value arrives as ONE positional argument; a ``Null`` value means no argument, hence the
``=None`` defaults. The error ``fail`` raises is a ``ValueError``.
"""

import time

import harrow

# Items sent so far by ctx_produce in this actor (its interpreter).
_produced = 0


def echo(v=None):
    """echo(v) -> v, unchanged."""
    return v


def add(ab):
    """add([a, b]) -> a + b."""
    a, b = ab
    return a + b


def fail(msg=None):
    """fail(msg): raises ValueError(msg)."""
    raise ValueError(msg if isinstance(msg, str) else "failed on purpose")


def fail_slowly(args=None):
    """fail_slowly({ms, msg}): blocks for ``ms`` without yielding, then raises ValueError(msg).

    Shielded: like the Rust twin, which never yields, no cancel can land before it fails."""
    args = args if isinstance(args, dict) else {}
    ms = args.get("ms", 0)
    msg = args.get("msg", "failed")
    with harrow.shield():
        time.sleep(max(int(ms), 0) / 1000.0)
        raise ValueError(msg if isinstance(msg, str) else "failed")


def sleep_ms(ms):
    """sleep_ms(ms): a cooperative (cancellable) sleep."""
    harrow.sleep(max(int(ms), 0) / 1000.0)


def busy(v=None):
    """busy(): a loop that never waits (a cancel still lands at a bytecode boundary)."""
    while True:
        pass


def block(v=None):
    """block(): a blocking native wait that cannot be interrupted."""
    time.sleep(3600)


def produced(v=None):
    """produced() -> items sent by ctx_produce in this actor."""
    return _produced


def ctx_started(ctx, v=None):
    """ctx_started(v): started(v), returns "done"."""
    ctx.started(v)
    return "done"


def ctx_started_twice(ctx, v=None):
    """ctx_started_twice(): calls started twice; the second is an error."""
    ctx.started(None)
    ctx.started(None)


def ctx_stream_before_started(ctx, v=None):
    """ctx_stream_before_started(): opens a stream before started; an error."""
    ctx.open_stream()
    ctx.started(None)


def ctx_echo(ctx, v=None):
    """ctx_echo(): started(None), echoes every item until the caller stops; returns the count."""
    ctx.started(None)
    stream = ctx.open_stream()
    n = 0
    for item in stream:
        stream.send(item)
        n += 1
    stream.close()
    return n


def ctx_produce(ctx, n):
    """ctx_produce(n): started(None), sends 0..n, closes; returns n."""
    global _produced
    ctx.started(None)
    stream = ctx.open_stream()
    for i in range(n):
        stream.send(i)
        _produced += 1
    stream.close()
    return n


def ctx_close_first(ctx, v=None):
    """ctx_close_first(): started(None), closes its side at once, then drains the caller's side;
    returns whether a send after close failed (it must)."""
    ctx.started(None)
    stream = ctx.open_stream()
    stream.close()
    try:
        stream.send(None)
        send_failed = False
    except Exception:
        send_failed = True
    for _ in stream:
        pass
    return send_failed


def ctx_wait_forever(ctx, v=None):
    """ctx_wait_forever(): started(None), then waits until cancelled."""
    ctx.started(None)
    while True:
        harrow.sleep(3600)


def ctx_shielded(ctx, args):
    """ctx_shielded({ms, marker}): started(None), then a shielded section of ``ms`` that creates
    the file ``marker`` when it completes."""
    if not isinstance(args, dict) or "ms" not in args or "marker" not in args:
        raise TypeError("ctx_shielded takes {ms, marker}")
    ms = int(args["ms"])
    marker = args["marker"]
    # The shield is entered before started(): a cancel sent as soon as the caller has the first
    # value must not land between started() and the shielded section (in Rust there is no
    # cancellation point there either).
    with harrow.shield():
        ctx.started(None)
        harrow.sleep(max(ms, 0) / 1000.0)
        with open(marker, "wb") as f:
            f.write(b"done")


def _wait_at_gate(d):
    """Waits at the gate in directory ``d``: opens the FIFO ``d/gate`` for reading, marks this
    actor ready, and blocks until the gate's only writer closes it (end of file)."""
    import os
    import threading

    fd = os.open(os.path.join(d, "gate"), os.O_RDONLY)
    try:
        ready = os.path.join(d, "ready-%d-%d" % (os.getpid(), threading.get_ident()))
        with open(ready, "wb") as f:
            f.write(b"ready")
        while os.read(fd, 16):
            pass
    finally:
        os.close(fd)


def exit_mid_call(v=None):
    """exit_mid_call(): calls os._exit(3), which ends this actor (and only this actor)."""
    import os

    os._exit(3)


def fail_at_gate(args):
    """fail_at_gate({dir, msg}): waits at the gate in ``dir``, then raises ValueError(msg). Shielded: once released by the gate it fails whatever cancel
    arrived meanwhile (the twin of the Rust function, which observes its cancel and goes on)."""
    with harrow.shield():
        _wait_at_gate(args["dir"])
        raise ValueError(args.get("msg", "failed at the gate"))


def ctx_cleanup_fails(ctx, ms=None):
    """ctx_cleanup_fails(ms): started(None), waits until cancelled, then runs a cleanup of ``ms``
    milliseconds (None: at once) that fails with ValueError("cleanup failed")."""
    # `started` inside the `try`: the cancel is injected as an asynchronous exception, which can
    # land between `started` returning and the next statement.
    try:
        ctx.started(None)
        while True:
            harrow.sleep(3600)
    except harrow.Cancelled:
        # No shield: the re-armed cancel leaves a cleanup alone while it handles the cancel,
        # however long it runs (Python code here, longer than the re-arm interval).
        deadline = time.monotonic() + (ms or 0) / 1000
        while time.monotonic() < deadline:
            pass
        raise ValueError("cleanup failed")


def gen_count(n):
    """gen_count(n): a one-way stream of 0..n (a generator: each item is streamed)."""
    for i in range(max(int(n), 0)):
        yield i


def gen_marked(marker):
    """gen_marked(marker): an endless one-way stream of 0, 1, 2...; its ``finally`` writes the
    file ``marker``."""
    i = 0
    try:
        while True:
            yield i
            i += 1
    finally:
        open(marker, "w").close()


async def agen_marked(marker):
    """agen_marked(marker): ``gen_marked`` as an async generator."""
    i = 0
    try:
        while True:
            yield i
            i += 1
    finally:
        open(marker, "w").close()


def gen_cleanup_fails(v=None):
    """gen_cleanup_fails(): an endless stream whose ``finally`` raises TypeError."""
    i = 0
    try:
        while True:
            yield i
            i += 1
    finally:
        raise TypeError("producer cleanup failed")


async def agen_cleanup_fails(v=None):
    """agen_cleanup_fails(): ``gen_cleanup_fails`` as an async generator."""
    i = 0
    try:
        while True:
            yield i
            i += 1
    finally:
        raise TypeError("producer cleanup failed")


# ---- nested: Python actors starting children of their own ------------------------------------

_ME = __name__


def _fn(name):
    return "%s:%s" % (_ME, name)


@harrow.context
def spawn_tree(ctx, args):
    """spawn_tree({depth, breadth}): starts ``breadth`` children each running
    spawn_tree(depth - 1), calls started(total actors in this subtree), then waits until
    cancelled."""
    depth = int(args.get("depth", 1))
    breadth = int(args.get("breadth", 1))
    if depth <= 1:
        ctx.started(1)
        while True:
            harrow.sleep(3600)
    with harrow.open_nursery() as n:
        total = 1
        contexts = []
        for i in range(breadth):
            child = n.start_actor("tree-d%d-%d" % (depth - 1, i))
            c = child.open_context(
                _fn("spawn_tree"), {"depth": depth - 1, "breadth": breadth}
            )
            total += int(c.first)
            contexts.append(c)
        ctx.started(total)
        while True:
            harrow.sleep(3600)


def relay_fail(msg=None):
    """relay_fail(msg): starts a child and calls fail(msg) there; its error goes on (relayed)."""
    with harrow.open_nursery() as n:
        leaf = n.start_actor("relay-leaf")
        return leaf.run(_fn("fail"), msg)


def fail_tree(args):
    """fail_tree({depth, breadth, dir}): at depth 1, waits at the gate and raises
    ValueError("leaf <name>"); deeper, a nursery of ``breadth`` run_in_actor children running
    fail_tree(depth - 1), whose failures it raises as one group (the nursery's error)."""
    depth = int(args.get("depth", 1))
    breadth = int(args.get("breadth", 1))
    me = harrow.current_actor().name
    if depth <= 1:
        with harrow.shield():
            _wait_at_gate(args["dir"])
            raise ValueError("leaf %s" % me)
    with harrow.open_nursery() as n:
        for i in range(breadth):
            n.run_in_actor(
                _fn("fail_tree"),
                {"depth": depth - 1, "breadth": breadth, "dir": args["dir"]},
                name="%s.%d" % (me, i),
            )


def busy_marker(path):
    """busy_marker(path): writes the file ``path``, then loops without waiting (a cancel still
    lands at a bytecode boundary)."""
    with open(path, "wb") as f:
        f.write(b"busy")
    while True:
        pass


@harrow.context
def ctx_hold_stuck_child(ctx, marker):
    """ctx_hold_stuck_child(marker): a nursery with one child running busy_marker(marker),
    started(None), then waits for that call; the nursery's outcome is the call's answer."""
    with harrow.open_nursery() as n:
        stuck = n.start_actor("stuck")
        ctx.started(None)
        stuck.run(_fn("busy_marker"), marker)


def cancel_parent(v=None):
    """cancel_parent(): asks this actor's parent to cancel itself."""
    parent = harrow.current_actor().parent
    if parent is None:
        raise RuntimeError("no parent")
    return parent.cancel_actor()


@harrow.context
def ctx_spawn_canceller(ctx, v=None):
    """ctx_spawn_canceller(): started(None), starts a child that asks this actor to cancel
    itself, then waits until cancelled (the nursery ends with the cancel)."""
    ctx.started(None)
    with harrow.open_nursery() as n:
        n.run_in_actor(_fn("cancel_parent"), name="canceller")
        while True:
            harrow.sleep(3600)


@harrow.context
def ctx_call_canceller(ctx, v=None):
    """ctx_call_canceller(): started(None), starts a child and waits for its ``cancel_parent``
    call, whose answer it returns: this actor is cancelled by the child it waits on."""
    ctx.started(None)
    with harrow.open_nursery() as n:
        c = n.start_actor("canceller", modules=[__name__])
        return c.run(_fn("cancel_parent"))


# ---- discovery: twins of harrow_testkit's peer functions (testkit/src/peerfns.rs) ------------


def _find(name):
    p = harrow.find_actor(name)
    if p is None:
        raise LookupError("no actor named %r" % (name,))
    return p


def peer_call(args):
    """peer_call({name, func, args}): finds ``name`` and returns what ``func(args)`` returns
    there."""
    return _find(args["name"]).run(args["func"], args.get("args"))


def peer_wait_call(args):
    """peer_wait_call({name, func, args, timeout_ms}): waits for ``name`` (bounded; a negative
    timeout_ms waits a year, the longest Python allows), then calls."""
    ms = int(args.get("timeout_ms", 5000))
    timeout = 365 * 24 * 3600.0 if ms < 0 else ms / 1000.0
    p = harrow.wait_for_actor(args["name"], timeout)
    return p.run(args["func"], args.get("args"))


def peer_echo_stream(args):
    """peer_echo_stream({name, func, n}): opens context ``func`` (an echo) on ``name``, streams
    0..n through it and returns the sum of the echoes."""
    p = _find(args["name"])
    total = 0
    with p.open_context(args["func"]) as (ctx, _first):
        with ctx.open_stream() as stream:
            for i in range(int(args.get("n", 0))):
                stream.send(i)
                total += stream.recv()
        for _ in stream:
            pass
    return total


def peer_cancel(args):
    """peer_cancel({name}): finds ``name`` and cancels that actor directly; returns whether it
    acked."""
    return _find(args["name"]).cancel_actor(5.0)


def peer_self(v=None):
    """peer_self(): asks for a portal to this actor itself; returns the error text."""
    try:
        harrow.find_actor(harrow.current_actor().name)
    except harrow.HarrowError as e:
        return str(e)
    raise AssertionError("a portal to itself was given")


def register_alias(args):
    """register_alias({alias}): registers an extra name for this actor."""
    harrow.current_actor().register_names(args["alias"])
