"""Load tests and benchmarks for the Scoreboard server (see loadtest/README.md)."""
