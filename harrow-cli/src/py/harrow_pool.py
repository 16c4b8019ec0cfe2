"""The batch runner of harrow's actor pools (``PoolConfig::batch``): one call runs a function
over many items, so that small items cost one round trip per batch rather than one each.

``run_batch([func, items])`` imports ``func`` ("package.module:function") once per interpreter,
calls it on each item in order (an item is the call's one argument: ``None`` means no argument,
and a ``{"harrow:args": a, "harrow:kwargs": {...}}`` map means ``func(a, **kwargs)``, as for a
single call) and returns ``[results, errors]``: one result per item (``None`` for an item that
raised) and ``[index, type_name, message]`` for each item that raised.
"""

import importlib

_ARGS = "harrow:args"
_KWARGS = "harrow:kwargs"
_funcs = {}


def _resolve(path):
    f = _funcs.get(path)
    if f is None:
        module, _, name = path.partition(":")
        f = getattr(importlib.import_module(module), name)
        _funcs[path] = f
    return f


def run_batch(call):
    path, items = call
    f = _resolve(path)
    results = []
    errors = []
    for i, item in enumerate(items):
        try:
            if isinstance(item, dict) and _ARGS in item:
                args = item[_ARGS]
                kwargs = item.get(_KWARGS) or {}
                r = f(**kwargs) if args is None else f(args, **kwargs)
            elif item is None:
                r = f()
            else:
                r = f(item)
            results.append(r)
        except Exception as e:  # each item's failure is reported, the batch goes on
            results.append(None)
            errors.append([i, type(e).__name__, str(e)])
    return [results, errors]
