"""Leaderboard outputs (Markdown, CSV, LaTeX, HTML, PNG) built from run records and published rows."""

from cxrbench.benchmark.report.build import LeaderboardResult, build_leaderboard
from cxrbench.benchmark.report.published import load_published

__all__ = ["LeaderboardResult", "build_leaderboard", "load_published"]
