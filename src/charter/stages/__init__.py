"""Pipeline stages. Each module has `run(run) -> counts` and `OUTPUTS` (paths it owns)."""
