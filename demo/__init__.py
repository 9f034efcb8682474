"""Dev mode and the simulated voice switch that feeds it."""
