"""Run directories: config, metrics and checkpoints of a fit, exact resume, the report and the
predictions grid."""
