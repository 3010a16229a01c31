"""Scoreboard: a real-time top-K leaderboard server."""

__version__ = "0.1.0"
