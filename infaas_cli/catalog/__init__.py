"""The catalog: typed records, the metadata store with its change log, the artifact store, listings."""
