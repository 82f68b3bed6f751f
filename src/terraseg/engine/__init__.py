"""terraseg.engine."""
