"""Default configuration files shipped with infaas (importable as `infaas_configs`)."""
