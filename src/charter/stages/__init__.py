"""Pipeline stages. Each module has `run(run) -> counts`, `INPUTS` (paths it reads) and `OUTPUTS` (paths it owns)."""
