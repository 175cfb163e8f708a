"""Usage history of the fleet: samples recorded by `forge record`, sums per hour and day, reports."""
