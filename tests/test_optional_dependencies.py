"""Every library a test takes through `pytest.importorskip` is installed by the `test` extra,
so the README's test command (and CI, where such a skip is a failure, tests/conftest.py) runs
those tests instead of skipping them."""

import os
import re
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The distribution that provides each top-level module the tests import optionally.
DISTRIBUTIONS = {
    "huggingface_hub": "huggingface_hub",
    "keras_hub": "keras-hub",
    "onnxruntime": "onnxruntime",
    "safetensors": "safetensors",
    "sklearn": "scikit-learn",
    "tensorflow": "tensorflow",
    "torch": "torch",
    "transformers": "transformers",
}


def _optional_modules():
    """{top-level module: test files} of every `pytest.importorskip("...")` in tests/."""
    found = {}
    folder = os.path.join(ROOT, "tests")
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            text = open(os.path.join(folder, name), encoding="utf-8").read()
            for module in re.findall(r"importorskip\(\s*[\"']([A-Za-z_][\w.]*)[\"']", text):
                found.setdefault(module.split(".")[0], set()).add(name)
    return found


def _extra(extras, name, project):
    """The distribution names (lower case, `-` for `_`) that `pip install .[name]` installs."""
    names = set()
    for requirement in extras[name]:
        dist = re.match(r"[A-Za-z0-9_.-]+", requirement).group(0).lower().replace("_", "-")
        if dist == project:
            inner = re.search(r"\[(.*)\]", requirement).group(1)
            for other in inner.split(","):
                names |= _extra(extras, other.strip(), project)
        else:
            names.add(dist)
    return names


def test_every_optionally_imported_library_is_in_the_test_extra():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        project = tomllib.load(f)["project"]
    installed = _extra(project["optional-dependencies"], "test", project["name"])
    installed |= {re.match(r"[A-Za-z0-9_.-]+", r).group(0).lower().replace("_", "-")
                  for r in project["dependencies"]}
    optional = _optional_modules()
    assert {"torch", "transformers", "keras_hub", "safetensors"} <= set(optional)
    unknown = sorted(set(optional) - set(DISTRIBUTIONS))
    assert not unknown, f"add {unknown} (used by {[optional[m] for m in unknown]}) to DISTRIBUTIONS"
    missing = {m: sorted(optional[m]) for m in optional
               if DISTRIBUTIONS[m].lower().replace("_", "-") not in installed}
    assert not missing, f"not installed by the test extra: {missing}"
