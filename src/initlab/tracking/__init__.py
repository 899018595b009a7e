"""MLflow: the store, what each run shows, logging them, and a team's server."""
