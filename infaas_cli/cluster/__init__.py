"""Running infaas: the embedded local cluster (`infaas up` / `down`)."""
