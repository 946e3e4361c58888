"""The command's skeleton: every subcommand registers, and one whose module cannot be imported is an error naming it."""
import sys

import pytest

from stemjepa.cli import eval as cli_eval
from stemjepa.cli import main as cli_main


def test_every_subcommand_is_registered():
    parser = cli_main.build_parser()
    choices = next(a for a in parser._actions if a.dest == "command").choices
    assert list(choices) == cli_main.COMMANDS


@pytest.mark.parametrize("owner, attr", [(cli_main, "COMMANDS"), (cli_eval, "SUBCOMMANDS")])
def test_a_subcommand_that_fails_to_import_is_an_error_naming_it(monkeypatch, owner, attr):
    monkeypatch.setitem(sys.modules, "stemjepa.cli.broken", None)  # importing it raises ImportError
    monkeypatch.setattr(owner, attr, getattr(owner, attr) + ["broken"])
    with pytest.raises(ImportError, match=r"stemjepa\.cli\.broken: the subcommand module cannot be imported") as info:
        cli_main.build_parser()
    assert info.value.name == "stemjepa.cli.broken"


def test_a_missing_subcommand_module_is_not_skipped(monkeypatch):
    monkeypatch.setattr(cli_main, "COMMANDS", cli_main.COMMANDS + ["no_such_command"])
    with pytest.raises(ImportError, match="stemjepa.cli.no_such_command"):
        cli_main.main(["--help"])
