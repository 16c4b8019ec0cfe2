"""Python actors as full actors: nurseries, portals, the parent, deadlines (tests/nested.rs
and the integration crate's python_actors tests call these)."""

import os

import harrow

_ME = __name__


def _fn(name):
    return "%s:%s" % (_ME, name)


def whoami(v=None):
    """whoami() -> {name, uid, backend, parent}: this actor's identity, its parent's name."""
    me = harrow.current_actor()
    parent = me.parent
    return {
        "name": me.name,
        "uid": me.uid,
        "backend": me.backend,
        "parent": None if parent is None else parent.name,
    }


def echo(v=None):
    """echo(v) -> v."""
    return v


def fail(msg=None):
    """fail(msg): raises ValueError(msg)."""
    raise ValueError(msg if isinstance(msg, str) else "failed on purpose")


def sleep_ms(ms):
    """sleep_ms(ms): a cancellable sleep."""
    harrow.sleep(max(int(ms), 0) / 1000.0)


def mixed_tree(v=None):
    """mixed_tree(): a nursery with a process child, a subint child and a thread child (the
    thread one serving the host's "testfns" registry); one call each."""
    with harrow.open_nursery() as n:
        proc = n.start_actor("proc-child", backend="process")
        sub = n.start_actor("sub-child")
        thr = n.start_actor("thread-child", backend="thread", resolver="testfns")
        return {
            "process": proc.run("testfns:add", [40, 2]),
            "process_backend": proc.backend,
            "subint": sub.run(_fn("whoami")),
            "thread": thr.run("testfns:echo", "t"),
            "me": harrow.current_actor().name,
            "offered": harrow.current_actor().offered_backends,
        }


def _ready(d):
    return sum(1 for e in os.listdir(d) if e.startswith("ready-"))


def failing_children(v=None):
    """failing_children(): two run_in_actor children that fail together (a process one running
    the Rust ``testfns:fail_at_gate``, a subint one running ``fail_together``): this actor keeps
    the gate, opens it once both are ready, and the nursery raises their group."""
    import shutil
    import tempfile
    import time

    d = tempfile.mkdtemp(prefix="harrow-mixed-")
    gate = os.path.join(d, "gate")
    os.mkfifo(gate)
    try:
        with harrow.open_nursery() as n:
            n.run_in_actor(
                "testfns:fail_at_gate",
                {"dir": d, "msg": "rust side"},
                name="rust-fail",
                backend="process",
            )
            n.run_in_actor(
                _fn("fail_together"),
                {"dir": d, "n": 2, "msg": "python side"},
                name="py-fail",
            )
            # The gate's only writer: open it once the Rust child reads it (bounded), wait
            # until both children are ready, then close it (the Rust child fails at EOF).
            give_up = time.monotonic() + 30
            fd = None
            while fd is None:
                try:
                    fd = os.open(gate, os.O_WRONLY | os.O_NONBLOCK)
                except OSError:
                    if time.monotonic() > give_up:
                        raise
                    harrow.sleep(0.002)
            try:
                while _ready(d) < 2 and time.monotonic() < give_up:
                    harrow.sleep(0.002)
            finally:
                os.close(fd)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def catch_group(v=None):
    """catch_group() -> what ``failing_children``'s NurseryError looks like from Python."""
    try:
        failing_children()
    except harrow.NurseryError as e:
        members = sorted(
            (m.source, m.type_name, m.message, m.relay_path) for m in e.exceptions
        )
        return {
            "is_group": isinstance(e, ExceptionGroup),
            "members": [list(m) for m in members],
        }
    return None


def fail_together(args):
    """fail_together({dir, n, msg}): marks itself ready in ``dir``, waits (shielded, bounded)
    until ``n`` actors are ready, then raises ValueError(msg): failures that happen together,
    whatever the first one cancels."""
    import time

    d = args["dir"]
    with harrow.shield():
        with open(os.path.join(d, "ready-" + harrow.current_actor().uid), "wb") as f:
            f.write(b"ready")
        give_up = time.monotonic() + 30
        while time.monotonic() < give_up:
            if sum(1 for e in os.listdir(d) if e.startswith("ready-")) >= args["n"]:
                break
            time.sleep(0.002)
        raise ValueError(args["msg"])


def two_failures(wait=None):
    """two_failures(wait=False): two subint run_in_actor children that fail together: the
    nursery raises their group. With ``wait``, the block waits meanwhile (the first failure
    cancels it: that cancel is not one of the group's failures)."""
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="harrow-two-")
    try:
        with harrow.open_nursery() as n:
            for i, msg in ((1, "one"), (2, "two")):
                args = {"dir": d, "n": 2, "msg": msg}
                n.run_in_actor(_fn("fail_together"), args, name="fail-%d" % i)
            if wait:
                harrow.sleep(60)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def catch_two(v=None):
    """catch_two() -> what ``two_failures``' NurseryError looks like from Python."""
    try:
        two_failures()
    except harrow.NurseryError as e:
        members = sorted(
            (m.source, m.type_name, m.message, m.relay_path) for m in e.exceptions
        )
        return {
            "is_group": isinstance(e, ExceptionGroup),
            "members": [list(m) for m in members],
        }
    return None


def run_in_actor_result(v=None):
    """run_in_actor_result() -> a run_in_actor child's result (an ``add`` on a subint child)."""
    with harrow.open_nursery() as n:
        p = n.run_in_actor(_fn("echo"), [1, 2, 3], name="echoer")
        return p.result()


def stream_to_child(count):
    """stream_to_child(n): opens a context with a subint child's ``ctx_echo``, sends 0..n,
    reads every echo back, closes; returns the echoes and the context's result."""
    with harrow.open_nursery() as n:
        child = n.start_actor("echoer", modules=["harrow_testfns.conformance"])
        with child.open_context("harrow_testfns.conformance:ctx_echo") as (ctx, first):
            with ctx.open_stream() as s:
                got = []
                for i in range(int(count)):
                    s.send(i)
                    got.append(s.recv())
        return {"first": first, "got": got, "result": ctx.result()}


def stop_reading_early(with_block):
    """stop_reading_early(with_block): opens a context with a child's endless generator
    ``gen_count(10**9)``, reads 3 items and breaks out (in a ``with ctx.open_stream()`` block,
    or without one); the context's block then ends. [the items, the context's result]: the
    generator is told its items are not read, is closed, and the call returns."""
    with harrow.open_nursery() as n:
        child = n.start_actor("producer", modules=["harrow_testfns.conformance"])
        got = []
        with child.open_context("harrow_testfns.conformance:gen_count", 10**9) as (ctx, _):
            if with_block:
                with ctx.open_stream() as s:
                    for item in s:
                        got.append(item)
                        if len(got) == 3:
                            break
            else:
                for item in ctx.open_stream():
                    got.append(item)
                    if len(got) == 3:
                        break
        return [got, ctx.result()]


def producer_stopped(args):
    """producer_stopped({marker, is_async}): reads 3 items of a child's endless generator
    (``gen_marked``, or ``agen_marked``) and breaks out of the stream. [the items, the
    context's result, whether the generator's ``finally`` ran before the call returned]."""
    import os

    marker, is_async = args["marker"], bool(args["is_async"])
    func = "agen_marked" if is_async else "gen_marked"
    with harrow.open_nursery() as n:
        child = n.start_actor("producer", modules=["harrow_testfns.conformance"])
        got = []
        with child.open_context("harrow_testfns.conformance:" + func, marker) as (ctx, _):
            with ctx.open_stream() as s:
                for item in s:
                    got.append(item)
                    if len(got) == 3:
                        break
        result = ctx.result()
        return [got, result, os.path.exists(marker)]


def producer_cleanup_fails(is_async):
    """producer_cleanup_fails(is_async): raises KeyError after 3 items of a child's endless
    generator whose ``finally`` raises TypeError (``gen_cleanup_fails`` or its async twin).
    The sorted [type, type_name] of each member of the group the nursery raises."""
    func = "agen_cleanup_fails" if is_async else "gen_cleanup_fails"
    try:
        with harrow.open_nursery() as n:
            child = n.start_actor("producer", modules=["harrow_testfns.conformance"])
            with child.open_context("harrow_testfns.conformance:" + func) as (ctx, _):
                with ctx.open_stream() as s:
                    for item in s:
                        if item == 2:
                            raise KeyError("consumer failed")
    except ExceptionGroup as e:
        return sorted(
            [type(m).__name__, getattr(m, "type_name", type(m).__name__)] for m in e.exceptions
        )
    return None


def block_raises_after_the_teardown(exit=False):
    """block_raises_after_the_teardown(exit): a child fails, the block sees its nursery's
    teardown (its sleep is cancelled) and then raises KeyError (or, with ``exit``, calls
    ``sys.exit(3)``); the NurseryError ends the call."""
    import sys

    with harrow.open_nursery() as n:
        n.run_in_actor(_fn("fail"), "child", name="failing")
        try:
            harrow.sleep(30)
        except harrow.Cancelled:
            pass
        if exit:
            sys.exit(3)
        raise KeyError("after the teardown")


def parent_waits_on_its_canceller(marker):
    """parent_waits_on_its_canceller(marker): waits on a child's call that asks this actor to
    cancel itself; what the wait raised, if it raised, is written to ``marker``
    (``module.Type``) before it goes on, else ``returned`` (the answer came before the cancel,
    which may then end the nursery's block)."""
    with harrow.open_nursery() as n:
        c = n.start_actor("canceller", modules=["harrow_testfns.conformance"])
        try:
            got = c.run("harrow_testfns.conformance:cancel_parent")
        except BaseException as e:
            with open(marker, "w") as f:
                f.write(type(e).__module__ + "." + type(e).__name__)
            raise
        with harrow.shield():
            with open(marker, "w") as f:
                f.write("returned")
        return got


def raise_surrogate(v=None):
    """raise_surrogate(): raises ValueError with a lone surrogate in its message (a file name
    decoded with ``os.fsdecode``)."""
    raise ValueError("bad byte: \udcff in a file name")


def ctx_returns_later(ctx, ms):
    """ctx_returns_later(ms): started(None), then returns "done" after ``ms``."""
    ctx.started(None)
    harrow.sleep(int(ms) / 1000.0)
    return "done"


def result_after_a_deadline(ms):
    """result_after_a_deadline(ms): opens a context with a child's ``ctx_returns_later(ms)``,
    gives up waiting for its result after 20 ms (``move_on_after``), then waits again: [whether
    the first wait was given up, the second wait's result]. Giving up a wait does not cancel the
    context."""
    with harrow.open_nursery() as n:
        child = n.start_actor("later")
        with child.open_context(_fn("ctx_returns_later"), int(ms)) as (ctx, first):
            with harrow.move_on_after(0.02) as scope:
                ctx.result()
            return [scope.cancelled_caught, ctx.result()]


def recv_after_a_deadline(v=None):
    """recv_after_a_deadline(): opens a context with a child's ``ctx_echo``, gives up one
    ``recv()`` after 20 ms (nothing was sent), then sends 1 and receives its echo: [whether the
    wait was given up, the echo, the context's result]. Giving up a wait does not end the
    stream."""
    with harrow.open_nursery() as n:
        child = n.start_actor("echoer", modules=["harrow_testfns.conformance"])
        with child.open_context("harrow_testfns.conformance:ctx_echo") as (ctx, first):
            with ctx.open_stream() as s:
                with harrow.move_on_after(0.02) as scope:
                    s.recv()
                s.send(1)
                echo = s.recv()
        return [scope.cancelled_caught, echo, ctx.result()]


def kwargs_call(v=None):
    """kwargs_call() -> a child's ``kw`` called with a keyword argument."""
    with harrow.open_nursery() as n:
        child = n.start_actor("kw")
        return child.run(_fn("kw"), 1, b=2)


def kw(a, b=0):
    """kw(a, b) -> [a, b]."""
    return [a, b]


def move_on(ms):
    """move_on(ms) -> whether a 60 s child call was given up after ``ms`` (move_on_after)."""
    with harrow.open_nursery() as n:
        child = n.start_actor("slow")
        with harrow.move_on_after(int(ms) / 1000.0) as scope:
            child.run(_fn("sleep_ms"), 60000)
        return scope.cancelled_caught


def deadline_in_a_cancelled_block(v=None):
    """deadline_in_a_cancelled_block(): in a nursery whose child fails, the block first sees that
    cancel (a wait ends with ``Cancelled``, caught), then waits under ``move_on_after(0)``: that
    wait's ``Cancelled`` comes from both the deadline and the nursery, and the outer cancel wins
    (it goes on out of ``move_on_after``). -> [whether the code after ``move_on_after`` ran,
    ``scope.cancelled_caught``, the nursery error's members' messages]."""
    scope = harrow.move_on_after(0)
    went_on = False
    try:
        with harrow.open_nursery() as n:
            n.run_in_actor(_fn("fail"), "boom", name="failing")
            try:
                harrow.sleep(60)
            except harrow.Cancelled:
                pass
            with scope:
                harrow.sleep(60)
            went_on = True
    except harrow.NurseryError as e:
        return [went_on, scope.cancelled_caught, sorted(m.message for m in e.exceptions)]
    return [went_on, scope.cancelled_caught, []]


def error_in_a_stream_block_past_a_deadline(v=None):
    """error_in_a_stream_block_past_a_deadline(): in a context's stream block under
    ``move_on_after(0.05)``, pure Python runs past the deadline and raises ValueError: the
    stream's exit must not replace it with the deadline's ``Cancelled`` (which ``move_on_after``
    would then swallow). -> [the type name of what left ``move_on_after``, or None,
    ``scope.cancelled_caught``]."""
    import time

    with harrow.open_nursery() as n:
        child = n.start_actor("echoer", modules=["harrow_testfns.conformance"])
        scope = harrow.move_on_after(0.05)
        try:
            with scope:
                with child.open_context("harrow_testfns.conformance:ctx_echo") as (ctx, _):
                    with ctx.open_stream() as s:
                        s.send(1)
                        s.recv()
                        start = time.monotonic()
                        while time.monotonic() - start < 0.2:
                            pass
                        raise ValueError("the block's own")
        except ValueError:
            return ["ValueError", scope.cancelled_caught]
        return [None, scope.cancelled_caught]


def ctx_fail_mid_stream(ctx, v=None):
    """ctx_fail_mid_stream(): started(None), sends 1 and 2 in its stream, then raises
    ValueError("mid-stream")."""
    ctx.started(None)
    with ctx.open_stream() as s:
        s.send(1)
        s.send(2)
        raise ValueError("mid-stream")


def _describe(e):
    if isinstance(e, BaseExceptionGroup):
        return ["group", [_describe(m) for m in e.exceptions]]
    if isinstance(e, harrow.RemoteError):
        return ["remote", e.type_name, e.message, e.source]
    return [type(e).__name__, str(e)]


def context_block_failures(v=None):
    """context_block_failures() -> what leaves a context's block in two cases:
    [the items a caller read from a callee that failed mid-stream, and what left its block;
    what left a block that raised ValueError while its callee fails in its cancel's cleanup]."""
    out = []
    with harrow.open_nursery() as n:
        child = n.start_actor("streamer")
        got = []
        try:
            with child.open_context(_fn("ctx_fail_mid_stream")) as (ctx, _):
                with ctx.open_stream() as s:
                    for item in s:
                        got.append(item)
            out.append([got, None])
        except BaseException as e:
            out.append([got, _describe(e)])
        cleaner = n.start_actor("cleaner", modules=["harrow_testfns.conformance"])
        try:
            with cleaner.open_context("harrow_testfns.conformance:ctx_cleanup_fails") as (c, _):
                raise ValueError("the block's own")
        except BaseException as e:
            out.append(_describe(e))
    return out


def _block_beside_a_failing_child(relay):
    """A nursery whose child fails while its block raises too: a ValueError of its own, or
    (``relay``) a RemoteError it got from another child's call."""
    import shutil
    import tempfile
    import time

    d = tempfile.mkdtemp(prefix="harrow-both-")
    try:
        with harrow.open_nursery() as n:
            raised = ValueError("the block's own")
            if relay:
                other = n.start_actor("other")
                try:
                    other.run(_fn("fail"), "relayed")
                except harrow.RemoteError as e:
                    raised = e
            args = {"dir": d, "n": 1, "msg": "child"}
            n.run_in_actor(_fn("fail_together"), args, name="failing")
            # The child is about to fail: raise beside it (pure Python, no harrow wait).
            give_up = time.monotonic() + 30
            while _ready(d) < 1 and time.monotonic() < give_up:
                time.sleep(0.002)
            raise raised
    finally:
        shutil.rmtree(d, ignore_errors=True)


def block_and_child_fail(v=None):
    """block_and_child_fail() -> the members of the NurseryError of a nursery whose child fails
    while its block raises too: first a ValueError of its own, then a RemoteError it got from
    another child's call (each member: [type name, message, source or None], sorted)."""

    def describe(m):
        if isinstance(m, harrow.RemoteError):
            return [m.type_name, m.message, m.source]
        return [type(m).__name__, str(m), None]

    out = []
    for relay in (False, True):
        try:
            _block_beside_a_failing_child(relay)
        except harrow.NurseryError as e:
            out.append(sorted(describe(m) for m in e.exceptions))
    return out


def block_and_child_fail_uncaught(relay=False):
    """block_and_child_fail_uncaught(relay): the same nursery as ``block_and_child_fail``, its
    NurseryError left to end the call."""
    _block_beside_a_failing_child(bool(relay))


def fail_after(ms):
    """fail_after(ms): a 60 s harrow.sleep under fail_after(ms): raises TimeoutError."""
    with harrow.fail_after(int(ms) / 1000.0):
        harrow.sleep(60)


def hold_child_call(marker):
    """hold_child_call(marker): starts a child, writes ``marker``, then waits in a 60 s call to
    it (the actor serves its other calls meanwhile); a cancel interrupts the wait with
    ``harrow.Cancelled``, after which it writes ``marker + ".cancelled"``."""
    with harrow.open_nursery() as n:
        child = n.start_actor("held")
        with open(marker, "wb") as f:
            f.write(b"waiting")
        try:
            child.run(_fn("sleep_ms"), 60000)
        except harrow.Cancelled:
            with open(marker + ".cancelled", "wb") as f:
                f.write(b"cancelled")
            raise


def cancel_child(v=None):
    """cancel_child() -> [whether a child's cancel_actor() ended it cleanly, what a call to it
    raises afterwards]."""
    with harrow.open_nursery() as n:
        child = n.start_actor("doomed")
        child.run(_fn("echo"), 1)
        clean = child.cancel_actor()
        try:
            child.run(_fn("echo"), 2)
            after = "answered"
        except harrow.HarrowError:
            after = "HarrowError"
        except harrow.RemoteError as e:
            after = "RemoteError " + e.type_name
        return [clean, after]


def call_parent(v=None):
    """call_parent(v) -> the parent's ``echo(v)``, called up the link."""
    return harrow.current_actor().parent.run(_fn("echo"), v)


def parent_call_via_child(v=None):
    """parent_call_via_child(v) -> a child calling back into this actor (its parent)."""
    with harrow.open_nursery() as n:
        child = n.start_actor("caller")
        return child.run(_fn("call_parent"), v)


def outside_call_fails(v=None):
    """outside_call_fails() -> the error text of current_actor() from a Python thread-less
    context that is not a call: here, from a nursery handle used after its block."""
    with harrow.open_nursery() as n:
        pass
    try:
        n.start_actor("late")
    except harrow.HarrowError as e:
        return str(e)
    return None


def pid(v=None):
    """pid() -> this process's id."""
    return os.getpid()


async def from_async(v=None):
    """from_async() -> the error text of a plain ``with harrow.open_nursery()`` in an async def
    function (a clear harrow.HarrowError: it uses ``async with``, see aio_nested.py)."""
    try:
        with harrow.open_nursery():
            pass
    except harrow.HarrowError as e:
        return str(e)
    return None


def child_on(backend):
    """child_on(backend) -> whoami() of a child started on ``backend`` (a Python backend),
    with the offered backends of this actor: {child, offered}."""
    with harrow.open_nursery() as n:
        child = n.start_actor("on-" + backend, backend=backend)
        return {
            "child": child.run(_fn("whoami")),
            "offered": harrow.current_actor().offered_backends,
        }
