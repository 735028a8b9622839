"""L6: what a file is: `dsteer-eval info` (vector files, cards, probe reports, sweeps)."""
