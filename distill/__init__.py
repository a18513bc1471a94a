"""Stage one and everything the stages share: data, models, losses, metrics, the training engine."""
