"""A Python actor running its own nursery (the python_nursery example)."""

import harrow


def square(x):
    return x * x


def whoami(v=None):
    me = harrow.current_actor()
    return "%s (%s), child of %s" % (me.name, me.backend, me.parent.name)


def nap(seconds):
    harrow.sleep(seconds)


def fail(msg=None):
    raise ValueError(msg)


@harrow.context
def doubler(ctx, v=None):
    ctx.started("ready")
    with ctx.open_stream() as s:
        for x in s:
            s.send(2 * x)


def boss(v=None):
    out = {}
    with harrow.open_nursery() as n:
        # A Python child (it inherits this actor's modules) and a Rust one in a child process.
        worker = n.start_actor("py-worker")
        rust = n.start_actor("rust-worker", backend="process")
        out["worker"] = worker.run(whoami)
        out["square"] = worker.run(square, 7)
        out["rust"] = rust.run("rust:whoami")
        # A context with a bidirectional stream.
        with worker.open_context(doubler) as (ctx, first):
            with ctx.open_stream() as s:
                doubled = []
                for x in range(5):
                    s.send(x)
                    doubled.append(s.recv())
        out["doubled"] = doubled
        # A deadline: stop waiting after 50 ms.
        with harrow.move_on_after(0.05) as scope:
            worker.run(nap, 60)
        out["gave_up_waiting"] = scope.cancelled_caught
    # A failing child fails its nursery: the errors come back as an ExceptionGroup.
    try:
        with harrow.open_nursery() as n:
            n.run_in_actor(fail, "bad input", name="doomed")
    except harrow.NurseryError as group:
        out["errors"] = ["%s from %s" % (e.type_name, e.source) for e in group.exceptions]
    return out
