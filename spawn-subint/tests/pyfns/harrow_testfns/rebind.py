"""Functions that change what a call's "module:function" names, between calls (tests/resolve.rs):
an interpreter resolves a function once and must notice when it is no longer the one its module
holds."""

import sys


def which(v=None):
    return "first"


def rebind(v=None):
    """Rebinds ``which`` on this module: the next call of ``which`` runs the new one."""
    global which

    def which(v=None):  # noqa: F811
        return "second"

    return None


def forget(v=None):
    """Removes this module from ``sys.modules``: the next call imports it again (``first``)."""
    del sys.modules[__name__]
    return None


def gen(n=2):
    yield from range(n)


def make_gen_plain(v=None):
    """Rebinds ``gen`` to a plain function: how it runs is looked at again too."""
    global gen

    def gen(n=2):  # noqa: F811
        return "plain"

    return None


def _shadowed_which(v=None):
    return "shadowed"


def shadow(v=None):
    """Gives this module a class whose property ``which`` comes before the module's own entry
    (an attribute lookup finds the property): the next call of ``which`` runs what the
    property gives, though the module's dictionary still holds the first ``which``."""
    import types

    class Shadowing(types.ModuleType):
        @property
        def which(self):
            return _shadowed_which

    sys.modules[__name__].__class__ = Shadowing
    return None
