"""Functions that need numpy, for the Python process backend's test (tests/pyprocess.rs)."""


def mean(values):
    import numpy

    return float(numpy.mean(numpy.array(values, dtype=float)))


def matmul(pair):
    import numpy

    a, b = pair
    return numpy.matmul(numpy.array(a), numpy.array(b)).tolist()
