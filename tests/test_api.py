"""The package's front door."""

import xreg


def test_every_public_name_resolves():
    for name in xreg.__all__:
        assert getattr(xreg, name) is not None, name


def test_unknown_name_is_an_attribute_error():
    import pytest
    with pytest.raises(AttributeError):
        xreg.not_a_thing  # noqa: B018
