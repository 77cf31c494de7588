"""The README's API example runs as written (docs that match the code)."""

import contextlib
import io
import pathlib

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"


def test_readme_api_example_runs():
    text = README.read_text()
    code = text.split("## The API in 20 lines")[1].split("```python")[1].split("```")[0]
    namespace = {}
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        exec(compile(code, "README.md", "exec"), namespace)
    assert namespace["out"].shape == (1, 32, 128)
    assert namespace["cache"].stats()["cow_copies"] == 1
    assert "low" in printed.getvalue()
