"""terraseg.vector."""
