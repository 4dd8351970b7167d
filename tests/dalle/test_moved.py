"""Release 0.1's names and modules stay importable for one release, with a DeprecationWarning (dalle/moved.py)."""

import importlib
import math

import pytest

from dalle.moved import MOVED_MODULES, moved_names


def test_moved_names_warn_and_resolve():
    getattr_ = moved_names("pkg.old", {"sqrt": "math"})
    with pytest.warns(DeprecationWarning, match="pkg.old.sqrt moved: import sqrt from math"):
        assert getattr_("sqrt") is math.sqrt
    with pytest.raises(AttributeError, match="module 'pkg.old' has no attribute 'cos'"):
        getattr_("cos")


def test_moved_module_names_resolve_in_their_new_homes():
    from dalle.transformer.module import DALLEModule

    with pytest.warns(DeprecationWarning, match="dalle.module moved: import DALLEModule from dalle.transformer.module"):
        assert importlib.import_module("dalle.module").DALLEModule is DALLEModule
    with pytest.raises(AttributeError, match="moved to dalle.vae.dvae"):
        importlib.import_module("dalle.dvae").no_such_name
    assert set(MOVED_MODULES["dalle.module"]) == {"dalle.transformer.module", "dalle.pipeline"}


def test_generate_keeps_its_old_sampling_names():
    from dalle.transformer.sampling import filter_logits

    with pytest.warns(DeprecationWarning, match="dalle.generate.filter_logits moved"):
        assert importlib.import_module("dalle.generate").filter_logits is filter_logits
