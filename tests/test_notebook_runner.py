"""opsd.notebook_runner: what the sync test compares, and the pictures `make notebooks` exports."""

from __future__ import annotations

import base64

from opsd.notebook_runner import RUN_TIME_MARK, cell_sources, run_time_line, tagged_figures


def _nb(first: str, *code_cells) -> dict:
    return {"cells": [{"cell_type": "markdown", "source": first, "metadata": {}}, *code_cells]}


def test_cell_sources_ignores_only_the_run_time_line():
    source = _nb("# 00 · title\n\nRun time: about 2 minutes.")
    executed = _nb("# 00 · title\n\nRun time: about 2 minutes.\n\n" + run_time_line(93.4) + "\n")
    assert RUN_TIME_MARK in run_time_line(93.4) and "93 s" in run_time_line(93.4)
    assert cell_sources(executed) == cell_sources(source)
    edited = _nb("# 00 · another title\n\n" + run_time_line(93.4))
    assert cell_sources(edited) != cell_sources(source)


def test_tagged_figures_take_the_first_png_of_tagged_cells():
    png = b"\x89PNG fake"
    encoded = base64.b64encode(png).decode()
    cells = [
        {"cell_type": "code", "metadata": {"tags": ["figure:gap"]}, "source": "",
         "outputs": [{"output_type": "stream", "text": "x"}, {"output_type": "display_data", "data": {"image/png": encoded}},
                     {"output_type": "display_data", "data": {"image/png": base64.b64encode(b"second").decode()}}]},
        {"cell_type": "code", "metadata": {}, "source": "", "outputs": [{"data": {"image/png": encoded}}]},
        {"cell_type": "code", "metadata": {"tags": ["figure:empty"]}, "source": "", "outputs": []},
    ]
    assert tagged_figures({"cells": cells}) == {"gap": png}
