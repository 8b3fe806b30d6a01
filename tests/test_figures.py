"""helpers.run.run: one PNG rendering, saved to a file."""

import io

from matplotlib.figure import Figure

from helpers.run.run import save_and_show


def test_save_and_show_writes_the_png(tmp_path):
    fig = Figure()
    fig.add_subplot().plot([0, 1])
    path = save_and_show(fig, tmp_path / "f" / "a.png", display=False)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=100)
    assert path.read_bytes() == png.getvalue()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
