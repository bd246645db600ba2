"""The model toolkit: register, generate variants, profile, model I/O, hardware detection, the example zoo."""
