"""benchmarks/precision.py in its smoke form: the tests' tiny architecture, in this process."""

import argparse
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import precision  # noqa: E402


def test_policies_keep_float32_first_and_refuse_unknown_names():
    assert precision._policies("bfloat16") == ("float32", "bfloat16")
    assert precision._policies("float16,float32,bfloat16") == precision.POLICIES
    with pytest.raises(argparse.ArgumentTypeError, match="unknown policies \\['int8'\\]"):
        precision._policies("bfloat16,int8")


def test_child_measures_each_policy_against_float32():
    results = precision.child(["test"], 2, 1, 0.05, ("float32", "bfloat16"))
    assert sorted(results) == ["bfloat16/test", "float32/test"]
    assert results["float32/test"]["max_abs"] == 0 and results["float32/test"]["top1"] == 1
    bf16 = results["bfloat16/test"]
    assert bf16["img/s"] > 0 and 0 < bf16["max_abs"] < 0.5 and 0 <= bf16["top1"] <= 1
