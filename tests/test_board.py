import io
import sys
import types
import xml.etree.ElementTree as ET

import matplotlib.image
import numpy as np
import pytest

from d2lite.board import ProgressBoard
from d2lite.callbacks.progress import ProgressLine

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def not_in_notebook(monkeypatch):
    # Tests must see the script path even if run from inside a kernel.
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)


def test_save_dir_writes_png_and_svg_and_announces_once(tmp_path, capsys):
    board = ProgressBoard(xlabel="epoch", save_dir=tmp_path / "run")
    for i in range(4):
        board.draw(i, 1.0 / (i + 1), "train_loss")
    png = tmp_path / "run" / "progress.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    height, width = matplotlib.image.imread(png).shape[:2]
    assert height > 0 and width > 0
    assert ET.parse(tmp_path / "run" / "progress.svg").getroot().tag.endswith("svg")
    out = capsys.readouterr().out
    assert out.count("live plot:") == 1
    assert f"live plot: {png.resolve()}" in out


def test_only_final_files_remain_in_save_dir(tmp_path):
    board = ProgressBoard(save_dir=tmp_path)
    for i in range(5):
        board.draw(i, i, "a")
        board.draw(i, -i, "b")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["progress.png", "progress.svg"]


def test_every_n_averages_points(tmp_path):
    board = ProgressBoard(display=False)
    for x, y in [(1, 10), (2, 20), (3, 30), (4, 40)]:
        board.draw(x, y, "loss", every_n=2)
    assert board.data == {"loss": [(1.5, 15.0), (3.5, 35.0)]}
    board.save(tmp_path / "loss.png")  # brings the lines up to date
    (line,) = board.axes.get_lines()
    assert list(line.get_xdata()) == [1.5, 3.5]
    assert list(line.get_ydata()) == [15.0, 35.0]


def test_no_file_until_the_picture_changes(tmp_path):
    board = ProgressBoard(save_dir=tmp_path)
    board.draw(0, 1.0, "loss", every_n=2)
    assert list(tmp_path.iterdir()) == []
    board.draw(1, 2.0, "loss", every_n=2)
    assert (tmp_path / "progress.png").exists()


def test_points_drawn_while_held_make_one_picture_at_the_end(tmp_path):
    board = ProgressBoard(save_dir=tmp_path)
    with board.held():
        with board.held():  # blocks nest: the outermost one draws
            for i in range(3):
                board.draw(i, i, "train_loss")
        board.draw(3, 1.0, "val_acc")
        assert list(tmp_path.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["progress.png", "progress.svg"]
    assert [len(line.get_xdata()) for line in board.axes.get_lines()] == [3, 1]


def test_a_curve_of_one_point_is_marked_until_it_has_two(tmp_path):
    board = ProgressBoard(save_dir=tmp_path)
    board.draw(1, 0.5, "val_acc")  # a line through one point would draw nothing
    (line,) = board.axes.get_lines()
    assert line.get_marker() == "o"
    (in_legend,) = board.axes.get_legend().get_lines()
    assert in_legend.get_marker() == "o"
    board.draw(2, 0.6, "val_acc")
    assert line.get_marker() in ("", "None")
    (in_legend,) = board.axes.get_legend().get_lines()
    assert in_legend.get_marker() in ("", "None")


def test_one_styled_line_per_label_with_legend(tmp_path):
    board = ProgressBoard(save_dir=tmp_path)
    labels = ["train_loss", "val_loss", "val_acc"]
    for x in range(3):
        for i, label in enumerate(labels):
            board.draw(x, x * (i + 1), label)
    lines = board.axes.get_lines()
    assert [line.get_label() for line in lines] == labels
    assert [t.get_text() for t in board.axes.get_legend().get_texts()] == labels
    assert len({(line.get_linestyle(), line.get_color()) for line in lines}) == 3


def test_accepts_0d_arrays_and_reads_xlim_at_draw_time(tmp_path):
    board = ProgressBoard(save_dir=tmp_path)
    board.xlim = [0, 10]  # as the Trainer does after construction
    board.draw(np.float32(1.0), np.array(0.25), "loss")
    board.draw(np.array(2), np.float64(0.5), "loss")
    assert board.data["loss"] == [(1.0, 0.25), (2.0, 0.5)]
    assert tuple(board.axes.get_xlim()) == (0.0, 10.0)


def test_without_save_dir_or_notebook_nothing_is_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    board = ProgressBoard()
    for i in range(3):
        board.draw(i, i, "loss")
    assert list(tmp_path.iterdir()) == []
    assert capsys.readouterr().out == ""
    assert board.data["loss"] == [(0.0, 0.0), (1.0, 1.0), (2.0, 2.0)]


def test_save_writes_any_format(tmp_path):
    board = ProgressBoard(display=False)
    board.draw(0, 1.0, "loss")
    board.draw(1, 0.5, "loss")
    board.save(tmp_path / "out" / "curve.png")
    board.save(tmp_path / "curve.svg")
    assert (tmp_path / "out" / "curve.png").read_bytes()[:8] == PNG_SIGNATURE
    assert ET.parse(tmp_path / "curve.svg").getroot().tag.endswith("svg")
    assert len(board.axes.get_lines()[0].get_xdata()) == 2


def test_in_a_kernel_redraws_one_inline_image_in_place(tmp_path, monkeypatch, capsys):
    shown, updates = [], []

    class Handle:
        def update(self, image):
            updates.append(image)

    def display(image, display_id=False):
        assert display_id is True  # an updatable output, never one image per point
        shown.append(image)
        return Handle()

    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: types.SimpleNamespace(kernel=object())
    ipython_display = types.ModuleType("IPython.display")
    ipython_display.Image = lambda data, format: ("image", format, data)
    ipython_display.display = display
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", ipython_display)

    board = ProgressBoard(save_dir=tmp_path)
    for i in range(3):
        board.draw(i, 1.0 / (i + 1), "loss")
    assert len(shown) == 1 and len(updates) == 2
    assert shown[0][1] == "png" and shown[0][2][:8] == PNG_SIGNATURE
    assert updates[-1][2][:8] == PNG_SIGNATURE and updates[-1] != shown[0]  # the picture changed
    # The run directory gets its plot too; the path is not announced in a notebook.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["progress.png", "progress.svg"]
    assert capsys.readouterr().out == ""
    board.display_handle = None  # what a new fit does: its plot goes into its own cell
    board.draw(3, 0.2, "loss")
    assert len(shown) == 2


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class TTYStream(io.StringIO):
    def isatty(self):
        return True


def test_progress_line_non_tty_prints_one_line_per_epoch():
    clock, stream = FakeClock(), io.StringIO()
    line = ProgressLine(total_epochs=10, steps_per_epoch=100, batch_size=128, stream=stream, clock=clock)
    line.start_epoch(2)
    for i in range(10):
        clock.now = 0.2 * (i + 1)
        line.advance(10, loss=0.5123)
    assert stream.getvalue() == ""
    clock.now = 2.6  # validation: counted in epoch time and ETA, not in ex/s
    line.end_epoch({"train_loss": 0.5123, "val_loss": np.float32(0.498), "val_acc": 0.8234})
    line.close()
    out = stream.getvalue()
    assert out.count("\n") == 1 and out.endswith("\n") and "\r" not in out
    text = out.strip()
    assert text.startswith("epoch 3/10")
    assert text.index("train_loss 0.5123") < text.index("val_loss 0.498") < text.index("val_acc 0.8234")
    assert "6400 ex/s" in text  # 100 steps * 128 / 2.0 s
    assert "2.6 s" in text
    assert "ETA 0:00:18" in text  # 7 epochs left * 2.6 s


def test_progress_line_in_a_log_reports_slow_epochs_every_interval():
    clock, stream = FakeClock(), io.StringIO()
    line = ProgressLine(
        total_epochs=2, steps_per_epoch=10, batch_size=100, stream=stream, clock=clock, log_interval=60
    )
    line.start_epoch(0)
    for step in range(1, 11):  # 25 s per step: lines after steps 3, 6 and 9 (75, 150, 225 s)
        clock.now = 25.0 * step
        line.advance(1)
    lines = stream.getvalue().splitlines()
    assert [text.split("]")[1].split()[0] for text in lines] == ["3/10", "6/10", "9/10"]
    assert "\r" not in stream.getvalue()
    assert lines[0].startswith("epoch 1/2 [###.......] 3/10") and "4 ex/s ETA 0:07:05" in lines[0]
    line.end_epoch({"train_loss": 1.0})
    assert len(stream.getvalue().splitlines()) == 4  # and the epoch's summary line


def test_progress_line_tty_redraws_with_eta():
    clock, stream = FakeClock(), TTYStream()
    line = ProgressLine(total_epochs=3, steps_per_epoch=100, batch_size=32, stream=stream, clock=clock)
    assert line.tty
    line.start_epoch(0)
    clock.now = 1.0
    line.advance(10, loss=2.25)
    first = stream.getvalue()
    assert first.startswith("\repoch 1/3 [#.........] 10/100 loss 2.250 320 ex/s")
    assert "ETA 0:00:29" in first  # (90 + 2*100) steps at 10 steps/s
    clock.now = 1.05
    line.advance(10)  # within 0.1 s of the last redraw: throttled
    assert stream.getvalue() == first
    clock.now = 2.0
    line.advance(10)
    assert stream.getvalue().count("\r") == 2
    assert "30/100" in stream.getvalue() and "ETA 0:00:18" in stream.getvalue()
    line.end_epoch({"train_loss": 2.0})
    out = stream.getvalue()
    assert out.endswith("\n") and out.count("\n") == 1
    assert out.splitlines()[-1].split("\r")[-1].startswith("epoch 1/3  train_loss 2")
    line.close()
    assert stream.getvalue() == out  # nothing left open
