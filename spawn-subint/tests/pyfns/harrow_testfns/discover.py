"""Discovery from Python actors: lookups, waits, peer calls and peer cancels driven from Python
(tests/discovery.rs calls these)."""

import os

import harrow

_ME = __name__

# Peer portals kept across calls of this actor (by the name they were found under).
_held = {}


def _fn(name):
    return "%s:%s" % (_ME, name)


def add(ab):
    """add([a, b]) -> a + b."""
    a, b = ab
    return a + b


def echo(v=None):
    """echo(v) -> v."""
    return v


def me_and_peer(name):
    """me_and_peer(name) -> [this actor's name, the name of the actor ``name`` finds]: uses the
    actor API (also in a call served over a peer link)."""
    return [harrow.current_actor().name, harrow.find_actor(name).name]


def find_call(args):
    """find_call({name, uid}): finds ``name`` (and by ``uid``), calls add([2, 3]) on it, and
    reports what it saw: the portal, the registrar's view, an unknown name."""
    p = harrow.find_actor(args["name"])
    by_uid = harrow.find_actor_by_uid(args["uid"])
    info = harrow.lookup_actor(args["name"])
    return {
        "is_portal": isinstance(p, harrow.Portal),
        "name": p.name,
        "uid": p.uid,
        "backend": p.backend,
        "value": p.run(_fn("add"), [2, 3]),
        "kwargs_value": p.run(_fn("echo"), v="kw"),
        "peer_served": p.run(_fn("me_and_peer"), harrow.current_actor().name),
        "by_uid": by_uid.name,
        "lookup": [info.name, info.uid, info.backend, info.pid],
        "actors": [[a.name, a.backend, a.parent] for a in harrow.query_actors()],
        "me": harrow.current_actor().uid,
        "pid": os.getpid(),
        "nobody": harrow.find_actor("nobody") is None
        and harrow.lookup_actor("nobody") is None
        and harrow.find_actor_by_uid("no-such-uid") is None,
    }


def stream_to(args):
    """stream_to({name, n}): opens the conformance echo context on ``name`` and streams 0..n
    through it; returns [echoes, the context's result]."""
    p = harrow.find_actor(args["name"])
    got = []
    with p.open_context("harrow_testfns.conformance:ctx_echo") as (ctx, _first):
        with ctx.open_stream() as s:
            for i in range(int(args["n"])):
                s.send(i)
                got.append(s.recv())
        for _ in s:
            pass
    return [got, ctx.result()]


def wait_call(args):
    """wait_call({name, marker, timeout}): checks that nobody answers to ``name`` yet, creates
    the file ``marker``, waits for ``name`` and calls add([3, 4]) on it; returns [nobody before,
    the sum, the peer's name]."""
    before = harrow.find_actor(args["name"]) is None
    with open(args["marker"], "wb") as f:
        f.write(b"waiting")
    p = harrow.wait_for_actor(args["name"], args["timeout"])
    return [before, p.run(_fn("add"), [3, 4]), p.name]


def wait_never(v=None):
    """wait_never(): a wait that times out (TimeoutError), and one that a deadline interrupts;
    returns [the timeout's type and message, whether move_on_after caught the deadline]."""
    try:
        harrow.wait_for_actor("never", 0.05)
        timed_out = None
    except TimeoutError as e:
        timed_out = [type(e).__name__, str(e)]
    with harrow.move_on_after(0.05) as scope:
        harrow.wait_for_actor("never", 30)
    return [timed_out, scope.cancelled_caught]


def cancel_peer(args):
    """cancel_peer({name}): finds ``name`` and cancels it directly; returns [acked, what a later
    call on that portal raises]: ``"HarrowError"`` once the peer's link is gone, or
    ``"Cancelled by <canceller>"`` while the peer, cancelled, still refuses new calls."""
    p = harrow.find_actor(args["name"])
    acked = p.cancel_actor(5.0)
    try:
        p.run(_fn("echo"), 1)
        later = None
    except harrow.HarrowError as e:
        later = type(e).__name__
    except harrow.RemoteError as e:
        later = "Cancelled by %s" % e.canceller if e.cancelled else repr(e)
    return [acked, later]


def hold(name):
    """hold(name): finds ``name`` and keeps the portal in this actor; returns its uid."""
    p = harrow.find_actor(name)
    _held[name] = p
    return p.uid


def after_exit(args):
    """after_exit({name, uid}): what lookups of an actor that has exited give, and a call on the
    portal held from before."""
    name, uid = args["name"], args["uid"]
    try:
        _held[name].run(_fn("echo"), 1)
        held = None
    except harrow.HarrowError as e:
        held = type(e).__name__
    try:
        harrow.wait_for_actor(name, 0.05)
        waited = None
    except TimeoutError as e:
        waited = type(e).__name__
    return {
        "find": harrow.find_actor(name) is None,
        "by_uid": harrow.find_actor_by_uid(uid) is None,
        "lookup": harrow.lookup_actor(name) is None,
        "listed": any(a.uid == uid for a in harrow.query_actors()),
        "held": held,
        "wait": waited,
    }


def misuse(v=None):
    """misuse(): bad input and a portal to oneself are clear errors; returns their types and
    messages in order."""
    out = []
    for f in (
        lambda: harrow.find_actor(3),
        lambda: harrow.wait_for_actor("x", -1),
        lambda: harrow.wait_for_actor("x", float("nan")),
        lambda: harrow.wait_for_actor("x", "soon"),
        lambda: harrow.wait_for_actor("x", 1e10),
        lambda: harrow.sleep(float("nan")),
        lambda: harrow.find_actor(harrow.current_actor().name),
        lambda: harrow.current_actor().register_names(""),
    ):
        try:
            f()
            out.append(None)
        except Exception as e:
            out.append([type(e).__name__, str(e)])
    return out


def alias_and_find(alias):
    """alias_and_find(alias): registers ``alias`` for this actor; returns the uid a lookup of it
    gives."""
    harrow.current_actor().register_names(alias)
    return harrow.lookup_actor(alias).uid


def cross_call(v=None):
    """cross_call(): finds the Rust actors "proc" (another process) and "thr" (a thread of this
    process) and calls the standard Rust test functions on them."""
    proc = harrow.find_actor("proc")
    thr = harrow.wait_for_actor("thr", 10)
    return {
        "proc": proc.run("testfns:add", [40, 2]),
        "proc_backend": proc.backend,
        "proc_elsewhere": proc.info.pid != os.getpid(),
        "thr": thr.run("testfns:echo", "t"),
        "thr_backend": thr.backend,
    }


def find_add(name):
    """find_add(name) -> [add([20, 22]) on the actor ``name`` finds, the uid of the parent of the
    actor it found]."""
    p = harrow.find_actor(name)
    return [p.run(_fn("add"), [20, 22]), p.info.parent]


def grandchild_finds(name):
    """grandchild_finds(name): a child of this actor (a grandchild of the root: its lookups are
    relayed twice) finds ``name`` and calls it."""
    with harrow.open_nursery() as n:
        kid = n.run_in_actor(_fn("find_add"), name, name="kid")
        return kid.result()
