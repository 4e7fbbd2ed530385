"""The README's Python snippets run as written, against the bundled sample corpus."""
import re
from pathlib import Path

import numpy as np

from fastctx.cli import SAMPLE_CORPUS
from fastctx.encoder import HashingEncoder

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_snippets_run(tmp_path, capsys):
    blocks = python_blocks()
    assert len(blocks) >= 2, "README lost its quick start"
    index_dir = tmp_path / "index"
    records = [{"id": "readme-1", "time": 1_750_000_000, "source": "jira", "kind": "bug_report", "tokens": 40,
                "entities": ["service:payments"], "links": [], "text": "Retry still double charges"}]
    ns = {"records": records, "vectors": HashingEncoder(dim=256).encode([r["text"] for r in records])}
    for block in blocks:
        code = block.replace('"corpus/"', repr(str(SAMPLE_CORPUS))).replace('"index/"', repr(str(index_dir)))
        exec(compile(code, str(README), "exec"), ns)
    out = capsys.readouterr().out
    assert "e000" in out                      # events of the sample corpus were printed
    assert isinstance(ns["ans"].current.id, str)
    assert np.all(ns["hits"].counts >= 1)
