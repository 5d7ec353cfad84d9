"""The book's live loss plot, `ProgressBoard`: its own matplotlib Figure, never pyplot, so that
scripts open no windows. (The book's pyplot helpers, `plot`, `show_images`, ..., are in book.py.)
"""

import contextlib
import io
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from matplotlib.figure import Figure


def in_notebook():
    # Only a kernel can show inline images; a plain IPython terminal cannot.
    # Checking sys.modules first keeps scripts from importing IPython at all.
    if "ipykernel" not in sys.modules:
        return False
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def write_atomic(path, content):
    """Replace `path` with `content` so that a reader or a crash never sees half a file.

    `content` is text, or a function that writes the file given a binary file object.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    try:
        os.fchmod(fd, 0o644)  # mkstemp's 0600 would hide the results from other users
        with os.fdopen(fd, "wb") as f:
            content(f) if callable(content) else f.write(content.encode())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


class ProgressBoard:
    """Live plot of training curves, drawn with `draw(x, y, label, every_n)` as in the book.

    `draw` averages every `every_n` points of a label into one (the book's `raw_points` and
    `data`). In a Jupyter kernel it redraws one inline image in place; with `save_dir` it
    rewrites `save_dir/progress.{png,svg}` too; otherwise it only records the points. The
    figure is made at the first drawing: every model carries a board, and most are never drawn.
    Inside `held()` the points are recorded and the picture is drawn at most once, at its end.
    """

    def __init__(
        self,
        xlabel=None,
        ylabel=None,
        xlim=None,
        ylim=None,
        xscale="linear",
        yscale="linear",
        ls=("-", "--", "-.", ":"),
        colors=("C0", "C1", "C2", "C3"),
        fig=None,
        axes=None,
        figsize=(3.5, 2.5),
        display=True,
        save_dir=None,
    ):
        self.xlabel, self.ylabel = xlabel, ylabel
        self.xlim, self.ylim = xlim, ylim
        self.xscale, self.yscale = xscale, yscale
        self.ls, self.colors = tuple(ls), tuple(colors)
        self.fig, self.axes, self.figsize = fig, axes, figsize
        # Our own Figure, never pyplot: no GUI windows and no global figure registry. A
        # caller's figure keeps its own layout; ours gets one tight_layout per render,
        # cheaper than a layout engine, which would re-run for each of png and svg.
        self._own_fig = fig is None and axes is None
        self.display = display
        self.save_dir = None if save_dir is None else Path(save_dir)
        self.raw_points = {}  # label -> points not yet averaged into `data`
        self.data = {}  # label -> [(x, y), ...] as plotted
        self._lines = {}
        self._dirty = set()  # labels whose Line2D lags behind `data`
        self._announced = self._write_failed = False  # told where the plot is; told it cannot be written
        self.display_handle = None  # the notebook output this board redraws; a new fit makes a new one
        self._holds, self._hold_for = 0, 0.0  # open `held()` blocks; the outermost's interval
        self._drawn_at = -math.inf  # time.perf_counter() of the last picture

    def draw(self, x, y, label, every_n=1):
        """Add the point (x, y) to `label`'s line; `y` may be a function that returns it (the
        next edition's `Module.plot` hands the board a function, to read a device value late)."""
        points = self.raw_points.setdefault(label, [])
        line = self.data.setdefault(label, [])
        points.append((float(x), float(y() if callable(y) else y)))
        if len(points) < every_n:
            return
        xs, ys = zip(*points, strict=True)
        line.append((sum(xs) / len(xs), sum(ys) / len(ys)))
        points.clear()
        self._dirty.add(label)
        if not self._holds:
            self._render()

    @contextlib.contextmanager
    def held(self, unless_drawn_within=0.0):
        """Record the points drawn inside the block and draw the picture once, at its end, unless
        one was drawn less than `unless_drawn_within` seconds before: then the points wait for
        the next picture. The outermost block decides.

        A picture costs the host a tenth of a second or more (PNG and SVG; README), which a GPU
        waiting for its next step spends idle. So the Trainer holds each stretch of steps it reads, and an
        epoch's last training point with its validation points, and skips a mid-epoch picture
        when the last one is recent: on a GPU a whole epoch can take under two seconds.
        """
        if not self._holds:
            self._hold_for = unless_drawn_within
        self._holds += 1
        try:
            yield self
        finally:
            self._holds -= 1
            recent = time.perf_counter() - self._drawn_at < self._hold_for
            if not self._holds and self._dirty and not recent:
                self._render()

    def flush(self):
        """Draw the points drawn so far now (the next edition's board draws on a thread, and `flush`
        waits for it; this one draws as points come, so there is nothing to wait for)."""
        if self._dirty:
            self._render()

    def save(self, path):
        """Write the current figure to `path`; the format follows the suffix (.png, .svg, ...)."""
        self._sync()
        fmt = Path(path).suffix.lstrip(".").lower() or "png"
        write_atomic(path, lambda f: self.fig.savefig(f, format=fmt))  # a viewer never sees half a file

    def _sync(self):
        """Bring the matplotlib artists up to date with `data` and the current settings."""
        if self.axes is None:
            if self.fig is None:
                self.fig = Figure(figsize=self.figsize)
            self.axes = self.fig.axes[0] if self.fig.axes else self.fig.add_subplot()
        self.fig = self.axes.figure
        ax = self.axes
        stale_legend = False
        for label in self.data:  # dict order = order first seen, so styles are stable
            if label not in self._lines:
                i = len(self._lines)
                style = dict(linestyle=self.ls[i % len(self.ls)], color=self.colors[i % len(self.colors)])
                (self._lines[label],) = ax.plot([], [], label=label, **style)
                self._dirty.add(label)
                stale_legend = True
        for label in self._dirty:
            xs, ys = zip(*self.data[label], strict=True) if self.data[label] else ((), ())
            line = self._lines[label]
            line.set_data(xs, ys)
            # A line of one point draws nothing: a first epoch's validation points need a marker.
            one_point = len(xs) == 1
            if one_point != (line.get_marker() == "o"):
                line.set_marker("o" if one_point else "")
                stale_legend = True  # the legend copied the line's old style
        self._dirty.clear()
        if stale_legend:
            ax.legend()
        # Read settings now rather than in __init__: the Trainer sets `xlim` afterwards.
        ax.set_xscale(self.xscale)
        ax.set_yscale(self.yscale)
        ax.set_xlabel(self.xlabel or "")
        ax.set_ylabel(self.ylabel or "")
        ax.set_autoscalex_on(self.xlim is None)
        ax.set_autoscaley_on(self.ylim is None)
        if self.xlim is not None:
            ax.set_xlim(*self.xlim)
        if self.ylim is not None:
            ax.set_ylim(*self.ylim)
        ax.relim()
        ax.autoscale_view()
        if self._own_fig:
            self.fig.tight_layout()

    def _render(self):
        notebook = self.display and in_notebook()
        if not notebook and self.save_dir is None:
            return
        self._sync()
        self._drawn_at = time.perf_counter()
        buf = io.BytesIO()  # one PNG per redraw, for the notebook and the run directory alike
        self.fig.savefig(buf, format="png")
        png = buf.getvalue()
        if notebook:
            from IPython.display import Image, display

            # PNG bytes rather than display(fig): a bare Figure only renders inline
            # when matplotlib's inline backend happens to have registered a formatter.
            # One output, updated in place through its display id: the progress lines
            # printed next to it never erase it, and the last picture stays in the cell.
            image = Image(data=png, format="png")
            if self.display_handle is None:
                self.display_handle = display(image, display_id=True)
            else:
                self.display_handle.update(image)
        if self.save_dir is not None:
            try:
                write_atomic(self.save_dir / "progress.png", lambda f: f.write(png))
                write_atomic(self.save_dir / "progress.svg", lambda f: self.fig.savefig(f, format="svg"))
            except OSError as error:  # a full disk: say so once, and let the run's checkpoint decide
                if not self._write_failed:
                    print(
                        f"warning: cannot write the live plot in {self.save_dir} ({error.strerror})",
                        flush=True,
                    )
                self._write_failed = True
                return
            if not self._announced and not notebook:
                self._announced = True
                print(f"live plot: {(self.save_dir / 'progress.png').resolve()}", flush=True)
