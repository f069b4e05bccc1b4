"""Service-wide pieces shared by flows, tasks, the bridge and the CLI: settings, CLI, auth."""
