"""tokenbench.harness — backbone, attention backends, measurement, runner, results, reports, CLI."""
