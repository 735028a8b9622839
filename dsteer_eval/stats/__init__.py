"""Statistics shared by the sweep, the leaderboard and the probes: paired bootstrap CIs, the
conditioned subset, and verdicts computed from numbers (never typed)."""
