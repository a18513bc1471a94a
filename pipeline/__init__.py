"""Orchestration: the CLI, the run folder, its manifest and the stage order."""
