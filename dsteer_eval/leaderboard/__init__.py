"""Leaderboard tables and plots from lm-eval result folders (plain ``lm_eval --output_path`` or sweeps).

``collect`` reads the files, ``table`` builds rows x columns, ``render`` writes Markdown/CSV/JSON/HTML,
``plots`` draws each metric against α.
"""

from dsteer_eval.leaderboard.render import write_leaderboard
from dsteer_eval.leaderboard.table import Leaderboard, build_leaderboard

__all__ = ["Leaderboard", "build_leaderboard", "write_leaderboard"]
