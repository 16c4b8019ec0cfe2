"""A module that is found but whose own import fails."""

import no_such_module_for_harrow_tests  # noqa: F401


def f():
    return "unreachable"
