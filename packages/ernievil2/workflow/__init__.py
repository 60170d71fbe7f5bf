"""Jobs made of several library steps, for the commands that run them: what follows a training run
(`after_training`).  The layer above `search`: a workflow may use every part of the library but the CLI."""
