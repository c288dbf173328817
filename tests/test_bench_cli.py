"""`clockwork-bench` dispatch."""

import sys
import types

from clockwork.bench import cli


def test_usage_lists_subcommands(capsys):
    assert cli.main([]) == 2
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("demo", "overhead", "predictability", "gpu-check"):
        assert name in out


def test_unknown_subcommand(capsys):
    assert cli.main(["nope"]) == 2
    assert "unknown subcommand" in capsys.readouterr().err


def test_forwards_remaining_argv(monkeypatch):
    seen = []
    fake = types.ModuleType("clockwork.bench.fake_cmd")
    fake.main = lambda argv: seen.append(argv) or 3
    monkeypatch.setitem(sys.modules, "clockwork.bench.fake_cmd", fake)
    monkeypatch.setitem(cli.COMMANDS, "fake", ("clockwork.bench.fake_cmd", "a fake"))
    assert cli.main(["fake", "--x", "1"]) == 3
    assert seen == [["--x", "1"]]


def test_missing_optional_module_is_reported(monkeypatch, capsys):
    monkeypatch.setitem(cli.COMMANDS, "ghost", ("clockwork.bench.no_such_module_here", "missing"))
    assert cli.main(["ghost"]) == 2
    assert "not available" in capsys.readouterr().err
