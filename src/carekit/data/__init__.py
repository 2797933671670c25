"""Where training pairs come from: pure numpy functions of (arrays, parameters, rng)."""
