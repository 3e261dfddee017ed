"""The README's first two commands are what CI runs, word for word."""

import re
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readmes_install_and_test_commands_as_written() -> None:
    readme = (REPOSITORY / "README.md").read_text()
    install, tests = re.findall(r"```sh\n(.*?)\n```", readme, flags=re.DOTALL)[:2]
    ci_lines = (REPOSITORY / ".ci" / "run").read_text().splitlines()
    assert install in ci_lines and tests in ci_lines
    assert ci_lines.index(install) < ci_lines.index(tests)
    # The first installs no test tools; the second brings them (and PostgreSQL support).
    assert "[test]" not in install and ".venv/bin/crawler run samples/seeds.txt" in install
    assert tests.endswith(".venv/bin/pytest") and "'.[test]'" in tests
