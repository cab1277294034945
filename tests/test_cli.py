"""`python -m bcd --help` and each subcommand's help describe what they do."""
import pytest

from bcd.cli import build_parser

LOADERS = {"teacher", "train", "evaluate", "figures"}


def _subcommands():
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


@pytest.mark.parametrize("name", sorted(_subcommands()))
def test_every_subcommand_and_option_is_described(name):
    sub = _subcommands()[name]
    assert sub.description and len(sub.description) > 15, name
    for action in sub._actions:
        if action.option_strings and action.dest != "help":
            assert action.help, f"{name} {action.option_strings} has no help"
    has_trust = any("--trust-checkpoints" in a.option_strings for a in sub._actions)
    assert has_trust == (name in LOADERS), name
