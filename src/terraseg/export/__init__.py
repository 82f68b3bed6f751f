"""terraseg.export."""
