"""Docker images across the fleet: what a host has, and shipping only what it lacks."""
