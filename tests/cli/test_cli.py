import json
import subprocess
import sys

import pytest

from storm_sc.cli import main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "demo" in out and "pretrain" in out


def test_console_script_help():
    out = subprocess.run(
        [sys.executable, "-m", "storm_sc.cli", "--help"], capture_output=True, text=True, check=True
    ).stdout
    assert "storm-sc" in out


def test_demo_on_toy_data_writes_results(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    assert main(["demo", "--data", "toy", "--out", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    assert "toy" in printed and str(out_dir.resolve()) in printed
    summary = json.loads((out_dir / "summary.json").read_text())
    assert summary["n_obs"] > 0 and 0 < summary["genes_in_model_vocabulary"] <= summary["n_genes"]
    # The toy slide's genes are unknown to the reference, so the demo trains on the slide itself and says that its
    # correlations are in-sample.
    assert summary["slide_in_model_training"] is not None and "in-sample" in printed
    assert (out_dir / "patches.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="overwrite"):
        main(["demo", "--data", "toy", "--out", str(out_dir)])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--data", "toy", "--section", "A1"], "does not apply to --data toy"),
        (["--data", "toy", "--epochs", "-1"], "--epochs must be at least 1"),
        (["--data", "her2st", "--section", "Z9"], "unknown her2st section 'Z9'"),
        (["--section", "Z9"], "unknown her2st section 'Z9'"),  # a section named is never replaced by toy data
        (["--section", "A1"], "her2st A1 has no H&E image.*choose a section with one"),  # patient C's only
    ],
)
def test_demo_refuses_bad_arguments_before_writing(tmp_path, argv, message):
    out_dir = tmp_path / "demo"
    with pytest.raises(SystemExit, match=message):
        main(["demo", *argv, "--out", str(out_dir)])
    assert not out_dir.exists()
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    with pytest.raises(SystemExit, match="is a file"):
        main(["demo", "--data", "toy", "--out", str(a_file)])


def test_no_command_is_a_usage_error(capsys):
    assert main([]) == 2
    assert "demo" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["-q", "demo"], ["demo", "-q"], ["demo", "--quiet"]])
def test_quiet_before_or_after_the_command(argv):
    from storm_sc.cli import _build_parser

    assert _build_parser().parse_args(argv).quiet is True
    assert _build_parser().parse_args(["demo"]).quiet is False
