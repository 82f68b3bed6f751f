"""terraseg.io."""
