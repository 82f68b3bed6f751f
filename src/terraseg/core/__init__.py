"""terraseg.core."""
