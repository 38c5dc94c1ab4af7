"""Leaderboard outputs (Markdown, CSV, LaTeX, HTML, PNG) built from run records and published rows."""

from cxrbench.leaderboard.published import load_published
from cxrbench.leaderboard.report.build import LeaderboardResult, build_leaderboard

__all__ = ["LeaderboardResult", "build_leaderboard", "load_published"]
