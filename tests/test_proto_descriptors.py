"""oxserve's hand-written .proto definitions against the descriptors compiled into the
`tensorflow` and `tensorflow-serving-api` wheels: every message, field and enum value oxserve
defines must match upstream's (name, number, type, label, oneof), or clients and TensorFlow would
read different data from the same bytes."""

import subprocess
import sys

from conftest import ROOT


def test_protos_match_the_wheels_descriptors():
    result = subprocess.run(
        [sys.executable, str(ROOT / "crates/oxserve-proto/scripts/check_descriptors.py")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "mismatches: 0" in result.stdout
