"""terraseg.evaluate."""
