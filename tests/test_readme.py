"""The README's set-up commands are the ones CI runs, and its Python examples run as written."""
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_opens_with_the_two_setup_commands_and_ci_runs_the_second():
    first_block = re.search(r"```bash\n(.*?)```", README, re.S).group(1).strip().splitlines()
    assert first_block == ['python3 -m pip install -e . && workbench demo',
                           'python3 -m pip install -e ".[test]" && python3 -m pytest']
    assert first_block[1] in (ROOT / ".ci" / "run").read_text()


@pytest.mark.slow
def test_readme_python_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the examples write spec.json
    namespace = {}
    for block in re.findall(r"```python\n(.*?)```", README, re.S):
        block = block.replace('load_clip("ViT-B-32", pretrained="openai")', "None")  # needs downloaded weights
        exec(compile(block, "README.md", "exec"), namespace)
