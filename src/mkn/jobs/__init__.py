"""Jobs: what the command line runs, above the report (the run configuration, the demo).

The layers, imports pointing down only: models -> attribution -> interventions -> runs (run
directories and stores) -> localization -> experiments -> report -> jobs -> cli.
"""
