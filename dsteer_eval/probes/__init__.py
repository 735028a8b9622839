"""L4: the probes, their nulls, the probe report, its verdicts and figures."""
