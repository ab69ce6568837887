"""The examples in the package docstring run, against the real API."""

from __future__ import annotations

import doctest

import brainsurgeon


def test_package_docstring_examples_run():
    result = doctest.testmod(brainsurgeon, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted >= 10
    assert result.failed == 0
