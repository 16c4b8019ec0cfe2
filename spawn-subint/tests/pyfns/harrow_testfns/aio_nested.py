"""Nurseries and portals from ``async def`` functions (tests/async_nested.rs calls these)."""

import os
import time

import harrow

_ME = __name__
_ACTORS = "harrow_testfns.actors"


def _fn(name):
    return "%s:%s" % (_ME, name)


def wait_for_file(path):
    """wait_for_file(path): waits (cancellably, bounded) until ``path`` exists; returns True."""
    give_up = time.monotonic() + 30
    while not os.path.exists(path):
        if time.monotonic() > give_up:
            raise TimeoutError("%s never appeared" % path)
        harrow.sleep(0.002)
    return True


def _touch(path):
    with open(path, "wb") as f:
        f.write(b"x")


async def run_children(v=None):
    """run_children() -> [a started child's echo, its name, a run_in_actor child's result, this
    actor's name, two calls gathered]: everything awaited in ``async with
    harrow.open_nursery()``."""
    import asyncio

    async with harrow.open_nursery() as n:
        child = await n.start_actor("achild")
        echoed = await child.run(_ACTORS + ":echo", "hi")
        p = await n.run_in_actor(_ACTORS + ":echo", [1, 2, 3], name="aresult")
        result = await p.result()
        both = await asyncio.gather(
            child.run(_ACTORS + ":echo", 1), child.run(_ACTORS + ":echo", 2)
        )
        return [echoed, child.name, result, harrow.current_actor().name, list(both)]


async def context_stream(count):
    """context_stream(n): ``async with portal.open_context(...)`` with a child's ``ctx_echo``:
    sends 0..n over the stream, reads every echo back; -> {first, got, result}."""
    async with harrow.open_nursery() as n:
        child = await n.start_actor("aechoer", modules=["harrow_testfns.conformance"])
        async with child.open_context("harrow_testfns.conformance:ctx_echo") as (ctx, first):
            async with await ctx.open_stream() as s:
                got = []
                for i in range(int(count)):
                    await s.send(i)
                    got.append(await s.recv())
        return {"first": first, "got": got, "result": await ctx.result()}


async def stream_both_ways_at_once(count):
    """stream_both_ways_at_once(n): a child's ``ctx_echo`` stream driven by two tasks at once,
    one sending 0..n then closing, the other receiving until the end; meanwhile a third task
    tries a second ``result()`` wait and an ``open_stream()`` while the first result wait holds
    the context. -> {got, result, second_result, open_stream_error}."""
    import asyncio

    async with harrow.open_nursery() as n:
        child = await n.start_actor("abidi", modules=["harrow_testfns.conformance"])
        async with child.open_context("harrow_testfns.conformance:ctx_echo") as (ctx, _):
            s = await ctx.open_stream()

            async def send_all():
                for i in range(int(count)):
                    await s.send(i)
                await s.close()

            async def recv_all():
                got = []
                async for item in s:
                    got.append(item)
                return got

            async def result_twice():
                first = asyncio.ensure_future(ctx.result())
                await asyncio.sleep(0)
                try:
                    await ctx.open_stream()
                    opened = None
                except harrow.HarrowError as e:
                    opened = str(e)
                second = await ctx.result()
                return [await first, second, opened]

            _, got, (result, second, opened) = await asyncio.gather(
                send_all(), recv_all(), result_twice()
            )
        return {
            "got": got,
            "result": result,
            "second_result": second,
            "open_stream_error": opened,
        }


async def two_failures(wait=None):
    """two_failures(dir=None): two run_in_actor children failing together in an async
    nursery; with ``dir``, the block meanwhile starts a third child and awaits its long call
    (the first failure cancels it with harrow.Cancelled, recorded as ``dir/block.cancelled``;
    that cancel is not one of the group's failures)."""
    import shutil
    import tempfile

    d = tempfile.mkdtemp(prefix="harrow-atwo-")
    try:
        async with harrow.open_nursery() as n:
            # With ``wait`` the block is the third to mark itself ready, right before its await
            # of the sleeper's call (no await point in between): the children fail only then,
            # so the cancel lands at that await and not at an earlier one of the block.
            ready = 3 if wait else 2
            for i, msg in ((1, "one"), (2, "two")):
                args = {"dir": d, "n": ready, "msg": msg}
                await n.run_in_actor(_ACTORS + ":fail_together", args, name="afail-%d" % i)
            if wait:
                try:
                    sleeper = await n.start_actor("asleeper")
                    _touch(os.path.join(d, "ready-block"))
                    await sleeper.run(_ACTORS + ":sleep_ms", 60000)
                except harrow.Cancelled:
                    _touch(os.path.join(wait, "block.cancelled"))
                    raise
    finally:
        shutil.rmtree(d, ignore_errors=True)


async def catch_two(marker_dir=None):
    """catch_two(dir=None) -> what ``two_failures``' NurseryError looks like from Python."""
    try:
        await two_failures(marker_dir)
    except harrow.NurseryError as e:
        members = sorted(
            (m.source, m.type_name, m.message, m.relay_path) for m in e.exceptions
        )
        return {
            "is_group": isinstance(e, ExceptionGroup),
            "members": [list(m) for m in members],
        }
    return None


async def hold_child_call(marker):
    """hold_child_call(marker): creates ``marker`` once it awaits a child's long call; a cancel
    of this call is harrow.Cancelled at that await (``marker.cancelled`` is then created)."""
    async with harrow.open_nursery() as n:
        child = await n.start_actor("aholder")
        try:
            waiting = child.run(_ACTORS + ":sleep_ms", 60000)
            _touch(marker)
            await waiting
        except harrow.Cancelled:
            _touch(marker + ".cancelled")
            raise


async def wait_on_child(args):
    """wait_on_child({marker, release}): awaits a child's call that ends once ``release``
    exists, after creating ``marker``; -> the child's answer."""
    async with harrow.open_nursery() as n:
        child = await n.start_actor("await-release")
        waiting = child.run(_fn("wait_for_file"), args["release"])
        _touch(args["marker"])
        return await waiting


async def release(path):
    """release(path): creates ``path`` (another async call of the same actor)."""
    _touch(path)
    return "released"


async def plain_with_fails(v=None):
    """plain_with_fails() -> the error text of a plain ``with harrow.open_nursery()`` in an
    async def function (a clear harrow.HarrowError pointing to ``async with``)."""
    try:
        with harrow.open_nursery():
            pass
    except harrow.HarrowError as e:
        return str(e)
    return None


async def deadlines(ms):
    """deadlines(ms) -> [move_on_after's cancelled_caught, fail_after's exception type name]:
    each bounds an await of a child's long call to ``ms`` milliseconds."""
    async with harrow.open_nursery() as n:
        child = await n.start_actor("aslow")
        with harrow.move_on_after(ms / 1000.0) as scope:
            await child.run(_ACTORS + ":sleep_ms", 60000)
        try:
            with harrow.fail_after(ms / 1000.0):
                await child.run(_ACTORS + ":sleep_ms", 60000)
        except TimeoutError as e:
            failed = type(e).__name__
        else:
            failed = None
        return [scope.cancelled_caught, failed]


async def cancel_while_awaiting_result(ms):
    """cancel_while_awaiting_result(ms): opens a context with a child's ``ctx_returns_later(ms)``;
    one task awaits its result while another cancels it: [how the wait ended, whether the cancel
    returned]."""
    import asyncio

    async with harrow.open_nursery() as n:
        child = await n.start_actor("later")
        ctx = await child.open_context(_ACTORS + ":ctx_returns_later", int(ms))

        async def wait():
            try:
                return ["returned", await ctx.result()]
            except harrow.RemoteError as e:
                return ["raised", e.cancelled]

        async def cancel():
            # Let the wait start first (it holds the context), then cancel from here.
            await asyncio.sleep(0)
            await ctx.cancel()
            return True

        ended, cancelled = await asyncio.gather(wait(), cancel())
        return [ended, cancelled]


async def context_block_fails_with_its_cleanup(v=None):
    """``async with`` a context whose block raises ValueError while the callee fails in its
    cancel's cleanup: [the exception type that left the block, its members' messages]. Both
    failures leave it, in a group; the callee's does not replace the block's."""
    async with harrow.open_nursery() as n:
        cleaner = await n.start_actor("acleaner", modules=["harrow_testfns.conformance"])
        try:
            async with cleaner.open_context(
                "harrow_testfns.conformance:ctx_cleanup_fails"
            ) as (ctx, first):
                raise ValueError("the block's own")
        except BaseException as e:
            members = getattr(e, "exceptions", [e])
            return [type(e).__name__, [getattr(m, "message", str(m)) for m in members]]
