"""A module present on sys.path but not exposed by the test actors."""


def secret():
    return "should not be reachable"
