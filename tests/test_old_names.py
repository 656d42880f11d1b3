"""The module names of the flat layout that README's examples imported (``cat.estimators``,
``cat.grpo``, ``python -m cat.cli``): each still works, is the moved module itself, and says
where it went with a DeprecationWarning."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT


@pytest.mark.parametrize(("old", "new", "name"), [
    ("cat.estimators", "cat.teacher.estimators", "register_estimator"),
    ("cat.grpo", "cat.algo.grpo", "advantages"),
    ("cat.cli", "cat.tools.cli", "main"),
])
def test_old_module_names_import_the_new_modules_with_a_warning(old, new, name):
    """A plug-in written for the flat layout (README's examples imported ``cat.estimators``) still
    imports: the old name is the new module, and says where it went."""
    code = (f"import {new}\nfrom {old} import {name}\n"
            f"assert {name} is {new}.{name}\nimport sys\nassert sys.modules[{old!r}] is {new}")
    done = subprocess.run([sys.executable, "-W", "always::DeprecationWarning", "-c", code], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert f"DeprecationWarning: {old} has moved to {new}" in done.stderr


def test_python_m_cat_cli_still_runs():
    done = subprocess.run([sys.executable, "-m", "cat.cli", "train", "--help"], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0 and "usage: cat-rl train" in done.stdout
    assert "python -m cat.cli is now python -m cat.tools.cli" in done.stderr
