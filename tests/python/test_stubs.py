"""The committed type stubs (python/ferrum_kv/_core.pyi) match the compiled module.

Regenerate after changing a binding:  python tests/python/test_stubs.py
"""

import pathlib
import subprocess
import sys
import tempfile

COMMITTED = pathlib.Path(__file__).resolve().parents[2] / "python" / "ferrum_kv" / "_core.pyi"


def generate_stubs() -> str:
    with tempfile.TemporaryDirectory() as out:
        subprocess.run(
            [sys.executable, "-m", "pybind11_stubgen", "ferrum_kv._core", "-o", out],
            check=True,
            capture_output=True,
        )
        return (pathlib.Path(out) / "ferrum_kv" / "_core.pyi").read_text()


def test_committed_stubs_match_the_module():
    assert COMMITTED.read_text() == generate_stubs(), (
        "python/ferrum_kv/_core.pyi is stale: run `python tests/python/test_stubs.py`"
    )


if __name__ == "__main__":
    COMMITTED.write_text(generate_stubs())
    print(f"wrote {COMMITTED}")
