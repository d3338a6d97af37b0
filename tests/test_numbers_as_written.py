"""Numbers a user gives are echoed in errors as written, never as the float they round to:
``--lr 1e400`` (inf as a float) and ROI box values of a CSV (1e20, 123456789012345678901)."""
from __future__ import annotations

import pytest
from PIL import Image

from walnet import cli
from walnet.data.sources import read_csv


@pytest.mark.parametrize("text, reads", [("1e400", "inf"), ("-1e400", "-inf"), ("1e-400", "0.0"),
                                         ("2.5E-999", "0.0")])
@pytest.mark.parametrize("command", ["train", "experiment"])
def test_a_float_option_out_of_range_is_echoed_as_written(command, text, reads, tmp_path, capsys):
    argv = [command, "--output", str(tmp_path / "run"), f"--lr={text}", "--csv", str(tmp_path / "labels.csv")]
    argv += ["--models", "walnet"] if command == "experiment" else []
    with pytest.raises(SystemExit, match="2"):  # argparse's errors exit at once
        cli.main(argv)
    err = capsys.readouterr().err
    assert err == (f"walnet {command}: error: argument --lr: {text} is out of the range of a float (it would read "
                   f"as {reads}) (see walnet {command} --help)\n")
    assert not (tmp_path / "run").exists()


def test_float_options_in_range_are_read_as_before(tmp_path, capsys):
    argv = ["train", "--output", str(tmp_path / "run"), "--csv", str(tmp_path / "labels.csv")]
    for text, shown in [("0", "got 0.0"), ("inf", "got inf"), ("0e5", "got 0.0")]:
        assert cli.main([*argv, f"--lr={text}"]) == 2
        assert capsys.readouterr().err == f"walnet train: error: --lr must be a positive number, {shown}\n"
    with pytest.raises(SystemExit, match="2"):
        cli.main([*argv, "--lr=x"])
    assert "argument --lr: invalid float value: 'x'" in capsys.readouterr().err


def _csv(tmp_path, box) -> str:
    Image.new("L", (40, 30), 90).save(tmp_path / "a.png")
    (tmp_path / "d.csv").write_text("path,label,y1,x1,y2,x2\n" + f"a.png,hyperechoic,{','.join(box)}\n")
    return tmp_path / "d.csv"


@pytest.mark.parametrize("box", [("1e20", "0", "5", "5"),
                                 ("123456789012345678901", "0", "123456789012345678900", "5"),
                                 ("0", "7", "5", "-1.0e3")])
def test_a_roi_box_is_echoed_as_written(box, tmp_path):
    with pytest.raises(ValueError) as info:
        read_csv(_csv(tmp_path, box))
    assert str(info.value).endswith(f"d.csv:2: ROI box (y1, x1, y2, x2) = ({', '.join(box)}) is not a box: it "
                                    "needs 0 <= y1 <= y2 and 0 <= x1 <= x2")


def test_whole_box_values_are_read_exactly(tmp_path):
    records, _ = read_csv(_csv(tmp_path, ("0", "0", "123456789012345678901", "5")))
    assert records[0].box == (0, 0, 123456789012345678901, 5)
