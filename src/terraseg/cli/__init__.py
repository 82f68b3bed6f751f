"""terraseg.cli."""
